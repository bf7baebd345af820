"""Compiled `when` matchers.

Rule 1: a `When` is compiled once, at load time, into a closure-free object whose `matches()`
does no parsing: the decision core calls it for every rule on every request.
Rule 2: host globs are case-insensitive (DNS names are); app globs are case-sensitive.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Protocol

from .model import When

__all__ = ["Matcher", "Subject", "check_glob", "compile_when", "glob_regex"]


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

    def matches(self, subject: Subject) -> bool:
        if self.kinds and subject.kind not in self.kinds:
            return False
        if self.schemes and subject.scheme not in self.schemes:
            return False
        if self.ports:
            port = subject.port
            if port is None or not any(lo <= port <= hi for lo, hi in self.ports):
                return False
        if self.apps:
            app = subject.app
            if app is None or not any(p.match(app) for p in self.apps):
                return False
        if self.has_host:
            host = subject.host
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
    for h in when.host or ():
        if "/" in h:
            host_nets.append(ipaddress.ip_network(h, strict=False))
        else:
            host_globs.append(glob_regex(h, True))
    return Matcher(
        apps=tuple(glob_regex(a) for a in when.app or ()),
        host_globs=tuple(host_globs),
        host_nets=tuple(host_nets),
        ports=when.port or (),
        schemes=frozenset(when.scheme or ()),
        kinds=frozenset(when.kind or ()),
        specificity=when.specificity,
        has_host=bool(when.host),
    )
