"""The outbox: the send queue that orders messages, and the byte-offset ledger behind it.

Rule 1: sans-I/O and clock-free: every call takes `now`, and `pop_ready(now)` returns what to
send and what expired. A stack's pump does the writing and fires the callbacks, so the
ordering rules are testable without sockets and without sleeping.
Rule 2: a message leaves the queue exactly once: sent, expired, or drained (the transport
ended; the stack salvages or fails what was never written). Never two, never none.
Rule 3: the `Ledger` turns byte offsets into events. A stack records where each tracked
message ends in its byte stream (`track`), then reports how far the kernel (or aioquic) has
taken and acknowledged the stream (`advance`); it gets back `Sent`/`Acked` events in order,
each exactly once, and `fail()` ends whatever was still unacknowledged as `Failed` (after
`Sent` for what the kernel is known to have taken): every tracked message ends once.
Rule 4: sending order is the draft's priority: niceness first, then the earlier deadline
(no lifetime counts as +inf), then arrival ("priority increases as both niceness and lifetime
decrease"). Plain bytes (push_data) are niceness 0 without lifetime, so they merge by the same
key without a heap entry.
Rule 5: an idle carrier's outbox is small: `__slots__`, and the deques and heaps start as
the shared empty `_NONE` (a deque costs 760 bytes empty), the by-seq map as the read-only
`_NO_MAP`, each made on first use and kept from then on.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import types
from collections.abc import Iterable
from typing import Any

from ..errors import ArgumentError
from .events import Acked, Failed, Sent
from .messages import OutMessage, Pending

__all__ = ["Key", "Ledger", "Pending", "SendQueue", "send_key"]

_INF = float("inf")
_NONE: Any = ()
"""Rule 5: the empty queue an outbox starts with (read-only; replaced on first use)."""
_NO_MAP: Any = types.MappingProxyType({})
"""Rule 5: the empty by-seq map a SendQueue starts with (read-only; replaced on first use)."""

Key = tuple[int, float, int]
"""(niceness, deadline or +inf, arrival): smaller goes first (Rule 4)."""


def send_key(pending: Pending) -> Key:
    """Where `pending` sorts in the send order (Rule 4)."""
    d = pending.deadline
    return (pending.message.niceness, _INF if d is None else d, pending.arrival)


class SendQueue:
    """Orders messages by niceness, deadline, then arrival (Rule 4); holds a message until
    its antecedents left."""

    __slots__ = ("_arrivals", "_cascade_due", "_deadlines", "_heap", "_plain", "_queued",
                 "queued_bytes")

    def __init__(self) -> None:
        self._heap: list[tuple[Key, Pending]] = _NONE
        self._queued: dict[int, Pending] = _NO_MAP
        self._deadlines: list[tuple[float, int]] = _NONE
        self.queued_bytes = 0
        self._arrivals = itertools.count()
        self._cascade_due = False
        self._plain: collections.deque[tuple[int, bytes]] = _NONE
        """(arrival, data) queued by push_data(): niceness 0, no lifetime, no antecedents,
        no callbacks. FIFO, merged with the heap by (0, +inf, arrival) in pop_ready()."""

    def __len__(self) -> int:
        return len(self._queued) + len(self._plain)

    def push_data(self, data: bytes) -> None:
        """Queue bytes with default properties (no OutMessage, no Pending, no heap entry)."""
        try:
            self._plain.append((next(self._arrivals), data))
        except AttributeError:  # the first plain message (Rule 5)
            self._plain = collections.deque([(next(self._arrivals), data)])
        self.queued_bytes += len(data)

    def push(self, pending: Pending) -> None:
        msg = pending.message
        if msg.state != "new":
            raise ArgumentError(f"{msg!r} is already {msg.state}; a message is sent once")
        msg.state = "queued"
        if self._queued is _NO_MAP:  # the first message with properties (Rule 5)
            self._queued = {}
            self._heap = []
        self._queued[msg.seq] = pending
        pending.arrival = next(self._arrivals)
        heapq.heappush(self._heap, (send_key(pending), pending))
        self.queued_bytes += len(msg.data)
        if any(a.state == "expired" for a in msg.antecedents):
            self._cascade_due = True
        if pending.deadline is not None:
            if self._deadlines is _NONE:
                self._deadlines = []
            heapq.heappush(self._deadlines, (pending.deadline, msg.seq))

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._queued:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> list[Pending]:
        """Remove and return every message whose lifetime has passed, and their dependents."""
        out: list[Pending] = []
        if self._cascade_due:
            self._cascade_due = False
            out.extend(self._cascade())
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._deadlines)
            p = self._queued.get(seq)
            if p is not None:
                out.append(self._remove(p, expired=True))
        if out:
            out.extend(self._cascade())
        return out

    def pop_ready(self, now: float,
                  limit: int | None = None) -> tuple[list[Pending], list[Pending]]:
        """(messages to send now in order, messages that expired); both leave the queue.
        Ready items are Pending, or bytes for messages queued by push_data()."""
        expired = self.expire(now)
        plain = self._plain
        if plain and not self._heap and (limit is None or limit >= len(plain)):
            fast = [d for _s, d in plain]
            plain.clear()
            self.queued_bytes -= sum(map(len, fast))
            return fast, expired  # type: ignore[return-value]
        ready: list[Any] = []
        held: list[tuple[Key, Pending]] = []
        while (self._heap or plain) and (limit is None or len(ready) < limit):
            if plain and (not self._heap or (0, _INF, plain[0][0]) < self._heap[0][0]):
                _s, d = plain.popleft()
                self.queued_bytes -= len(d)
                ready.append(d)
                continue
            key, p = heapq.heappop(self._heap)
            if p.message.seq not in self._queued:
                continue
            if self._blocked(p.message):
                held.append((key, p))
                continue
            ready.append(self._remove(p, expired=False))
            if held:  # a sent antecedent may unblock a held message of lower niceness
                for item in held:
                    heapq.heappush(self._heap, item)
                held.clear()
        for item in held:
            heapq.heappush(self._heap, item)
        return ready, expired

    def drain_all(self, *, plain: bool = False) -> list[Pending]:
        """Everything still queued (the transport ended), in send order (Rule 4), each marked
        expired; the caller salvages them or reports them. `plain`: bytes queued by
        push_data() come back too, as new Pendings without callbacks (state new: only a
        salvage asks for them, and it resets every state to new anyway), so it can send them
        on the next transport (otherwise they are dropped: nobody awaits their fate)."""
        left = list(self._queued.values())
        for p in left:
            self._remove(p, expired=True)
        if plain:
            for s, d in self._plain:
                w = Pending(OutMessage(d), None)
                w.arrival = s
                left.append(w)
        out = sorted(left, key=send_key)
        if self._plain:
            self.queued_bytes -= sum(len(d) for _s, d in self._plain)
            self._plain.clear()
        if self._heap:
            self._heap.clear()
        if self._deadlines:
            self._deadlines.clear()
        return out

    def _blocked(self, msg: OutMessage) -> bool:
        return any(a.state != "sent" for a in msg.antecedents)

    def _remove(self, p: Pending, *, expired: bool) -> Pending:
        seq = p.message.seq
        del self._queued[seq]
        self.queued_bytes -= len(p.message.data)
        p.message.state = "expired" if expired else "sent"
        return p

    def _cascade(self) -> Iterable[Pending]:
        # A message whose antecedent expired can never be sent in order: it expires too.
        changed = True
        while changed:
            changed = False
            for p in list(self._queued.values()):
                if any(a.state == "expired" for a in p.message.antecedents):
                    yield self._remove(p, expired=True)
                    changed = True


class Ledger:
    """Tracked messages by the stream offset of their last byte, until sent and acknowledged.

    Only messages with an `on_sent`, `on_acked` or `on_send_error` callback are tracked, so
    the bulk path of plain `send()` never touches it. A message stays after `Sent` while it
    has an `on_acked` or `on_send_error` to fire: its end is the acknowledgement, or `Failed`
    when the transport dies first.
    """

    __slots__ = ("_acks_wanted", "_unacked", "_unsent")

    def __init__(self) -> None:
        self._unsent: collections.deque[tuple[int, Pending]] = _NONE
        self._unacked: collections.deque[tuple[int, Pending]] = _NONE
        self._acks_wanted = 0

    def __bool__(self) -> bool:
        return bool(self._unsent or self._unacked)

    @property
    def wants_acks(self) -> bool:
        """Some tracked message waits for its acknowledgement (`on_acked`, or `on_send_error`
        which must not fire once the peer has it): only then is the (costly) acknowledged
        offset worth asking the kernel for."""
        return self._acks_wanted > 0

    def track(self, end: int, p: Pending) -> bool:
        """Remember `p` as ending at stream offset `end`; False when it has no callback."""
        if p.on_sent is None and p.on_acked is None and p.on_send_error is None:
            return False
        try:
            self._unsent.append((end, p))
        except AttributeError:  # the first tracked message (Rule 5)
            self._unsent = collections.deque([(end, p)])
        if p.on_acked is not None or p.on_send_error is not None:
            self._acks_wanted += 1
        return True

    def advance(self, sent: int, acked: int | None) -> list[Sent | Acked]:
        """Events for every tracked message now wholly taken (offset <= `sent`) and wholly
        acknowledged (offset <= `acked`; None when the stack cannot tell yet)."""
        out: list[Sent | Acked] = []
        unsent, unacked = self._unsent, self._unacked
        while unsent and unsent[0][0] <= sent:
            end, p = unsent.popleft()
            out.append(Sent(p))
            if p.on_acked is not None or p.on_send_error is not None:
                if unacked is _NONE:
                    unacked = self._unacked = collections.deque()
                unacked.append((end, p))
        while unacked and acked is not None and unacked[0][0] <= acked:
            out.append(Acked(unacked.popleft()[1]))
            self._acks_wanted -= 1
        return out

    def fail(self, error: BaseException | None = None,
             sent: int | None = None) -> list[Sent | Failed]:
        """The transport died: every tracked message not yet acknowledged ends as `Failed`
        (RFC 9622 SendError), preceded by `Sent` when `sent` (the kernel's final taken
        offset, None: unknown) shows it was wholly taken. Nothing is tracked afterwards."""
        out: list[Sent | Failed] = [Failed(p, error) for _end, p in self._unacked]
        for end, p in self._unsent:  # later in the stream than every unacknowledged one
            if sent is not None and end <= sent:
                out.append(Sent(p))
            out.append(Failed(p, error))
        if self._unsent:
            self._unsent.clear()
        if self._unacked:
            self._unacked.clear()
        self._acks_wanted = 0
        return out
