"""Every error taps_post raises on purpose, split by who is at fault (h11's local/remote split).

| class                 | whose fault            | carries                                   |
|-----------------------|------------------------|-------------------------------------------|
| InputError            | the user's input       | `diagnostics`, each `file:line:col: ...`  |
| UsageError            | the calling code       | a message saying what to do instead       |
| PolicyError           | the policy in force    | the `decision` that says why              |
| EstablishmentError    | the network            | `attempts`, each with `kind` and `error`  |
| RemoteProtocolError   | the peer               | what the peer sent that cannot be framed  |
| ConnectionClosedError | nobody (state)         | `__cause__`: why the carrier closed       |
| IdleTimeoutError      | the peer (silent)      | `timeout`: carrier.idleTimeout in seconds |
| PathLostError         | the network (moved)    | `interface`, `address`: the path that went |
| MptcpRefusedError     | the host (no MPTCP)    | `errno`: the kernel's (an OSError)        |
| DaneError             | the peer (DNS says no) | `name`: the TLSA name, `reason`: why      |

Rule 1: misuse errors keep the built-in class they always had as a second base (UsageError is
a RuntimeError, ArgumentError a ValueError and TypeError), so `except RuntimeError` code
written against earlier releases still catches them.
Rule 2: an Attempt keeps the exception object and a machine-readable `kind`: callers branch on
`kind`, never on message text.
Rule 3: importing this module imports no `ssl` (`taps-post policy explain` imports it and
must stay light, tests/test_architecture.py): DaneError, an ssl.SSLCertVerificationError so
racing classifies it tls_verify, is made on first use (the module's `__getattr__`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .diagnostics import Diagnostic, InputError, SystemPolicyError, TapsError

if TYPE_CHECKING:
    from .decision.decision import Decision

__all__ = [
    "ArgumentError",
    "Attempt",
    "ConnectionClosedError",
    "DaneError",
    "DeframingError",
    "Diagnostic",
    "EstablishmentError",
    "FailureKind",
    "ForkRefusedError",
    "FrameTooLargeError",
    "IdleTimeoutError",
    "InputError",
    "MessageTooLargeError",
    "MptcpRefusedError",
    "PathLostError",
    "PolicyError",
    "RemoteProtocolError",
    "ResolutionError",
    "SystemPolicyError",
    "TapsError",
    "UsageError",
]


class UsageError(TapsError, RuntimeError):
    """The application called the API in a way it does not allow (receive on a Source,
    as_stream() after the first message, fork on an accepted TCP carrier, ...)."""


class ArgumentError(UsageError, ValueError, TypeError):
    """An argument is out of range or of the wrong type (niceness < 0, data not bytes)."""


class PolicyError(TapsError):
    """The policy in force leaves no way to serve the request (`decision` says why), or the
    system policy cannot be loaded at all (`decision` is None, `__cause__` says what)."""

    def __init__(self, message: str, decision: Decision | None) -> None:
        super().__init__(message)
        self.decision = decision


class RemoteProtocolError(TapsError):
    """The peer sent something this carrier cannot turn into messages (the peer's fault)."""


class MessageTooLargeError(TapsError, ValueError):
    """A message is over `message.maxSize`, on send or on receive."""


class DeframingError(RemoteProtocolError, ValueError):
    """The bytes on a stream are not a valid sequence of frames (malformed, cut short)."""


class FrameTooLargeError(DeframingError, MessageTooLargeError):
    """The peer announced or sent a message over `message.maxSize`: refused before buffering."""


class ConnectionClosedError(TapsError, ConnectionError):
    """The carrier is closed (by us, by the peer, or by a failure); see `__cause__`."""


class IdleTimeoutError(ConnectionClosedError):
    """The carrier was closed because no whole message went either way (taken by the
    application, received, sent or acknowledged) and no byte of ours went out for
    `carrier.idleTimeout`: a peer that trickles bytes of a message it never finishes, or that
    went silent, is cut off. `timeout` is the bound in seconds (pickled with the error)."""

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[IdleTimeoutError], tuple[str, float]]:
        # BaseException pickles as cls(*self.args): args holds the message only
        return (type(self), (self.args[0] if self.args else "", self.timeout))


class PathLostError(ConnectionClosedError):
    """The carrier's path went away under it (its interface went down or its local address
    was removed, as the path monitor reported) and its connection could neither keep going
    on another subflow nor migrate: the connection was ended on purpose instead of waiting
    for TCP to time out. Messages the peer may or may not have received end with
    on_send_error carrying this error; the carrier re-activates on another path when policy
    carrier.reactivate allows. `interface` and `address` name what went (None: unknown);
    both are pickled with the error."""

    def __init__(self, message: str, interface: str | None = None,
                 address: str | None = None) -> None:
        super().__init__(message)
        self.interface = interface
        self.address = address

    def __reduce__(self) -> tuple[type[PathLostError], tuple[str, str | None, str | None]]:
        return (type(self), (self.args[0] if self.args else "", self.interface,
                             self.address))


class MptcpRefusedError(TapsError, OSError):
    """This kernel or network namespace refuses MPTCP sockets (socket(IPPROTO_MPTCP) failed
    with EPROTONOSUPPORT, ENOPROTOOPT or EINVAL; stacks/tcp.py raises it). It stays an
    OSError carrying the kernel's errno (ENOPROTOOPT when net.mptcp.enabled=0), so racing
    classifies the attempt `unsupported` like any socket refusal and `except OSError` code
    still catches it; it pickles as OSError does (errno and message are its args)."""


DANE_REASONS = ("no_tlsa", "not_validated", "no_usable_record", "mismatch")
"""Why DANE refused a peer (DaneError.reason): no TLSA answer (or a validated denial) under
require; an answer without DNSSEC validation under require; only records this library does
not use (PKIX-TA/EE, unknown selectors, or what the stack cannot see); a validated, usable
set the peer's certificates do not match (under opportunistic too)."""


def _make_dane_error() -> type[Exception]:
    import ssl

    class DaneError(TapsError, ssl.SSLCertVerificationError):
        """The peer's certificate fails DANE (RFC 6698, RFC 7671; taps_post/stacks/dane.py):
        it matches none of the validated TLSA records of `name`, or policy security.dane
        `require` found no validated usable records there. `reason` is one of DANE_REASONS.
        An ssl.SSLCertVerificationError, so racing classifies the attempt tls_verify; it
        pickles with its name and reason."""

        def __init__(self, message: str, name: str = "", reason: str = "mismatch") -> None:
            super().__init__(message)
            self.strerror = message  # what SSLError's str() shows (not the args tuple)
            self.verify_message = message
            self.name = name
            self.reason = reason

        def __reduce__(self) -> Any:
            return (type(self), (self.strerror, self.name, self.reason))

    DaneError.__module__ = __name__
    DaneError.__qualname__ = "DaneError"
    return DaneError


if TYPE_CHECKING:
    import ssl

    class DaneError(TapsError, ssl.SSLCertVerificationError):
        name: str
        reason: str

        def __init__(self, message: str, name: str = "", reason: str = "mismatch") -> None:
            ...


def __getattr__(name: str) -> Any:
    """DaneError, made on first use (Rule 3)."""
    if name == "DaneError":
        cls = _make_dane_error()
        globals()["DaneError"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class FailureKind(enum.StrEnum):
    """Why an attempt failed, for code that must branch on it (and for explain's output)."""

    REFUSED = "refused"
    """The peer's host answered that nobody listens there (RST, ICMP port unreachable)."""
    TIMEOUT = "timeout"
    """No answer in time (the attempt's own timeout or the race's connTimeout)."""
    UNREACHABLE = "unreachable"
    """No route, network or host unreachable, address not available on this host."""
    TLS_VERIFY = "tls_verify"
    """The peer's certificate failed verification or matched no pin."""
    TLS_HANDSHAKE = "tls_handshake"
    """The TLS or QUIC handshake failed for another reason (versions, ALPN, alerts)."""
    RESET = "reset"
    """The connection was reset or closed by the peer during establishment."""
    UNSUPPORTED = "unsupported"
    """This machine or build cannot run the stack (no MPTCP in the kernel, no module)."""
    POLICY = "policy"
    """The attempt could not honour the policy on this machine (the kernel refused to hold
    the socket to its interface and the route would leave by another one)."""
    PROTOCOL = "protocol"
    """The peer spoke something we cannot understand during establishment."""
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One racing attempt, as `carrier.attempts` and EstablishmentError report it."""

    rank: int
    interface: str
    stack: str
    remote: str
    outcome: str
    """won, failed, cancelled (a sibling won), or not_started."""
    error: str = ""
    elapsed_ms: float | None = None
    kind: FailureKind | None = None
    """Set when `outcome == "failed"`: why, as data."""
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception the attempt ended with (None unless it failed with one)."""

    def __str__(self) -> str:
        took = f" after {self.elapsed_ms:.0f} ms" if self.elapsed_ms is not None else ""
        kind = f" [{self.kind}]" if self.kind is not None else ""
        why = f": {self.error}" if self.error else ""
        where = f"#{self.rank} {self.interface} {self.stack} {self.remote}"
        return f"{where}: {self.outcome}{kind}{took}{why}"

    def to_dict(self) -> dict[str, object]:
        return {"rank": self.rank, "interface": self.interface, "stack": self.stack,
                "remote": self.remote, "outcome": self.outcome,
                "kind": None if self.kind is None else str(self.kind), "error": self.error,
                "elapsed_ms": self.elapsed_ms}


class EstablishmentError(TapsError):
    """Every attempt of the race failed (the network's fault); `attempts` says how each did."""

    def __init__(self, message: str, decision: Decision | None,
                 attempts: Sequence[Attempt] = ()) -> None:
        lines = [message] + [f"  {a}" for a in attempts]
        super().__init__("\n".join(lines))
        self.decision = decision
        self.attempts = tuple(attempts)


class ResolutionError(EstablishmentError):
    """A Remote's name has no address (the resolver answered nothing, or failed): the network's
    fault, named in the message; `name` is the name that did not resolve."""

    def __init__(self, name: str, why: str = "no address") -> None:
        super().__init__(f"cannot resolve {name!r}: {why}", None)
        self.name = name


class ForkRefusedError(EstablishmentError):
    """fork() on a stream stack needs a peer that understands fork requests (another
    taps_post endpoint); this one did not answer as one. Policy `carrier.forkParallel: true`
    opens a plain parallel connection instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)
