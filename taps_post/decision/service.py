"""SVCB/HTTPS records -> the service endpoints a decision builds candidates from (RFC 9460).
Pure: the records come in through `Environment.svcb`.

Rule 1: AliasMode (priority 0) is followed through `env.svcb`, at most `names.ALIAS_LIMIT`
names; a name met twice or a longer chain is a loop, which is a warning and counts as no
records at all (today's behaviour). AliasMode to "." says the service does not exist: no
records. When a name holds AliasMode records its ServiceMode records are ignored
(RFC 9460 section 2.4.2).
Rule 2: ServiceMode records are used in SvcPriority order (ties: the order the records came
in). A record whose `mandatory` list names a key this library does not understand is
skipped, and its ServiceEndpoint says why (RFC 9460 section 8). `ech` counts as not
understood there: nothing here can send ECH.
Rule 3: a record offers the stacks whose `StackInfo.alpn` meets its ALPN set; an HTTPS record
adds "http/1.1" unless `no-default-alpn` is set (RFC 9460 section 7.1.2). A stack without
ALPN ids (tcp, udp) is never offered by an HTTPS record; an SVCB record of another scheme
that names no ALPN at all offers every stack (the scheme defines its default protocol).
Rule 4: an endpoint's port is the record's `port`, else the URL's; its addresses are the
target's A/AAAA answers (`env.dns[target]`) when there are any, else the record's
ipv6hint and ipv4hint. Target "." is the owner; for a port-prefixed owner
(`_8443._https.example.com`) that is the host below the `_` labels, which holds the
addresses.
Rule 5: after an AliasMode chain whose final name has no ServiceMode records (unanswered
or a negative answer) but has A/AAAA addresses, that name is an endpoint of its own
(RFC 9460 section 3: "the final value of $QNAME, the authority endpoint's port number, and
no SvcParams"), which is how an apex alias works: on the URL's port, with every stack, as a
target without records gets, `service_priority` 0. An AliasMode to "." is no such chain:
the service does not exist.
Rule 6: when records exist the last endpoint is the fallback (RFC 9460 section 3: an
SVCB-optional client falls back to the origin): the origin host's own A/AAAA addresses, also
after an alias chain (a project decision: the origin is what the user named and what its
certificate names), on the URL's port, over the stacks that need no ALPN offer (every stack
but those speaking h3), `service_priority` 65536. A
negative answer, an unasked query or an alias loop gives the single plain endpoint of
today, priority 0, every stack.
Rule 7: a ServiceMode record with port 0 is skipped with its reason: nobody can connect to
port 0 (the URL parser refuses it too), so such a record (a zone typo, or a hostile one)
must not send candidates there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..policy.catalog import StackInfo
from .names import ALIAS_LIMIT, ServiceRecord, normal

__all__ = ["FALLBACK_PRIORITY", "UNDERSTOOD", "Endpoint", "Shaping", "effective_alpn",
           "offers", "shape", "target_names"]

FALLBACK_PRIORITY = 65536
"""`RankKey.service_priority` of the fallback endpoint: after every SvcPriority (1-65535)."""

UNDERSTOOD = frozenset({"alpn", "no-default-alpn", "port", "ipv4hint", "ipv6hint",
                        "key1", "key2", "key3", "key4", "key6"})
"""SvcParamKeys this library acts on (RFC 9460 section 14.3.2: key1 alpn, key2
no-default-alpn, key3 port, key4 ipv4hint, key6 ipv6hint). `mandatory` naming anything else
skips the record (Rule 2)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One service endpoint: where and over which stacks candidates may go."""

    priority: int
    """`RankKey.service_priority`: the SvcPriority, FALLBACK_PRIORITY, or 0 (no records, or
    the alias target of Rule 5)."""
    target: str
    port: int
    stacks: frozenset[str] | None
    """The stacks this endpoint allows; None: every stack (no records, or Rule 5's alias
    target)."""
    addresses: tuple[str, ...]
    hinted: frozenset[str] = frozenset()
    """Addresses that came from the record's hints (known when the record arrived)."""
    record: ServiceRecord | None = None
    owners: tuple[str, ...] = ()
    """The owner names whose answers this endpoint needed (the queried one and each alias),
    for the resolution pass it belongs to; empty for the fallback, which needs none."""
    alpn: tuple[str, ...] = ()
    """The effective ALPN set (with HTTPS's default "http/1.1"), for explain."""
    reason: str = ""
    """Why it gives no candidate, when that is already known here (a skipped record)."""
    alias_target: bool = False
    """The final name of an AliasMode chain without ServiceMode records (Rule 5)."""


@dataclass(slots=True)
class Shaping:
    """What the records say for one request."""

    query: tuple[str, str] | None
    """(owner, "HTTPS"|"SVCB") asked for, None when the scheme is not looked up."""
    endpoints: list[Endpoint] = field(default_factory=list)
    """In priority order; skipped records are here too (with a reason), giving nothing."""
    records: bool = False
    """Records exist (the fallback endpoint is in `endpoints`, QUIC needs an offer)."""
    alias_chain: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
    ech: bool = False
    """Some usable record publishes an ECH configuration."""


def effective_alpn(record: ServiceRecord, rtype: str) -> tuple[str, ...]:
    """The record's ALPN set (Rule 3), in the record's order, the default last."""
    alpn = tuple(dict.fromkeys(record.alpn))
    if rtype == "HTTPS" and not record.no_default_alpn and "http/1.1" not in alpn:
        alpn = (*alpn, "http/1.1")
    return alpn


def offers(alpn: Sequence[str], rtype: str, info: StackInfo) -> bool:
    """Does a record with effective ALPN set `alpn` offer `info`'s stack (Rule 3)?"""
    if not alpn and rtype == "SVCB":
        return True
    return any(a in alpn for a in info.alpn)


def _chase(owner: str, svcb: Mapping[str, tuple[ServiceRecord, ...]]
           ) -> tuple[str, tuple[ServiceRecord, ...] | None, tuple[str, ...], str | None, bool]:
    """(final name, its ServiceMode records or None when unanswered, alias chain, loop
    warning, ended by an AliasMode to "."). An AliasMode to "." gives () and True."""
    name, seen = owner, {owner}
    chain: list[str] = []
    while True:
        records = svcb.get(name)
        if records is None:
            return name, None, tuple(chain), None, False
        alias = next((r for r in records if r.alias), None)
        if alias is None:
            return name, records, tuple(chain), None, False
        target = normal(alias.target) if alias.target != "." else "."
        if target == ".":
            return name, (), tuple(chain), None, True
        if target in seen or len(chain) >= ALIAS_LIMIT:
            path = " -> ".join((owner, *chain, target))
            why = "loops" if target in seen else f"is longer than {ALIAS_LIMIT} names"
            return name, None, tuple(chain), (
                f"SVCB/HTTPS AliasMode chain {path} {why}: its records are ignored and "
                f"{owner} is treated as having none"), False
        chain.append(target)
        seen.add(target)
        name = target


def _host_of(owner: str) -> str:
    """Target "." of a port-prefixed owner: the host below its `_` labels (Rule 4)."""
    labels = owner.split(".")
    while len(labels) > 1 and labels[0].startswith("_"):
        labels.pop(0)
    return ".".join(labels)


def _target_of(record: ServiceRecord, final: str, chain: Sequence[str]) -> str:
    """The host a ServiceMode record sends candidates to (Rule 4): its TargetName, or for
    "." the owner (the final alias name, or the host below a port-prefixed owner's `_`
    labels). The one place this is worked out, for `shape()` and for `target_names()`
    (what the resolver asks), so the two never look at different names."""
    if record.target == ".":
        return final if chain else _host_of(final)
    return normal(record.target)


def shape(query: tuple[str, str] | None, host: str, port: int,
          svcb: Mapping[str, tuple[ServiceRecord, ...]],
          dns: Mapping[str, Sequence[str]], infos: Sequence[StackInfo]) -> Shaping:
    """The endpoints for a request to `host`:`port` whose service query is `query`
    (`names.service_query`), over the catalogue's stacks `infos` (Rules 1-7)."""
    out = Shaping(query)
    plain = Endpoint(0, host, port, None, tuple(dns.get(host, ())))
    if query is None:
        out.endpoints.append(plain)
        return out
    owner, rtype = query
    final, records, chain, loop, dead = _chase(owner, svcb)
    if loop is not None:
        out.warnings.append(loop)
        out.endpoints.append(plain)
        return out
    if not chain and not records:
        out.endpoints.append(plain)  # negative, or not (yet) answered: no records
        return out
    out.records, out.alias_chain = True, chain
    owners = (owner, *chain)
    for record in sorted(records or (), key=lambda r: r.priority):
        if record.alias:
            continue
        alpn = effective_alpn(record, rtype)
        target = _target_of(record, final, chain)
        rport = record.port if record.port is not None else port
        unknown = [k for k in record.mandatory if k.lower() not in UNDERSTOOD]
        skip = (f"skipped: mandatory {', '.join(unknown)} is not understood here "
                f"(RFC 9460 section 8)" if unknown else
                "skipped: port 0 is no port, nothing can connect there" if rport == 0 else "")
        if skip:
            out.endpoints.append(Endpoint(
                record.priority, target, rport, frozenset(), (), record=record, owners=owners,
                alpn=alpn, reason=skip))
            continue
        found = tuple(dns.get(target, ()))
        hints = (*record.ipv6hint, *record.ipv4hint)
        out.ech = out.ech or record.ech
        out.endpoints.append(Endpoint(
            record.priority, target, rport,
            frozenset(i.name for i in infos if offers(alpn, rtype, i)),
            found or hints, frozenset(hints), record, owners, alpn))
    if chain and not records and not dead and dns.get(final):
        # Rule 5: the apex alias; its addresses were asked after the alias (target_names).
        out.endpoints.append(Endpoint(0, final, port, None, tuple(dns[final]), owners=owners,
                                      alias_target=True))
    out.endpoints.append(Endpoint(
        FALLBACK_PRIORITY, host, port,
        frozenset(i.name for i in infos if "h3" not in i.alpn),
        tuple(dns.get(host, ()))))
    return out


def target_names(query: tuple[str, str] | None, host: str,
                 svcb: Mapping[str, tuple[ServiceRecord, ...]]) -> tuple[str, ...]:
    """Every name whose A/AAAA answers `shape()` would read for these records, the host
    first: what the resolver asks for after a service answer (Rules 1, 4, 5)."""
    names = [host]
    if query is not None:
        owner = query[0]
        final, records, chain, loop, _ = _chase(owner, svcb)
        if loop is None:
            names.extend(chain)
            names.extend(_target_of(r, final, chain) for r in records or () if not r.alias)
    return tuple(dict.fromkeys(names))
