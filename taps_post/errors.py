"""Errors, split by whose fault they are (h11's local/remote split, for policies).

`InputError`: a policy, environment file or target the user wrote is malformed; it carries
one `Diagnostic` per problem, each rendered as `file:line:col: message`.
`PolicyError`: the inputs are valid but the policy forbids the request (`no_candidates`,
`policy_prohibited`); it carries the Decision that says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .decision.decision import Decision

__all__ = [
    "Attempt",
    "ConnectionClosedError",
    "Diagnostic",
    "EstablishmentError",
    "InputError",
    "MessageTooLargeError",
    "PolicyError",
    "TapsError",
]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in one input, located as precisely as the input allows."""

    source: str
    message: str
    line: int | None = None
    column: int | None = None
    path: str | None = None
    """Where in a document without positions (a Python dict): `rules[0].set.secure`."""

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}:{self.column or 1}: {self.message}"
        if self.path:
            return f"{self.source}: {self.path}: {self.message}"
        return f"{self.source}: {self.message}"


class TapsError(Exception):
    """Base of every error taps_post raises on purpose."""


class InputError(TapsError, ValueError):
    """A policy file, environment snapshot or target is malformed; nothing was applied."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class PolicyError(TapsError):
    """The policy in force leaves no way to serve the request."""

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message)
        self.decision = decision


class EstablishmentError(TapsError):
    """Every attempt of the race failed (the network's fault); `attempts` says how each did."""

    def __init__(self, message: str, decision: Decision | None,
                 attempts: Sequence[Attempt] = ()) -> None:
        lines = [message] + [f"  {a}" for a in attempts]
        super().__init__("\n".join(lines))
        self.decision = decision
        self.attempts = tuple(attempts)


class ConnectionClosedError(TapsError, ConnectionError):
    """The carrier is closed (by us, by the peer, or by a failure); see `__cause__`."""


class MessageTooLargeError(TapsError, ValueError):
    """A message is over `message.maxSize`, on send or on receive."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One racing attempt, for the EstablishmentError report."""

    rank: int
    interface: str
    stack: str
    remote: str
    outcome: str
    """won, failed, cancelled (a sibling won), or not_started."""
    error: str = ""
    elapsed_ms: float | None = None

    def __str__(self) -> str:
        took = f" after {self.elapsed_ms:.0f} ms" if self.elapsed_ms is not None else ""
        why = f": {self.error}" if self.error else ""
        where = f"#{self.rank} {self.interface} {self.stack} {self.remote}"
        return f"{where}: {self.outcome}{took}{why}"
