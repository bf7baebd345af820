"""One QUIC connection (aioquic's own protocol pump) and the stream Transients it carries.

Rule 1: aioquic's sans-I/O `QuicConnection` does the protocol and aioquic's
`QuicConnectionProtocol` pumps it (`transmit()`, its timer, `datagram_received`); `QuicSession`
only routes its events to per-stream Transients and adds what must follow a transmit. We do
not reimplement QUIC or TLS.
Rule 2: the session is the one place datagrams leave (`transmit`, `transmit_soon`); streams
write into the connection and ask. It implements `stream.StreamHost` and calls only public
methods of its streams (`on_data`, `deliver`, `end_of_messages`, `terminate`, `fail`,
`check_progress`, `tracking_pending`, `aclose`).
Rule 3: a close aioquic reports (ConnectionTerminated) becomes a `QuicClosedError` carrying
the QUIC error code and reason phrase: the handshake waiter raises it, and streams fail with it
unless the close was a clean NO_ERROR. An ICMP error during the handshake fails the waiter
with the OSError itself (racing classifies both).
Rule 4: no private aioquic name is used here: where aioquic has no public route, the access
is a function of `compat`, tested against real aioquic connections.
Rule 5: a client session with a `Trust` checks it when aioquic reports the handshake
completed (`config.Trust.check`), before aioquic transmits again: on a pin mismatch the
connection closes (CRYPTO_ERROR plus bad_certificate) with nothing of the application sent,
the handshake waiter raises the PinMismatchError, and no later event is routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from .compat import peer_certificate, peer_max_datagram_frame_size, refuse_early_data
from .config import Origin, Trust
from .stream import QuicStreamTransient
from .wire import is_unidirectional, split_uni

__all__ = ["QuicClosedError", "QuicSession"]

_IDLE_CLOSE = 0.5
"""Seconds a connection lingers after its last carrier closed (a fork may follow)."""
_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42
"""How a client closes on a pin mismatch: the TLS bad_certificate alert (RFC 9001 section
4.8), as aioquic's own chain check does."""


class QuicClosedError(ConnectionError):
    """The QUIC connection closed, as aioquic reported it (its ConnectionTerminated event).

    `error_code` is the QUIC transport error code (RFC 9000 section 20.1; CRYPTO_ERROR 0x100
    plus a TLS alert when the handshake failed, RFC 9001 section 4.8) or the application's,
    `reason_phrase` the text that came with it. taps_post.runtime.racing.classify() reads
    both attributes by name to tell a certificate rejection from a refusal or a reset."""

    def __init__(self, error_code: int, reason_phrase: str = "",
                 frame_type: int | None = None) -> None:
        # int(): aioquic reports its own codes as QuicErrorCode members (an IntEnum).
        code = int(error_code)
        super().__init__(f"QUIC connection closed: {reason_phrase or 'closed'} "
                         f"(error {code:#x})")
        self.error_code = code
        self.reason_phrase = reason_phrase
        self.frame_type = frame_type

    @classmethod
    def from_event(cls, event: events.ConnectionTerminated) -> QuicClosedError:
        return cls(event.error_code, event.reason_phrase or "", event.frame_type)


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
                 on_terminated: Callable[[QuicSession], None] | None = None,
                 trust: Trust | None = None, offered: Origin | None = None) -> None:
        super().__init__(quic, stream_handler)
        self.connection = quic
        """The sans-I/O aioquic connection this protocol pumps (we made it, so we keep it)."""
        self.loop = asyncio.get_running_loop()
        self.framer = framer
        self.max_size = max_size
        self.interface = interface
        self.on_stream = on_stream
        """Told of each stream the peer opens that no carrier accepts (a listener's)."""
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
        self.termination: QuicClosedError | None = None
        """Why aioquic closed the connection, once it did."""
        self._refuse_early = not allow_early
        """The server's policy avoids or prohibits zeroRttMsg: the tickets it issues must not
        allow early data, so clients resume with a 1-RTT handshake."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Graceful stream closes started by a synchronous transport.close()."""
        self.trust = trust
        """What the server must prove (a client's); None for a listener's sessions."""
        self.offered_origin = offered
        """The Origin of the session ticket this client offered, if it offered one."""
        self.origin: Origin | None = None
        """What the completed handshake proved (Rule 5): the tickets it brings carry it."""
        self.refusal: BaseException | None = None
        """Why this client refused its server after the handshake (a pin mismatch)."""

    @property
    def datagrams_negotiated(self) -> bool:
        return peer_max_datagram_frame_size(self.connection) is not None

    def accept_streams(self, callback: Callable[[QuicStreamTransient], Any]) -> None:
        self.accept_callback = callback

    def progress_pending(self) -> None:
        self.tracking = True

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
        (error_received, the OSError itself) and says why the connection terminated (a
        QuicClosedError with aioquic's error code)."""
        if self.handshake_done:
            return
        if self.refusal is not None:
            raise self.refusal
        if not self.is_open:
            if self.termination is not None:
                raise QuicClosedError(self.termination.error_code,
                                      self.termination.reason_phrase,
                                      self.termination.frame_type) from self.termination
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
        self._handshake_failed(exc if exc is not None else ConnectionError(
            "the QUIC connection's socket closed before its handshake completed"))
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
        if self.refusal is not None and not isinstance(event, events.ConnectionTerminated):
            return  # a refused server's data goes nowhere
        if isinstance(event, events.HandshakeCompleted):
            if self.trust is not None and not self._trusted(event):
                return
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
            reason = self.termination = QuicClosedError.from_event(event)
            self._handshake_failed(reason)
            for t in list(self.streams.values()):
                t.terminate(None if event.error_code == 0 else reason)
            if self.owns_transport and self._out is not None:
                # A client's socket is its own: release it with the connection.
                self.loop.call_soon(self._out.close)
            if self.on_terminated is not None:
                self.on_terminated(self)

    def _trusted(self, event: events.HandshakeCompleted) -> bool:
        """Check the pins (Rule 5). Called while aioquic's events are processed, before its
        next transmit, so a refused server receives the close and nothing else."""
        assert self.trust is not None
        try:
            self.origin = self.trust.check(peer_certificate(self.connection),
                                           event.session_resumed, self.offered_origin)
        except Exception as exc:
            self.refusal = exc
            self.connection.close(error_code=_BAD_CERTIFICATE, frame_type=QuicFrameType.CRYPTO,
                                  reason_phrase=str(exc))
            self._handshake_failed(exc)
            return False
        return True

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        early = not self.handshake_done
        if is_unidirectional(sid):  # one expiring message for the carrier it names
            buf = self._uni_in.setdefault(sid, bytearray())
            buf += event.data
            if event.end_stream:
                parts = split_uni(bytes(self._uni_in.pop(sid)))
                if parts is not None:
                    owner, frame = parts
                    t = self.streams.get(owner) or self.primary
                    if t is not None:
                        t.on_data(frame, False, early)
            return
        t = self.streams.get(sid)
        if t is None:
            t = self._attach(sid)
            # A connection's first stream is a new carrier (for a listener); later ones go
            # to the carrier that called accept(), else they are new carriers too.
            if self.accept_callback is not None and t is not self.primary:
                self.accept_callback(t)
            elif self.on_stream is not None:
                self.on_stream(t)
        t.on_data(event.data, event.end_stream, early)
