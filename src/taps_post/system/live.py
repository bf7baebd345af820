"""The live Environment: what the runtime and a non-dry-run explain decide against.

Rule 1: this is where the I/O the decision core refuses to do happens (interface discovery,
name resolution), so that `decide()` itself stays pure.
"""

from __future__ import annotations

import socket

from ..decision.environment import CacheEntry, Environment
from .interfaces import discover_interfaces

__all__ = ["live_environment", "resolve_name"]


def resolve_name(host: str, port: int) -> tuple[str, ...]:
    """Addresses for `host` in the resolver's order, IPv6 and IPv4; () if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return ()
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%")[0], None)
    return tuple(seen)


def live_environment(host: str | None = None, port: int = 0,
                     cache: tuple[CacheEntry, ...] = ()) -> Environment:
    env = Environment(tuple(discover_interfaces()), {}, cache, source=None)
    if host is not None:
        env = env.with_dns(host, resolve_name(host, port))
    return env
