"""Compiled `when` matchers.

Rule 1: a `When` is compiled once, at load time, into a closure-free object whose `matches()`
does no parsing: the decision core calls it for every rule on every request.
Rule 2: host globs are case-insensitive (DNS names are); app globs are case-sensitive.
Rule 3: a `RuleIndex` finds the rules that can match a subject without running every
matcher, and always returns exactly what running every matcher in order returns: it only
skips rules that cannot match. It sorts rules by kind, scheme and app (a closed or per-process
set, one bucket each, built on first use), and within a bucket by host: a host glob that is a
literal name or `*` and a literal suffix is looked up, not run. Everything else (no host,
CIDRs, other globs, non-ASCII hosts, where case folding is not `str.lower`) runs as before.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .model import When

__all__ = ["Matcher", "RuleIndex", "Subject", "check_glob", "compile_when", "glob_regex"]


class Subject(Protocol):
    """What a rule can be matched against (a Request satisfies it): a Protocol, so the
    policy layer matches requests without importing the decision layer."""

    @property
    def app(self) -> str | None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def kind(self) -> str: ...


@functools.lru_cache(maxsize=4096)
def glob_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if ignore_case else 0)


def check_glob(pattern: str) -> str | None:
    """Why a glob is malformed, or None. fnmatch accepts anything, so we check brackets."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            start = i + 1
            if pattern[start : start + 1] == "!":
                start += 1
            if pattern[start : start + 1] == "]":
                start += 1
            close = pattern.find("]", start)
            if close < 0:
                return f"unclosed '[' in glob {pattern!r}"
            i = close
        i += 1
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled `When`, built at load time so that matching parses nothing per request.
    Empty tuples mean "any"."""

    apps: tuple[re.Pattern[str], ...]
    host_globs: tuple[re.Pattern[str], ...]
    host_nets: tuple[Network, ...]
    ports: tuple[tuple[int, int], ...]
    schemes: frozenset[str]
    kinds: frozenset[str]
    specificity: int
    has_host: bool
    host_keys: tuple[tuple[bool, str], ...] | None = None
    """The host globs as index keys (Rule 3): (False, name) for a literal name, (True, suffix)
    for `*` then a literal suffix, both lower case; None when any host condition is neither
    (a CIDR, another glob, a non-ASCII one): then the index runs this matcher for every host."""

    def matches(self, subject: Subject) -> bool:
        return (self.admits(subject.kind, subject.scheme, subject.app)
                and self.matches_target(subject.host, subject.port))

    def admits(self, kind: str, scheme: str, app: str | None) -> bool:
        """The conditions on who asks and how (kind, scheme, app): what the rule index sorts
        rules by (Rule 3), so a request tests them once per bucket, not once per rule."""
        if self.kinds and kind not in self.kinds:
            return False
        if self.schemes and scheme not in self.schemes:
            return False
        if self.apps:
            return app is not None and any(p.match(app) for p in self.apps)
        return True

    def matches_target(self, host: str, port: int | None) -> bool:
        """The conditions on where to (port, host)."""
        if self.ports and (port is None or not any(lo <= port <= hi for lo, hi in self.ports)):
            return False
        if self.has_host:
            if any(p.match(host) for p in self.host_globs):
                return True
            if self.host_nets:
                ip = _ip_literal(host)
                if ip is not None and any(ip in net for net in self.host_nets):
                    return True
            return False
        return True


@functools.lru_cache(maxsize=1024)
def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def compile_when(when: When) -> Matcher:
    host_globs: list[re.Pattern[str]] = []
    host_nets: list[Network] = []
    keys: list[tuple[bool, str]] | None = []
    for h in when.host or ():
        if "/" in h:
            host_nets.append(ipaddress.ip_network(h, strict=False))
            keys = None
        else:
            host_globs.append(glob_regex(h, True))
            key = _host_key(h)
            if key is None:
                keys = None
            elif keys is not None:
                keys.append(key)
    return Matcher(
        apps=tuple(glob_regex(a) for a in when.app or ()),
        host_globs=tuple(host_globs),
        host_nets=tuple(host_nets),
        ports=when.port or (),
        schemes=frozenset(when.scheme or ()),
        kinds=frozenset(when.kind or ()),
        specificity=when.specificity,
        has_host=bool(when.host),
        host_keys=tuple(keys) if keys and when.host else None,
    )


_GLOB_CHARS = frozenset("*?[")


def _host_key(glob: str) -> tuple[bool, str] | None:
    """A host glob as an index key, or None if it must be run (Rule 3)."""
    if not glob.isascii():
        return None
    if not _GLOB_CHARS.intersection(glob):
        return False, glob.lower()
    rest = glob[1:]
    if glob[0] == "*" and rest and not _GLOB_CHARS.intersection(rest):
        return True, rest.lower()
    return None


_BUCKET_LIMIT = 256


class RuleIndex:
    """The rules that can match a subject, in rule order (Rule 3).

    Policy holds hundreds of rules, most about other hosts, apps or kinds; every connect
    matches all of them, so the index is what keeps the decision's matching cost at the size
    of the rules that could apply rather than of the whole policy."""

    __slots__ = ("_buckets", "_matchers")

    def __init__(self, matchers: Sequence[Matcher]) -> None:
        self._matchers = tuple(matchers)
        self._buckets: dict[tuple[str, str, str | None], _Bucket] = {}

    def hits(self, subject: Subject) -> list[int]:
        """Positions of the matchers that match `subject`, ascending: what
        `[i for i, m in enumerate(matchers) if m.matches(subject)]` returns."""
        key = (subject.kind, subject.scheme, subject.app)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _BUCKET_LIMIT:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(self._matchers, subject)
        matchers, host, port = self._matchers, subject.host, subject.port
        # The bucket admitted kind, scheme and app: only the target's conditions are left.
        return [i for i in bucket.candidates(host) if matchers[i].matches_target(host, port)]


class _Bucket:
    """The matchers one (kind, scheme, app) admits, split by how their host is tested."""

    __slots__ = ("everything", "exact", "run", "suffix", "suffix_lengths")

    def __init__(self, matchers: Sequence[Matcher], subject: Subject) -> None:
        kind, scheme, app = subject.kind, subject.scheme, subject.app
        self.everything: list[int] = []
        self.run: list[int] = []  # no host condition, or one that is not indexed
        self.exact: dict[str, list[int]] = {}
        self.suffix: dict[str, list[int]] = {}
        for i, m in enumerate(matchers):
            if not m.admits(kind, scheme, app):
                continue
            self.everything.append(i)
            if m.host_keys is None:
                self.run.append(i)
                continue
            for is_suffix, text in m.host_keys:
                table = self.suffix if is_suffix else self.exact
                found = table.setdefault(text, [])
                if not found or found[-1] != i:
                    found.append(i)
        self.suffix_lengths = sorted({len(k) for k in self.suffix})

    def candidates(self, host: str) -> list[int]:
        if not host.isascii():
            return self.everything
        h = host.lower()
        extra: list[int] = [*self.exact.get(h, ())]
        n = len(h)
        for length in self.suffix_lengths:
            if length > n:
                break
            extra.extend(self.suffix.get(h[n - length:], ()))
        if not extra:
            return self.run
        return sorted({*self.run, *extra})
