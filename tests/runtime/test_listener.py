"""Listeners, Responders, Sources and Sinks on loopback, with real TCP and UDP sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

import taps_post as tp

LO4 = "127.0.0.1"


async def next_carrier(listener: tp.Listener) -> tp.Carrier:
    async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
        return await anext(it)


@contextlib.asynccontextmanager
async def listening(local: tp.Local, policy: tp.PolicyContext,
                    **kw: Any) -> AsyncIterator[tp.Listener]:
    listener = await tp.listen(local, policy=policy, **kw)
    try:
        yield listener
    finally:
        await listener.close()


def tcp_family(ports: dict[str, int]) -> set[str]:
    return {k for k in ports if k in ("tcp", "mptcp")}


def can_bind(port: int, *protocols: str) -> bool:
    """Bind `port` again: TCP as any server would (SO_REUSEADDR, so TIME_WAIT does not
    count), UDP plainly (a socket still bound with SO_REUSEADDR would make that fail)."""
    try:
        if "tcp" in protocols:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((LO4, port))
                t.listen(1)
        if "udp" in protocols:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((LO4, port))
    except OSError:
        return False
    return True


UDP_ACCEPT_BUG = ("BUG (Python 3.11): UdpListening.connection_made (stacks/udp.py:163) asserts "
                  "isinstance(transport, asyncio.DatagramTransport), but 3.11's "
                  "_SelectorDatagramTransport does not subclass it: the assert fails, "
                  "self.transport stays None, every datagram then fails in _PeerView."
                  "get_extra_info, and aclose() never closes the socket")


@pytest.fixture
def udp_policy(make_policy) -> tp.PolicyContext:
    """TCP and UDP both allowed (udp lacks reliability, order and congestion control)."""
    return make_policy({"reliability": "no_preference", "preserveOrder": "no_preference",
                        "congestionControl": "no_preference"})


# ---- ports ---------------------------------------------------------------------------------


def test_default_policy_listens_on_tcp_only(run, make_policy) -> None:
    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=0), make_policy()) as listener:
            ports = listener.ports
            assert "tcp" in ports and "udp" not in ports  # reliability: require by default
            assert set(ports) <= {"tcp", "mptcp"}
            assert len(set(ports.values())) == 1 and listener.port == ports["tcp"] > 0

    run(main())


def test_udp_listens_on_the_same_port_as_tcp_when_the_policy_allows_it(run,
                                                                       udp_policy) -> None:
    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=0), udp_policy) as listener:
            ports = listener.ports
            assert "udp" in ports and "tcp" in ports
            assert len(set(ports.values())) == 1, ports  # one port number for all stacks

    run(main())


def test_unreliable_datagram_profile_listens_on_udp_only(run, make_policy) -> None:
    # The profile requires preserveMsgBoundaries, which no TCP-family stack offers.
    policy = make_policy(use=["unreliable-datagram"])

    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=0), policy) as listener:
            assert set(listener.ports) == {"udp"}
            assert listener.explanation.value("preserveMsgBoundaries").value == "require"

    run(main())


def test_a_fixed_port_is_used_as_given(run, udp_policy) -> None:
    with socket.socket() as s:
        s.bind((LO4, 0))
        port = s.getsockname()[1]

    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=port), udp_policy) as listener:
            assert set(listener.ports.values()) == {port}

    run(main())


def test_tls_listener_ports_are_named_after_registry_stacks(run, make_policy) -> None:
    cert = tp.certs.self_signed(["127.0.0.1"])

    async def main() -> None:
        local = tp.Local(address=LO4, port=0, certificates=[cert])
        async with listening(local, make_policy()) as listener:
            ports = listener.ports
            assert any(k.startswith("tls") for k in ports)
            assert "tcp" not in ports  # a certificate makes the TCP-family port a TLS one

    run(main())


def test_tls_mptcp_listener_is_also_listed_as_tls(run, make_policy) -> None:
    cert = tp.certs.self_signed(["127.0.0.1"])

    async def main() -> None:
        local = tp.Local(address=LO4, port=0, certificates=[cert])
        async with listening(local, make_policy()) as listener:
            assert "tls" in listener.ports, listener.ports
            # With a certificate the UDP side of the same port number serves QUIC.
            assert set(listener.ports) <= {"tls", "tls-mptcp", "quic"}
            assert len(set(listener.ports.values())) == 1

    run(main())


def test_listener_refuses_when_the_policy_allows_no_stack(run, make_policy) -> None:
    nothing = make_policy({"stack": {s: "prohibit" for s in
                                     ("tcp", "tls", "mptcp", "tls-mptcp", "udp", "quic")}})

    async def main() -> None:
        with pytest.raises(tp.PolicyError) as info:
            await tp.listen(tp.Local(address=LO4, port=0), policy=nothing)
        assert info.value.decision is not None

    run(main())


# ---- accepting -----------------------------------------------------------------------------


def test_async_for_yields_each_carrier(run, tcp_policy, store) -> None:
    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=0), tcp_policy) as listener:
            clients = [await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                         store=store) for _ in range(3)]
            accepted: list[tp.Carrier] = []
            async for carrier in listener:
                accepted.append(carrier)
                if len(accepted) == 3:
                    break
            try:
                assert {c.remote_address for c in accepted} == \
                    {c.local_address for c in clients}
                assert all(c.explanation is listener.explanation for c in accepted)
                for c in clients:
                    await c.send(b"from %d" % c.local_address[1])
                for a in accepted:
                    assert await a.receive() == b"from %d" % a.remote_address[1]
            finally:
                for c in accepted + clients:
                    await c.close()

    run(main())


def test_async_for_ends_when_the_listener_closes(run, tcp_policy) -> None:
    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        started = asyncio.Event()

        async def consume() -> list[tp.Carrier]:
            started.set()
            # Nothing queued: the loop runs straight to its first await and waits there, so
            # once `started` is seen the consumer is blocked inside `async for`.
            return [c async for c in listener]

        task = asyncio.ensure_future(consume())
        await started.wait()
        await listener.close()
        assert await task == []

    run(main())


def test_accept_callback_until_it_returns_false(run, tcp_policy, store) -> None:
    """Appendix A: the callback gets carriers until it returns False; then the Listener
    stops accepting, so a later connection is refused, not queued (issue 9, item 7;
    tests/runtime/test_callbacks_contract.py has the rest of the contract)."""
    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=0), tcp_policy) as listener:
            got: list[tp.Carrier] = []
            second = asyncio.get_running_loop().create_future()

            def on_carrier(c: tp.Carrier) -> bool:
                got.append(c)
                if len(got) == 2:
                    second.set_result(None)
                    return False
                return True

            listener.accept(on_carrier)
            target = f"{LO4}:{listener.port}"
            clients = [await tp.initiate(target, policy=tcp_policy, store=store)
                       for _ in range(2)]
            for c in clients:
                await c.send(b"hi")
            await second
            assert not listener.accepting
            try:
                with pytest.raises(tp.EstablishmentError):
                    await tp.initiate(target, policy=tcp_policy, store=store)
                assert len(got) == 2
            finally:
                for c in [*got, *clients]:
                    await c.close()

    run(main())


def test_dual_stack_listener_accepts_ipv4_and_ipv6(run, tcp_policy, store) -> None:
    async def main() -> None:
        async with listening(tp.Local(port=0), tcp_policy) as listener:
            port = listener.port
            for target in (f"{LO4}:{port}", f"[::1]:{port}"):
                client = await tp.initiate(target, policy=tcp_policy, store=store)
                server = await next_carrier(listener)
                await client.send(target.encode())
                assert await server.receive() == target.encode()
                await client.close()
                await server.close()

    run(main())


def test_ipv6_only_listener(run, tcp_policy, store) -> None:
    async def main() -> None:
        async with listening(tp.Local(address="::1", port=0), tcp_policy) as listener:
            client = await tp.initiate(f"[::1]:{listener.port}", policy=tcp_policy, store=store)
            server = await next_carrier(listener)
            assert client.remote_address[0] == "::1"
            await server.send(b"six")
            assert await client.receive() == b"six"
            await client.close()
            await server.close()

    run(main())


def test_udp_carriers_are_demultiplexed_per_peer(run, udp_policy) -> None:
    async def main() -> None:
        async with listening(tp.Local(address=LO4, port=0), udp_policy) as listener:
            target = f"udp://{LO4}:{listener.ports['udp']}"
            a = await tp.initiate(target, policy=udp_policy, store=tp.AssociationStore())
            b = await tp.initiate(target, policy=udp_policy, store=tp.AssociationStore())
            try:
                assert a.stack == b.stack == "udp"
                await a.send(b"a1")
                sa = await asyncio.wait_for(next_carrier(listener), 1.0)
                await b.send(b"b1")
                sb = await asyncio.wait_for(next_carrier(listener), 1.0)
                await a.send(b"a2")
                assert sa.stack == "udp" and sa.remote_address == a.local_address
                assert [await sa.receive(), await sa.receive()] == [b"a1", b"a2"]
                assert await sb.receive() == b"b1"
                await sb.send(b"to b")
                assert await b.receive() == b"to b"
                with pytest.raises(RuntimeError, match="reliable ordered"):
                    await a.as_stream()
            finally:
                await a.close()
                await b.close()

    run(main())


# ---- responders ----------------------------------------------------------------------------


async def upper(msg: tp.InMessage, reply: tp.Reply) -> None:
    await reply.send(bytes(msg).upper())


def test_responder_over_tcp(run, tcp_policy, store) -> None:
    async def main() -> None:
        responder = await tp.respond(tp.Local(address=LO4, port=0), upper, policy=tcp_policy)
        async with responder:
            port = responder.ports["tcp"]
            for word in (b"one", b"two"):  # two clients, each served
                client = await tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=store)
                await client.send(word)
                await client.send(word + b"!")
                assert [await client.receive(), await client.receive()] == \
                    [word.upper(), word.upper() + b"!"]
                await client.close()

    run(main())


def test_responder_with_a_plain_function_handler(run, tcp_policy, store) -> None:
    async def main() -> None:
        def handler(msg: tp.InMessage, reply: tp.Reply) -> Any:
            assert reply.request is msg
            return reply.send(tp.OutMessage(b"len=%d" % len(msg)))  # an awaitable

        async with await tp.respond(tp.Local(address=LO4, port=0), handler,
                                    policy=tcp_policy) as responder:
            client = await tp.initiate(f"{LO4}:{responder.listener.port}", policy=tcp_policy,
                                       store=store)
            await client.send(b"abcd")
            assert await client.receive() == b"len=4"
            await client.close()

    run(main())


def test_responder_over_udp(run, udp_policy) -> None:
    async def main() -> None:
        async with await tp.respond(tp.Local(address=LO4, port=0), upper,
                                    policy=udp_policy) as responder:
            port = responder.ports["udp"]
            client = await tp.initiate(f"udp://{LO4}:{port}", policy=udp_policy,
                                       store=tp.AssociationStore())
            try:
                assert client.stack == "udp"
                await client.send(b"datagram")
                assert await asyncio.wait_for(client.receive(), 1.0) == b"DATAGRAM"
                await client.send(b"again")
                reply = await client.receive()
                assert reply == b"AGAIN" and reply.remote == (LO4, port)
            finally:
                await client.close()

    run(main())


# ---- source and sink -----------------------------------------------------------------------


def test_source_to_sink_over_udp(run, make_policy) -> None:
    policy = make_policy()  # new_source / new_sink add the unreliable-datagram profile

    async def main() -> None:
        sink = await tp.new_sink(tp.Local(address=LO4, port=0), policy=policy)
        async with sink:
            source = await tp.new_source(None, f"{LO4}:{sink.port}", policy=policy)
            try:
                assert isinstance(source, tp.Source) and source.stack == "udp"
                for i in range(5):
                    await source.send(b"reading %d" % i)
                got = [await sink.receive() for _ in range(5)]
                assert got == [b"reading %d" % i for i in range(5)]  # loopback keeps order
                assert got[0].remote == source.local_address
                with pytest.raises(RuntimeError, match="only sends"):
                    await source.receive()
            finally:
                await source.close()

    run(main())


def test_sink_ready_callback_and_several_sources(run, make_policy) -> None:
    policy = make_policy()

    async def main() -> None:
        async with await tp.new_sink(tp.Local(address=LO4, port=0), policy=policy) as sink:
            seen: list[tuple[bytes, int]] = []
            both = asyncio.get_running_loop().create_future()

            def on_msg(m: tp.InMessage) -> None:
                seen.append((bytes(m), m.remote[1]))
                if len(seen) == 2:
                    both.set_result(None)

            sink.ready(on_msg)
            s1 = await tp.new_source(None, tp.Remote.parse(f"udp://{LO4}:{sink.port}"),
                                     policy=policy)
            s2 = await tp.new_source(None, f"{LO4}:{sink.port}", policy=policy)
            await s1.send(b"one")
            await s2.send(b"two")
            await both
            assert sorted(seen) == sorted([(b"one", s1.local_address[1]),
                                           (b"two", s2.local_address[1])])
            await s1.close()
            await s2.close()

    run(main())


def test_source_message_properties_over_udp(run, make_policy) -> None:
    policy = make_policy()

    async def main() -> None:
        async with await tp.new_sink(tp.Local(address=LO4, port=0), policy=policy) as sink:
            source = await tp.new_source(None, f"{LO4}:{sink.port}", policy=policy)
            try:
                sent: list[bytes] = []
                expired: list[bytes] = []
                msgs = [tp.OutMessage(b"n2", niceness=2), tp.OutMessage(b"n0", niceness=0),
                        tp.OutMessage(b"gone", lifetime=0), tp.OutMessage(b"n1", niceness=1)]
                await asyncio.gather(*(source.send_msg(
                    m, on_sent=lambda m: sent.append(m.data),
                    on_expired=lambda m: expired.append(m.data)) for m in msgs))
                got = [bytes(await sink.receive()) for _ in range(3)]
                assert got == [b"n0", b"n1", b"n2"]
                assert sent == got and expired == [b"gone"]
            finally:
                await source.close()

    run(main())


def test_sink_refused_when_the_policy_prohibits_udp(run, make_policy) -> None:
    no_udp = make_policy({"stack": {"udp": "prohibit"}})

    async def main() -> None:
        with pytest.raises(tp.PolicyError):
            await tp.new_sink(tp.Local(address=LO4, port=0), policy=no_udp)
        with pytest.raises(tp.PolicyError):
            await tp.new_source(None, f"{LO4}:9", policy=no_udp)

    run(main())


# ---- closing releases ----------------------------------------------------------------------


def test_closing_everything_releases_the_ports(run, tcp_policy, make_policy, store) -> None:
    async def main() -> list[tuple[int, str]]:
        ports: list[tuple[int, str]] = []
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        ports.append((listener.port, "tcp"))
        client = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
        accepted = await next_carrier(listener)
        await client.close()
        await accepted.close()
        await listener.close()

        responder = await tp.respond(tp.Local(address=LO4, port=0), upper, policy=tcp_policy)
        ports.append((responder.listener.port, "tcp"))
        client = await tp.initiate(f"{LO4}:{responder.listener.port}", policy=tcp_policy,
                                   store=store)
        await client.send(b"y")
        assert await client.receive() == b"Y"
        await responder.close()  # with the served carrier still open
        await client.close()

        sink = await tp.new_sink(tp.Local(address=LO4, port=0), policy=make_policy())
        source = await tp.new_source(None, f"{LO4}:{sink.port}", policy=make_policy())
        await source.send(b"z")
        assert await sink.receive() == b"z"
        ports.append((sink.port, "udp"))
        await source.close()
        await sink.close()

        # Listening again on the very same port works at once.
        again = await tp.listen(tp.Local(address=LO4, port=ports[0][0]), policy=tcp_policy)
        assert set(again.ports.values()) == {ports[0][0]}
        await again.close()
        return ports

    for port, proto in run(main()):
        assert can_bind(port, proto), (port, proto)


def test_closing_a_udp_listener_releases_its_port(run, until, udp_policy) -> None:
    async def main() -> int:
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=udp_policy)
        assert "udp" in listener.ports
        port = listener.port
        await listener.close()
        # asyncio closes a datagram socket in a loop callback after close() returns; wait for
        # that (a socket that is never closed keeps the port and fails here).
        await until(lambda: can_bind(port, "udp"), what=f"UDP port {port} released")
        return port

    assert can_bind(run(main()), "tcp", "udp")
