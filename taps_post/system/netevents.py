"""Network changes as values: rtnetlink events parsed, and the diff of two interface snapshots.

The path monitor (`runtime/monitor.py`) learns from here that an interface or an address came
or went; this module knows nothing of event loops.

Rule 1: no asyncio and no event loop. `RtnlSource` is a non-blocking socket with `fileno()`
and `read()`, so whoever owns a loop decides how it is waited for (the monitor registers it
with `loop.add_reader`, which costs nothing while nothing changes).
Rule 2: netlink messages are parsed by pyroute2's own rtnl classes (its `MarshalRtnl`, which
maps RTM_NEWLINK/RTM_DELLINK to `ifinfmsg` and RTM_NEWADDR/RTM_DELADDR to `ifaddrmsg`), never
unpacked by hand here: the attribute layouts are pyroute2's to keep right. pyroute2 is imported
when a source is opened, not with this module (it costs a fifth of a second, and `diff()` and
`NetChange` need none of it).
Rule 3: a change is reported from a state transition, not from a message. The kernel sends
RTM_NEWLINK for any attribute change and RTM_NEWADDR on every lifetime or flag update; the
source keeps what it knows of each link (name, up) and address and reports only what moved, so
a `NetChange` always means something a path can feel. The state is seeded by a dump when the
source opens, and re-dumped (and diffed) when the kernel says events were lost (ENOBUFS).
Rule 4: both sources speak the same language as `Interface`: "up" is IFF_RUNNING (what
psutil's `isup`, hence discovery's `Interface.up`, reads), IPv6 link-local addresses are left
out (discovery leaves them out too), and `diff()` orders its changes like the kernel does
(link added, up, addresses; addresses removed, then the link), so a subscriber sees the same
changes whether the monitor listens or polls.
Rule 5: an address is reported when it can be used, not when it is configured. An IPv6
address still in duplicate address detection (IFA_F_TENTATIVE) or that failed it
(IFA_F_DADFAILED) cannot be bound (EADDRNOTAVAIL): it is left out of the state, reported
"added" by the RTM_NEWADDR that clears the flag (DAD done, 1-2 s later by default) and
"removed" if a known address turns tentative again. Discovery (psutil) and so the polling
fallback cannot see these flags: there, an address shows up while still tentative.
Rule 6: only the kernel is believed. Every datagram whose sender is not the kernel (nl_pid 0)
is dropped unread: any process, even one with CAP_NET_ADMIN in its own user namespace only,
may unicast to our port id, and a forged RTM_DELLINK would otherwise fail every carrier.
Rule 7: one bad datagram costs nothing already read. A datagram that cannot be parsed or
applied (whatever it raises) is replaced by a resync (Rule 3); the changes of the datagrams
before it are kept and returned, and the exception never reaches the caller's loop.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import weakref
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..decision.environment import Interface

__all__ = ["GROUPS", "NetChange", "RtnlSource", "diff", "interface_indexes"]

# include/uapi/linux/rtnetlink.h (the same values as pyroute2.netlink.rtnl's RTMGRP_*).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
"""The multicast groups a source joins: links, IPv4 and IPv6 addresses (no routes)."""

IFF_RUNNING = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
_UNUSABLE = IFA_F_TENTATIVE | IFA_F_DADFAILED
"""ifa_flags that make an address unusable for now (Rule 5; include/uapi/linux/if_addr.h)."""
_RCVBUF = 1 << 20
"""Socket receive buffer: room for a burst (a namespace torn down sends hundreds)."""
_BUFFER = 1 << 18
_READS_PER_CALL = 64
"""Datagrams one read() takes at most, so a flood cannot hold its caller's loop forever."""
_DUMP_TIMEOUT = 2.0
"""Seconds a seeding dump may take; a local dump answers in well under a millisecond."""


@dataclass(frozen=True, slots=True)
class NetChange:
    """One change of this namespace's network: a link added, removed, up or down, or an
    address added or removed (`address` set only for kind "address")."""

    kind: str
    """"link" or "address"."""
    action: str
    """"added", "removed", "up" or "down" (the last two for links only)."""
    interface: str
    index: int
    """The kernel's ifindex; 0 when the polling fallback could not learn it."""
    address: str | None = None


@dataclass(slots=True)
class _Link:
    name: str
    up: bool


def _usable(address: str) -> str | None:
    """The address as discovery writes it, or None when discovery leaves it out."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.is_link_local:
        return None
    return str(ip)


class RtnlSource:
    """A non-blocking rtnetlink socket joined to `GROUPS`, seeded with the current links and
    addresses. `read()` returns the changes waiting (possibly none); never blocks.

    Raises OSError at construction when netlink is refused (no AF_NETLINK, a seccomp filter,
    pyroute2 missing): the caller falls back to polling.
    """

    def __init__(self, rcvbuf: int = _RCVBUF) -> None:
        """`rcvbuf`: the socket's receive buffer (SO_RCVBUF); a burst larger than it is
        lost by the kernel and recovered by a resync (Rule 3)."""
        try:
            from pyroute2.netlink.rtnl.marshal import MarshalRtnl
        except ImportError as exc:
            raise OSError(errno.EPROTONOSUPPORT, f"pyroute2 is not importable: {exc}") from exc
        family = getattr(socket, "AF_NETLINK", None)
        if family is None:
            raise OSError(errno.EAFNOSUPPORT, "no AF_NETLINK on this platform")
        self._marshal: Any = MarshalRtnl()
        self._buffer = bytearray(_BUFFER)
        self._links: dict[int, _Link] = {}
        self._addresses: dict[int, set[str]] = {}
        self._seq = 0
        self._sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, GROUPS))
            self._seed()
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        # A source dropped unclosed (its event loop ended while it lingered) closes its
        # socket when collected, quietly, instead of leaking it to a ResourceWarning.
        self._finalizer = weakref.finalize(self, self._sock.close)

    # ---- the public surface ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def read(self) -> list[NetChange]:
        """Every change waiting on the socket (up to `_READS_PER_CALL` datagrams)."""
        changes: list[NetChange] = []
        for _ in range(_READS_PER_CALL):
            try:
                n, sender = self._sock.recvfrom_into(self._buffer, 0, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                changes.extend(self._resync())  # the kernel dropped events: ask again
                continue
            if not _from_kernel(sender):
                continue  # Rule 6
            if n > len(self._buffer):  # truncated: part of what happened is unknown
                changes.extend(self._resync())
                continue
            try:
                found: list[NetChange] = []
                for msg in self._marshal.parse(bytes(self._buffer[:n])):
                    found.extend(self._apply(msg))
            except Exception:  # Rule 7: what this datagram said is unknown: ask again
                changes.extend(self._resync())
                continue
            changes.extend(found)
        return changes

    @property
    def port(self) -> int:
        """The socket's netlink port id (nl_pid): where a unicast to this source goes."""
        return int(self._sock.getsockname()[0])

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> RtnlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- messages -> state transitions ----------------------------------------------------

    def _apply(self, msg: Any) -> list[NetChange]:
        from pyroute2.netlink import rtnl

        kind = msg["header"]["type"]
        index = int(msg.get("index") or 0)
        if kind == rtnl.RTM_NEWLINK:
            name = msg.get_attr("IFLA_IFNAME")
            if not isinstance(name, str):
                return []
            return self._link_seen(index, name, bool(int(msg.get("flags") or 0) & IFF_RUNNING))
        if kind == rtnl.RTM_DELLINK:
            return self._link_gone(index)
        if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
            raw = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            address = _usable(raw) if isinstance(raw, str) else None
            if address is None:
                return []
            known = self._addresses.setdefault(index, set())
            name = self._name_of(index, msg.get_attr("IFA_LABEL"))
            if kind == rtnl.RTM_NEWADDR and _flags_of(msg) & _UNUSABLE:
                kind = rtnl.RTM_DELADDR  # Rule 5: not usable (yet, or any more)
            if kind == rtnl.RTM_NEWADDR:
                if address in known:
                    return []  # a lifetime or flag update of an address we know
                known.add(address)
                return [NetChange("address", "added", name, index, address)]
            if address not in known:
                return []
            known.discard(address)
            return [NetChange("address", "removed", name, index, address)]
        return []

    def _link_seen(self, index: int, name: str, up: bool) -> list[NetChange]:
        link = self._links.get(index)
        if link is not None and link.name != name:  # renamed: the old name is gone
            changes = self._link_gone(index)
            link = None
        else:
            changes = []
        if link is None:
            self._links[index] = _Link(name, up)
            changes.append(NetChange("link", "added", name, index))
            if up:
                changes.append(NetChange("link", "up", name, index))
            for address in sorted(self._addresses.get(index, ())):
                changes.append(NetChange("address", "added", name, index, address))
            return changes
        if link.up != up:
            link.up = up
            changes.append(NetChange("link", "up" if up else "down", name, index))
        return changes

    def _link_gone(self, index: int) -> list[NetChange]:
        link = self._links.pop(index, None)
        addresses = self._addresses.pop(index, set())
        if link is None:
            return []
        changes = [NetChange("address", "removed", link.name, index, a)
                   for a in sorted(addresses)]
        changes.append(NetChange("link", "removed", link.name, index))
        return changes

    def _name_of(self, index: int, label: object) -> str:
        link = self._links.get(index)
        if link is not None:
            return link.name
        if isinstance(label, str) and label:
            return label.split(":", 1)[0]
        try:
            return socket.if_indextoname(index)
        except OSError:
            return ""

    # ---- seeding and resynchronising ------------------------------------------------------

    def _seed(self) -> None:
        """Learn the current links, then addresses (two dumps: one at a time per socket)."""
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, rtnl
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        self._links.clear()
        self._addresses.clear()
        blocking = self._sock.gettimeout()
        self._sock.settimeout(_DUMP_TIMEOUT)
        try:
            for cls, request in ((ifinfmsg, rtnl.RTM_GETLINK), (ifaddrmsg, rtnl.RTM_GETADDR)):
                self._seq += 1
                msg = cls()
                msg["header"]["type"] = request
                msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
                msg["header"]["sequence_number"] = self._seq
                msg["family"] = socket.AF_UNSPEC
                msg.encode()
                self._sock.send(msg.data)
                done = False
                while not done:
                    n, sender = self._sock.recvfrom_into(self._buffer, 0, socket.MSG_TRUNC)
                    if not _from_kernel(sender):
                        continue  # Rule 6
                    if n > len(self._buffer):
                        raise OSError(errno.EMSGSIZE, "rtnetlink dump message too large")
                    for reply in self._marshal.parse(bytes(self._buffer[:n])):
                        header = reply["header"]
                        ours = header.get("sequence_number") == self._seq
                        if ours and header["type"] in (NLMSG_DONE, NLMSG_ERROR):
                            if header.get("error") is not None:
                                raise OSError(errno.EIO, f"rtnetlink dump: {header['error']}")
                            done = True
                        else:
                            self._apply(reply)  # dump rows and events alike build the state
        finally:
            self._sock.settimeout(blocking)

    def _resync(self) -> list[NetChange]:
        """Events were lost: dump again and report the difference from what we knew."""
        before = self._state()
        self._drain()
        self._seed()
        after = self._state()
        self._sock.setblocking(False)
        return _diff_states(before, after)

    def _state(self) -> _State:
        return {i: (link.name, i, link.up, frozenset(self._addresses.get(i, ())))
                for i, link in self._links.items()}

    def _drain(self) -> None:
        self._sock.setblocking(False)
        while True:
            try:
                if not self._sock.recv_into(self._buffer):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise


def _from_kernel(sender: object) -> bool:
    """Whether a netlink datagram's source address (nl_pid, nl_groups) is the kernel's."""
    return isinstance(sender, tuple) and bool(sender) and sender[0] == 0


def _flags_of(msg: Any) -> int:
    """An ifaddrmsg's flags: the 32-bit IFA_FLAGS attribute when present (it supersedes the
    8-bit ifa_flags field), else ifa_flags."""
    extended = msg.get_attr("IFA_FLAGS")
    if isinstance(extended, int):
        return extended
    return int(msg.get("flags") or 0)


_State = Mapping[Hashable, tuple[str, int, bool, frozenset[str]]]
"""key -> (name, ifindex, up, addresses): the key says which rows are the same link."""


def _diff_states(before: _State, after: _State) -> list[NetChange]:
    """Changes from one state map to another, in the kernel's order (Rule 4)."""
    changes: list[NetChange] = []
    for key, (name, index, up, addresses) in before.items():
        now = after.get(key)
        if now is None or now[0] != name:
            changes += [NetChange("address", "removed", name, index, a)
                        for a in sorted(addresses)]
            changes.append(NetChange("link", "removed", name, index))
            continue
        changes += [NetChange("address", "removed", name, index, a)
                    for a in sorted(addresses - now[3])]
        if up and not now[2]:
            changes.append(NetChange("link", "down", name, index))
    for key, (name, index, up, addresses) in after.items():
        then = before.get(key)
        if then is not None and then[0] != name:
            then = None
        if then is None:
            changes.append(NetChange("link", "added", name, index))
        if up and (then is None or not then[2]):
            changes.append(NetChange("link", "up", name, index))
        known = frozenset() if then is None else then[3]
        changes += [NetChange("address", "added", name, index, a)
                    for a in sorted(addresses - known)]
    return changes


def diff(old: Iterable[Interface], new: Iterable[Interface],
         index_of: Mapping[str, int] | None = None) -> list[NetChange]:
    """The changes that turn snapshot `old` into snapshot `new` (the polling fallback's
    events), matched by interface name; `index_of` gives ifindexes (0 where it has none).
    Pure: the same arguments give the same list."""
    indexes = index_of or {}

    def state(interfaces: Iterable[Interface]) -> _State:
        return {i.name: (i.name, indexes.get(i.name, 0), i.up,
                         frozenset(a.address for a in i.addresses)) for i in interfaces}

    return _diff_states(state(old), state(new))


def interface_indexes() -> dict[str, int]:
    """name -> ifindex in this namespace (socket.if_nameindex()); {} when it cannot say."""
    try:
        return {name: index for index, name in socket.if_nameindex()}
    except OSError:
        return {}
