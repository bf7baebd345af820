"""PolicyContext: the stack of policy layers bound to an application (and later an Association).

Rule 1: a PolicyContext is built whole or not at all. Every layer is loaded and checked in
the constructor, so holding a PolicyContext means holding a policy that can be applied.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..decision.environment import Interface
from ..diagnostics import Diagnostic, InputError
from .load import LoadedRule, PolicyFile, PolicySpec, discover_system_sources, load_layer
from .match import Subject, glob_regex

__all__ = ["PolicyContext"]


class PolicyContext:
    """System, app and carrier policy layers, loaded and checked.

    `system=None` means the discovered system layer; `system=[]` means none at all.
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
        self.app_name = app_name
        self.files: tuple[PolicyFile, ...] = (
            layers["system"] + layers["app"] + layers["carrier"])
        self._resolved: dict[tuple[Any, ...], Any] = {}

    def with_carrier(self, carrier: PolicySpec) -> PolicyContext:
        """A copy with one more carrier layer (per-call policy), the others shared."""
        extra = load_layer(carrier, "carrier")
        clone = object.__new__(PolicyContext)
        clone.app_name = self.app_name
        clone.files = self.files + extra
        clone._resolved = {}
        return clone

    def resolved(self, matched: list[tuple[PolicyFile, LoadedRule]], kind: str) -> Any:
        """resolve() of the matched rules' statements, memoised: it depends only on which
        of *this* context's rules matched (they live as long as the context) and the kind.
        Returns the shared (effective, conflicts, memo) triple; callers must not mutate
        `effective`; `memo` holds derived per-resolution results (decide's stack verdicts)."""
        key = (kind, *(id(r) for _f, r in matched))
        hit = self._resolved.get(key)
        if hit is None:
            from .resolve import resolve

            effective, conflicts = resolve([s for _f, r in matched for s in r.statements], kind)
            if len(self._resolved) >= 256:
                self._resolved.clear()
            hit = self._resolved[key] = (effective, tuple(conflicts), {})
        return hit

    @property
    def warnings(self) -> list[Diagnostic]:
        return [w for f in self.files for w in f.warnings]

    def matching(self, subject: Subject) -> list[tuple[PolicyFile, LoadedRule]]:
        return [(f, r) for f in self.files for r in f.rules if r.matcher.matches(subject)]

    def apply_interface_facts(self, interfaces: tuple[Interface, ...]) -> tuple[Interface, ...]:
        """System-layer `interfaces:` facts override discovered ones.

        Within a file, later entries refine earlier ones. Between files, as between rules, the
        alphabetically first document name wins, whatever order the files were given in.
        """
        files = sorted((f for f in self.files if f.layer == "system" and f.interfaces),
                       key=lambda f: (f.name, f.source, repr(f.interfaces)), reverse=True)
        facts = [fact for f in files for fact, _src in f.interfaces]
        if not facts:
            return interfaces
        out: list[Interface] = []
        for iface in interfaces:
            for fact in facts:
                m = fact.match
                if m.name is not None and not glob_regex(m.name).match(iface.name):
                    continue
                if m.type is not None and m.type != iface.type:
                    continue
                changes: dict[str, Any] = {
                    k: v for k, v in (("type", fact.type), ("metered", fact.metered),
                                      ("cost", fact.cost), ("pvd", fact.pvd)) if v is not None}
                iface = replace(iface, **changes)
            out.append(iface)
        return tuple(out)

    def __repr__(self) -> str:
        layers = ", ".join(f"{f.layer}:{f.source}" for f in self.files)
        return f"<PolicyContext app_name={self.app_name!r} [{layers}]>"
