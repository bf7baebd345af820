"""Renderers of a Decision for people: a text tree (winner marked) and Graphviz DOT.

Rule 1: renderers read `Decision` only; they never recompute anything, so the text, the
JSON and the DOT of one decision cannot disagree.
Rule 2: the resolution block (passes, service endpoints, attempt delay, DANE, ECH) says only
what is worth a line (docs/explain.md, "The resolution block"): an IP literal or a snapshot
whose answers were all known at once, with no SVCB/HTTPS records, no delay measured from
history and no TLSA answer, prints none of it, so simple explanations stay as short as
before. The JSON carries every field whatever the text leaves out.
Rule 3: a rendezvous target (decide Rule 13) has no remote address: its tree lists the ICE
host candidates (`#1  host 198.18.0.2`, a wildcard shown as the family it stands for), and a
`rendezvous` block says which interfaces and addresses gather host candidates, the STUN and
TURN servers and the relay preference with the statements that set them, and, once the
runtime attached what ICE did (`Decision.rendezvous`), the role, both sides' candidates,
the judged pairs with the nominated one marked, what policy dropped and how long it took.
Credentials never reach a renderer: a TURN URL is a `Secret` that prints redacted
(policy/registry.py Rule 4).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..policy.load import Statement
from ..policy.resolve import Effective, show_value
from .decision import Candidate, Decision, Exclusion, IceCandidate, IcePair, ServiceEndpoint
from .service import FALLBACK_PRIORITY

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

    out.extend(_resolution(decision))
    out.append("tree")
    out.extend(_tree(decision))
    out.extend(_rendezvous(decision))
    out.extend(_multipath(decision))
    if decision.warnings:
        out.append("warnings")
        out.extend(f"  - {w}" for w in decision.warnings)
    out.append(_verdict(decision))
    return "\n".join(out) + "\n"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _is_rendezvous(decision: Decision) -> bool:
    return decision.request.scheme == "rendezvous"


def _verdict(decision: Decision) -> str:
    if decision.outcome == "ok" and _is_rendezvous(decision):
        hosts = _host_candidates(decision)
        text = (f"outcome  ok: {_n(sum(len(a) for a in hosts.values()), 'host candidate')} on "
                f"{_n(len(hosts), 'interface')}; ICE checks pairs from all of them at once")
        selected = decision.rendezvous.selected if decision.rendezvous is not None else None
        if selected is not None:
            text += (f"; nominated {_cand(selected.local)} ({selected.local.kind}) -> "
                     f"{_cand(selected.remote)} ({selected.remote.kind})")
        return text
    if decision.outcome == "ok":
        w = decision.candidates[0]
        return (f"outcome  ok: {_n(len(decision.candidates), 'candidate')}; first: {w.interface} "
                f"{w.stack} {_addr(w.remote_address)}:{w.remote_port}")
    if decision.outcome == "policy_prohibited":
        return "outcome  policy_prohibited: the layers contradict each other (see conflicts)"
    return "outcome  no_candidates: every branch was excluded (see the tree)"


def _addr(a: str) -> str:
    return f"[{a}]" if ":" in a else a


_FAMILY_OF_WILDCARD = {"::": "ipv6", "0.0.0.0": "ipv4"}


def _remote(decision: Decision, address: str) -> str:
    """A remote address as the tree shows it: a rendezvous wildcard is the family it stands
    for (every local address of it: Rule 3)."""
    if _is_rendezvous(decision) and address in _FAMILY_OF_WILDCARD:
        return _FAMILY_OF_WILDCARD[address]
    return _addr(address)


def _ms(value: float) -> str:
    return f"{value:g} ms"


def _many_passes(decision: Decision) -> bool:
    """Do the passes say more than "everything was known at once" (Rule 2)?"""
    return len(decision.passes) > 1 or any(p.at_ms > 0 for p in decision.passes)


def _dane_worth_a_line(decision: Decision) -> bool:
    d = decision.dane
    return d is not None and (d.mode == "require" or d.records > 0 or d.validated)


def _ech_value(decision: Decision) -> str:
    eff = decision.properties.get("security.ech")
    return str(eff.value) if eff is not None else "prefer"


def _resolution(decision: Decision) -> list[str]:
    """The resolution block: the passes with their answers, the service endpoints, the
    attempt delay and where it came from, DANE and ECH; only what is worth a line (Rule 2)."""
    if decision.outcome == "policy_prohibited":
        return []
    delay = decision.attempt_delay
    ech = [e for e in decision.services if e.ech]
    parts = (_many_passes(decision), bool(decision.services),
             delay is not None and delay.source == "history", _dane_worth_a_line(decision),
             bool(ech) or _ech_value(decision) == "require")
    if not any(parts):
        return []
    out = ["resolution"]
    if parts[0]:
        for p in decision.passes:
            out.append(f"  pass {p.number}  at {_ms(p.at_ms)}  {p.trigger}")
            out.extend(f"    {answer}" for answer in p.answers)
    if decision.services:
        first = decision.services[0]
        chain = ""
        if first.alias_chain:
            chain = f" (alias {' -> '.join((first.name, *first.alias_chain))})"
        out.append(f"  services of {first.name}{chain}")
        width = max(len(_endpoint(e)) for e in decision.services)
        out.extend(f"    {_priority(e):<11} {_endpoint(e):<{width}}  {_offer(e)}"
                   for e in decision.services)
    if delay is not None:
        out.append(f"  attempt delay  {delay.ms} ms from {delay.source}: {delay.reason}")
    if decision.dane is not None and _dane_worth_a_line(decision):
        d = decision.dane  # its reason names the records, the validation and the verdict
        out.append(f"  dane           {d.mode}  {d.name or '-'}: {d.reason}")
    if parts[4]:
        value = _ech_value(decision)
        who = _ech_owners(ech)
        what = ("candidates whose stack cannot send ECH are excluded" if value == "require"
                else "no stack here can send ECH, the server name goes in clear")
        if _is_rendezvous(decision):  # decide Rule 13: no name to hide, none is sent
            what = "not used by a rendezvous: the peer is met by identity, no server name is sent"
        out.append(f"  ech            {who}; security.ech {value}: {what}")
    return out


def _record_owner(e: ServiceEndpoint) -> str:
    """The name whose records offered `e`: the last AliasMode target, or the queried owner."""
    return e.alias_chain[-1] if e.alias_chain else e.name


def _ech_owners(ech: list[ServiceEndpoint]) -> str:
    """Who publishes ECH, by the owner of the record that carries it (the name `dig` shows
    it under, and the name decide()'s ECH warning uses), with the record's target when it is
    another name: one host per record, so the ech line and the warning cannot disagree."""
    if not ech:
        return "no target publishes ECH"
    by_owner: dict[str, dict[str, None]] = {}
    for e in ech:
        owner = _record_owner(e)
        targets = by_owner.setdefault(owner, {})
        if e.target != owner:
            targets[e.target] = None
    parts = [owner + (f" (for {', '.join(targets)})" if targets else "")
             for owner, targets in by_owner.items()]
    return f"{', '.join(parts)} publish{'es' if len(parts) == 1 else ''} ECH"


def _priority(e: ServiceEndpoint) -> str:
    return "fallback" if e.priority >= FALLBACK_PRIORITY else f"priority {e.priority}"


def _endpoint(e: ServiceEndpoint) -> str:
    return f"{e.target}:{e.port}"


def _offer(e: ServiceEndpoint) -> str:
    bits = []
    if e.alpn:
        bits.append(f"alpn {','.join(e.alpn)}")
    bits.append(f"stacks {','.join(e.stacks) or 'none'}")
    if e.ech:
        bits.append("ech")
    text = "  ".join(bits)
    return f"{text}  {e.reason}" if e.reason else text


def _notes(decision: Decision, c: Candidate) -> str:
    """What the tree adds to a candidate's line: its pass when there are several, the
    service record it came from, a remembered failure, an MPTCP fallback."""
    notes = []
    if len(decision.passes) > 1:
        notes.append(f"pass {c.resolution_pass}")
    if decision.services:
        prio = c.key.service_priority
        notes.append("fallback endpoint" if prio >= FALLBACK_PRIORITY else
                     f"service priority {prio}")
    if c.key.recent_failure:  # demoted within its pass (RankKey.recent_failure), not last
        notes.append("recent failure: ranked after its pass's candidates without one"
                     if len(decision.passes) > 1 else
                     "recent failure: ranked after the candidates without one")
    if c.key.to_dict()["history"] == "fallback":
        notes.append("history: peer fell back to TCP")
    return "".join(f"  {n}" for n in notes)


def _tree(decision: Decision) -> list[str]:
    if decision.outcome == "policy_prohibited":
        return ["  (not built: the request failed at a policy conflict)"]
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

    kinds = {i.name: i for i in decision.interfaces}
    names = list(dict.fromkeys([*kinds, *by_path, *path_excl, *pair_excl]))
    rendezvous = _is_rendezvous(decision)
    first = decision.candidates[0] if decision.candidates and not rendezvous else None
    for name in names:
        iface = kinds.get(name)
        facts = ""
        if iface is not None:
            bits = [iface.type] + (["metered"] if iface.metered else []) + (
                [f"cost {iface.cost}"] if iface.cost else [])
            facts = f" ({', '.join(bits)})"
        if name in path_excl:
            lines.append(f"  x {name}{facts}  {_why(path_excl[name])}")
            continue
        lines.append(f"  {name}{facts}")
        for stack, cands in by_path.get(name, {}).items():
            lines.append(f"    {stack}")
            for c in cands:
                star = "*" if c is first else " "
                if rendezvous:  # Rule 3: no remote address, no start time
                    lines.append(f"       #{c.rank:<3} host {c.local_address}")
                    continue
                note = _notes(decision, c)
                lines.append(f"     {star} #{c.rank:<3} {_addr(c.remote_address)}:{c.remote_port}"
                             f" from {c.local_address}  start {c.start_ms} ms{note}")
        for e in pair_excl.get(name, []):
            lines.append(f"    x {_remote(decision, e.remote_address or '')}  {_why(e)}")
        if name not in by_path and name not in pair_excl:
            lines.append("    (no candidates: every stack or endpoint was excluded below)")
    for e in stack_excl:
        lines.append(f"  x stack {e.stack}  {_why(e)}")
    for e in endpoint_excl:
        if rendezvous:
            lines.append(f"  x {_remote(decision, e.remote_address or '')} host candidates  "
                         f"{_why(e)}")
        else:
            lines.append(f"  x endpoint {_addr(e.remote_address or '')}  {_why(e)}")
    if not lines:
        lines.append("  (empty: no interfaces, or the decision stopped at a conflict)")
    return lines


RELAY = {
    "prohibit": "no relayed candidate, ours or the peer's",
    "require": "only our relayed candidates: no host or server-reflexive candidate is offered",
    "prefer": "relayed candidates are checked and nominated first",
    "avoid": "relayed pairs last, held back 1 s while a direct pair may succeed",
    "no_preference": "relayed pairs last, held back 1 s while a direct pair may succeed",
}
"""What each `rendezvous.relay` value does, as the rendezvous block says it."""

ROLES = {
    "controlling": "this end nominates the pair and opens the QUIC connection",
    "controlled": "the peer nominates the pair and opens the QUIC connection",
}


def _host_candidates(decision: Decision) -> dict[str, list[str]]:
    """Interface -> its local addresses that gather ICE host candidates, in candidate order
    (the order the runtime gathers them in)."""
    out: dict[str, list[str]] = {}
    for c in decision.candidates:
        seen = out.setdefault(c.interface, [])
        if c.local_address not in seen:
            seen.append(c.local_address)
    return out


def _servers(value: Any) -> str:
    """A server list as the block shows it; a TURN URL is a Secret, so str() is redacted."""
    return ", ".join(str(v) for v in value) if value else "none"


def _rendezvous(decision: Decision) -> list[str]:
    """The rendezvous block (Rule 3); nothing for other targets or at a policy conflict."""
    if not _is_rendezvous(decision) or decision.outcome == "policy_prohibited":
        return []
    out = ["rendezvous", f"  peer          {decision.request.host}"]
    hosts = _host_candidates(decision)
    if hosts:
        out.append("  host candidates")
        width = max(len(name) for name in hosts)
        out.extend(f"    {name:<{width}}  {', '.join(addrs)}" for name, addrs in hosts.items())
    else:
        out.append("  host candidates  none (see the tree)")
    props = decision.properties
    for key, label, empty in (
            ("rendezvous.stun", "stun", "none: no server-reflexive candidates"),
            ("rendezvous.turn", "turn", "none: no relayed candidates")):
        eff = props.get(key)
        if eff is not None:
            text = _servers(eff.value) if eff.value else empty
            out.append(f"  {label:<13} {text}  {_who(eff.statement)}")
    relay = props.get("rendezvous.relay")
    if relay is not None:
        value = show_value(relay.value)
        what = RELAY.get(value, "")
        if value == "prohibit" and decision.value("rendezvous.turn"):
            what += " (the rendezvous.turn servers are not used)"
        mark = " [enforced]" if relay.enforced else ""
        out.append(f"  relay         {value:<13} {_who(relay.statement)}{mark}: {what}")
    wait = props.get("rendezvous.peerWait")
    if wait is not None:
        out.append(f"  peer wait     {_ms(wait.value):<13} {_who(wait.statement)}")
    out.extend(_ice(decision))
    return out


def _cand(c: IceCandidate) -> str:
    return f"{_addr(c.address)}:{c.port}"


def _ice_line(c: IceCandidate) -> str:
    where = f"  on {c.interface}" if c.interface else ""
    base = f"  from {c.base}" if c.base else ""
    return f"{c.kind:<6} {_cand(c)}{where}{base}  priority {c.priority}"


def _pair_line(p: IcePair) -> str:
    star = "*" if p.nominated else " "
    note = "  nominated" if p.nominated else ""
    return (f"    {star} {_cand(p.local)} ({p.local.kind}) -> {_cand(p.remote)} "
            f"({p.remote.kind})  {p.state}{note}")


def _ice(decision: Decision) -> list[str]:
    """What ICE did, once the runtime attached it (`Decision.rendezvous`)."""
    report = decision.rendezvous
    if report is None:
        return []
    out = [f"  role          {report.role}: {ROLES.get(report.role, '')}".rstrip(": ")]
    if report.peer_fingerprint:
        out.append(f"  fingerprint   {report.peer_fingerprint} (the peer's certificate)")
    if report.elapsed_ms is not None:
        out.append(f"  elapsed       {report.elapsed_ms:g} ms to the nominated pair")
    if report.stun or report.turn:
        out.append(f"  servers used  {', '.join((*report.stun, *report.turn))}")
    for label, cands in (("ours", report.local), ("the peer's", report.remote)):
        out.append(f"  {label}" + ("" if cands else "  none"))
        out.extend(f"    {_ice_line(c)}" for c in cands)
    selected = report.selected
    out.append("  pairs" + ("" if report.pairs else "  none checked"))
    out.extend(_pair_line(p) for p in report.pairs)
    if report.pairs and selected is None:
        out.append("    (no pair was nominated)")
    if report.dropped:
        out.append("  dropped")
        out.extend(f"    - {d}" for d in report.dropped)
    return out


PATH_MANAGERS = {
    "kernel": "roles are reported, not enforced: the in-kernel path manager opens subflows "
              "as `ip mptcp endpoint` says",
    "userspace": "roles are enforced: the library opens a subflow on each interface below, "
                 "with its backup flag, and on no other",
    "disabled": "MPTCP is off in this namespace (net.mptcp.enabled = 0): an MPTCP attempt "
                "fails at once and the next candidate starts",
    "unknown": "the snapshot does not say (`mptcp: {pathManager: ...}`)",
}
"""What each path manager means for the roles, as the Multipath block says it."""


def _multipath(decision: Decision) -> list[str]:
    """The Multipath block: policy, path manager, and each subflow interface with its role
    and why (docs/explain.md, "The Multipath block"); nothing while multipath is disabled."""
    mode = decision.properties.get("multipath")
    if mode is None or mode.value == "disabled" or decision.outcome == "policy_prohibited":
        return []
    policy = decision.properties["multipathPolicy"]
    manager = decision.path_manager or "unknown"
    out = ["multipath",
           f"  mode          {mode.value:<11} {_who(mode.statement)}",
           f"  policy        {policy.value:<11} {_who(policy.statement)}",
           f"  path manager  {manager:<11} {PATH_MANAGERS.get(manager, '')}".rstrip()]
    if not decision.opens_subflows:
        out.append("  subflows      none: passive: this end opens no subflow, it accepts the "
                   "peer's")
    elif not decision.subflows:
        out.append("  subflows      none: no multipath-capable candidate (see the tree)")
    else:
        out.append("  subflows")
        width = max(len(s.interface) for s in decision.subflows)
        for s in decision.subflows:
            out.append(f"    {s.interface:<{width}}  {s.role:<7}  from "
                       f"{', '.join(s.addresses)}  {s.reason}")
    never = [e for e in decision.excluded
             if e.interface and not e.stack and not e.remote_address]
    if never:
        out.append("  no subflow on")
        width = max(len(e.interface or "") for e in never)
        out.extend(f"    {e.interface:<{width}}  {_why(e)}" for e in never)
    return out


def _q(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def render_dot(decision: Decision) -> str:
    """The Path -> Stack -> Endpoint tree; excluded branches grey and dashed, winner bold."""
    r = decision.request
    out = ["digraph decision {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];',
           f"  root [label={_q(r.target)}, shape=oval];"]
    seen: set[str] = set()
    grey = ", style=dashed, color=grey50, fontcolor=grey40"

    def node(ident: str, label: str, attrs: str = "") -> None:
        if ident not in seen:
            seen.add(ident)
            out.append(f"  {_q(ident)} [label={_q(label)}{attrs}];")

    def edge(a: str, b: str, attrs: str = "") -> None:
        line = f"  {_q(a)} -> {_q(b)}{f' [{attrs}]' if attrs else ''};"
        if line not in seen:
            seen.add(line)
            out.append(line)

    summary = _resolution(decision)
    if summary:  # Rule 2: the same lines as the text's resolution block, as one note
        node("resolution", "\n".join(line.strip() for line in summary[1:]),
             ", shape=note")
        edge("root", "resolution", "style=dotted, arrowhead=none")
    meeting = _rendezvous(decision)
    if meeting:  # Rule 3: the text's rendezvous block, as one note
        node("rendezvous", "\n".join(line.strip() for line in meeting[1:]), ", shape=note")
        edge("root", "rendezvous", "style=dotted, arrowhead=none")
    rendezvous = _is_rendezvous(decision)
    path_excl = {e.interface for e in decision.excluded
                 if e.interface and not e.stack and not e.remote_address}
    roles = {s.interface: s.role for s in decision.subflows}
    for iface in decision.interfaces:
        if iface.name not in path_excl:
            role = f"\nsubflow {roles[iface.name]}" if iface.name in roles else ""
            node(f"if:{iface.name}", f"{iface.name}\n{iface.type}{role}")
            edge("root", f"if:{iface.name}")
    first = decision.candidates[0] if decision.candidates and not rendezvous else None
    for c in decision.candidates:
        p, s = f"if:{c.interface}", f"st:{c.interface}:{c.stack}"
        leaf = f"ep:{c.interface}:{c.stack}:{c.remote_address}:{c.remote_port}"
        node(p, c.interface)
        node(s, c.stack)
        if rendezvous:
            leaf = f"{leaf}:{c.local_address}"
            node(leaf, f"#{c.rank} host {c.local_address}")
        else:
            bold = ", style=bold, penwidth=2" if c is first else ""
            extra = "".join(f"\n{n.strip()}" for n in _notes(decision, c).split("  ") if n)
            node(leaf, f"#{c.rank} {_addr(c.remote_address)}:{c.remote_port}\n"
                       f"start {c.start_ms} ms{extra}", bold)
        edge("root", p)
        edge(p, s)
        edge(s, leaf)
    for i, e in enumerate(decision.excluded):
        ident = f"x:{i}"
        what = " ".join(x for x in (e.interface if not e.remote_address else None,
                                    e.stack and f"stack {e.stack}",
                                    e.remote_address and _remote(decision, e.remote_address))
                         if x)
        node(ident, f"{what}\n{e.outcome} {e.property or ''}".rstrip(), grey)
        parent = "root"
        if e.interface and e.remote_address:
            parent = f"if:{e.interface}"
            node(parent, e.interface)
            edge("root", parent)
        edge(parent, ident, "style=dashed, color=grey50")
    out.append("}")
    return "\n".join(out) + "\n"
