"""Conflict resolution between policy layers, with provenance for every key.

The algorithm, with worked examples, is docs/conflict-resolution.md.


Rule 1: the outcome for a key depends only on the set of statements, never on file or rule
order: within a layer the winner is the maximum of a total order, and the fold over layers
runs in the fixed order defaults -> system -> app -> carrier.
Rule 2: the accept/deny/conflict table is data (`_PREF_TABLE`), read by both the fold and the
docs, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .load import LAYERS, Statement
from .registry import REGISTRY, Pref, PropertySpec, fixed_keys, key_family

__all__ = [
    "PREF_TABLE",
    "Conflict",
    "Effective",
    "Verdict",
    "default_statement",
    "judge",
    "resolve",
    "show_value",
    "statement_rank",
]

Verdict = Literal["accepted", "denied", "conflict"]
Outcome = Literal["overridden", "shadowed", "denied", "conflict"]

_R, _P, _N, _A, _X = Pref.REQUIRE, Pref.PREFER, Pref.NO_PREFERENCE, Pref.AVOID, Pref.PROHIBIT

# (enforced floor, lower-layer statement) -> verdict: docs/conflict-resolution.md, step 2.
PREF_TABLE: dict[tuple[Pref, Pref], Verdict] = {}
for _f in Pref:
    for _s in Pref:
        if _f == _s:
            v: Verdict = "accepted"
        elif _f.is_hard:
            v = "conflict" if _s.is_hard else "denied"
        elif _f.is_soft:
            v = "accepted" if _s.is_hard else "denied"
        else:  # no_preference enforced: nothing else gets in
            v = "denied"
        PREF_TABLE[(_f, _s)] = v


def judge(spec: PropertySpec, floor: Any, value: Any) -> Verdict:
    """May `value` from a lower layer replace the effective value under enforced `floor`?"""
    if spec.kind == "preference":
        return PREF_TABLE[(floor, value)]
    return "accepted" if spec.at_least_as_strict(value, floor) else "denied"


@dataclass(frozen=True, slots=True)
class Effective:
    """The effective value of one key and how every statement about it fared: the losers
    are kept so explain can say why each one lost."""

    key: str
    statement: Statement
    others: tuple[tuple[Statement, Outcome], ...]

    @property
    def value(self) -> Any:
        return self.statement.value

    @property
    def enforced(self) -> bool:
        return self.statement.enforce


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two enforced-versus-lower hard statements that cannot both hold; reported, never
    settled silently, since either choice would break a rule someone enforced."""

    key: str
    floor: Statement
    statement: Statement

    @property
    def reason(self) -> str:
        return (f"{self.key}: {self.statement.describe()} says {_show(self.statement.value)} "
                f"but enforced {self.floor.describe()} says {_show(self.floor.value)}")


def _show(value: Any) -> str:
    if isinstance(value, Pref):
        return value.value
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def show_value(value: Any) -> str:
    """The value as a policy file would write it."""
    return _show(value)


def statement_rank(spec: PropertySpec, s: Statement) -> tuple[Any, ...]:
    """The order of statements within one layer; the smallest wins (docs/conflict-resolution.md,
    step 1). Public because the dead-rule lint must rank exactly as the resolver does."""
    # Smallest wins: higher priority, higher specificity, stricter value, then names.
    strict = spec.strictness(s.value)
    # Between equal values an enforced statement is the stricter one: otherwise a file name
    # could decide whether the layer's floor exists at all. Names, then a stable text order,
    # only separate statements that agree on everything else.
    return (-s.priority, -s.specificity, (-strict[0], _neg(strict[1])), not s.enforce, s.file,
            s.rule or "", repr(s.value), s.source or "")


def _neg(x: Any) -> Any:
    return -x if isinstance(x, (int, float)) else x


def default_statement(key: str, kind: str) -> Statement:
    """The built-in default of `key` for a carrier kind, as the statement every fold starts
    from (so a default has provenance like any rule)."""
    spec = REGISTRY[key_family(key)]
    return Statement(key, spec.default_for(kind), "defaults", None, None, "")


def resolve(
    matched: Mapping[str, Sequence[Statement]] | Iterable[Statement], kind: str
) -> tuple[dict[str, Effective], list[Conflict]]:
    """Resolve every key the registry fixes plus every map key a matching statement names."""
    by_key: dict[str, dict[str, list[Statement]]] = {}
    items = matched if not isinstance(matched, Mapping) else (
        s for group in matched.values() for s in group)
    for s in items:
        by_key.setdefault(s.key, {}).setdefault(s.layer, []).append(s)
    for key in fixed_keys():
        by_key.setdefault(key, {})

    effective: dict[str, Effective] = {}
    conflicts: list[Conflict] = []
    for key in sorted(by_key):
        eff, conflict = _fold(key, by_key[key], kind)
        effective[key] = eff
        if conflict is not None:
            conflicts.append(conflict)
    return effective, conflicts


def _fold(
    key: str, layers: Mapping[str, list[Statement]], kind: str
) -> tuple[Effective, Conflict | None]:
    spec = REGISTRY[key_family(key)]
    current = default_statement(key, kind)
    floor: Statement | None = None
    others: list[tuple[Statement, Outcome]] = []
    conflict: Conflict | None = None
    for layer in LAYERS[1:]:
        group = layers.get(layer)
        if not group:
            continue
        ordered = sorted(group, key=lambda s: statement_rank(spec, s))
        best = ordered[0]
        others.extend((loser, "shadowed") for loser in ordered[1:])
        verdict: Verdict = "accepted" if floor is None else judge(spec, floor.value, best.value)
        if verdict == "accepted":
            others.append((current, "overridden"))
            current = best
            if best.enforce:
                floor = best
        elif verdict == "denied":
            others.append((best, "denied"))
        else:
            others.append((best, "conflict"))
            assert floor is not None
            if conflict is None:
                conflict = Conflict(key, floor, best)
    return Effective(key, current, tuple(others)), conflict
