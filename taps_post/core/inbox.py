"""The inbox: received messages not yet taken by the application, and when to stop reading.

Rule 1: sans-I/O: the inbox only counts; the stack adapter owns the socket and does the
pausing. A deque subclass, so the per-message path (append, popleft) stays in C.
Rule 2: the receive budget is in bytes (policy carrier.recvBudget): `size` is the payload
bytes of the messages held. Whoever appends or pops counts: the Transient adds a batch's
bytes once per batch beside its own appends (keeping the per-message path in C), `take()`
pops and counts one message; the Transient adds the partial message its framer holds and
pauses reading above the budget (stacks/transient.py). Holders that bound by message count
only (a Sink merging several sockets) use plain `append`/`popleft` and
`over_high()`/`under_low()`. The count bound (`high`, `low`) holds beside the byte budget: a
flood of empty messages costs memory too.
Rule 3: resuming waits until the level is under a quarter of the budget (`low_for`), so a
reader that pauses does not flap on every message taken.
"""

from __future__ import annotations

import collections

from .messages import InMessage

__all__ = ["RECV_BUDGET", "RECV_HIGH", "RECV_LOW", "Inbox"]

RECV_BUDGET = 4 * 1024 * 1024
"""carrier.recvBudget's default: received bytes buffered before reading pauses."""
RECV_HIGH = 4096
"""Messages buffered before reading pauses (count-bounded holders, Rule 2)."""
RECV_LOW = 1024
"""...and the level under which it resumes."""


class Inbox(collections.deque[InMessage]):
    """Messages in arrival order; `paused` mirrors whether the adapter stopped reading;
    `size` is the bytes they hold (Rule 2)."""

    __slots__ = ("high", "low", "paused", "size")

    def __init__(self, high: int = RECV_HIGH, low: int = RECV_LOW) -> None:
        super().__init__()
        self.high = high
        self.low = low
        self.paused = False
        self.size = 0
        """Payload bytes of the messages held (counted by whoever appends, and `take`: Rule 2)."""

    def take(self) -> InMessage:
        """The oldest message, its bytes taken off `size` (the caller checked there is one)."""
        msg = self.popleft()
        self.size -= len(msg)
        return msg

    def clear(self) -> None:
        super().clear()
        self.size = 0

    @staticmethod
    def low_for(budget: int) -> int:
        """The level under which reading paused at `budget` resumes (Rule 3)."""
        return budget // 4

    def over_high(self) -> bool:
        """Count-bounded holders: reading should pause now (and was not paused yet)."""
        return not self.paused and len(self) > self.high

    def under_low(self) -> bool:
        """Count-bounded holders: reading was paused and may resume now."""
        return self.paused and len(self) < self.low

