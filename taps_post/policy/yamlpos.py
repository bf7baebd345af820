"""YAML loading that remembers where every key and value came from.

Rule 1: this is the only module that imports the YAML parser. Everything above it gets plain
Python data plus a `Positions` map from a path (`("rules", 0, "set", "secure")`) to line and
column, so any later check can point at the exact spot.
Rule 2: duplicate mapping keys are errors here; YAML would silently keep the last one, which is
exactly the half-applied policy we promise never to produce.
Rule 3: loading costs time linear in the document: the cyclic garbage collector is paused
while a large document's nodes and values are built (`_no_gc`), since they are acyclic (a
recursive alias is refused) and each collection would walk all of them again: 49,000
interfaces took twice as long with it running.
Rule 4: `top_level` answers what a document's top-level keys are without building it (it
reads libyaml's events: no node is composed, no value made, only the top level's scalars
resolved to tags), for a caller that must sort files before it loads each one once; whatever
it cannot answer exactly (not a mapping, invalid YAML, a merge, duplicate, non-scalar or
anchored key or an alias at the top, a second document) is None, and the full load then says
what is wrong.
Rule 5: the walk that records positions also builds the values, in one pass over libyaml's
nodes (PyYAML's constructor was a second pass, and the slower one: 1,000 rules load in
40 ms, not 61). Strings, plain sequences and plain mappings are built by the walk; every
other scalar (ints, floats, booleans, nulls, timestamps, binary) by PyYAML's constructor for
its tag, one node at a time, so the values are exactly `yaml.safe_load`'s
(tests/test_yamlpos.py checks that on every YAML file here and on generated documents).
Anything rarer (a merge key, `!!set`, `!!omap`, `!!pairs`, a key that is not a scalar) is
built by PyYAML's constructor as a whole, after the walk has checked it. An alias yields a
copy of its anchor's value, not the same object: policy data is read, never mutated, and
each copy counts against MAX_NODES like any value.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Hashable, Iterator
from typing import Any

import yaml

from ..diagnostics import Diagnostic, InputError
from .positions import Path, Positions, render_path

__all__ = ["Path", "Positions", "load_yaml", "render_path", "top_level"]


try:  # libyaml is several times faster when present
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader



MAX_NODES = 100_000
"""Values a document may expand to through aliases and merge keys: an alias bomb must fail
fast, not hang (counted while walking the composed nodes, before any Python data exists)."""

MAX_EVENTS = 3 * MAX_NODES + 4
"""YAML events (scalars, aliases, collection starts and ends) a document may hold. A value
costs at most three (its key, its start, its end), so no document within MAX_NODES is
refused by it. libyaml counts them in one C pass before anything is composed: a flat list of
a million items is refused for the cost of reading it, not the 300 MB its nodes would take."""


@contextlib.contextmanager
def _no_gc(size: int) -> Iterator[None]:
    """The collector paused for a document over 64 KiB (Rule 3); small ones do not bother.
    Re-enabled only if it was enabled, so nesting and other callers' choices are kept."""
    paused = size > 65536 and gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def load_yaml(text: str, source: str) -> tuple[Any, Positions]:
    """Parse one YAML document; raise InputError with file:line:col on any problem."""
    with _no_gc(len(text)):
        return _load_yaml(text, source)


def _load_yaml(text: str, source: str) -> tuple[Any, Positions]:
    positions = Positions(source)
    try:
        loader = _Loader(text)
    except UnicodeEncodeError as exc:  # a lone surrogate: libyaml takes only real Unicode
        at = _line_col(text, exc.start)
        raise InputError([Diagnostic(source, f"invalid YAML: character {text[exc.start]!r} is "
                                             "not allowed here (a lone surrogate is not "
                                             "Unicode text)", *at)]) from None
    try:
        if (events := _count_events(text)) is not None and events > MAX_EVENTS:
            raise InputError([Diagnostic(
                source, f"invalid YAML: the document holds more than {MAX_EVENTS} YAML nodes "
                        f"(a policy document may expand to at most {MAX_NODES} values)")])
        node = loader.get_single_node()
        if node is None:
            return None, positions
        walker = _Walker(positions, loader)
        data = walker.walk(node, ())
        if walker.exotic:  # a merge key, a !!set, a key that is not a scalar: PyYAML's way
            try:
                data = loader.construct_document(node)
            except yaml.YAMLError:
                raise
            except Exception as exc:  # e.g. `!!int x`: its constructors raise plain errors
                raise _locate_bad_scalar(loader, node, exc) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        ctx_mark = exc.context_mark
        if exc.problem and exc.context and ctx_mark is not None and mark is not None \
                and ctx_mark.line != mark.line:
            # "while parsing a flow sequence" started elsewhere: say where, it is the real cause
            problem += f" ({exc.context} started at line {ctx_mark.line + 1}, " \
                       f"column {ctx_mark.column + 1})"
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise InputError([Diagnostic(source, f"invalid YAML: {problem}", line, col)]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        what = f"character {exc.character!r}" if isinstance(exc.character, str) else "byte"
        raise InputError([Diagnostic(source, f"invalid YAML: {what} is not allowed here "
                                             f"({exc.reason})", line, col)]) from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise InputError([Diagnostic(source, f"invalid YAML: {message}")]) from None
    except RecursionError:
        raise InputError([Diagnostic(source, "invalid YAML: the document nests too deeply")]) \
            from None
    finally:
        loader.dispose()
    return data, positions


_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"


def top_level(text: str) -> tuple[frozenset[str], str | None] | None:
    """The top-level keys of a mapping document and its `layer:` value when that is a plain
    string, or None (Rule 4). No `_no_gc` (Rule 3): the events are dropped as they are read,
    so nothing accumulates for the collector to walk."""
    try:
        if (events := _count_events(text)) is not None and events > MAX_EVENTS:
            return None
        loader = _Loader(text)
        try:
            return _top_level(loader)
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeEncodeError, RecursionError, StopIteration):
        return None


def _top_level(loader: Any) -> tuple[frozenset[str], str | None] | None:
    """Rule 4 from the event stream: every event is read (so a syntax error anywhere is
    None), but nothing is composed and only the top level's scalars are resolved to tags."""
    events = iter(loader.get_event, None)  # None: the stream has ended

    def tag_of(event: Any) -> str:  # as PyYAML's composer resolves a scalar
        if event.tag is None or event.tag == "!":
            return str(loader.resolve(yaml.ScalarNode, event.value, event.implicit))
        return str(event.tag)

    def skip(event: Any) -> None:  # the rest of a collection whose start is `event`
        depth = 1
        while depth:
            nxt = next(events)
            if isinstance(nxt, yaml.CollectionStartEvent):
                depth += 1
            elif isinstance(nxt, yaml.CollectionEndEvent):
                depth -= 1

    if not isinstance(next(events), yaml.StreamStartEvent) or \
            not isinstance(next(events), yaml.DocumentStartEvent) or \
            not isinstance(next(events), yaml.MappingStartEvent):
        return None  # no document, or not a mapping (an alias: only a scalar can be one here)
    keys: set[str] = set()
    layer: str | None = None
    while not isinstance(key := next(events), yaml.MappingEndEvent):
        if not isinstance(key, yaml.ScalarEvent) or key.anchor is not None:
            return None  # an alias, an anchor others may name, or a complex key: a full load
        tag = tag_of(key)
        if tag == _MERGE:
            return None  # merged keys are known once values are built
        if tag == _STR and key.value in keys:
            return None  # a duplicate key: the load refuses the document (Rule 2)
        value = next(events)
        if isinstance(value, yaml.AliasEvent) or getattr(value, "anchor", None) is not None:
            return None
        if isinstance(value, yaml.CollectionStartEvent):
            skip(value)
        elif tag == _STR and key.value == "layer" and tag_of(value) == _STR:
            layer = value.value
        if tag == _STR:
            keys.add(key.value)
    if not isinstance(next(events), yaml.DocumentEndEvent) or \
            not isinstance(next(events), yaml.StreamEndEvent):
        return None  # a second document: the load refuses the file
    return frozenset(keys), layer


def _count_events(text: str) -> int | None:
    """How many YAML events `text` holds, up to just over MAX_EVENTS; None when it is too
    short to hold more than MAX_NODES (about one event per character at most), which spares
    every ordinary policy file the extra pass."""
    if len(text) <= MAX_NODES:
        return None
    counter = _Loader(text)
    try:
        raw_parse = getattr(counter, "raw_parse", None)
        if raw_parse is not None:  # libyaml: events counted in C, none built as objects
            return int(raw_parse())
        count = 0  # pragma: no cover (the pure-Python parser, when libyaml is missing)
        while counter.check_event():  # pragma: no cover
            counter.get_event()  # type: ignore[no-untyped-call]
            count += 1
            if count > MAX_EVENTS:
                break
        return count  # pragma: no cover
    finally:
        counter.dispose()


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _unreadable(node: yaml.ScalarNode, exc: Exception) -> yaml.MarkedYAMLError:
    """The error for a scalar its tag's constructor cannot read, at the scalar."""
    return yaml.MarkedYAMLError(
        problem=f"cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}: "
                f"{' '.join(str(exc).split()) or type(exc).__name__}",
        problem_mark=node.start_mark)


def _locate_bad_scalar(loader: Any, root: yaml.Node, exc: Exception) -> yaml.MarkedYAMLError:
    """The slow path, only on failure: find the scalar PyYAML could not construct."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            loader.constructed_objects = {}
            loader.recursive_objects = {}
            try:
                loader.construct_object(node, deep=True)
            except Exception as inner:
                return _unreadable(node, inner)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return yaml.MarkedYAMLError(problem=f"invalid value: {exc}", problem_mark=root.start_mark)


class _Walker:
    """Records positions and checks keys; refuses recursive aliases and alias bombs; and
    builds the document's value on the way (Rule 5), so no second pass over the nodes is made.

    Merge keys (`<<: *base`) are walked too, under the path `<<`, though nothing reports a
    position there: what they bring in is data like any other, and an alias bomb hidden in a
    merge would otherwise reach the constructor and pydantic uncounted."""

    def __init__(self, positions: Positions, loader: Any) -> None:
        self.positions = positions
        self.loader = loader
        self.count = 0
        self.ancestors: set[int] = set()
        self.exotic = False

    def walk(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise yaml.MarkedYAMLError(
                problem=f"the document expands to more than {MAX_NODES} nodes (aliases?)",
                problem_mark=node.start_mark)
        if id(node) in self.ancestors:
            raise yaml.MarkedYAMLError(problem="recursive alias: a node contains itself",
                                       problem_mark=node.start_mark)
        positions = self.positions
        positions.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return node.value if node.tag == _STR else self._scalar(node)
        self.ancestors.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    self.exotic = True
                return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
            return None  # pragma: no cover (the composer makes only the three node kinds)
        finally:
            self.ancestors.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        """PyYAML's value for a scalar of any tag but str (Rule 5); a tag it has no
        constructor for is its ConstructorError, a value it cannot read (`!!int x`) an error
        at the scalar."""
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            raise _unreadable(node, exc) from None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        if node.tag != _MAP:
            self.exotic = True
        seen: dict[Hashable, yaml.Node] = {}
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self.exotic = True
                self.walk(value_node, (*path, "<<"))
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
            self.positions.keys[child] = (key_node.start_mark.line + 1,
                                          key_node.start_mark.column + 1)
            value = self.walk(value_node, child)
            if not scalar:
                self.exotic = True  # PyYAML refuses it as unhashable, or builds it its way
            elif not self.exotic:
                out[key_node.value if key_node.tag == _STR else self._scalar(key_node)] = value
        return out
