"""The outbox: the send queue that orders messages, and the byte-offset ledger behind it.

Rule 1: sans-I/O and clock-free: every call takes `now`, and `pop_ready(now)` returns what to
send and what expired. A stack's pump does the writing and fires the callbacks, so the
ordering rules are testable without sockets and without sleeping.
Rule 2: a message leaves the queue exactly once: sent, or expired. Never both, never neither.
Rule 3: the `Ledger` turns byte offsets into events. A stack records where each tracked
message ends in its byte stream (`track`), then reports how far the kernel (or aioquic) has
taken and acknowledged the stream (`advance`); it gets back `Sent`/`Acked` events in order,
each exactly once, and `fail()` ends whatever was still in flight as `Expired`.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterable
from typing import Any

from ..errors import ArgumentError
from .events import Acked, Expired, Sent
from .messages import OutMessage, Pending

__all__ = ["Ledger", "Pending", "SendQueue"]

class SendQueue:
    """Orders messages by niceness then arrival; holds a message until its antecedents left."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, int], Pending]] = []
        self._queued: dict[int, Pending] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.queued_bytes = 0
        self._arrivals = itertools.count()
        self._cascade_due = False
        self._plain: collections.deque[tuple[int, bytes]] = collections.deque()
        """(arrival, data) queued by push_data(): niceness 0, no lifetime, no antecedents,
        no callbacks. FIFO, merged with the heap by (niceness, arrival) in pop_ready()."""

    def __len__(self) -> int:
        return len(self._queued) + len(self._plain)

    def push_data(self, data: bytes) -> None:
        """Queue bytes with default properties (no OutMessage, no Pending, no heap entry)."""
        self._plain.append((next(self._arrivals), data))
        self.queued_bytes += len(data)

    def push(self, pending: Pending) -> None:
        msg = pending.message
        if msg.state != "new":
            raise ArgumentError(f"{msg!r} is already {msg.state}; a message is sent once")
        msg.state = "queued"
        self._queued[msg.seq] = pending
        pending.arrival = next(self._arrivals)
        heapq.heappush(self._heap, (pending.sort_key(), pending))
        self.queued_bytes += len(msg.data)
        if any(a.state == "expired" for a in msg.antecedents):
            self._cascade_due = True
        if pending.deadline is not None:
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
        held: list[tuple[tuple[int, int], Pending]] = []
        while (self._heap or plain) and (limit is None or len(ready) < limit):
            if plain and (not self._heap or (0, plain[0][0]) < self._heap[0][0]):
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

    def drain_all(self) -> list[Pending]:
        """Everything still queued (the carrier is closing); the caller reports them expired."""
        out = list(self._queued.values())
        for p in out:
            self._remove(p, expired=True)
        self.queued_bytes -= sum(len(d) for _s, d in self._plain)
        self._plain.clear()
        self._heap.clear()
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

    Only messages with an `on_sent` or `on_acked` callback are tracked, so the bulk path of
    plain `send()` never touches it.
    """

    __slots__ = ("_acks_wanted", "_unacked", "_unsent")

    def __init__(self) -> None:
        self._unsent: collections.deque[tuple[int, Pending]] = collections.deque()
        self._unacked: collections.deque[tuple[int, Pending]] = collections.deque()
        self._acks_wanted = 0

    def __bool__(self) -> bool:
        return bool(self._unsent or self._unacked)

    @property
    def wants_acks(self) -> bool:
        """Some tracked message waits for `on_acked`: only then is the (costly) acknowledged
        offset worth asking the kernel for."""
        return self._acks_wanted > 0

    def track(self, end: int, p: Pending) -> bool:
        """Remember `p` as ending at stream offset `end`; False when it has no callback."""
        if p.on_sent is None and p.on_acked is None:
            return False
        self._unsent.append((end, p))
        if p.on_acked is not None:
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
            if p.on_acked is not None:
                unacked.append((end, p))
        while unacked and acked is not None and unacked[0][0] <= acked:
            out.append(Acked(unacked.popleft()[1]))
            self._acks_wanted -= 1
        return out

    def fail(self) -> list[Expired]:
        """The transport died: messages handed over but not known sent end as expired;
        messages known sent but not acknowledged get nothing more."""
        out = [Expired(p) for _end, p in self._unsent]
        self._unsent.clear()
        self._unacked.clear()
        self._acks_wanted = 0
        return out
