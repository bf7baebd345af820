"""The Environment: everything the decision core knows about the machine, as plain values.

Rule 1: an Environment is data. The runtime fills it from the live machine
(`taps_post.system.interfaces`), a dry run reads it from a snapshot file; `decide()` cannot tell
them apart, which is why a dry run and a real connection never disagree.
Rule 2: this module does no I/O except `load_environment()` reading a snapshot the user named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Address",
    "CacheEntry",
    "Environment",
    "Interface",
]


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
    """success or failure."""
    rtt_ms: float | None = None
    ticket: bool = False
    interface: str | None = None
    address: str | None = None
    """The remote address the attempt went to, when the entry is that specific."""


@dataclass(frozen=True, slots=True)
class Environment:
    """Interfaces, DNS answers and the Association cache a decision is made against: passed
    in, never looked up, which is what keeps decide() pure and a dry run reproducible."""

    interfaces: tuple[Interface, ...] = ()
    dns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cache: tuple[CacheEntry, ...] = ()
    source: str | None = None
    """Where this snapshot came from (a file path, "<dict>", or None for the live machine)."""

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
            "cache": [
                {k: v for k, v in (
                    ("remote", c.remote), ("stack", c.stack), ("outcome", c.outcome),
                    ("rtt_ms", c.rtt_ms), ("ticket", c.ticket), ("interface", c.interface),
                    ("address", c.address),
                ) if v is not None}
                for c in self.cache
            ],
        }
