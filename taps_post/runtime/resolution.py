"""Resolving a Remote's name in passes, as Happy Eyeballs v3 does (docs/resolution.md).

`resolve_passes()` is an async generator of `Snapshot`s: what the DNS has said so far about a
target, as the values `decide()` reads (`Environment.dns`, `svcb`, `tlsa`, `arrivals`). The
first snapshot is pass 1 (when the race may start), each later one a later pass (a late
answer whose candidates join the running race), the last one `complete`.

Rule 1: the hosts file first (`resolver.hosts.hosts_lookup`): a name it lists resolves at once
to its addresses, in one complete snapshot, with no DNS query, as it did with getaddrinfo.
Rule 2: otherwise every query the target needs is sent at once through the system's client
(`resolver.client.default_client()`): A and AAAA of the host, the HTTPS/SVCB query
`names.service_query()` names when the scheme is in `dns.svcbSchemes`, and the TLSA names
(`names.tlsa_name()`, for the secure stacks' IP protocols) when `security.dane` is not off.
TLSA is asked for at most TLSA_PORTS (4) distinct ports per resolution: the URL's port
first, then the service records' ports in priority order as they arrive; one HTTPS RRset
naming a thousand ports must not start a thousand queries (docs/resolution.md). An
AliasMode target gets its own HTTPS, A and AAAA queries, a ServiceMode target other than
the host its A and AAAA, as soon as the record arrives (at most names.ALIAS_LIMIT names are
followed).
Rule 3: pass 1 starts when `decision.passes.first_pass()` says, on the arrivals so far: the
same pure function a dry run's explain labels its passes with, so the two agree. Every later
answer that changes what is known is a later snapshot; the last one is marked `complete`.
Rule 4: no client configured, or every nameserver failing for both A and AAAA of the first
name asked (timeout, refused, servfail, error: `resolver.cache.FAILURES`) with no address
known from anywhere else: the event loop's getaddrinfo answers instead (the old path), in
one complete snapshot, asked once with the name as the caller gave it (glibc applies the
search list itself). The remaining search-list names are not asked: the servers, not the
name, failed, so their timeout is paid once, not once per search domain. When the servers
answered an earlier name, a later name's failure is that name's (Rule 5 then applies).
Rule 5: a DNS answer with no address for any name of the search list (negative A and AAAA,
no hint, no alias target address) falls back to getaddrinfo once, for the caller's name,
before it is a ResolutionError naming that name and every name tried (endpoints Rule 3):
names only other NSS sources know (mDNS `.local`, nss-myhostname, LDAP, container names)
resolved before issue 12 and still do. `resolve_passes(nss=False)` skips that fallback
(tests whose names must not reach the machine's own resolver).
Rule 6: every query is a task this generator owns: when the consumer stops early (a winner,
a cancellation, `aclose()`), the outstanding queries are cancelled and awaited before it
returns; nothing outlives the resolution.
Rule 7: a snapshot says whether it may key a reused plan (`reusable`). A DNS snapshot only
when everything was known at once, in one pass, from the DNS cache: an answer that had to
travel may have changed. The other sources key plans as they did before issue 12: the
hosts file, given addresses and getaddrinfo (the system's resolver, whose answer was the
plan key then; its own caching is nscd's or systemd-resolved's business).
Rule 8: the resolv.conf search list applies as glibc applies it (`ResolverConfig.names_for`):
each name is tried in turn until one has an address, and a snapshot of an expanded name is
written back under the name the caller used (`Snapshot.renamed`), since that is the name the
decision, the certificate check and the TLSA names use. The search list is bounded as
glibc up to 2.25 bounded it (resolv.conf(5): 6 domains, 256 characters; SEARCH_DOMAINS,
SEARCH_CHARS): each domain costs a sequential resolution here, and a name only a later
domain knows still resolves through Rule 5's getaddrinfo (glibc 2.26+ has no bound).
Rule 9: a TLSA set learnt for a search-list expansion is kept in the renamed snapshot but
never as validated: the search list comes from resolv.conf, which DHCP (option 119) fills
on untrusted networks, so `_443._tcp.mail.<search domain>` is not a secure source for the
TLSA of `mail` (RFC 6698 section 4, RFC 7671 section 7). DANE then falls back to PKIX under
`opportunistic` and refuses under `require`; explain shows the records as not validated.
Rule 10: `forget(names)` (a failed race) drops the answers of the names the DNS was asked:
each name with its search-list expansions, so a name reached through the search list is
forgotten too (establish Rule 3).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..decision.environment import Environment
from ..decision.names import (
    ALIAS_LIMIT,
    Arrival,
    ServiceRecord,
    TlsaSet,
    normal,
    service_query,
    tlsa_name,
)
from ..decision.passes import first_pass
from ..decision.request import Request
from ..errors import ResolutionError
from ..policy import catalog
from ..policy.context import PolicyContext
from ..policy.registry import Pref
from ..policy.resolve import default_statement
from .trace import Tracer

if TYPE_CHECKING:
    from ..resolver.cache import Answer
    from ..resolver.client import DnsClient

__all__ = ["SEARCH_CHARS", "SEARCH_DOMAINS", "TLSA_PORTS", "Snapshot", "Wanted", "addresses",
           "complete", "forget", "network_changed", "resolve_passes", "search_names",
           "wanted_for"]

TLSA_PORTS = 4
"""Distinct ports TLSA is asked for in one resolution (Rule 2)."""
SEARCH_DOMAINS = 6
"""glibc's MAXDNSRCH up to 2.25 (Rule 8)."""
SEARCH_CHARS = 256
"""glibc's search list buffer up to 2.25, in characters (Rule 8)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What to ask about a target, from the policy (establish.py reads it for a decision)."""

    host: str
    port: int
    scheme: str
    svcb_schemes: tuple[str, ...] = ("https", "quic")
    tlsa_protocols: tuple[str, ...] = ()
    """IP protocols ("tcp", "udp") of the secure stacks TLSA is fetched for; empty: no TLSA
    (security.dane off, or no secure stack can be a candidate)."""
    resolution_delay_ms: float = 50.0
    preferred: str = "AAAA"
    """The family whose answer pass 1 waits for ("A" when the policy prefers IPv4)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What is known about a target at one moment of its resolution."""

    host: str
    dns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """name -> addresses (AAAA first, then A) of the host and every SVCB/alias target."""
    svcb: Mapping[str, tuple[ServiceRecord, ...]] = field(default_factory=dict)
    tlsa: Mapping[str, TlsaSet] = field(default_factory=dict)
    arrivals: tuple[Arrival, ...] = ()
    at_ms: float = 0.0
    """When this snapshot was taken, in ms since the resolution started."""
    trigger: str = ""
    """Why this snapshot was taken (pass 1: first_pass()'s reason; later: the answer)."""
    complete: bool = True
    """No query is outstanding: nothing will be added."""
    source: str = "dns"
    """"dns", "hosts" (the hosts file, Rule 1), "getaddrinfo" (Rule 4) or "given" (the
    caller's addresses)."""
    from_cache: bool = False
    """Every DNS answer in it came from the cache."""

    @property
    def reusable(self) -> bool:
        """Whether a plan decided on this snapshot may be reused for an equal one (Rule 7)."""
        if self.source != "dns":  # the hosts file, getaddrinfo, given addresses: as before
            return True
        return self.complete and self.from_cache  # complete at pass 1: one pass

    def key(self) -> Hashable:
        """The snapshot's contents as a hashable value (the plan cache keys on it)."""
        return (tuple(sorted(self.dns.items())),
                tuple(sorted((k, v) for k, v in self.svcb.items())),
                tuple(sorted((k, v) for k, v in self.tlsa.items())))

    def addresses(self) -> tuple[str, ...]:
        """The host's own addresses, else every address known (alias targets, hints)."""
        own = self.dns.get(self.host)
        if own:
            return own
        seen: dict[str, None] = {}
        for found in self.dns.values():
            seen.update(dict.fromkeys(found))
        for records in self.svcb.values():
            for r in records:
                seen.update(dict.fromkeys(r.ipv6hint + r.ipv4hint))
        return tuple(seen)

    def renamed(self, asked: str, host: str) -> Snapshot:
        """This snapshot with the name the DNS was asked (`asked`, a search-list expansion
        of `host`) written as `host`, the name decide() and the TLSA names use (Rule 8);
        its TLSA sets never validated (Rule 9)."""

        def name(n: str) -> str:
            if n == asked:
                return host
            return n[:-len(asked)] + host if n.endswith("." + asked) else n

        return replace(
            self, host=host, dns={name(k): v for k, v in self.dns.items()},
            svcb={name(k): tuple(replace(r, target=name(r.target)) for r in v)
                  for k, v in self.svcb.items()},
            tlsa={name(k): replace(v, name=name(v.name), validated=False)
                  for k, v in self.tlsa.items()},
            arrivals=tuple(replace(a, name=name(a.name)) for a in self.arrivals))

    def environment(self, base: Environment) -> Environment:
        """`base` (the live machine) with what this snapshot knows (establish Rule 1)."""
        return replace(base, dns={**base.dns, **self.dns}, svcb={**base.svcb, **self.svcb},
                       tlsa={**base.tlsa, **self.tlsa}, arrivals=self.arrivals)


def wanted_for(request: Request, ctx: PolicyContext) -> Wanted:
    """What to ask the DNS about `request`'s host, from the policy (resolution Rule 2): the
    SVCB/HTTPS schemes, TLSA for the secure stacks' IP protocols unless security.dane is off,
    resolutionDelay, and which family pass 1 waits for."""
    effective = ctx.resolve_for(request).effective

    def value(key: str) -> Any:
        eff = effective.get(key)
        return (eff if eff is not None else default_statement(key, request.kind)).value

    allowed = catalog.schemes().get(request.scheme)
    protocols: tuple[str, ...] = ()
    if value("security.dane") != "off":
        protocols = tuple(dict.fromkeys(
            s.ip_protocol for s in catalog.infos()
            if s.secure and (allowed is None or s.name in allowed)))

    def leaning(key: str) -> int:
        eff = effective.get(key)
        return _LEANING.get(eff.value, 0) if eff is not None and isinstance(eff.value, Pref) \
            else 0

    prefers_v4 = leaning("addressFamily.ipv4") > leaning("addressFamily.ipv6")
    return Wanted(request.host, request.port, request.scheme,
                  tuple(value("dns.svcbSchemes")), protocols,
                  float(value("racing.resolutionDelay")), "A" if prefers_v4 else "AAAA")


_LEANING = {Pref.REQUIRE: 2, Pref.PREFER: 1, Pref.AVOID: -1, Pref.PROHIBIT: -2}
"""How much a preference leans towards its subject (which family pass 1 waits for)."""


async def resolve_passes(wanted: Wanted, *, tracer: Tracer | None = None,
                         client: DnsClient | None = None, hosts: bool = True,
                         nss: bool = True) -> AsyncGenerator[Snapshot, None]:
    """The snapshots of `wanted.host`'s resolution, pass 1 first, the last `complete`
    (module rules). `client`: the DNS client to ask (default: the system's); `hosts=False`
    skips the hosts file (tests); `nss=False` skips Rule 5's getaddrinfo after a negative
    answer (tests: their names must not reach the machine's own resolver)."""
    tr = tracer if tracer is not None and tracer.active else None
    host = normal(wanted.host)
    if hosts:
        from ..resolver.hosts import hosts_lookup

        listed = hosts_lookup(host)
        if listed is not None and listed:
            if tr is not None:
                tr.emit("resolution.answer", name=host, rtype="A/AAAA", status="hosts",
                        count=len(listed), ttl=None, at_ms=0.0, from_cache=True)
            yield Snapshot(host, {host: _ordered(listed)}, trigger="hosts file",
                           source="hosts", from_cache=True)
            return
    if client is None:
        from ..resolver.client import default_client

        client = default_client()
    if client is None:
        yield await _getaddrinfo(host, wanted.port, tr, "no nameserver is configured")
        return
    tried: list[str] = []
    for qname in search_names(client.config, host):
        run = _Run(replace(wanted, host=qname), qname, client, tr)
        try:
            async for snap in run.snapshots():
                yield snap if qname == host else snap.renamed(qname, host)
            return
        except _Dead as dead:
            if not tried:  # Rule 4: the servers failed, not the name
                yield await _getaddrinfo(host, wanted.port, tr,
                                         f"every nameserver failed for {qname} ({dead})")
                return
            # They answered for an earlier name: this failure is about this name (a
            # resolver refusing single-label names), and Rule 5 still applies.
            tried.append(f"{qname} (every nameserver failed: {dead})")
        except _NoAddress as exc:
            tried.append(f"{qname} ({exc})")
        finally:
            await run.close()
    why = f"no address for {' or '.join(tried)}"
    if not nss:
        raise ResolutionError(host, why)
    # Rule 5: what other NSS sources (mDNS, myhostname, LDAP) know, once, for the caller's name.
    yield await _getaddrinfo(host, wanted.port, tr, f"DNS: {why}")


def search_names(config: Any, host: str) -> tuple[str, ...]:
    """The names to ask for `host`, in order: `config.names_for(host)` (a ResolverConfig)
    with the search list bounded to SEARCH_DOMAINS domains of SEARCH_CHARS characters in all
    (Rule 8)."""
    search: list[str] = []
    used = 0
    for domain in config.search[:SEARCH_DOMAINS]:
        used += len(domain) + 1
        if used > SEARCH_CHARS:
            break
        search.append(domain)
    if len(search) != len(config.search):
        config = replace(config, search=tuple(search))
    return tuple(config.names_for(host)) or (host,)


async def addresses(host: str, port: int) -> tuple[str, ...]:
    """Every address of `host` (A and AAAA, hosts file first, getaddrinfo as the fallback):
    Remote.lookup()'s name pass. Raises ResolutionError naming the host (Rule 5)."""
    last: Snapshot | None = None
    gen = resolve_passes(Wanted(host, port, "hostport", svcb_schemes=()))
    async for snap in gen:
        last = snap
    found = () if last is None else last.addresses()
    if not found:
        raise ResolutionError(host)
    return found


async def complete(wanted: Wanted, client: DnsClient | None = None) -> Snapshot:
    """The last snapshot of `wanted`'s resolution (everything it will learn, every arrival):
    a live explain's view, so it shows the SVCB records and passes a connection would see.
    `client`: as resolve_passes()'s (default: the system's)."""
    last: Snapshot | None = None
    async for snap in resolve_passes(wanted, client=client):
        last = snap
    assert last is not None  # resolve_passes yields at least once or raises
    return last


def forget(names: Iterable[str]) -> None:
    """After a failed race: the DNS answers for `names` may be what failed (a renumbered
    server), so the system client's cache drops them and their search-list expansions, the
    names the DNS was actually asked (Rule 10; docs/resolution.md, "Cache")."""
    import sys

    module = sys.modules.get("taps_post.resolver.client")
    if module is None:  # never asked the DNS: nothing cached
        return
    client = module.default_client()
    if client is None:
        return
    asked: dict[str, None] = {}
    for n in names:
        asked[normal(n)] = None
        asked.update(dict.fromkeys(search_names(client.config, normal(n))))
    client.forget(tuple(asked))


def network_changed(interfaces: Collection[str]) -> None:
    """The path monitor saw `interfaces` change: what their resolvers (and the ones tied to
    no interface) answered may be wrong now. Nothing is imported when nothing was asked."""
    import sys

    module = sys.modules.get("taps_post.resolver.client")
    if module is None:
        return
    client = module.default_client()
    if client is None:
        return
    for interface in interfaces:
        client.flush(interface)


def _ordered(found: Iterable[str]) -> tuple[str, ...]:
    """IPv6 first, then IPv4, each in answer order (decide() interleaves them)."""
    found = tuple(dict.fromkeys(found))
    return tuple(a for a in found if ":" in a) + tuple(a for a in found if ":" not in a)


async def _getaddrinfo(host: str, port: int, tr: Tracer | None, why: str) -> Snapshot:
    """Rule 4: the event loop's resolver, never a blocking call on the loop thread."""
    loop = asyncio.get_running_loop()
    begun = loop.time()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolutionError(host, f"{why}; getaddrinfo: {exc.strerror or exc}") from exc
    except (UnicodeError, OSError) as exc:
        raise ResolutionError(host, f"{why}; getaddrinfo: {type(exc).__name__}: {exc}") \
            from exc
    from ..system.live import addresses_of

    found = addresses_of(infos)
    at_ms = (loop.time() - begun) * 1000.0
    if tr is not None:
        tr.emit("resolution.answer", name=host, rtype="A/AAAA", status="getaddrinfo",
                count=len(found), ttl=None, at_ms=at_ms, from_cache=False)
    if not found:
        raise ResolutionError(host, f"{why}; getaddrinfo answered no address")
    return Snapshot(host, {host: found}, at_ms=at_ms, trigger=f"getaddrinfo ({why})",
                    source="getaddrinfo")


class _Dead(Exception):
    """Every nameserver failed for both A and AAAA of a name (Rule 4); the text names the
    statuses."""


class _NoAddress(Exception):
    """The DNS answered, with no address for a name (Rule 5); the text names the statuses."""


class _Run:
    """One name's queries and what they answered (Rules 2-6)."""

    def __init__(self, wanted: Wanted, host: str, client: DnsClient, tr: Tracer | None) -> None:
        from ..resolver.cache import FAILURES  # loaded already: the client is one of its users

        self.failures = FAILURES
        self.wanted = wanted
        self.host = host
        self.client = client
        self.tr = tr
        self.loop = asyncio.get_running_loop()
        self.begun = self.loop.time()
        self.tasks: dict[asyncio.Task[Answer], tuple[str, str]] = {}
        self.asked: set[tuple[str, str]] = set()
        self.target_queries: set[tuple[str, str]] = {(host, "A"), (host, "AAAA")}
        self.answers: dict[tuple[str, str], Answer] = {}
        self.arrivals: list[Arrival] = []
        self.followed = 0
        self.tlsa_ports: set[int] = set()
        self.service = service_query(wanted.scheme, host, wanted.port, wanted.svcb_schemes)

    def ask(self, name: str, rtype: str) -> None:
        key = (normal(name), rtype)
        if key in self.asked:
            return
        self.asked.add(key)
        self.tasks[asyncio.ensure_future(self.client.query(*key))] = key

    def ask_tlsa(self, port: int) -> None:
        if port in self.tlsa_ports or len(self.tlsa_ports) >= TLSA_PORTS:  # Rule 2
            return
        self.tlsa_ports.add(port)
        for protocol in self.wanted.tlsa_protocols:
            self.ask(tlsa_name(self.host, port, protocol), "TLSA")

    def now_ms(self) -> float:
        return (self.loop.time() - self.begun) * 1000.0

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def take(self, task: asyncio.Task[Answer]) -> bool:
        """Record a finished query; True when it changed what is known (Rule 3)."""
        name, rtype = self.tasks.pop(task)
        answer = task.result()
        at_ms = self.now_ms()
        self.answers[(name, rtype)] = answer
        count = len(answer.addresses or answer.services or answer.tlsa)
        self.arrivals.append(Arrival(name, rtype, at_ms, answer.ttl,
                                     answer.negative or answer.status in self.failures))
        if self.tr is not None:
            self.tr.emit("resolution.answer", name=name, rtype=rtype, status=answer.status,
                         count=count, ttl=answer.ttl, at_ms=at_ms,
                         from_cache=answer.from_cache)
        if rtype in ("HTTPS", "SVCB"):
            for record in sorted(answer.services, key=lambda r: r.priority):
                if record.port is not None:
                    self.ask_tlsa(record.port)  # by priority: the first TLSA_PORTS (Rule 2)
            for record in answer.services:
                target = name if record.target in (".", "") else normal(record.target)
                if target == self.host or self.followed >= ALIAS_LIMIT:
                    continue
                if record.alias:
                    if (target, rtype) not in self.asked:
                        self.followed += 1
                    self.ask(target, rtype)
                elif (target, "A") in self.asked:
                    continue
                else:
                    self.followed += 1
                self.ask(target, "AAAA")
                self.ask(target, "A")
            return bool(answer.services) or answer.negative
        return answer.ok or (rtype == "TLSA" and answer.negative)

    def snapshot(self, trigger: str) -> Snapshot:
        dns: dict[str, tuple[str, ...]] = {}
        svcb: dict[str, tuple[ServiceRecord, ...]] = {}
        tlsa: dict[str, TlsaSet] = {}
        for (name, rtype), answer in self.answers.items():
            if rtype in ("A", "AAAA") and answer.addresses:
                dns[name] = _ordered(dns.get(name, ()) + answer.addresses)
            elif rtype in ("HTTPS", "SVCB") and (answer.ok or answer.negative):
                svcb[name] = tuple(answer.services)
            elif rtype == "TLSA" and (answer.ok or answer.negative):
                tlsa[name] = TlsaSet(name, tuple(answer.tlsa), answer.authenticated)
        return Snapshot(self.host, dns, svcb, tlsa, tuple(self.arrivals), self.now_ms(),
                        trigger, not self.tasks, "dns",
                        all(a.from_cache for a in self.answers.values()))

    def dead(self) -> bool:
        """Rule 4: both A and AAAA of the host failed, and no address came from elsewhere."""
        mine = [self.answers.get((self.host, t)) for t in ("A", "AAAA")]
        return (all(a is not None and a.status in self.failures for a in mine)
                and not self.snapshot("").addresses())

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        w = self.wanted
        self.ask(self.host, "AAAA")
        self.ask(self.host, "A")
        if self.service is not None:
            self.ask(*self.service)
            self.target_queries.add(self.service)
        self.ask_tlsa(w.port)
        started = False
        while True:
            if not started:
                if self.dead():
                    await self.close()
                    raise _Dead("/".join(sorted({self.answers[(self.host, t)].status
                                                 for t in ("A", "AAAA")})))
                services = {name: answer.services for (name, rtype), answer
                            in self.answers.items() if rtype in ("HTTPS", "SVCB")}
                when = first_pass(self.arrivals, self.target_queries, w.resolution_delay_ms,
                                  w.preferred, services=services)
                now = self.now_ms()
                if when is not None and when[0] <= now:
                    snap = self.snapshot(when[1])
                    if snap.from_cache and not snap.complete and await self._settle():
                        continue  # cached answers asked for more: take those in first
                    started = True
                    yield snap
                    if snap.complete:
                        return
                    continue
                if not self.tasks:
                    why = ", ".join(f"{t} {self.answers[(self.host, t)].status}"
                                    for t in ("AAAA", "A") if (self.host, t) in self.answers)
                    raise _NoAddress(why)
                wait_for = None if when is None else max(0.0, (when[0] - now) / 1000.0)
            else:
                wait_for = None
            if not self.tasks:
                return
            done, _ = await asyncio.wait(self.tasks, timeout=wait_for,
                                         return_when=asyncio.FIRST_COMPLETED)
            changed = False
            for task in sorted(done, key=lambda t: self.tasks[t]):
                changed = self.take(task) or changed
            if started and (changed or not self.tasks):
                finished = [a for a in self.arrivals[-len(done):]]
                yield self.snapshot(", ".join(f"{a.rtype} {a.name} answered"
                                              for a in finished))
                if not self.tasks:
                    return

    async def _settle(self) -> bool:
        """Let queries that cached answers just started run once (a cache hit finishes in
        its first step): a whole cached chain is then one pass (Rule 7). True when some
        finished."""
        await asyncio.sleep(0)
        done = [t for t in self.tasks if t.done()]
        for task in sorted(done, key=lambda t: self.tasks[t]):
            self.take(task)
        return bool(done)
