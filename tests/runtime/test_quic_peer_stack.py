"""The quic-ice stack (stacks/quic/peer.py) over SocketPaths on loopback, and SocketPath itself.

Each test makes two connected UDP sockets on loopback (`SocketPath.pair`), runs
`PeerQuicStack().connect` over one and `listen` over the other (or aioquic's own client, for
peers that are not quic-ice), and checks what the stack promises: the listener's first
carrier comes with the handshake, before anyone sent a message; messages both ways; forks
from both ends; the peer authenticated by certificate fingerprint on both sides, and refused
otherwise with nothing delivered; the path closed with the connection. Real sockets, real
aioquic on both ends, no mocks; every test closes what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import taps_post as tp
from taps_post.core.framing import LengthPrefixFramer
from taps_post.core.messages import OutMessage
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate
from taps_post.errors import ConnectionClosedError
from taps_post.stacks import get as get_stack
from taps_post.stacks.base import AttemptSpec, ListenSpec
from taps_post.stacks.quic import QuicClosedError, QuicStreamTransient
from taps_post.stacks.quic.config import BAD_CERTIFICATE, CERTIFICATE_REQUIRED, ClientAuthError
from taps_post.stacks.quic.peer import ALPN, OPEN, PeerQuicListening, PeerQuicStack
from taps_post.stacks.sockpath import SocketPath
from taps_post.stacks.tls import PinMismatchError

LO = "127.0.0.1"
Cert = tp.certs.Certificate


@pytest.fixture(scope="module")
def certs() -> dict[str, Cert]:
    """alice (the connecting peer), bob (the listening one), mallory (someone else)."""
    return {name: tp.certs.self_signed([f"{name}.example"])
            for name in ("alice", "bob", "mallory")}


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = dict(conn_timeout=5.0, attempt_delay=0.25, max_size=16 << 20,
                                min_tls="1.3", verify_peer=True, session_cache=True, alpn=(),
                                zero_rtt=True)
    base.update(overrides)
    return Settings(**base)


class NoTickets:
    """The SessionState a stack sees; quic-ice takes and keeps no tickets."""

    def __init__(self) -> None:
        self.tls_contexts: dict[Any, Any] = {}
        self.added: list[Any] = []

    def take_ticket(self, stack: str, accept: Callable[[Any], bool] | None = None) -> Any:
        raise AssertionError("quic-ice must not ask for session tickets")

    def add_ticket(self, stack: str, ticket: Any) -> None:
        self.added.append(ticket)


def attempt(path: SocketPath, identity: tuple[Cert, ...], pins: set[str],
            **s: Any) -> AttemptSpec:
    c = Candidate(rank=0, interface="lo", local_address=path.local[0], stack="quic-ice",
                  remote_address=path.remote[0], remote_port=path.remote[1], family="ipv4",
                  start_ms=0, key=cast(Any, None))
    return AttemptSpec(candidate=c, host="bob", settings=settings(**s),
                       association=NoTickets(), framer=LengthPrefixFramer, identity=identity,
                       path=path, peer_fingerprints=frozenset(pins))


@contextlib.asynccontextmanager
async def paths(address: str = LO) -> AsyncIterator[tuple[SocketPath, SocketPath]]:
    """Two SocketPaths connected to each other, closed at the end whatever the stack did
    (the stack closes them itself when their connection ends, which may be after the test:
    an aborted carrier's connection lingers in its closing period)."""
    a, b = await SocketPath.pair(address)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@dataclass
class Listened:
    listening: PeerQuicListening
    path: SocketPath
    transients: asyncio.Queue[QuicStreamTransient] = field(default_factory=asyncio.Queue)
    delivered: list[QuicStreamTransient] = field(default_factory=list)

    async def next(self, timeout: float = 3.0) -> QuicStreamTransient:
        return await asyncio.wait_for(self.transients.get(), timeout)


@contextlib.asynccontextmanager
async def listening(path: SocketPath, identity: tuple[Cert, ...], pins: set[str],
                    **s: Any) -> AsyncIterator[Listened]:
    holder: list[Listened] = []

    def on_transient(t: Any) -> None:
        holder[0].delivered.append(t)
        holder[0].transients.put_nowait(t)

    spec = ListenSpec(address=path.local[0], port=path.local[1], interface=None,
                      settings=settings(**s), framer=LengthPrefixFramer, identity=identity,
                      on_transient=on_transient, path=path, peer_fingerprints=frozenset(pins))
    lst = await PeerQuicStack().listen(spec)
    holder.append(Listened(lst, path))
    try:
        yield holder[0]
    finally:
        await lst.aclose()


async def until(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


async def receive(t: QuicStreamTransient, timeout: float = 3.0) -> bytes:
    return bytes(await asyncio.wait_for(t.receive(), timeout))


# ---- handshake, messages, forks -------------------------------------------------------------


def test_connect_and_listen_authenticate_each_other_and_carry_messages_both_ways(
        run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            t = await PeerQuicStack().connect(
                attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint}))
            try:
                # The listener's carrier comes with the handshake (Rule 4): nobody has sent a
                # message yet, and it holds none (the stack's opening bytes are not one).
                s = await srv.next()
                await srv.listening.wait_connected()
                assert srv.listening.peer_fingerprint == certs["alice"].fingerprint
                assert t.stack == s.stack == "quic-ice"
                assert t.rtt_ms is not None and t.rtt_ms > 0
                assert t.established_ms is not None and t.established_ms >= t.rtt_ms
                assert s.try_receive() is None
                assert t.session.connection.tls.alpn_negotiated == ALPN
                assert not t.session.session_resumed
                # the listener speaks first, then the connecting end
                s.submit(OutMessage(b"hello alice"))
                assert await receive(t) == b"hello alice"
                for i in range(20):
                    t.submit(OutMessage(b"msg-%d" % i))
                assert [await receive(s) for _ in range(20)] == [b"msg-%d" % i
                                                                 for i in range(20)]
                big = bytes(range(256)) * 1024
                t.submit(OutMessage(big))
                assert await receive(s) == big
                # DATAGRAM frames (reliable=False) ride the path as on the quic stack
                t.submit(OutMessage(b"unreliable", reliable=False))
                assert await receive(s) == b"unreliable"
                assert t.local_address == a_path.local and t.remote_address == a_path.remote
                assert not await t.migrate(LO, None)  # Rule 3: the path is the ICE pair
            finally:
                t.abort()

    run(main(), 15)


def test_the_stack_is_what_the_registry_gives_for_quic_ice() -> None:
    stack = get_stack("quic-ice")
    assert isinstance(stack, PeerQuicStack)
    assert (stack.name, stack.ip_protocol) == ("quic-ice", "udp")


def test_forks_from_both_ends_reach_the_other_end(run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            t0 = await PeerQuicStack().connect(
                attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint}))
            try:
                s0 = await srv.next()
                # the connecting end forks: the listener's on_transient gets the stream
                t1 = t0.open_sibling()
                assert t1.stack == "quic-ice" and t1.stream_id != t0.stream_id
                t1.submit(OutMessage(b"fork from alice"))
                s1 = await srv.next()
                assert s1.stack == "quic-ice"
                assert await receive(s1) == b"fork from alice"
                s1.submit(OutMessage(b"answer on the fork"))
                assert await receive(t1) == b"answer on the fork"
                # the listening end forks: the connecting carrier that accepts gets it
                siblings: asyncio.Queue[Any] = asyncio.Queue()
                assert t0.accept_siblings(siblings.put_nowait)
                s2 = s0.open_sibling()
                s2.submit(OutMessage(b"fork from bob"))
                t2 = await asyncio.wait_for(siblings.get(), 3)
                assert t2.stack == "quic-ice"
                assert await receive(t2) == b"fork from bob"
                t2.submit(OutMessage(b"answer from alice"))
                assert await receive(s2) == b"answer from alice"
                # the first carriers still talk, and nothing went astray
                t0.submit(OutMessage(b"still here"))
                assert await receive(s0) == b"still here"
                assert len(srv.delivered) == 2
                assert siblings.empty()
            finally:
                t0.abort()

    run(main(), 15)


def test_closing_the_connection_closes_both_paths(run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            t = await PeerQuicStack().connect(
                attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint}))
            s = await srv.next()
            t.submit(OutMessage(b"bye"))
            assert await receive(s) == b"bye"
            await srv.listening.aclose()  # CONNECTION_CLOSE to alice, bob's path closes
            await until(lambda: b_path.closed)
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(t.receive(), 3)
            await until(lambda: a_path.closed)  # alice's connection ended: her path too
            assert not t.is_open

    run(main(), 15)


def test_ipv6_loopback(run: Any, certs: dict[str, Cert]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")

    async def main() -> None:
        async with paths("::1") as (a_path, b_path), \
                listening(b_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            t = await PeerQuicStack().connect(
                attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint}))
            try:
                s = await srv.next()
                t.submit(OutMessage(b"over ::1"))
                assert await receive(s) == b"over ::1"
                s.submit(OutMessage(b"back"))
                assert await receive(t) == b"back"
            finally:
                t.abort()

    run(main(), 15)


# ---- authentication -------------------------------------------------------------------------


def test_a_listener_with_another_certificate_is_refused_by_the_client(
        run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        # mallory sits where bob should be, and would accept alice
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["mallory"],), {certs["alice"].fingerprint}) as srv:
            with pytest.raises(PinMismatchError, match=certs["mallory"].fingerprint):
                await PeerQuicStack().connect(
                    attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint}))
            assert a_path.closed or await _closes(a_path)
            with pytest.raises(QuicClosedError) as info:
                await asyncio.wait_for(srv.listening.wait_connected(), 3)
            assert info.value.error_code == BAD_CERTIFICATE
            assert srv.delivered == []

    run(main(), 15)


def test_a_client_with_another_certificate_is_refused_by_the_listener(
        run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            # mallory connects in alice's place; she would accept bob
            with pytest.raises(QuicClosedError) as info:
                await PeerQuicStack().connect(
                    attempt(a_path, (certs["mallory"],), {certs["bob"].fingerprint}))
            assert info.value.error_code == BAD_CERTIFICATE
            with pytest.raises(ClientAuthError, match=certs["mallory"].fingerprint):
                await asyncio.wait_for(srv.listening.wait_connected(), 3)
            await asyncio.sleep(0.1)  # an observation window: nothing may arrive in it
            assert srv.delivered == []
            assert await _closes(a_path)

    run(main(), 15)


class RawClient(QuicConnectionProtocol):
    """aioquic's own client protocol, recording how the connection ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: asyncio.Future[events.ConnectionTerminated] = \
            asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)
        super().quic_event_received(event)


@contextlib.asynccontextmanager
async def raw_client(identity: Cert | None, alpn: str = ALPN
                     ) -> AsyncIterator[tuple[RawClient, SocketPath]]:
    """aioquic's client on its own socket, and the listener's path connected to it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LO, 0))
    # Not connected: aioquic passes the peer's address to every sendto(), which a datagram
    # transport on a connected socket may refuse (uvloop: EISCONN, into error_received).
    server_path = await SocketPath.open(local=(LO, 0), remote=sock.getsockname())
    config = QuicConfiguration(is_client=True, alpn_protocols=[alpn],
                               verify_mode=ssl.CERT_NONE)
    if identity is not None:
        assert identity.key_pem is not None
        config.certificate = x509.load_pem_x509_certificate(identity.cert_pem.encode())
        config.private_key = serialization.load_pem_private_key(identity.key_pem.encode(),
                                                                None)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: RawClient(QuicConnection(configuration=config)), sock=sock)
    try:
        proto.connect(server_path.local)
        yield proto, server_path
    finally:
        proto.close()
        transport.close()
        server_path.close()


def test_a_client_without_a_certificate_is_refused(run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        # Our own stack will not even try without a certificate to present...
        a_path, b_path = await SocketPath.pair(LO)
        with pytest.raises(ValueError, match="identity"):
            await PeerQuicStack().connect(attempt(a_path, (), {certs["bob"].fingerprint}))
        pinned_only = Cert(certs["alice"].cert_pem)  # the certificate without its key
        with pytest.raises(ValueError, match="private key"):
            await PeerQuicStack().connect(
                attempt(b_path, (pinned_only,), {certs["bob"].fingerprint}))
        assert a_path.closed and b_path.closed  # the stack owned them
        # ...and a listener refuses aioquic's client that presents none.
        async with raw_client(None) as (client, server_path), \
                listening(server_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            await asyncio.wait_for(client.wait_connected(), 3)  # TLS 1.3: its side is done
            ended = await asyncio.wait_for(client.ended, 3)
            assert ended.error_code == CERTIFICATE_REQUIRED
            with pytest.raises(ClientAuthError, match="no certificate"):
                await asyncio.wait_for(srv.listening.wait_connected(), 3)
            assert srv.delivered == []

    run(main(), 15)


def test_a_pinned_client_that_does_not_speak_quic_ice_on_its_first_stream_is_refused(
        run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with raw_client(certs["alice"]) as (client, server_path), \
                listening(server_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            await asyncio.wait_for(client.wait_connected(), 3)
            await asyncio.wait_for(srv.listening.wait_connected(), 3)  # its cert is pinned
            sid = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(sid, b"\x00\x00\x00\x05hello")
            client.transmit()
            ended = await asyncio.wait_for(client.ended, 3)
            assert ended.error_code == QuicErrorCode.CONNECTION_REFUSED
            assert "preamble" in ended.reason_phrase
            assert srv.delivered == []

    run(main(), 15)


def test_a_client_of_another_application_protocol_fails_the_handshake(
        run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with raw_client(certs["alice"], alpn="h3") as (client, server_path), \
                listening(server_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            ended = await asyncio.wait_for(client.ended, 3)
            assert ended.error_code == QuicErrorCode.CRYPTO_ERROR + 120  # no_application_protocol
            with pytest.raises(QuicClosedError):
                await asyncio.wait_for(srv.listening.wait_connected(), 3)
            assert srv.delivered == []

    run(main(), 15)


def test_a_first_stream_with_the_preamble_delivers_exactly_the_messages_after_it(
        run: Any, certs: dict[str, Cert]) -> None:
    """The preamble split over two writes, a message right behind it in the second."""

    async def main() -> None:
        async with raw_client(certs["alice"]) as (client, server_path), \
                listening(server_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            await asyncio.wait_for(client.wait_connected(), 3)
            quic = client._quic
            sid = quic.get_next_available_stream_id()
            quic.send_stream_data(sid, OPEN[:4])
            client.transmit()
            await asyncio.sleep(0.05)  # an observation window: half a preamble opens nothing
            assert srv.delivered == []
            quic.send_stream_data(sid, OPEN[4:] + b"\x00\x00\x00\x02hi")
            client.transmit()
            s = await srv.next()
            assert await receive(s) == b"hi"
            assert s.try_receive() is None

    run(main(), 15)


def test_a_fork_that_overtakes_the_first_stream_waits_for_it(
        run: Any, certs: dict[str, Cert]) -> None:
    """The listener's on_transient sees the first stream first, whatever arrives first."""

    async def main() -> None:
        async with raw_client(certs["alice"]) as (client, server_path), \
                listening(server_path, (certs["bob"],), {certs["alice"].fingerprint}) as srv:
            await asyncio.wait_for(client.wait_connected(), 3)
            quic = client._quic
            loop = asyncio.get_running_loop()
            quic.send_stream_data(0, OPEN + b"\x00\x00\x00\x05first")
            lost = quic.datagrams_to_send(now=loop.time())  # the first stream's packet is lost
            assert lost
            quic.send_stream_data(4, b"\x00\x00\x00\x04fork")
            client.transmit()
            # until aioquic retransmits the lost packet, the fork is held, not delivered
            first = await srv.next()
            fork = await srv.next()
            assert (first.stream_id, fork.stream_id) == (0, 4)
            assert await receive(first) == b"first"
            assert await receive(fork) == b"fork"

    run(main(), 15)


# ---- what the stack refuses before sending anything -----------------------------------------


def test_specs_without_a_path_or_pins_are_refused(run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        a_path, b_path = await SocketPath.pair(LO)
        spec = attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint})
        from dataclasses import replace
        with pytest.raises(TypeError, match="path"):
            await PeerQuicStack().connect(replace(spec, path=None))
        assert not a_path.closed
        with pytest.raises(ValueError, match="peer_fingerprints"):
            await PeerQuicStack().connect(replace(spec, peer_fingerprints=frozenset()))
        assert a_path.closed
        lspec = ListenSpec(address=LO, port=0, interface=None, settings=settings(),
                           framer=LengthPrefixFramer, identity=(certs["bob"],),
                           on_transient=lambda _t: None, path=None)
        with pytest.raises(TypeError, match="path"):
            await PeerQuicStack().listen(lspec)
        with pytest.raises(ValueError, match="peer_fingerprints"):
            await PeerQuicStack().listen(replace(lspec, path=b_path))
        assert b_path.closed

    run(main(), 10)


def test_lower_case_fingerprints_are_the_same_pins(run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["bob"],),
                          {certs["alice"].fingerprint.lower()}) as srv:
            t = await PeerQuicStack().connect(
                attempt(a_path, (certs["alice"],), {certs["bob"].fingerprint.lower()}))
            try:
                s = await srv.next()
                t.submit(OutMessage(b"x"))
                assert await receive(s) == b"x"
            finally:
                t.abort()

    run(main(), 10)


def test_a_listener_nobody_connects_to_gives_up_after_its_handshake_timeout(
        run: Any, certs: dict[str, Cert]) -> None:
    async def main() -> None:
        async with paths(LO) as (a_path, b_path), \
                listening(b_path, (certs["bob"],), {certs["alice"].fingerprint},
                          handshake_timeout=0.2) as srv:
            a_path.send(b"not QUIC at all")  # dropped: only an Initial makes a connection
            with pytest.raises(TimeoutError, match="handshakeTimeout"):
                await asyncio.wait_for(srv.listening.wait_connected(), 3)
            await until(lambda: b_path.closed)
            assert srv.delivered == []

    run(main(), 10)


# ---- SocketPath -----------------------------------------------------------------------------


async def _closes(path: SocketPath, timeout: float = 3.0) -> bool:
    await until(lambda: path.closed, timeout)
    return True


def test_socket_path_keeps_order_and_holds_datagrams_until_a_receiver_is_set(
        run: Any) -> None:
    async def main() -> None:
        a, b = await SocketPath.pair(LO)
        try:
            assert a.remote == b.local and b.remote == a.local
            for i in range(50):
                a.send(b"%d" % i)
            got: list[bytes] = []
            await asyncio.sleep(0.02)  # an observation window: they wait in the kernel
            b.receive(got.append)
            await until(lambda: len(got) == 50)
            assert got == [b"%d" % i for i in range(50)]
            b.receive(None)
            a.send(b"later")
            await asyncio.sleep(0.02)
            assert len(got) == 50  # not read while no receiver is set
            b.receive(got.append)
            await until(lambda: len(got) == 51)
            assert got[-1] == b"later"
            assert a.sent == 51 and b.received == 51 and a.dropped == 0
        finally:
            a.close()
            b.close()
        a.close()  # idempotent
        a.send(b"after close")  # dropped, never raises
        assert a.closed and "closed" in repr(a)

    run(main(), 10)


def test_socket_path_open_binds_connects_and_survives_a_failing_receiver(run: Any) -> None:
    async def main() -> None:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LO, 0))
        peer.setblocking(False)
        path = await SocketPath.open(local=(LO, 0), remote=peer.getsockname(),
                                     interface=None)
        try:
            assert path.local[0] == LO and path.local[1] > 0
            peer.connect(path.local)
            calls: list[bytes] = []

            def flaky(data: bytes) -> None:
                calls.append(data)
                if data == b"boom":
                    raise RuntimeError("receiver bug")

            loop = asyncio.get_running_loop()
            reported: list[dict[str, Any]] = []
            loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
            path.receive(flaky)
            peer.send(b"boom")
            peer.send(b"fine")
            await until(lambda: len(calls) == 2)
            assert calls == [b"boom", b"fine"]
            assert reported and isinstance(reported[0]["exception"], RuntimeError)
            path.send(b"to peer")
            await until(lambda: _recv(peer) == b"to peer")
        finally:
            path.close()
            peer.close()

    run(main(), 10)


def _recv(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(2048)
    except BlockingIOError:
        return None
