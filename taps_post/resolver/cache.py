"""The DNS cache: answers live exactly as long as their TTL says, within bounds.

Rule 1: sans-I/O. Every call takes `now` (monotonic seconds), so the rules below are tested
with numbers instead of sleeps, and the client decides which clock to use.
Rule 2: entries are keyed by (name, rtype), lower case, without the final dot (`normal`), not
by the nameserver: the system's nameservers are meant to give one view of the DNS, and an answer
from the second server is as good as one from the first. Each entry records the nameserver
that gave it, so `flush(nameservers)` drops what a changed network may have made wrong.
Rule 3: a positive answer lives min(max(TTL, 1), 3600) seconds: the floor so that the A and
AAAA queries of one connection and its next resolution pass share a TTL-0 answer, the cap so
that a record published with a week's TTL is asked again within the hour.
Rule 4: a negative answer (NXDOMAIN or NODATA) lives as RFC 2308 section 5 says: the TTL the
client computed as min(SOA TTL, SOA MINIMUM) from the authority section, floor 1 s, capped at
900 s. A negative answer without an SOA is not cached (RFC 2308 section 5: SHOULD NOT).
Rule 5: failures (servfail, refused, timeout, error) are not cached. They are a statement
about one nameserver at one moment, not about the name; the recursive resolver behind the
nameserver already caches them (RFC 9520 is its duty), and caching them here would make a
recovered server look broken while the caller falls back to getaddrinfo anyway.
Rule 6: at most `max_entries` (4096) entries and at most `max_bytes` (4 MiB) of answer data,
estimated from what an entry holds (`size()`: its names, addresses, service records and TLSA
data, plus a fixed overhead per entry and per record); a put beyond either bound evicts the
least recently used entries until both hold, and an answer larger than `max_bytes` alone is
not cached. The count alone would let 4096 answers an attacker chose (a name with 4000
addresses, an HTTPS RRset of 64 KiB) hold a gigabyte. An expired entry is dropped when it is
looked up.
Rule 7: a hit returns the Answer with `ttl` = the whole seconds it has left (rounded down, so a
caller never believes it lives longer than it does), its service records' ttl the same, and
`from_cache=True`.
Rule 8: an NXDOMAIN for a name the answer reached without a CNAME says the name does not
exist at all (RFC 2308 section 5), so the client puts it with `whole_name=True` and it also
answers the name's other record types while it lives; one that ended a CNAME chain speaks
for the chain's last name only and is kept for its own (name, rtype).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..decision.names import ServiceRecord, TlsaRecord, normal
from .conf import Nameserver

__all__ = ["FAILURES", "MAX_BYTES", "MAX_ENTRIES", "MAX_NEGATIVE_TTL", "MAX_TTL", "MIN_TTL",
           "Answer", "DnsCache", "cache_key", "size"]

MIN_TTL = 1
MAX_TTL = 3600
MAX_NEGATIVE_TTL = 900
MAX_ENTRIES = 4096
MAX_BYTES = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 256
"""Bytes counted per entry on top of its data: the key, the expiry, the Answer itself."""
_RECORD_OVERHEAD = 64
"""Bytes counted per address, service record or TLSA record besides its own text/data."""
_WHOLE_NAME = "*"
FAILURES = frozenset({"servfail", "refused", "timeout", "error"})


@dataclass(frozen=True, slots=True)
class Answer:
    """One DNS answer for (name, rtype), as plain values (resolver package Rule 1)."""

    name: str
    rtype: str
    status: str
    """ok | nxdomain | nodata | servfail | refused | timeout | error"""
    addresses: tuple[str, ...] = ()
    services: tuple[ServiceRecord, ...] = ()
    tlsa: tuple[TlsaRecord, ...] = ()
    ttl: int | None = None
    """Seconds the answer may be kept: the minimum over the CNAME chain and the records (for
    a negative answer the RFC 2308 TTL); None for a failure."""
    authenticated: bool = False
    """The AD bit was set and the system trusts the nameserver that set it (conf.py Rule 5)."""
    nameserver: Nameserver | None = None
    from_cache: bool = False

    @property
    def negative(self) -> bool:
        return self.status in ("nxdomain", "nodata")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        """servfail, refused, timeout or error: what the server could not say (Rule 5)."""
        return self.status in FAILURES


def cache_key(name: str, rtype: str) -> tuple[str, str]:
    return normal(name), rtype.upper()


def size(answer: Answer) -> int:
    """The bytes an answer is counted for (Rule 6): an estimate of what it holds, not
    Python's exact footprint, so the bound is the same on every interpreter."""
    total = _ENTRY_OVERHEAD + len(answer.name)
    total += sum(_RECORD_OVERHEAD + len(a) for a in answer.addresses)
    for s in answer.services:
        total += _RECORD_OVERHEAD + len(s.target) + sum(len(p) for p in s.alpn)
        total += sum(len(a) for a in (*s.ipv4hint, *s.ipv6hint))
        total += sum(len(k) for k in s.mandatory)
    total += sum(_RECORD_OVERHEAD + len(t.data) for t in answer.tlsa)
    return total


def lifetime(answer: Answer) -> int | None:
    """Seconds an answer is kept (Rules 3-5); None: not cached."""
    if answer.status == "ok":
        return max(MIN_TTL, min(MAX_TTL, answer.ttl if answer.ttl is not None else 0))
    if answer.negative and answer.ttl is not None:
        return max(MIN_TTL, min(MAX_NEGATIVE_TTL, answer.ttl))
    return None


class DnsCache:
    """(name, rtype) -> Answer with an expiry, LRU-bounded by entries and bytes (Rules 1-8)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], tuple[float, Answer, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The bytes the entries are counted for now (Rule 6)."""
        return self._bytes

    def get(self, key: tuple[str, str], now: float) -> Answer | None:
        key = cache_key(*key)
        answer = self._live(key, now)
        if answer is None:
            answer = self._live((key[0], _WHOLE_NAME), now)  # Rule 8
            if answer is None:
                return None
            answer = (replace(answer[0], rtype=key[1]), answer[1])
        left = answer[1]
        services = tuple(replace(s, ttl=left) for s in answer[0].services)
        return replace(answer[0], ttl=left, services=services, from_cache=True)

    def _live(self, key: tuple[str, str], now: float) -> tuple[Answer, int] | None:
        """The entry under `key` and its whole seconds left; an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer, _size = entry
        if now >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return answer, int(expires - now)

    def put(self, key: tuple[str, str], answer: Answer, now: float, *,
            whole_name: bool = False) -> bool:
        """Keep `answer` for its lifetime; False when the rules say it is not cached.
        `whole_name`: an NXDOMAIN that speaks for every type of the name (Rule 8)."""
        seconds = lifetime(answer)
        if seconds is None or answer.from_cache:
            return False
        cost = size(answer)
        if cost > self.max_bytes:
            return False
        key = cache_key(*key)
        keys = [key]
        if whole_name and answer.status == "nxdomain":
            keys.append((key[0], _WHOLE_NAME))
        for k in keys:
            self._drop(k)
            self._entries[k] = (now + seconds, answer, cost)
            self._bytes += cost
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _k, (_e, _a, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
        return key in self._entries

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]

    def forget(self, names: Iterable[str]) -> int:
        """Drop every entry (any rtype) of these names (a failed race's names); the number
        dropped."""
        drop = {normal(name) for name in names}
        keys = [k for k in self._entries if k[0] in drop]
        for k in keys:
            self._drop(k)
        return len(keys)

    def flush(self, nameservers: Iterable[Nameserver] | None = None) -> int:
        """Drop everything (None) or what these nameservers said; the number dropped."""
        if nameservers is None:
            count = len(self._entries)
            self._entries.clear()
            self._bytes = 0
            return count
        drop = set(nameservers)
        keys = [k for k, (_e, a, _s) in self._entries.items() if a.nameserver in drop]
        for k in keys:
            self._drop(k)
        return len(keys)
