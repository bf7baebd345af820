"""Bytes to and from one nameserver over UDP and TCP, on the event loop's own sockets.

Rule 1: no dnspython here (resolver package Rule 1): this module moves DNS messages as bytes;
client.py builds them, decides which datagram is the answer, and reads it. It exists so that
resolving a name costs a socket, not dnspython's transport stack (`dns.asyncquery` imports
`dns.quic`, which imports aioquic: ~80 ms before the first plain TCP connection could start,
docs/performance.md).
Rule 2: a nameserver tied to an interface (`Nameserver.interface`: a systemd-resolved per-link
server, a zoned link-local address) is asked from a socket bound to that interface
(SO_BINDTODEVICE) before it connects, so its queries leave by the link whose network gave
that server, whatever the routing table prefers; a loopback nameserver is never bound.
When the kernel refuses the binding for lack of privilege (Linux before 5.7 asks for
CAP_NET_RAW), the socket follows the routing table, as the system's own stub does; an
interface that no longer exists is an OSError: that nameserver cannot be asked now.
Rule 3: a UDP socket is connected: the kernel picks a random source port and drops datagrams
from any other address or port. Every datagram that does arrive goes to `accept`, which
returns the answer or None (a forged, stray or malformed datagram): None keeps waiting, so
an off-path guess cannot end the query; the caller's timeout bounds the wait.
Rule 4: TCP carries one message each way with its two-byte length prefix (RFC 1035 section
4.2.2, RFC 7766 section 8).
Rule 5: every socket is closed when its exchange ends, also on a timeout or a cancellation;
no task is created here, so cancelling the caller stops everything (client.py Rule 9).
Rule 6: the UDP queries in flight to one nameserver at the same time share one socket, as
glibc's stub sends A and AAAA from one: a connection's A, AAAA (and HTTPS) questions cost
one socket, connect and close, not one each (about 0.3 ms apiece on the path to the first
attempt, in the netns lab's timeline of a first connection). Every datagram is offered to
each waiting query's `accept` (Rule 3: the query ID and question decide, never arrival
order), the socket is closed when its last query ends (Rule 5), and the next query opens a
new one with a new random source port. A socket error (an ICMP unreachable) fails every
query on it and the socket is not reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from .conf import Nameserver

__all__ = ["SO_BINDTODEVICE", "tcp", "udp"]

SO_BINDTODEVICE: int = getattr(socket, "SO_BINDTODEVICE", 25)
_T = TypeVar("_T")


@functools.lru_cache(maxsize=256)
def _target(address: str, port: int, kind: int) -> tuple[int, Any]:
    """(family, sockaddr) of a numeric address (`fe80::1%eth0` keeps its scope); no lookup."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        address, port, type=kind, flags=socket.AI_NUMERICHOST)[0]
    return family, sockaddr


def _bound_to(ns: Nameserver) -> str | None:
    """The interface a query to `ns` must leave by (Rule 2), or None."""
    if not ns.interface or ns.loopback:
        return None
    return ns.interface


def _socket(ns: Nameserver, kind: int) -> tuple[socket.socket, Any]:
    family, sockaddr = _target(ns.address, ns.port, kind)
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        interface = _bound_to(ns)
        if interface is not None:
            # Rule 2: refused as unprivileged (old kernel): the routing table decides.
            with contextlib.suppress(PermissionError):
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
    except BaseException:
        sock.close()
        raise
    return sock, sockaddr


class _Shared:
    """One connected UDP socket and the queries waiting on it (Rule 6)."""

    __slots__ = ("broken", "loop", "sock", "waiters")

    def __init__(self, ns: Nameserver, loop: asyncio.AbstractEventLoop) -> None:
        sock, sockaddr = _socket(ns, socket.SOCK_DGRAM)
        try:
            sock.connect(sockaddr)  # UDP: no packet, just the route and the source port
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self.sock, self.loop, self.broken = sock, loop, False
        self.waiters: list[tuple[Callable[[bytes], Any], asyncio.Future[Any]]] = []

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error: every query on this socket failed
                self.broken = True
                for _accept, fut in self.waiters:
                    if not fut.done():
                        fut.set_exception(OSError(exc.errno, exc.strerror))
                return
            for accept, fut in self.waiters:
                if not fut.done() and (answer := accept(data)) is not None:
                    fut.set_result(answer)
                    break

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


_shared: dict[tuple[asyncio.AbstractEventLoop, Nameserver], _Shared] = {}
"""The socket each nameserver's in-flight queries share, per event loop (Rule 6)."""


async def udp(wire: bytes, ns: Nameserver, accept: Callable[[bytes], _T | None]) -> _T:
    """Send `wire` to `ns` over UDP; the first datagram `accept` takes (Rules 3, 6). Raises
    OSError (unreachable, refused by ICMP, no such interface); waits until cancelled."""
    loop = asyncio.get_running_loop()
    key = (loop, ns)
    shared = _shared.get(key)
    if shared is None or shared.broken:
        shared = _shared[key] = _Shared(ns, loop)
    entry: tuple[Callable[[bytes], Any], asyncio.Future[_T]] = (accept, loop.create_future())
    shared.waiters.append(entry)
    try:
        await loop.sock_sendall(shared.sock, wire)
        return await entry[1]
    finally:
        shared.waiters.remove(entry)
        if not shared.waiters:
            shared.close()
            if _shared.get(key) is shared:
                del _shared[key]


async def tcp(wire: bytes, ns: Nameserver) -> bytes:
    """Send `wire` to `ns` over TCP and return the one message that comes back (Rule 4).
    Raises OSError, or EOFError when the server closes before a whole message."""
    loop = asyncio.get_running_loop()
    sock, sockaddr = _socket(ns, socket.SOCK_STREAM)
    with sock:
        await loop.sock_connect(sock, sockaddr)
        await loop.sock_sendall(sock, len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(await _exactly(loop, sock, 2), "big")
        return await _exactly(loop, sock, size)


async def _exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise EOFError(f"the nameserver closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
