"""QUIC on aioquic: one Carrier per bidirectional stream, 0-RTT, DATAGRAM frames.

Rule 1: aioquic's sans-I/O `QuicConnection` does the protocol; `QuicSession` (aioquic's own
`QuicConnectionProtocol` pump) only routes its events to per-stream Transients. We do not
reimplement QUIC or TLS.
Rule 2: the wire format on a bidirectional stream is the Post-to-Post default, a 4-byte
big-endian length prefix per message, so any QUIC peer can speak to a Carrier (docs/quic.md).
Two additions never appear unless used: messages sent unreliably or immediately go as DATAGRAM
frames (RFC 9221) when both sides negotiated them; a message with a lifetime under
`perMsgReliability` rides its own unidirectional stream (8-byte owning stream id, then one
framed message) so that expiring it resets that stream, not the carrier's.
Rule 3: `on_sent` and `on_acked` read aioquic's own stream bookkeeping: the next offset to
send and the start of the not-yet-acknowledged buffer.
Rule 4: no private aioquic name is used here: where aioquic has no public route, the access is
a function of `quic_compat`, tested against real aioquic connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from ..core.messages import Pending
from ..errors import ConnectionClosedError, DeframingError
from .base import AttemptSpec, ListenSpec, bind_server, connected_datagram_socket, family_of
from .quic_compat import peer_max_datagram_frame_size, refuse_early_data, stream_send_offsets
from .transient import Transient

__all__ = ["QuicSession", "QuicStack", "QuicStreamTransient"]

_DATAGRAM_FRAME_SIZE = 65536
_DATAGRAM_MAX_PAYLOAD = 1100
"""Largest message we put in one DATAGRAM frame (it must fit one packet)."""
_IDLE_CLOSE = 0.5
"""Seconds a connection lingers after its last carrier closed (a fork may follow)."""
_RESET_EXPIRED = 0x1  # application error code for a stream abandoned because of lifetime


def _pems(certs: Any) -> bytes:
    return "".join(c.cert_pem for c in certs).encode("ascii")


def client_configuration(spec: AttemptSpec) -> QuicConfiguration:
    s = spec.settings
    config = QuicConfiguration(is_client=True, alpn_protocols=list(s.alpn) or None,
                               server_name=spec.host, max_datagram_frame_size=_DATAGRAM_FRAME_SIZE,
                               idle_timeout=max(5.0, s.conn_timeout))
    if s.verify_peer:
        config.verify_mode = ssl.CERT_REQUIRED
        if spec.pinned:
            config.load_verify_locations(cadata=_pems(spec.pinned))
        else:
            config.load_verify_locations(cafile=ssl.get_default_verify_paths().cafile)
    else:
        config.verify_mode = ssl.CERT_NONE
    for cert in spec.identity:
        if cert.key_pem:
            _load_identity(config, cert)
            break
    return config


def _load_identity(config: QuicConfiguration, cert: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    config.certificate = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    config.private_key = serialization.load_pem_private_key(cert.key_pem.encode(), None)


class QuicStreamTransient(Transient):
    """One bidirectional stream of a QuicSession: the Transient behind one Carrier."""

    def __init__(self, session: QuicSession, stream_id: int, *, framer: Any,
                 max_size: int, interface: str | None) -> None:
        super().__init__(stack="quic", framer=framer, max_size=max_size, interface=interface)
        self.session = session
        self.stream_id = stream_id
        self.transport = _StreamView(self)
        self.local_address = session.local_address
        self.remote_address = session.remote_address
        self._offset = 0
        self._uni: dict[int, tuple[Pending, int]] = {}
        """Unidirectional streams carrying one expiring message each: stream id -> end."""
        self._uni_unacked: dict[int, tuple[Pending, int]] = {}
        self._fin_sent = False

    @property
    def quic(self) -> QuicConnection:
        return self.session.connection

    # ---- the Transient interface ---------------------------------------------------------

    def open_sibling(self) -> QuicStreamTransient:
        if not self.session.is_open:
            raise ConnectionClosedError("the QUIC connection of this carrier is closed")
        return self.session.new_stream()

    def accept_siblings(self, callback: Callable[[Transient], Any]) -> bool:
        self.session.accept_callback = callback
        return True

    # ---- sending ---------------------------------------------------------------------

    def write_ready(self, ready: list[Pending]) -> None:
        quic = self.quic
        datagrams_ok = self.session.datagrams_negotiated
        per_message = self.session.per_msg_reliability
        for p in ready:
            msg = p.message
            if datagrams_ok and (not msg.reliable or msg.immediate) \
                    and len(msg.data) <= _DATAGRAM_MAX_PAYLOAD:
                quic.send_datagram_frame(msg.data)
                self.session.after_transmit(functools.partial(self.fire, p.on_sent, p.message))
                continue
            frame = self.framer.encode(msg.data)
            if per_message and msg.lifetime is not None and p.deadline is not None:
                uni = quic.get_next_available_stream_id(is_unidirectional=True)
                payload = struct.pack("!Q", self.stream_id) + frame
                quic.send_stream_data(uni, payload, end_stream=True)
                self._uni[uni] = (p, len(payload))
                self.session.tracking = True
                self.session.watch_deadline(p.deadline, functools.partial(self._expire_uni, uni))
                continue
            quic.send_stream_data(self.stream_id, frame)
            self._offset += len(frame)
            self.track(self._offset, p)
        self.sent_any = True
        self.session.transmit_soon()

    def _expire_uni(self, uni: int) -> None:
        entry = self._uni.get(uni)
        if entry is None:
            return
        p, end = entry
        offsets = stream_send_offsets(self.quic, uni)
        if offsets is None or offsets[0] >= end:
            return  # fully sent in time: its fate is decided by the progress check
        del self._uni[uni]
        with contextlib.suppress(Exception):
            self.quic.reset_stream(uni, _RESET_EXPIRED)
        self.fire(p.on_expired, p.message)
        self.session.transmit_soon()

    def check_progress(self) -> None:
        self._progress_handle = None
        # aioquic forgets a stream once its data and FIN were all acknowledged.
        offsets = stream_send_offsets(self.quic, self.stream_id)
        sent, acked = offsets if offsets is not None else (self._offset, self._offset)
        self.fire_events(self._ledger.advance(sent, acked))
        for uni, (p, end) in list(self._uni.items()):
            offsets = stream_send_offsets(self.quic, uni)
            if offsets is None or offsets[0] >= end:
                del self._uni[uni]
                self.fire(p.on_sent, p.message)
                if p.on_acked is not None:
                    self._uni_unacked[uni] = (p, end)
        for uni, (p, end) in list(self._uni_unacked.items()):
            offsets = stream_send_offsets(self.quic, uni)
            if offsets is None or offsets[1] >= end:
                del self._uni_unacked[uni]
                self.fire(p.on_acked, p.message)

    def track(self, end: int, p: Pending) -> None:
        if self._ledger.track(end, p):
            self.session.tracking = True

    def tracking_pending(self) -> bool:
        """Messages wait for on_sent/on_acked on this stream or its expiring side streams."""
        return bool(self._ledger or self._uni or self._uni_unacked)

    async def aclose(self) -> None:
        await self._flush()
        if not self._fin_sent and self.session.is_open:
            self._fin_sent = True
            with contextlib.suppress(Exception):
                self.quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self.session.transmit_soon()
        self.session.stream_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        if self.session.is_open and not self._fin_sent:
            self._fin_sent = True
            with contextlib.suppress(Exception):
                self.quic.reset_stream(self.stream_id, 0)
            self.session.transmit_soon()
        self.session.stream_closed(self)
        self.terminate(None)

    # ---- receiving -------------------------------------------------------------------

    def on_data(self, data: bytes, end: bool, early: bool) -> None:
        self.early = early
        try:
            messages = self.framer.feed(data)
        except DeframingError as exc:
            self.fail(exc)
            return
        self.deliver(messages)
        if end:
            self._eof = True
            self.wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.abort()


class _StreamView:
    """What Transient's generic code sees as `transport` for a QUIC stream."""

    def __init__(self, owner: QuicStreamTransient) -> None:
        self._owner = owner
        self._close_requested = False

    def is_closing(self) -> bool:
        return self._owner._fin_sent or not self._owner.session.is_open

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        session = self._owner.session
        return {"peername": session.remote_address, "sockname": session.local_address,
                "stream_id": self._owner.stream_id}.get(name, default)

    def pause_reading(self) -> None:
        return None  # QUIC flow control pushes back on the peer

    def resume_reading(self) -> None:
        return None

    def close(self) -> None:
        # A graceful close flushes the queue first, so it cannot finish here: the session
        # runs it and owns the task (shutdown() cancels it).
        if not self._close_requested:
            self._close_requested = True
            self._owner.session.close_stream_soon(self._owner)

    def abort(self) -> None:
        self._owner.abort()


class _Outbound(asyncio.DatagramTransport):
    """The transport aioquic's own `transmit()` writes a session's datagrams to.

    A client's socket is connected (so the kernel reports ICMP errors to it): it is given no
    address, whatever aioquic passes. Once the socket is closing, datagrams are dropped instead
    of reaching a closed socket, so aioquic's timer may run a closed connection's closing
    period out on its own (aioquic then reports ConnectionTerminated and forgets it)."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        super().__init__()
        self._inner = cast(asyncio.DatagramTransport, transport)
        self._connected = transport.get_extra_info("peername") is not None

    def sendto(self, data: Any, addr: Any = None) -> None:
        inner = self._inner
        if inner.is_closing():
            return
        if self._connected:
            inner.sendto(data)
        else:
            inner.sendto(data, addr)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)


class QuicSession(QuicConnectionProtocol):
    """One QUIC connection; bidirectional streams map to QuicStreamTransients.

    aioquic's own protocol pumps the connection (`transmit()`, its timer, `datagram_received`);
    this subclass routes events and adds what must follow each transmit: callbacks queued
    with `after_transmit` and the on_sent / on_acked progress check."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *,
                 framer: Callable[[], Any] | None = None, max_size: int = 16 << 20,
                 interface: str | None = None,
                 on_stream: Callable[[QuicStreamTransient], None] | None = None,
                 per_msg_reliability: bool = False, allow_early: bool = True,
                 on_terminated: Callable[[QuicSession], None] | None = None) -> None:
        super().__init__(quic, stream_handler)
        self.connection = quic
        """The sans-I/O aioquic connection this protocol pumps (we made it, so we keep it)."""
        self.loop = asyncio.get_running_loop()
        self.framer = framer
        self.max_size = max_size
        self.interface = interface
        self.on_stream = on_stream
        self.on_terminated = on_terminated
        """Told once aioquic reports the connection terminated (a listener forgets it)."""
        self.per_msg_reliability = per_msg_reliability
        self.streams: dict[int, QuicStreamTransient] = {}
        self.primary: QuicStreamTransient | None = None
        self.handshake_done = False
        self.early_data_accepted = False
        self.session_resumed = False
        self.is_open = True
        self.local_address: tuple[str, int] | None = None
        self.remote_address: tuple[str, int] | None = None
        self._after: list[Callable[[], None]] = []
        self.tracking = False
        """A stream has on_sent/on_acked bookkeeping pending: transmit() must check it."""
        self._uni_in: dict[int, bytearray] = {}
        self._idle: asyncio.TimerHandle | None = None
        self._open_streams: set[int] = set()
        self._next_bidi = 0
        self._datagrams: list[bytes] = []
        """DATAGRAM frames that arrived before any carrier of this connection existed."""
        self.owns_transport = False
        """A client session owns its UDP socket; a server's sessions share the listener's."""
        self.accept_callback: Callable[[QuicStreamTransient], Any] | None = None
        """Where streams the peer opens go once a carrier of this connection called accept()."""
        self._out: _Outbound | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._handshake: asyncio.Future[None] | None = None
        """Exists while connect() waits for the handshake (see wait_connected)."""
        self._refuse_early = not allow_early
        """The server's policy avoids or prohibits zeroRttMsg: the tickets it issues must not
        allow early data, so clients resume with a 1-RTT handshake."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Graceful stream closes started by a synchronous transport.close()."""

    @property
    def datagrams_negotiated(self) -> bool:
        return peer_max_datagram_frame_size(self.connection) is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._out = _Outbound(transport)
        super().connection_made(self._out)
        local = transport.get_extra_info("sockname")
        self.local_address = (local[0], local[1]) if local else None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        # The first datagram a server receives creates the TLS context; the ticket is only
        # issued once the client's Finished arrives, always in a later datagram.
        if self._refuse_early and refuse_early_data(self.connection):
            self._refuse_early = False

    async def wait_connected(self) -> None:
        """Wait for the handshake. Unlike aioquic's, this one fails at once on an ICMP error
        (error_received) and says why the connection terminated."""
        if self.handshake_done:
            return
        if not self.is_open:
            raise ConnectionError("QUIC connection closed before its handshake completed")
        if self._handshake is None or self._handshake.done():
            self._handshake = self.loop.create_future()
        await self._handshake

    def _handshake_failed(self, exc: BaseException) -> None:
        waiter = self._handshake
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def new_stream(self) -> QuicStreamTransient:
        # aioquic only advances its next stream id once data was sent on the stream, so two
        # forks in a row would share one: keep our own high-water mark.
        stream_id = max(self.connection.get_next_available_stream_id(), self._next_bidi)
        self._next_bidi = stream_id + 4
        return self._attach(stream_id)

    def _attach(self, stream_id: int) -> QuicStreamTransient:
        assert self.framer is not None
        t = QuicStreamTransient(self, stream_id, framer=self.framer(), max_size=self.max_size,
                                interface=self.interface)
        t.remote_address = self.remote_address
        self.streams[stream_id] = t
        self._open_streams.add(stream_id)
        if self.primary is None:
            self.primary = t
        if self._datagrams:
            pending, self._datagrams = self._datagrams, []
            t.deliver(pending, self.remote_address)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return t

    def _datagram_target(self) -> QuicStreamTransient | None:
        """The first carrier of the connection while it is open, else the oldest open one."""
        if self.primary is not None and self.primary.stream_id in self._open_streams:
            return self.primary
        for sid in sorted(self._open_streams):
            return self.streams[sid]
        return None

    def stream_closed(self, t: QuicStreamTransient) -> None:
        self._open_streams.discard(t.stream_id)
        if not self._open_streams and self.is_open and self._idle is None:
            self._idle = self.loop.call_later(_IDLE_CLOSE, self._close_idle)

    def close_stream_soon(self, t: QuicStreamTransient) -> None:
        """Close one stream gracefully in a task the session owns: shutdown() cancels it, and
        an error it ends with fails that stream instead of going unreported."""
        task = self.loop.create_task(t.aclose())
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._close_done, t))

    def _close_done(self, t: QuicStreamTransient, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            t.fail(exc)

    def _close_idle(self) -> None:
        self._idle = None
        if not self._open_streams and self.is_open:
            self.close()

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self.transmit)

    def after_transmit(self, callback: Callable[[], None]) -> None:
        self._after.append(callback)

    def watch_deadline(self, when: float, callback: Callable[[], None]) -> None:
        self.loop.call_at(when, callback)

    def transmit(self) -> None:
        """aioquic's transmit (datagrams out, timer re-armed), then what waits for it: the
        callbacks of DATAGRAM frames just sent and the on_sent / on_acked progress check."""
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        super().transmit()
        out = self._out
        if out is None or out.is_closing():
            return
        after = self._after
        if after:
            self._after = []
            for cb in after:
                cb()
        if self.tracking:  # some carrier waits for on_sent / on_acked: read aioquic's offsets
            pending = False
            for t in list(self.streams.values()):
                if t.tracking_pending():
                    t.check_progress()
                    pending = pending or t.tracking_pending()
            self.tracking = pending

    def error_received(self, exc: Exception) -> None:
        """ICMP errors: fatal during the handshake (port unreachable means nobody serves QUIC
        there, so the race should move on now, not at connTimeout), soft afterwards."""
        if not self.handshake_done:
            self._handshake_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_open:
            self.is_open = False
            for t in list(self.streams.values()):
                t.terminate(exc)

    def shutdown(self) -> None:
        """Close the connection now (CONNECTION_CLOSE to the peer) and end what it runs: the
        idle timer and stream closes in progress (`settle()` waits for them)."""
        if self.is_open:
            with contextlib.suppress(Exception):
                self.close()
        self.is_open = False
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for task in self._tasks:
            task.cancel()
        for t in list(self.streams.values()):
            t.terminate(None)
        if self.owns_transport and self._out is not None:
            self._out.close()

    async def settle(self) -> None:
        """Wait until the stream closes shutdown() cancelled have ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self.handshake_done = True
            self.early_data_accepted = event.early_data_accepted
            self.session_resumed = event.session_resumed
            if self._handshake is not None and not self._handshake.done():
                self._handshake.set_result(None)
        elif isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, events.DatagramFrameReceived):
            target = self._datagram_target()
            if target is None:
                self._datagrams.append(event.data)  # DATAGRAMs may overtake the first stream
            else:
                target.deliver([event.data], self.remote_address)
        elif isinstance(event, events.StreamReset):
            self._uni_in.pop(event.stream_id, None)
            t = self.streams.get(event.stream_id)
            if t is not None:
                t.end_of_messages()
        elif isinstance(event, events.ConnectionTerminated):
            self.is_open = False
            reason = ConnectionError(f"QUIC connection closed: {event.reason_phrase or 'closed'}"
                                     f" (error {event.error_code})")
            self._handshake_failed(reason)
            for t in list(self.streams.values()):
                t.terminate(None if event.error_code == 0 else reason)
            if self.owns_transport and self._out is not None:
                # A client's socket is its own: release it with the connection.
                self.loop.call_soon(self._out.close)
            if self.on_terminated is not None:
                self.on_terminated(self)

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        early = not self.handshake_done
        if sid & 0x2:  # unidirectional: one expiring message for the carrier it names
            buf = self._uni_in.setdefault(sid, bytearray())
            buf += event.data
            if event.end_stream:
                data = bytes(self._uni_in.pop(sid))
                if len(data) >= 8:
                    (owner,) = struct.unpack("!Q", data[:8])
                    t = self.streams.get(owner) or self.primary
                    if t is not None:
                        t.on_data(data[8:], False, early)
            return
        t = self.streams.get(sid)
        if t is None:
            t = self._attach(sid)
            if self.on_stream is not None:
                self.on_stream(t)
            elif self.accept_callback is not None:
                self.accept_callback(t)
        t.on_data(event.data, event.end_stream, early)


class QuicStack:
    name = "quic"
    ip_protocol = "udp"

    async def connect(self, spec: AttemptSpec) -> QuicStreamTransient:
        loop = asyncio.get_running_loop()
        c = spec.candidate
        config = client_configuration(spec)
        ticket: SessionTicket | None = (spec.association.take_ticket("quic")
                                        if spec.settings.session_cache else None)
        if ticket is not None and ticket.is_valid and ticket.server_name == spec.host:
            config.session_ticket = ticket
        association = spec.association

        def keep(t: SessionTicket) -> None:
            if spec.settings.session_cache:
                association.add_ticket("quic", t)

        quic = QuicConnection(configuration=config, session_ticket_handler=keep)
        sock = connected_datagram_socket(c)
        session: QuicSession | None = None
        try:
            started = loop.time()
            per_msg = spec.settings.per_msg_reliability
            _, proto = await loop.create_datagram_endpoint(
                lambda: QuicSession(quic, framer=spec.framer, max_size=spec.settings.max_size,
                                    interface=c.interface, per_msg_reliability=per_msg),
                sock=sock)
            session = proto
            assert session is not None
            session.owns_transport = True
            session.remote_address = (c.remote_address, c.remote_port)
            # aioquic matches network paths on the exact tuple the socket reports: a 4-tuple
            # for IPv6.
            peer: Any = ((c.remote_address, c.remote_port, 0, 0) if ":" in c.remote_address
                         else (c.remote_address, c.remote_port))
            session.connect(peer, transmit=False)
            transient = session.new_stream()
            early = spec.early
            if early is not None and early.idempotent and config.session_ticket is not None \
                    and spec.settings.zero_rtt:
                # A copy: the caller's message must stay unsent if another attempt wins.
                transient.submit(dataclasses.replace(early))  # 0-RTT, with the ClientHello
                transient.pump()
                transient.early_sent = True
            session.transmit()
            await session.wait_connected()
            transient.rtt_ms = (loop.time() - started) * 1000.0
            transient.established_ms = transient.rtt_ms
            transient.session_reused = session.session_resumed
            transient.early_in_syn = transient.early_sent and session.early_data_accepted
            if transient.early_sent and not session.early_data_accepted:
                # The server refused 0-RTT: aioquic retransmits the stream data in 1-RTT.
                transient.early_in_syn = False
            return transient
        except BaseException:
            if session is not None:
                session.shutdown()
            sock.close()
            raise

    async def listen(self, spec: ListenSpec) -> QuicListening:
        loop = asyncio.get_running_loop()
        config = QuicConfiguration(is_client=False, alpn_protocols=list(spec.settings.alpn)
                                   or None, max_datagram_frame_size=_DATAGRAM_FRAME_SIZE)
        for cert in spec.identity:
            if cert.key_pem:
                _load_identity(config, cert)
                break
        else:
            raise ValueError("a QUIC listener needs a Local certificate with its private key")
        tickets: dict[bytes, SessionTicket] = {}
        settings = spec.settings
        # Every connection not yet terminated: aioquic's server creates each through
        # `create`, so the listener need not read the server's own table.
        sessions: set[QuicSession] = set()

        def on_stream(t: QuicStreamTransient) -> None:
            session = t.session
            if session.primary is t or session.accept_callback is None:
                spec.on_transient(t)
            else:
                session.accept_callback(t)

        def create(quic: QuicConnection, stream_handler: Any = None) -> QuicSession:
            session = QuicSession(quic, framer=spec.framer, max_size=settings.max_size,
                                  interface=spec.interface, on_stream=on_stream,
                                  per_msg_reliability=settings.per_msg_reliability,
                                  allow_early=settings.zero_rtt,
                                  on_terminated=sessions.discard)
            sessions.add(session)
            return session

        sock = socket.socket(family_of(spec.address), socket.SOCK_DGRAM)
        try:
            bind_server(sock, spec.address, spec.port, spec.interface)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: QuicServer(configuration=config, create_protocol=create,
                                   session_ticket_fetcher=lambda t: tickets.pop(t, None),
                                   session_ticket_handler=lambda t: tickets.__setitem__(
                                       t.ticket, t)),
                sock=sock)
        except BaseException:
            sock.close()
            raise
        return QuicListening(transport, sessions, sock.getsockname()[1])


class QuicListening:
    stack = "quic"

    def __init__(self, transport: asyncio.BaseTransport, sessions: set[QuicSession],
                 port: int) -> None:
        self._transport = transport
        self._sessions = sessions
        self.port = port

    async def aclose(self) -> None:
        """Close every connection (the peers get CONNECTION_CLOSE), then the socket."""
        closing = list(self._sessions)
        for session in closing:
            session.shutdown()
        await asyncio.sleep(0)  # let the CONNECTION_CLOSE datagrams go out
        self._transport.close()
        for session in closing:
            await session.settle()

