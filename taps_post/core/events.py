"""Events the transport core returns: small frozen dataclasses, as aioquic's events are.

Rule 1: the core never calls back; it returns these, and the stack adapter that owns the
socket fires the application's callbacks from them, on the event loop, one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Pending

__all__ = ["Acked", "Expired", "MessageEvent", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """The message's last byte was taken by the kernel (or the QUIC stack)."""

    pending: Pending


@dataclass(frozen=True, slots=True)
class Acked:
    """The peer acknowledged the message's last byte."""

    pending: Pending


@dataclass(frozen=True, slots=True)
class Expired:
    """The message will never be sent: its lifetime passed, an antecedent expired, or the
    transport closed before the message was handed over."""

    pending: Pending


MessageEvent = Sent | Acked | Expired
