"""The live Environment: what the runtime and a non-dry-run explain decide against.

Rule 1: this is where the I/O the decision core refuses to do happens (interface discovery,
name resolution), so that `decide()` itself stays pure.
Rule 2: discovery is cached for a short time: a process opening many carriers should not walk
sysfs for each one, and interfaces rarely change within a second. The MPTCP path manager
(two sysctls) is read with the interfaces and cached with them. A refresh that finds the
same interfaces keeps the same snapshot object, so the runtime's plan cache (keyed on its
identity) survives it. `invalidate()` drops the cache (a failed race calls it, since a
vanished interface is a likely cause).
Rule 3: `refresh()` discovers now, whatever the cache's age: the path monitor calls it when the
kernel reports a change, so the next decision sees a new interface at once instead of after
the TTL. It keeps the snapshot's identity when nothing changed (Rule 2), so a change that
discovery cannot see (a link-local address, a flag) costs no plan.
Rule 4: a live Environment is stamped with the wall clock (`now = time.time()`), the clock the
Association's history entries are stamped with (runtime/association.py Rule 10), so
`racing.failureMemory` measures a failure's age in real seconds, across restarts too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from ..decision.environment import CacheEntry, Environment, Interface
from .interfaces import discover_interfaces

__all__ = ["addresses_of", "cached_interfaces", "cached_path_manager", "invalidate",
           "live_environment", "refresh", "resolve_name"]

_TTL = 2.0
_cache: tuple[float, tuple[Interface, ...], str] | None = None
"""(when, interfaces, MPTCP path manager): discovered together, aged together (Rule 2)."""


def cached_interfaces() -> tuple[Interface, ...]:
    if _cache is None or time.monotonic() - _cache[0] > _TTL:
        return refresh()
    return _cache[1]


def cached_path_manager() -> str:
    """The MPTCP path manager (system/mptcp.py `path_manager()`) under the interfaces' TTL
    (Rule 2): its two sysctls are read with the interfaces, not opened on every decision."""
    cached_interfaces()  # refreshes both when the snapshot is stale
    assert _cache is not None
    return _cache[2]


def refresh() -> tuple[Interface, ...]:
    """Discover the interfaces and the path manager now and make that the cached snapshot
    (Rule 3); the previous interfaces tuple itself when nothing changed."""
    global _cache
    from .mptcp import path_manager  # here: ctypes and sockets only when a decision is made

    fresh = tuple(discover_interfaces())
    if _cache is not None and fresh == _cache[1]:
        fresh = _cache[1]  # unchanged: the same object, so plans keyed on it stay valid
    _cache = (time.monotonic(), fresh, path_manager())
    return fresh


def invalidate() -> None:
    global _cache
    _cache = None


def resolve_name(host: str, port: int) -> tuple[str, ...]:
    """Addresses for `host` in the resolver's order, IPv6 and IPv4; () if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return ()
    return addresses_of(infos)


def addresses_of(infos: Sequence[tuple[Any, ...]]) -> tuple[str, ...]:
    """getaddrinfo() answers as addresses: resolver order kept, duplicates and zones dropped.
    Shared by this blocking lookup and Remote.lookup() on the event loop."""
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%")[0], None)
    return tuple(seen)


def live_environment(host: str | None = None, port: int = 0,
                     cache: tuple[CacheEntry, ...] = (),
                     addresses: tuple[str, ...] | None = None) -> Environment:
    """This machine now (Rule 4). `addresses` skips the blocking resolver when the caller
    resolved."""
    env = Environment(cached_interfaces(), {}, cache, source=None,
                      path_manager=cached_path_manager(), now=time.time())
    if host is not None:
        env = env.with_dns(host, addresses if addresses is not None
                           else resolve_name(host, port))
    return env

