"""Routes: which interface the kernel would send a packet by, asked over rtnetlink.

The runtime pins every socket to its candidate's interface (SO_BINDTODEVICE, allowed for
every user since Linux 5.7). Where a kernel refuses that, the only honest alternative to
sending by another interface is to ask the routing table before the first packet, and to
give the attempt up when the answer is not the candidate's interface.

Rule 1: only this module talks rtnetlink, through pyroute2, imported on first use: the
lookup is the fallback of a fallback, and the import costs a fifth of a second. pyroute2's
synchronous API drives an event loop of its own, which cannot run inside the runtime's
running one, so each lookup runs in a short-lived thread, waited for with a timeout.
Rule 2: an answer the kernel did not give is None, never a guess; callers read None as
"cannot prove where the packets go" and fail closed.
Rule 3: a route lookup describes this moment only: a pinned socket stays pinned when the
routes change, a route-checked one does not. That is why pinning comes first.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

__all__ = ["device_binding_allowed", "egress_interface"]

_TIMEOUT = 2.0
"""Seconds a route lookup may take; a netlink answer takes well under a millisecond."""


def egress_interface(remote_address: str, local_address: str | None = None) -> str | None:
    """The interface the kernel routes `remote_address` through from `local_address` (as
    `ip route get DST from SRC` says), or None when it cannot be told. Blocks the caller
    for the lookup (Rule 1), usable with or without a running event loop."""
    answer: list[str | None] = [None]

    def lookup() -> None:
        answer[0] = _lookup(remote_address, local_address)

    worker = threading.Thread(target=lookup, name="taps-post-route", daemon=True)
    worker.start()
    worker.join(_TIMEOUT)
    return answer[0]  # a lookup still running after the timeout has answered nothing


def _lookup(remote_address: str, local_address: str | None) -> str | None:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    query: dict[str, Any] = {"dst": remote_address.split("%")[0]}
    if local_address:
        query["src"] = local_address.split("%")[0]
    try:
        with IPRoute() as ipr:
            answers = list(ipr.route("get", **query))
    except Exception:  # NetlinkError, OSError, a malformed address: no answer
        return None
    for message in answers:
        oif = message.get_attr("RTA_OIF")
        if isinstance(oif, int):
            try:
                return socket.if_indextoname(oif)
            except OSError:  # the interface went away between the two questions
                return None
    return None


def device_binding_allowed() -> bool:
    """Whether this process may pin a socket to an interface now (SO_BINDTODEVICE on a
    throwaway socket). Not cached: a process that drops its privileges changes the answer."""
    option = getattr(socket, "SO_BINDTODEVICE", None)
    if option is None:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, option, b"lo\0")
        except OSError:
            return False
    return True
