"""PolicyContext: the stack of policy layers bound to an application (and later an Association).

Rule 1: a PolicyContext is built whole or not at all. Every layer is loaded and checked in
the constructor, so holding a PolicyContext means holding a policy that can be applied.
Rule 2: a context is identified by what it was built from, not by the object: `fingerprint`
is equal for contexts built from equal inputs, and contexts with equal files share one
resolution memo, so building a fresh context per call costs a few `stat`s, not a resolve.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..diagnostics import Diagnostic, InputError
from .load import LoadedRule, PolicyFile, PolicySpec, discover_system_sources, load_layer
from .match import Subject
from .model import InterfaceFact
from .resolve import Conflict, Effective, resolve

__all__ = ["PolicyContext", "Resolution"]

Matched = tuple[tuple[PolicyFile, LoadedRule], ...]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The resolved policy for one request: which rules matched and what they add up to.

    `effective` is read-only and shared between every request that matched the same rules;
    `memo` holds results derived from this resolution alone (decide()'s stack verdicts), kept
    so they are computed once per resolution rather than once per request."""

    matched: Matched
    effective: MappingProxyType[str, Effective]
    conflicts: tuple[Conflict, ...]
    memo: dict[Hashable, Any]


_MEMO_LIMIT = 256
_SHARED_LIMIT = 64


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every context with the same files (their content, not the objects) can share:
    derived once, so building a context again costs the loading's `stat`s and a lookup. A
    rule's position stands for the rule in `resolutions`: equal content puts equal rules
    there."""

    rules: Matched
    warnings: tuple[Diagnostic, ...]
    facts: tuple[InterfaceFact, ...]
    resolutions: dict[tuple[Any, ...], Resolution]


_shared: dict[tuple[Any, ...], _Shared] = {}
_shared_lock = threading.Lock()


def _shared_for(files_fp: tuple[Any, ...], files: tuple[PolicyFile, ...]) -> _Shared:
    found = _shared.get(files_fp)
    if found is None:
        found = _Shared(tuple((f, r) for f in files for r in f.rules),
                        tuple(w for f in files for w in f.warnings),
                        _interface_facts(files), {})
        with _shared_lock:
            if len(_shared) >= _SHARED_LIMIT:
                _shared.clear()
            found = _shared.setdefault(files_fp, found)
    return found


class PolicyContext:
    """System, app and carrier policy layers, loaded and checked.

    It exists so that loading (YAML, validation, compiling matchers) happens once and every
    later decision only matches and resolves. `system=None` means the discovered system layer;
    `system=[]` means none at all.
    """

    def __init__(
        self,
        *,
        system: PolicySpec = None,
        app: PolicySpec = None,
        carrier: PolicySpec = None,
        app_name: str | None = None,
    ) -> None:
        problems: list[Diagnostic] = []
        layers: dict[str, tuple[PolicyFile, ...]] = {}
        sources = {"system": discover_system_sources() if system is None else system,
                   "app": app, "carrier": carrier}
        for layer, spec in sources.items():
            try:
                layers[layer] = load_layer(spec, layer)
            except InputError as exc:
                problems.extend(exc.diagnostics)
        if problems:
            raise InputError(problems)
        self._bind(app_name, layers["system"] + layers["app"] + layers["carrier"])

    def _bind(self, app_name: str | None, files: tuple[PolicyFile, ...]) -> None:
        self.app_name = app_name
        self.files: tuple[PolicyFile, ...] = files
        files_fp = tuple((f.layer, f.source, f.digest) for f in files)
        self._fingerprint: tuple[Any, ...] = (app_name, files_fp)
        shared = _shared_for(files_fp, files)
        self._rules = shared.rules
        self._resolved = shared.resolutions
        self._warnings = shared.warnings
        self._facts = shared.facts

    @property
    def fingerprint(self) -> Hashable:
        """Equal for two contexts built from equal inputs (application name, and the same
        documents with the same content in the same layers and order), different otherwise:
        a cache of anything derived from the policy can key on it instead of on the object."""
        return self._fingerprint

    def with_carrier(self, carrier: PolicySpec) -> PolicyContext:
        """A copy with one more carrier layer (per-call policy), the others shared."""
        extra = load_layer(carrier, "carrier")
        clone = object.__new__(PolicyContext)
        clone._bind(self.app_name, self.files + extra)
        return clone

    def resolve_for(self, subject: Subject) -> Resolution:
        """Match every rule against `subject` and resolve what matched, memoised on which
        rules matched and the kind: requests that match the same rules share one resolution."""
        kind = subject.kind
        hits = [i for i, (_f, r) in enumerate(self._rules) if r.matcher.matches(subject)]
        key = (kind, *hits)
        found = self._resolved.get(key)
        if found is not None:
            return found
        matched = tuple(self._rules[i] for i in hits)
        effective, conflicts = resolve([s for _f, r in matched for s in r.statements], kind)
        if len(self._resolved) >= _MEMO_LIMIT:
            self._resolved.clear()
        found = self._resolved[key] = Resolution(matched, MappingProxyType(effective),
                                                 tuple(conflicts), {})
        return found

    def matching(self, subject: Subject) -> list[tuple[PolicyFile, LoadedRule]]:
        """The (file, rule) pairs whose `when` matches `subject`, in file and rule order."""
        return [(f, r) for f, r in self._rules if r.matcher.matches(subject)]

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        """Every loaded file's warnings (problems that do not stop the policy applying)."""
        return self._warnings

    @property
    def interface_facts(self) -> tuple[InterfaceFact, ...]:
        """The system layer's `interfaces:` facts, in the order they apply (each may refine
        what the ones before it set).

        Within a file, later entries refine earlier ones. Between files, as between rules, the
        alphabetically first document name wins, whatever order the files were given in: its
        facts come last."""
        return self._facts

    def __repr__(self) -> str:
        layers = ", ".join(f"{f.layer}:{f.source}" for f in self.files)
        return f"<PolicyContext app_name={self.app_name!r} [{layers}]>"


def _interface_facts(files: tuple[PolicyFile, ...]) -> tuple[InterfaceFact, ...]:
    ordered = sorted((f for f in files if f.layer == "system" and f.interfaces),
                     key=lambda f: (f.name, f.source, repr(f.interfaces)), reverse=True)
    return tuple(fact for f in ordered for fact, _src in f.interfaces)
