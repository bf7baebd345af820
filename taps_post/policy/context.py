"""PolicyContext: the stack of policy layers bound to an application (and later an Association).

Rule 1: a PolicyContext is built whole or not at all. Every layer is loaded and checked in
the constructor, so holding a PolicyContext means holding a policy that can be applied; a
system layer that cannot be loaded raises SystemPolicyError, never a context without it.
Rule 2: a context is identified by what it was built from, not by the object: `fingerprint`
is equal for contexts built from equal inputs, and contexts with equal files share one
resolution memo, so building a fresh context per call costs a few `stat`s, not a resolve.
Rule 3: the system layer is live when it comes from files: every decision first checks the
files' identity on disk (a few `stat`s) and, when they changed, loads them again and swaps in
one immutable snapshot under a lock. An edit that does not load never takes effect: the last
good layer stays in force and the problem is logged once per edit on `taps_post.policy`.
Rule 4: a decision sees one snapshot. resolve_for(), `fingerprint` and current() move a
context on to the newest snapshot; the other readers answer from the snapshot this thread
last moved to, so a decision that starts with resolve_for() cannot mix two policies even
while another thread swaps. current() returns that snapshot as a context of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..diagnostics import Diagnostic, InputError, SystemPolicyError
from .load import (
    LoadedRule,
    PolicyFile,
    PolicySpec,
    discover_system_sources,
    disk_state,
    load_layer,
    source_paths,
)
from .match import RuleIndex, Subject
from .model import InterfaceFact
from .resolve import Conflict, Effective, resolve

if TYPE_CHECKING:
    import logging

__all__ = ["PolicyContext", "Resolution"]

Matched = tuple[tuple[PolicyFile, LoadedRule], ...]


def _log() -> logging.Logger:
    """The `taps_post.policy` logger, made when a reload first has something to say: a
    one-shot `taps-post policy` command never reloads, and need not import logging."""
    import logging

    log = logging.getLogger("taps_post.policy")
    if not log.handlers:
        log.addHandler(logging.NullHandler())  # silent unless the application configures it
    return log


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
    index: RuleIndex
    """Which of `rules` can match a request, without running every matcher."""


_shared: dict[tuple[Any, ...], _Shared] = {}
_shared_lock = threading.Lock()


def _shared_for(files_fp: tuple[Any, ...], files: tuple[PolicyFile, ...]) -> _Shared:
    found = _shared.get(files_fp)
    if found is None:
        rules = tuple((f, r) for f in files for r in f.rules)
        found = _Shared(rules, tuple(w for f in files for w in f.warnings),
                        _interface_facts(files), {}, RuleIndex([r.matcher for _f, r in rules]))
        with _shared_lock:
            if len(_shared) >= _SHARED_LIMIT:
                _shared.clear()
            found = _shared.setdefault(files_fp, found)
    return found


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """One policy, whole: the system files it was built from, every file, its fingerprint
    and what it shares with equal contexts. Swapped as one object, never edited."""

    system: tuple[PolicyFile, ...]
    files: tuple[PolicyFile, ...]
    fingerprint: tuple[Any, ...]
    shared: _Shared


def _snapshot(app_name: str | None, system: tuple[PolicyFile, ...],
              rest: tuple[PolicyFile, ...]) -> _Snapshot:
    files = system + rest
    files_fp = tuple((f.layer, f.source, f.digest) for f in files)
    return _Snapshot(system, files, (app_name, files_fp), _shared_for(files_fp, files))


class _SystemLayer:
    """The system layer as last loaded, and how to notice that its files changed.

    Shared by a context and its `with_carrier()` copies, so one edit is loaded once for all
    of them. `_now` is one tuple (disk state, sources, files) replaced whole, so a reader
    without the lock never pairs one state with another's files."""

    def __init__(self, system: PolicySpec) -> None:
        self.discover = system is None
        sources = discover_system_sources() if system is None else system
        self.paths = tuple(source_paths(sources))
        self.live = self.discover or bool(self.paths)
        state = self._state(sources) if self.live else None
        self._now: tuple[Hashable, PolicySpec, tuple[PolicyFile, ...]] = (
            state, sources, load_layer(sources, "system"))
        self._lock = threading.Lock()

    @classmethod
    def fixed(cls, files: tuple[PolicyFile, ...]) -> _SystemLayer:
        """A layer that never changes: the system layer of a snapshot."""
        layer = object.__new__(cls)
        layer.discover, layer.paths, layer.live = False, (), False
        layer._now = (None, (), files)
        layer._lock = threading.Lock()
        return layer

    @property
    def files(self) -> tuple[PolicyFile, ...]:
        return self._now[2]

    def _sources(self) -> PolicySpec:
        return discover_system_sources() if self.discover else self._now[1]

    def _state(self, sources: PolicySpec) -> Hashable:
        paths = source_paths(sources) if self.discover else self.paths
        return (tuple(paths), disk_state(paths))

    def current(self) -> tuple[PolicyFile, ...]:
        """The system files in force now: the same tuple while nothing changed on disk (one
        `stat` per file and directory), a freshly loaded one after an edit that loads, the
        last good one after an edit that does not (said once per state of the files: the
        next decision sees the same state and stays quiet until the files change again)."""
        now = self._now
        if not self.live:
            return now[2]
        error: InputError | None = None
        sources: PolicySpec = None
        try:
            sources = self._sources()
            state: Hashable = self._state(sources)
        except InputError as exc:  # /etc/taps-post/policy.d became something else
            state, error = ("discovery", tuple(exc.diagnostics)), exc
        if state == now[0]:
            return now[2]
        with self._lock:
            now = self._now
            if state == now[0]:  # another thread took this very state meanwhile
                return now[2]
            if error is None:
                try:
                    self._now = (state, sources, load_layer(sources, "system"))
                except InputError as exc:
                    error = exc
            if error is not None:
                self._now = (state, now[1], now[2])
            now = self._now
        if error is not None:
            _log().warning("system policy edit not applied; the last good system policy "
                         "stays in force:\n%s", "\n".join(str(d) for d in error.diagnostics))
        else:
            _log().info("system policy loaded again: %s",
                      ", ".join(f.source for f in now[2]) or "no files")
        return now[2]


class PolicyContext:
    """System, app and carrier policy layers, loaded and checked.

    It exists so that loading (YAML, validation, compiling matchers) happens once and every
    later decision only matches and resolves. `system=None` means the discovered system layer;
    `system=[]` means none at all. A system layer read from files follows their edits
    (Rule 3); the app and carrier layers are what the application gave.
    """

    def __init__(
        self,
        *,
        system: PolicySpec = None,
        app: PolicySpec = None,
        carrier: PolicySpec = None,
        app_name: str | None = None,
    ) -> None:
        system_problems: list[Diagnostic] = []
        problems: list[Diagnostic] = []
        layer: _SystemLayer | None = None
        try:
            layer = _SystemLayer(system)
        except InputError as exc:
            system_problems.extend(exc.diagnostics)
        rest: list[PolicyFile] = []
        for name, spec in (("app", app), ("carrier", carrier)):
            try:
                rest.extend(load_layer(spec, name))
            except InputError as exc:
                problems.extend(exc.diagnostics)
        if layer is None:
            raise SystemPolicyError(system_problems + problems)
        if problems:
            raise InputError(problems)
        self._bind(app_name, layer, tuple(rest))

    def _bind(self, app_name: str | None, layer: _SystemLayer,
              rest: tuple[PolicyFile, ...]) -> None:
        self.app_name = app_name
        self._system = layer
        self._rest = rest
        self._snap = _snapshot(app_name, layer.files, rest)
        self._pin = threading.local() if layer.live else None
        self._frozen: tuple[_Snapshot, PolicyContext] | None = None

    def _view(self) -> _Snapshot:
        """Move on to the newest snapshot (Rule 3) and pin it for this thread (Rule 4)."""
        pin = self._pin
        if pin is None:
            return self._snap
        system = self._system.current()
        snap = self._snap
        if snap.system is not system:
            snap = self._snap = _snapshot(self.app_name, system, self._rest)
        pin.snap = snap
        return snap

    def _seen(self) -> _Snapshot:
        """The snapshot this thread last moved to (the newest, if it never did)."""
        pin = self._pin
        if pin is None:
            return self._snap
        snap: _Snapshot | None = getattr(pin, "snap", None)
        return snap if snap is not None else self._view()

    def current(self) -> PolicyContext:
        """The policy in force now, as a context that never changes: take it once per
        decision, and everything derived from it (the decision, a plan cached under its
        fingerprint) agrees on one policy. A context without a live layer is its own."""
        if self._pin is None:
            return self
        snap = self._view()
        frozen = self._frozen
        if frozen is not None and frozen[0] is snap:
            return frozen[1]
        clone = object.__new__(PolicyContext)
        clone.app_name = self.app_name
        clone._system = _SystemLayer.fixed(snap.system)
        clone._rest = self._rest
        clone._snap = snap
        clone._pin = None
        clone._frozen = None
        self._frozen = (snap, clone)
        return clone

    @property
    def files(self) -> tuple[PolicyFile, ...]:
        """Every loaded document, system layer first, then app, then carrier."""
        return self._seen().files

    @property
    def fingerprint(self) -> Hashable:
        """Equal for two contexts built from equal inputs (application name, and the same
        documents with the same content in the same layers and order), different otherwise:
        a cache of anything derived from the policy can key on it instead of on the object.
        It changes when an edit of the system files takes effect (it checks them first)."""
        return self._view().fingerprint

    @property
    def live(self) -> bool:
        """Whether the system layer follows edits of its files (Rule 3)."""
        return self._pin is not None

    def with_carrier(self, carrier: PolicySpec) -> PolicyContext:
        """A copy with one more carrier layer (per-call policy), the others shared (a live
        system layer too: the copy follows the same files)."""
        extra = load_layer(carrier, "carrier")
        clone = object.__new__(PolicyContext)
        layer = self._system
        if layer.live:
            layer.current()
        clone._bind(self.app_name, layer, self._rest + extra)
        return clone

    def resolve_for(self, subject: Subject) -> Resolution:
        """Match every rule against `subject` and resolve what matched, memoised on which
        rules matched and the kind: requests that match the same rules share one resolution."""
        shared = self._view().shared
        rules = shared.rules
        kind = subject.kind
        hits = shared.index.hits(subject)
        key = (kind, *hits)
        memo = shared.resolutions
        found = memo.get(key)
        if found is not None:
            return found
        matched = tuple(rules[i] for i in hits)
        effective, conflicts = resolve([s for _f, r in matched for s in r.statements], kind)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        found = memo[key] = Resolution(matched, MappingProxyType(effective),
                                       tuple(conflicts), {})
        return found

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        """Every loaded file's warnings (problems that do not stop the policy applying)."""
        return self._seen().shared.warnings

    @property
    def interface_facts(self) -> tuple[InterfaceFact, ...]:
        """The system layer's `interfaces:` facts, in the order they apply (each may refine
        what the ones before it set).

        Within a file, later entries refine earlier ones. Between files, as between rules, the
        alphabetically first document name wins, whatever order the files were given in: its
        facts come last."""
        return self._seen().shared.facts

    def __repr__(self) -> str:
        layers = ", ".join(f"{f.layer}:{f.source}" for f in self._seen().files)
        return f"<PolicyContext app_name={self.app_name!r} [{layers}]>"


def _interface_facts(files: tuple[PolicyFile, ...]) -> tuple[InterfaceFact, ...]:
    ordered = sorted((f for f in files if f.layer == "system" and f.interfaces),
                     key=lambda f: (f.name, f.source, repr(f.interfaces)), reverse=True)
    return tuple(fact for f in ordered for fact, _src in f.interfaces)
