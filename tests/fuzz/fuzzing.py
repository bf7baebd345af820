"""What each fuzz target may and may not do, and how long it runs.

`fuzz(n)`: the target's settings, n examples under `make test`, n x TAPS_FUZZ_FACTOR under
`make fuzz` (TAPS_FUZZ=1). `located(diag)`: the `file:line:col: what` contract every bad
input error keeps: one printable line, starting with the file it is about.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import settings

from taps_post.diagnostics import Diagnostic, InputError

FUZZ = os.environ.get("TAPS_FUZZ", "") not in ("", "0")
FACTOR = int(os.environ.get("TAPS_FUZZ_FACTOR", "100")) if FUZZ else 1
PROFILE = "taps-fuzz" if FUZZ else "taps-ci"

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(examples: int) -> Callable[[F], F]:
    """The settings of a target that runs `examples` times under `make test`."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * FACTOR)


_LOCATED = re.compile(r"(?P<source>.+?):(?P<line>\d+):(?P<col>\d+): (?P<what>\S.*)")


def check_diagnostic(diag: Diagnostic, source: str, text: str | None = None) -> None:
    """One line, printable, naming `source` first; `file:line:col: what` when it has a line,
    the line and column inside `text` when the text is known."""
    rendered = str(diag)
    assert rendered.isprintable(), f"not one printable line: {rendered!r}"
    assert rendered.startswith(source), rendered
    assert diag.message.strip(), rendered
    if diag.line is not None:
        m = _LOCATED.fullmatch(rendered)
        assert m and m["source"] == source, rendered
        assert diag.line >= 1 and (diag.column is None or diag.column >= 1), rendered
        if text is not None:
            # YAML breaks lines at NEL and the Unicode separators too; the parser may point
            # just past the last line
            lines = sum(text.count(b) for b in ("\n", "\r", "\x85", "\u2028", "\u2029")) + 2
            assert diag.line <= lines, rendered


def check_input_error(exc: InputError, source: str, text: str | None = None) -> None:
    assert exc.diagnostics, "an InputError with no diagnostic"
    for diag in exc.diagnostics:
        check_diagnostic(diag, source, text)
