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
import socket
import subprocess
import sys
import time
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


def test_netlink_monitor_keeps_the_process_socket_on_the_loop(run: Any) -> None:
    """Rule 1: the process's rtnetlink socket, once open, stays registered with the loop
    when the last subscriber leaves (the live snapshot stays current), the next subscriber
    pays nothing, and a monitor closed hands it on to the next one."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        m = mon.path_monitor()
        assert m is mon.path_monitor() and m.mode == "stopped"
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
        assert m.mode == "stopped" and m.next_poll is None
        assert m.fileno() == fd, "the socket stays on the loop with nobody subscribed"
        assert len(asyncio.all_tasks()) == tasks and m.next_poll is None
        again = m.subscribe(lambda c, i: None)
        assert m.mode == "netlink" and m.fileno() == fd, "the same socket, at once"
        again()
        m.close()
        assert m.closed and m.fileno() is None and mon.path_monitor() is not m
        assert not loop.remove_reader(fd), "close() took the reader off the loop"
        with pytest.raises(RuntimeError):
            m.subscribe(lambda c, i: None)
        successor = mon.path_monitor()
        again = successor.subscribe(lambda c, i: None)
        assert successor.mode == "netlink" and successor.fileno() == fd, \
            "the next monitor takes the process's socket over: no new socket, no dump"
        again()
        assert calls == []

    run(main())


def test_a_second_loop_takes_the_socket_over(run: Any) -> None:
    """A loop that ended leaves the process's socket to the next loop's monitor."""
    async def fd_of_a_subscribed_monitor() -> int | None:
        m = mon.path_monitor()
        unsubscribe = m.subscribe(lambda c, i: None)
        await m.started()
        fd = m.fileno()
        unsubscribe()
        return fd

    first = run(fd_of_a_subscribed_monitor())
    assert first is not None and run(fd_of_a_subscribed_monitor()) == first


def test_two_monitors_on_one_loop_each_hear(run: Any) -> None:
    """A second monitor subscribed while the first holds the process's socket opens its own
    (closed with its last subscriber)."""
    async def main() -> None:
        first = mon.path_monitor()
        u1 = first.subscribe(lambda c, i: None)
        await first.started()
        other = mon.PathMonitor(mode="netlink")
        u2 = other.subscribe(lambda c, i: None)
        assert await other.started() == "netlink"
        assert other.fileno() not in (None, first.fileno())
        u2()
        assert other.fileno() is None, "a private socket leaves with its last subscriber"
        other.close()
        u1()

    run(main())


def test_off_switch_watches_nothing(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mon.MODE_ENV, "off")

    async def main() -> None:
        m = mon.path_monitor()
        assert m.mode == "off"
        unsubscribe = m.subscribe(lambda c, i: None)
        assert await m.started() == "off" and await m.prepare() == "off"
        assert m.mode == "off" and m.fileno() is None and m.next_poll is None
        unsubscribe()
        assert m.mode == "off"
        m.close()

    run(main())


OFF_IMPORTS_NOTHING = """
import asyncio, os, sys
os.environ["TAPS_POST_MONITOR"] = "off"
from taps_post.runtime.monitor import path_monitor

async def main():
    m = path_monitor()
    unsubscribe = m.subscribe(lambda c, i: None)
    await asyncio.sleep(0.05)
    unsubscribe()
    return m.mode

mode = asyncio.run(main())
print(mode, "pyroute2" in sys.modules)
"""


def test_off_switch_imports_no_pyroute2() -> None:
    out = subprocess.run([sys.executable, "-P", "-c", OFF_IMPORTS_NOTHING],
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == ["off", "False"], out


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
        # The process's socket is held by the loop's monitor (subscribed), so this second
        # monitor has to open a socket of its own, which is what runs out of descriptors.
        holder = mon.path_monitor()
        held = holder.subscribe(lambda c, i: None)
        await holder.started()
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
        held()

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


# ---- review fixes: failures that must not hang, block or mislead ------------------------------


class Exploding(RtnlSource):
    """A source whose opening raises what no OSError handler catches (a pyroute2 bug)."""

    def __init__(self, rcvbuf: int = 0) -> None:
        raise RuntimeError("pyroute2 surprise")


def test_a_non_oserror_while_opening_falls_back_to_polling(
        run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule 3: not stuck in "starting", and nothing escapes into subscribe() (a carrier's
    activation that connected would fail)."""
    async def main() -> None:
        holder = mon.path_monitor()
        held = holder.subscribe(lambda c, i: None)  # so the next monitor must open its own
        await holder.started()
        monkeypatch.setattr(mon, "RtnlSource", Exploding)
        m = mon.PathMonitor(mode="netlink", poll_interval=0.05)
        unsubscribe = m.subscribe(lambda c, i: None)
        assert await asyncio.wait_for(m.started(), 2) == "polling"
        assert m.fallback_reason is not None and "pyroute2 surprise" in m.fallback_reason
        unsubscribe()
        m.close()
        held()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(main())


OPENER = """
import asyncio, json, sys, threading, time
from taps_post.runtime import monitor as mon
from taps_post.system import netevents

class Exploding(netevents.RtnlSource):
    def __init__(self, rcvbuf=0):
        import pyroute2.netlink.rtnl.marshal  # the slow part, on the opener thread
        raise RuntimeError("pyroute2 surprise")

if sys.argv[1] == "explode":
    mon.RtnlSource = Exploding

def openers():
    return [t for t in threading.enumerate() if t.name == "taps-post-monitor"]

async def main():
    m = mon.path_monitor()
    unsubscribe = m.subscribe(lambda c, i: None)
    thread = bool(openers())
    if sys.argv[1] == "close":
        t0 = time.perf_counter()
        m.close()
        closing = time.perf_counter() - t0
        await asyncio.sleep(0)
        for _ in range(200):  # the opener hands its socket over and is joined on the loop
            if not openers():
                break
            await asyncio.sleep(0.01)
        return {"thread": thread, "close_ms": closing * 1000, "left": len(openers()),
                "pyroute2": "pyroute2" in sys.modules}
    mode = await asyncio.wait_for(m.started(), 5)
    return {"thread": thread, "mode": mode, "reason": m.fallback_reason,
            "left": len(openers())}

print(json.dumps(asyncio.run(main())))
"""


def opener(case: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-P", "-c", OPENER, case], capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = __import__("json").loads(out.stdout.splitlines()[-1])
    return result


def test_an_opener_thread_that_raises_leaves_the_monitor_polling() -> None:
    """A fresh process: the first source opens on a thread; what it raises is the polling
    fallback's reason, not a dead thread and a monitor "starting" for ever."""
    out = opener("explode")
    assert out["thread"] and out["mode"] == "polling", out
    assert "pyroute2 surprise" in out["reason"] and out["left"] == 0, out


def test_close_while_the_opener_imports_does_not_block_the_loop() -> None:
    """Rule 4: close() does not join the opener (importing pyroute2 takes 0.1-0.3 s); the
    opener is joined on the loop once it has handed its socket over."""
    out = opener("close")
    assert out["thread"], out
    assert out["close_ms"] < 20, out
    assert out["left"] == 0 and out["pyroute2"], out


def test_only_the_kernel_is_believed() -> None:
    """Rule 6 of netevents: a forged RTM_DELLINK for lo, unicast by a user socket to the
    source's port id, changes nothing. The same datagram does arrive (checked on a plain
    socket of ours), so the source really had it to refuse."""
    from pyroute2.netlink import NLM_F_REQUEST, rtnl
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["header"]["type"] = rtnl.RTM_DELLINK
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["index"] = socket.if_nametoindex("lo")
    msg["attrs"] = [("IFLA_IFNAME", "lo")]
    msg.encode()
    with RtnlSource() as source, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as forger, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as probe:
        forger.bind((0, 0))
        probe.bind((0, 0))
        probe.settimeout(1)
        forger.sendto(msg.data, (probe.getsockname()[0], 0))
        assert probe.recvfrom(65536)[1][0] == forger.getsockname()[0], "unicast arrives"
        forger.sendto(msg.data, (source.port, 0))
        time.sleep(0.05)
        assert source.read() == []
