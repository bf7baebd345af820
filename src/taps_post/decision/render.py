"""Renderers of a Decision for people: a text tree (winner marked) and Graphviz DOT.

Rule 1: renderers read `Decision` only; they never recompute anything, so the text, the
JSON and the DOT of one decision cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from ..policy.load import Statement
from ..policy.resolve import Effective, show_value
from .decision import Candidate, Decision, Exclusion

__all__ = ["render_dot", "render_properties", "render_text"]


def _who(s: Statement) -> str:
    if s.rule is None:
        return "default"
    via = f" via {s.via}" if s.via else ""
    return f"{s.layer} rule {s.rule}{via} ({s.source})"


def _why(e: Exclusion) -> str:
    text = e.outcome
    if e.property:
        text += f" by {e.property}"
    if e.rule:
        text += f": {e.layer} rule {e.rule} ({e.source})"
    elif e.layer == "defaults":
        text += ": built-in default"
    if e.detail:
        text += f"; {e.detail}"
    return text


def render_properties(decision: Decision, *, everything: bool = False) -> list[str]:
    """`ssh -G`-style lines: key, effective value, and where it came from."""
    lines: list[str] = []
    width = max((len(k) for k in decision.properties), default=10)
    for key, eff in decision.properties.items():
        if not everything and eff.statement.rule is None and not eff.others:
            continue
        lines.extend(_property_lines(key, eff, width))
    return lines


def _property_lines(key: str, eff: Effective, width: int) -> list[str]:
    mark = " [enforced]" if eff.enforced else ""
    out = [f"{key:<{width}}  {show_value(eff.value):<13} {_who(eff.statement)}{mark}"]
    for s, outcome in eff.others:
        if outcome == "overridden" and s.rule is None:
            continue
        out.append(f"{'':<{width}}    {outcome:<10} {show_value(s.value):<13} {_who(s)}")
    return out


def render_text(decision: Decision) -> str:
    r = decision.request
    out: list[str] = []
    who = f", app {r.app}" if r.app else ""
    out.append(f"request  {r.target}  ({r.scheme} {r.hostport}, kind {r.kind}{who})")
    if decision.files:
        out.append("layers")
        for f in decision.files:
            hits = sum(1 for rule in f.rules if (f.source, rule.id) in decision.matched)
            out.append(f"  {f.layer:<8} {f.source}  ({_n(len(f.rules), 'rule')}, {hits} matched)")
    else:
        out.append("layers   none (built-in defaults only)")
    props = render_properties(decision)
    out.append("properties set by policy" + ("" if props else "  none"))
    out.extend("  " + line for line in props)
    if decision.conflicts:
        out.append("conflicts")
        out.extend(f"  ! {c.reason}" for c in decision.conflicts)

    out.append("tree")
    out.extend(_tree(decision))
    if decision.warnings:
        out.append("warnings")
        out.extend(f"  - {w}" for w in decision.warnings)
    out.append(_verdict(decision))
    return "\n".join(out) + "\n"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _verdict(decision: Decision) -> str:
    if decision.outcome == "ok":
        w = decision.candidates[0]
        return (f"outcome  ok: {len(decision.candidates)} candidates; first: {w.interface} "
                f"{w.stack} {_addr(w.remote_address)}:{w.remote_port}")
    if decision.outcome == "policy_prohibited":
        return "outcome  policy_prohibited: the layers contradict each other (see conflicts)"
    return "outcome  no_candidates: every branch was excluded (see the tree)"


def _addr(a: str) -> str:
    return f"[{a}]" if ":" in a else a


def _tree(decision: Decision) -> list[str]:
    lines: list[str] = []
    by_path: dict[str, dict[str, list[Candidate]]] = defaultdict(lambda: defaultdict(list))
    for c in decision.candidates:
        by_path[c.interface][c.stack].append(c)
    path_excl = {e.interface: e for e in decision.excluded
                 if e.interface and not e.stack and not e.remote_address}
    pair_excl: dict[str, list[Exclusion]] = defaultdict(list)
    for e in decision.excluded:
        if e.interface and e.remote_address:
            pair_excl[e.interface].append(e)
    stack_excl = [e for e in decision.excluded if e.stack and not e.interface]
    endpoint_excl = [e for e in decision.excluded if e.remote_address and not e.interface]

    names = list(dict.fromkeys([*by_path, *path_excl, *pair_excl]))
    first = decision.candidates[0] if decision.candidates else None
    for name in names:
        if name in path_excl:
            lines.append(f"  x {name}  {_why(path_excl[name])}")
            continue
        lines.append(f"  {name}")
        for stack, cands in by_path.get(name, {}).items():
            lines.append(f"    {stack}")
            for c in cands:
                star = "*" if c is first else " "
                lines.append(f"     {star} #{c.rank:<3} {_addr(c.remote_address)}:{c.remote_port}"
                             f" from {c.local_address}  start {c.start_ms} ms")
        for e in pair_excl.get(name, []):
            lines.append(f"    x {e.remote_address}  {_why(e)}")
    for e in stack_excl:
        lines.append(f"  x stack {e.stack}  {_why(e)}")
    for e in endpoint_excl:
        lines.append(f"  x endpoint {e.remote_address}  {_why(e)}")
    if not lines:
        lines.append("  (empty: no interfaces, or the decision stopped at a conflict)")
    return lines


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(decision: Decision) -> str:
    """The Path -> Stack -> Endpoint tree; excluded branches grey and dashed, winner bold."""
    r = decision.request
    out = ["digraph decision {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];',
           f"  root [label={_q(r.target)}, shape=oval];"]
    seen: set[str] = set()

    def node(ident: str, label: str, attrs: str = "") -> Iterable[str]:
        if ident in seen:
            return []
        seen.add(ident)
        return [f"  {_q(ident)} [label={_q(label)}{attrs}];"]

    first = decision.candidates[0] if decision.candidates else None
    for c in decision.candidates:
        p, s = f"if:{c.interface}", f"st:{c.interface}:{c.stack}"
        leaf = f"ep:{c.interface}:{c.stack}:{c.remote_address}"
        out.extend(node(p, c.interface))
        out.extend(node(s, c.stack))
        bold = ", style=bold, penwidth=2" if c is first else ""
        out.extend(node(leaf, f"#{c.rank} {c.remote_address}:{c.remote_port}\\n"
                              f"start {c.start_ms} ms", bold))
        for edge in ((("root", p)), (p, s), (s, leaf)):
            line = f"  {_q(edge[0])} -> {_q(edge[1])};"
            if line not in seen:
                seen.add(line)
                out.append(line)
    for i, e in enumerate(decision.excluded):
        ident = f"x:{i}"
        label = " ".join(x for x in (e.interface, e.stack, e.remote_address) if x)
        out.extend(node(ident, f"{label}\\n{e.outcome} {e.property or ''}".rstrip(),
                        ", style=dashed, color=grey50, fontcolor=grey40"))
        parent = "root"
        if e.interface and (e.stack or e.remote_address) and f"if:{e.interface}" in seen:
            parent = f"if:{e.interface}"
        out.append(f"  {_q(parent)} -> {_q(ident)} [style=dashed, color=grey50];")
    out.append("}")
    return "\n".join(out) + "\n"
