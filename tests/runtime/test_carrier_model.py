"""The carrier model of issue 9 (draft 2.1, 3.1.1, Appendix A), on real loopback sockets.

Carriers are born dormant and activated on demand; what is sent before activation is held
in order; a carrier whose connection dies becomes dormant and the next send re-races;
accepted carriers cannot re-activate; carrier events; the callback contract of `ready()`
and `accept()`; Sources and Sinks refuse fork(); `Local.port` is honoured. No mocks: a real
Listener (or a plain socket) on 127.0.0.1 is the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import struct
import warnings
from collections.abc import AsyncIterator

import pytest

import taps_post as tp
from helpers import sock_recvfrom

LO4 = "127.0.0.1"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def served(policy: tp.PolicyContext) -> AsyncIterator[tp.Listener]:
    listener = await tp.listen(tp.Local(address=LO4, port=0), policy=policy)
    try:
        yield listener
    finally:
        await listener.close()


async def next_carrier(listener: tp.Listener, timeout: float = 2.0) -> tp.Carrier:
    async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
        return await asyncio.wait_for(anext(it), timeout)


def reset(carrier: tp.Carrier) -> None:
    """Abort with RST, not FIN (SO_LINGER 0): the peer's connection dies, it is not a
    half-close the peer could keep writing into."""
    t = carrier.transient
    assert t is not None
    t.raw_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    carrier.abort()


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LO4, 0))
        port: int = s.getsockname()[1]
    return port


# ---- born dormant (item 1) -------------------------------------------------------------------


def test_initiate_returns_a_dormant_carrier_without_a_socket(run, tcp_policy, store) -> None:
    """initiate() returns at once: not active, no decision yet, no socket opened (the
    Listener sees no connection and this process has no new descriptor); awaiting it
    activates it."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            before = _fds()
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
            assert isinstance(carrier, tp.Carrier)
            assert not carrier.is_active and carrier.transients == () and carrier.paths == []
            assert carrier.explanation is None
            assert isinstance(carrier.association, tp.Association)
            await asyncio.sleep(0.05)  # an observation window: nothing may connect
            assert _fds() == before, "initiate() opened a descriptor"
            with pytest.raises(TimeoutError):
                await next_carrier(listener, 0.05)
            assert await carrier is carrier
            assert carrier.is_active and carrier.explanation is not None
            server = await next_carrier(listener)
            await carrier.close()
            await server.close()

    run(main())


def test_initiate_raises_at_once_only_for_what_needs_no_io(run, make_policy, store,
                                                           closed_port) -> None:
    """A bad target raises from initiate() itself; an unreachable one only from the
    activation (and then as EstablishmentError)."""
    async def main() -> None:
        with pytest.raises(tp.TapsError):
            tp.initiate("tcp://[not an address", policy=make_policy(), store=store)
        carrier = tp.initiate(f"{LO4}:{closed_port}",
                              policy=make_policy({"stack": {"tcp": "require"}}), store=store)
        with pytest.raises(tp.EstablishmentError):
            await carrier.activate()
        assert not carrier.is_active

    run(main())


@pytest.mark.parametrize("how", ["send", "send_msg", "receive", "await", "async with",
                                 "activate", "async for"])
def test_each_entry_point_activates(run, tcp_policy, store, how) -> None:
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
            server_task = asyncio.ensure_future(next_carrier(listener))
            active: list[bool] = []
            try:
                if how == "send":
                    await carrier.send(b"x")
                elif how == "send_msg":
                    await carrier.send_msg(tp.OutMessage(b"x"))
                elif how in ("receive", "async for"):
                    async def greet() -> None:
                        server = await server_task
                        await server.send(b"x")
                    greeter = asyncio.ensure_future(greet())
                    if how == "receive":
                        assert await carrier.receive() == b"x"
                    else:
                        async for msg in carrier:
                            assert msg == b"x"
                            break
                    await greeter
                elif how == "await":
                    await carrier
                elif how == "async with":
                    async with carrier as entered:
                        assert entered is carrier and carrier.is_active
                        active.append(True)
                else:
                    await carrier.activate(on_active=lambda: active.append(carrier.is_active))
                    assert active == [True]
                if how == "async with":
                    assert active == [True] and not carrier.is_active
                else:
                    assert carrier.is_active
                server = await server_task
                if how in ("send", "send_msg"):
                    assert await server.receive() == b"x"
                await server.close()
            finally:
                await carrier.close()

    run(main())


def test_concurrent_activations_join_one(run, tcp_policy, store) -> None:
    """Three callers while dormant: one race, one connection, every message on it."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
            await asyncio.gather(carrier.activate(), carrier.send(b"a"), carrier.send(b"b"),
                                 carrier)
            server = await next_carrier(listener)
            assert [await server.receive(), await server.receive()] == [b"a", b"b"]
            with pytest.raises(TimeoutError):
                await next_carrier(listener, 0.1)  # no second connection
            await server.close()
            await carrier.close()

    run(main())


def test_messages_held_before_activation_keep_their_properties(run, tcp_policy,
                                                               store) -> None:
    """Sent while dormant (each send_msg holds its message, the first one activates): the
    Transient gets them in order and applies niceness, antecedents and lifetimes (counted
    from send_msg) as if they had been sent on an active carrier."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
            late = tp.OutMessage(b"late", niceness=3)
            urgent = tp.OutMessage(b"urgent", niceness=0)
            after_late = tp.OutMessage(b"after-late", niceness=0, antecedents=[late])
            gone = tp.OutMessage(b"gone", lifetime=0.0)
            fate: list[str] = []
            await asyncio.gather(
                carrier.send_msg(late),
                carrier.send_msg(after_late),
                carrier.send_msg(gone, on_expired=lambda m: fate.append("expired"),
                                 on_sent=lambda m: fate.append("sent")),
                carrier.send_msg(urgent))
            server = await next_carrier(listener)
            got = [bytes(await server.receive()) for _ in range(3)]
            assert got == [b"urgent", b"late", b"after-late"]
            assert fate == ["expired"] and gone.state == "expired"
            await server.close()
            await carrier.close()

    run(main())


def test_a_held_lifetime_expires_at_its_deadline_while_activating(run, store) -> None:
    """The activation hangs (TCP accepted, TLS never answered): a held message with a
    100 ms lifetime gets on_expired at its deadline, not when the activation ends; close()
    then ends the activation and gives the other held message on_send_error."""
    async def main() -> None:
        with socket.socket() as silent:
            silent.bind((LO4, 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            policy = tp.PolicyContext(system=[], app_name="t")
            carrier = tp.initiate(f"tls://{LO4}:{port}", policy=policy, store=store)
            loop = asyncio.get_running_loop()
            fate: list[tuple[str, float]] = []
            started = loop.time()
            short = asyncio.ensure_future(carrier.send_msg(
                tp.OutMessage(b"short", lifetime=0.1),
                on_expired=lambda m: fate.append(("expired", loop.time() - started))))
            long = asyncio.ensure_future(carrier.send_msg(
                tp.OutMessage(b"long"),
                on_send_error=lambda m: fate.append(("send_error", loop.time() - started))))
            await asyncio.sleep(0.3)  # the window in which the lifetime runs out
            assert [f for f, _ in fate] == ["expired"] and 0.09 <= fate[0][1] < 0.25, fate
            await carrier.close()
            for task in (short, long):
                with pytest.raises(tp.ConnectionClosedError):
                    await task
            assert [f for f, _ in fate] == ["expired", "send_error"]

    run(main())


def test_held_messages_get_on_send_error_when_activation_fails(run, make_policy, store,
                                                               closed_port) -> None:
    async def main() -> None:
        carrier = tp.initiate(f"{LO4}:{closed_port}",
                              policy=make_policy({"stack": {"tcp": "require"}}), store=store)
        ends: list[str] = []
        msg = tp.OutMessage(b"nobody hears this")
        with pytest.raises(tp.EstablishmentError):
            await carrier.send_msg(msg, on_sent=lambda m: ends.append("sent"),
                                   on_expired=lambda m: ends.append("expired"),
                                   on_send_error=lambda m: ends.append("send_error"))
        assert ends == ["send_error"]

    run(main())


# ---- dormant after loss (item 3) -------------------------------------------------------------


def test_dormant_after_a_peer_reset_then_send_reactivates_exactly_once(run, until,
                                                                       tcp_policy,
                                                                       store) -> None:
    """The server resets the connection while a message waits in the client's queue (its
    antecedent was not sent yet): the carrier goes dormant (Dormant event), the waiting
    message comes back into its flight, and the next send re-races: a new connection
    carries the antecedent and then the waiting message, each exactly once."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
            events = carrier.events()
            await carrier.send(b"before")
            first = await next_carrier(listener)
            assert await first.receive() == b"before"
            old_local = carrier.local_address
            antecedent = tp.OutMessage(b"antecedent")
            waiting = tp.OutMessage(b"waiting", antecedents=[antecedent])
            ends: list[str] = []
            await carrier.send_msg(waiting, on_acked=lambda m: ends.append("acked"),
                                   on_expired=lambda m: ends.append("expired"),
                                   on_send_error=lambda m: ends.append("send_error"))
            reset(first)
            await until(lambda: not carrier.is_active, what="the client to see the reset")
            assert carrier.is_dormant and ends == []
            with pytest.raises(tp.ConnectionClosedError, match="dormant"):
                await carrier.receive()
            await carrier.send_msg(antecedent)
            assert carrier.is_active and carrier.local_address != old_local
            second = await next_carrier(listener)
            assert [await second.receive(), await second.receive()] == [b"antecedent",
                                                                       b"waiting"]
            await until(lambda: ends == ["acked"], what=lambda: f"one end, got {ends}")
            await second.send(b"reply")
            assert await carrier.receive() == b"reply"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second.receive(), 0.1)  # nothing twice
            await carrier.close()
            kinds = [type(e).__name__ async for e in events]
            # The same route again (only the local port is new): no PathChange.
            assert kinds == ["Ready", "Dormant", "Ready", "Closed"], kinds
            await second.close()

    run(main())


def test_reactivate_off_closes_the_carrier_instead(run, until, make_policy, store) -> None:
    policy = make_policy({"stack": {"tcp": "require"}, "carrier.reactivate": False})

    async def main() -> None:
        async with served(policy) as listener:
            carrier = await tp.initiate(f"{LO4}:{listener.port}", policy=policy, store=store)
            seen: list[tp.CarrierEvent] = []
            carrier.on_event(seen.append)
            server = await next_carrier(listener)
            reset(server)
            await until(lambda: bool(seen), what="an event")
            assert type(seen[0]) is tp.Closed and seen[0].error is not None
            with pytest.raises(tp.ConnectionClosedError):
                await carrier.send(b"late")

    run(main())


def test_an_accepted_carrier_cannot_be_activated(run, until, tcp_policy, store) -> None:
    async def main() -> None:
        async with served(tcp_policy) as listener:
            client = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                       store=store)
            server = await next_carrier(listener)
            await server.activate()  # active: a no-op
            assert isinstance(server.association, tp.Association)
            reset(client)
            await until(lambda: not server.is_active, what="the server to see the reset")
            with pytest.raises(tp.UsageError, match="accepted carrier cannot be activated"):
                await server.activate()
            with pytest.raises(tp.ConnectionClosedError):
                await server.send(b"too late")
            await client.close()

    run(main())


# ---- events (item 5) -------------------------------------------------------------------------


def test_events_and_on_event_until_false(run, tcp_policy, store) -> None:
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
            stream = carrier.events()
            once: list[tp.CarrierEvent] = []
            every: list[tp.CarrierEvent] = []
            carrier.on_event(lambda e: (once.append(e), False)[1])

            async def async_listener(e: tp.CarrierEvent) -> None:
                await asyncio.sleep(0)
                every.append(e)

            carrier.on_event(async_listener)
            await carrier
            server = await next_carrier(listener)
            ready = await anext(stream)
            assert type(ready) is tp.Ready and ready.stack == "tcp"
            assert isinstance(ready.path, tp.Path)
            assert ready.path.local_address == carrier.local_address
            assert ready.path.remote_address == carrier.remote_address
            assert carrier.paths == [ready.path] and carrier.transients[0].path is ready.path
            assert ready.path in carrier.association.paths
            await carrier.close()
            assert [type(e) async for e in stream] == [tp.Closed]
            await asyncio.sleep(0.01)  # the async listener's tasks run
            assert [type(e) for e in once] == [tp.Ready]
            assert [type(e) for e in every] == [tp.Ready, tp.Closed]
            late = [e async for e in carrier.events()]  # subscribed after the close
            assert [type(e) for e in late] == [tp.Closed]
            await server.close()

    run(main())


def test_an_icmp_error_is_a_soft_error_event(run, until, make_policy) -> None:
    """Datagrams to a UDP port nobody listens on: the kernel reports ICMP port unreachable
    on the connected socket, the carrier reports SoftError and stays usable."""
    async def main() -> None:
        port = free_port(socket.SOCK_DGRAM)
        source = tp.new_source(None, f"{LO4}:{port}", policy=make_policy())
        seen: list[tp.CarrierEvent] = []
        source.on_event(seen.append)
        try:
            await source.send(b"anyone?")
            await until(lambda: any(type(e) is tp.SoftError for e in seen),
                        what=lambda: f"a SoftError, got {seen}")
            soft = next(e for e in seen if type(e) is tp.SoftError)
            assert isinstance(soft.error, ConnectionRefusedError)
            assert source.is_active
        finally:
            await source.close()

    run(main())


# ---- the callback contract (item 7) ----------------------------------------------------------


def test_ready_async_handlers_are_awaited_bounded_and_stop_on_false(run, until, tcp_policy,
                                                                    store) -> None:
    async def main() -> None:
        async with served(tcp_policy) as listener:
            client = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                       store=store)
            server = await next_carrier(listener)
            gate = asyncio.Event()
            running = 0
            peak = 0
            handled: list[bytes] = []

            async def handler(msg: tp.InMessage) -> bool:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await gate.wait()
                running -= 1
                handled.append(bytes(msg))
                return msg != b"4"

            server.ready(handler, max_concurrent=2)
            for i in range(8):
                await client.send(str(i).encode())
            await until(lambda: running == 2, what="two handlers running")
            await asyncio.sleep(0.05)  # an observation window: the bound holds
            assert running == 2 and peak == 2
            gate.set()
            await until(lambda: b"4" in handled, what=lambda: f"handled {handled}")
            await asyncio.sleep(0.05)  # nothing after the False verdict
            assert handled[:5] == [b"0", b"1", b"2", b"3", b"4"] and peak == 2
            rest = [bytes(await server.receive()) for _ in range(8 - len(handled))]
            assert sorted(handled + rest) == [str(i).encode() for i in range(8)]
            await server.close()
            await client.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        run(main())
        gc.collect()


def test_deliver_fork_queues_until_accept_and_refuses_after_false(run, tcp_policy,
                                                                  store) -> None:
    async def main() -> None:
        async with served(tcp_policy) as listener:
            parent = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                       store=store)
            children = [parent.sibling() for _ in range(3)]
            assert all(c.association is parent.association for c in children)
            assert parent.deliver_fork(children[0])  # no accept() yet: held
            got: list[tp.Carrier] = []

            async def accept(child: tp.Carrier) -> bool:
                got.append(child)
                return len(got) < 2

            parent.accept(accept)
            await asyncio.sleep(0)
            assert got == [children[0]]
            assert parent.deliver_fork(children[1])
            await asyncio.sleep(0)
            assert got == children[:2]
            await asyncio.sleep(0)
            assert not parent.deliver_fork(children[2])  # it said False
            server = await next_carrier(listener)
            await server.close()
            await parent.close()
            assert not parent.deliver_fork(parent.sibling())

    run(main())


# ---- fork refused on Source and Sink (item 8) -------------------------------------------------


def test_source_and_sink_refuse_fork(run, make_policy) -> None:
    async def main() -> None:
        policy = make_policy()
        sink = await tp.new_sink(tp.Local(address=LO4, port=0), policy=policy)
        source = tp.new_source(None, f"{LO4}:{sink.port}", policy=policy)
        assert not source.is_active  # born dormant too
        try:
            with pytest.raises(tp.UsageError, match="Source cannot be forked"):
                await source.fork()
            with pytest.raises(tp.UsageError, match="Sink cannot be forked"):
                await sink.fork()
            await source.send(b"one way")
            assert source.is_active
            assert await asyncio.wait_for(sink.receive(), 2) == b"one way"
        finally:
            await source.close()
            await sink.close()

    run(main())


# ---- Local.port (item 10) --------------------------------------------------------------------


def test_local_port_is_honoured_on_tcp(run, tcp_policy, store) -> None:
    async def main() -> None:
        async with served(tcp_policy) as listener:
            port = free_port(socket.SOCK_STREAM)
            carrier = await tp.initiate(f"{LO4}:{listener.port}",
                                        local=tp.Local(address=LO4, port=port),
                                        policy=tcp_policy, store=store)
            server = await next_carrier(listener)
            assert carrier.local_address == (LO4, port)
            assert server.remote_address == (LO4, port)
            await server.close()
            await carrier.close()

    run(main())


def test_local_port_is_honoured_on_udp(run, make_policy) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((LO4, 0))
            peer.setblocking(False)
            port = free_port(socket.SOCK_DGRAM)
            source = tp.new_source(tp.Local(address=LO4, port=port),
                                   f"{LO4}:{peer.getsockname()[1]}", policy=make_policy())
            try:
                await source.send(b"from a chosen port")
                data, addr = await asyncio.wait_for(sock_recvfrom(peer, 2048), 2)
                assert addr == (LO4, port) and source.local_address == (LO4, port)
                assert data.endswith(b"from a chosen port")
            finally:
                await source.close()

    run(main())


def test_initiate_send_still_sends_the_first_message_once(run, tcp_policy, store) -> None:
    """RFC 9622 InitiateWithSend: `initiate(send=...)` holds the message in the flight; the
    activation sends it, once."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store,
                                  send=b"first")
            assert not carrier.is_active
            await carrier
            server = await next_carrier(listener)
            assert await server.receive() == b"first"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(server.receive(), 0.1)
            await server.close()
            await carrier.close()

    run(main())


def test_close_during_activation_ends_it_and_leaks_nothing(run, until, warm_loop,
                                                           store) -> None:
    async def main() -> None:
        await warm_loop()  # the loop's own one-time descriptors are not the test's
        base_fds = _fds()
        base_tasks = len(asyncio.all_tasks())
        with socket.socket() as silent:  # accepts TCP, never speaks TLS
            silent.bind((LO4, 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            policy = tp.PolicyContext(system=[], app_name="t")
            carrier = tp.initiate(f"tls://{LO4}:{port}", policy=policy, store=store)
            waiter = asyncio.ensure_future(carrier.activate())
            joiner = asyncio.ensure_future(carrier.send(b"x"))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            carrier.abort()
            for task in (waiter, joiner):
                with pytest.raises(tp.ConnectionClosedError):
                    await task
            await carrier.close()
            with contextlib.suppress(BlockingIOError):
                silent.setblocking(False)
                silent.accept()[0].close()
        await until(lambda: _fds() == base_fds and len(asyncio.all_tasks()) == base_tasks,
                    what=lambda: f"fds {_fds()} vs {base_fds}")

    run(main())


def test_a_reactivation_on_another_address_reports_path_change(run, until, tcp_policy,
                                                               store) -> None:
    """PathChange(old, new) when the new Transient runs between other addresses: the server
    on ::1 resets and goes away, the next send re-races and wins on 127.0.0.1."""
    async def main() -> None:
        v4 = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        try:
            v6 = await tp.listen(tp.Local(address="::1", port=v4.port), policy=tcp_policy)
        except OSError:
            await v4.close()
            pytest.skip("the v4 listener's port is taken on ::1")
        remote = tp.Remote(host="localhost", port=v4.port, addresses=("::1", LO4))
        carrier = tp.initiate(remote, policy=tcp_policy, store=store)
        events = carrier.events()
        try:
            await carrier.send(b"one")
            assert carrier.remote_address is not None and carrier.remote_address[0] == "::1"
            server = await next_carrier(v6)
            assert await server.receive() == b"one"
            await v6.close()  # no more ::1: the next race falls back to 127.0.0.1
            reset(server)
            await until(lambda: carrier.is_dormant, what="the client to see the reset")
            await carrier.send(b"two")
            assert carrier.remote_address == (LO4, v4.port)
            again = await next_carrier(v4)
            assert await again.receive() == b"two"
            await again.close()
            await carrier.close()
            seen = [e async for e in events]
            assert [type(e).__name__ for e in seen] == ["Ready", "Dormant", "Ready",
                                                        "PathChange", "Closed"], seen
            change = seen[3]
            assert isinstance(change, tp.PathChange)
            assert change.old.remote_address[0] == "::1"
            assert change.new.remote_address == (LO4, v4.port)
        finally:
            await carrier.close()
            await v4.close()

    run(main())
