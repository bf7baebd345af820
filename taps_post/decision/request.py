"""What is being asked for: a target parsed into scheme, host and port, plus who asks and how.

Rule 1: parsing a target never touches DNS; a name stays a name until the Environment (live
or snapshot) supplies its addresses.
Rule 2: the schemes a target may use are the stack catalogue's, read at parse time, so a
scheme a plug-in stack brings is accepted as soon as the stack is registered.
Rule 3: parsing is a pure function of the target, the app, the kind and the catalogue, so its
results are cached (a bad target raises every time: exceptions are not cached).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..diagnostics import Diagnostic, InputError
from ..policy import catalog
from ..policy.registry import DEFAULT_PORTS, KINDS

__all__ = ["Request", "is_ip_address", "parse_target"]


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the policy engine matches it: parsed once, so rules match on fields
    instead of re-parsing the target per rule."""

    target: str
    scheme: str
    """https, tls, tcp, udp, quic, or hostport for the bare `host:port` form."""
    host: str
    """Lower-cased name, or an IP literal without brackets."""
    port: int
    app: str | None = None
    kind: str = "initiate"

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_ip_literal(self) -> bool:
        return is_ip_address(self.host)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "app": self.app, "kind": self.kind, "host": self.host,
                "port": self.port, "scheme": self.scheme}


@functools.lru_cache(maxsize=1024)
def is_ip_address(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address, as ipaddress.ip_address reads it. Cached:
    parsing an address costs microseconds, every connect checks its host, and a process asks
    about the same hosts again and again."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _fail(target: str, message: str) -> InputError:
    return InputError([Diagnostic("target", f"{target!r}: {message}")])


def parse_target(target: str, *, app: str | None = None, kind: str = "initiate") -> Request:
    """Parse `scheme://host[:port]` or `host:port` (IPv6 literals in brackets)."""
    return _parse(target, app, kind, catalog.version())


@functools.lru_cache(maxsize=1024)
def _parse(target: str, app: str | None, kind: str, _catalog_version: int) -> Request:
    """Cached (Rule 3): a process connects to the same few targets again and again, a parse
    costs microseconds of every connect, and a Request is immutable. The catalogue's version
    is in the key, so a scheme registered later is not refused from the cache (Rule 2)."""
    if kind not in KINDS:
        raise InputError([Diagnostic("kind", f"{kind!r} is not one of {', '.join(KINDS)}")])
    text = target.strip()
    if not text:
        raise _fail(target, "empty target")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        schemes = catalog.schemes()
        if scheme not in schemes:
            raise _fail(target, f"unknown scheme {scheme!r}; expected one of "
                                f"{', '.join(schemes)}, or host:port")
        try:
            parts = urlsplit(text)
            host = parts.hostname
            port = parts.port
        except ValueError as exc:
            raise _fail(target, str(exc)) from None
        if not host:
            raise _fail(target, "no host in the URL")
        if port is None:
            port = DEFAULT_PORTS.get(scheme)
            if port is None:
                raise _fail(target, f"{scheme}:// needs a port")
    else:
        scheme = "hostport"
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise _fail(target, "expected [ipv6]:port")
            host, port_text = text[1:close], text[close + 2 :]
        else:
            if text.count(":") != 1:
                raise _fail(target, "expected scheme://host[:port] or host:port "
                                    "(IPv6 literals in brackets)")
            host, port_text = text.split(":")
        if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
            raise _fail(target, f"port {port_text!r} is not a number from 0 to 65535")
        port = int(port_text)
        if not host:
            raise _fail(target, "no host")
    host = host.lower()
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise _fail(target, f"{host!r} is not an IPv6 address") from None
    return Request(target=target, scheme=scheme, host=host, port=port, app=app, kind=kind)
