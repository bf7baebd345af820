"""The MPTCP userspace path manager, driven over generic netlink (family "mptcp_pm").

Rule 1: messages are pyroute2's: `PmMsg` is pyroute2's `mptcp_msg` extended with the
attributes the userspace path manager needs (TOKEN, LOC_ID, ADDR_REMOTE) and the commands
are the uapi's (ANNOUNCE .. SUBFLOW_DESTROY, include/uapi/linux/mptcp_pm.h); pyroute2 encodes
and decodes, nothing here packs netlink bytes by hand.
Rule 2: calls block, on `system.mptcp.NetlinkChannel` (a plain netlink socket with a
timeout, 2 s by default; see that module's Rule 7 for why not pyroute2's sockets): requests
are local and answered in about a millisecond (subflow_create measured 1.1 ms, it only sends
the SYN), and the timeout guarantees no call hangs a carrier. A caller on an event loop's
thread passes `UserspacePM(timeout=LOOP_TIMEOUT)` (0.25 s): a wait there stalls the loop.
Rule 3: a refusal is an `OSError` carrying the kernel's errno and its extended-ack text
(EINVAL "invalid token", ESRCH "subflow not found", ...), so callers can tell "no such
connection" from "not allowed" without parsing strings.
Rule 4: `available()` says why the userspace path manager cannot be driven here (a reason
string) instead of raising: the decision and explain layers report it as a fact.
Rule 5: every call names the connection by its MPTCP token (`MptcpInfo.token`) and acts in the
calling process's network namespace; a local address id is chosen per connection (the one
already used for that address, else the lowest free one from 1: id 0 is the initial
subflow's), because the kernel would otherwise give a new address id 0.
Rule 6: no asyncio (system/ is below the runtime), and importing this module imports no
pyroute2 (0.1-0.8 s, on the loop thread of whoever imports it): `PmMsg` is built on first
use (`pm_message_class()`, module `__getattr__`), as system/mptcp.py's Rule 6 does.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from .mptcp import (
    ADDR_FLAG_BACKUP,
    ADDR_FLAG_SIGNAL,
    ADDR_FLAG_SUBFLOW,
    LOOP_TIMEOUT,
    MPTCP_PM_NAME,
    MPTCP_PM_VER,
    NETLINK_TIMEOUT,
    NLM_F_ACK,
    NLM_F_REQUEST,
    LocalAddress,
    NetlinkChannel,
    open_pm,
    path_manager,
    pm_addresses,
    pm_message_class,
)

__all__ = [
    "CMD_ANNOUNCE",
    "CMD_REMOVE",
    "CMD_SET_FLAGS",
    "CMD_SUBFLOW_CREATE",
    "CMD_SUBFLOW_DESTROY",
    "LOOP_TIMEOUT",
    "LocalAddress",
    "UserspacePM",
    "available",
]

# enum in include/uapi/linux/mptcp_pm.h (generated from the YAML spec)
CMD_SET_FLAGS = 7
CMD_ANNOUNCE = 8
CMD_REMOVE = 9
CMD_SUBFLOW_CREATE = 10
CMD_SUBFLOW_DESTROY = 11

_NLA_F_NESTED = 0x8000
"""The kernel validates this family strictly: a nested attribute must say it is nested."""



def __getattr__(name: str) -> Any:
    """`PmMsg`: pyroute2's mptcp_msg with TOKEN, LOC_ID and ADDR_REMOTE (Rule 1), built on
    first use (Rule 6)."""
    if name == "PmMsg":
        return pm_message_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _addr_attr(ip: str, *, port: int | None = None, addr_id: int | None = None,
               flags: int | None = None, ifindex: int | None = None) -> dict[str, Any]:
    """The nested MPTCP_PM_ADDR_ATTR_* of one address (the family is always given: the
    userspace PM requires it)."""
    version = ipaddress.ip_address(ip).version
    attrs: list[tuple[str, Any]] = [
        ("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET6 if version == 6 else socket.AF_INET),
        ("MPTCP_PM_ADDR_ATTR_ADDR6" if version == 6 else "MPTCP_PM_ADDR_ATTR_ADDR4", ip),
    ]
    if addr_id is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_ID", addr_id))
    if port:
        attrs.append(("MPTCP_PM_ADDR_ATTR_PORT", port))
    if flags is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_FLAGS", flags))
    if ifindex:
        attrs.append(("MPTCP_PM_ADDR_ATTR_IF_IDX", ifindex))
    return {"attrs": attrs}


class UserspacePM:
    """A client of the userspace path manager (net.mptcp.pm_type=1): one genl socket.

    Every method acts on the connection named by its MPTCP token (`MptcpInfo.token`) in the
    calling process's network namespace; errors raise OSError with the kernel's errno."""

    def __init__(self, *, timeout: float = NETLINK_TIMEOUT) -> None:
        channel, family = open_pm(timeout)
        self._channel: NetlinkChannel = channel
        self.family = family
        self.timeout = timeout
        """Seconds each request may wait for the kernel (Rule 2)."""

    def __enter__(self) -> UserspacePM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _request(self, cmd: int, attrs: Sequence[tuple[Any, ...]], what: str) -> None:
        msg = pm_message_class()()
        msg["cmd"] = cmd
        msg["version"] = MPTCP_PM_VER
        msg["attrs"] = list(attrs)
        self._channel.request(msg, self.family, NLM_F_REQUEST | NLM_F_ACK, what)

    def local_addresses(self, token: int) -> tuple[LocalAddress, ...]:
        """The local address entries the userspace PM holds for this connection."""
        return pm_addresses(self._channel, self.family, token)

    def _local_id(self, token: int, ip: str) -> int:
        """The id this connection already uses for `ip`, else the lowest free one (id 0 is
        the initial subflow's address, and two addresses must not share an id)."""
        used: set[int] = {0}
        want = ipaddress.ip_address(ip)
        for entry in self.local_addresses(token):
            if entry.address is not None and ipaddress.ip_address(entry.address) == want:
                return entry.id
            used.add(entry.id)
        for candidate in range(1, 256):
            if candidate not in used:
                return candidate
        raise OSError(errno.ENOSPC, "mptcp_pm: no free local address id")

    def create_subflow(self, token: int, local: tuple[str] | tuple[str, int | None],
                       remote: tuple[str, int], ifindex: int | None = None,
                       backup: bool = False) -> None:
        """Open a subflow of connection `token` from local address `local[0]` (address id
        `local[1]`, chosen when absent) to `remote` (ip, port), bound to `ifindex` when
        given, with the backup flag set when `backup` (sent in its MP_JOIN)."""
        ip = local[0]
        addr_id = local[1] if len(local) > 1 else None
        if not addr_id:
            addr_id = self._local_id(token, ip)
        flags = ADDR_FLAG_SUBFLOW | (ADDR_FLAG_BACKUP if backup else 0)
        self._request(CMD_SUBFLOW_CREATE, [
            ("MPTCP_PM_ATTR_TOKEN", token),
            ("MPTCP_PM_ATTR_ADDR", _addr_attr(ip, addr_id=addr_id, flags=flags,
                                              ifindex=ifindex), _NLA_F_NESTED),
            ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_attr(remote[0], port=remote[1]),
             _NLA_F_NESTED),
        ], f"mptcp_pm subflow_create {ip} -> {remote[0]}:{remote[1]}")

    def destroy_subflow(self, token: int, local: tuple[str, int],
                        remote: tuple[str, int]) -> None:
        """Close the subflow `local` (ip, port) -> `remote` (ip, port) of connection `token`."""
        self._request(CMD_SUBFLOW_DESTROY, [
            ("MPTCP_PM_ATTR_TOKEN", token),
            ("MPTCP_PM_ATTR_ADDR", _addr_attr(local[0], port=local[1]), _NLA_F_NESTED),
            ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_attr(remote[0], port=remote[1]),
             _NLA_F_NESTED),
        ], f"mptcp_pm subflow_destroy {local[0]}:{local[1]} -> {remote[0]}:{remote[1]}")

    def set_backup(self, token: int, local: tuple[str, int], remote: tuple[str, int],
                   backup: bool) -> None:
        """Set or clear the backup flag of one subflow (the kernel sends MP_PRIO)."""
        self._request(CMD_SET_FLAGS, [
            ("MPTCP_PM_ATTR_TOKEN", token),
            ("MPTCP_PM_ATTR_ADDR", _addr_attr(local[0], port=local[1],
                                              flags=ADDR_FLAG_BACKUP if backup else 0),
             _NLA_F_NESTED),
            ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_attr(remote[0], port=remote[1]),
             _NLA_F_NESTED),
        ], f"mptcp_pm set_flags {local[0]}:{local[1]} backup={backup}")

    def announce(self, token: int, ip: str, addr_id: int) -> None:
        """Announce (ADD_ADDR) local address `ip` with id `addr_id` to the peer."""
        self._request(CMD_ANNOUNCE, [
            ("MPTCP_PM_ATTR_TOKEN", token),
            ("MPTCP_PM_ATTR_ADDR", _addr_attr(ip, addr_id=addr_id, flags=ADDR_FLAG_SIGNAL),
             _NLA_F_NESTED),
        ], f"mptcp_pm announce {ip} id {addr_id}")

    def remove(self, token: int, addr_id: int) -> None:
        """Withdraw (REMOVE_ADDR) local address id `addr_id`, closing its subflows."""
        self._request(CMD_REMOVE, [("MPTCP_PM_ATTR_TOKEN", token),
                                   ("MPTCP_PM_ATTR_LOC_ID", addr_id)],
                      f"mptcp_pm remove id {addr_id}")


def available(timeout: float = NETLINK_TIMEOUT) -> str | None:
    """Why the userspace path manager cannot be driven here, or None when it can (Rule 4);
    from an event loop pass `timeout=LOOP_TIMEOUT` (Rule 2)."""
    manager = path_manager()
    if manager == "disabled":
        return "MPTCP is disabled in this network namespace (net.mptcp.enabled=0 or absent)"
    if manager != "userspace":
        return (f"the {manager} path manager is in force (set net.mptcp.pm_type=1 or "
                "net.mptcp.path_manager=userspace for the userspace one)")
    try:
        with UserspacePM(timeout=timeout):
            pass
    except OSError as exc:
        return f"generic netlink family {MPTCP_PM_NAME} unavailable: {exc}"
    return None

