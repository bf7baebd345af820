"""Messages and the send queue that orders them (niceness, lifetime, antecedents).

Rule 1: the queue is sans-I/O and clock-free: every call takes `now`, and `pop_ready(now)`
returns what to send and what expired. The carrier's pump does the writing and fires the
callbacks, so the ordering rules are testable without sockets and without sleeping.
Rule 2: a message leaves the queue exactly once: sent, or expired. Never both, never neither.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InMessage", "OutMessage", "SendQueue"]

_seq = itertools.count()


@dataclass(eq=False, slots=True)
class OutMessage:
    """A message to send, with the Post Sockets message properties."""

    data: bytes
    niceness: int = 0
    """0 is sent first; larger values yield to smaller ones (draft-trammell-taps-post-sockets)."""
    lifetime: float | None = None
    """Seconds from `send_msg()`; a message not sent by then is dropped and `on_expired` fires."""
    antecedents: Sequence[OutMessage] = ()
    """Messages that must be sent before this one."""
    idempotent: bool = False
    """Safe to replay: may ride in 0-RTT (TCP Fast Open, QUIC early data)."""
    immediate: bool = False
    """Send at once in its own packet where the stack allows (own write with TCP_NODELAY)."""
    reliable: bool = True
    seq: int = field(default_factory=lambda: next(_seq))
    state: str = field(default="new", init=False, repr=False)
    """new, queued, sent or expired; a message is sent at most once, on one carrier."""

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise TypeError(f"OutMessage data must be bytes, not {type(self.data).__name__}")
        if self.niceness < 0:
            raise ValueError("niceness must be >= 0 (0 is the most urgent)")
        if self.lifetime is not None and self.lifetime < 0:
            raise ValueError("lifetime must be >= 0 seconds")
        self.data = bytes(self.data)

    def __repr__(self) -> str:
        return (f"<OutMessage #{self.seq} {len(self.data)} bytes niceness={self.niceness}"
                f"{' idempotent' if self.idempotent else ''}"
                f"{' immediate' if self.immediate else ''}>")


class InMessage(bytes):
    """A received message: the bytes themselves, plus where and how they arrived."""

    carrier: Any = None
    remote: tuple[str, int] | None = None
    early: bool = False
    """Arrived as 0-RTT data (before the handshake completed)."""

    def __new__(cls, data: Any, *, carrier: Any = None, remote: tuple[str, int] | None = None,
                early: bool = False) -> InMessage:
        # Class attributes hold the defaults: a stream message sets one attribute, not three.
        self = super().__new__(cls, data)
        if carrier is not None:
            self.carrier = carrier
        if remote is not None:
            self.remote = remote
        if early:
            self.early = early
        return self


Callback = Callable[[OutMessage], Any] | None


@dataclass(eq=False, slots=True)
class Pending:
    """A queued message with its deadline and callbacks."""

    message: OutMessage
    deadline: float | None
    on_sent: Callback = None
    on_acked: Callback = None
    on_expired: Callback = None

    arrival: int = 0
    """Order of queueing on this carrier: the FIFO tie-break within one niceness."""

    def sort_key(self) -> tuple[int, int]:
        return (self.message.niceness, self.arrival)


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
            raise ValueError(f"{msg!r} is already {msg.state}; a message is sent once")
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
