"""The Decision: what `decide()` returns and what `policy explain` prints.

Rule 1: a Decision is plain frozen data; every renderer (JSON, text, DOT) reads the same
object, and `to_dict()` is exactly the JSON output documented in docs/explain.md.
Rule 2: frozen all the way down (tuples, read-only mappings, frozen dataclasses): a Decision
is cached by the runtime and handed to applications, so nobody may change one that another
holder is reading, and no two Decisions share anything that could change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from ..policy.load import PolicyFile, Statement
from ..policy.registry import Pref
from ..policy.resolve import Conflict, Effective
from .environment import Interface
from .request import Request

__all__ = ["CONNECTING_KINDS", "AttemptDelay", "Candidate", "DaneStatus", "Decision",
           "Exclusion", "IceCandidate", "IcePair", "RankKey", "RendezvousReport",
           "ResolutionPass", "ServiceEndpoint", "SubflowPlan", "opens_subflows"]

CONNECTING_KINDS = frozenset({"initiate", "source"})
"""Request kinds whose end opens its own connection; the other kinds accept the peer's."""


def opens_subflows(mode: str, kind: str) -> bool:
    """Does an end of request kind `kind` under `multipath: mode` get a subflow plan?

    `active`: yes. `passive` (RFC 9622: accept the peer's subflows, open none): only an
    accepting end, whose plan says which interfaces may take the peer's subflows; a
    connecting end opens none, so its plan is empty. `disabled`: never.
    """
    return mode == "active" or (mode == "passive" and kind not in CONNECTING_KINDS)


class RankKey(NamedTuple):
    """The lexicographic ranking key (docs/explain.md, "The ranking key"); smaller ranks first.

    A NamedTuple, not a dataclass: hundreds of these are sorted per decision, and tuple
    comparison runs in C.
    """

    recent_failure: int
    """1 when this (remote, stack, interface, address, port) failed within
    racing.failureMemory and the policy does not require its stack (`stack.NAME: require`):
    it ranks after every candidate without such a failure."""
    path_prefer: int
    """Negated count of path-level prefer hits (more hits rank first)."""
    path_avoid: int
    service_priority: int
    """The SvcPriority of the SVCB/HTTPS record the candidate's endpoint came from (lower
    first); 65536 for an endpoint no record offered (the A/AAAA fallback), 0 when the
    target has no such records at all (or for an alias target without ServiceMode records).
    It comes before the protocol hits: the operator's SvcPriority orders endpoints before
    protocol preferences (RFC 9460 section 3), while require/prohibit still filter."""
    protocol_prefer: int
    """Negated count of protocol-level prefer hits."""
    protocol_avoid: int
    history: int
    """0 success, 1 no entry, 2 fallback (an MPTCP stack the peer answered as plain TCP),
    3 failure."""
    rtt_ms: float
    cost: int
    interface: str
    stack_order: int
    endpoint_order: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent_failure": bool(self.recent_failure),
            "path_prefer": -self.path_prefer,
            "path_avoid": self.path_avoid,
            "service_priority": self.service_priority,
            "protocol_prefer": -self.protocol_prefer,
            "protocol_avoid": self.protocol_avoid,
            "history": ("success", "none", "fallback", "failure")[self.history],
            "rtt_ms": self.rtt_ms if self.history == 0 and self.rtt_ms != float("inf") else None,
            "cost": self.cost,
            "interface": self.interface,
            "stack_order": self.stack_order,
            "endpoint_order": self.endpoint_order,
        }


class Candidate(NamedTuple):
    """One leaf of the tree: a path, a stack, a remote endpoint, and when to start it (a
    NamedTuple, like RankKey: hundreds are built per decision)."""

    rank: int
    interface: str
    local_address: str
    stack: str
    remote_address: str
    remote_port: int
    family: str
    start_ms: int
    key: RankKey
    resolution_pass: int = 1
    """The resolution pass that produced this candidate (`Decision.passes`): it never starts
    before its pass, and is sorted by its key into the candidates not started by then
    (decide.py Rule 9)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "interface": self.interface,
            "local_address": self.local_address,
            "stack": self.stack,
            "remote_address": self.remote_address,
            "remote_port": self.remote_port,
            "family": self.family,
            "start_ms": self.start_ms,
            "pass": self.resolution_pass,
            "key": self.key.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A pruned branch, reported once where it was pruned instead of once per leaf below it.
    A None field means the branch covers every value of it."""

    interface: str | None
    stack: str | None
    remote_address: str | None
    remote_port: int | None
    outcome: str
    """unreachable, scheme, prohibited, required_missing, over_cost, not_offered (no SVCB/HTTPS
    record offers the stack), ech (security.ech require), dane (security.dane require)."""
    property: str | None = None
    rule: str | None = None
    source: str | None = None
    layer: str | None = None
    detail: str = ""

    @classmethod
    def by(cls, statement: Statement, *, outcome: str, detail: str,
           interface: str | None = None, stack: str | None = None,
           remote_address: str | None = None, remote_port: int | None = None) -> Exclusion:
        if statement.via:
            detail = f"{detail} (via profile {statement.via})"
        return cls(interface, stack, remote_address, remote_port, outcome, statement.key,
                   statement.rule, statement.source, statement.layer, detail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "stack": self.stack,
            "remote_address": self.remote_address,
            "remote_port": self.remote_port,
            "outcome": self.outcome,
            "property": self.property,
            "rule": self.rule,
            "source": self.source,
            "layer": self.layer,
            "detail": self.detail,
        }


def jsonable(value: Any) -> Any:
    if isinstance(value, Pref):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _statement_dict(s: Statement) -> dict[str, Any]:
    return {"value": jsonable(s.value), "layer": s.layer, "rule": s.rule, "source": s.source}


@dataclass(frozen=True, slots=True)
class SubflowPlan:
    """One interface an MPTCP connection may use for a subflow, as the policy allows it."""

    interface: str
    role: str
    """"primary" or "backup"."""
    reason: str = ""
    """Why this role: the rule and file:line that made it backup, or the multipathPolicy."""
    addresses: tuple[str, ...] = ()
    """The interface's usable local addresses, in the order candidates use them."""
    property: str | None = None
    """The key whose statement decided the role: the avoided key (`interface.wwan0`,
    `metered`, ...) for an avoided interface, else `multipathPolicy`."""
    rule: str | None = None
    source: str | None = None
    """"file:line" of that statement; None for a built-in default."""
    layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "role": self.role,
            "reason": self.reason,
            "addresses": list(self.addresses),
            "property": self.property,
            "rule": self.rule,
            "source": self.source,
            "layer": self.layer,
        }


@dataclass(frozen=True, slots=True)
class ResolutionPass:
    """One resolution pass (RFC 8305 section 3, HEv3): the answers known when it started,
    and why it started then."""

    number: int
    at_ms: float
    """When the pass starts, in ms since resolution started."""
    trigger: str
    """Why then: "AAAA answered", "resolutionDelay 50 ms after A", "A answered", ..."""
    answers: tuple[str, ...] = ()
    """The answers this pass added, one line each ("AAAA h 2 addresses, ttl 300")."""

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "at_ms": self.at_ms, "trigger": self.trigger,
                "answers": list(self.answers)}


@dataclass(frozen=True, slots=True)
class AttemptDelay:
    """The delay between staggered attempts this Decision uses, and where it came from."""

    ms: int
    source: str
    """"policy" (racing.attemptDelay) or "history" (measured handshakes, clamped)."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "source": self.source, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ServiceEndpoint:
    """One service endpoint an SVCB/HTTPS record offered (RFC 9460), as the decision used it."""

    name: str
    """The owner name that was queried (`names.service_query`)."""
    priority: int
    target: str
    """The name whose addresses the endpoint uses (the owner for ".")."""
    port: int
    alpn: tuple[str, ...]
    stacks: tuple[str, ...]
    """The stacks its ALPN values allow (after the policy's own filters)."""
    ech: bool = False
    alias_chain: tuple[str, ...] = ()
    """The AliasMode names followed to reach it, in order (empty: none)."""
    reason: str = ""
    """Why it gave no candidate, when it gave none ("" when it did)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "priority": self.priority, "target": self.target,
                "port": self.port, "alpn": list(self.alpn), "stacks": list(self.stacks),
                "ech": self.ech, "alias_chain": list(self.alias_chain), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DaneStatus:
    """What DANE will do for this Decision's secure candidates (policy security.dane)."""

    mode: str
    """off, opportunistic or require."""
    name: str | None
    """The TLSA owner name the candidates' port and protocol give (the first candidate's)."""
    records: int
    """How many TLSA records the answer held."""
    validated: bool
    """DNSSEC-validated by a resolver the system trusts (names.TlsaSet, Rule 4)."""
    usable: int
    """How many of them the first secure candidate's stack can check (`names.usable`, with
    `leaf_only` for a stack whose `StackInfo.dane` is "leaf"): checked after the
    handshake."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "name": self.name, "records": self.records,
                "validated": self.validated, "usable": self.usable, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """One ICE candidate (RFC 8445 section 5.1), ours or the peer's, as explain shows it."""

    kind: str
    """host, srflx (server-reflexive: our address as the NAT maps it), prflx or relay."""
    address: str
    port: int
    priority: int
    interface: str | None = None
    """Ours only: the interface a host candidate's socket is held to (None for the peer's,
    and for srflx/relay, which are found through a host candidate: `base`)."""
    base: str | None = None
    """For srflx and relay: the host address:port it was found through (ours), or the
    related address the peer announced (the peer's; None when it hid it)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "port": self.port,
                "priority": self.priority, "interface": self.interface, "base": self.base}


@dataclass(frozen=True, slots=True)
class IcePair:
    """One candidate pair the connectivity checks judged (RFC 8445 section 6.1.2)."""

    local: IceCandidate
    remote: IceCandidate
    state: str
    """succeeded, failed, in-progress, waiting or frozen, as the checks left it."""
    nominated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"local": self.local.to_dict(), "remote": self.remote.to_dict(),
                "state": self.state, "nominated": self.nominated}


@dataclass(frozen=True, slots=True)
class RendezvousReport:
    """What a rendezvous carrier's ICE did (docs/rendezvous.md): what each side gathered,
    what policy dropped, which pairs were checked and which one won. The dry run has none
    (nothing is gathered without sockets); an activated rendezvous carrier's explanation is
    its Decision with this report attached (`dataclasses.replace(decision, rendezvous=...)`).
    Never holds a credential: TURN servers appear as host:port only."""

    peer: str
    """The peer's identity."""
    role: str
    """controlling (this end nominates and opens the QUIC connection) or controlled."""
    local: tuple[IceCandidate, ...]
    remote: tuple[IceCandidate, ...]
    pairs: tuple[IcePair, ...]
    """Judged pairs, best first; the nominated one is the path (`selected`)."""
    dropped: tuple[str, ...] = ()
    """Candidates policy kept out, each with why (a relay under `rendezvous.relay:
    prohibit`, the peer's candidate on an address family the policy prohibits)."""
    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    """The servers used, host:port only (their credentials are never shown)."""
    peer_fingerprint: str | None = None
    """The SHA-256 fingerprint the peer's offer announced and its certificate matched."""
    elapsed_ms: float | None = None
    """From activation to the path being nominated."""

    @property
    def selected(self) -> IcePair | None:
        return next((p for p in self.pairs if p.nominated), None)

    def to_dict(self) -> dict[str, Any]:
        sel = self.selected
        return {"peer": self.peer, "role": self.role,
                "local": [c.to_dict() for c in self.local],
                "remote": [c.to_dict() for c in self.remote],
                "pairs": [p.to_dict() for p in self.pairs],
                "selected": None if sel is None else sel.to_dict(),
                "dropped": list(self.dropped), "stun": list(self.stun), "turn": list(self.turn),
                "peer_fingerprint": self.peer_fingerprint, "elapsed_ms": self.elapsed_ms}


@dataclass(frozen=True, slots=True)
class Decision:
    """The full, explainable result of one `decide()` call: the runtime races its candidates,
    and `explain` prints it, so what was tried and why are one object."""

    request: Request
    files: tuple[PolicyFile, ...]
    matched: frozenset[tuple[str, str]]
    """(file source, rule id) of every rule whose `when` matched."""
    properties: Mapping[str, Effective]
    """Every resolved key; read-only (a MappingProxyType over this Decision's own copy)."""
    conflicts: tuple[Conflict, ...]
    candidates: tuple[Candidate, ...]
    excluded: tuple[Exclusion, ...]
    outcome: str
    warnings: tuple[str, ...]
    interfaces: tuple[Interface, ...] = ()
    """The interfaces decided over (system facts applied), for renderers; not in to_dict()."""
    subflows: tuple[SubflowPlan, ...] = ()
    """Which interfaces may carry MPTCP subflows and in which role, best first
    (docs/multipath.md): every interface a multipath-capable candidate uses. Empty when
    multipath is disabled, when it is passive on a connecting end (`opens_subflows`), or
    when no multipath-capable stack is a candidate. Prohibited
    interfaces are not here: they are in `excluded`, and never carry a subflow."""
    path_manager: str | None = None
    """The MPTCP path manager in force where the decision was made (Environment)."""
    passes: tuple[ResolutionPass, ...] = ()
    """The resolution passes that produced the candidates, in order (empty for an IP
    literal: nothing was resolved)."""
    attempt_delay: AttemptDelay | None = None
    """The delay between attempts the candidates' start_ms follow (None: no candidate)."""
    services: tuple[ServiceEndpoint, ...] = ()
    """The SVCB/HTTPS service endpoints the target offered, by priority (empty: none)."""
    dane: DaneStatus | None = None
    """DANE's verdict for the secure candidates (None: no secure candidate)."""
    rendezvous: RendezvousReport | None = None
    """A rendezvous carrier's ICE outcome, attached by the runtime once the path is found
    (None in a dry run and for every other target)."""

    def __post_init__(self) -> None:
        # A copy, so no other Decision (nor the resolver's memo) shares this mapping; and the
        # sequences as tuples, whatever the caller passed.
        setattr_ = object.__setattr__
        setattr_(self, "properties", MappingProxyType(dict(self.properties)))
        setattr_(self, "matched", frozenset(self.matched))
        for name in ("files", "conflicts", "candidates", "excluded", "warnings", "interfaces",
                     "subflows", "passes", "services"):
            setattr_(self, name, tuple(getattr(self, name)))

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def opens_subflows(self) -> bool:
        """Whether this end plans subflows at all: False while `multipath` is disabled, and
        while it is passive on a connecting end (it accepts the peer's, opens none)."""
        return opens_subflows(str(self.value("multipath")), self.request.kind)

    def value(self, key: str) -> Any:
        """The effective value of `key` (a Pref for preferences)."""
        eff = self.properties.get(key)
        if eff is not None:
            return eff.value
        from ..policy.resolve import default_statement

        return default_statement(key, self.request.kind).value

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "request": self.request.to_dict(),
            "layers": [
                {
                    "layer": f.layer,
                    "source": f.source,
                    "name": f.name,
                    "rules": [
                        {"id": r.id, "source": r.source,
                         "matched": (f.source, r.id) in self.matched,
                         "enforce": r.enforce, "priority": r.priority}
                        for r in f.rules
                    ],
                }
                for f in self.files
            ],
            "properties": {
                key: {
                    **_statement_dict(eff.statement),
                    "enforced": eff.enforced,
                    "others": [
                        {**_statement_dict(s), "outcome": outcome} for s, outcome in eff.others
                    ],
                }
                for key, eff in self.properties.items()
            },
            "conflicts": [
                {"key": c.key,
                 "statements": [_statement_dict(c.floor), _statement_dict(c.statement)],
                 "reason": c.reason}
                for c in self.conflicts
            ],
            "candidates": [c.to_dict() for c in self.candidates],
            "excluded": [e.to_dict() for e in self.excluded],
            "multipath": {
                "mode": jsonable(self.value("multipath")),
                "policy": jsonable(self.value("multipathPolicy")),
                "path_manager": self.path_manager,
                "opens_subflows": self.opens_subflows,
                "subflows": [s.to_dict() for s in self.subflows],
            },
            "resolution": {
                "passes": [p.to_dict() for p in self.passes],
                "services": [e.to_dict() for e in self.services],
                "attempt_delay": (self.attempt_delay.to_dict()
                                  if self.attempt_delay is not None else None),
                "dane": self.dane.to_dict() if self.dane is not None else None,
            },
            "rendezvous": (self.rendezvous.to_dict() if self.rendezvous is not None
                           else None),
            "outcome": self.outcome,
            "warnings": list(self.warnings),
        }
