"""Asking the system's nameservers without ever raising for a DNS failure.

Rule 1: the only module that imports dnspython (resolver package Rule 1), and only its message
layer (`dns.message`, names, types, SVCB parameters): the sockets are transport.py's, so
neither `dns.asyncquery` nor `dns.quic` (and through it aioquic) is ever loaded for a lookup
(docs/performance.md). What leaves this module is an `Answer` of plain values: addresses,
`decision.names.ServiceRecord` and `TlsaRecord`.
Rule 2: a query is sent the way the system's stub would send it, plus what HEv3 and DANE need:
RD set; the AD bit set in the query (RFC 6840 section 5.7: a validating resolver then reports
validation even without DO); DO for TLSA and HTTPS, so a validating resolver that keys AD on
DO reports it too; EDNS0 with a 1232-byte payload (the DNS flag day 2020 size that avoids IP
fragmentation); UDP first, TCP when the answer is truncated (TC), each bounded by
`config.timeout`. A per-interface nameserver is asked through that interface
(transport.py Rule 2).
Rule 3: each query gets a fresh random ID (dnspython's entropy source, as `make_query` draws
it) and a fresh random source port (the kernel's; queries in flight to one server together
share one, transport.py Rule 6), and a datagram is the answer only if its ID is the query's
and `query.is_response(reply)` holds (QR set, opcode and question) on the connected socket
(same source); a forged, stray or unparsable datagram is skipped and the real answer still
awaited until the timeout, instead of ending the query with an error. The question's wire
form is built by dnspython once per (name, type) and only its ID changes per query
(`_question`): building it costs ~90 us a query, on the way to the first attempt.
Rule 4: nameservers are asked in order, each try bounded by `config.timeout`, the whole list
`config.attempts` times (resolv.conf(5)). NOERROR and NXDOMAIN end the query; SERVFAIL,
REFUSED, a timeout or a socket error move on to the next server, as glibc does, except for
the DNSSEC questions (TLSA, and HTTPS, whose ECH keys and ALPN set DNSSEC vouches for): a
failure from a server the config trusts (conf.py Rule 5) is that validator's verdict (a
validating resolver answers SERVFAIL for a bogus RRset), so the question stays with that
server for the remaining attempts and no other server is asked; asking on would let the
next, unvalidated server supply exactly the answer the validator refused. When every try
failed, the status is the last failure that was not a timeout (a server that said SERVFAIL
tells more than one that stayed silent), or `timeout` when every try timed out.
Rule 5: never raise for a DNS failure: `status` says what happened, and the caller decides
(the runtime falls back to getaddrinfo). Cancellation still propagates.
Rule 6: CNAME chains are followed inside the answer section (at most names.ALIAS_LIMIT
links); the answer's TTL is the minimum over the chain and the final RRset. A negative
answer's TTL is min(SOA TTL, SOA MINIMUM) of the authority section's SOA (RFC 2308 section 5),
and not above the chain's; an SOA whose owner is not the chain's last name or one of its
ancestors says nothing about that name and is ignored (no SOA: not cached). The TTL an
answer reports is capped as the cache caps it (cache.py Rules 3, 4), so the first answer
and a cache hit never disagree about how long it lives.
Rule 7: `authenticated` = the response's AD bit AND `config.trusts(nameserver)`
(conf.py Rule 5). Nothing here validates DNSSEC itself.
Rule 8: `default_client()` keeps one client per `system_config()` value: a changed
resolv.conf gives a new client with a new cache, an unchanged one the same client, so the
cache lives as long as the configuration that filled it.
Rule 9: concurrent queries for the same (name, rtype) on one event loop share one question
on the wire (carriers opened together to one host ask once). A cancelled caller leaves the
question running while another caller still waits for it (its answer then fills the cache);
when the last waiting caller is cancelled, the question is cancelled too and awaited before
the cancellation propagates, so no task of this module outlives the callers that asked.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from typing import cast

import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes import svcbbase

from ..decision.names import ALIAS_LIMIT, ServiceRecord, TlsaRecord, normal
from . import transport
from .cache import MAX_NEGATIVE_TTL, MAX_TTL, Answer, DnsCache, cache_key
from .conf import Nameserver, ResolverConfig, system_config

__all__ = ["PAYLOAD", "RTYPES", "Answer", "DnsClient", "default_client"]

PAYLOAD = 1232
RTYPES = frozenset({"A", "AAAA", "HTTPS", "SVCB", "TLSA", "CNAME"})
_WANT_DNSSEC = frozenset({"TLSA", "HTTPS"})
"""The questions sent with DO, and whose failure at a trusted validator is final (Rule 4)."""


def _text(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return "."
    return normal(str(name.to_text()))


def _key_name(key: int) -> str:
    """A SvcParamKey's presentation name (RFC 9460 section 14.3.2): `alpn`, `key65000`."""
    to_text = cast(Callable[[int], str], svcbbase.key_to_text)  # untyped in dnspython
    return str(to_text(key))


def _service(rd: object, ttl: int) -> ServiceRecord:
    """One SVCB/HTTPS rdata as a ServiceRecord."""
    params = rd.params  # type: ignore[attr-defined]
    keys = svcbbase.ParamKey
    alpn = params.get(keys.ALPN)
    port = params.get(keys.PORT)
    v4 = params.get(keys.IPV4HINT)
    v6 = params.get(keys.IPV6HINT)
    mandatory = params.get(keys.MANDATORY)
    return ServiceRecord(
        priority=int(rd.priority),  # type: ignore[attr-defined]
        target=_text(rd.target),  # type: ignore[attr-defined]
        alpn=tuple(i.decode("ascii", "replace") for i in alpn.ids) if alpn else (),
        no_default_alpn=keys.NO_DEFAULT_ALPN in params,
        port=int(port.port) if port else None,
        ipv4hint=tuple(v4.addresses) if v4 else (),
        ipv6hint=tuple(v6.addresses) if v6 else (),
        ech=keys.ECH in params,
        mandatory=tuple(_key_name(k) for k in mandatory.keys)
        if mandatory else (),
        ttl=ttl,
    )


def _negative_ttl(response: dns.message.Message, owner: dns.name.Name) -> int | None:
    """RFC 2308's TTL from the first SOA at `owner` or above it (Rule 6); None without one."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and rrset and owner.is_subdomain(rrset.name):
            return int(min(rrset.ttl, rrset[0].minimum, MAX_NEGATIVE_TTL))
    return None


@functools.lru_cache(maxsize=512)
def _question(qname: dns.name.Name, rtype: str) -> tuple[dns.message.Message, bytes]:
    """The query for (qname, rtype) and its wire form after the ID (Rules 2, 3): built by
    dnspython once, read-only; a query sends a fresh ID in front of the tail."""
    query = dns.message.make_query(qname, rtype, use_edns=0, payload=PAYLOAD,
                                   want_dnssec=rtype in _WANT_DNSSEC,
                                   flags=dns.flags.RD | dns.flags.AD)
    return query, query.to_wire()[2:]


def _read(response: dns.message.Message, qname: dns.name.Name, rtype: str,
          ns: Nameserver, config: ResolverConfig) -> tuple[Answer, bool]:
    """A NOERROR or NXDOMAIN response as an Answer (Rules 6, 7), and whether it is an
    NXDOMAIN for the name itself, reached through no CNAME (cache.py Rule 8)."""
    name = _text(qname)
    authenticated = bool(response.flags & dns.flags.AD) and config.trusts(ns)
    rdtype = dns.rdatatype.from_text(rtype)
    current, ttl, chain = qname, None, 0
    found: dns.rrset.RRset | None = None
    while True:
        found = response.get_rrset(response.answer, current, dns.rdataclass.IN, rdtype)
        if found is not None or rtype == "CNAME":
            break
        cname = response.get_rrset(response.answer, current, dns.rdataclass.IN,
                                   dns.rdatatype.CNAME)
        if cname is None or not cname or chain >= ALIAS_LIMIT:
            break
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        current, chain = cname[0].target, chain + 1
    nxdomain = response.rcode() == dns.rcode.NXDOMAIN
    if nxdomain or found is None or not found:
        negative = _negative_ttl(response, current)  # None: not cached (cache.py)
        if negative is not None and ttl is not None:
            negative = min(negative, ttl)
        return Answer(name, rtype, "nxdomain" if nxdomain else "nodata", ttl=negative,
                      authenticated=authenticated, nameserver=ns), nxdomain and chain == 0
    ttl = int(min(MAX_TTL, found.ttl if ttl is None else min(ttl, found.ttl)))
    addresses: tuple[str, ...] = ()
    services: tuple[ServiceRecord, ...] = ()
    tlsa: tuple[TlsaRecord, ...] = ()
    if rtype in ("A", "AAAA"):
        addresses = tuple(dict.fromkeys(str(rd.address) for rd in found))
    elif rtype in ("HTTPS", "SVCB"):
        services = tuple(sorted((_service(rd, ttl) for rd in found),
                                key=lambda s: s.priority))
    elif rtype == "TLSA":
        tlsa = tuple(TlsaRecord(int(rd.usage), int(rd.selector), int(rd.mtype),
                                bytes(rd.cert)) for rd in found)
    elif rtype == "CNAME":
        addresses = tuple(_text(rd.target) for rd in found)
    return Answer(name, rtype, "ok", addresses, services, tlsa, ttl, authenticated, ns), False


class _Shared:
    """One question on the wire and how many callers await it (Rule 9)."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[Answer]) -> None:
        self.task = task
        self.waiters = 0


class DnsClient:
    """Queries the configured nameservers (Rules 2-5) through a cache (cache.py)."""

    def __init__(self, config: ResolverConfig, cache: DnsCache | None = None) -> None:
        self.config = config
        self.cache = cache if cache is not None else DnsCache()
        self._pending: dict[tuple[str, str], _Shared] = {}
        self.sent = 0
        """Queries put on the wire (tests and the bench read it: a cache hit sends none)."""

    async def query(self, name: str, rtype: str) -> Answer:
        """The answer for (name, rtype), from the cache while it lives; never raises for a
        DNS failure (Rule 5). `rtype` is one of RTYPES (anything else is a caller's bug)."""
        rtype = rtype.upper()
        if rtype not in RTYPES:
            raise ValueError(f"unsupported record type {rtype!r}")
        key = cache_key(name, rtype)
        hit = self.cache.get(key, time.monotonic())
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        shared = self._pending.get(key)
        if shared is None or shared.task.done() or shared.task.get_loop() is not loop:
            shared = _Shared(loop.create_task(self._fetch(key, rtype)))
            self._pending[key] = shared
            shared.task.add_done_callback(
                lambda t: self._pending.pop(key, None)
                if (p := self._pending.get(key)) is not None and p.task is t else None)
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.task)
        except asyncio.CancelledError:
            if shared.waiters == 1 and not shared.task.done():
                # The last caller gave up: so does the question (Rule 9).
                if self._pending.get(key) is shared:
                    del self._pending[key]
                shared.task.cancel()
                await asyncio.wait((shared.task,))
            raise
        finally:
            shared.waiters -= 1

    async def _fetch(self, key: tuple[str, str], rtype: str) -> Answer:
        """One question on the wire for every caller asking it at the same time (Rule 9)."""
        answer, whole_name = await self._ask(key[0], rtype)
        self.cache.put(key, answer, time.monotonic(), whole_name=whole_name)
        return answer

    async def _ask(self, name: str, rtype: str) -> tuple[Answer, bool]:
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return Answer(name, rtype, "error"), False
        if qname == dns.name.root:
            return Answer(name, rtype, "error"), False  # "" or ".": no host to resolve
        failures: list[tuple[str, Nameserver]] = []
        servers = self.config.nameservers
        for _round in range(self.config.attempts):
            for ns in servers:
                status, response = await self._send(qname, rtype, ns)
                if response is not None:
                    return _read(response, qname, rtype, ns, self.config)
                failures.append((status, ns))
                if rtype in _WANT_DNSSEC and self.config.trusts(ns):
                    servers = (ns,)  # the validator's verdict stands (Rule 4)
                    break
        if not failures:
            return Answer(name, rtype, "error"), False
        statuses = {s for s, _ns in failures}
        status, ns = failures[-1]
        if statuses != {"timeout"} and status == "timeout":
            status, ns = next((s, n) for s, n in reversed(failures) if s != "timeout")
        return Answer(name, rtype, status, nameserver=ns), False

    async def _send(self, qname: dns.name.Name, rtype: str,
                    ns: Nameserver) -> tuple[str, dns.message.Message | None]:
        """One try at one nameserver: ("ok", response) for NOERROR/NXDOMAIN, else
        (failure, None) (Rules 2-4)."""
        query, tail = _question(qname, rtype)
        qid = dns.entropy.random_16()
        wire = qid.to_bytes(2, "big") + tail

        def answer(data: bytes) -> dns.message.Message | None:
            """The reply to this query in `data`, or None: not it, or not a message (Rule 3)."""
            try:
                reply = dns.message.from_wire(data, raise_on_truncation=True)
            except dns.message.Truncated as truncated:
                # Header and question: enough to match it and to ask again over TCP.
                reply = cast(dns.message.Message, truncated.message())  # type: ignore[no-untyped-call]
            except Exception:  # any parse failure: a datagram to skip (Rule 3)
                return None
            if reply.id != qid:
                return None
            reply.id = query.id  # the shared question's ID: is_response() checks the rest
            matched = query.is_response(reply)
            reply.id = qid
            return reply if matched else None

        self.sent += 1
        try:
            async with asyncio.timeout(self.config.timeout):
                response = await transport.udp(wire, ns, answer)
            if response.flags & dns.flags.TC:
                async with asyncio.timeout(self.config.timeout):
                    streamed = answer(await transport.tcp(wire, ns))
                if streamed is None or streamed.flags & dns.flags.TC:
                    return "error", None
                response = streamed
        except TimeoutError:
            return "timeout", None
        except (OSError, EOFError):
            return "error", None
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return "ok", response
        if rcode == dns.rcode.SERVFAIL:
            return "servfail", None
        if rcode == dns.rcode.REFUSED:
            return "refused", None
        return "error", None

    def forget(self, names: Iterable[str]) -> int:
        """Forget every answer (any rtype) for these names: a race to them failed, so what
        the DNS said may be what failed (cache.py). Returns the number of entries dropped."""
        return self.cache.forget(names)

    def flush(self, interface: str | None = None) -> int:
        """Forget answers a network change on `interface` may have made wrong; None: all.

        Dropped: what that interface's own nameservers said, and what every nameserver not
        tied to an interface said (a resolv.conf server, systemd-resolved's stub on
        127.0.0.53) since its answers may have come through that interface. Kept: the other
        interfaces' per-link answers. Returns the number of entries dropped."""
        if interface is None:
            return self.cache.flush(None)
        return self.cache.flush(ns for ns in self.config.nameservers
                                if ns.interface in (interface, None))


_default: tuple[ResolverConfig, DnsClient] | None = None


def default_client() -> DnsClient | None:
    """The client for this machine's resolvers now (Rule 8); None when none is configured."""
    global _default
    config = system_config()
    if not config.nameservers:
        return None
    if _default is None or _default[0] != config:
        _default = (config, DnsClient(config))
    return _default[1]
