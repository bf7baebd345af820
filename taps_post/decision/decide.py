"""decide(): request + policy + environment -> Decision. Pure: no sockets, no clock, no DNS.

Rule 1: the tree is Path -> Stack -> Endpoint (RFC 9623 section 4.1). Each node is judged once
and a pruned node is reported once, at the level where it was pruned, with the property, rule
and file:line that pruned it. That keeps explain output proportional to the causes, not to the
product of interfaces x stacks x addresses.
Rule 2: ranking is one lexicographic key (`RankKey`), path before protocol, avoid only as a
tie-break, so two runs on the same input always produce the same order.
Rule 3: the MPTCP subflow plan (`Decision.subflows`) is derived from the same pruning and the
same ranking as the candidates, never judged separately: an interface a rule excludes can
never carry a subflow, because it has no candidate to derive one from. The primary under
`handover` is the best-ranked interface no path-level `avoid` matches, which is not always
the interface the race tries first: a `prefer` outranks an `avoid` on the same interface for
the race (path prefer hits sort before avoid hits), but an avoided interface only ever
carries a backup subflow.
Rule 4: `multipath: passive` on an end that opens its own connection (`initiate`, `source`)
plans no subflow: RFC 9622 passive means "accept the peer's subflows, open none", so the
plan is empty while the MPTCP stacks stay candidates. An accepting end (`listen`, `respond`,
`sink`) keeps its plan: it says which interfaces may take the peer's subflows.
Rule 5: the IPv4 addresses a dual-stack `::` listener adds to its plan obey `addressFamily.*`
like every other address: a prohibited (or not required) family never appears in the plan.
Rule 6: a "fallback" in the history (the peer answered an MPTCP SYN as plain TCP) withdraws
the multipath bonus from that stack for that remote and ranks its history after "no entry",
so the plain counterpart goes first without costing the MPTCP attempt again.
Rule 7: under the in-kernel path manager the kernel opens subflows from its own endpoints
(`ip mptcp endpoint`), not from the plan; an endpoint on an interface the policy excludes is
a warning, because the library cannot stop the kernel from using it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..policy import catalog
from ..policy.catalog import StackInfo
from ..policy.context import PolicyContext
from ..policy.load import Statement
from ..policy.match import glob_regex
from ..policy.registry import INTERFACE_TYPES, Pref, protocol_preferences
from ..policy.resolve import Effective
from .decision import Candidate, Decision, Exclusion, RankKey, SubflowPlan, opens_subflows
from .environment import Address, CacheEntry, Environment, Interface
from .facts import apply_interface_facts
from .request import Request

__all__ = ["decide"]

_PROTOCOL_PREFS = protocol_preferences()

Effectives = Mapping[str, Effective]


@dataclass(slots=True)
class _Node:
    """Soft-preference hits of a surviving path or stack node."""

    prefer: int = 0
    avoid: int = 0
    avoided: list[tuple[str, Statement]] = field(default_factory=list)
    """(key, statement) of each path-level avoid hit: an avoided interface carries MPTCP
    subflows only as backup, and explain names the rule."""

    def apply(self, pref: Pref, has: bool) -> str | None:
        """One preference on this node: the exclusion outcome of a hard filter, or None
        after counting a soft hit (RFC 9623: prohibit and require filter, prefer and avoid
        only rank)."""
        if has and pref is Pref.PROHIBIT:
            return "prohibited"
        if not has and pref is Pref.REQUIRE:
            return "required_missing"
        if has and pref is Pref.PREFER:
            self.prefer += 1
        elif has and pref is Pref.AVOID:
            self.avoid += 1
        return None


def decide(request: Request, policy: PolicyContext, env: Environment) -> Decision:
    """Rank every (interface, stack, remote address) the policy allows for `request`.

    One pure function of its three inputs, so a dry run on a snapshot and the runtime on the
    live machine cannot disagree, and the Decision can say why for every branch it prunes:
    the candidates the race will try, in order, and every exclusion with the rule and file
    line behind it (docs/explain.md). Conflicting enforced statements stop it before any
    candidate is built (`policy_prohibited`).
    """
    policy = policy.current()  # one snapshot of a live system layer for the whole decision
    resolution = policy.resolve_for(request)
    effective, conflicts, memo = resolution.effective, resolution.conflicts, resolution.memo
    matched = frozenset((f.source, r.id) for f, r in resolution.matched)
    warnings = [str(w) for w in policy.warnings]

    interfaces = apply_interface_facts(policy.interface_facts, env.interfaces)

    def finish(candidates: Sequence[Candidate], excluded: Sequence[Exclusion],
               outcome: str, subflows: Sequence[SubflowPlan] = ()) -> Decision:
        return Decision(request, policy.files, matched, effective, conflicts,
                        tuple(candidates), tuple(excluded), outcome, tuple(warnings),
                        interfaces, tuple(subflows), env.path_manager)

    if conflicts:
        return finish((), (), "policy_prohibited")

    excluded: list[Exclusion] = []

    # Endpoints: the remote addresses, in RFC 8305 interleaved order.
    if request.is_ip_literal:
        answers: tuple[str, ...] = (request.host,)
    else:
        answers = tuple(env.dns.get(request.host, ()))
        if not answers:
            warnings.append(f"{request.host!r} did not resolve to any address")
    endpoints = _interleave(answers, effective)
    endpoint_ok: list[tuple[int, str, str]] = []
    for order, (addr, family) in enumerate(endpoints):
        reason = _family_filter(effective, family, addr, request.port)
        if reason is not None:
            excluded.append(reason)
        else:
            endpoint_ok.append((order, addr, family))

    paths = [(iface, node) for iface in interfaces
             if (node := _judge_path(iface, effective, excluded)) is not None]
    # Stack verdicts depend only on the resolution, the scheme and the stack catalogue: once
    # per triple (the catalogue version keeps a verdict about an older stack set from serving).
    judged_key = ("stacks", request.scheme, catalog.version())
    judged = memo.get(judged_key)
    if judged is None:
        stack_excluded: list[Exclusion] = []
        allowed = catalog.schemes().get(request.scheme)
        judged = memo[judged_key] = (
            tuple((info.name, info.order, node, info.multipath_capable)
                  for info in catalog.infos()
                  if (node := _judge_stack(info, allowed, request, effective, stack_excluded))
                  is not None), tuple(stack_excluded))
    stacks, stack_exclusions = judged
    multipath_mode = effective["multipath"].value
    multipath_on = multipath_mode != "disabled"
    excluded.extend(stack_exclusions)

    temp_pref: Pref = effective["useTemporaryLocalAddress"].value
    temp_statement = effective["useTemporaryLocalAddress"].statement
    history = _history_index(env.cache, request.hostport)

    scored: list[tuple[RankKey, Interface, str, str, str, str]] = []
    for iface, pnode in paths:
        for order, addr, family in endpoint_ok:
            local = _local_address(iface, addr, family, temp_pref)
            if isinstance(local, str):
                excluded.append(Exclusion(iface.name, None, addr, request.port, "unreachable",
                                          detail=local))
                continue
            if local is None:
                outcome = ("required_missing" if temp_pref is Pref.REQUIRE else "prohibited")
                excluded.append(Exclusion.by(
                    temp_statement, outcome=outcome, interface=iface.name,
                    remote_address=addr, remote_port=request.port,
                    detail=f"no {'temporary' if temp_pref is Pref.REQUIRE else 'stable'} "
                           f"{family} address on {iface.name}"))
                continue
            for stack, stack_order, snode, multipath in stacks:
                hist, rtt = _history(history, stack, iface.name, addr)
                prefer = snode.prefer
                if hist == FALLBACK and multipath and multipath_on:
                    prefer -= 1  # Rule 6: this peer answers as TCP; multipath gains nothing
                key = RankKey(0, -pnode.prefer, pnode.avoid, -prefer, snode.avoid, 0, hist,
                              rtt, iface.cost, iface.name, stack_order, order)
                scored.append((key, iface, local.address, stack, addr, family))

    scored.sort(key=lambda t: t[0])
    delay = int(effective["racing.attemptDelay"].value)
    candidates = [
        Candidate(rank, iface.name, local, stack, addr, request.port, family,
                  (rank - 1) * delay, key)
        for rank, (key, iface, local, stack, addr, family) in enumerate(scored, start=1)
    ]
    subflows: list[SubflowPlan] = []
    if multipath_on and opens_subflows(multipath_mode, request.kind):
        multipath_stacks = {name for name, _, _, mp in stacks if mp}
        subflows = _subflows(candidates, multipath_stacks,
                             {iface.name: node for iface, node in paths}, effective,
                             _listen_extra(paths, endpoint_ok, temp_pref, effective,
                                           request.port))
        if env.path_manager == "kernel":
            warnings.extend(_endpoint_warnings(env, interfaces, excluded))
    return finish(candidates, excluded, "ok" if candidates else "no_candidates", subflows)


def _endpoint_warnings(env: Environment, interfaces: Sequence[Interface],
                       excluded: Sequence[Exclusion]) -> list[str]:
    """Rule 7: each kernel endpoint that sits on an interface the policy excludes."""
    barred = {e.interface: e for e in excluded
              if e.interface and not e.stack and not e.remote_address}
    if not barred or not env.mptcp_endpoints:
        return []
    out: list[str] = []
    for ep in env.mptcp_endpoints:
        # Bound with `dev`: that interface; else every interface holding the address.
        names = [ep.interface] if ep.interface else [
            i.name for i in interfaces if any(a.address == ep.address for a in i.addresses)]
        name = next((n for n in names if n in barred), None)
        if name is None:
            continue
        e = barred[name]
        why = e.outcome + (f" by {e.property}" if e.property else "") + (
            f" ({e.layer} rule {e.rule}, {e.source})" if e.rule else "")
        ident = f"id {ep.id} " if ep.id is not None else ""
        flags = f" [{','.join(ep.flags)}]" if ep.flags else ""
        out.append(f"kernel MPTCP endpoint {ident}{ep.address}{flags} is on {name}, which the "
                   f"policy excludes ({why}): the in-kernel path manager may still use it for "
                   f"subflows; delete it (ip mptcp endpoint delete "
                   f"{f'id {ep.id}' if ep.id is not None else 'id N'}) or use the userspace "
                   f"path manager")
    return out


def _interleave(answers: Sequence[str], effective: Effectives) -> list[tuple[str, str]]:
    v6 = [a for a in answers if ":" in a]
    v4 = [a for a in answers if ":" not in a]

    def score(family: str) -> int:
        eff = effective.get(f"addressFamily.{family}")
        if eff is None:
            return 0
        return {Pref.PREFER: 1, Pref.REQUIRE: 1, Pref.AVOID: -1}.get(eff.value, 0)

    first, second = ((v4, v6) if score("ipv4") > score("ipv6") else (v6, v4))
    out: list[str] = []
    for i in range(max(len(first), len(second))):
        out.extend(x[i] for x in (first, second) if i < len(x))
    return [(a, "ipv6" if ":" in a else "ipv4") for a in out]


def _family_filter(effective: Effectives, family: str, addr: str,
                   port: int) -> Exclusion | None:
    for fam in ("ipv4", "ipv6"):
        eff = effective.get(f"addressFamily.{fam}")
        if eff is None:
            continue
        if eff.value is Pref.PROHIBIT and fam == family:
            return Exclusion.by(eff.statement, outcome="prohibited", remote_address=addr,
                                remote_port=port, detail=f"{family} is prohibited")
        if eff.value is Pref.REQUIRE and fam != family:
            return Exclusion.by(eff.statement, outcome="required_missing", remote_address=addr,
                                remote_port=port, detail=f"{fam} is required")
    return None


def _applies(key: str, iface: Interface) -> bool:
    family, _, leaf = key.partition(".")
    if family == "interface":
        if leaf in INTERFACE_TYPES:
            return iface.type == leaf
        return bool(glob_regex(leaf).match(iface.name))
    if family == "pvd":
        return iface.pvd == leaf
    if key == "metered":
        return iface.metered
    return False


def _path_keys(effective: Effectives) -> list[str]:
    return [k for k in effective
            if k == "metered" or k.startswith("interface.") or k.startswith("pvd.")]


def _judge_path(iface: Interface, effective: Effectives,
                excluded: list[Exclusion]) -> _Node | None:
    if not iface.up:
        excluded.append(Exclusion(iface.name, None, None, None, "unreachable",
                                  detail="interface is down"))
        return None
    node = _Node()
    for key in _path_keys(effective):
        eff = effective[key]
        has = _applies(key, iface)
        outcome = node.apply(eff.value, has)
        if has and eff.value is Pref.AVOID:
            node.avoided.append((key, eff.statement))
        if outcome is not None:
            verb = "matches" if has else "is not"
            excluded.append(Exclusion.by(eff.statement, outcome=outcome, interface=iface.name,
                                         detail=f"{iface.name} ({iface.type}) {verb} {key}"))
            return None
    max_cost = effective["maxCost"]
    if max_cost.value is not None and iface.cost > max_cost.value:
        excluded.append(Exclusion.by(max_cost.statement, outcome="over_cost",
                                     interface=iface.name,
                                     detail=f"cost {iface.cost} > maxCost {max_cost.value}"))
        return None
    return node


def _judge_stack(info: StackInfo, allowed: tuple[str, ...] | None, request: Request,
                 effective: Effectives, excluded: list[Exclusion]) -> _Node | None:
    stack = info.name
    if allowed is not None and stack not in allowed:
        excluded.append(Exclusion(None, stack, None, None, "scheme",
                                  detail=f"{request.scheme}:// allows {', '.join(allowed)}"))
        return None
    node = _Node()
    multipath = effective["multipath"]
    if info.multipath_capable:
        if multipath.value == "disabled":
            excluded.append(Exclusion.by(multipath.statement, outcome="prohibited", stack=stack,
                                         detail=f"{stack} is multipath and multipath is disabled"))
            return None
        node.prefer += 1
    features = info.features
    keys = [*_PROTOCOL_PREFS, *(k for k in effective if k.startswith("stack."))]
    for key in keys:
        eff = effective[key]
        has = (key[6:] == stack) if key.startswith("stack.") else key in features
        outcome = node.apply(eff.value, has)
        if outcome is not None:
            verb = "offers" if has else "lacks"
            excluded.append(Exclusion.by(eff.statement, outcome=outcome, stack=stack,
                                         detail=f"{stack} {verb} {key}"))
            return None
    return node


@functools.lru_cache(maxsize=4096)
def _scope(address: str) -> tuple[bool, bool]:
    """(is loopback, is link-local), parsed once per address, not once per candidate."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback, ip.is_link_local


def _local_address(iface: Interface, remote: str, family: str,
                   temp: Pref) -> Address | str | None:
    """The local address a candidate binds; a str says why the pair is unreachable."""
    loopback, link_local = _scope(remote)
    if loopback != (iface.type == "loopback"):
        return ("loopback reaches only loopback" if iface.type == "loopback"
                else f"{remote} is a loopback address")
    # RFC 6724 rule 2 (prefer matching scope): link-local peers need a link-local source,
    # and a link-local source cannot reach anything else.
    usable = [a for a in iface.addresses_of(family) if _scope(a.address)[1] == link_local]
    if not usable:
        return f"{iface.name} has no {family} address"
    temporary = [a for a in usable if a.temporary]
    stable = [a for a in usable if not a.temporary]
    if temp is Pref.REQUIRE:
        return temporary[0] if temporary else None
    if temp is Pref.PROHIBIT:
        return stable[0] if stable else None
    if temp is Pref.PREFER:
        return (temporary or stable)[0]
    return (stable or temporary)[0]


_HistoryIndex = dict[tuple[str, str | None, str | None], CacheEntry]


def _history_index(cache: Sequence[CacheEntry], hostport: str) -> _HistoryIndex:
    index: _HistoryIndex = {}
    for entry in cache:  # the last entry for a (stack, interface, address) is the newest
        if entry.remote.lower() == hostport.lower():
            index[(entry.stack, entry.interface, entry.address)] = entry
    return index


SUCCESS, NO_ENTRY, FALLBACK, FAILURE = 0, 1, 2, 3
"""`RankKey.history` values, best first (RankKey.to_dict names them)."""


def _history(index: _HistoryIndex, stack: str, interface: str,
             address: str) -> tuple[int, float]:
    """The most specific entry wins: interface and address, then either, then neither."""
    if not index:
        return NO_ENTRY, 0.0
    entry = (index.get((stack, interface, address)) or index.get((stack, interface, None))
             or index.get((stack, None, address)) or index.get((stack, None, None)))
    if entry is None:
        return NO_ENTRY, 0.0
    if entry.outcome == "success":
        return SUCCESS, float(entry.rtt_ms) if entry.rtt_ms is not None else float("inf")
    if entry.outcome == "fallback":
        return FALLBACK, 0.0
    return FAILURE, 0.0


def _listen_extra(paths: Sequence[tuple[Interface, _Node]],
                  endpoints: Sequence[tuple[int, str, str]],
                  temp: Pref, effective: Effectives, port: int) -> dict[str, list[str]]:
    """IPv4 addresses a dual-stack listener on `::` may take subflows on: the tree has only
    the IPv6 endpoint `::`, but the socket accepts IPv4 too (Linux's bindv6only=0 default).
    None while `addressFamily.*` bars IPv4 (Rule 5): the plan must not list an address of a
    family the policy prohibits, nor an interface that only has such addresses."""
    if not any(addr == "::" for _, addr, _ in endpoints):
        return {}
    if _family_filter(effective, "ipv4", "0.0.0.0", port) is not None:
        return {}
    extra: dict[str, list[str]] = {}
    for iface, _ in paths:
        local = _local_address(iface, "0.0.0.0", "ipv4", temp)
        if isinstance(local, Address):
            extra[iface.name] = [local.address]
    return extra


def _subflows(candidates: Sequence[Candidate], multipath_stacks: set[str],
              by_name: Mapping[str, _Node], effective: Effectives,
              listen_extra: Mapping[str, list[str]]) -> list[SubflowPlan]:
    """Which interfaces may carry MPTCP subflows, best first, and in which role (Rule 3).

    An interface is listed when a multipath-capable candidate uses it (so it survived every
    path-level filter and has a local address that reaches the remote), in the order of its
    best such candidate. An avoided interface is a backup; under `handover` every interface
    but the best one not avoided is too (so the primary may differ from the race's first
    candidate, when a `prefer` lifts an avoided interface to the top: Rule 3). When every
    listed interface is avoided, the best one is still primary: a connection needs one path
    to send on.
    """
    if not multipath_stacks:
        return []
    addresses: dict[str, list[str]] = {}
    for c in candidates:
        if c.stack in multipath_stacks:
            seen = addresses.setdefault(c.interface, [])
            if c.local_address not in seen:
                seen.append(c.local_address)
    for name in sorted(listen_extra, key=lambda n: _path_order(n, by_name)):
        seen = addresses.setdefault(name, [])
        seen.extend(a for a in listen_extra[name] if a not in seen)
    if not addresses:
        return []
    mp_policy = effective["multipathPolicy"]
    policy: str = mp_policy.value
    ranked = list(addresses)
    primary = next((n for n in ranked if not by_name[n].avoided), ranked[0])
    plans: list[SubflowPlan] = []
    for name in ranked:
        avoided = sorted(by_name[name].avoided, key=lambda hit: hit[0])
        why = "; ".join(f"avoided by {key}: {_who(s)}" for key, s in avoided)
        if name == primary:
            role = "primary"
            if avoided:
                reason, s = f"the best path left (every path is avoided); {why}", avoided[0][1]
            else:
                reason = (f"multipathPolicy {policy}: the best path not avoided"
                          if policy == "handover"
                          else f"multipathPolicy {policy}: every allowed path carries data")
                s = mp_policy.statement
        elif avoided:
            role, reason, s = "backup", why, avoided[0][1]
        elif policy == "handover":
            role, reason, s = "backup", f"multipathPolicy handover: standby for {primary}", \
                mp_policy.statement
        else:
            role, reason = "primary", f"multipathPolicy {policy}: every allowed path carries data"
            s = mp_policy.statement
        plans.append(SubflowPlan(name, role, reason, tuple(addresses[name]), s.key, s.rule,
                                 s.source, s.layer))
    return plans


def _path_order(name: str, nodes: Mapping[str, _Node]) -> tuple[int, int, str]:
    node = nodes[name]
    return -node.prefer, node.avoid, name


def _who(s: Statement) -> str:
    if s.rule is None:
        return "built-in default"
    via = f" via {s.via}" if s.via else ""
    return f"{s.layer} rule {s.rule}{via} ({s.source})"
