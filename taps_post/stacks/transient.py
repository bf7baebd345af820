"""Transient: one protocol stack instance over one path, the asyncio half of the transport core.

Rule 1: a Transient owns exactly one transport and everything that must stay consistent with
it: the outbox (SendQueue + Ledger) and its pump, the inbox, and the timers. The Carrier
above it uses only the public interface defined here (docs/architecture.md, "The Transient
interface"), so a carrier can move to a new Transient (activate) without any message being
lost or duplicated, and a new stack only subclasses this.
Rule 2: writes are batched: the pump drains every ready message into one write, except
`immediate` messages, which get their own (and so their own segment on stream stacks, which
set TCP_NODELAY).
Rule 3: `on_sent` fires when the kernel has taken the message's last byte, `on_acked` when the
peer acknowledged it, both read from the stack's own offsets (`offsets()`), never guessed; the
core's Ledger turns offsets into events exactly once.
Rule 4: a subclass provides `write_ready(ready)` and may override `offsets()`,
`end_offsets()` (or `final_offsets()`), `submit_data()` (a direct-write fast path),
`write_control()`, `path_stats()`, `detach_stream()`, `open_sibling()`,
`accept_siblings()` and `watch_after_eof()`.
Rule 5: every message ends exactly once (RFC 9622): `on_acked` where the stack acknowledges
(TCP, TLS, QUIC streams), `on_expired` when its lifetime or an antecedent ran out before it
was sent, or `on_send_error` when the stack refused it or the transport ended first. At the
end of a transport, messages still queued (never written) go to `salvage` first (the Carrier
re-sends them on its next Transient) and get `on_send_error` only if it declines; messages
written but not acknowledged get `on_send_error`, after `on_sent` if the kernel took them.
Datagram stacks (UDP, QUIC DATAGRAM frames) have no acknowledgement: their end is `on_sent`,
or `on_send_error` when the kernel refuses the datagram.
Rule 6: control frames (the fork protocol, core/framing.py) never reach the inbox: `deliver`
checks `framer.control_seen` once per batch and hands `Control` items to `on_control`.
Rule 7: budgets are bytes (`apply_settings`: carrier.recvBudget, carrier.sendBudget). Reading
pauses (`transport.pause_reading()`) when the inbox's bytes plus the framer's partial message
(`pending_size`) exceed `recv_budget` while the inbox holds a message, and resumes once the
application took it under a quarter of the budget or emptied the inbox: one message up to
message.maxSize always completes when nothing else is buffered, so pausing never deadlocks.
More than `Inbox.high` (4,096) messages held pause reading too, whatever their size.
A stack whose transport cannot pause (a datagram socket) drops what would go over instead
and counts it in `dropped`. `send()` waits while `backlog_bytes()` is over `send_budget`
and is released under a quarter of it; a stack with a buffer of its own (QUIC) overrides
`backlog_bytes()` and calls `notify_drained()` when it shrank.
Rule 8: `aclose()` is bounded by `linger` in total (flush, settle, close handshake), then
aborts; cancelling it aborts too. Either way every message ends once by then (Rule 5).
Rule 9: with `idle_timeout` set, the Transient ends with IdleTimeoutError after that long
without a message taken by the application, received, written or acknowledged: one timestamp
per batch (and per message taken), and one timer that re-arms for the remainder. Messages the
application has not taken yet keep it alive (the wait is ours, not the peer's), and so does
our own send progress within one large message: before failing, the timer reads
`send_progress()` (the stack's offsets) once and re-arms if the bytes the stack took or the
peer acknowledged moved since its last look (a peer reading a big reply slowly but steadily
is no idle peer). Bytes received of a message that never completes never count (a slowloris
peer trickles them).
Rule 10: after the peer's EOF a stream stays open for our replies (half-close), but nothing
reads the socket any more, so a reset (a peer process that died answers our data with RST)
would go unseen until close(). While anything written after EOF is unacknowledged,
`check_progress` asks the stack (`watch_after_eof`) and the stack ends the Transient with
the reset at once: the messages end with on_send_error, the Carrier goes dormant.
Rule 11: an idle Transient is small (thousands are held at once): `__slots__` (a subclass
that declares none gets a `__dict__` for its own attributes only), and the waiter lists start
as the shared empty `_NONE`, made on first use (so do the outbox's queues, core/outbox.py).
The inbox (a deque: 760 bytes even when empty) is the shared, never-filled `_NO_INBOX`
while nothing waits in it: `deliver` takes a spare one (or makes one) and `pop_message`
hands an emptied one back to the spares (at most `_SPARES_MAX`, for the whole process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..core.early import EarlyAttempt
from ..core.events import Acked, Expired, Failed, Sent
from ..core.framing import Control, Framer
from ..core.inbox import RECV_BUDGET, Inbox
from ..core.messages import InMessage, OutMessage, Pending
from ..core.outbox import Ledger, SendQueue
from ..core.path import PathStats, Subflow
from ..core.settings import Settings, dscp_for
from ..errors import ConnectionClosedError, IdleTimeoutError, MessageTooLargeError, UsageError

__all__ = ["LINGER", "SEND_BUDGET", "SEND_HIGH", "SEND_LOW", "Transient"]

SEND_BUDGET = 1 << 20
"""carrier.sendBudget's default: queued bytes above which `send()` waits (Rule 7)."""
SEND_HIGH = SEND_BUDGET
"""The default send budget under its older name."""
SEND_LOW = SEND_BUDGET // 4
"""...and the level under which a waiting sender is released (a quarter of the budget)."""
LINGER = 5.0
"""carrier.linger's default (seconds): the bound on a graceful close (Rule 8)."""
_CHUNK = 256 * 1024
"""One read's usual most: asyncio's plain stream transports read at most 256 KiB per call,
so deliver() checks the budget exactly only within this of it (Rule 7). After a pause,
SSLProtocol can hand over up to what its incoming buffer holds in one call: the budget may
then be overshot by that read's excess, until the next read (which checks exactly)."""
_NONE: Any = ()
"""Rule 11: the empty waiter list a Transient starts with (read-only; replaced on use)."""
_NO_INBOX = Inbox()
"""Rule 11: the inbox of every Transient with nothing waiting (never appended to)."""
_SPARES: list[Inbox] = []
"""Rule 11: emptied inboxes, reused by the next Transient that receives."""
_SPARES_MAX = 64


def _spare_inbox() -> Inbox:
    try:
        return _SPARES.pop()  # one call: event loops in other threads share the spares
    except IndexError:
        return Inbox()


class Transient:
    """The part every stack shares: outbox and pump, inbox and receivers, close and abort."""

    accepts_plain = False
    """True when write_ready() takes bytes items (SendQueue.push_data) as well as Pending."""
    drops_when_full = False
    """Rule 7: the transport cannot pause reading, so what would go over the receive budget
    is dropped (and counted in `dropped`); a datagram protocol is taken to be such a stack."""

    __slots__ = ("__weakref__", "_active_at", "_callback", "_check_frame", "_close_waiters",
                 "_data_seen", "_direct", "_drained", "_drops", "_eof", "_error", "_expiry_handle",
                 "_first_data", "_idle_handle", "_idle_offsets", "_inbox", "_ledger",
                 "_plain_fast", "_progress_delay", "_progress_handle", "_pump_handle", "_queue",
                 "_recv_near", "_waiters", "_writing_paused", "closed", "dropped", "dscp", "early",
                 "early_attempt", "early_in_syn", "early_sent", "established_ms", "framer",
                 "idle_timeout", "interface", "linger", "local_address", "loop", "max_size",
                 "on_control", "on_soft_error", "owner", "path", "received_any", "recv_budget",
                 "remote_address", "rtt_ms", "salvage", "send_budget", "sent_any", "session_reused",
                 "soft_error", "stack", "transport")

    stack: str
    interface: str | None
    local_address: tuple[str, int] | None
    remote_address: tuple[str, int] | None
    established_ms: float | None

    def __init__(self, *, stack: str, framer: Framer, max_size: int,
                 interface: str | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.stack = stack
        self.framer = framer
        self.max_size = max_size
        self.interface = interface
        self.local_address = None
        self.remote_address = None
        self.established_ms = None
        self.transport: Any = None
        self.owner: Any = None
        """The Carrier this Transient serves (set by `bind`); received messages name it."""
        self.early = False
        """Messages received now arrive as 0-RTT data (before the handshake completed)."""
        self.rtt_ms: float | None = None
        """Connect time of the transport handshake (TCP SYN to SYN-ACK), as measured."""
        self.session_reused = False
        self.early_sent = False
        """The first message (initiate(send=...)) was written during establishment."""
        self.early_in_syn = False
        """...and rode in the first flight: the peer acknowledged our 0-RTT data."""
        self.soft_error: BaseException | None = None
        """The last soft error (ICMP) reported on a connectionless socket."""
        self.on_soft_error: Callable[[BaseException], None] | None = None
        """Called with each soft error (ICMP on connected UDP, QUIC after its handshake)."""
        self.early_attempt: EarlyAttempt | None = None
        """The early flight's attempt handle when this Transient carried copies early (TCP
        Fast Open, QUIC 0-RTT): the Carrier settles the race's events with it."""
        self.salvage: Callable[[list[Pending]], bool] | None = None
        """Rule 5: called with the never-written messages when the transport ends; True
        means the owner took them (they are sent again elsewhere, not reported here)."""
        self.path: Any = None
        """The `taps_post.Path` the runtime made for this Transient."""
        self.on_control: Callable[[bytes], None] | None = None
        """Rule 6: receives the payload of each control frame from the peer."""
        self._first_data: asyncio.Future[None] | None = None
        """`first_data`, made when first asked for (Rule 11)."""
        self._data_seen = False
        """The first byte arrived or the transport ended (`first_data` is resolved)."""
        self.dscp: tuple[int, ...] = ()
        """Settings.dscp: DSCP code point by niceness (empty: packets are not marked)."""
        # budgets and timers (Rules 7-9; apply_settings sets them from the Decision)
        self.recv_budget = RECV_BUDGET
        self.send_budget = SEND_BUDGET
        self.linger = LINGER
        self.idle_timeout = 0.0
        self.dropped = 0
        """Datagrams dropped because the receive budget was full (Rule 7)."""
        self._drops = self.drops_when_full or isinstance(self, asyncio.DatagramProtocol)
        """Rule 7: reading cannot pause here (a datagram socket): drop instead."""
        self._active_at = 0.0
        """loop.time() of the last whole message either way (only kept while idle is on)."""
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_offsets: tuple[int, int | None] | None = None
        """`offsets()` at the idle timer's last look (Rule 9: our send progress)."""
        self._recv_near = RECV_BUDGET - _CHUNK
        """Inbox bytes above which deliver() checks the budget exactly (Rule 7)."""
        self._plain_fast = (self.accepts_plain
                            and type(self).backlog_bytes is Transient.backlog_bytes)
        """try_send_plain may read the queue's bytes itself (backlog_bytes not overridden)."""
        # receive side
        self._inbox = _NO_INBOX
        self._waiters: list[asyncio.Future[None]] = _NONE
        self._callback: Callable[[InMessage], Any] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self.received_any = False
        # send side
        self._queue = SendQueue()
        self._ledger = Ledger()
        self._check_frame = None if framer.encodes_anything else framer.encode
        self._pump_handle: asyncio.Handle | None = None
        self._direct = True
        """May the next submit write at once (no pump pending, first write since the event
        loop last called us)? Re-armed by the loop's callbacks: data received, pump, resume."""
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._progress_handle: asyncio.TimerHandle | None = None
        self._progress_delay = 0.001
        self.sent_any = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._close_waiters: list[asyncio.Future[None]] = _NONE

    # ---- the interface the Carrier uses ----------------------------------------------------

    def bind(self, owner: Any) -> None:
        """Attach the Carrier that serves this Transient (messages name it as their carrier)."""
        self.owner = owner

    def apply_settings(self, settings: Settings) -> None:
        """Take the budgets, linger and idle timeout of `settings` (Rules 7-9) and (re)arm
        the idle timer; the Carrier calls it whenever it binds this Transient."""
        self.recv_budget = settings.recv_budget
        self._recv_near = max(0, settings.recv_budget - _CHUNK)
        self.send_budget = settings.send_budget
        self.linger = settings.linger
        self.idle_timeout = settings.idle_timeout
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self.idle_timeout > 0 and not self.closed.done():
            self._active_at = self.loop.time()
            self._idle_offsets = self.send_progress()
            self._idle_handle = self.loop.call_later(self.idle_timeout, self._idle_check)
        self._check_budget()

    def note_activity(self) -> None:
        """Rule 9: a message went or came (for subclasses with a write path of their own):
        the idle time starts again. Nothing when no idle timer runs."""
        if self._idle_handle is not None:
            self._active_at = self.loop.time()

    def stop_idle(self) -> None:
        """Rule 9: no idle timeout from here on (the transport became the application's)."""
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _idle_check(self) -> None:
        """Rule 9: the idle timer fired; re-arm for what is left, or end the Transient."""
        self._idle_handle = None
        if self.closed.done() or self.transport is None:
            return
        left = self._active_at + self.idle_timeout - self.loop.time()
        if left <= 0:
            if self._inbox:
                left = self.idle_timeout  # the application has not taken what arrived
            else:
                # Our bytes moved (went out, or were acknowledged) since the last look
                # that armed a full period: one large message is still going to a slow
                # reader. One read per period, nothing per message; the window is at least
                # one period (at most two after a message went just before going quiet).
                progress = self.send_progress()
                if progress is not None and progress != self._idle_offsets:
                    self._idle_offsets = progress
                    left = self.idle_timeout
        if left > 0:
            self._idle_handle = self.loop.call_later(left, self._idle_check)
            return
        self.fail(IdleTimeoutError(f"no message either way for carrier.idleTimeout "
                                   f"({self.idle_timeout:g} s): closed", self.idle_timeout))

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done() and self._error is None

    @property
    def failure(self) -> BaseException | None:
        """Why the Transient died, when it died of an error (None after a clean close)."""
        return self._error

    @property
    def at_eof(self) -> bool:
        """The peer will send no more messages (they may still wait in the inbox)."""
        return self._eof

    @property
    def queued_bytes(self) -> int:
        return self._queue.queued_bytes

    @property
    def buffered_bytes(self) -> int:
        """Received bytes held (Rule 7): messages not taken yet plus the partial message the
        framer holds; what carrier.recvBudget bounds."""
        return self._inbox.size + getattr(self.framer, "pending_size", 0)

    @property
    def reading_paused(self) -> bool:
        """Reading is paused because the receive budget is full (Rule 7)."""
        return self._inbox.paused

    @property
    def untouched(self) -> bool:
        """Nothing was sent, received or queued yet (as_stream() is still allowed)."""
        return not (self.sent_any or self.received_any or len(self._queue))

    def open_sibling(self) -> Transient | None:
        """A new Transient on the same connection (a new QUIC stream), or None where the stack
        has one connection per Transient (fork then opens a new connection)."""
        return None

    def accept_siblings(self, callback: Callable[[Transient], Any]) -> bool:
        """Deliver Transients the peer opens on this connection to `callback`; False where
        the stack cannot (peers open new connections, which arrive at a Listener)."""
        return False

    def detach_stream(self) -> tuple[Any, bytes, bool]:
        """Hand the byte stream over (as_stream()): (transport, bytes received but not yet a
        message, peer at EOF). Only stream stacks can."""
        raise UsageError(f"as_stream() needs a reliable ordered stack, not {self.stack}")

    # ---- lifecycle -------------------------------------------------------------------------

    def path_stats(self) -> PathStats:
        """What the stack measures about its path now (fields it cannot read are None)."""
        return PathStats()

    def subflows(self) -> tuple[Subflow, ...]:
        """The subflows of a multipath connection as the kernel sees them now; () for a
        single-path one (and for an MPTCP socket that fell back to TCP)."""
        return ()

    async def migrate(self, local_address: str, interface: str | None) -> bool:
        """Move this connection to `local_address` on `interface` without a new handshake
        (QUIC connection migration). False where the stack cannot (the carrier re-races)."""
        return False

    def dscp_for(self, niceness: int) -> int | None:
        """The DSCP code point for `niceness` (Settings.dscp_for), None when unmarked."""
        return dscp_for(self.dscp, niceness)

    def report_soft_error(self, exc: BaseException) -> None:
        """A soft error (ICMP on a connectionless socket): recorded as `soft_error` and given
        to `on_soft_error`; it does not end the Transient, and neither does a failing
        handler (the loop's exception handler hears of it)."""
        self.soft_error = exc
        if self.on_soft_error is not None:
            try:
                self.on_soft_error(exc)
            except Exception as err:  # the owner's handler must not kill the transport
                self.loop.call_exception_handler({"message": "taps_post soft error "
                                                  "handler failed", "exception": err})

    def send_control(self, payload: bytes) -> None:
        """Send one control frame (Rule 6) now, ahead of anything still queued."""
        if not self.is_open:
            raise ConnectionClosedError(f"cannot send a control frame: the {self.stack} "
                                        "carrier is closed")
        self.write_control(self.framer.encode_control(payload))

    def write_control(self, frame: bytes) -> None:
        """Write an encoded control frame; stacks that carry them override this."""
        raise UsageError(f"the {self.stack} stack cannot carry control frames")

    @property
    def first_data(self) -> asyncio.Future[None]:
        """Resolved when the first byte arrives or the transport ends (a Listener holds new
        stream connections until then to see a fork HELLO first). Made on first access: most
        Transients are never asked (Rule 11)."""
        fut = self._first_data
        if fut is None:
            fut = self._first_data = self.loop.create_future()
            if self._data_seen:
                fut.set_result(None)
        return fut

    def data_arrived(self) -> None:
        """The first byte arrived (or the transport ended): resolve `first_data`."""
        self._data_seen = True
        fut = self._first_data
        if fut is not None and not fut.done():
            fut.set_result(None)

    def terminate(self, exc: BaseException | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        self.data_arrived()
        discard = getattr(self.framer, "discard", None)
        held: int = getattr(self.framer, "pending_size", 0)
        if discard is not None and held:
            discard()  # Rule 7: a message that can no longer complete holds no memory
        if self._ledger:
            sent, acked = self.end_offsets(exc)
            if sent is not None and acked is not None:
                self.fire_events(self._ledger.advance(sent, acked))
            self.fire_events(self._ledger.fail(exc, sent))
        self._end_queue(exc)
        self._cancel_timers()
        self.wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        waiters, self._close_waiters = self._close_waiters, _NONE
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def end_offsets(self, exc: BaseException | None) -> tuple[int | None, int | None]:
        """(sent, acked) when the transport ended, read once: the bytes the kernel is known
        to have taken (so `Sent` precedes `Failed` only for what certainly left, Rule 5) and
        the bytes the peer is known to have acknowledged (those messages end with on_acked,
        not on_send_error); None where unknown. By default `final_offsets` and
        `final_acked`, for stacks that override those instead."""
        return self.final_offsets(exc), self.final_acked(exc)

    def final_offsets(self, exc: BaseException | None) -> int | None:
        """Bytes the kernel is known to have taken when the transport ended (None: unknown),
        so `Sent` precedes `Failed` only for what certainly left (Rule 5)."""
        return None

    def final_acked(self, exc: BaseException | None) -> int | None:
        """Bytes the peer is known to have acknowledged when the transport ended (None:
        unknown): those messages end with on_acked, not on_send_error."""
        return None

    def _end_queue(self, exc: BaseException | None) -> None:
        """Rule 5 for never-written messages: salvage, else on_send_error."""
        salvage = self.salvage
        for p in self._queue.expire(self.loop.time()):
            self.fire(p.on_expired, p.message)  # its lifetime ran out first: expired
        pendings = self._queue.drain_all(plain=salvage is not None)
        if not pendings:
            return
        if salvage is not None:
            for p in pendings:
                p.message.state = "new"
            try:
                taken = salvage(pendings)
            except Exception as err:  # the owner's bug must not keep the transport alive
                self.loop.call_exception_handler({"message": "taps_post salvage failed",
                                                  "exception": err})
                taken = False
            if taken:
                return
            for p in pendings:
                if p.message.state == "new":
                    p.message.state = "expired"
        for p in pendings:
            self.fire(p.on_send_error, p.message)

    def _cancel_timers(self) -> None:
        for h in (self._pump_handle, self._expiry_handle, self._progress_handle,
                  self._idle_handle):
            if h is not None:
                h.cancel()
        self._pump_handle = self._expiry_handle = self._progress_handle = None
        self._idle_handle = None

    def fail(self, exc: BaseException) -> None:
        """Abort because of a protocol error (deframing, oversize): the peer is cut off."""
        if self._error is None:
            self._error = exc
        if self.transport is not None:
            self.transport.abort()
        self.terminate(exc)

    def before_close(self) -> None:
        """Hook, called once when aclose() has ended (also aborted or cancelled): the last
        chance to read state the transport keeps after its close (TLS tickets, which may
        arrive up to the close itself). Once, because reading a TLS session copies it
        (~0.3 ms)."""

    async def aclose(self) -> None:
        """Graceful close: queued messages go out first, then the transport closes; all of
        it bounded by `linger`, then an abort (Rule 8). Cancelled, it aborts at once and
        re-raises: the Transient is closed either way, every message ended (Rule 5)."""
        if self.transport is None:
            return
        try:
            if not self.closed.done():
                try:
                    async with asyncio.timeout(self.linger):
                        await self._graceful_close()
                except TimeoutError:
                    self._give_up(f"close() took longer than carrier.linger "
                                  f"({self.linger:g} s)")
                except asyncio.CancelledError:
                    self._give_up("close() was cancelled")
                    raise
        finally:
            self.before_close()  # tickets read up to and during the close

    async def _graceful_close(self) -> None:
        await self._flush()
        await self._settle()
        if not self.transport.is_closing():
            self.transport.close()
        if not self.closed.done():
            waiter = self.loop.create_future()  # private: cancelling the caller cancels
            if self._close_waiters is _NONE:    # it, never `self.closed`
                self._close_waiters = []
            self._close_waiters.append(waiter)
            await waiter

    def _give_up(self, why: str) -> None:
        """Rule 8: the graceful close cannot finish: abort. With nothing owed to anyone the
        abort is no error (asyncio was only waiting for its own close to run); otherwise
        what was not acknowledged ends with on_send_error (after on_sent where the kernel
        took it), what was never written too, each once (Rule 5)."""
        if self.closed.done() or self.transport is None:
            return
        owed = bool(self._ledger or len(self._queue)
                    or self.transport.get_write_buffer_size())
        if owed:
            self.fail(ConnectionClosedError(f"{why}: aborted with messages not "
                                            "acknowledged"))
        else:
            self.abort()
            self.terminate(None)

    async def _flush(self) -> None:
        """Let the pump send everything queued before a close."""
        while len(self._queue) and self.is_open:
            before = self._queue.queued_bytes
            self._schedule_pump()
            await self._wait_drained()
            if self._queue.queued_bytes == before and not self._writing_paused:
                # Nothing could go: what is left waits for antecedents that will never be
                # sent here. Report it rather than hold the close forever.
                for p in self._queue.drain_all():
                    self.fire(p.on_expired, p.message)
                break

    async def _settle(self) -> None:
        """Before a graceful close, give the peer time to acknowledge what it was sent, so a
        message it did receive is not reported as a send error (Rule 5); bounded by the
        close's linger (Rule 8)."""
        delay = 0.0005  # like check_progress: soon after progress, backing off to 50 ms
        while self._ledger and self.is_open:
            offsets = self.offsets()
            if offsets is not None:
                events = self._ledger.advance(*offsets)
                self.fire_events(events)
                if not self._ledger:
                    break
                delay = 0.0005 if events else min(delay * 2, 0.05)
            await asyncio.sleep(delay)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ---- receive side ---------------------------------------------------------------------

    def deliver(self, messages: list[bytes], remote: tuple[str, int] | None = None) -> None:
        inbox = self._inbox
        if not messages:
            if inbox and not inbox.paused:
                self._check_budget()  # Rule 7: a partial message grows behind a full inbox
            return
        if getattr(self.framer, "control_seen", False):
            messages = self._route_control(messages)
            if not messages:
                return
        self.received_any = True
        if self._idle_handle is not None:
            self._active_at = self.loop.time()  # Rule 9: one timestamp per batch
        carrier, early = self.owner, self.early
        if self._callback is not None or self._drops:
            self._deliver_each(messages, remote)
            return
        if inbox is _NO_INBOX:
            inbox = self._inbox = _spare_inbox()  # Rule 11
        if remote is None and not early:
            new = bytes.__new__  # InMessage(m, carrier=...) without the Python-level __new__
            for m in messages:
                msg = m if type(m) is InMessage else new(InMessage, m)
                msg.carrier = carrier
                inbox.append(msg)
        else:
            for m in messages:
                inbox.append(InMessage(m, carrier=carrier, remote=remote, early=early))
        inbox.size += len(messages[0]) if len(messages) == 1 else sum(map(len, messages))
        # The partial message left after a batch that completed one lies within the chunk
        # just read, so it needs looking at only near the budget (exactly: _check_budget).
        if not inbox.paused and (len(inbox) > inbox.high or inbox.size > self._recv_near):
            self._check_budget()
        self.wake()

    def _deliver_each(self, messages: list[bytes], remote: tuple[str, int] | None) -> None:
        """deliver() with a callback taking messages, or on a stack that drops what would go
        over the receive budget instead of pausing (Rule 7)."""
        carrier, early, inbox = self.owner, self.early, self._inbox
        for m in messages:
            msg = InMessage(m, carrier=carrier, remote=remote, early=early)
            if self._callback is not None:
                if self._callback(msg) is False:
                    self._callback = None
                continue
            if self._drops and inbox and (inbox.size + len(msg) > self.recv_budget
                                          or len(inbox) > inbox.high):
                self.dropped += 1
                continue
            if inbox is _NO_INBOX:
                inbox = self._inbox = _spare_inbox()  # Rule 11
            inbox.append(msg)
            inbox.size += len(msg)
        if not self._drops:
            self._check_budget()
        self.wake()

    def _check_budget(self) -> None:
        """Rule 7: pause reading when what is held is over the receive budget and the inbox
        holds a message (a lone message may complete up to message.maxSize), or when the
        inbox holds more than `Inbox.high` messages (empty ones cost memory too)."""
        inbox = self._inbox
        if inbox.paused or not inbox or self._drops or self.transport is None:
            return
        if len(inbox) > inbox.high or \
                inbox.size + getattr(self.framer, "pending_size", 0) > self.recv_budget:
            inbox.paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        """Rule 7: resume once the inbox is empty, or what is held fell under a quarter of
        the budget and the messages under `Inbox.low`."""
        inbox = self._inbox
        if inbox.paused and self.transport is not None and (
                not inbox or (len(inbox) < inbox.low and inbox.size
                              + getattr(self.framer, "pending_size", 0)
                              < Inbox.low_for(self.recv_budget))):
            inbox.paused = False
            self.transport.resume_reading()

    def _route_control(self, items: list[bytes]) -> list[bytes]:
        """Rule 6: control frames go to `on_control` (dropped without one), in order."""
        out: list[bytes] = []
        for m in items:
            if type(m) is Control:
                if self.on_control is not None:
                    try:
                        self.on_control(bytes(m))
                    except Exception as exc:
                        self.loop.call_exception_handler({
                            "message": "taps_post control handler failed", "exception": exc})
            else:
                out.append(m)
        return out

    def end_of_messages(self) -> None:
        """The peer will send no more (a FIN, a stream reset): receivers wake and see EOF."""
        self._eof = True
        self.wake()

    def wake(self) -> None:
        # Every receiver waiting wakes and re-checks: concurrent receive() calls each get a
        # message or keep waiting, none is forgotten.
        waiters = self._waiters
        if not waiters:
            return
        self._waiters = _NONE
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def set_callback(self, callback: Callable[[InMessage], Any] | None) -> None:
        self._callback = callback
        inbox = self._inbox
        if callback is not None and inbox and self._idle_handle is not None:
            self._active_at = self.loop.time()  # Rule 9: the application takes them now
        while callback is not None and inbox:
            if callback(inbox.take()) is False:
                self._callback = None
                break
        self._maybe_resume()

    async def receive(self) -> InMessage:
        while not self._inbox:
            if self._error is not None:
                raise ConnectionClosedError(f"{self.stack} carrier failed: {self._error}") \
                    from self._error
            if self._eof:
                raise ConnectionClosedError(f"the peer closed the {self.stack} carrier")
            waiter: asyncio.Future[None] = self.loop.create_future()
            if self._waiters is _NONE:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.pop_message()

    def try_receive(self) -> InMessage | None:
        """The next message if one is waiting (no coroutine, no await), else None."""
        return self.pop_message() if self._inbox else None

    def pop_message(self) -> InMessage:
        """The next inbox message (the caller checked there is one)."""
        inbox = self._inbox
        msg = inbox.popleft()
        inbox.size -= len(msg)
        if inbox.paused:
            self._maybe_resume()
        if not inbox:
            if self._idle_handle is not None:
                # Rule 9: idle counts from the last message taken (while more wait, the
                # inbox keeps the carrier alive: one timestamp per emptied inbox)
                self._active_at = self.loop.time()
            if not inbox.paused:  # Rule 11: nothing waits, hand it back
                self._inbox = _NO_INBOX
                if len(_SPARES) < _SPARES_MAX:
                    inbox.size = 0
                    _SPARES.append(inbox)
        return msg

    # ---- send side ------------------------------------------------------------------------

    def submit(self, message: OutMessage, on_sent: Any = None, on_acked: Any = None,
               on_expired: Any = None, on_send_error: Any = None, *,
               queued_at: float | None = None) -> None:
        """Queue a message; its lifetime counts from `queued_at` (when send_msg() was called,
        before any backpressure wait), else from now."""
        self._admit(message.data)
        start = self.loop.time() if queued_at is None else queued_at
        deadline = None if message.lifetime is None else start + message.lifetime
        self._queue.push(Pending(message, deadline, on_sent, on_acked, on_expired,
                                 on_send_error))
        if (message.niceness == 0 and not message.antecedents and on_sent is None
                and on_acked is None and on_expired is None and on_send_error is None):
            self._kick()  # nothing queued later can overtake (0, seq): writing now keeps order
        else:
            self._schedule_pump()  # callbacks run from the loop, never inside send_msg()

    def try_send_plain(self, data: bytes) -> bool:
        """`send(data)` with default properties, when no backpressure wait is due: True when
        taken (no OutMessage, no coroutine), False when the caller must take the slow path."""
        if self._plain_fast:
            if self._queue.queued_bytes > self.send_budget:
                return False
        elif not self.accepts_plain or self.backlog_bytes() > self.send_budget:
            return False
        self.submit_data(data)
        return True

    def submit_data(self, data: bytes) -> None:
        """Queue bytes with default properties: no OutMessage, no Pending, no heap entry."""
        self._admit(data)
        self._queue.push_data(data)
        if self._pump_handle is None:
            self._kick()

    def _admit(self, data: bytes) -> None:
        """What every send path checks before queueing: open, within message.maxSize, and
        carriable by the framer (a line framer refuses a message containing its delimiter to
        the sender, rather than losing it later inside the pump)."""
        t = self.transport
        if t is None or self._error is not None or self.closed.done() or t.is_closing():
            raise ConnectionClosedError(f"cannot send: the {self.stack} carrier is closed; "
                                        "`await carrier.activate()` re-establishes it")
        limit = min(self.max_size, self.framer.max_size)
        if len(data) > limit:
            raise MessageTooLargeError(f"message of {len(data)} bytes is over "
                                       f"message.maxSize ({limit})")
        if self._check_frame is not None:
            self._check_frame(data)

    def _kick(self) -> None:
        """Write now if the link is idle and this is the first write since the loop last ran
        one of our callbacks (request/response: no extra loop iteration per message);
        otherwise let the pump batch everything queued in this tick into one write."""
        if self._pump_handle is not None or self.transport is None:
            return
        if self._direct and not self._writing_paused:
            self._direct = False
            self.pump()
        else:
            self._pump_handle = self.loop.call_soon(self._pump_soon)

    def _pump_soon(self) -> None:
        self._direct = True
        self.pump()

    async def wait_writable(self) -> None:
        """Backpressure (Rule 7): return when the backlog is within the send budget (or
        when what is queued is all held by antecedents, which only the caller can
        release)."""
        while self.backlog_bytes() > self.send_budget and self.is_open:
            before = self.backlog_bytes()
            await self._wait_drained()
            if self.backlog_bytes() == before and not self._writing_paused:
                return

    def backlog_bytes(self) -> int:
        """Bytes sent by the application and not yet taken by the stack (Rule 7): our queue
        by default; a stack with its own send buffer adds what that holds unsent."""
        return self._queue.queued_bytes

    def notify_drained(self) -> None:
        """The stack's own buffer shrank (Rule 7): release waiting senders once the backlog
        is under a quarter of the send budget."""
        d = self._drained
        if d is not None and not d.done() and self.backlog_bytes() <= self.send_budget // 4:
            d.set_result(None)

    async def _wait_drained(self) -> None:
        # Shared by every waiting sender and close(): shielded, so one waiter cancelled (a
        # close past its linger, a caller's timeout) cancels only itself, never the others.
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        await asyncio.shield(self._drained)

    def _schedule_pump(self) -> None:
        if self._pump_handle is None and self.transport is not None:
            self._pump_handle = self.loop.call_soon(self.pump)

    def pump(self) -> None:
        self._pump_handle = None
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        stuck = False
        if self._writing_paused:
            for p in self._queue.expire(now):
                self.fire(p.on_expired, p.message)
        else:
            ready, expired = self._queue.pop_ready(now)
            for p in expired:
                self.fire(p.on_expired, p.message)
            if ready:
                self.write_ready(ready)
                if self._idle_handle is not None:
                    self._active_at = now  # Rule 9
            stuck = not ready and len(self._queue) > 0
        d = self._drained
        if d is not None and not d.done() and (
                stuck or self.backlog_bytes() <= self.send_budget // 4):
            d.set_result(None)
        deadline = self._queue.next_deadline()
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        if deadline is not None:
            self._expiry_handle = self.loop.call_at(deadline, self._schedule_pump)

    def write_ready(self, ready: list[Any]) -> None:
        raise NotImplementedError

    def track(self, end: int, p: Pending) -> None:
        self._ledger.track(end, p)

    def offsets(self) -> tuple[int, int | None] | None:
        """(bytes the stack has taken, bytes the peer acknowledged or None), or None when the
        transport is gone. Stream stacks override this with the kernel's view."""
        return None

    def send_progress(self) -> tuple[int, int | None] | None:
        """Rule 9: a value that changes while our bytes go out or are acknowledged (read
        once per idle period; None without a transport). `offsets()` here; a stream stack
        whose offsets skip the kernel's queue unless acknowledgements are wanted reads it."""
        return self.offsets()

    def check_progress(self) -> None:
        self._progress_handle = None
        offsets = self.offsets()
        if offsets is None:
            return
        events = self._ledger.advance(*offsets)
        if events:
            if self._idle_handle is not None:
                self._active_at = self.loop.time()  # Rule 9: sent or acknowledged
            self.fire_events(events)
        if (self._eof and self.watch_after_eof()) or self._ledger:
            self._progress_delay = 0.0005 if events else min(self._progress_delay * 2, 0.05)
            self._progress_handle = self.loop.call_later(self._progress_delay,
                                                         self.check_progress)

    def watch_after_eof(self) -> bool:
        """Rule 10: the peer sent EOF and we wrote since: did the connection end under us
        (then end the Transient here and return False)? True while what we wrote is not
        acknowledged yet, so `check_progress` keeps polling without messages to track."""
        return False

    def fire_events(self, events: list[Sent] | list[Acked] | list[Expired] | list[Failed]
                    | list[Sent | Acked] | list[Sent | Failed]) -> None:
        for ev in events:
            p = ev.pending
            t = type(ev)
            cb = (p.on_sent if t is Sent else p.on_acked if t is Acked else
                  p.on_send_error if t is Failed else p.on_expired)
            self.fire(cb, p.message)

    def fire(self, callback: Any, message: OutMessage) -> None:
        if callback is None:
            return
        try:
            callback(message)
        except Exception as exc:  # a user callback must not kill the transport
            self.loop.call_exception_handler({"message": "taps_post message callback failed",
                                              "exception": exc})

    # ---- flow control from asyncio --------------------------------------------------------

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._direct = True
        self._schedule_pump()
        if self._ledger and self._progress_handle is None:
            self.check_progress()
