"""The inbox: received messages not yet taken by the application, and when to stop reading.

Rule 1: sans-I/O: the inbox only says when the reader should pause (`over_high()`) and resume
(`under_low()`); the stack adapter owns the socket and does the pausing. A deque subclass, so
the per-message path (append, popleft) stays in C.
Rule 2: the thresholds count messages today; byte budgets are a later refinement of the same
two questions, so callers never see the counting.
"""

from __future__ import annotations

import collections

from .messages import InMessage

__all__ = ["RECV_HIGH", "RECV_LOW", "Inbox"]

RECV_HIGH = 4096
"""Messages buffered before reading pauses."""
RECV_LOW = 1024
"""...and the level under which it resumes."""


class Inbox(collections.deque[InMessage]):
    """Messages in arrival order; `paused` mirrors whether the adapter stopped reading."""

    __slots__ = ("high", "low", "paused")

    def __init__(self, high: int = RECV_HIGH, low: int = RECV_LOW) -> None:
        super().__init__()
        self.high = high
        self.low = low
        self.paused = False

    def over_high(self) -> bool:
        """Reading should pause now (and was not paused yet)."""
        return not self.paused and len(self) > self.high

    def under_low(self) -> bool:
        """Reading was paused and may resume now."""
        return self.paused and len(self) < self.low
