"""Live interface discovery: the kernel's view of the network as `Interface` values.

Rule 1: never raise because the machine looks odd. Containers hide sysfs, /proc can be masked,
netifaces may be missing; a fact we cannot read keeps its default, because the decision core is
better served by a slightly poorer Environment than by no Environment at all.
Rule 2: no asyncio (nor anything that drags it in): the CLI calls this on cold start.
Rule 3: how a name becomes a type is the `RULES` table, so changing it is a data edit and the
table doubles as the documentation.
Rule 4: interface names come from psutil only. sysfs is per *mount*, not per network namespace,
so it only ever refines facts about a name psutil (netlink / /proc) already reported.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import psutil

from taps_post.decision.environment import Address, Interface

__all__ = [
    "RULES",
    "ClassRule",
    "Inet6Entry",
    "classify",
    "discover_interfaces",
    "parse_if_inet6",
]

SYSFS_NET = "/sys/class/net"
PROC_IF_INET6 = "/proc/net/if_inet6"

# include/uapi/linux/if_arp.h
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 65534
# include/uapi/linux/if_addr.h; /proc/net/if_inet6 only shows the low 8 bits of the flags.
IFA_F_TEMPORARY = 0x01
# include/uapi/linux/if.h, for when psutil cannot give us the flags.
_IFF_NAMES = {0x1: "up", 0x8: "loopback", 0x10: "pointopoint", 0x40: "running"}


@dataclass(frozen=True, slots=True)
class ClassRule:
    """One row of the classification table: every condition the row sets must hold."""

    type: str
    names: tuple[str, ...] = ()
    """fnmatch patterns (case-sensitive), any may match; empty means any name."""
    sysfs_types: frozenset[int] = frozenset()
    """ARPHRD_* values from /sys/class/net/NAME/type; empty means any (or unknown)."""
    wireless: bool | None = None
    flags: frozenset[str] = frozenset()
    """Words that must all be in the interface's flags."""
    without: frozenset[str] = frozenset()
    """Words that must all be absent from the interface's flags."""
    why: str = ""

    def matches(
        self, name: str, sysfs_type: int | None, wireless: bool, flags: Collection[str]
    ) -> bool:
        return (
            (not self.names or any(fnmatchcase(name, p) for p in self.names))
            and (not self.sysfs_types or sysfs_type in self.sysfs_types)
            and (self.wireless is None or self.wireless == wireless)
            and self.flags.issubset(flags)
            and self.without.isdisjoint(flags)
        )


def _rule(
    type_: str,
    names: Sequence[str] = (),
    sysfs_types: Collection[int] = (),
    *,
    wireless: bool | None = None,
    flags: Collection[str] = (),
    without: Collection[str] = (),
    why: str = "",
) -> ClassRule:
    return ClassRule(
        type_, tuple(names), frozenset(sysfs_types), wireless, frozenset(flags),
        frozenset(without), why,
    )


RULES: tuple[ClassRule, ...] = (
    _rule("loopback", sysfs_types=[ARPHRD_LOOPBACK], why="ARPHRD_LOOPBACK"),
    _rule("loopback", ["lo"], why="sysfs unreadable"),
    _rule("loopback", flags=["loopback"], why="IFF_LOOPBACK, sysfs unreadable"),
    _rule("wifi", wireless=True, why="wireless/ or phy80211 in sysfs: cfg80211 owns it"),
    _rule("cellular", ["wwan*", "rmnet*", "ccmni*"], why="WWAN, Qualcomm and MediaTek modems"),
    _rule("other", ["ppp*"], why="a modem's PPP link or a PPTP/L2TP tunnel: the system "
                                 "policy must say which"),
    _rule("vpn", ["tun*", "tap*", "wg*", "utun*", "ipsec*", "vpn*", "tailscale*"],
          why="tunnel names, checked before the type so a tap (ARPHRD_ETHER) is not ethernet"),
    _rule("vpn", sysfs_types=[ARPHRD_NONE], why="ARPHRD_NONE: tun devices, WireGuard"),
    _rule("ethernet", ["eth*", "en*", "em*"], why="kernel and predictable NIC names"),
    _rule("ethernet", sysfs_types=[ARPHRD_ETHER], flags=["device"],
          why="ARPHRD_ETHER backed by a bus device: a real NIC whatever its name"),
    _rule("ethernet", ["veth*", "dummy*"], [ARPHRD_ETHER], without=["device"],
          why="test namespaces use these as stand-in NICs and the core must be able to use "
              "them"),
    _rule("other", why="bridges, docker*, br-*, virbr*, ifb*, ... : not a path of their own"),
)
"""First match wins. `flags` words are the kernel IFF_* flag names as psutil spells them
(`up`, `loopback`, `pointopoint`, ...) plus `device` when /sys/class/net/NAME/device exists."""


def classify(
    name: str, sysfs_type: int | None, wireless: bool, flags: Collection[str] = ()
) -> str:
    """The interface type per `RULES`; total, so every interface gets a type."""
    for rule in RULES:
        if rule.matches(name, sysfs_type, wireless, flags):
            return rule.type
    return "other"


@dataclass(frozen=True, slots=True)
class Inet6Entry:
    """One line of /proc/net/if_inet6."""

    address: str
    ifindex: int
    prefixlen: int
    scope: int
    flags: int
    name: str

    @property
    def temporary(self) -> bool:
        return bool(self.flags & IFA_F_TEMPORARY)


def parse_if_inet6(text: str) -> list[Inet6Entry]:
    """Parse /proc/net/if_inet6, the one place that says which IPv6 addresses are temporary
    without a netlink dump. Malformed lines are skipped, not fatal."""
    entries: list[Inet6Entry] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        hexaddr, ifindex, prefixlen, scope, flags, name = fields
        try:
            entries.append(
                Inet6Entry(
                    str(ipaddress.IPv6Address(int(hexaddr, 16))),
                    int(ifindex, 16), int(prefixlen, 16), int(scope, 16), int(flags, 16), name,
                )
            )
        except ValueError:
            continue
    return entries


def discover_interfaces() -> list[Interface]:
    """Every interface of this network namespace, sorted by name."""
    raw_addrs = _call_psutil(psutil.net_if_addrs)
    stats = _call_psutil(psutil.net_if_stats)
    temporary = {(e.name, e.address) for e in _read_if_inet6() if e.temporary}
    gateways = _default_gateways()

    known = set(stats) | {n for n in raw_addrs if ":" not in n}
    grouped: dict[str, list[Any]] = {name: [] for name in known}
    for name, items in raw_addrs.items():
        # An IPv4 address with a label ("ip addr add ... label eth0:1") is reported under
        # the label; it still lives on (and routes through) the base interface.
        base = name.split(":", 1)[0]
        grouped.setdefault(base if base in known else name, []).extend(items)

    result: list[Interface] = []
    for name in sorted(grouped):
        stat = stats.get(name)
        if stat is not None:
            flags = {f for f in getattr(stat, "flags", "").split(",") if f}
            up, mtu = bool(stat.isup), (stat.mtu or None)
        else:
            flags = _sysfs_flags(name)
            up, mtu = "running" in flags, _sysfs_int(name, "mtu")
        if os.path.lexists(os.path.join(SYSFS_NET, name, "device")):
            flags.add("device")
        wireless = os.path.isdir(os.path.join(SYSFS_NET, name, "wireless")) or os.path.exists(
            os.path.join(SYSFS_NET, name, "phy80211")
        )
        kind = classify(name, _sysfs_int(name, "type"), wireless, flags)
        result.append(
            Interface(
                name=name,
                type=kind,
                up=up,
                addresses=_addresses(name, grouped[name], temporary),
                metered=kind == "cellular",
                cost=0,
                mtu=mtu,
                gateways=tuple(gateways.get(name, ())),
            )
        )
    return result


def _call_psutil(fn: Any) -> dict[str, Any]:
    try:
        return dict(fn())
    except OSError:
        return {}


def _addresses(
    name: str, items: Sequence[Any], temporary: Collection[tuple[str, str]]
) -> tuple[Address, ...]:
    v4: list[Address] = []
    v6: list[Address] = []
    seen: set[str] = set()
    for item in items:
        if item.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(str(item.address).split("%", 1)[0])
        except ValueError:
            continue
        text = str(ip)
        if text in seen or (ip.version == 6 and ip.is_link_local):
            continue
        seen.add(text)
        if ip.version == 4:
            v4.append(Address(text))
        else:
            v6.append(Address(text, temporary=(name, text) in temporary))
    return (*v4, *v6)


def _read_if_inet6() -> list[Inet6Entry]:
    try:
        with open(PROC_IF_INET6, encoding="ascii", errors="replace") as f:
            return parse_if_inet6(f.read())
    except OSError:
        return []


def _sysfs_int(name: str, attr: str) -> int | None:
    try:
        with open(os.path.join(SYSFS_NET, name, attr), encoding="ascii") as f:
            return int(f.read().strip(), 0)
    except (OSError, ValueError):
        return None


def _sysfs_flags(name: str) -> set[str]:
    value = _sysfs_int(name, "flags") or 0
    return {word for bit, word in _IFF_NAMES.items() if value & bit}


def _default_gateways() -> dict[str, list[str]]:
    """Interface name -> its default gateways, IPv4 first, the kernel's preferred one first."""
    try:
        # Through importlib: netifaces ships no stubs, and a ModuleType is typed as Any
        # attributes, which keeps mypy --strict clean with or without a per-module override.
        netifaces = importlib.import_module("netifaces")
    except ImportError:  # unmaintained C extension: may not build on every Python
        return {}
    try:
        table: Any = netifaces.gateways()
    except (OSError, ValueError):
        return {}
    if not isinstance(table, Mapping):
        return {}
    out: dict[str, list[str]] = {}
    defaults = table.get("default")
    for family in (socket.AF_INET, socket.AF_INET6):
        routes: list[Any] = []
        if isinstance(defaults, Mapping) and family in defaults:
            routes.append((*defaults[family], True))
        routes.extend(table.get(family) or ())
        for route in routes:
            if not isinstance(route, Sequence) or len(route) < 3 or not route[2]:
                continue
            gateway, iface = route[0], route[1]
            if not isinstance(gateway, str) or not isinstance(iface, str):
                continue
            gateway = gateway.split("%", 1)[0]
            listed = out.setdefault(iface, [])
            if gateway not in listed:
                listed.append(gateway)
    return out
