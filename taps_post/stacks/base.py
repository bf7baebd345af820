"""The one small interface every protocol stack implements (the plug-in contract).

Rule 1: a stack knows how to open a Transient for one Candidate and how to listen on an
address; it knows nothing about racing, policy or carriers. Adding a stack is a StackInfo (the
facts the decision core ranks by) plus an object with `connect` and `listen`, given to
`taps_post.stacks.register()` (docs/architecture.md, "Adding a stack").
Rule 2: what a stack may keep between connections to one remote (tickets, TLS contexts) it
reaches through `SessionState`, which the runtime's Association implements; stacks never see
the Association itself.
Rule 3: a socket on a candidate's interface sends only through that interface, whoever runs
the process: `bind_to_device()` pins it (SO_BINDTODEVICE, allowed for every user since Linux
5.7); where the kernel refuses, the route must prove the packets leave by that interface, or
the attempt fails with `InterfaceNotEnforcedError` before anything is sent. An interface the
policy excluded stays excluded only if no socket can route around the exclusion.
Rule 4: no UDP socket sets SO_REUSEADDR (another user could bind its port and receive its
datagrams); port sharing on UDP is SO_REUSEPORT, which Linux grants to the same user only.
Rule 5: a stack whose StackInfo says `rendezvous` opens no socket of its own: the runtime
establishes a `DatagramPath` first (an ICE pair between two peers, docs/rendezvous.md) and
hands it over in `AttemptSpec.path` (this end opens the connection) or `ListenSpec.path` (the
peer opens it, once, over that path; `listen()` then returns a `PathListening`, whose
`wait_connected()` says how that connection came out). `peer_fingerprints` are then the
SHA-256 fingerprints the peer's certificate must have (exchanged through the rendezvous
point): the stack refuses
any other peer before a byte of the application is sent or delivered. The stack owns the
path from the moment it is handed over and closes it when its connection ends.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..certs import Certificate
from ..core.early import EarlyAttempt
from ..core.framing import Framer
from ..core.settings import Settings
from ..decision.decision import Candidate
from ..decision.names import TlsaSet
from ..system import routes
from .transient import Transient

__all__ = ["AttemptSpec", "DatagramPath", "DscpMarker", "InterfaceNotEnforcedError",
           "ListenSpec", "Listening", "PathListening",
           "SessionState", "Stack", "bind_server", "bind_to_device",
           "connected_datagram_socket", "family_of", "tos_option"]


class SessionState(Protocol):
    """Per-remote state a stack may use: resumption tickets (each handed out once) and
    cached TLS contexts (a TLS session resumes only on the context that created it)."""

    tls_contexts: dict[Any, Any]

    def take_ticket(self, stack: str,
                    accept: Callable[[Any], bool] | None = None) -> Any | None:
        """Pop the newest ticket of `stack` that `accept` takes (all, without it); tickets
        it refuses stay for the attempts they fit (a TLS session of another SSLContext)."""
        ...

    def add_ticket(self, stack: str, ticket: Any) -> None: ...


class DatagramPath(Protocol):
    """A datagram path someone else established (Rule 5): an ICE candidate pair, or in
    tests and benches a connected UDP socket (`SocketPath`). Datagrams are sent best effort,
    never blocking; what arrives goes to the one receiver set with `receive`."""

    local: tuple[str, int]
    """Our end of the path (for a relayed pair: the relay's address allocated to us)."""
    remote: tuple[str, int]
    """The peer's end as we send to it."""
    interface: str | None
    """The interface the path's socket is held to (None: not known)."""

    def send(self, data: bytes) -> None:
        """Send one datagram; a path that is closed drops it."""
        ...

    def receive(self, callback: Callable[[bytes], None] | None) -> None:
        """Deliver every datagram that arrives from now on to `callback` (None: drop them)."""
        ...

    def close(self) -> None:
        """Release the path's sockets and relay allocations (idempotent)."""
        ...


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
    early: EarlyAttempt | None = None
    """This attempt's view of the carrier's early flight (core/early.py): a stack that can
    carry data in its first flight takes copies of the idempotent messages from it (QUIC
    0-RTT: all of them; TCP Fast Open: the first) and records the handle on the Transient
    it returns (`transient.early_attempt`), so the Carrier can settle the race's events."""
    local_port: int = 0
    """The Local's port (0: any): the socket binds it."""
    tlsa: TlsaSet | None = None
    """The TLSA records of this candidate's `_port._proto.host` (None: not asked, or
    security.dane off). A secure stack checks the peer's certificate against them after the
    handshake as `settings.dane` says (stacks/dane.py); only a `validated` set counts."""
    path: DatagramPath | None = None
    """For a `rendezvous` stack (Rule 5): the established path to run over, instead of a
    socket of its own to `candidate`."""
    peer_fingerprints: frozenset[str] = frozenset()
    """For a `rendezvous` stack (Rule 5): the peer's certificate must have one of these
    SHA-256 fingerprints (hex with colons, as `Certificate.fingerprint`)."""


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
    trusted: Sequence[Certificate] = ()
    """Under settings.client_auth request/require: the CAs or pinned (self-signed) client
    certificates a client certificate must verify against (and, for pins, match)."""
    path: DatagramPath | None = None
    """For a `rendezvous` stack (Rule 5): accept the one connection the peer opens over this
    path (`address`/`port` then only describe it); `on_transient` gets its first stream
    once the handshake completed and the peer's certificate matched, and every later
    stream the peer opens (its forks)."""
    peer_fingerprints: frozenset[str] = frozenset()
    """For a `rendezvous` stack (Rule 5): the client's certificate must have one of these
    SHA-256 fingerprints; it must present one."""


class Listening(Protocol):
    """A bound, accepting endpoint of one stack."""

    stack: str
    port: int

    async def aclose(self) -> None: ...


@runtime_checkable
class PathListening(Listening, Protocol):
    """What a rendezvous stack's `listen()` over a path returns (Rule 5): one connection,
    which the runtime waits for before it hands the carrier out."""

    async def wait_connected(self) -> None:
        """Return once the peer's connection over the path completed its handshake and its
        certificate matched `peer_fingerprints`; raise what refused it otherwise (an
        exception `racing.classify` reads: a QUIC close, a TimeoutError, ...)."""
        ...


class Stack(Protocol):
    name: str
    ip_protocol: str
    """tcp or udp: stacks on one IP protocol cannot share a listening port."""

    async def connect(self, spec: AttemptSpec) -> Transient: ...

    async def listen(self, spec: ListenSpec) -> Listening: ...


class InterfaceNotEnforcedError(PermissionError):
    """A socket could not be held to its candidate's interface: the kernel refused to pin it
    and the route would send its packets elsewhere (or could not be read). An OSError with
    errno EPERM, so the race records it like any refusal of the operating system, and
    nothing has been sent."""

    def __init__(self, interface: str, why: str, *, egress: str | None = None) -> None:
        super().__init__(errno.EPERM, f"cannot hold the socket to interface {interface}: {why}")
        self.interface = interface
        self.egress = egress
        """The interface the route would have used (None: unknown, or a listening socket)."""


_REFUSALS = frozenset({errno.EPERM, errno.EACCES, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
"""What a kernel that will not pin a socket answers (others, ENODEV: the interface is gone)."""


def bind_to_device(sock: socket.socket, interface: str | None, *, remote: str | None = None,
                   local: str | None = None) -> None:
    """Hold `sock` to `interface` (Rule 3), for every user: SO_BINDTODEVICE, so the kernel
    routes only through it. Where the kernel refuses, a connecting socket is let go only
    when the route from `local` to `remote` leaves by `interface` anyway; without a
    `remote` (a listening socket, or a caller that did not say) there is nothing to
    check, and it fails. A vanished interface fails too (ENODEV): nothing may be sent
    "through" an interface that is gone.
    """
    if interface is None:
        return
    option = getattr(socket, "SO_BINDTODEVICE", None)
    refused: OSError | None = None
    if option is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, interface.encode() + b"\0")
            return
        except OSError as exc:
            if exc.errno not in _REFUSALS:
                raise
            refused = exc
    why = (f"the kernel refused SO_BINDTODEVICE ({refused.strerror})" if refused is not None
           else "this system has no SO_BINDTODEVICE")
    if remote is None:
        raise InterfaceNotEnforcedError(interface, f"{why}, and there is no remote address "
                                        "to check the route to") from refused
    egress = routes.egress_interface(remote, local)
    if egress != interface:
        seen = f"leaves by {egress}" if egress else "could not be read"
        raise InterfaceNotEnforcedError(
            interface, f"{why}, and the route to {remote} {seen}", egress=egress) from refused


def bind_server(sock: socket.socket, address: str, port: int, interface: str | None) -> None:
    """The one way every listening socket is bound: non-blocking, dual-stack on `::`, pinned
    to its interface (or failing, Rule 3), then bound. Rule 4 for sharing the port: a TCP
    socket sets SO_REUSEADDR (so a restarted server binds past its TIME_WAIT connections);
    a UDP socket sets nothing (SO_REUSEADDR on UDP would let any user's socket bind the
    same port and take its datagrams), except a multicast group's, which sets SO_REUSEPORT
    so several Sinks of one user share the group port (Linux lets only the same effective
    uid share it so). A multicast `address` binds the group itself on Linux (the kernel
    then delivers only datagrams sent to the group, not unicast to the port; the group is
    joined separately), the wildcard elsewhere. Bound to its group, a Sink also sets
    SO_REUSEADDR: multicast is delivered to every socket that matches, so a socket sharing
    the port takes nothing from it, and a wildcard one of the port's unicast traffic
    (another program) may coexist.
    """
    import ipaddress
    import sys

    sock.setblocking(False)
    ip = ipaddress.ip_address(address)
    linux = sys.platform.startswith("linux")
    if sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    elif ip.is_multicast:
        sock.setsockopt(socket.SOL_SOCKET, _REUSEPORT, 1)
        if linux:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6 and address == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    bind_to_device(sock, interface)  # a listener on an interface serves only its peers
    if ip.is_multicast and not linux:
        address = "::" if ":" in address else "0.0.0.0"
    elif ip.is_multicast and ip.version == 6 and interface:  # scoped groups need the index
        sock.bind((address, port, 0, socket.if_nametoindex(interface)))
        return
    sock.bind((address, port))


_REUSEPORT = getattr(socket, "SO_REUSEPORT", socket.SO_REUSEADDR)
"""Same-user port sharing (Rule 4); where the system has none, the older option."""


def connected_datagram_socket(c: Candidate, local_port: int = 0) -> socket.socket:
    """A UDP socket on the candidate's path: pinned to its interface (Rule 3), bound to its
    local address (and `local_port`, the Local's port; 0: any) and connected to its remote
    one (so the kernel reports ICMP errors to it). A chosen port is shared only with the
    same user's sockets (SO_REUSEPORT, Rule 4: a carrier's next attempt may bind it while
    the last one's socket is still closing); a connected socket takes only its peer's
    datagrams, so sharing steals nothing."""
    sock = socket.socket(family_of(c.remote_address), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if local_port:
            sock.setsockopt(socket.SOL_SOCKET, _REUSEPORT, 1)
        bind_to_device(sock, c.interface, remote=c.remote_address, local=c.local_address)
        sock.bind((c.local_address, local_port))
        sock.connect((c.remote_address, c.remote_port))
    except BaseException:
        sock.close()
        raise
    return sock


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tos_option(family: int) -> tuple[int, int]:
    """The (level, option) that carries the TOS / traffic class octet (DSCP is its top six
    bits: code point << 2) on a socket of `family`: IPV6_TCLASS on IPv6, IP_TOS on IPv4."""
    if family == socket.AF_INET6:
        return socket.IPPROTO_IPV6, socket.IPV6_TCLASS
    return socket.IPPROTO_IP, socket.IP_TOS


class DscpMarker:
    """The DSCP mark of one socket, set per socket (TCP; a QUIC UDP socket, shared by every
    session that sends on it): setsockopt only when the mark changes. An IPv6 socket also
    gets IP_TOS (an IPv4-mapped peer of a dual-stack socket is reached through it; where the
    kernel refuses that, the IPv6 mark stands). A mark the kernel refused (OSError, raised to
    the caller) is not recorded, so the next `set` of it tries again."""

    __slots__ = ("_level", "_option", "_sock", "_v6", "current")

    def __init__(self, sock: Any, current: int | None = 0) -> None:
        self._sock = sock
        self._v6 = sock.family == socket.AF_INET6
        self._level, self._option = tos_option(sock.family)
        self.current = current
        """The code point the socket carries now (None: unknown, the next `set` writes)."""

    def set(self, code_point: int) -> None:
        if code_point == self.current:
            return
        tos = code_point << 2  # DSCP is the top six bits of the TOS / traffic class octet
        sock = self._sock
        sock.setsockopt(self._level, self._option, tos)
        if self._v6:
            with contextlib.suppress(OSError):  # IPv4-mapped peers of a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        self.current = code_point
