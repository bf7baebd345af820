"""Messages: what applications send (OutMessage) and receive (InMessage).

Rule 1: an OutMessage carries the Post Sockets message properties (niceness, lifetime,
antecedents, idempotent, immediate, reliable) and its own state (new, queued, sent, expired),
so a message is sent at most once, on one carrier, whatever the application does with it.
Rule 2: an InMessage *is* the received bytes (a bytes subclass), with where and how it
arrived as attributes: code that only wants the bytes never unwraps anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError

__all__ = ["Callback", "InMessage", "OutMessage", "Pending"]

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
            raise ArgumentError(f"OutMessage data must be bytes, not {type(self.data).__name__}")
        if self.niceness < 0:
            raise ArgumentError("niceness must be >= 0 (0 is the most urgent)")
        if self.lifetime is not None and self.lifetime < 0:
            raise ArgumentError("lifetime must be >= 0 seconds")
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
    on_send_error: Callback = None
    """RFC 9622 SendError: refused by the stack, or unacknowledged when the connection ended."""

    arrival: int = 0
    """Order of queueing on this carrier: the FIFO tie-break within one niceness."""
