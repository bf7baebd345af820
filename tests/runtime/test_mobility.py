"""Carriers that survive a path going away, the parts that need no namespace: the index of
runtime/mobility.py (fed NetChange values directly, its Rule 5), its cost, the carrier's
reaction on loopback (the change told to it as the monitor would), PathLostError.
tests/runtime/test_mobility_netns.py takes real links down.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from typing import Any

import taps_post as tp
from taps_post.decision.environment import Address, Interface
from taps_post.runtime import mobility
from taps_post.runtime.monitor import path_monitor
from taps_post.system.netevents import NetChange

LO4 = "127.0.0.1"


class Told:
    """A Mobile that records what it is told."""

    def __init__(self) -> None:
        self.gone: list[tuple[str | None, str | None]] = []
        self.usable = 0

    def path_gone(self, interface: str | None, address: str | None,
                  interfaces: tuple[Interface, ...]) -> None:
        self.gone.append((interface, address))

    def path_usable(self, interfaces: tuple[Interface, ...]) -> None:
        self.usable += 1


def change(kind: str, action: str, interface: str, address: str | None = None) -> NetChange:
    return NetChange(kind=kind, action=action, interface=interface, index=7, address=address)


def test_the_index_tells_the_carriers_on_what_went_and_everyone_when_something_came(
        run: Any) -> None:
    async def main() -> None:
        a, b, c = Told(), Told(), Told()
        monitor = path_monitor()
        before = monitor.subscribers
        wa = mobility.watch(a, ("198.18.1.1", 1000), "eth1")
        mobility.watch(b, ("fd00:2::0:1", 1001), "eth2")
        assert mobility.watch(c, (LO4, 1002), "lo") is None  # loopback: nothing can go
        assert monitor.subscribers == before + 1  # one subscription for the loop
        mobility.handle([change("link", "down", "eth1")], ())
        assert a.gone == [("eth1", None)] and b.gone == []
        mobility.handle([change("address", "removed", "eth2", "fd00:2::1")], ())
        assert b.gone == [("eth2", "fd00:2::1")] and len(a.gone) == 1
        mobility.handle([change("link", "up", "eth3")], ())
        assert (a.usable, b.usable, c.usable) == (1, 1, 0)
        mobility.unwatch(a, wa)
        mobility.unwatch(b, wa)
        assert monitor.subscribers == before  # the last one gone: unsubscribed
        waiting = mobility.wait_for_path(c)
        assert monitor.subscribers == before + 1
        mobility.handle([change("address", "added", "eth1", "198.18.1.1")], ())
        assert c.usable == 1
        waiting.remove(c)
        assert monitor.subscribers == before

    run(main())


def test_re_watching_a_carrier_keeps_the_subscription(run: Any) -> None:
    """Re-indexing a carrier (after a migration) must not unsubscribe and subscribe again:
    the monitor would drop the changes it queued for its next delivery (Rule 6)."""

    async def main() -> None:
        a = Told()
        w = mobility.watch(a, ("198.18.1.1", 1000), "eth1")
        assert w is not None
        unsubscribe = w.unsubscribe
        assert unsubscribe is not None
        assert mobility.watch(a, ("198.18.2.1", 1000), "eth2") is w
        assert w.unsubscribe is unsubscribe and w.subscribed
        mobility.handle([change("link", "down", "eth1")], ())
        mobility.handle([change("link", "down", "eth2")], ())
        assert a.gone == [("eth2", None)]  # only its new path
        mobility.unwatch(a, w)
        assert w.unsubscribe is None

    run(main())


def test_a_watch_follows_a_monitor_the_application_closed(run: Any) -> None:
    async def main() -> None:
        a, b = Told(), Told()
        w = mobility.watch(a, ("198.18.1.1", 1000), "eth1")
        assert w is not None
        old = path_monitor()
        assert old.subscribers == 1
        old.close()
        mobility.watch(b, ("198.18.1.2", 1001), "eth1")
        new = path_monitor()
        assert new is not old and new.subscribers == 1 and w.monitor is new
        mobility.unwatch(a, w)
        mobility.unwatch(b, w)
        assert new.subscribers == 0

    run(main())


def test_an_unsubscribed_watch_forgets_the_interfaces_it_was_told(run: Any) -> None:
    async def main() -> None:
        a = Told()
        told = (Interface("eth9", "ethernet", True, (Address("198.18.9.1"),)),)
        w = mobility.watch(a, ("198.18.9.1", 1000), "eth9")
        assert w is not None
        mobility.handle([change("link", "up", "eth8")], told)
        assert mobility.current_interfaces() == told
        mobility.unwatch(a, w)
        assert w.interfaces is None
        assert mobility.current_interfaces() != told  # the live snapshot, not an old one

    run(main())


def test_many_carriers_re_racing_discover_the_interfaces_once(run: Any,
                                                              monkeypatch: Any) -> None:
    calls: list[int] = []
    refresh = mobility.live.refresh

    def counted() -> tuple[Interface, ...]:
        calls.append(1)
        return refresh()

    monkeypatch.setattr(mobility.live, "refresh", counted)

    async def main() -> None:
        for _ in range(1000):  # one loop iteration, no subscription: once
            mobility.refresh_interfaces()
        assert len(calls) == 1
        await asyncio.sleep(0)
        mobility.refresh_interfaces()
        assert len(calls) == 2  # the next iteration discovers again
        a = Told()
        w = mobility.watch(a, ("198.18.1.1", 1000), "eth1")
        await asyncio.sleep(0)
        before = len(calls)
        mobility.refresh_interfaces()  # subscribed: the monitor keeps the snapshot current
        assert len(calls) == before
        mobility.unwatch(a, w)

    run(main())


def test_withdrawing_a_subflow_never_removes_address_id_0_unless_it_is_the_initial() -> None:
    """Before Linux 6.7 the userspace PM cannot list a token's addresses: the id of the
    address is unknown, and REMOVE_ADDR of id 0 would close the initial subflow."""
    from taps_post.runtime.multipath import PathController

    class Refusing:
        def local_addresses(self, token: int) -> list[Any]:
            raise OSError(95, "GET_ADDR by token not supported")

    initial = ("198.18.1.1", 40000)
    assert PathController._local_id(Any, Refusing(), 7, "198.18.2.1", initial) is None
    assert PathController._local_id(Any, Refusing(), 7, "198.18.1.1", initial) == 0


def test_mptcp_refused_error_is_public_an_os_error_and_pickles() -> None:
    import errno as errnos

    from taps_post.stacks import tcp

    exc = tp.MptcpRefusedError(errnos.ENOPROTOOPT, "refused")
    assert isinstance(exc, OSError) and isinstance(exc, tp.TapsError)
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), back.errno, back.strerror) == \
        (tp.MptcpRefusedError, errnos.ENOPROTOOPT, "refused")
    assert tcp.MptcpRefusedError is tp.MptcpRefusedError
    assert {"MptcpRefusedError", "Subflow", "SubflowPlan"} <= set(tp.__all__)
    from taps_post.core.path import Subflow
    from taps_post.decision.decision import SubflowPlan
    assert tp.Subflow is Subflow and tp.SubflowPlan is SubflowPlan


def test_a_raising_carrier_does_not_keep_the_others_in_the_dark(run: Any) -> None:
    class Broken(Told):
        def path_gone(self, interface: str | None, address: str | None,
                      interfaces: tuple[Interface, ...]) -> None:
            raise RuntimeError("bug")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[Any] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        broken, fine = Broken(), Told()
        w = mobility.watch(broken, ("198.18.1.1", 1), "eth1")
        mobility.watch(fine, ("198.18.1.1", 2), "eth1")
        mobility.handle([change("link", "down", "eth1")], ())
        assert fine.gone == [("eth1", None)]
        assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)
        mobility.unwatch(broken, w)
        mobility.unwatch(fine, w)

    run(main())


def test_watching_ten_thousand_carriers_is_cheap(run: Any) -> None:
    async def main() -> None:
        carriers = [Told() for _ in range(10_000)]
        started = time.perf_counter()
        watches = [mobility.watch(c, (f"198.18.{i % 200}.{i % 250 + 1}", i), f"eth{i % 4}")
                   for i, c in enumerate(carriers)]
        mobility.handle([change("link", "down", "eth0")], ())
        for c, w in zip(carriers, watches, strict=True):
            mobility.unwatch(c, w)
        took = time.perf_counter() - started
        assert sum(len(c.gone) for c in carriers) == 2_500
        assert took < 1.0, f"{took * 1000:.0f} ms for 10,000 carriers"

    run(main())


def test_usable_addresses_follow_the_decision_and_what_is_up() -> None:
    env = tp.Environment(
        (Interface("eth0", "ethernet", True, (Address("192.0.2.10"),)),
         Interface("eth1", "ethernet", True, (Address("198.51.100.10"),)),
         Interface("wwan0", "cellular", True, (Address("203.0.113.10"),))),
        {"svc": ("198.18.0.5",)}, ())
    app = {"version": 1, "layer": "app", "rules": [
        {"id": "no-cell", "set": {"interface.cellular": "prohibit", "stack.tcp": "require"}}]}
    decision = tp.decide(tp.parse_target("tcp://svc:80"),
                         tp.PolicyContext(system=[], app=app), env)
    assert decision.outcome == "ok"
    now = env.interfaces
    assert mobility.usable_addresses(decision, "tcp", "ipv4", now) == [
        ("192.0.2.10", "eth0"), ("198.51.100.10", "eth1")]  # never the prohibited wwan0
    assert mobility.usable_addresses(decision, "tcp", "ipv4", now,
                                     avoid_interface="eth0") == [("198.51.100.10", "eth1")]
    down = (Interface("eth0", "ethernet", False, (Address("192.0.2.10"),)), now[1], now[2])
    assert mobility.usable_addresses(decision, "tcp", "ipv4", down) == [
        ("198.51.100.10", "eth1")]
    assert mobility.has_usable_path({"ipv4"}, now)
    assert not mobility.has_usable_path({"ipv6"}, now)
    assert not mobility.has_usable_path({"ipv4"}, down[:1])


def test_path_lost_error_is_a_connection_error_and_pickles() -> None:
    exc = tp.PathLostError("gone", "veth-a1", "198.18.1.1")
    assert isinstance(exc, tp.ConnectionClosedError) and isinstance(exc, ConnectionError)
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), str(back), back.interface, back.address) == \
        (tp.PathLostError, "gone", "veth-a1", "198.18.1.1")
    assert {"PathLostError", "PathMonitor", "NetChange", "path_monitor"} <= set(tp.__all__)
    assert tp.NetChange is NetChange and tp.path_monitor is path_monitor


def test_a_tcp_carrier_told_its_path_went_fails_over_by_itself(run: Any, tcp_policy: Any,
                                                              store: Any, until: Any) -> None:
    """On loopback the only usable path is the same one: the carrier fails its connection
    with PathLostError (in flight: on_send_error; acknowledged: on_acked), goes dormant and
    re-activates by itself (Ready reactivated), and what was sent after flows once."""

    async def main() -> None:
        async with await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy) as lis:
            carrier = tp.initiate(f"{LO4}:{lis.ports['tcp']}", policy=tcp_policy, store=store)
            events: list[Any] = []
            carrier.on_event(events.append)
            ends: list[tuple[int, str]] = []  # a message that ended twice shows twice
            for n in range(10):
                await carrier.send_msg(tp.OutMessage(b"%d" % n),
                                       on_acked=lambda m, n=n: ends.append((n, "acked")),
                                       on_send_error=lambda m, n=n: ends.append((n, "error")))
            server = await asyncio.wait_for(anext(aiter(lis)), 2)
            got = [bytes(await server.receive()) for _ in range(10)]
            await until(lambda: len(ends) == 10)
            t = carrier.transient
            assert t is not None
            carrier.path_gone(None, LO4, path_monitor().interfaces)
            await until(lambda: any(type(e) is tp.Ready and e.reactivated for e in events),
                        timeout=5)
            dormant = next(e for e in events if type(e) is tp.Dormant)
            assert isinstance(dormant.error, tp.PathLostError)
            kinds = [type(e) for e in events]
            lost = kinds.index(tp.PathChange)  # PathChange(old, None) first, then Dormant
            assert lost < kinds.index(tp.Dormant), events
            assert events[lost].old is not None and events[lost].new is None, events[lost]
            assert t.failure is dormant.error and carrier.transient is not t
            assert carrier.is_active
            for n in range(10, 20):
                await carrier.send_msg(tp.OutMessage(b"%d" % n),
                                       on_acked=lambda m, n=n: ends.append((n, "acked")),
                                       on_send_error=lambda m, n=n: ends.append((n, "error")))
            second = await asyncio.wait_for(anext(aiter(lis)), 2)
            got += [bytes(await second.receive()) for _ in range(10)]
            await until(lambda: len(ends) == 20)
            assert got == [b"%d" % n for n in range(20)]
            assert sorted(ends) == [(n, "acked") for n in range(20)], ends  # once each
            await carrier.close()
            await server.close()
            await second.close()

    run(main())


def test_a_path_usable_while_a_re_activation_fails_is_not_lost(run: Any, tcp_policy: Any,
                                                                store: Any, until: Any) -> None:
    """The wakeup that comes while the carrier's own re-activation is running (and then
    fails) makes it look again instead of waiting dormant for a change that never comes.
    Here: the peer's port is closed when the carrier re-races, and is listening again when
    `path_usable` is told, during that failed race (at its race.finished)."""
    import socket

    async def main() -> None:
        srv = socket.create_server((LO4, 0))
        port = srv.getsockname()[1]
        carrier: Any = None
        again: list[socket.socket] = []

        def trace(name: str, info: dict[str, Any]) -> None:
            if (name == "race.finished" and info.get("outcome") != "won" and not again
                    and carrier is not None and not carrier.is_active):
                again.append(socket.create_server((LO4, port)))  # listening again
                carrier.path_usable(path_monitor().interfaces)  # mid-activation

        carrier = tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=store, trace=trace)
        events: list[Any] = []
        carrier.on_event(events.append)
        await carrier.activate()
        conn, _ = srv.accept()
        srv.close()  # nothing listens: the carrier's first re-race is refused
        try:
            carrier.path_gone(None, LO4, path_monitor().interfaces)
            await until(lambda: any(type(e) is tp.Ready and e.reactivated for e in events),
                        timeout=5, what="Ready(reactivated) after the missed wakeup")
            assert again, "the first re-race did not fail"
            assert carrier.is_active
        finally:
            await carrier.close()
            conn.close()
            for s in again:
                s.close()

    run(main())


def test_a_path_controller_that_raises_goes_on_checking(run: Any) -> None:
    """runtime/multipath.py Rule 6: a bug reading the kernel is logged, and the timer that
    re-reads the subflows is scheduled again all the same."""
    from types import SimpleNamespace

    from taps_post.runtime.multipath import CHECKS, PathController

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Flaky:
            is_open = True
            path = SimpleNamespace(local_address=None, remote_address=None)
            broken = False
            reads = 0

            def __init__(self) -> None:
                self.loop = loop

            def subflows(self, interfaces: Any = ()) -> tuple[Any, ...]:
                return ()

            def measure_subflows(self, interfaces: Any = ()) -> tuple[Any, ...]:
                self.reads += 1
                if self.broken:
                    raise RuntimeError("bug")
                return ()

        t = Flaky()
        flaky: Any = t
        controller = PathController(flaky, (("eth0", "primary"),), (), lambda e: None,
                                    userspace=False)
        t.broken = True
        controller.changed(())
        # Three timed checks, each raising; the deadline is generous because a loaded machine
        # runs timers late, and the assertion is that they keep coming, not when.
        deadline = loop.time() + CHECKS[2] + 5.0
        while t.reads < 4 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert t.reads >= 4
        controller.close()

    run(main())
