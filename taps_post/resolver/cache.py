"""The DNS cache: answers live exactly as long as their TTL says, within bounds.

Rule 1: sans-I/O. Every call takes `now` (monotonic seconds), so the rules below are tested
with numbers instead of sleeps, and the client decides which clock to use.
Rule 2: entries are keyed by (name, rtype), lower case, without the final dot, not by the
nameserver: the system's nameservers are meant to give one view of the DNS, and an answer
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
Rule 6: at most `max_entries` (4096) entries; a put beyond that evicts the least recently used
one. An expired entry is dropped when it is looked up.
Rule 7: a hit returns the Answer with `ttl` = the whole seconds it has left (rounded down, so a
caller never believes it lives longer than it does), its service records' ttl the same, and
`from_cache=True`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..decision.names import ServiceRecord, TlsaRecord
from .conf import Nameserver

__all__ = ["FAILURES", "MAX_ENTRIES", "MAX_NEGATIVE_TTL", "MAX_TTL", "MIN_TTL", "Answer",
           "DnsCache", "cache_key"]

MIN_TTL = 1
MAX_TTL = 3600
MAX_NEGATIVE_TTL = 900
MAX_ENTRIES = 4096
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


def cache_key(name: str, rtype: str) -> tuple[str, str]:
    return name.lower().rstrip("."), rtype.upper()


def lifetime(answer: Answer) -> int | None:
    """Seconds an answer is kept (Rules 3-5); None: not cached."""
    if answer.status == "ok":
        return max(MIN_TTL, min(MAX_TTL, answer.ttl if answer.ttl is not None else 0))
    if answer.negative and answer.ttl is not None:
        return max(MIN_TTL, min(MAX_NEGATIVE_TTL, answer.ttl))
    return None


class DnsCache:
    """(name, rtype) -> Answer with an expiry, LRU-bounded (Rules 1-7)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str], now: float) -> Answer | None:
        key = cache_key(*key)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        left = int(expires - now)
        services = tuple(replace(s, ttl=left) for s in answer.services)
        return replace(answer, ttl=left, services=services, from_cache=True)

    def put(self, key: tuple[str, str], answer: Answer, now: float) -> bool:
        """Keep `answer` for its lifetime; False when the rules say it is not cached."""
        seconds = lifetime(answer)
        if seconds is None or answer.from_cache:
            return False
        key = cache_key(*key)
        self._entries[key] = (now + seconds, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def forget(self, names: Iterable[str]) -> int:
        """Drop every entry (any rtype) of these names (a failed race's names); the number
        dropped."""
        drop = {cache_key(name, "")[0] for name in names}
        keys = [k for k in self._entries if k[0] in drop]
        for k in keys:
            del self._entries[k]
        return len(keys)

    def flush(self, nameservers: Iterable[Nameserver] | None = None) -> int:
        """Drop everything (None) or what these nameservers said; the number dropped."""
        if nameservers is None:
            count = len(self._entries)
            self._entries.clear()
            return count
        drop = set(nameservers)
        keys = [k for k, (_e, a) in self._entries.items() if a.nameserver in drop]
        for k in keys:
            del self._entries[k]
        return len(keys)
