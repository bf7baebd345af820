"""One bidirectional QUIC stream as a Transient: what a Carrier on QUIC runs on.

Rule 1: a stream knows its connection only as a `StreamHost` (the Protocol below, which
`QuicSession` implements): the aioquic connection to write to, whether DATAGRAM frames and
per-message streams are in use, and the session's transmit, deadline and bookkeeping hooks.
It never imports the session, so the session can own streams without an import circle.
Rule 2: a stream writes into aioquic's connection and asks the host to transmit
(`transmit_soon`); the host is the one place datagrams leave, and it calls back
`check_progress()` after each transmit while `tracking_pending()`.
Rule 3: `on_sent` and `on_acked` read aioquic's own stream bookkeeping through
`compat.stream_send_offsets`: the next offset to send and the start of the not-yet-
acknowledged buffer, compared with the end of each message (the core's Ledger).
Rule 4: the Transient plug-in contract (docs/architecture.md, "The Transient interface") is
all the base class sees: `write_ready`, `check_progress`, `track`, `aclose`, `abort`, `fail`;
the base's shared state (`_ledger`, `_progress_handle`, `_flush`, `_eof`, `_error`) is read
here and in no other class of this package: the session calls public methods only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, Protocol

from aioquic.quic.connection import QuicConnection

from ...core.framing import Framer
from ...core.messages import Pending
from ...errors import ConnectionClosedError, DeframingError
from ..transient import Transient
from .compat import stream_send_offsets
from .wire import RESET_EXPIRED, as_datagram, uni_payload

__all__ = ["QuicStreamTransient", "StreamHost"]


class StreamHost(Protocol):
    """What a stream needs from the QUIC connection it rides on."""

    @property
    def connection(self) -> QuicConnection:
        """The sans-I/O aioquic connection the stream writes into."""
        ...

    @property
    def is_open(self) -> bool: ...

    @property
    def datagrams_negotiated(self) -> bool:
        """Both sides accept DATAGRAM frames (RFC 9221)."""
        ...

    @property
    def per_msg_reliability(self) -> bool:
        """Expiring messages ride their own unidirectional streams."""
        ...

    @property
    def local_address(self) -> tuple[str, int] | None: ...

    @property
    def remote_address(self) -> tuple[str, int] | None: ...

    def new_stream(self) -> QuicStreamTransient:
        """A new bidirectional stream of this connection (fork)."""
        ...

    def accept_streams(self, callback: Callable[[QuicStreamTransient], Any]) -> None:
        """Streams the peer opens from now on go to `callback`."""
        ...

    def transmit_soon(self) -> None:
        """Send what the connection has queued, once this loop iteration is done."""
        ...

    def after_transmit(self, callback: Callable[[], None]) -> None:
        """Run `callback` right after the next transmit (a DATAGRAM frame's on_sent)."""
        ...

    def watch_deadline(self, when: float, callback: Callable[[], None]) -> None: ...

    def progress_pending(self) -> None:
        """A stream waits for on_sent / on_acked: check progress after each transmit."""
        ...

    def stream_closed(self, stream: QuicStreamTransient) -> None: ...

    def close_stream_soon(self, stream: QuicStreamTransient) -> None:
        """Run `stream.aclose()` in a task the host owns (and cancels on shutdown)."""
        ...


class QuicStreamTransient(Transient):
    """One bidirectional stream of a QUIC connection: the Transient behind one Carrier."""

    def __init__(self, session: StreamHost, stream_id: int, *, framer: Framer,
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

    @property
    def fin_sent(self) -> bool:
        """Our half of the stream is over (FIN or reset sent): nothing more can be written."""
        return self._fin_sent

    # ---- the Transient interface ---------------------------------------------------------

    def open_sibling(self) -> QuicStreamTransient:
        if not self.session.is_open:
            raise ConnectionClosedError("the QUIC connection of this carrier is closed")
        return self.session.new_stream()

    def accept_siblings(self, callback: Callable[[Transient], Any]) -> bool:
        self.session.accept_streams(callback)
        return True

    # ---- sending ---------------------------------------------------------------------

    def write_ready(self, ready: list[Pending]) -> None:
        quic = self.quic
        session = self.session
        datagrams_ok = session.datagrams_negotiated
        per_message = session.per_msg_reliability
        for p in ready:
            msg = p.message
            if datagrams_ok and as_datagram(msg.reliable, msg.immediate, len(msg.data)):
                quic.send_datagram_frame(msg.data)
                session.after_transmit(functools.partial(self.fire, p.on_sent, p.message))
                continue
            frame = self.framer.encode(msg.data)
            if per_message and msg.lifetime is not None and p.deadline is not None:
                uni = quic.get_next_available_stream_id(is_unidirectional=True)
                payload = uni_payload(self.stream_id, frame)
                quic.send_stream_data(uni, payload, end_stream=True)
                self._uni[uni] = (p, len(payload))
                session.progress_pending()
                session.watch_deadline(p.deadline, functools.partial(self._expire_uni, uni))
                continue
            quic.send_stream_data(self.stream_id, frame)
            self._offset += len(frame)
            self.track(self._offset, p)
        self.sent_any = True
        session.transmit_soon()

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
            self.quic.reset_stream(uni, RESET_EXPIRED)
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
            self.session.progress_pending()

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
        """Bytes of this stream from the peer (`early`: 0-RTT data); `end`: its FIN."""
        self.early = early
        try:
            messages = self.framer.feed(data)
        except DeframingError as exc:
            self.fail(exc)
            return
        self.deliver(messages)
        if end:
            self.end_of_messages()

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
        return self._owner.fin_sent or not self._owner.session.is_open

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
