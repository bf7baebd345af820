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
Rule 5 (memory, docs/quic.md "Memory limits"): what a sender has written into aioquic and
aioquic has not sent yet (stream bytes, DATAGRAM frames, expiring messages' side streams)
counts against carrier.sendBudget (`backlog_bytes`), so send() waits while a peer withholds
credit; the view's pause_reading / resume_reading (the Transient's receive budget) withhold
and return flow-control credit (the session decides it); a graceful close (flush, FIN, the
peer's acknowledgements) is bounded by carrier.linger, then the stream is abandoned.
Rule 6 (a stopped send side): the peer's STOP_SENDING on this stream (aioquic resets our
half) or a write aioquic refuses ends our half: nothing more is written, every message queued
or awaiting on_sent / on_acked ends with on_send_error, waiting senders are released and
their next send fails; STOP_SENDING on an expiring message's side stream ends that message
with on_send_error. A stream aioquic no longer knows is taken as acknowledged only when no
STOP_SENDING came for it (the session routes that event before any progress check).
Rule 7 (closing with data unread): abort, and a close that leaves data unread or credit
withheld, STOP_SENDING (error 0) a stream whose peer's half is still open, drop what arrives
later and withhold no credit for it, so the peer's sender is told instead of waiting for
credit forever. A close with nothing unread does so only when the peer sends after it, as
TCP answers data after close() with a reset.
Rule 8 (migration, docs/quic.md "Connection migration"): a stream migrates by asking its
host, which moves the whole connection; every stream of it then takes the new addresses
(`path_moved`) and tells its `on_path_change` hook, so each carrier on the connection can
report its PathChange, not only the one that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any, Protocol

from aioquic.quic.connection import QuicConnection

from ...core.framing import Framer
from ...core.messages import InMessage, Pending
from ...core.path import PathStats
from ...errors import ConnectionClosedError, DeframingError
from ..transient import Transient
from .compat import stream_send_offsets
from .wire import RESET_EXPIRED, datagram_fits, datagram_payload, uni_payload

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
    def handshake_done(self) -> bool: ...

    @property
    def peer_max_datagram_frame(self) -> int | None:
        """The peer's max_datagram_frame_size (RFC 9221); None: it takes no DATAGRAM frames
        (or its transport parameters are not known yet)."""
        ...

    @property
    def per_msg_reliability(self) -> bool:
        """Expiring messages ride their own unidirectional streams."""
        ...

    @property
    def marking(self) -> bool:
        """Messages are marked with DSCP code points (the policy's message.dscp table)."""
        ...

    @property
    def local_address(self) -> tuple[str, int] | None: ...

    @property
    def remote_address(self) -> tuple[str, int] | None: ...

    def new_stream(self) -> QuicStreamTransient:
        """A new bidirectional stream of this connection (fork)."""
        ...

    def accept_streams(self, callback: Callable[[QuicStreamTransient], Any],
                       owner: QuicStreamTransient | None = None) -> None:
        """Streams the peer opens from now on go to `callback` while `owner` is open; once
        it returned False, they are refused."""
        ...

    def transmit_soon(self) -> None:
        """Send what the connection has queued, once this loop iteration is done."""
        ...

    def flush(self) -> None:
        """Send what the connection has queued now, in packets of its own (immediate)."""
        ...

    def mark(self, niceness: int) -> None:
        """A message of `niceness` was just written: the next packets carry its code point
        unless a more urgent one was written too (only called while `marking`)."""
        ...

    def datagram_written(self, stream: QuicStreamTransient, pending: Pending) -> None:
        """A DATAGRAM frame for `pending` was handed to aioquic: its on_sent fires once
        aioquic wrote it into a packet, its on_send_error if the connection ends first."""
        ...

    def watch_deadline(self, when: float, callback: Callable[[], None]) -> None: ...

    def progress_pending(self, stream: QuicStreamTransient) -> None:
        """`stream` waits for on_sent / on_acked: check its progress after each transmit
        until its `tracking_pending()` is False."""
        ...

    def backlog_pending(self, stream: QuicStreamTransient) -> None:
        """`stream`'s backlog is over its send budget: after each transmit, call its
        `notify_drained()` whenever `backlog_bytes()` shrank, until it is under a quarter of
        `send_limit`."""
        ...

    def credit_changed(self) -> None:
        """A stream resumed reading: send the flow-control credit it withheld."""
        ...

    @property
    def credit_short(self) -> bool:
        """The connection's credit waits for carriers to consume (a message taken frees
        some: call `credit_changed`)."""
        ...

    def path_stats(self) -> PathStats: ...

    def stream_closed(self, stream: QuicStreamTransient) -> None: ...

    def close_stream_soon(self, stream: QuicStreamTransient) -> None:
        """Run `stream.aclose()` in a task the host owns (and cancels on shutdown)."""
        ...

    async def migrate(self, local_address: str, interface: str | None) -> bool:
        """Move the connection to `local_address` on `interface` (a client's; Rule 8)."""
        ...


class QuicStreamTransient(Transient):
    """One bidirectional stream of a QUIC connection: the Transient behind one Carrier."""

    def __init__(self, session: StreamHost, stream_id: int, *, framer: Framer,
                 max_size: int, interface: str | None) -> None:
        super().__init__(stack="quic", framer=framer, max_size=max_size, interface=interface)
        self.session = session
        self.stream_id = stream_id
        self.dane: str | None = None
        """How DANE accepted the server (stacks/dane.py `check`); None: not checked."""
        self.transport = _StreamView(self)
        self.local_address = session.local_address
        self.remote_address = session.remote_address
        self._offset = 0
        self._uni: dict[int, tuple[Pending, int]] = {}
        """Unidirectional streams carrying one expiring message each: stream id -> end."""
        self._uni_unacked: dict[int, tuple[Pending, int]] = {}
        self._uni_bytes = 0
        """Bytes of the expiring messages in `_uni` (not yet wholly sent): a running total,
        so backlog_bytes() does not walk every pending message on each send."""
        self._fin_sent = False
        self._early_left = 0
        """Bytes received as 0-RTT data not yet part of a delivered message (on_data)."""
        self._settled: asyncio.Future[None] | None = None
        """Resolved when tracking settles or the stream ends (aclose waits on it)."""
        self._big_last = 0
        """Bytes of the last message written to the stream (backlog_bytes)."""
        self.credit_withheld = False
        """The carrier is over its receive budget: no flow-control credit is extended, and
        DATAGRAM frames for it are dropped (Rule 5)."""
        self.datagrams_dropped = 0
        """DATAGRAM frames for this carrier dropped while it was over its receive budget."""
        self._datagram_bytes = 0
        """Bytes of our DATAGRAM frames aioquic holds, not yet written into a packet."""
        self.send_stopped: BaseException | None = None
        """Why our half can carry nothing more: the peer's STOP_SENDING (aioquic then resets
        it), or aioquic refused a write (Rule 6)."""
        self.recv_stopped = False
        """We stopped reading this stream (closed with data unread, Rule 7): later bytes
        are dropped."""
        self.reads_closed = False
        """We closed with nothing unread: the peer's next bytes stop its half (Rule 7)."""
        self.on_path_change: Callable[[QuicStreamTransient], None] | None = None
        """Told after this stream's addresses changed (Rule 8): its connection migrated, on
        this carrier's request or a sibling's, or (a server's) its peer moved. The runtime
        compares the Path it knew with the new one (`Path.of(transient)`)."""

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
        self.session.accept_streams(callback, self)
        return True

    async def migrate(self, local_address: str, interface: str | None) -> bool:
        """QUIC connection migration (Rule 8): the whole connection moves, every stream on
        it with it, without a handshake. False where it cannot (a server's stream, a closed
        one, an address that cannot be used)."""
        if not self.is_open:
            return False
        return await self.session.migrate(local_address, interface)

    def path_moved(self, local: tuple[str, int] | None, remote: tuple[str, int] | None,
                   interface: str | None) -> None:
        """The connection now runs between `local` and `remote` (Rule 8): take them, and
        tell `on_path_change`. A failing hook is reported to the loop, never raised into
        the session."""
        self.local_address = local
        self.remote_address = remote
        self.interface = interface
        hook = self.on_path_change
        if hook is not None:
            try:
                hook(self)
            except Exception as err:
                self.loop.call_exception_handler({"message": "taps_post path change "
                                                  "handler failed", "exception": err})

    # ---- sending ---------------------------------------------------------------------

    @property
    def send_limit(self) -> int:
        """carrier.sendBudget (the Transient's `send_budget`)."""
        return self.send_budget

    def backlog_bytes(self) -> int:
        """Queued bytes plus what aioquic holds of ours not yet sent (Rule 5): the stream's
        bytes past aioquic's next send offset, expiring messages not yet sent on their side
        streams, DATAGRAM frames not yet in a packet. A last message larger than the budget
        is left out, so the bound is the budget plus that message and the one after it."""
        total = self.queued_bytes + self._datagram_bytes
        if self._offset and self.send_stopped is None:
            offsets = stream_send_offsets(self.quic, self.stream_id)
            if offsets is not None:
                unsent = self._offset - offsets[0]
                if self._big_last > self.send_limit:
                    # One message larger than the whole budget is not held against the
                    # next send while it goes: DATAGRAM frames keep flowing beside it.
                    unsent = max(unsent - self._big_last, 0)
                total += unsent
        # Expiring messages count whole until the progress check after a transmit saw them
        # sent (a partly sent one is over-counted: the sender waits a little longer).
        return total + self._uni_bytes

    def datagram_gone(self, p: Pending) -> None:
        """aioquic wrote (or the connection dropped) one of our DATAGRAM frames."""
        self._datagram_bytes -= len(p.message.data)

    def path_stats(self) -> PathStats:
        """The connection's path as aioquic's recovery measured it (all of a connection's
        streams share one path)."""
        return self.session.path_stats()

    def write_ready(self, ready: list[Pending]) -> None:
        quic = self.quic
        session = self.session
        per_message = session.per_msg_reliability
        marking = session.marking
        wrote = False
        for i, p in enumerate(ready):
            if self.send_stopped is not None:
                self._fail_unwritten(ready[i:], self.send_stopped)
                break
            msg = p.message
            if msg.immediate and wrote:
                session.flush()  # what was written before goes without it
            if marking:
                session.mark(msg.niceness)
            if msg.reliable or not self._write_datagram(p):
                frame = self.framer.encode(msg.data)
                if per_message and msg.lifetime is not None and p.deadline is not None:
                    payload = uni_payload(self.stream_id, frame)
                    try:
                        uni = quic.get_next_available_stream_id(is_unidirectional=True)
                        quic.send_stream_data(uni, payload, end_stream=True)
                    except (ValueError, RuntimeError, AssertionError) as exc:
                        self._fail_unwritten(ready[i:], exc)  # Rule 6
                        break
                    self._uni[uni] = (p, len(payload))
                    self._uni_bytes += len(payload)
                    session.progress_pending(self)
                    session.watch_deadline(p.deadline,
                                           functools.partial(self._expire_uni, uni))
                else:
                    try:
                        quic.send_stream_data(self.stream_id, frame)
                    except (ValueError, RuntimeError, AssertionError) as exc:
                        self.stop_sending_side(exc)  # Rule 6: this half is over
                        self._fail_unwritten(ready[i:], exc)
                        break
                    self._offset += len(frame)
                    self._big_last = len(frame)
                    self.track(self._offset, p)
            wrote = True
            if msg.immediate:  # own packet, now: nothing written after it joins its packet
                session.flush()
                wrote = False
        self.sent_any = True
        session.transmit_soon()
        if self.backlog_bytes() > self.send_limit // 4:  # a sender may wait (or will)
            session.backlog_pending(self)

    def _fail_unwritten(self, ready: list[Pending], exc: BaseException) -> None:
        """Messages taken from the queue that aioquic refused, or that follow one it refused:
        each ends with on_send_error (Rule 6), none is left hanging."""
        for p in ready:
            self.fire(p.on_send_error, p.message)

    def stop_sending_side(self, exc: BaseException) -> None:
        """Our half of the stream can carry nothing more (the peer's STOP_SENDING: aioquic
        reset it; or aioquic refused a write): nothing is written any more (the view reports
        closing), every message still queued or awaiting on_sent / on_acked on the stream
        ends with on_send_error (after on_sent where aioquic sent it), and waiting senders
        are released (their next send fails: the carrier is closed for sending) (Rule 6)."""
        if self.send_stopped is not None:
            return
        self.send_stopped = exc
        self._fin_sent = True
        if self._ledger:
            offsets = stream_send_offsets(self.quic, self.stream_id)
            sent = offsets[0] if offsets is not None else None
            self.fire_events(self._ledger.fail(exc, sent))
        self._end_queue(exc)
        self.notify_drained()
        self._settle_waiter()

    def side_stream_stopped(self, uni: int, exc: BaseException) -> bool:
        """The peer stopped one of our expiring messages' side streams (its receive bound):
        that message ends with on_send_error, never on_acked. False: not one of ours."""
        entry = self._uni.pop(uni, None)
        if entry is not None:
            self._uni_bytes -= entry[1]
        else:
            entry = self._uni_unacked.pop(uni, None)
        if entry is None:
            return False
        p, _end = entry
        self.fire(p.on_send_error, p.message)
        self._settle_waiter()
        return True

    def _write_datagram(self, p: Pending) -> bool:
        """Hand a `reliable=False` message to aioquic as a DATAGRAM frame prefixed with this
        stream's id (wire, Rule 2), or end it with on_send_error when it cannot go as one
        (the peer takes no DATAGRAM frames, or not this large). False only before the
        handshake while the peer's support is unknown: the message then rides the stream
        (0-RTT data), so early data is never lost to a guess."""
        session = self.session
        peer_max = session.peer_max_datagram_frame
        if peer_max is None and not session.handshake_done:
            return False
        payload = datagram_payload(self.stream_id, p.message.data)
        if not datagram_fits(len(payload), peer_max):
            self.fire(p.on_send_error, p.message)
            return True
        self.quic.send_datagram_frame(payload)
        self._datagram_bytes += len(p.message.data)
        session.datagram_written(self, p)
        return True

    def _expire_uni(self, uni: int) -> None:
        entry = self._uni.get(uni)
        if entry is None:
            return
        p, end = entry
        offsets = stream_send_offsets(self.quic, uni)
        if offsets is None or offsets[0] >= end:
            return  # fully sent in time: its fate is decided by the progress check
        del self._uni[uni]
        self._uni_bytes -= end
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
                self._uni_bytes -= end
                self.fire(p.on_sent, p.message)
                if p.on_acked is not None:
                    self._uni_unacked[uni] = (p, end)
        for uni, (p, end) in list(self._uni_unacked.items()):
            offsets = stream_send_offsets(self.quic, uni)
            if offsets is None or offsets[1] >= end:
                del self._uni_unacked[uni]
                self.fire(p.on_acked, p.message)
        self._settle_waiter()

    def _settle_waiter(self) -> None:
        settled = self._settled
        if settled is not None and not settled.done() and (
                not self.tracking_pending() or self.closed.done()
                or not self.session.is_open):
            settled.set_result(None)

    def track(self, end: int, p: Pending) -> None:
        if self._ledger.track(end, p):
            self.session.progress_pending(self)

    def tracking_pending(self) -> bool:
        """Messages wait for on_sent/on_acked on this stream or its expiring side streams."""
        return bool(self._ledger or self._uni or self._uni_unacked)

    def final_offsets(self, exc: BaseException | None) -> int | None:
        """How far aioquic sent this stream when it ended: messages up to there get on_sent
        before their on_send_error. A stream aioquic discarded was sent and acknowledged."""
        offsets = stream_send_offsets(self.quic, self.stream_id)
        return self._offset if offsets is None else offsets[0]

    def terminate(self, exc: BaseException | None) -> None:
        # Messages on their own unidirectional streams were written but not acknowledged:
        # they end with on_send_error, as the Ledger's do (every message ends once).
        uni = list(self._uni.values()) + list(self._uni_unacked.values())
        self._uni.clear()
        self._uni_bytes = 0
        self._uni_unacked.clear()
        super().terminate(exc)
        for p, _end in uni:
            self.fire(p.on_send_error, p.message)
        self._settle_waiter()

    async def aclose(self) -> None:
        """Graceful close, bounded by `linger` in total (contract 4): what is queued goes
        into aioquic, the FIN follows it, and the close waits for the peer to acknowledge
        the messages whose on_sent / on_acked are awaited; past the linger time the stream
        is reset (after its FIN too) and those messages end with on_send_error
        (after on_sent where aioquic sent them), each once."""
        try:
            async with asyncio.timeout(self.linger):
                await self._flush()
                if not self._fin_sent and self.session.is_open:
                    self._fin_sent = True
                    with contextlib.suppress(Exception):
                        self.quic.send_stream_data(self.stream_id, b"", end_stream=True)
                    self.session.transmit_soon()
                # Like TCP's close: unread data (or credit we withheld) stops the peer's
                # half now; otherwise only when it sends after our close (on_data).
                if self.credit_withheld or self.buffered_bytes:
                    self.stop_receiving()
                else:
                    self.reads_closed = True
                await self._acknowledged()
        except TimeoutError:
            # Past the FIN too: RESET_STREAM (allowed until all is acknowledged, RFC 9000
            # section 3.1), so nothing reported as a send error still reaches the peer.
            if self.session.is_open and self.tracking_pending():
                self._fin_sent = False
            self.abort()
            return
        self.session.stream_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    async def _acknowledged(self) -> None:
        """Wait until no message of this stream waits for on_sent / on_acked any more (the
        session's progress checks after each transmit settle them), or the stream ended."""
        while self.tracking_pending() and self.session.is_open and not self.closed.done():
            if self._settled is None or self._settled.done():
                self._settled = self.loop.create_future()
            await self._settled

    def abort(self) -> None:
        if self.session.is_open and not self._fin_sent:
            self._fin_sent = True
            with contextlib.suppress(Exception):
                self.quic.reset_stream(self.stream_id, 0)
            self.session.transmit_soon()
        self.stop_receiving()
        self.session.stream_closed(self)
        self.terminate(None)

    # ---- receiving -------------------------------------------------------------------

    def stop_receiving(self) -> None:
        """Closing with the peer's half still open (Rule 7): STOP_SENDING (error 0), so a
        peer that waits for credit we withheld learns that nothing more is read (our own
        stack fails its messages, Rule 6) instead of waiting forever; its later bytes are
        dropped and no credit is withheld for them."""
        if self.recv_stopped or self._eof:
            return
        self.recv_stopped = True
        self.credit_withheld = False
        if self.session.is_open:
            with contextlib.suppress(Exception):
                self.quic.stop_stream(self.stream_id, 0)
            self.session.transmit_soon()

    def on_data(self, data: bytes, end: bool, early: bool) -> None:
        """Bytes of this stream from the peer (`early`: they came before the handshake
        completed, as 0-RTT data); `end`: its FIN.

        A message is early when any of its bytes was: messages completed by an early chunk
        are, and so are those completed later whose first bytes were early (`_early_left`
        counts the early bytes not yet part of a delivered message; re-encoding a message
        gives its size on the stream, only while such bytes remain)."""
        if self.recv_stopped:
            return  # we stopped reading (Rule 7)
        if self.reads_closed:  # data after our close: nobody will read it (Rule 7)
            self.stop_receiving()
            return
        self.data_arrived()
        try:
            messages = self.framer.feed(data)
        except DeframingError as exc:
            self.fail(exc)
            return
        if early:
            self._early_left += len(data)
        if self._early_left:
            split = 0
            for m in messages:
                if self._early_left <= 0:
                    break
                self._early_left -= self._framed_size(m)
                split += 1
            self._early_left = max(self._early_left, 0)
            self.early = True
            self.deliver(messages[:split])
            messages = messages[split:]
        self.early = False
        self.deliver(messages)
        if end:
            self.end_of_messages()

    def pop_message(self) -> InMessage:
        msg = super().pop_message()
        if self.session.credit_short:  # the connection's credit follows consumption
            self.session.credit_changed()
        return msg

    def on_side_message(self, frame: bytes, early: bool) -> None:
        """One framed message that came on its own unidirectional stream (an expiring one):
        deframed apart from this stream's bytes, which may hold a partial message."""
        framer = self.framer.fresh()
        try:
            messages = framer.feed(frame) + framer.eof()
        except DeframingError as exc:
            self.fail(exc)
            return
        self.early = early
        self.deliver(messages)
        self.early = False

    def _framed_size(self, message: bytes) -> int:
        # A control frame (fork protocol) is counted as a message of its payload: two bytes
        # short, which at worst marks the message after it not early. Rare: 0-RTT bytes
        # and a control frame at the same boundary.
        return len(self.framer.encode(bytes(message)))

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
        """Over the receive budget: withhold flow-control credit (the peer stops sending once
        the credit it has runs out)."""
        self._owner.credit_withheld = True

    def resume_reading(self) -> None:
        if self._owner.credit_withheld:
            self._owner.credit_withheld = False
            self._owner.session.credit_changed()

    def close(self) -> None:
        # A graceful close flushes the queue first, so it cannot finish here: the session
        # runs it and owns the task (shutdown() cancels it).
        if not self._close_requested:
            self._close_requested = True
            self._owner.session.close_stream_soon(self._owner)

    def abort(self) -> None:
        self._owner.abort()
