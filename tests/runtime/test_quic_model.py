"""The QUIC stack under issue 9's carrier model, against real aioquic peers on loopback.

Most tests drive `QuicStack.connect` / `QuicStack.listen` directly (the plug-in contract:
AttemptSpec, ListenSpec, Transients), so what they check is the stack's side of the model
whatever the runtime above does with it: 0-RTT in the draft's order from an EarlyFlight,
InMessage.early, every message ending once (on_acked, on_sent for DATAGRAM frames, or
on_send_error), `immediate` as "own packet, now", DATAGRAM frames routed by their stream id
prefix, path statistics from aioquic's recovery state, accept_siblings refusal and client
certificates on listeners. Peers are our own listener or aioquic's own client and server API.
No mocks; every test closes what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import taps_post as tp
from taps_post.core.early import EarlyFlight, Held
from taps_post.core.framing import LengthPrefixFramer
from taps_post.core.messages import InMessage, OutMessage
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate
from taps_post.errors import ConnectionClosedError
from taps_post.stacks.base import AttemptSpec, ListenSpec
from taps_post.stacks.quic import QuicClosedError, QuicStack, QuicStreamTransient
from taps_post.stacks.quic.compat import pending_datagram_frames
from taps_post.stacks.quic.wire import REFUSED_STREAM, datagram_payload, split_datagram

LOCAL = "127.0.0.1"


# ---- harness -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert() -> tp.certs.Certificate:
    return tp.certs.self_signed(["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def client_cert() -> tp.certs.Certificate:
    return tp.certs.self_signed(["client.example"])


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = dict(conn_timeout=5.0, attempt_delay=0.25, max_size=16 << 20,
                                min_tls="1.3", verify_peer=True, session_cache=True, alpn=(),
                                zero_rtt=True)
    base.update(overrides)
    return Settings(**base)


class Tickets:
    """The SessionState a stack sees (the runtime's Association implements it)."""

    def __init__(self) -> None:
        self.tls_contexts: dict[Any, Any] = {}
        self.tickets: list[Any] = []

    def take_ticket(self, stack: str, accept: Callable[[Any], bool] | None = None) -> Any:
        for i in range(len(self.tickets) - 1, -1, -1):
            if accept is None or accept(self.tickets[i]):
                return self.tickets.pop(i)
        return None

    def add_ticket(self, stack: str, ticket: Any) -> None:
        self.tickets.append(ticket)


def candidate(port: int) -> Candidate:
    return Candidate(rank=0, interface="lo", local_address=LOCAL, stack="quic",
                     remote_address=LOCAL, remote_port=port, family="ipv4", start_ms=0,
                     key=cast(Any, None))


def attempt(port: int, cert: tp.certs.Certificate, state: Tickets, *, early: Any = None,
            identity: tuple[tp.certs.Certificate, ...] = (), **s: Any) -> AttemptSpec:
    return AttemptSpec(candidate=candidate(port), host="localhost", settings=settings(**s),
                       association=state, framer=LengthPrefixFramer, pinned=(cert,),
                       identity=identity, early=early)


@dataclass
class Served:
    """Our QUIC listener (the stack's), the Transients it accepted, what each received."""

    port: int
    listening: Any
    transients: asyncio.Queue[QuicStreamTransient] = field(default_factory=asyncio.Queue)
    received: list[InMessage] = field(default_factory=list)

    async def next(self, timeout: float = 3.0) -> QuicStreamTransient:
        return await asyncio.wait_for(self.transients.get(), timeout)


@contextlib.asynccontextmanager
async def listening(cert: tp.certs.Certificate, port: int = 0, *,
                    trusted: tuple[tp.certs.Certificate, ...] = (),
                    record: bool = True, **s: Any) -> AsyncIterator[Served]:
    """QuicStack.listen on 127.0.0.1; with `record`, each accepted Transient's messages are
    read into `received` (in arrival order, InMessage.early kept)."""
    holder: list[Served] = []

    def on_transient(t: Any) -> None:
        served = holder[0]
        if record:
            t.set_callback(served.received.append)
        served.transients.put_nowait(t)

    spec = ListenSpec(address=LOCAL, port=port, interface=None, settings=settings(**s),
                      framer=LengthPrefixFramer, identity=(cert,), on_transient=on_transient,
                      trusted=trusted)
    lst = await QuicStack().listen(spec)
    holder.append(Served(lst.port, lst))
    try:
        yield holder[0]
    finally:
        await lst.aclose()


async def until(predicate: Callable[[], object], timeout: float = 3.0,
                what: str = "condition") -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


@dataclass
class Outcome:
    """Every callback one message got, in order."""

    events: list[str] = field(default_factory=list)

    def callbacks(self) -> dict[str, Any]:
        def note(kind: str) -> Callable[[OutMessage], None]:
            return lambda _m: self.events.append(kind)
        return {k: note(k) for k in ("on_sent", "on_acked", "on_expired", "on_send_error")}


def hold(flight: EarlyFlight, msg: OutMessage, outcome: Outcome, loop: Any) -> Held:
    cb = outcome.callbacks()
    held = Held(msg, cb["on_sent"], cb["on_acked"], cb["on_expired"], cb["on_send_error"],
                queued_at=loop.time())
    flight.hold(held)
    return held


async def ticket_from(port: int, cert: tp.certs.Certificate, state: Tickets) -> None:
    """One full handshake to `port`, so `state` holds a ticket (the server sends it after
    the handshake: wait for it, then close)."""
    t = await QuicStack().connect(attempt(port, cert, state))
    try:
        await until(lambda: bool(state.tickets), 3, "a session ticket")
    finally:
        t.abort()


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
    return port


def raw_server_config(cert: tp.certs.Certificate, *,
                      datagram_frame_size: int | None = 65536) -> QuicConfiguration:
    config = QuicConfiguration(is_client=False, max_datagram_frame_size=datagram_frame_size)
    config.certificate = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    assert cert.key_pem is not None
    config.private_key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
    return config


@dataclass
class RawSeen:
    stream_chunks: list[tuple[int, bytes]] = field(default_factory=list)
    datagrams: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def raw_server(cert: tp.certs.Certificate, *, datagram_frame_size: int | None = 65536,
                     close_on_data: int | None = None,
                     ) -> AsyncIterator[tuple[int, RawSeen]]:
    """aioquic's own server: records every StreamDataReceived chunk (one per STREAM frame,
    so per packet) and DATAGRAM frame; with `close_on_data`, closes the connection with that
    application error code as soon as stream data arrives, before acknowledging it."""
    seen = RawSeen()

    class Recording(QuicConnectionProtocol):
        def quic_event_received(self, event: events.QuicEvent) -> None:
            if isinstance(event, events.StreamDataReceived) and event.data:
                seen.stream_chunks.append((event.stream_id, event.data))
                if close_on_data is not None:
                    self._quic.close(error_code=close_on_data, reason_phrase="test close")
            elif isinstance(event, events.DatagramFrameReceived):
                seen.datagrams.append(event.data)

    port = free_udp_port()
    server = await serve(LOCAL, port, configuration=raw_server_config(
        cert, datagram_frame_size=datagram_frame_size), create_protocol=Recording)
    try:
        yield port, seen
    finally:
        server.close()


# ---- 0-RTT in the draft's order (issue 9 item 2) -----------------------------------------


def test_every_idempotent_message_of_the_flight_rides_0rtt_and_none_other(
        run: Any, cert: Any) -> None:
    """A flight of three messages: two idempotent ones ride in 0-RTT with the ClientHello
    (the server sees InMessage.early), the non-idempotent one is not taken: it waits for the
    handshake (the carrier sends it after settle). The originals get each callback once,
    from the winner's relays."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with listening(cert) as srv:
            state = Tickets()
            await ticket_from(srv.port, cert, state)
            flight = EarlyFlight()
            outcomes = [Outcome(), Outcome(), Outcome()]
            msgs = [OutMessage(b"one", idempotent=True), OutMessage(b"not-idempotent"),
                    OutMessage(b"two", idempotent=True)]
            for m, o in zip(msgs, outcomes, strict=True):
                hold(flight, m, o, loop)
            a = flight.attempt()
            t = await QuicStack().connect(attempt(srv.port, cert, state, early=a))
            try:
                assert t.early_attempt is a
                assert (t.session_reused, t.early_sent, t.early_in_syn) == (True, True, True)
                assert [h.message for h in a.taken] == [msgs[0], msgs[2]]
                rest = flight.settle(a)
                assert [h.message for h in rest] == [msgs[1]]
                t.submit(msgs[1], **outcomes[1].callbacks())
                await until(lambda: len(srv.received) == 3 and all(
                    "on_acked" in o.events for o in outcomes), 3, "all three acknowledged")
                got = [(bytes(m), m.early) for m in srv.received]
                assert got == [(b"one", True), (b"two", True), (b"not-idempotent", False)]
                for o in outcomes:
                    assert o.events == ["on_sent", "on_acked"]
            finally:
                t.abort()

    run(main(), 15)


class DelayRelay(asyncio.DatagramProtocol):
    """UDP relay delaying every datagram by `delay` seconds each way (RTT = 2 x delay)."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.front: asyncio.DatagramTransport | None = None
        self.back: socket.socket | None = None
        self.client: tuple[str, int] | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.back is None:
            self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.back.setblocking(False)
            self.back.connect(self.upstream)
            self.loop.add_reader(self.back.fileno(), self._from_server)
        self.client = addr
        self.loop.call_later(self.delay, self._send, self.back, data)

    @staticmethod
    def _send(back: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            back.send(data)

    def _from_server(self) -> None:
        assert self.back is not None
        while True:
            try:
                data = self.back.recv(65536)
            except OSError:
                return
            if self.front is not None and self.client is not None:
                self.loop.call_later(self.delay, self.front.sendto, data, self.client)

    async def start(self) -> int:
        await self.loop.create_datagram_endpoint(lambda: self, local_addr=(LOCAL, 0))
        assert self.front is not None
        port: int = self.front.get_extra_info("sockname")[1]
        return port

    def close(self) -> None:
        back, self.back = self.back, None
        if back is not None:
            self.loop.remove_reader(back.fileno())
            back.close()
        front, self.front = self.front, None
        if front is not None:
            front.close()


def test_messages_held_while_the_handshake_runs_ride_0rtt_too(run: Any, cert: Any) -> None:
    """Through a 2 x 30 ms relay: idempotent messages held after the attempt started, while
    its handshake runs, are written as 0-RTT data at once (the server sees them early); a
    non-idempotent one held then is not taken."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with listening(cert) as srv:
            state = Tickets()
            await ticket_from(srv.port, cert, state)
            relay = DelayRelay((LOCAL, srv.port), 0.03)
            port = await relay.start()
            try:
                flight = EarlyFlight()
                first = OutMessage(b"first", idempotent=True)
                hold(flight, first, Outcome(), loop)
                a = flight.attempt()
                task = asyncio.ensure_future(
                    QuicStack().connect(attempt(port, cert, state, early=a)))
                await asyncio.sleep(0.015)  # the ClientHello is on its way, no answer yet
                assert not task.done()
                later = OutMessage(b"later", idempotent=True)
                plain = OutMessage(b"plain")
                outcome = Outcome()
                hold(flight, later, outcome, loop)
                hold(flight, plain, Outcome(), loop)
                t = await task
                try:
                    assert [h.message for h in a.taken] == [first, later]
                    rest = flight.settle(a)
                    assert [h.message for h in rest] == [plain]
                    await until(lambda: len(srv.received) == 2, 3, "early messages")
                    assert [(bytes(m), m.early) for m in srv.received] == [
                        (b"first", True), (b"later", True)]
                    await until(lambda: "on_acked" in outcome.events, 3, "ack")
                    assert outcome.events == ["on_sent", "on_acked"]
                finally:
                    t.abort()
            finally:
                relay.close()

    run(main(), 15)


def test_a_message_begun_in_0rtt_and_finished_in_1rtt_is_early(run: Any, cert: Any) -> None:
    """A 60 kB idempotent message does not fit the first flight (the congestion window):
    its first bytes arrive as 0-RTT data, the rest after the handshake, in several stream
    events. It is one early message; the message sent after the handshake is not early."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with listening(cert) as srv:
            state = Tickets()
            await ticket_from(srv.port, cert, state)
            flight = EarlyFlight()
            big = OutMessage(b"B" * 60_000, idempotent=True)
            hold(flight, big, Outcome(), loop)
            a = flight.attempt()
            t = await QuicStack().connect(attempt(srv.port, cert, state, early=a))
            try:
                flight.settle(a)
                t.submit(OutMessage(b"after"))
                await until(lambda: len(srv.received) == 2, 5, "both messages")
                assert [(len(m), m.early) for m in srv.received] == [(60_000, True),
                                                                     (5, False)]
            finally:
                t.abort()

    run(main(), 15)


@pytest.mark.parametrize("server", ["ours", "aioquic"])
def test_early_data_the_server_refuses_is_sent_again_once(run: Any, cert: Any,
                                                          server: str) -> None:
    """The client holds a ticket allowing early data, but the server that answers cannot
    resume it (a new server on the same port: ours, or aioquic's own with no ticket store):
    the 0-RTT packets are dropped, aioquic sends the same stream bytes in 1-RTT, and the
    peer gets each message once, each original gets on_sent and on_acked once."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = Tickets()
        async with listening(cert) as first:
            await ticket_from(first.port, cert, state)
            port = first.port
        await asyncio.sleep(0.02)  # the listener's socket closes on the next iterations
        assert state.tickets and state.tickets[-1].max_early_data_size is not None
        flight = EarlyFlight()
        outcomes = [Outcome(), Outcome()]
        for data, o in zip((b"alpha", b"beta"), outcomes, strict=True):
            hold(flight, OutMessage(data, idempotent=True), o, loop)
        a = flight.attempt()

        async def exchange(received: Callable[[], list[bytes]]) -> None:
            t = await QuicStack().connect(attempt(port, cert, state, early=a))
            try:
                assert (t.early_sent, t.early_in_syn, t.session_reused) == (True, False, False)
                flight.settle(a)
                await until(lambda: all("on_acked" in o.events for o in outcomes), 5,
                            "acknowledged in 1-RTT")
                await until(lambda: len(received()) >= 2, 3, "delivered")
                await asyncio.sleep(0.1)  # a duplicate would arrive in this window
                assert received() == [b"alpha", b"beta"]
                for o in outcomes:
                    assert o.events == ["on_sent", "on_acked"]
            finally:
                t.abort()

        if server == "ours":
            async with listening(cert, port) as second:
                await exchange(lambda: [bytes(m) for m in second.received])
                assert not any(m.early for m in second.received)
        else:
            async with raw_server_on(cert, port) as seen:
                def messages() -> list[bytes]:
                    data = b"".join(d for _sid, d in seen.stream_chunks)
                    out = []
                    while len(data) >= 4:
                        (n,) = struct.unpack("!I", data[:4])
                        out.append(data[4:4 + n])
                        data = data[4 + n:]
                    return out
                await exchange(messages)

    run(main(), 20)


@contextlib.asynccontextmanager
async def raw_server_on(cert: tp.certs.Certificate, port: int) -> AsyncIterator[RawSeen]:
    seen = RawSeen()

    class Recording(QuicConnectionProtocol):
        def quic_event_received(self, event: events.QuicEvent) -> None:
            if isinstance(event, events.StreamDataReceived) and event.data:
                seen.stream_chunks.append((event.stream_id, event.data))

    server = await serve(LOCAL, port, configuration=raw_server_config(cert),
                         create_protocol=Recording)
    try:
        yield seen
    finally:
        server.close()


def test_a_server_avoiding_0rtt_issues_tickets_that_take_no_early_data(
        run: Any, cert: Any) -> None:
    """zeroRttMsg avoid on the listener: its tickets resume but allow no early data, so the
    attempt writes nothing before the handshake (take() is never called: the flight keeps
    every message for the carrier), and the messages arrive once, not early."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with listening(cert, zero_rtt=False) as srv:
            state = Tickets()
            await ticket_from(srv.port, cert, state)
            assert state.tickets[-1].max_early_data_size is None
            flight = EarlyFlight()
            outcome = Outcome()
            msg = OutMessage(b"idem", idempotent=True)
            hold(flight, msg, outcome, loop)
            a = flight.attempt()
            t = await QuicStack().connect(attempt(srv.port, cert, state, early=a))
            try:
                assert (t.session_reused, t.early_sent, t.early_attempt) == (True, False, None)
                assert a.taken == []
                rest = flight.settle(None)
                assert [h.message for h in rest] == [msg]
                t.submit(msg, **outcome.callbacks())
                await until(lambda: "on_acked" in outcome.events, 3, "ack")
                assert [(bytes(m), m.early) for m in srv.received] == [(b"idem", False)]
                assert outcome.events == ["on_sent", "on_acked"]
            finally:
                t.abort()

    run(main(), 15)


# ---- every message ends once (item 4) ------------------------------------------------------


def test_stream_data_unacknowledged_at_an_error_close_ends_with_on_send_error(
        run: Any, cert: Any) -> None:
    """aioquic's server closes the connection with an application error as soon as the
    message arrives, before acknowledging it: the message got on_sent (it left), then
    on_send_error, never on_acked."""

    async def main() -> None:
        async with raw_server(cert, close_on_data=0x77) as (port, _seen):
            t = await QuicStack().connect(attempt(port, cert, Tickets(), session_cache=False))
            outcome = Outcome()
            t.submit(OutMessage(b"doomed"), **outcome.callbacks())
            await until(lambda: "on_send_error" in outcome.events, 5, "on_send_error")
            await asyncio.sleep(0.05)
            assert outcome.events == ["on_sent", "on_send_error"]
            assert isinstance(t.failure, QuicClosedError) and t.failure.error_code == 0x77

    run(main(), 10)


def test_datagram_frames_the_peer_cannot_take_end_with_on_send_error(
        run: Any, cert: Any) -> None:
    """A peer accepting DATAGRAM frames up to 200 bytes: a small unreliable message goes
    (on_sent once aioquic wrote it; the peer sees the stream id prefix), a 500-byte one gets
    on_send_error and the connection stays up. A peer without DATAGRAM support: every
    unreliable message gets on_send_error, none goes on the stream."""

    async def main() -> None:
        async with raw_server(cert, datagram_frame_size=200) as (port, seen):
            t = await QuicStack().connect(attempt(port, cert, Tickets(), session_cache=False))
            try:
                small, big = Outcome(), Outcome()
                t.submit(OutMessage(b"s" * 50, reliable=False), **small.callbacks())
                t.submit(OutMessage(b"b" * 500, reliable=False), **big.callbacks())
                await until(lambda: small.events and big.events, 3, "both ended")
                assert small.events == ["on_sent"] and big.events == ["on_send_error"]
                await until(lambda: len(seen.datagrams) == 1, 3, "the small datagram")
                assert split_datagram(seen.datagrams[0]) == (0, b"s" * 50)
                assert t.is_open
            finally:
                t.abort()
        async with raw_server(cert, datagram_frame_size=None) as (port, seen):
            t = await QuicStack().connect(attempt(port, cert, Tickets(), session_cache=False))
            try:
                o = Outcome()
                t.submit(OutMessage(b"u", reliable=False), **o.callbacks())
                await until(lambda: o.events, 3, "ended")
                await asyncio.sleep(0.05)
                assert o.events == ["on_send_error"]
                assert seen.stream_chunks == [] and seen.datagrams == []
            finally:
                t.abort()

    run(main(), 10)


def test_a_datagram_frame_no_packet_carried_before_the_close_ends_with_on_send_error(
        run: Any, cert: Any) -> None:
    """A DATAGRAM frame handed to aioquic but not yet written when the connection closes
    (shutdown runs between the pump and the transmit): on_send_error, not on_sent."""

    async def main() -> None:
        async with raw_server(cert) as (port, seen):
            t = await QuicStack().connect(attempt(port, cert, Tickets(), session_cache=False))
            session: Any = t.session
            o = Outcome()
            t.submit(OutMessage(b"late datagram", reliable=False), **o.callbacks())
            loop = asyncio.get_running_loop()
            held: list[int] = []

            def close_now() -> None:  # after the pump, before its transmit_soon
                held.append(pending_datagram_frames(session.connection))
                session.shutdown()

            loop.call_soon(close_now)
            await until(lambda: o.events, 3, "an end")
            await asyncio.sleep(0.05)
            assert held == [1], "the frame was not in aioquic's hands when it closed"
            assert o.events == ["on_send_error"]
            assert seen.datagrams == []

    run(main(), 10)


# ---- immediate: own packet, now (item 9) --------------------------------------------------


def test_immediate_is_reliable_and_gets_its_own_packet(run: Any, cert: Any) -> None:
    """`immediate=True` no longer means unreliable: it goes on the stream (framed), and in
    a packet of its own: submitted in one tick with messages before and after it, it
    arrives in a STREAM frame (a StreamDataReceived event) of its own."""

    async def main() -> None:
        async with raw_server(cert) as (port, seen):
            t = await QuicStack().connect(attempt(port, cert, Tickets(), session_cache=False))
            try:
                t.submit(OutMessage(b"before"))
                t.submit(OutMessage(b"now!", immediate=True))
                t.submit(OutMessage(b"after"))
                await until(lambda: sum(len(d) for _s, d in seen.stream_chunks) >= 3 * 4 + 15,
                            3, "all three")
                assert seen.datagrams == []
                chunks = [d for _s, d in seen.stream_chunks]
                assert frame(b"now!") in chunks, chunks
                assert b"".join(chunks) == frame(b"before") + frame(b"now!") + frame(b"after")
            finally:
                t.abort()

    run(main(), 10)


# ---- DATAGRAM frames reach the carrier they were sent on (item 9) --------------------------


def test_datagrams_of_two_forked_carriers_reach_only_their_own_peer_carrier(
        run: Any, cert: Any) -> None:
    async def main() -> None:
        async with listening(cert, record=False) as srv:
            t0 = await QuicStack().connect(attempt(srv.port, cert, Tickets(),
                                                   session_cache=False))
            try:
                t0.submit(OutMessage(b"hello0"))
                s0 = await srv.next()
                siblings: asyncio.Queue[Any] = asyncio.Queue()
                s0.accept_siblings(siblings.put_nowait)
                t1 = t0.open_sibling()
                t1.submit(OutMessage(b"hello1"))
                s1 = await asyncio.wait_for(siblings.get(), 3)
                assert bytes(await s0.receive()) == b"hello0"
                assert bytes(await s1.receive()) == b"hello1"
                for i in range(5):
                    t0.submit(OutMessage(b"zero-%d" % i, reliable=False))
                    t1.submit(OutMessage(b"one-%d" % i, reliable=False))
                got0 = [bytes(await asyncio.wait_for(s0.receive(), 3)) for _ in range(5)]
                got1 = [bytes(await asyncio.wait_for(s1.receive(), 3)) for _ in range(5)]
                assert sorted(got0) == [b"zero-%d" % i for i in range(5)]
                assert sorted(got1) == [b"one-%d" % i for i in range(5)]
                # the peer's answers come back the same way
                s1.submit(OutMessage(b"back-one", reliable=False))
                s0.submit(OutMessage(b"back-zero", reliable=False))
                assert bytes(await asyncio.wait_for(t1.receive(), 3)) == b"back-one"
                assert bytes(await asyncio.wait_for(t0.receive(), 3)) == b"back-zero"
            finally:
                t0.abort()

    run(main(), 10)


def test_datagrams_for_unknown_or_closed_streams_are_dropped_and_early_ones_wait(
        run: Any, cert: Any) -> None:
    """From aioquic's own client: a DATAGRAM naming a stream it has not opened yet waits
    and reaches that stream's carrier once it opens; one naming a unidirectional or a
    server-side stream id nobody opened, or carrying no valid prefix, is dropped and
    counted."""

    async def main() -> None:
        async with listening(cert, record=False) as srv:
            config = QuicConfiguration(is_client=True, max_datagram_frame_size=65536,
                                       server_name="localhost")
            config.load_verify_locations(cadata=cert.cert_pem.encode())
            async with connect(LOCAL, srv.port, configuration=config) as client:
                quic = client._quic
                quic.send_datagram_frame(datagram_payload(0, b"before its stream"))
                quic.send_datagram_frame(datagram_payload(2, b"unidirectional"))
                quic.send_datagram_frame(datagram_payload(1, b"server stream never opened"))
                quic.send_datagram_frame(b"\xc0")  # an 8-byte varint cut short
                client.transmit()
                await asyncio.sleep(0.05)  # they overtake the stream by this much
                quic.send_stream_data(0, frame(b"open"))
                client.transmit()
                s0 = await srv.next()
                got = [bytes(await asyncio.wait_for(s0.receive(), 3)) for _ in range(2)]
                assert sorted(got) == [b"before its stream", b"open"]
                session: Any = s0.session
                await until(lambda: session.datagrams_dropped == 3, 3, "drops counted")
                s0.abort()  # closed: a datagram for it now is dropped too
                await asyncio.sleep(0.02)
                quic.send_datagram_frame(datagram_payload(0, b"too late"))
                client.transmit()
                await until(lambda: session.datagrams_dropped == 4, 3, "late drop counted")

    run(main(), 10)


def test_icmp_errors_after_the_handshake_reach_on_soft_error(run: Any, cert: Any) -> None:
    """The path to the server goes away (the relay in between closes its port): the next
    packets draw ICMP port unreachable, which the connected client socket reports; the
    carrier's Transient hears it through on_soft_error and stays open (QUIC may recover)."""

    async def main() -> None:
        async with listening(cert) as srv:
            relay = DelayRelay((LOCAL, srv.port), 0.0)
            port = await relay.start()
            t = await QuicStack().connect(attempt(port, cert, Tickets(), session_cache=False))
            try:
                soft: list[BaseException] = []
                t.on_soft_error = soft.append
                t.submit(OutMessage(b"before"))
                await until(lambda: srv.received, 3, "the first message")
                relay.close()
                await asyncio.sleep(0.01)
                t.submit(OutMessage(b"into the void"))
                await until(lambda: soft, 3, "a soft error")
                assert isinstance(soft[0], ConnectionRefusedError), soft
                assert t.soft_error is soft[0] and t.is_open
            finally:
                t.abort()
                relay.close()

    run(main(), 10)


def test_the_locals_port_is_the_client_sockets_source_port(run: Any, cert: Any) -> None:
    """AttemptSpec.local_port (Local.port, issue 9 item 10): the client's UDP socket binds
    it, so the listener's carrier sees the client at that port."""

    async def main() -> None:
        async with listening(cert) as srv:
            port = free_udp_port()
            spec = attempt(srv.port, cert, Tickets(), session_cache=False)
            spec = dataclasses.replace(spec, local_port=port)
            t = await QuicStack().connect(spec)
            try:
                assert t.local_address == (LOCAL, port)
                t.submit(OutMessage(b"from a chosen port"))
                s = await srv.next()
                assert s.remote_address == (LOCAL, port)
            finally:
                t.abort()

    run(main(), 10)


# ---- path statistics (item 6) -------------------------------------------------------------


def test_path_stats_come_from_aioquics_recovery_state(run: Any, cert: Any) -> None:
    async def main() -> None:
        async with listening(cert) as srv:
            t = await QuicStack().connect(attempt(srv.port, cert, Tickets(),
                                                  session_cache=False))
            try:
                o = Outcome()
                t.submit(OutMessage(b"x" * 100_000), **o.callbacks())
                await until(lambda: "on_acked" in o.events, 5, "ack")
                stats = t.path_stats()
                assert stats.rtt_ms is not None and 0 < stats.rtt_ms < 200
                assert stats.rttvar_ms is not None and stats.rttvar_ms >= 0
                assert stats.sent is not None and stats.sent > 50  # 100 kB in 1200-byte packets
                assert stats.loss is not None and 0.0 <= stats.loss < 0.5
                assert stats.rate_bps is not None and stats.rate_bps > 0
                assert stats.mtu == 1200  # aioquic's max_datagram_size: no PMTU discovery
                later = t.path_stats()
                assert later.sent is not None and later.sent >= stats.sent
            finally:
                t.abort()

    run(main(), 10)


# ---- accept_siblings refusal (item 7) -----------------------------------------------------


def test_accept_callback_returning_false_refuses_later_streams(run: Any, cert: Any) -> None:
    """The server's accept callback takes the first sibling and returns False: the next
    stream our client opens is reset (the client's receive() ends), never queued nor
    delivered; aioquic's own client sees RESET_STREAM and STOP_SENDING with REFUSED_STREAM."""

    async def main() -> None:
        async with listening(cert, record=False) as srv:
            t0 = await QuicStack().connect(attempt(srv.port, cert, Tickets(),
                                                   session_cache=False))
            try:
                t0.submit(OutMessage(b"parent"))
                s0 = await srv.next()
                calls: list[Any] = []

                def once(t: Any) -> bool:
                    calls.append(t)
                    return False

                s0.accept_siblings(once)
                t1 = t0.open_sibling()
                t1.submit(OutMessage(b"first sibling"))
                await until(lambda: calls, 3, "the first sibling")
                assert bytes(await asyncio.wait_for(calls[0].receive(), 3)) == b"first sibling"
                t2 = t0.open_sibling()
                t2.submit(OutMessage(b"refused"))
                with pytest.raises(ConnectionClosedError):
                    await asyncio.wait_for(t2.receive(), 3)
                assert len(calls) == 1 and srv.transients.empty()
                assert t0.is_open and t1.is_open
            finally:
                t0.abort()

        async with listening(cert, record=False) as srv:
            config = QuicConfiguration(is_client=True, server_name="localhost")
            config.load_verify_locations(cadata=cert.cert_pem.encode())
            seen: list[tuple[str, int, int]] = []

            class Client(QuicConnectionProtocol):
                def quic_event_received(self, event: events.QuicEvent) -> None:
                    if isinstance(event, events.StreamReset):
                        seen.append(("reset", event.stream_id, event.error_code))
                    elif type(event).__name__ == "StopSendingReceived":
                        ev: Any = event
                        seen.append(("stop", ev.stream_id, ev.error_code))

            async with connect(LOCAL, srv.port, configuration=config,
                               create_protocol=Client) as client:
                quic = client._quic
                quic.send_stream_data(0, frame(b"parent"))
                client.transmit()
                s0 = await srv.next()
                s0.accept_siblings(lambda _t: False)
                quic.send_stream_data(4, frame(b"taken"))
                client.transmit()
                await asyncio.sleep(0.05)
                quic.send_stream_data(8, frame(b"refused"))
                client.transmit()
                await until(lambda: any(k == "reset" and sid == 8 for k, sid, _ in seen), 3,
                            "RESET_STREAM")
                assert ("reset", 8, REFUSED_STREAM) in seen
                assert not any(sid == 4 for _k, sid, _c in seen)

    run(main(), 15)


# ---- client certificates on listeners (item 10) -------------------------------------------


def test_client_auth_require_admits_the_trusted_client_only(run: Any, cert: Any,
                                                            client_cert: Any) -> None:
    """clientAuth require with the client's self-signed certificate trusted (a pin): our
    client holding it connects and is recognised; such a listener issues no tickets (each
    connection shows its certificate again); one with no certificate is closed with
    certificate_required, one with another certificate with bad_certificate. Nothing of the
    refused ones reaches the listener."""

    async def main() -> None:
        other = tp.certs.self_signed(["intruder.example"])
        async with listening(cert, trusted=(client_cert,), client_auth="require") as srv:
            state = Tickets()
            t = await QuicStack().connect(attempt(srv.port, cert, state,
                                                  identity=(client_cert,)))
            t.submit(OutMessage(b"hello"))
            s = await srv.next()
            assert cast(Any, s.session).client_fingerprint == client_cert.fingerprint
            await until(lambda: srv.received, 3, "hello")
            assert srv.received == [b"hello"]
            await asyncio.sleep(0.05)
            assert state.tickets == []
            t.abort()
            for identity, alert in (((), 116), ((other,), 42)):
                # TLS 1.3: the client's handshake completes before the server has seen its
                # certificate, so the refusal arrives as the close right after.
                t2 = await QuicStack().connect(attempt(srv.port, cert, Tickets(),
                                                       identity=identity))
                with contextlib.suppress(ConnectionClosedError):
                    t2.submit(OutMessage(b"let me in"))
                with pytest.raises(ConnectionClosedError):
                    await asyncio.wait_for(t2.receive(), 3)
                assert isinstance(t2.failure, QuicClosedError)
                assert t2.failure.error_code == QuicErrorCode.CRYPTO_ERROR + alert
            await asyncio.sleep(0.05)
            assert srv.transients.empty()  # the refused ones never reached the listener

    run(main(), 15)


def test_client_auth_request_admits_a_client_without_certificate(
        run: Any, cert: Any, client_cert: Any) -> None:
    async def main() -> None:
        async with listening(cert, trusted=(client_cert,), client_auth="request") as srv:
            t = await QuicStack().connect(attempt(srv.port, cert, Tickets(),
                                                  session_cache=False))
            t.submit(OutMessage(b"anonymous"))
            s = await srv.next()
            session: Any = s.session
            assert session.client_fingerprint is None and session.client_verified
            t.abort()
            t = await QuicStack().connect(attempt(srv.port, cert, Tickets(),
                                                  session_cache=False,
                                                  identity=(client_cert,)))
            t.submit(OutMessage(b"known"))
            s = await srv.next()
            assert cast(Any, s.session).client_fingerprint == client_cert.fingerprint
            t.abort()

    run(main(), 10)


def test_client_auth_through_the_runtime_on_quic(run: Any, cert: Any, client_cert: Any) -> None:
    """tp.listen with security.clientAuth require and Local.trusted, QUIC only: a client
    whose Local holds the trusted certificate is served; one without gets a carrier that
    fails with the close (the listener never hears of it)."""

    async def main() -> None:
        def pol(**extra: Any) -> tp.PolicyContext:
            rule = {"id": "q", "set": {"stack.quic": "require", **extra}}
            return tp.PolicyContext(system=[], app={"version": 1, "layer": "app",
                                                    "rules": [rule]}, app_name="qauth")

        accepted: list[tp.Carrier] = []

        async def echo(c: tp.Carrier) -> None:
            async for m in c:
                await c.send(b"echo:" + bytes(m))

        tasks: list[asyncio.Task[None]] = []

        def on_carrier(c: tp.Carrier) -> None:
            accepted.append(c)
            tasks.append(asyncio.ensure_future(echo(c)))

        listener = await tp.listen(
            tp.Local(address=LOCAL, port=0, certificates=[cert], trusted=[client_cert]),
            policy=pol(**{"security.clientAuth": "require"}))
        listener.accept(on_carrier)
        try:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            ok = await tp.initiate(remote, local=tp.Local(certificates=[client_cert]),
                                   policy=pol(), store=tp.AssociationStore())
            await ok.send(b"hi")
            assert await asyncio.wait_for(ok.receive(), 3) == b"echo:hi"
            await ok.close()
            anonymous = await tp.initiate(remote, policy=pol(), store=tp.AssociationStore())
            with contextlib.suppress(tp.ConnectionClosedError):
                await anonymous.send(b"let me in")
            with pytest.raises(tp.ConnectionClosedError):
                await asyncio.wait_for(anonymous.receive(), 3)
            anonymous.abort()
            assert len(accepted) == 1
        finally:
            for task in tasks:
                task.cancel()
            await listener.close()

    run(main(), 15)


def test_client_auth_without_trusted_certificates_is_refused_at_listen(
        run: Any, cert: Any) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="trusted"):
            async with listening(cert, client_auth="require"):
                pass

    run(main(), 5)


# ---- DSCP marks on the wire (item 9), in network namespaces --------------------------------

ROOT_ONLY = pytest.mark.skipif(
    __import__("os").geteuid() != 0 or __import__("shutil").which("ip") is None,
    reason="needs root and iproute2 to build network namespaces")

NS_PRELUDE = '''
import asyncio, json, sys
import taps_post as tp
from taps_post.core.framing import LengthPrefixFramer
from taps_post.core.messages import OutMessage
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate
from taps_post.stacks.base import AttemptSpec, ListenSpec
from taps_post.stacks.quic import QuicStack

def settings(**kw):
    base = dict(conn_timeout=5.0, attempt_delay=0.05, max_size=1 << 24, min_tls="1.3",
                verify_peer=False, session_cache=False, alpn=(), zero_rtt=True)
    base.update(kw)
    return Settings(**base)
'''

NS_SERVER = NS_PRELUDE + '''
async def main():
    cert = tp.certs.self_signed(["server.test"])
    got = []
    ep = await QuicStack().listen(ListenSpec(
        address="0.0.0.0", port=int(sys.argv[1]), interface=None, settings=settings(),
        framer=LengthPrefixFramer, identity=(cert,),
        on_transient=lambda t: t.set_callback(got.append)))
    print(json.dumps({"port": ep.port}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

NS_CLIENT = NS_PRELUDE + '''
async def main():
    host, port, table = sys.argv[1], int(sys.argv[2]), tuple(json.loads(sys.argv[3]))
    c = Candidate(0, "veth-a1", "198.18.1.1", "quic", host, port, "ipv4", 0, None)
    spec = AttemptSpec(candidate=c, host=host, settings=settings(dscp=table),
                       association=tp.AssociationStore().get("dscp"),
                       framer=LengthPrefixFramer)
    t = await QuicStack().connect(spec)
    loop = asyncio.get_running_loop()
    for niceness in (0, 2):  # one class after the other, each acknowledged
        acked = [loop.create_future() for _ in range(3)]
        for f in acked:
            t.submit(OutMessage(b"x" * 20000, niceness=niceness),
                     on_acked=lambda m, f=f: f.set_result(None))
        await asyncio.gather(*acked)
    for _ in range(3):  # niceness 1, unreliable: DATAGRAM frames, one transmit each
        sent = loop.create_future()
        t.submit(OutMessage(b"d" * 100, niceness=1, reliable=False),
                 on_sent=lambda m, f=sent: f.set_result(None))
        await sent
    stats = t.path_stats()
    t.abort()
    await asyncio.sleep(0.1)
    print(json.dumps({"sent": stats.sent}))

asyncio.run(main())
'''

QUIC_MARKS = ("ef", "af41", "cs1", "cs0")


@ROOT_ONLY
def test_quic_packets_carry_the_dscp_of_the_most_urgent_message_since_the_last_transmit(
        ) -> None:
    """A system table EF / AF41 / CS1 for niceness 0 / 1 / 2: B's nftables counters see the
    client's QUIC packets marked EF while niceness-0 messages go, CS1 while niceness-2 ones
    go, AF41 for the niceness-1 DATAGRAM frames, and the handshake before any message
    unmarked. Without a table every packet is unmarked (no socket option set)."""
    sys_path = __import__("sys").path
    here = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    if here not in sys_path:
        sys_path.insert(0, here)
    from netns import A1_V4, B1_V4, topology

    port = 5311
    with topology("tpqm") as topo:
        server = topo.spawn(topo.b, NS_SERVER, str(port))
        assert server.read_json(10) == {"port": port}

        def count() -> None:
            lines = ["table inet qmarks {"]
            lines += [f"  counter udp_{m} {{ }}" for m in QUIC_MARKS]
            lines += ["  chain in {", "    type filter hook input priority 0; policy accept;"]
            lines += [f"    ip saddr {A1_V4} udp dport {port} ip dscp {m} counter name udp_{m}"
                      for m in QUIC_MARKS]
            lines += ["  }", "}"]
            topo.exec(topo.b, "nft", "delete", "table", "inet", "qmarks", check=False)
            topo.nft(topo.b, "\n".join(lines) + "\n")

        def marks() -> dict[str, int]:
            import json
            listed = json.loads(topo.exec(topo.b, "nft", "-j", "list", "counters", "table",
                                          "inet", "qmarks").stdout)
            return {item["counter"]["name"][4:]: item["counter"]["packets"]
                    for item in listed["nftables"] if "counter" in item}

        count()
        out = topo.run_python(topo.a, NS_CLIENT, B1_V4, str(port), "[46, 34, 8]")
        got = marks()
        assert got["ef"] >= 15 and got["cs1"] >= 15, got  # 60 kB each in ~1200-byte packets
        assert got["af41"] >= 3, got
        assert got["cs0"] >= 1, got  # the Initial, before any message was written
        assert sum(got.values()) <= out["sent"] + 2, (got, out)

        count()
        topo.run_python(topo.a, NS_CLIENT, B1_V4, str(port), "[]")
        plain = marks()
        assert plain["cs0"] >= 30 and plain["ef"] == plain["af41"] == plain["cs1"] == 0, plain
