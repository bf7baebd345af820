"""decide(): request + policy + environment -> Decision. Pure: no sockets, no clock, no DNS.

Rule 1: the tree is Path -> Stack -> Endpoint (RFC 9623 section 4.1). Each node is judged once
and a pruned node is reported once, at the level where it was pruned, with the property, rule
and file:line that pruned it. That keeps explain output proportional to the causes, not to the
product of interfaces x stacks x addresses.
Rule 2: ranking is one lexicographic key (`RankKey`), path before service priority before
protocol, avoid only as a tie-break, so two runs on the same input always produce the same
order.
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
Rule 8: the endpoints come per service endpoint (`decision/service.py`: SVCB/HTTPS records,
RFC 9460): each has its own port, addresses and allowed stacks, and its SvcPriority becomes
`RankKey.service_priority`, which ranks after the path hits and before the protocol hits:
the operator's SvcPriority orders endpoints before protocol preferences (RFC 9460 section
3), a built-in or policy preference for QUIC never overrules it, and require/prohibit still
filter. A target without records (negative, not asked, IP literal) is one endpoint with
every stack on the URL's port, priority 0, exactly as before records existed. Everything
per endpoint (address order, family filter, DANE and ECH verdicts, allowed stacks) is
worked out once per endpoint, never per candidate; the same leaf offered by two endpoints
is kept once, with the better priority.
Rule 9: each candidate carries the resolution pass in which everything it needs was known
(`decision/passes.py`): its address (A/AAAA answer, or the hint of its record) and its
record. The order is the race as it will run (`_schedule`): each start takes the best
RankKey among the candidates whose pass has begun by then, so a later pass is sorted into the
candidates not started yet (RFC 8305 section 3), not appended after every earlier one, and
a snapshot without `arrivals` is one pass at 0 ms, an IP literal none.
Rule 10: a candidate whose most specific history entry is a failure younger than
`racing.failureMemory` ranks after every candidate without one (`RankKey.recent_failure`
comes first), unless the policy requires its stack (`stack.NAME: require`); an older failure
counts as no entry. The most specific entry names the stack, interface, address and remote
port; an entry without a port (or interface, or address) matches any. A path `require`
(`interface.X: require`) lifts nothing: every candidate is on a required path then, so
demotion only reorders within it, which is what keeps a black-holed QUIC behind TLS on the
one interface an app is pinned to. This reverses DESIGN section 5's "preferences before
history" for remembered failures, on purpose (issue 12).
Rule 11: the attempt delay is twice the first candidate's measured RTT when its history has
one, clamped to racing.minAttemptDelay..maxAttemptDelay, else racing.attemptDelay; start
offsets follow it, and a later pass's first candidate never starts before that pass. When
the minimum exceeds the maximum the maximum wins, with a warning: maxAttemptDelay is a real
ceiling.
Rule 12: `security.ech: require` and `security.dane: require` exclude at the level they judge:
a stack that cannot send ECH, an endpoint that publishes no ECH configuration (no record, a
record without `ech`, the fallback, an IP literal: a stack that can send ECH would send the
name in clear there), an insecure stack or one that checks no TLSA (`StackInfo.dane`
"none") under DANE, every secure stack to an IP literal (it has no TLSA name), and a secure
stack on a port whose TLSA answer is known but holds nothing that stack can check (not
validated, empty, no record `names.usable` accepts for it), each once with the rule and
file:line. An unknown TLSA answer keeps the secure stacks: the stack refuses the peer at
handshake time (stacks/dane.py).
Rule 13: a rendezvous target (`rendezvous://IDENTITY`, port 0) names a peer, not an address:
nothing is resolved (no A/AAAA, SVCB or TLSA), and its one endpoint is the wildcard pair
`::` and `0.0.0.0`, so its candidates are (interface, local address) x the rendezvous stacks
on every interface and local address the policy allows. They are the ICE host candidates
(the runtime gathers on the distinct (interface, local address) pairs in candidate order):
path rules prune interfaces as always, `addressFamily.*` prunes a wildcard (a family), and
`useTemporaryLocalAddress` chooses among an interface's addresses of a family (prefer: the
temporary ones when there are any, RFC 8445 section 5.1.1.1; avoid and no_preference: the
stable ones; require/prohibit: only those). A loopback interface gathers only when a path
rule asks for it by name or type (`interface.loopback: prefer` or `require`: two peers on
one machine, tests): RFC 8445 section 5.1.1.1 says loopback addresses MUST NOT be host
candidates, and a peer elsewhere could never reach them; IPv6 link-local addresses are not
host candidates either, nor IPv4 link-local ones (169.254/16: a peer elsewhere cannot reach
them, an IPv6 one would need a scope the peer cannot know). DANE and ECH do not
apply: the peer is authenticated by the certificate fingerprint its offer carries, not by a
name, and the stack sends no server name to hide. No history ranks them and no attempt
delay separates them (ICE checks every pair at once): every start is 0 ms.
`rendezvous.relay: require` with no `rendezvous.turn` server excludes the stacks: no
candidate could be relayed.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import operator
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..policy import catalog
from ..policy.catalog import StackInfo
from ..policy.context import PolicyContext
from ..policy.load import Statement
from ..policy.match import glob_regex
from ..policy.registry import INTERFACE_TYPES, Pref, protocol_preferences
from ..policy.resolve import Effective
from .decision import (
    AttemptDelay,
    Candidate,
    DaneStatus,
    Decision,
    Exclusion,
    RankKey,
    ResolutionPass,
    ServiceEndpoint,
    SubflowPlan,
    opens_subflows,
)
from .environment import Address, CacheEntry, Environment, Interface
from .facts import apply_interface_facts
from .names import Arrival, TlsaSet, service_query, tlsa_name, usable
from .passes import pass_of, passes
from .request import Request
from .service import Endpoint, Shaping, shape

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
    required: bool = False
    """`stack.NAME: require` names this stack: its remembered failures never demote it
    (Rule 10). Never set on a path node."""

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
    """Rank every (interface, stack, remote endpoint) the policy allows for `request`.

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
               outcome: str, subflows: Sequence[SubflowPlan] = (), **resolved: Any) -> Decision:
        return Decision(request, policy.files, matched, effective, conflicts,
                        tuple(candidates), tuple(excluded), outcome, tuple(warnings),
                        interfaces, tuple(subflows), env.path_manager, **resolved)

    if conflicts:
        return finish((), (), "policy_prohibited")

    excluded: list[Exclusion] = []

    # Stack verdicts depend only on the resolution, the scheme and the stack catalogue: once
    # per triple (the catalogue version keeps a verdict about an older stack set from serving).
    judged_key = ("stacks", request.scheme, catalog.version())
    judged = memo.get(judged_key)
    if judged is None:
        stack_excluded: list[Exclusion] = []
        allowed = catalog.schemes().get(request.scheme)
        judged = memo[judged_key] = (
            tuple((info, node) for info in catalog.infos()
                  if (node := _judge_stack(info, allowed, request, effective, stack_excluded))
                  is not None), tuple(stack_excluded))
    stacks, stack_exclusions = judged
    if request.scheme == "rendezvous":  # Rule 13
        hosts, pruned = _rendezvous(effective, memo, interfaces, stacks, stack_exclusions)
        dane = None
        if hosts:
            dane = DaneStatus(str(effective["security.dane"].value), None, 0, False, 0,
                              "a rendezvous peer is authenticated by the certificate "
                              "fingerprint its offer carries, not by a name: TLSA is not used")
        return finish(hosts, pruned, "ok" if hosts else "no_candidates", dane=dane)
    multipath_mode = effective["multipath"].value
    multipath_on = multipath_mode != "disabled"

    # Service endpoints (Rule 8): SVCB/HTTPS shaping, or the one plain endpoint of old.
    host, port = request.host, request.port
    if request.is_ip_literal:
        shaping = Shaping(None, [Endpoint(0, host, port, None, (host,))])
    else:
        query = service_query(request.scheme, host, port,
                              tuple(effective["dns.svcbSchemes"].value))
        if query is None or not env.svcb:
            shaping = Shaping(query, [Endpoint(0, host, port, None,
                                               tuple(env.dns.get(host, ())))])
        else:
            allowed_here = catalog.schemes().get(request.scheme)
            shaping = shape(query, host, port, env.svcb, env.dns,
                            [i for i in catalog.infos()
                             if allowed_here is None or i.name in allowed_here])
            warnings.extend(shaping.warnings)
        if not any(ep.addresses for ep in shaping.endpoints):
            warnings.append(f"{host!r} did not resolve to any address")
    endpoints = shaping.endpoints

    # Resolution passes (Rule 9): an IP literal resolves nothing.
    passes_: list[ResolutionPass] = []
    first_known: dict[tuple[str, str], float] = {}
    if not request.is_ip_literal:
        asked = {(host, "A"), (host, "AAAA")}
        if shaping.query is not None:
            asked.add(shaping.query)
        if env.arrivals:
            for a in env.arrivals:
                key_ = (a.name, a.rtype)
                if not a.negative and (key_ not in first_known or a.at_ms < first_known[key_]):
                    first_known[key_] = a.at_ms
            passes_ = passes(env.arrivals, asked, float(effective["racing.resolutionDelay"].value),
                             "A" if _family_score(effective, "ipv4")
                             > _family_score(effective, "ipv6") else "AAAA",
                             services=env.svcb, describe=functools.partial(_describe, env))
        if not passes_:
            passes_ = [ResolutionPass(1, 0.0, "every answer known at once",
                                      tuple(_snapshot_answers(env, host, shaping.query)))]

    # Per endpoint, once: its addresses (interleaved, family-filtered, with the pass each
    # became known in) and its stacks (offered by the record, allowed by DANE).
    dane_eff = effective["security.dane"]
    dane_mode = str(dane_eff.value)
    ech_eff = effective["security.ech"]
    ech_required = ech_eff.value == "require"
    seen_ech: set[tuple[str, str, int]] = set()
    barred: set[str] = set()  # addresses whose family exclusion is reported
    seen_stack_port: set[tuple[str, int]] = set()
    endpoint_excluded: list[Exclusion] = []
    offered: set[str] = set()
    prepared: list[tuple[Endpoint, list[tuple[int, str, str, int]],
                         list[tuple[StackInfo, _Node]]]] = []
    for ep in endpoints:
        rec_at = 0.0
        if ep.owners and first_known:
            rec_at = max(first_known.get((o, "HTTPS"), first_known.get((o, "SVCB"), 0.0))
                         for o in ep.owners)
        addrs: list[tuple[int, str, str, int]] = []
        for order, (addr, family) in enumerate(_interleave(ep.addresses, effective)):
            reason = _family_filter(effective, family, addr, ep.port)
            if reason is not None:
                if addr not in barred:
                    barred.add(addr)
                    excluded.append(reason)
                continue
            number = 1
            if first_known:
                at = first_known.get((ep.target, "AAAA" if family == "ipv6" else "A"))
                if addr in ep.hinted:
                    at = rec_at if at is None else min(at, rec_at)
                number = pass_of(passes_, max(at or 0.0, rec_at))
            addrs.append((order, addr, family, number))
        ep_stacks: list[tuple[StackInfo, _Node]] = []
        no_ech = ech_required and not (ep.record is not None and ep.record.ech)
        for info, node in stacks:
            if ep.stacks is not None and info.name not in ep.stacks:
                continue
            if no_ech:  # Rule 12: only stacks that can send ECH are left; none can here
                if (info.name, ep.target, ep.port) not in seen_ech:
                    seen_ech.add((info.name, ep.target, ep.port))
                    endpoint_excluded.append(Exclusion.by(
                        ech_eff.statement, outcome="ech", stack=info.name,
                        remote_port=ep.port,
                        detail=f"security.ech require: {ep.target}:{ep.port} publishes no "
                               "ECH configuration, so the server name would go in clear"))
                continue
            if dane_mode == "require" and info.secure:
                problem: str | None = "an IP literal has no TLSA name"
                if not request.is_ip_literal:
                    name = tlsa_name(host, ep.port, info.ip_protocol)
                    why = _tlsa_problem(env.tlsa.get(name), info.dane == "leaf")
                    problem = None if why is None else f"TLSA {name} {why}"
                if problem is not None:
                    if (info.name, ep.port) not in seen_stack_port:
                        seen_stack_port.add((info.name, ep.port))
                        endpoint_excluded.append(Exclusion.by(
                            dane_eff.statement, outcome="dane", stack=info.name,
                            remote_port=ep.port, detail=f"security.dane require: {problem}"))
                    continue
            ep_stacks.append((info, node))
        if shaping.records:
            offered.update(ep.stacks if ep.stacks is not None else (i.name for i, _ in stacks))
        prepared.append((ep, addrs, ep_stacks))
    path_keys = _path_keys(effective, memo)
    paths = [(iface, node) for iface in interfaces
             if (node := _judge_path(iface, effective, path_keys, excluded)) is not None]
    excluded.extend(stack_exclusions)
    excluded.extend(endpoint_excluded)
    if shaping.records and shaping.query is not None:
        owner, rtype = shaping.query
        for info, _ in stacks:
            if info.name not in offered:
                excluded.append(Exclusion(
                    None, info.name, None, None, "not_offered",
                    detail=f"no {rtype} record of {owner} offers {info.name} "
                           f"({'ALPN ' + ', '.join(info.alpn) if info.alpn else 'no ALPN'})"))

    temp_pref: Pref = effective["useTemporaryLocalAddress"].value
    temp_statement = effective["useTemporaryLocalAddress"].statement
    history = _history_index(env.cache, request.hostport)
    memory_ms = int(effective["racing.failureMemory"].value)
    locals_: dict[tuple[str, str], Address | None] = {}

    scored: list[_Scored] = []
    now = env.now
    for index, (ep, addrs, ep_stacks) in enumerate(prepared):
        priority, rport = ep.priority, ep.port
        # What the inner loop reads of each stack, read once per endpoint.
        flat = [(info.name, info.order, info.multipath_capable and multipath_on, snode.prefer,
                 snode.avoid, snode.required) for info, snode in ep_stacks]
        for iface, pnode in paths:
            name, cost = iface.name, iface.cost
            path_prefer, path_avoid = -pnode.prefer, pnode.avoid
            # Every RankKey field but the address order, per stack: once per path when no
            # history entry names an address or a port, else once per address.
            parts: list[tuple[str, tuple[Any, ...]]] | None = None
            for order, addr, family, number in addrs:
                pair = (name, addr)
                if pair in locals_:
                    local = locals_[pair]
                    if local is None:
                        continue
                else:
                    found = _local_address(iface, addr, family, temp_pref)
                    if isinstance(found, str):
                        excluded.append(Exclusion(name, None, addr, rport, "unreachable",
                                                  detail=found))
                        locals_[pair] = None
                        continue
                    if found is None:
                        outcome = ("required_missing" if temp_pref is Pref.REQUIRE
                                   else "prohibited")
                        excluded.append(Exclusion.by(
                            temp_statement, outcome=outcome, interface=name,
                            remote_address=addr, remote_port=rport,
                            detail=f"no {'temporary' if temp_pref is Pref.REQUIRE else 'stable'}"
                                   f" {family} address on {name}"))
                        locals_[pair] = None
                        continue
                    local = locals_[pair] = found
                local_address = local.address
                if parts is None or history.addressed:
                    parts = _key_parts(flat, history, name, addr, rport, now, memory_ms,
                                       path_prefer, path_avoid, priority, cost)
                for stack, part in parts:
                    scored.append((number, _tuple_new(RankKey, (*part, order)), iface,
                                   local_address, stack, addr, family, rport, index))

    counts = [0] * len(prepared)
    duplicates: dict[int, int] = {}  # endpoint -> the better endpoint that had its leaves
    if len(prepared) > 1:  # the same leaf from two endpoints: the better priority, earlier pass
        best: dict[tuple[str, str, str, int], int] = {}
        kept: list[_Scored] = []
        for item in scored:
            leaf = (item[2].name, item[4], item[5], item[7])
            at = best.get(leaf)
            if at is None:
                best[leaf] = len(kept)
                kept.append(item)
                continue
            duplicates.setdefault(item[8], kept[at][8])
            if item[0] < kept[at][0]:
                kept[at] = (item[0], *kept[at][1:])
        scored = kept
    scored.sort(key=_by_key)
    if shaping.records:
        for item in scored:
            counts[item[8]] += 1

    pass_at = {p.number: p.at_ms for p in passes_}
    first = min(scored, key=_by_pass) if scored else None  # best key of the earliest pass
    attempt_delay = _attempt_delay(effective, first, warnings)
    candidates: list[Candidate] = []
    for rank, (start, (number, key, iface, local_addr, stack, addr, family, rport, _)) in \
            enumerate(_schedule(scored, pass_at, attempt_delay.ms), start=1):
        candidates.append(_tuple_new(Candidate, (rank, iface.name, local_addr, stack, addr,
                                                 rport, family, start, key, number)))

    services: list[ServiceEndpoint] = []
    if shaping.records and shaping.query is not None:
        for i, ((ep, addrs, ep_stacks), n) in enumerate(zip(prepared, counts, strict=True)):
            better = prepared[duplicates[i]][0] if i in duplicates else None
            services.append(_service_endpoint(shaping, ep, addrs, ep_stacks, n, better))
        if shaping.ech and not any(info.ech for info, _ in stacks):
            warnings.append(
                f"{shaping.query[0]} publishes ECH; no stack here can send it, " + (
                    "and security.ech require refuses every candidate that cannot"
                    if effective["security.ech"].value == "require" else
                    f"so the server name {host} is sent in clear (security.ech: prefer)"))
    dane = _dane_status(dane_mode, env, request, candidates,
                        {info.name: info for info, _ in stacks})

    subflows: list[SubflowPlan] = []
    if multipath_on and opens_subflows(multipath_mode, request.kind):
        multipath_stacks = {info.name for info, _ in stacks if info.multipath_capable}
        endpoint_ok = [(order, addr, family) for order, addr, family, _ in
                       (prepared[0][1] if prepared else [])]
        subflows = _subflows(candidates, multipath_stacks,
                             {iface.name: node for iface, node in paths}, effective,
                             _listen_extra(paths, endpoint_ok, temp_pref, effective, port))
        if env.path_manager == "kernel":
            warnings.extend(_endpoint_warnings(env, interfaces, excluded))
    return finish(candidates, excluded, "ok" if candidates else "no_candidates", subflows,
                  passes=tuple(passes_), attempt_delay=attempt_delay if candidates else None,
                  services=tuple(services), dane=dane)


_tuple_new = tuple.__new__
"""Builds a RankKey or Candidate from a ready tuple: the NamedTuple constructor is a Python
function call per leaf, and a decision builds two per leaf (hundreds)."""


def _key_parts(flat: Sequence[tuple[str, int, bool, int, int, bool]], history: _HistoryIndex,
               name: str, addr: str, port: int, now: float | None, memory_ms: int,
               path_prefer: int, path_avoid: int, priority: int,
               cost: int) -> list[tuple[str, tuple[Any, ...]]]:
    """Per stack, its RankKey without the last field (the address order)."""
    parts: list[tuple[str, tuple[Any, ...]]] = []
    for stack, stack_order, multipath, prefer, avoid, required in flat:
        hist, rtt, recent = _history(history, stack, name, addr, port, now, memory_ms)
        if hist == FALLBACK and multipath:
            prefer -= 1  # Rule 6: this peer answers as TCP; multipath gains nothing
        # Rule 10: a required stack is never demoted by its failures.
        demote = 1 if recent and not required else 0
        parts.append((stack, (demote, path_prefer, path_avoid, priority, -prefer, avoid,
                              hist, rtt, cost, name, stack_order)))
    return parts


_by_key = operator.itemgetter(1)
_by_pass = operator.itemgetter(0)

_Scored = tuple[int, RankKey, Interface, str, str, str, str, int, int]


def _schedule(scored: list[_Scored], pass_at: Mapping[int, float],
              delay: int) -> list[tuple[int, _Scored]]:
    """Rule 9: the race as it will run, candidates sorted by RankKey (`scored`). Each start
    is one attempt delay after the one before; it takes the best-ranked candidate whose pass
    has begun by then, and when every such candidate has started it waits for the next pass.
    A later pass is therefore sorted into the candidates not started yet, as RFC 8305 section
    3 asks of late answers, never merely appended. Times count from the first candidate's
    start, which is its pass's (pass 1 unless every pass-1 leaf was pruned)."""
    numbers = {item[0] for item in scored}
    if len(numbers) < 2:
        return [(i * delay, item) for i, item in enumerate(scored)]
    at1 = pass_at[min(numbers)]
    begins = sorted((round(pass_at[n] - at1), n) for n in numbers)
    waiting: dict[int, list[int]] = {}  # pass -> positions in `scored`, best key first
    for position, item in enumerate(scored):
        waiting.setdefault(item[0], []).append(position)
    ready: list[int] = []  # positions whose pass has begun, a heap: the best key on top
    out: list[tuple[int, _Scored]] = []
    start, b = 0, 0
    while len(out) < len(scored):
        if out:
            start += delay
        while b < len(begins) and (begins[b][0] <= start or not ready):
            start = max(start, begins[b][0])
            for position in waiting[begins[b][1]]:
                heapq.heappush(ready, position)
            b += 1
        out.append((start, scored[heapq.heappop(ready)]))
    return out


def _attempt_delay(effective: Effectives,
                   first: _Scored | None,
                   warnings: list[str]) -> AttemptDelay:
    """Rule 11: twice the first candidate's measured RTT, clamped; else racing.attemptDelay.
    A minimum above the maximum is a warning, and the maximum wins."""
    low_eff, high_eff = effective["racing.minAttemptDelay"], effective["racing.maxAttemptDelay"]
    low, high = int(low_eff.value), int(high_eff.value)
    if low > high:
        warnings.append(f"racing.minAttemptDelay {low} ms ({_who(low_eff.statement)}) is above "
                        f"racing.maxAttemptDelay {high} ms ({_who(high_eff.statement)}): "
                        "the maximum wins")
    if first is not None:
        key = first[1]
        if key.history == SUCCESS and key.rtt_ms != float("inf"):
            raw = round(2 * key.rtt_ms)
            ms = min(high, max(low, raw))
            bound = (f", raised to racing.minAttemptDelay {low} ms" if ms > raw else
                     f", cut to racing.maxAttemptDelay {high} ms" if ms < raw else
                     f", within racing.minAttemptDelay {low} .. maxAttemptDelay {high} ms"
                     if low <= high else f", at most racing.maxAttemptDelay {high} ms")
            return AttemptDelay(ms, "history",
                                f"2 x {key.rtt_ms:g} ms handshake RTT of {first[4]} over "
                                f"{first[2].name} to {first[5]} (history){bound}")
    eff = effective["racing.attemptDelay"]
    ms = int(eff.value)
    why = ("no RTT history for the first candidate" if first is not None else "no candidate")
    return AttemptDelay(ms, "policy", f"racing.attemptDelay {ms} ms ({_who(eff.statement)}): "
                                      f"{why}")


def _service_endpoint(shaping: Shaping, ep: Endpoint, addrs: Sequence[tuple[int, str, str, int]],
                      ep_stacks: Sequence[tuple[StackInfo, _Node]], count: int,
                      better: Endpoint | None) -> ServiceEndpoint:
    assert shaping.query is not None
    reason = ""
    if count == 0:
        if ep.reason:
            reason = ep.reason
        elif better is not None:
            reason = (f"its candidates are those of the priority {better.priority} endpoint "
                      f"({better.target}:{better.port}), kept once with the better priority")
        elif not ep.addresses:
            reason = f"no address: {ep.target} has no A/AAAA answer" + (
                " and the record no hints" if ep.record is not None else "")
        elif not ep_stacks and ep.stacks is None:
            reason = "every stack is excluded (see the exclusions)"
        elif not ep_stacks and ep.stacks:
            reason = (f"the stacks it offers ({', '.join(sorted(ep.stacks))}) are all "
                      "excluded (see the exclusions)")
        elif not ep_stacks:
            reason = (f"its ALPN ({', '.join(ep.alpn) or 'none'}) offers no stack here"
                      if ep.record is not None else
                      "no stack of this scheme works without an ALPN offer (QUIC needs a "
                      "record offering h3)")
        elif not addrs:
            reason = "every address is excluded (see the exclusions)"
        else:
            reason = "no path reaches its addresses (see the exclusions)"
    elif ep.alias_target:
        reason = ("the alias target's own addresses on the URL's port: it has no ServiceMode "
                  "records (RFC 9460 section 3)")
    elif ep.record is None:
        reason = "fallback: the target's own addresses on the URL's port (RFC 9460 section 3)"
    return ServiceEndpoint(shaping.query[0], ep.priority, ep.target, ep.port, ep.alpn,
                           tuple(info.name for info, _ in ep_stacks),
                           bool(ep.record is not None and ep.record.ech), shaping.alias_chain,
                           reason)


def _tlsa_problem(tset: TlsaSet | None, leaf_only: bool) -> str | None:
    """Why a known TLSA set cannot let a DANE-required peer in over a stack that sees only
    the leaf (`leaf_only`) or the whole chain; None when it can, or when the answer is
    unknown (the stack decides at handshake time). `names.usable` is the stack's own rule."""
    if tset is None:
        return None
    if not tset.validated:
        return "is not DNSSEC-validated"
    if not tset.records:
        return "has no records"
    if not any(usable(r, leaf_only=leaf_only) for r in tset.records):
        return ("holds no record a leaf-only stack can check (DANE-EE(3), or DANE-TA(2) "
                "carrying the whole anchor certificate, 2 0 0)" if leaf_only else
                "holds no DANE-EE(3) or DANE-TA(2) record with a known selector and "
                "matching type")
    return None


def _dane_status(mode: str, env: Environment, request: Request,
                 candidates: Sequence[Candidate],
                 infos: Mapping[str, StackInfo]) -> DaneStatus | None:
    """Decision.dane: the TLSA set of the first secure candidate's port and protocol."""
    first = next((c for c in candidates if infos[c.stack].secure), None)
    if first is None:
        return None
    if request.is_ip_literal:  # under require no secure candidate is left (Rule 12)
        return DaneStatus(mode, None, 0, False, 0, "an IP address has no TLSA name: PKIX only")
    info = infos[first.stack]
    name = tlsa_name(request.host, first.remote_port, info.ip_protocol)
    if mode == "off":
        return DaneStatus(mode, name, 0, False, 0, "security.dane off: TLSA is not used")
    tset = env.tlsa.get(name)
    if tset is None:
        why = ("the stack refuses a peer without a validated, matching TLSA record at "
               "handshake time" if mode == "require" else "PKIX only")
        return DaneStatus(mode, name, 0, False, 0, f"no TLSA answer for {name} is known: {why}")
    leaf_only = info.dane == "leaf"
    count = sum(1 for r in tset.records if usable(r, leaf_only=leaf_only))
    problem = _tlsa_problem(tset, leaf_only)
    if problem is None:
        reason = (f"{count} usable record(s), DNSSEC-validated: the peer's certificate must "
                  "match one after the handshake")
    elif mode == "require":
        reason = f"TLSA {name} {problem}: secure candidates on this name are refused"
    else:
        reason = f"TLSA {name} {problem}: ignored, PKIX only"
    return DaneStatus(mode, name, len(tset.records), tset.validated, count, reason)


def _describe(env: Environment, a: Arrival) -> str:
    """One answer of a pass, for explain."""
    ttl = f", ttl {a.ttl}" if a.ttl is not None else ""
    when = f" at {a.at_ms:g} ms"
    if a.negative:
        return f"{a.rtype} {a.name}: none{when}{ttl}"
    if a.rtype in ("A", "AAAA"):
        n = sum(1 for x in env.dns.get(a.name, ()) if (":" in x) == (a.rtype == "AAAA"))
        return f"{a.rtype} {a.name}: {n} address{'es' if n != 1 else ''}{when}{ttl}"
    if a.rtype in ("HTTPS", "SVCB"):
        n = len(env.svcb.get(a.name, ()))
        return f"{a.rtype} {a.name}: {n} record{'s' if n != 1 else ''}{when}{ttl}"
    if a.rtype == "TLSA":
        t = env.tlsa.get(a.name)
        n = len(t.records) if t is not None else 0
        v = "validated" if t is not None and t.validated else "not validated"
        return f"TLSA {a.name}: {n} record{'s' if n != 1 else ''}, {v}{when}{ttl}"
    return f"{a.rtype} {a.name}{when}{ttl}"


def _snapshot_answers(env: Environment, host: str,
                      query: tuple[str, str] | None) -> list[str]:
    """The answers of a snapshot without arrivals, for its one pass."""
    found = env.dns.get(host, ())
    lines = [f"A/AAAA {host}: {len(found)} address{'es' if len(found) != 1 else ''}"]
    if query is not None and query[0] in env.svcb:
        n = len(env.svcb[query[0]])
        lines.append(f"{query[1]} {query[0]}: {n} record{'s' if n != 1 else ''}"
                     if n else f"{query[1]} {query[0]}: none")
    return lines


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


def _family_score(effective: Effectives, family: str) -> int:
    eff = effective.get(f"addressFamily.{family}")
    if eff is None:
        return 0
    return {Pref.PREFER: 1, Pref.REQUIRE: 1, Pref.AVOID: -1}.get(eff.value, 0)


def _interleave(answers: Sequence[str], effective: Effectives) -> list[tuple[str, str]]:
    v6 = [a for a in answers if ":" in a]
    v4 = [a for a in answers if ":" not in a]
    first, second = ((v4, v6) if _family_score(effective, "ipv4")
                     > _family_score(effective, "ipv6") else (v6, v4))
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


def _path_keys(effective: Effectives, memo: dict[Hashable, Any]) -> tuple[str, ...]:
    """The path-level keys of one resolution, found once per resolution (`memo`), not once
    per interface: a resolution has dozens of keys, and every decision judges every path."""
    found: tuple[str, ...] | None = memo.get("path_keys")
    if found is None:
        found = memo["path_keys"] = tuple(
            k for k in effective
            if k == "metered" or k.startswith("interface.") or k.startswith("pvd."))
    return found


def _judge_path(iface: Interface, effective: Effectives, keys: Sequence[str],
                excluded: list[Exclusion]) -> _Node | None:
    if not iface.up:
        excluded.append(Exclusion(iface.name, None, None, None, "unreachable",
                                  detail="interface is down"))
        return None
    node = _Node()
    for key in keys:
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


_WILDCARDS = ("::", "0.0.0.0")
"""A rendezvous target's one endpoint (Rule 13): every local address of each family."""


def _rendezvous(effective: Effectives, memo: dict[Hashable, Any],
                interfaces: Sequence[Interface],
                stacks: Sequence[tuple[StackInfo, _Node]],
                stack_exclusions: Sequence[Exclusion]) -> tuple[list[Candidate], list[Exclusion]]:
    """The candidates of a rendezvous target (Rule 13): its ICE host candidates, best first,
    and every branch pruned on the way, once each, with the rule behind it."""
    excluded: list[Exclusion] = []
    path_keys = _path_keys(effective, memo)
    paths = [(iface, node) for iface in interfaces
             if (node := _judge_path(iface, effective, path_keys, excluded)) is not None]
    excluded.extend(stack_exclusions)
    relay, turn = effective["rendezvous.relay"], effective["rendezvous.turn"]
    if relay.value is Pref.REQUIRE and not turn.value:
        for info, _ in stacks:
            excluded.append(Exclusion.by(
                relay.statement, outcome="required_missing", stack=info.name,
                detail="rendezvous.relay require: only relayed candidates may carry it, and "
                       "rendezvous.turn names no TURN server to relay through"))
        stacks = ()
    families: list[tuple[int, str, str]] = []
    for order, (wildcard, family) in enumerate(_interleave(_WILDCARDS, effective)):
        barred = _family_filter(effective, family, wildcard, 0)
        if barred is not None:
            excluded.append(barred)
        else:
            families.append((order, wildcard, family))
    temp_pref: Pref = effective["useTemporaryLocalAddress"].value
    temp_statement = effective["useTemporaryLocalAddress"].statement
    flat = [(info.name, info.order, node.prefer, node.avoid) for info, node in stacks]
    scored: list[tuple[RankKey, str, str, str, str, str]] = []
    # Only a rule naming loopback itself asks for it (the type, or an interface's own name,
    # no glob): `interface.*: prefer` is about every interface, not about meeting on loopback.
    asked = [k for k in path_keys
             if k.startswith("interface.") and not any(c in k for c in "*?[")
             and effective[k].value in (Pref.PREFER, Pref.REQUIRE)]
    for iface, pnode in paths:
        if iface.type == "loopback" and not any(_applies(k, iface) for k in asked):
            excluded.append(Exclusion(
                iface.name, None, None, None, "unreachable",
                detail="loopback addresses are no ICE host candidates (RFC 8445 section "
                       "5.1.1.1) unless a rule prefers or requires interface.loopback or "
                       "the interface by its name"))
            continue
        for order, wildcard, family in families:
            found = _host_addresses(iface, family, temp_pref)
            if isinstance(found, str):
                excluded.append(Exclusion(iface.name, None, wildcard, 0, "unreachable",
                                          detail=found))
                continue
            if not found:
                outcome = "required_missing" if temp_pref is Pref.REQUIRE else "prohibited"
                excluded.append(Exclusion.by(
                    temp_statement, outcome=outcome, interface=iface.name,
                    remote_address=wildcard, remote_port=0,
                    detail=f"no {'temporary' if temp_pref is Pref.REQUIRE else 'stable'} "
                           f"{family} address on {iface.name}"))
                continue
            for address in found:
                for stack, stack_order, prefer, avoid in flat:
                    key = RankKey(0, -pnode.prefer, pnode.avoid, 0, -prefer, avoid, NO_ENTRY,
                                  0.0, iface.cost, iface.name, stack_order, order)
                    scored.append((key, iface.name, address.address, stack, wildcard, family))
    scored.sort(key=operator.itemgetter(0))  # stable: an interface's addresses keep their order
    return [Candidate(rank, name, local, stack, wildcard, 0, family, 0, key, 1)
            for rank, (key, name, local, stack, wildcard, family) in enumerate(scored, start=1)
            ], excluded


def _host_addresses(iface: Interface, family: str, temp: Pref) -> list[Address] | str:
    """The local addresses of `family` on `iface` that are ICE host candidates (Rule 13); a
    str says why there are none, an empty list that `useTemporaryLocalAddress` left none."""
    mine = iface.addresses_of(family)
    usable = [a for a in mine if not _scope(a.address)[1]]  # link-local: no scope to share
    if not usable:
        return (f"{iface.name} has no {family} address" if not mine else
                f"{iface.name} has only link-local {family} addresses, which are not host "
                "candidates")
    return _by_temporary(usable, temp)


def _judge_stack(info: StackInfo, allowed: tuple[str, ...] | None, request: Request,
                 effective: Effectives, excluded: list[Exclusion]) -> _Node | None:
    stack = info.name
    if info.rendezvous != (request.scheme == "rendezvous"):
        return None  # a rendezvous stack serves rendezvous Remotes only, and only it does
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
        if has and eff.value is Pref.REQUIRE and key.startswith("stack."):
            node.required = True
    if info.rendezvous:
        return node  # Rule 13: neither ECH nor DANE judges a peer met through a rendezvous
    ech = effective["security.ech"]
    if ech.value == "require" and not info.ech:
        excluded.append(Exclusion.by(ech.statement, outcome="ech", stack=stack,
                                     detail=f"security.ech require: {stack} cannot send "
                                            "Encrypted Client Hello"))
        return None
    dane = effective["security.dane"]
    if dane.value == "require" and (not info.secure or info.dane == "none"):
        why = ("is not secure, so no certificate can be checked against TLSA"
               if not info.secure else "does not check TLSA records (its StackInfo.dane is "
               "none), so it would connect without DANE")
        excluded.append(Exclusion.by(dane.statement, outcome="dane", stack=stack,
                                     detail=f"security.dane require: {stack} {why}"))
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
    chosen = _by_temporary(usable, temp)
    return chosen[0] if chosen else None


def _by_temporary(usable: Sequence[Address], temp: Pref) -> list[Address]:
    """The addresses `useTemporaryLocalAddress` lets a candidate bind, best first: only the
    temporary ones (require) or the stable ones (prohibit), else those it prefers, falling
    back to the others."""
    temporary = [a for a in usable if a.temporary]
    stable = [a for a in usable if not a.temporary]
    if temp is Pref.REQUIRE:
        return temporary
    if temp is Pref.PROHIBIT:
        return stable
    if temp is Pref.PREFER:
        return temporary or stable
    return stable or temporary


_HistoryKey = tuple[str, str | None, str | None, int | None]


@dataclass(slots=True)
class _HistoryIndex:
    """The newest entry per (stack, interface, address, port) of one remote; `ported` says
    whether any entry names a port, so a history without ports costs the four lookups it
    always did."""

    entries: dict[_HistoryKey, CacheEntry] = field(default_factory=dict)
    ported: bool = False
    addressed: bool = False
    """Whether any entry names an address or a port: if none does, a stack's history on a
    path is the same for every address, and is looked up once per path."""


def _history_index(cache: Sequence[CacheEntry], hostport: str) -> _HistoryIndex:
    index = _HistoryIndex()
    wanted = hostport.lower()
    for entry in cache:  # the last entry for a (stack, interface, address, port) is the newest
        if entry.remote.lower() == wanted:
            index.entries[(entry.stack, entry.interface, entry.address, entry.port)] = entry
            index.ported = index.ported or entry.port is not None
            index.addressed = index.ported or index.addressed or entry.address is not None
    return index


SUCCESS, NO_ENTRY, FALLBACK, FAILURE = 0, 1, 2, 3
"""`RankKey.history` values, best first (RankKey.to_dict names them)."""


def _history(index: _HistoryIndex, stack: str, interface: str, address: str, port: int,
             now: float | None, memory_ms: int) -> tuple[int, float, bool]:
    """(history, rtt, recent failure). The most specific entry wins (Rule 10): interface and
    address, then either, then neither; at each of those an entry for this remote port before
    one without a port (which matches any port: an SVCB record may send one stack to one
    address on two ports, and a blocked one must not take the other's success). A failure is
    recent when `memory_ms` is on and it is younger than it (no time on either side counts as
    recent); an older one counts as no entry. With the memory off (0) a failure ranks as
    failure, at any age, as before."""
    entries = index.entries
    if not entries:
        return NO_ENTRY, 0.0, False
    get = entries.get
    if index.ported:
        entry = (get((stack, interface, address, port)) or get((stack, interface, address, None))
                 or get((stack, interface, None, port)) or get((stack, interface, None, None))
                 or get((stack, None, address, port)) or get((stack, None, address, None))
                 or get((stack, None, None, port)) or get((stack, None, None, None)))
    else:
        entry = (get((stack, interface, address, None)) or get((stack, interface, None, None))
                 or get((stack, None, address, None)) or get((stack, None, None, None)))
    if entry is None:
        return NO_ENTRY, 0.0, False
    if entry.outcome == "success":
        return SUCCESS, float(entry.rtt_ms) if entry.rtt_ms is not None else float("inf"), False
    if entry.outcome == "fallback":
        return FALLBACK, 0.0, False
    if memory_ms <= 0:
        return FAILURE, 0.0, False
    if now is None or entry.at is None or now - entry.at < memory_ms / 1000.0:
        return FAILURE, 0.0, True
    return NO_ENTRY, 0.0, False


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
