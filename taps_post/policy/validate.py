"""`policy validate`: load files as their own `layer:` says, and lint what loading cannot see.

Rule 1: errors (the file cannot be applied) and warnings (it applies, but probably not as its
author meant) are separate lists; only errors change the exit status.
Rule 2: the lint reasons about `when` conservatively: "covers" must be certain before a rule is
called dead, "overlaps" may be assumed when it cannot be ruled out.
Rule 3: environment snapshots are recognised here but checked by the loader the caller passes
in: snapshots belong to the decision layer, which the policy layer never imports.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Diagnostic, InputError
from .load import LAYERS, LoadedRule, PolicyFile, Statement, load_layer
from .registry import REGISTRY, key_family
from .resolve import judge, show_value, statement_rank
from .yamlpos import load_yaml

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
    """The layer a file says it is, "env" for an environment snapshot, else "app"."""
    try:
        with open(path, encoding="utf-8") as fh:
            data, _ = load_yaml(fh.read(), path)
    except (OSError, UnicodeDecodeError, InputError):
        return "app"  # load_layer will report the real problem
    if not isinstance(data, dict):
        return "app"
    if "version" not in data and "layer" not in data and (
            {"interfaces", "dns", "cache"} & set(data)):
        return "env"
    layer = data.get("layer")
    return layer if layer in ("system", "app", "carrier") else "app"


def validate_paths(paths: Sequence[str], *,
                   load_snapshot: Callable[[str], object]) -> Report:
    """Load every file (directories: their *.yaml), then lint the policy files together.

    `load_snapshot(path)` checks a file that is an environment snapshot, raising InputError
    (the CLI passes `taps_post.decision.envfile.load_environment`)."""
    report = Report()
    for spec in paths:
        targets = ([os.path.join(spec, n) for n in sorted(os.listdir(spec))
                    if n.endswith((".yaml", ".yml"))] if os.path.isdir(spec) else [spec])
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
    by_key: dict[str, list[tuple[PolicyFile, LoadedRule, Statement]]] = {}
    for e in entries:
        by_key.setdefault(e[2].key, []).append(e)
    out: list[str] = []
    for f in files:
        for rule in f.rules:
            if not rule.statements:
                continue
            reasons: list[str] = []
            for s in rule.statements:
                beater = _always_beaten(rule, s, by_key.get(s.key, []))
                if beater is None:
                    break
                reasons.append(beater)
            else:
                out.append(f"{_at(rule)}: warning: rule {rule.id!r} can never win: "
                           + "; ".join(reasons))
    return out


def _at(rule: LoadedRule) -> str:
    return f"{rule.source}:{rule.column}" if rule.column else rule.source


def _always_beaten(rule: LoadedRule, s: Statement,
                   rivals: list[tuple[PolicyFile, LoadedRule, Statement]]) -> str | None:
    spec = REGISTRY[key_family(s.key)]
    authority = {layer: i for i, layer in enumerate(LAYERS)}
    for _f, other, t in rivals:
        if other is rule or not _covers(other.when, rule.when):
            continue
        if t.layer == s.layer and statement_rank(spec, t) < statement_rank(spec, s) and (
            t.priority > s.priority or t.specificity >= s.specificity
        ):
            return f"{s.key} is always shadowed by rule {other.id!r} ({other.source})"
        if authority[t.layer] < authority[s.layer] and t.enforce:
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


def _contradictions(files: Sequence[PolicyFile]) -> list[str]:
    enforced = [(f, r, s) for f, r, s in _entries(files) if s.enforce]
    out: list[str] = []
    for i, (fa, ra, a) in enumerate(enforced):
        for fb, rb, b in enforced[i + 1:]:
            if fa.source == fb.source or a.key != b.key or a.value == b.value:
                continue
            spec = REGISTRY[key_family(a.key)]
            if spec.kind == "preference" and not (a.value.is_hard and b.value.is_hard):
                continue
            if not _overlaps(ra.when, rb.when):
                continue
            out.append(f"{_at(rb)}: warning: enforced {a.key}: {show_value(b.value)} "
                       f"(rule {rb.id!r}) contradicts enforced {show_value(a.value)} "
                       f"(rule {ra.id!r}, {a.source}) where both match")
    return out


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
