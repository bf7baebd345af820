"""Events the transport core returns: small frozen dataclasses, as aioquic's events are.

Rule 1: the core never calls back; it returns these, and the stack adapter that owns the
socket fires the application's callbacks from them, on the event loop, one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Pending

__all__ = ["Acked", "CarrierEvent", "Closed", "Dormant", "Expired", "Failed", "MessageEvent",
           "PathChange", "Ready", "Sent", "SoftError"]


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


@dataclass(frozen=True, slots=True)
class Failed:
    """RFC 9622 SendError: the stack refused the message (EMSGSIZE on a datagram), or the
    connection ended before the peer acknowledged it. The message may or may not have
    reached the peer; it will not be sent again by this Transient."""

    pending: Pending
    error: BaseException | None = None


MessageEvent = Sent | Acked | Expired | Failed


# ---- carrier events (RFC 9622 section 8.3 / 10; the draft's Ready, Dormant, Closed) --------
# What a Carrier reports about itself, through `carrier.events()` and `carrier.on_event()`.
# Paths are `taps_post.Path` objects; typed `object` here because the core sits below the
# runtime that defines them.


@dataclass(frozen=True, slots=True)
class Ready:
    """The carrier became active on a Transient (first activation or re-activation)."""

    stack: str
    local_address: tuple[str, int] | None
    remote_address: tuple[str, int] | None
    interface: str | None
    path: object = None
    reactivated: bool = False


@dataclass(frozen=True, slots=True)
class Dormant:
    """The carrier's Transient ended and the carrier can be activated again (by the next
    send, or `activate()`); `error` says why it ended (None: the peer closed cleanly)."""

    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """The carrier is closed for good: by the application, or by the peer or an error on a
    carrier that cannot re-activate (`error` None: a clean close)."""

    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class SoftError:
    """RFC 9622 SoftError: an ICMP error (unreachable, too big) arrived; the carrier lives."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class PathChange:
    """The carrier moved to another path: a re-activation on another interface, local IP or
    remote address (`Path.route`; a new local port alone is no new path), or multipath
    changes."""

    old: object
    new: object


CarrierEvent = Ready | Dormant | Closed | SoftError | PathChange
