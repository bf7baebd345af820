"""`policy validate`: load files as their own `layer:` says, and lint what loading cannot see.

Rule 1: errors (the file cannot be applied) and warnings (it applies, but probably not as its
author meant) are separate lists; only errors change the exit status.
Rule 2: the lint reasons about `when` conservatively: "covers" must be certain before a rule is
called dead, "overlaps" may be assumed when it cannot be ruled out.
Rule 3: environment snapshots are recognised here but checked by the loader the caller passes
in: snapshots belong to the decision layer, which the policy layer never imports.
Rule 4: the lint's answer is the pairwise definition's (every statement against every other of
its key), word for word and in the same order; indexes only choose which pairs to try, and
leave out only pairs the definition would reject. A dead rule names the first beater in file
order, so every index answers "the first" rather than "any". This keeps `validate` about as
fast as loading on big policies (bench/validate.py), where trying every pair took minutes.
"""

from __future__ import annotations

import bisect
import fnmatch
import ipaddress
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..diagnostics import Diagnostic, InputError
from .load import (
    LAYERS,
    SUFFIXES,
    LoadedRule,
    PolicyFile,
    Statement,
    load_layer,
    read_policy_text,
)
from .registry import REGISTRY, key_family
from .resolve import Verdict, judge, show_value, statement_rank
from .yamlpos import load_yaml, top_level

__all__ = ["Report", "validate_paths"]

_WILD = set("*?[")


@dataclass(slots=True)
class Report:
    """What `policy validate` found: the loaded files, and problems split by severity so the
    exit status can depend on errors alone."""

    files: list[PolicyFile] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)


def _declared_layer(path: str) -> str:
    """The layer a file says it is, "env" for an environment snapshot, else "app". Only the
    top-level keys are read (yamlpos Rule 4), so each file is parsed in full once, by the
    loader its layer calls for; a document `top_level` cannot answer for (a top-level merge
    key) is built here from the same text."""
    try:
        text = read_policy_text(path)  # never a FIFO or /dev/zero
    except (OSError, UnicodeDecodeError, InputError):
        return "app"  # load_layer will report the real problem
    top = top_level(text)
    if top is None:
        try:
            data, _ = load_yaml(text, path)
        except InputError:
            return "app"
        if not isinstance(data, dict):
            return "app"
        keys, layer = frozenset(str(k) for k in data), data.get("layer")
    else:
        keys, layer = top
    if "version" not in keys and "layer" not in keys and {"interfaces", "dns", "cache"} & keys:
        return "env"
    return layer if layer in ("system", "app", "carrier") else "app"


def validate_paths(paths: Sequence[str], *,
                   load_snapshot: Callable[[str], object]) -> Report:
    """Load every file (directories: their *.yaml), then lint the policy files together.

    `load_snapshot(path)` checks a file that is an environment snapshot, raising InputError
    (the CLI passes `taps_post.decision.envfile.load_environment`)."""
    report = Report()
    for spec in paths:
        targets = ([os.path.join(spec, n) for n in sorted(os.listdir(spec))
                    if n.endswith(SUFFIXES)] if os.path.isdir(spec) else [spec])
        for path in targets:
            layer = _declared_layer(path)
            try:
                if layer == "env":
                    load_snapshot(path)
                    report.snapshots.append(path)
                else:
                    report.files.extend(load_layer(path, layer))
            except InputError as exc:
                report.errors.extend(exc.diagnostics)
    for f in report.files:
        report.warnings.extend(f"{w.source}:{w.line or 1}:{w.column or 1}: warning: {w.message}"
                               if w.line else f"{w}" for w in f.warnings)
    report.warnings.extend(_dead_rules(report.files))
    report.warnings.extend(_contradictions(report.files))
    return report


def _entries(files: Sequence[PolicyFile]) -> list[tuple[PolicyFile, LoadedRule, Statement]]:
    return [(f, r, s) for f in files for r in f.rules for s in r.statements]


def _dead_rules(files: Sequence[PolicyFile]) -> list[str]:
    entries = _entries(files)
    whens = _WhenIndex([r.when for f in files for r in f.rules if r.statements])
    rivals = _Rivals(entries, whens)
    out: list[str] = []
    for f in files:
        for rule in f.rules:
            if not rule.statements:
                continue
            cls = whens.class_of(rule.when)
            reasons: list[str] = []
            for s in rule.statements:
                beater = rivals.first_beater(rule, s, cls)
                if beater is None:
                    break
                reasons.append(beater)
            else:
                out.append(f"{_at(rule)}: warning: rule {rule.id!r} can never win: "
                           + "; ".join(reasons))
    return out


def _at(rule: LoadedRule) -> str:
    return f"{rule.source}:{rule.column}" if rule.column else rule.source


_ABSENT = -1
"""The trie branch of rules whose `when` leaves a field out (they match any value of it)."""


class _Index:
    """Which distinct lists of one field's values cover a given list: a list covers another
    when every item of that one has a holder in it. `ids` numbers the lists, `holding` gives
    the lists holding an item; a subclass says which lists cover one item (`_holders`)."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.holding: dict[Any, set[int]] = {}
        self.cache: dict[Hashable, frozenset[int]] = {}

    def add(self, value: Any) -> int:
        vid = self.ids.setdefault(value, len(self.ids))
        for item in value:
            self.holding.setdefault(item, set()).add(vid)
        return vid

    def finish(self) -> None:
        pass

    def _holders(self, item: Any) -> set[int]:
        raise NotImplementedError

    def covering(self, value: Any) -> frozenset[int]:
        hit = self.cache.get(value)
        if hit is None:
            found: set[int] | None = None
            for item in value:
                these = self._holders(item)
                found = these if found is None else found & these
                if not found:
                    break
            hit = self.cache[value] = _every(self.ids) if found is None else frozenset(found)
        return hit


class _GlobField(_Index):
    """An `app` or `host` field: which distinct pattern lists cover a given one, as
    `_globs_cover` decides, without trying every list.

    A plain name is covered by a list holding it, "*", or a glob matching it; the globs are
    found by their literal prefix or suffix (what any match must start or end with), so only
    globs without either (`*x*`) are tried against every name."""

    def __init__(self, fold: bool) -> None:
        super().__init__()
        self.fold = fold
        self.by_prefix: dict[str, list[str]] = {}
        self.by_suffix: dict[str, list[str]] = {}
        self.rest: list[str] = []
        self.matches: dict[str, list[str]] = {}

    def _norm(self, pattern: str) -> str:
        return pattern.lower() if self.fold else pattern

    def add(self, value: tuple[str, ...]) -> int:
        vid = self.ids.setdefault(value, len(self.ids))
        for pattern in map(self._norm, value):
            holders = self.holding.get(pattern)
            if holders is None:
                holders = self.holding[pattern] = set()
                if pattern != "*" and _WILD & set(pattern):
                    self._index_glob(pattern)
            holders.add(vid)
        return vid

    def _index_glob(self, glob: str) -> None:
        # Outside a bracket set every character but * ? [ is literal; a bracket set ends
        # at a "]", so the characters after the last of * ? [ ] are literal too.
        prefix = glob[:min((i for i, c in enumerate(glob) if c in "*?["), default=len(glob))]
        suffix = glob[max((i for i, c in enumerate(glob) if c in "*?[]"), default=-1) + 1:]
        if suffix and len(suffix) >= len(prefix):
            self.by_suffix.setdefault(suffix, []).append(glob)
        elif prefix:
            self.by_prefix.setdefault(prefix, []).append(glob)
        else:
            self.rest.append(glob)

    def finish(self) -> None:
        self.prefix_lengths = sorted({len(p) for p in self.by_prefix})
        self.suffix_lengths = sorted({len(s) for s in self.by_suffix})

    def _globs_matching(self, name: str) -> list[str]:
        hit = self.matches.get(name)
        if hit is None:
            tried = [*self.rest]
            for n in self.prefix_lengths:
                tried.extend(self.by_prefix.get(name[:n], ()) if n <= len(name) else ())
            for n in self.suffix_lengths:
                tried.extend(self.by_suffix.get(name[len(name) - n:], ()) if n <= len(name)
                             else ())
            hit = self.matches[name] = [g for g in tried if fnmatch.fnmatchcase(name, g)]
        return hit

    def _holders(self, item: str) -> set[int]:
        pattern = self._norm(item)
        these = self.holding.get("*", set()) | self.holding.get(pattern, set())
        if not _WILD & set(pattern):
            for glob in self._globs_matching(pattern):
                these |= self.holding[glob]
        return these


def _every(ids: Mapping[Any, int]) -> frozenset[int]:
    """An empty list is covered by every list (`all()` of nothing)."""
    return frozenset(ids.values())


class _SetField(_Index):
    """A `scheme` or `kind` field: a list covers another when it holds all of its items."""

    def _holders(self, item: str) -> set[int]:
        return self.holding.get(item, set())


class _PortField(_Index):
    """A `port` field: a list covers another when each of its ranges lies in one of the
    list's. The ranges containing a range are read off a max-tree over the ranges sorted by
    start: cost follows the number found, not the number of ranges."""

    def finish(self) -> None:
        self.ranges = sorted(self.holding)
        self.starts = [lo for lo, _ in self.ranges]
        self.size = 1
        while self.size < len(self.ranges):
            self.size *= 2
        self.tree: list[float] = [float("-inf")] * (2 * self.size)
        for i, (_lo, hi) in enumerate(self.ranges):
            self.tree[self.size + i] = hi
        for node in range(self.size - 1, 0, -1):
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])

    def _containing(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        end = bisect.bisect_right(self.starts, lo)
        stack = [(1, 0, self.size)]
        while stack:
            node, left, right = stack.pop()
            if left >= end or self.tree[node] < hi:
                continue
            if right - left == 1:
                yield self.ranges[left]
                continue
            mid = (left + right) // 2
            stack.append((2 * node, left, mid))
            stack.append((2 * node + 1, mid, right))

    def _holders(self, item: tuple[int, int]) -> set[int]:
        these: set[int] = set()
        for r in self._containing(*item):
            these |= self.holding[r]
        return these


_Field = _GlobField | _SetField | _PortField


def _field(name: str) -> _Field:
    if name == "port":
        return _PortField()
    if name in ("scheme", "kind"):
        return _SetField()
    return _GlobField(fold=name == "host")


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _when_key(when: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, _hashable(v)) for k, v in when.items()))


class _WhenIndex:
    """The distinct `when`s of the rules, and for each, the distinct `when`s covering it.

    A trie with one level per field: a query follows, at each level, the branch of rules that
    leave the field out and the branches whose value covers its own (from the field's
    index), so it visits only `when`s that cover it field by field so far. `_covers` has the
    last word on each one found."""

    def __init__(self, whens: Sequence[Mapping[str, Any]]) -> None:
        self.ids: dict[tuple[tuple[str, Any], ...], int] = {}
        self.whens: list[dict[str, Any]] = []
        self.names = sorted({name for when in whens for name in when})
        self.fields = {name: _field(name) for name in self.names}
        self.trie: dict[int, Any] = {}
        self.cache: dict[int, list[int]] = {}
        self.by_id: dict[int, int] = {}
        for when in whens:
            key = _when_key(when)
            if key in self.ids:
                self.by_id[id(when)] = self.ids[key]
                continue
            cls = self.ids[key] = self.by_id[id(when)] = len(self.whens)
            values = dict(key)
            self.whens.append(values)
            node = self.trie
            for depth, name in enumerate(self.names):
                vid = self.fields[name].add(values[name]) if name in values else _ABSENT
                if depth == len(self.names) - 1:
                    node[vid] = cls
                else:
                    node = node.setdefault(vid, {})
        for f in self.fields.values():
            f.finish()

    def class_of(self, when: Mapping[str, Any]) -> int:
        # By identity first: every statement of a rule asks with the same `when` object.
        cls = self.by_id.get(id(when))
        if cls is None:
            cls = self.by_id[id(when)] = self.ids[_when_key(when)]
        return cls

    def covering(self, cls: int) -> list[int]:
        """The classes whose `when` covers class `cls`'s (itself included)."""
        hit = self.cache.get(cls)
        if hit is None:
            when = self.whens[cls]
            if not self.names:
                found = [cls]
            else:
                found = []
                self._walk(self.trie, 0, when, found)
            hit = self.cache[cls] = [c for c in found if _covers(self.whens[c], when)]
        return hit

    def _walk(self, node: dict[int, Any], depth: int, when: Mapping[str, Any],
              out: list[int]) -> None:
        last = depth == len(self.names) - 1
        branches: list[Any] = []
        if _ABSENT in node:
            branches.append(node[_ABSENT])
        name = self.names[depth]
        if name in when:
            cover = self.fields[name].covering(when[name])
            if len(cover) < len(node):
                branches.extend(node[v] for v in cover if v in node)
            else:
                branches.extend(child for v, child in node.items() if v in cover)
        if last:
            out.extend(branches)
        else:
            for child in branches:
                self._walk(child, depth + 1, when, out)


_AUTHORITY = {layer: i for i, layer in enumerate(LAYERS)}

_Entry = tuple[int, Statement, LoadedRule]
"""A statement with its place in file, rule and statement order and the rule stating it."""


class _Group:
    """The statements about one key, from one layer, by rules of one `when`.

    Two questions are asked of it, both answered with the statement that comes first in file
    order, because that is the one the pairwise definition names: which statement outranks a
    given rank (prefix minima over the rank order), and which enforced statement holds a given
    value (the first per distinct value; the verdict depends on the value alone)."""

    __slots__ = ("enforced", "first", "ranked", "ranks")

    def __init__(self) -> None:
        self.ranked: list[tuple[tuple[Any, ...], _Entry]] = []
        self.ranks: list[tuple[Any, ...]] = []
        self.first: list[_Entry] = []
        self.enforced: dict[tuple[type, Any], _Entry] = {}

    def add(self, rank: tuple[Any, ...], entry: _Entry) -> None:
        self.ranked.append((rank, entry))
        s = entry[1]
        if s.enforce:
            self.enforced.setdefault((type(s.value), s.value), entry)

    def finish(self) -> None:
        self.ranked.sort(key=lambda item: item[0])
        self.ranks = [rank for rank, _ in self.ranked]
        best: _Entry | None = None
        for _, entry in self.ranked:
            if best is None or entry[0] < best[0]:
                best = entry
            self.first.append(best)

    def first_outranking(self, rank: tuple[Any, ...], rule: LoadedRule) -> _Entry | None:
        """The first statement (file order) ranked strictly before `rank`, not by `rule`.

        Ranking before it also means "higher priority, or equal priority and at least the
        specificity", the other half of the shadowing test, since rank starts with both."""
        end = bisect.bisect_left(self.ranks, rank)
        if not end:
            return None
        hit = self.first[end - 1]
        if hit[2] is not rule:
            return hit
        # A rule states each key once, so this needs two statements of one key in one rule.
        rest = [e for _, e in self.ranked[:end] if e[2] is not rule]
        return min(rest, key=lambda e: e[0]) if rest else None


class _Rivals:
    """Every statement, grouped by key, then by the `when` class of its rule, then by layer."""

    def __init__(self, entries: Sequence[tuple[PolicyFile, LoadedRule, Statement]],
                 whens: _WhenIndex) -> None:
        self.whens = whens
        self.groups: dict[str, dict[int, dict[str, _Group]]] = {}
        for i, (_f, rule, s) in enumerate(entries):
            spec = REGISTRY[key_family(s.key)]
            layers = self.groups.setdefault(s.key, {}).setdefault(whens.class_of(rule.when), {})
            group = layers.get(s.layer)
            if group is None:
                group = layers[s.layer] = _Group()
            group.add(statement_rank(spec, s), (i, s, rule))
        for by_class in self.groups.values():
            for layers in by_class.values():
                for group in layers.values():
                    group.finish()

    def first_beater(self, rule: LoadedRule, s: Statement, cls: int) -> str | None:
        """Why `s` always loses, citing the first rival in file order that beats it wherever
        `rule` matches; None when no rival does."""
        spec = REGISTRY[key_family(s.key)]
        by_class = self.groups.get(s.key, {})
        rank = statement_rank(spec, s)
        mine = _AUTHORITY[s.layer]
        best: tuple[int, Verdict | Literal["shadowed"], Statement, LoadedRule] | None = None
        for c in self.whens.covering(cls):
            layers = by_class.get(c)
            if layers is None:
                continue
            for layer, group in layers.items():
                if layer == s.layer:
                    hit = group.first_outranking(rank, rule)
                    if hit is not None and (best is None or hit[0] < best[0]):
                        best = (hit[0], "shadowed", hit[1], hit[2])
                elif _AUTHORITY[layer] < mine:
                    for i, t, other in group.enforced.values():
                        if best is not None and i >= best[0]:
                            continue
                        verdict = judge(spec, t.value, s.value)
                        if verdict != "accepted":
                            best = (i, verdict, t, other)
        if best is None:
            return None
        _i, how, t, other = best
        if how == "shadowed":
            return f"{s.key} is always shadowed by rule {other.id!r} ({other.source})"
        if how == "denied":
            return (f"{s.key}: {show_value(s.value)} is always denied by enforced "
                    f"{t.layer} rule {other.id!r} ({other.source})")
        return (f"{s.key}: {show_value(s.value)} always conflicts with enforced "
                f"{show_value(t.value)} of {t.layer} rule {other.id!r} "
                f"({other.source}), so every request it matches fails with "
                "policy_prohibited")


def _contradictions(files: Sequence[PolicyFile]) -> list[str]:
    enforced = [(f, r, s) for f, r, s in _entries(files) if s.enforce]
    # Only statements of one key with different values can contradict, and for preferences
    # only two hard ones: group on that first, so the pairs tried are the plausible ones.
    by_key: dict[str, dict[Any, list[int]]] = {}
    for i, (_f, _r, s) in enumerate(enforced):
        if REGISTRY[key_family(s.key)].kind == "preference" and not s.value.is_hard:
            continue
        by_key.setdefault(s.key, {}).setdefault(s.value, []).append(i)
    whens = [r.when for _f, r, _s in enforced]
    found: set[tuple[int, int]] = set()
    for by_value in by_key.values():
        lists = list(by_value.values())
        for x, xs in enumerate(lists):
            for ys in lists[x + 1:]:
                for i, j in _plausible_pairs(xs, ys, whens):
                    i, j = min(i, j), max(i, j)
                    fa, ra, _a = enforced[i]
                    fb, rb, _b = enforced[j]
                    if fa.source != fb.source and _overlaps(ra.when, rb.when):
                        found.add((i, j))
    out: list[str] = []
    for i, j in sorted(found):
        _fa, ra, a = enforced[i]
        _fb, rb, b = enforced[j]
        out.append(f"{_at(rb)}: warning: enforced {a.key}: {show_value(b.value)} "
                   f"(rule {rb.id!r}) contradicts enforced {show_value(a.value)} "
                   f"(rule {ra.id!r}, {a.source}) where both match")
    return out


_BLOCKING = ("host", "app")


def _literals(when: Mapping[str, Any], name: str) -> set[str] | None:
    """The patterns of `when[name]` when all are plain names (which overlap only by being
    equal, `_one_overlaps`), else None."""
    values = when.get(name)
    if not values:
        return None
    fold = name == "host"
    out: set[str] = set()
    for v in values:
        if "/" in v or _WILD & set(v):
            return None
        out.add(v.lower() if fold else v)
    return out


def _plausible_pairs(xs: Sequence[int], ys: Sequence[int], whens: Sequence[Mapping[str, Any]],
                     fields: Sequence[str] = _BLOCKING) -> Iterator[tuple[int, int]]:
    """Pairs of `xs` x `ys`, leaving out only pairs whose plain names on a field share none
    (so `_overlaps` would say no): per-host and per-app rules then cost what they match."""
    if not fields:
        yield from ((i, j) for i in xs for j in ys)
        return
    name, rest = fields[0], fields[1:]
    plain_x: dict[str, list[int]] = {}
    plain_y: dict[str, list[int]] = {}
    other_x: list[int] = []
    other_y: list[int] = []
    for ids, plain, other in ((xs, plain_x, other_x), (ys, plain_y, other_y)):
        for i in ids:
            names = _literals(whens[i], name)
            if names is None:
                other.append(i)
            else:
                for n in names:
                    plain.setdefault(n, []).append(i)
    seen: set[tuple[int, int]] = set()
    for n, px in plain_x.items():
        for i in px:
            for j in plain_y.get(n, ()):
                if (i, j) not in seen:
                    seen.add((i, j))
                    yield i, j
    plain_ys = sorted({j for js in plain_y.values() for j in js})
    plain_xs = sorted({i for is_ in plain_x.values() for i in is_})
    yield from _plausible_pairs(other_x, [*plain_ys, *other_y], whens, rest)
    yield from _plausible_pairs(plain_xs, other_y, whens, rest)


def _globs_cover(outer: Sequence[str], inner: Sequence[str], fold: bool) -> bool:
    def norm(x: str) -> str:
        return x.lower() if fold else x

    outs = [norm(o) for o in outer]
    for pattern in (norm(p) for p in inner):
        if pattern in outs or "*" in outs:
            continue
        if _WILD & set(pattern) or not any(fnmatch.fnmatchcase(pattern, o) for o in outs):
            return False
    return True


def _ports_cover(outer: Sequence[Sequence[int]], inner: Sequence[Sequence[int]]) -> bool:
    return all(any(o[0] <= i[0] and i[1] <= o[1] for o in outer) for i in inner)


def _covers(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> bool:
    """True only when every request `inner` matches is surely matched by `outer`."""
    for key, values in outer.items():
        if key not in inner:
            return False
        if key == "port":
            if not _ports_cover(values, inner[key]):
                return False
        elif key in ("scheme", "kind"):
            if not set(inner[key]) <= set(values):
                return False
        elif not _globs_cover(values, inner[key], fold=key == "host"):
            return False
    return True


def _one_overlaps(a: str, b: str, fold: bool) -> bool:
    if fold:
        a, b = a.lower(), b.lower()
    if "/" in a or "/" in b:
        try:
            na = ipaddress.ip_network(a, strict=False) if "/" in a else None
            nb = ipaddress.ip_network(b, strict=False) if "/" in b else None
        except ValueError:
            return True
        if na is not None and nb is not None:
            return na.version == nb.version and na.overlaps(nb)
        return True
    wild_a, wild_b = bool(_WILD & set(a)), bool(_WILD & set(b))
    if not wild_a and not wild_b:
        return a == b
    if not wild_a:
        return fnmatch.fnmatchcase(a, b)
    if not wild_b:
        return fnmatch.fnmatchcase(b, a)
    return True


def _overlaps(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    for key in set(a) & set(b):
        if key == "port":
            if not any(x[0] <= y[1] and y[0] <= x[1] for x in a[key] for y in b[key]):
                return False
        elif key in ("scheme", "kind"):
            if not set(a[key]) & set(b[key]):
                return False
        elif not any(_one_overlaps(x, y, key == "host") for x in a[key] for y in b[key]):
            return False
    return True


# --- the pairwise definition -----------------------------------------------------------

def _pairwise_beater(rule: LoadedRule, s: Statement,
            rivals: list[tuple[LoadedRule, Statement]]) -> str | None:
    spec = REGISTRY[key_family(s.key)]
    for other, t in rivals:
        if other is rule or not _covers(other.when, rule.when):
            continue
        if t.layer == s.layer and statement_rank(spec, t) < statement_rank(spec, s) and (
                t.priority > s.priority or t.specificity >= s.specificity):
            return f"{s.key} is always shadowed by rule {other.id!r} ({other.source})"
        if _AUTHORITY[t.layer] < _AUTHORITY[s.layer] and t.enforce:
            verdict = judge(spec, t.value, s.value)
            if verdict == "denied":
                return (f"{s.key}: {show_value(s.value)} is always denied by enforced "
                        f"{t.layer} rule {other.id!r} ({other.source})")
            if verdict == "conflict":
                return (f"{s.key}: {show_value(s.value)} always conflicts with enforced "
                        f"{show_value(t.value)} of {t.layer} rule {other.id!r} "
                        f"({other.source}), so every request it matches fails with "
                        "policy_prohibited")
    return None


def pairwise_lint(files: Sequence[PolicyFile]) -> list[str]:
    """The lint's definition (Rule 4), executable: dead rules, then contradicting enforced
    statements, each statement compared with every other statement of its key. Quadratic,
    so `validate_paths` never calls it; the tests hold the indexed lint to it word for word,
    and bench/validate.py measures it as the baseline the index replaced."""
    by_key: dict[str, list[tuple[LoadedRule, Statement]]] = {}
    for f in files:
        for r in f.rules:
            for s in r.statements:
                by_key.setdefault(s.key, []).append((r, s))
    out: list[str] = []
    for f in files:
        for rule in f.rules:
            if not rule.statements:
                continue
            reasons: list[str] = []
            for s in rule.statements:
                beater = _pairwise_beater(rule, s, by_key[s.key])
                if beater is None:
                    break
                reasons.append(beater)
            else:
                out.append(f"{_at(rule)}: warning: rule {rule.id!r} can never win: "
                           + "; ".join(reasons))
    enforced = [(f, r, s) for f in files for r in f.rules for s in r.statements if s.enforce]
    for i, (fa, ra, a) in enumerate(enforced):
        for fb, rb, b in enforced[i + 1:]:
            if fa.source == fb.source or a.key != b.key or a.value == b.value:
                continue
            if REGISTRY[key_family(a.key)].kind == "preference" and not (
                    a.value.is_hard and b.value.is_hard):
                continue
            if _overlaps(ra.when, rb.when):
                out.append(f"{_at(rb)}: warning: enforced {a.key}: {show_value(b.value)} "
                           f"(rule {rb.id!r}) contradicts enforced {show_value(a.value)} "
                           f"(rule {ra.id!r}, {a.source}) where both match")
    return out
