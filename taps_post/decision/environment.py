"""The Environment: everything the decision core knows about the machine, as plain values.

Rule 1: an Environment is data. The runtime fills it from the live machine
(`taps_post.system.interfaces`), a dry run reads it from a snapshot file; `decide()` cannot tell
them apart, which is why a dry run and a real connection never disagree.
Rule 2: this module does no I/O except `load_environment()` reading a snapshot the user named.
Rule 3: what a name may be is decided here, once, for every place that takes one from a user
(`host_name_problem`, `interface_name_problem`): a snapshot, a Remote and a Local all refuse
the same names with the same words, and a name that reaches a message or a terminal is
printable and short.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .names import Arrival, ServiceRecord, TlsaSet
from .request import is_ip_address

__all__ = [
    "Address",
    "CacheEntry",
    "Environment",
    "Interface",
    "MptcpEndpoint",
    "host_name_problem",
    "interface_name_problem",
    "shown",
]

IFNAMSIZ = 16
"""Linux's interface name buffer, NUL included: a name is at most 15 bytes."""
MAX_HOST_NAME = 253
"""RFC 1035 section 2.3.4: 255 octets on the wire, 253 characters as text."""
MAX_LABEL = 63
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?", re.IGNORECASE)
_NUMERIC = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
"""A last label that inet_aton(3) (and the WHATWG URL parser) reads as a number: a name
ending in one is an IPv4 address in disguise (`127.1`, `0x7f000001`) or an invalid one."""


def shown(text: str, limit: int = 40) -> str:
    """`text` for a message: repr() (so a newline or NUL is visible, never printed raw), cut
    to about `limit` characters with its length said, so a 10 KB name makes a short line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def host_name_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a DNS host name, or None when it is one.

    A name is ASCII letters, digits, `-` and `_` in dot-separated labels of 1-63
    characters (no leading or trailing `-`), 253 characters at most, one trailing dot allowed
    (RFC 1035, RFC 1123 section 2.1). Its last label is not all digits (nor 0x hex): such a
    "name" is an IPv4 address to the resolver, so `256.256.256.256` and `1.2.3` are refused
    instead of resolved as something else. Non-ASCII names are refused: the stdlib's IDNA
    2003 codec maps some names (`faß.de`) differently from IDNA 2008, so converting them
    silently could reach another host; the caller gives the A-label (`xn--...`) form."""
    if not isinstance(host, str):
        return f"a host name must be a string, not {type(host).__name__}"
    if not host:
        return "empty host name"
    if is_ip_address(host):
        return None
    if ":" in host:
        return f"{shown(host)} is not an IPv6 address"
    if not host.isascii():
        return (f"{shown(host)} is not ASCII; give an internationalised name in its IDNA "
                "A-label form (xn--...)")
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOST_NAME:
        return f"host name of {len(name)} characters is over {MAX_HOST_NAME}: {shown(host)}"
    labels = name.split(".")
    for label in labels:
        if not label:
            return f"{shown(host)} has an empty label (two dots in a row, or a leading dot)"
        if len(label) > MAX_LABEL:
            return (f"{shown(host)} has a label of {len(label)} characters; a label holds "
                    f"at most {MAX_LABEL}")
        if not _LABEL.fullmatch(label):
            return (f"{shown(host)} is not a host name: label {shown(label)} may hold only "
                    "letters, digits, '-' and '_', and not start or end with '-'")
    if _NUMERIC.fullmatch(labels[-1]):
        return (f"{shown(host)} is not a valid IPv4 address, and a host name's last label "
                "is not a number")
    return None


def interface_name_problem(name: str) -> str | None:
    """Why `name` cannot be a network interface's name, or None: what Linux's
    dev_valid_name() refuses (empty, `.` or `..`, over 15 bytes, `/`, `:` or whitespace), and
    any other character that is not printable (NUL, escape sequences), since the name is
    printed by `taps-post interfaces` and in explanations."""
    if not isinstance(name, str):
        return f"an interface name must be a string, not {type(name).__name__}"
    if not name:
        return "empty interface name"
    if name in (".", ".."):
        return f"{name!r} is not an interface name"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size >= IFNAMSIZ:
        return (f"interface name {shown(name)} is {size} bytes; Linux allows at most "
                f"{IFNAMSIZ - 1}")
    for ch in name:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            return (f"interface name {shown(name)} holds {ch!r}; a name may not hold '/', "
                    "':', whitespace or control characters")
    return None


@dataclass(frozen=True, slots=True)
class Address:
    """One local address of an interface; `temporary` is kept because
    `useTemporaryLocalAddress` chooses between the addresses of one interface."""

    address: str
    """The IP address as text, without a zone index."""
    temporary: bool = False
    """A temporary (privacy) IPv6 address, RFC 8981."""

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.address else "ipv4"

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address)


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface as the decision core sees it: plain values, so a snapshot file and
    live discovery produce the same thing and decide() cannot tell them apart."""

    name: str
    type: str
    """One of loopback, ethernet, wifi, cellular, vpn, other."""
    up: bool = True
    addresses: tuple[Address, ...] = ()
    metered: bool = False
    cost: int = 0
    pvd: str | None = None
    mtu: int | None = None
    gateways: tuple[str, ...] = ()
    """Default gateways reached through this interface."""

    def addresses_of(self, family: str) -> list[Address]:
        return [a for a in self.addresses if a.family == family]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Path history: how an earlier attempt to `remote` over `stack` went. Ranking by what
    worked before is how decisions improve without probing the network."""

    remote: str
    """"host:port" as the target named it ("[v6]:port" for IPv6 literals)."""
    stack: str
    outcome: str
    """success, failure, or fallback: an MPTCP stack whose peer answered as plain TCP (the
    connection worked, without multipath; decide() then ranks the plain stack first)."""
    rtt_ms: float | None = None
    ticket: bool = False
    interface: str | None = None
    address: str | None = None
    """The remote address the attempt went to, when the entry is that specific."""
    at: float | None = None
    """When the outcome was recorded, in seconds on the clock of `Environment.now` (wall
    clock: the on-disk store keeps it across processes). A failure within
    `racing.failureMemory` of `now` demotes its candidate (docs/explain.md, "The ranking
    key"); None: no time known, which counts as recent."""
    port: int | None = None
    """The remote port the attempt went to (an SVCB/HTTPS record can send one stack to the
    same address on two ports); None: any port (an entry recorded without one)."""


def _service_dict(r: ServiceRecord) -> dict[str, Any]:
    """A ServiceRecord as a snapshot's `svcb:` item: priority and target, then only the
    fields the record has (an AliasMode item takes nothing else)."""
    out: dict[str, Any] = {"priority": r.priority, "target": r.target}
    for name, value in (("alpn", list(r.alpn)), ("no_default_alpn", r.no_default_alpn),
                        ("port", r.port), ("ipv4hint", list(r.ipv4hint)),
                        ("ipv6hint", list(r.ipv6hint)), ("ech", r.ech),
                        ("mandatory", list(r.mandatory)), ("ttl", r.ttl)):
        if value is not None and value is not False and value != []:  # port 0 is a port
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class MptcpEndpoint:
    """One in-kernel MPTCP path manager endpoint (`ip mptcp endpoint show`): under the kernel
    path manager the kernel opens subflows from these, whatever the policy says, so explain
    warns about one on an interface the policy excludes."""

    address: str
    interface: str | None = None
    """The `dev` it is bound to; None: the interface holding `address`."""
    flags: tuple[str, ...] = ()
    """Of "signal", "subflow", "backup", "fullmesh", "implicit"."""
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Environment:
    """Interfaces, DNS answers and the Association cache a decision is made against: passed
    in, never looked up, which is what keeps decide() pure and a dry run reproducible."""

    interfaces: tuple[Interface, ...] = ()
    dns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cache: tuple[CacheEntry, ...] = ()
    source: str | None = None
    """Where this snapshot came from (a file path, "<dict>", or None for the live machine)."""
    path_manager: str | None = None
    """The MPTCP path manager in force: "kernel", "userspace", "disabled" (MPTCP off), or
    None when unknown (a snapshot that does not say)."""
    mptcp_endpoints: tuple[MptcpEndpoint, ...] = ()
    """The in-kernel path manager's endpoints (`mptcp: {endpoints: [...]}` in a snapshot)."""
    svcb: Mapping[str, tuple[ServiceRecord, ...]] = field(default_factory=dict)
    """SVCB/HTTPS records by owner name (`names.service_query`). An empty tuple is a
    negative answer (the name has none); a missing name was not asked or has not answered."""
    tlsa: Mapping[str, TlsaSet] = field(default_factory=dict)
    """TLSA record sets by `_port._proto.host` name (`names.tlsa_name`); missing: not asked
    or not answered, a set with no records: a negative answer."""
    arrivals: tuple[Arrival, ...] = ()
    """When each answer arrived (resolution passes); empty: everything was known at once."""
    now: float | None = None
    """The time of the decision, on the clock of `CacheEntry.at` (None: every failure in
    the cache counts as recent)."""

    def with_dns(self, name: str, addresses: Sequence[str]) -> Environment:
        dns = dict(self.dns)
        dns[name.lower()] = tuple(addresses)
        return replace(self, dns=dns)

    def with_interfaces(self, interfaces: Sequence[Interface]) -> Environment:
        return replace(self, interfaces=tuple(interfaces))

    def to_dict(self) -> dict[str, Any]:
        return {
            "interfaces": [
                {
                    "name": i.name,
                    "type": i.type,
                    "up": i.up,
                    "addresses": [
                        a.address if not a.temporary else {"address": a.address, "temporary": True}
                        for a in i.addresses
                    ],
                    "metered": i.metered,
                    "cost": i.cost,
                    **({"pvd": i.pvd} if i.pvd else {}),
                    **({"mtu": i.mtu} if i.mtu is not None else {}),
                    **({"gateways": list(i.gateways)} if i.gateways else {}),
                }
                for i in self.interfaces
            ],
            "dns": {k: list(v) for k, v in self.dns.items()},
            **({"svcb": {owner: [_service_dict(r) for r in records]
                         for owner, records in self.svcb.items()}} if self.svcb else {}),
            **({"tlsa": {name: {"validated": t.validated,
                                "records": [{"usage": r.usage, "selector": r.selector,
                                             "matching": r.matching, "data": r.data.hex()}
                                            for r in t.records]}
                         for name, t in self.tlsa.items()}} if self.tlsa else {}),
            **({"arrivals": [
                {"name": a.name, "type": a.rtype, "at_ms": a.at_ms,
                 **({"ttl": a.ttl} if a.ttl is not None else {}),
                 **({"negative": True} if a.negative else {})}
                for a in self.arrivals]} if self.arrivals else {}),
            "cache": [
                {k: v for k, v in (
                    ("remote", c.remote), ("stack", c.stack), ("outcome", c.outcome),
                    ("rtt_ms", c.rtt_ms), ("age_s", self._age(c)), ("ticket", c.ticket),
                    ("interface", c.interface), ("address", c.address), ("port", c.port),
                ) if v is not None}
                for c in self.cache
            ],
            **({"mptcp": self._mptcp_dict()}
               if self.path_manager is not None or self.mptcp_endpoints else {}),
        }

    def _age(self, entry: CacheEntry) -> float | None:
        """A snapshot's `age_s` of `entry`: seconds between its `at` and `now` (a snapshot
        has no clock, so times are written as ages; None when either time is unknown)."""
        if entry.at is None or self.now is None:
            return None
        return max(0.0, self.now - entry.at)

    def _mptcp_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.path_manager is not None:
            out["pathManager"] = self.path_manager
        if self.mptcp_endpoints:
            out["endpoints"] = [
                {k: v for k, v in (("address", e.address), ("interface", e.interface),
                                   ("flags", list(e.flags)), ("id", e.id))
                 if v is not None}
                for e in self.mptcp_endpoints]
        return out
