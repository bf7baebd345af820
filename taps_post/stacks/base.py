"""The one small interface every protocol stack implements (the plug-in contract).

Rule 1: a stack knows how to open a Transient for one Candidate and how to listen on an
address; it knows nothing about racing, policy or carriers. Adding a stack is a StackInfo (the
facts the decision core ranks by) plus an object with `connect` and `listen`, given to
`taps_post.stacks.register()` (docs/architecture.md, "Adding a stack").
Rule 2: what a stack may keep between connections to one remote (tickets, TLS contexts) it
reaches through `SessionState`, which the runtime's Association implements; stacks never see
the Association itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..certs import Certificate
from ..core.framing import Framer
from ..core.settings import Settings
from ..decision.decision import Candidate
from .transient import Transient

__all__ = ["AttemptSpec", "ListenSpec", "Listening", "SessionState", "Stack", "bind_server",
           "bind_to_device", "connected_datagram_socket", "family_of"]


class SessionState(Protocol):
    """Per-remote state a stack may use: resumption tickets (each handed out once) and
    cached TLS contexts (a TLS session resumes only on the context that created it)."""

    tls_contexts: dict[Any, Any]

    def take_ticket(self, stack: str) -> Any | None: ...

    def add_ticket(self, stack: str, ticket: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class AttemptSpec:
    """Everything one racing attempt needs."""

    candidate: Candidate
    host: str
    """The name the target used (TLS SNI and certificate checks), or the IP literal."""
    settings: Settings
    association: SessionState
    framer: Callable[[], Framer]
    pinned: Sequence[Certificate] = ()
    identity: Sequence[Certificate] = ()
    early: Any = None
    """An idempotent OutMessage to send in the first flight where the stack can."""


@dataclass(frozen=True, slots=True)
class ListenSpec:
    address: str
    port: int
    interface: str | None
    settings: Settings
    framer: Callable[[], Framer]
    identity: Sequence[Certificate]
    on_transient: Callable[[Transient], None]
    multicast: bool = False


class Listening(Protocol):
    """A bound, accepting endpoint of one stack."""

    stack: str
    port: int

    async def aclose(self) -> None: ...


class Stack(Protocol):
    name: str
    ip_protocol: str
    """tcp or udp: stacks on one IP protocol cannot share a listening port."""

    async def connect(self, spec: AttemptSpec) -> Transient: ...

    async def listen(self, spec: ListenSpec) -> Listening: ...


def bind_to_device(sock: socket.socket, interface: str | None) -> None:
    """SO_BINDTODEVICE when we may (root): the kernel then routes only through `interface`."""
    if interface is None or os.geteuid() != 0 or not hasattr(socket, "SO_BINDTODEVICE"):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
    except OSError:
        # The interface vanished or is in another namespace: the address bind still holds.
        return


def bind_server(sock: socket.socket, address: str, port: int, interface: str | None) -> None:
    """The one way every listening socket is bound: non-blocking, address reuse, dual-stack
    on `::`, pinned to its interface when we may, then bound. A multicast `address` binds
    the wildcard of its family (the group is joined separately)."""
    import ipaddress

    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6 and address == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    bind_to_device(sock, interface)
    if ipaddress.ip_address(address).is_multicast:
        address = "::" if ":" in address else "0.0.0.0"
    sock.bind((address, port))


def connected_datagram_socket(c: Candidate) -> socket.socket:
    """A UDP socket on the candidate's path: pinned to its interface, bound to its local
    address and connected to its remote one (so the kernel reports ICMP errors to it)."""
    sock = socket.socket(family_of(c.remote_address), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        bind_to_device(sock, c.interface)
        sock.bind((c.local_address, 0))
        sock.connect((c.remote_address, c.remote_port))
    except BaseException:
        sock.close()
        raise
    return sock


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
