"""The path monitor without changing the machine's network (issue 11, item 3).

`diff()` is pure, so its contract is tested on values; the monitor itself runs against this
namespace's real rtnetlink socket (listening needs no privilege) or the real polling timer,
and what is checked is what the event loop holds: the reader while someone subscribes, no
timer in netlink mode, nothing at all once the last subscriber has left. The changes
themselves (links and addresses coming and going) are made in namespaces, in
test_monitor_netns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import warnings
import weakref
from typing import Any

import pytest

from taps_post.decision.environment import Address, Interface
from taps_post.runtime import monitor as mon
from taps_post.system import live
from taps_post.system.netevents import NetChange, RtnlSource, diff, interface_indexes


def iface(name: str, *addresses: str, up: bool = True) -> Interface:
    return Interface(name, "ethernet", up, tuple(Address(a) for a in addresses))


LO = iface("lo", "127.0.0.1", "::1")
E1 = iface("eth1", "198.18.1.1", "fd00:1::1")


def changes(*rows: tuple[Any, ...]) -> list[NetChange]:
    return [NetChange(*row) for row in rows]


# ---- diff(), the polling fallback's events ---------------------------------------------------


def test_diff_of_equal_snapshots_is_empty() -> None:
    assert diff((LO, E1), (LO, E1)) == []
    assert diff((), ()) == []


def test_diff_new_interface_in_the_kernels_order() -> None:
    assert diff((LO,), (LO, E1), {"eth1": 7}) == changes(
        ("link", "added", "eth1", 7), ("link", "up", "eth1", 7),
        ("address", "added", "eth1", 7, "198.18.1.1"),
        ("address", "added", "eth1", 7, "fd00:1::1"))


def test_diff_new_interface_that_is_down_is_added_not_up() -> None:
    assert diff((), (iface("eth1", up=False),)) == changes(("link", "added", "eth1", 0))


def test_diff_interface_gone_takes_its_addresses_first() -> None:
    assert diff((LO, E1), (LO,)) == changes(
        ("address", "removed", "eth1", 0, "198.18.1.1"),
        ("address", "removed", "eth1", 0, "fd00:1::1"), ("link", "removed", "eth1", 0))


def test_diff_down_and_up() -> None:
    down = iface("eth1", "198.18.1.1", "fd00:1::1", up=False)
    assert diff((E1,), (down,), {"eth1": 3}) == changes(("link", "down", "eth1", 3))
    assert diff((down,), (E1,), {"eth1": 3}) == changes(("link", "up", "eth1", 3))


def test_diff_addresses_removed_before_added() -> None:
    moved = iface("eth1", "198.18.1.9", "fd00:1::1")
    assert diff((E1,), (moved,)) == changes(
        ("address", "removed", "eth1", 0, "198.18.1.1"),
        ("address", "added", "eth1", 0, "198.18.1.9"))


def test_diff_down_with_addresses_gone_in_one_list() -> None:
    bare = iface("eth1", "198.18.1.1", up=False)
    assert diff((E1,), (bare,)) == changes(
        ("address", "removed", "eth1", 0, "fd00:1::1"), ("link", "down", "eth1", 0))


def test_diff_is_pure() -> None:
    old, new = (LO, E1), (LO,)
    first = diff(old, new, {"eth1": 2})
    assert diff(old, new, {"eth1": 2}) == first
    assert old == (LO, E1) and new == (LO,)


def test_netchange_is_a_frozen_value() -> None:
    c = NetChange("link", "up", "eth1", 3)
    assert c.address is None and c == NetChange("link", "up", "eth1", 3)
    with pytest.raises(AttributeError):
        c.action = "down"  # type: ignore[misc]
    assert len({c, NetChange("link", "up", "eth1", 3)}) == 1


def test_interface_indexes_names_this_namespace() -> None:
    assert "lo" in interface_indexes()


# ---- system: the live snapshot and the netlink source ----------------------------------------


def test_refresh_keeps_the_snapshot_identity_when_nothing_changed() -> None:
    first = live.refresh()
    assert live.refresh() is first
    assert live.cached_interfaces() is first


def test_rtnl_source_is_seeded_and_never_blocks() -> None:
    with RtnlSource() as source:
        assert source.fileno() >= 0 and not source.closed
        assert source.read() == []  # the seed is state, not changes; nothing is waiting
    assert source.closed


# ---- the monitor on the event loop ------------------------------------------------------------


def test_netlink_monitor_holds_a_reader_only_while_subscribed(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        m = mon.path_monitor()
        assert m is mon.path_monitor() and m.mode == "stopped" and m.fileno() is None
        tasks = len(asyncio.all_tasks())
        calls: list[Any] = []
        unsubscribe = m.subscribe(lambda c, i: calls.append(c))
        assert await m.started() == "netlink"
        fd = m.fileno()
        assert fd is not None and m.next_poll is None, "netlink mode runs no timer"
        assert len(asyncio.all_tasks()) == tasks, "no task while nothing changes"
        assert m.interfaces is live.cached_interfaces()
        second = m.subscribe(lambda c, i: None)
        assert m.subscribers == 2 and m.fileno() == fd
        second()
        assert m.fileno() == fd, "one subscriber left: still listening"
        unsubscribe()
        unsubscribe()  # twice is harmless
        assert m.mode == "stopped" and m.fileno() is None and m.next_poll is None
        assert not loop.remove_reader(fd), "the reader left the loop with the last subscriber"
        again = m.subscribe(lambda c, i: None)
        assert m.mode == "netlink" and m.fileno() == fd, "the lingering socket, reused"
        again()
        await asyncio.sleep(mon.LINGER + 0.1)  # the linger running out is what is tested
        assert m.fileno() is None
        again = m.subscribe(lambda c, i: None)
        assert m.mode == "netlink" and m.fileno() is not None  # a new socket, at once
        again()
        m.close()
        assert m.closed and mon.path_monitor() is not m
        with pytest.raises(RuntimeError):
            m.subscribe(lambda c, i: None)
        assert calls == []

    run(main())


def test_each_loop_has_its_own_monitor(run: Any) -> None:
    async def get() -> mon.PathMonitor:
        return mon.path_monitor()

    first, second = run(get()), run(get())
    assert first is not second


def test_polling_fallback_runs_a_timer_only_while_subscribed(run: Any) -> None:
    async def main() -> None:
        m = mon.PathMonitor(mode="polling", poll_interval=0.02)
        calls: list[Any] = []
        unsubscribe = m.subscribe(lambda c, i: calls.append(c))
        assert await m.started() == "polling" and m.fileno() is None
        first = m.next_poll
        assert first is not None
        # An observation window: several polls run; the network is unchanged, so no call.
        await asyncio.sleep(0.1)
        assert m.next_poll is not None and m.next_poll > first
        assert calls == []
        unsubscribe()
        assert m.mode == "stopped" and m.next_poll is None
        m.close()

    run(main())


def test_the_environment_variable_forces_polling(run: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mon.MODE_ENV, "poll")

    async def main() -> None:
        m = mon.path_monitor()
        unsubscribe = m.subscribe(lambda c, i: None)
        assert m.mode == "polling" and m.next_poll is not None
        assert m.fallback_reason is None  # asked for, not a refusal
        unsubscribe()
        m.close()

    run(main())
    monkeypatch.setenv(mon.MODE_ENV, "carrier-pigeon")
    with pytest.raises(ValueError, match="carrier-pigeon"):
        run(get_monitor())


async def get_monitor() -> mon.PathMonitor:
    return mon.path_monitor()


def test_events_stream_unsubscribes_and_ends_with_the_monitor(run: Any) -> None:
    async def main() -> None:
        m = mon.PathMonitor()
        async with m.events() as stream:
            assert m.subscribers == 1
        assert m.subscribers == 0 and m.mode == "stopped"
        stream = m.events()
        got: list[NetChange] = []

        async def consume() -> None:
            async for change in stream:
                got.append(change)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)  # let the consumer reach its await
        m.close()
        await asyncio.wait_for(task, 1)
        assert got == [] and m.subscribers == 0

    run(main())


def test_netlink_refused_falls_back_to_polling(run: Any) -> None:
    """A real refusal: the process is out of file descriptors when the socket is made
    (EMFILE), so the monitor polls and says why."""
    import resource

    import pyroute2.netlink.rtnl.marshal  # noqa: F401  (imported before descriptors run out)

    async def main() -> None:
        m = mon.PathMonitor(mode="netlink", poll_interval=0.05)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (len(os.listdir("/proc/self/fd")) + 8, hard))
        try:
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            unsubscribe = m.subscribe(lambda c, i: None)
            mode = await m.started()
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            live.refresh()  # discovery found nothing without descriptors either
        assert mode == "polling" and m.next_poll is not None and m.fileno() is None
        assert m.fallback_reason is not None and "Too many open files" in m.fallback_reason
        unsubscribe()
        assert m.next_poll is None
        m.close()

    run(main())


def test_a_loop_that_ends_while_the_socket_lingers_leaks_nothing() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        m = mon.path_monitor()
        unsubscribe = m.subscribe(lambda c, i: None)
        assert await m.started() == "netlink"
        unsubscribe()  # the socket lingers; the loop ends before LINGER runs out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], \
        [str(w.message) for w in caught]
    assert loops[0]() is None, "the monitor registry keeps no loop alive"


def test_prepare_pays_the_netlink_cost_up_front(run: Any) -> None:
    async def main() -> None:
        m = mon.path_monitor()
        assert await m.prepare() == "netlink"
        assert m.mode == "stopped" and m.subscribers == 0
        unsubscribe = m.subscribe(lambda c, i: None)
        assert m.mode == "netlink", "no thread, no wait: listening at once"
        unsubscribe()
        polling = mon.PathMonitor(mode="polling")
        assert await polling.prepare() == "polling" and polling.mode == "stopped"

    run(main())
