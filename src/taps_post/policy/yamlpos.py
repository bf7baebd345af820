"""YAML loading that remembers where every key and value came from.

Rule 1: this is the only module that imports the YAML parser. Everything above it gets plain
Python data plus a `Positions` map from a path (`("rules", 0, "set", "secure")`) to line and
column, so any later check can point at the exact spot.
Rule 2: duplicate mapping keys are errors here; YAML would silently keep the last one, which is
exactly the half-applied policy we promise never to produce.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import Diagnostic, InputError

__all__ = ["Path", "Positions", "load_yaml", "render_path"]

Path = tuple[str | int, ...]

try:  # libyaml is several times faster when present
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


@dataclass(slots=True)
class Positions:
    """Line/column (1-based) of each value and each mapping key, by path."""

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


def render_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_yaml(text: str, source: str) -> tuple[Any, Positions]:
    """Parse one YAML document; raise InputError with file:line:col on any syntax problem."""
    positions = Positions(source)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions
        _walk(node, (), positions)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise InputError([Diagnostic(source, f"invalid YAML: {problem}", line, col)]) from None
    except yaml.YAMLError as exc:
        raise InputError([Diagnostic(source, f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    return data, positions


def _walk(node: yaml.Node, path: Path, positions: Positions) -> None:
    positions.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Hashable, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            scalar = isinstance(key_node, yaml.ScalarNode)
            key: Hashable = key_node.value if scalar else id(key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (first defined on line {first})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
            child = (*path, str(key))
            positions.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, child, positions)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), positions)
