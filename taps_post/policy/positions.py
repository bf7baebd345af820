"""Where each value of a parsed document was written: the paths and `file:line:col` that
errors name.

Rule 1: this module does not import YAML. Documents given as Python data (a policy built in
code, an environment as a dict) carry empty Positions, and a process that only connects never
loads a YAML parser (policy/yamlpos.py fills Positions when a file is read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..diagnostics import Diagnostic

__all__ = ["Path", "Positions", "render_path"]

Path = tuple[str | int, ...]


@dataclass(slots=True)
class Positions:
    """Line/column (1-based) of each value and each mapping key, by path: kept beside the
    data because validation errors name paths, and people need `file:line:col`."""

    source: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        """The position of `path`, or of its nearest ancestor that has one."""
        table = self.keys if key else self.values
        probe = tuple(path)
        if key and probe in self.keys:
            return self.keys[probe]
        while True:
            if probe in self.values:
                return self.values[probe]
            if probe in table:
                return table[probe]
            if not probe:
                return (None, None)
            probe = probe[:-1]

    def diagnostic(self, path: Path, message: str, *, key: bool = False) -> Diagnostic:
        if not self.values and not self.keys:
            return Diagnostic(self.source, message, path=render_path(path) or None)
        line, col = self.locate(path, key=key)
        return Diagnostic(self.source, message, line=line, column=col)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")


def render_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += ("." if out else "") + str(part)
        else:  # a key with spaces, quotes or newlines stays on one readable line
            out += f"[{str(part)!r}]"
    return out
