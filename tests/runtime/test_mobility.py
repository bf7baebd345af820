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
