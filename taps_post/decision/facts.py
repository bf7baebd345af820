"""Interface facts: what the system layer states about interfaces, applied to what was found.

Rule 1: facts override discovery, never the other way round: discovery cannot tell a tethered
phone from a wired link, an administrator can (docs/policy-language.md, "Interface facts").
Rule 2: applying facts is a pure function of the facts and the interfaces, so the dry run, the
runtime and `taps-post interfaces --system` see the same classified interfaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..policy.match import glob_regex
from ..policy.model import InterfaceFact
from .environment import Interface

__all__ = ["apply_interface_facts"]


def apply_interface_facts(facts: Sequence[InterfaceFact],
                          interfaces: Sequence[Interface]) -> tuple[Interface, ...]:
    """`interfaces` with every matching fact applied, in order (a later fact refines what an
    earlier one set); `PolicyContext.interface_facts` gives the facts in that order."""
    if not facts:
        return tuple(interfaces)
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
