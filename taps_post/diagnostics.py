"""The bottom of the package: the error base and located diagnostics every layer reports with.

Rule 1: this module imports nothing of taps_post, so every layer (policy, decision, transport
core, stacks, runtime) can raise `InputError` without an import circle. The full catalogue of
errors, split by who is at fault, is `taps_post.errors` (docs/architecture.md, "Errors").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Diagnostic", "InputError", "SystemPolicyError", "TapsError"]


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
    """A policy file, environment snapshot or target is malformed; nothing was applied.

    The user's fault: it carries one `Diagnostic` per problem, each `file:line:col: message`.
    """

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class SystemPolicyError(InputError):
    """The system layer (the administrator's policy) cannot be loaded: nothing may be decided.

    An InputError like any other to the command line (exit 2, one line per problem), but the
    runtime must not treat it as the application's mistake and carry on without the layer:
    dropping what the administrator wrote would fail open. The runtime turns it into a
    PolicyError (taps_post.errors sits above the policy layer, which cannot raise that)."""
