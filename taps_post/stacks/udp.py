"""UDP: one message per datagram; connected sockets for carriers, demultiplexed listeners.

Rule 1: a UDP "connection" is ready as soon as its socket is bound and connected (RFC 9623
section 4.4: connectionless stacks are established once a path is selected).
Rule 2: a listener keeps one socket and hands each new peer address its own Transient, whose
transport is a thin view that sends to that peer through the shared socket.
Rule 3: UDP has no acknowledgement: a datagram's end is `on_sent` (the kernel took it) or
`on_send_error` (the kernel refused it: EMSGSIZE, ENOBUFS, ECONNREFUSED from an earlier
ICMP error...). asyncio's sendto() would swallow the error into error_received(), so a
message with callbacks (or a mark) is written with the socket's own send()/sendmsg() while
the transport holds nothing; on EAGAIN it falls back to the transport, which buffers it.
Plain sends without callbacks keep asyncio's path.
Rule 4: DSCP marks are per datagram (a sendmsg IP_TOS / IPV6_TCLASS ancillary item carrying
code point << 2), from the message's niceness; without a `message.dscp` table nothing is
marked and no ancillary data is sent.
Rule 5: a multicast Sink binds its group address (Linux) and turns IP_MULTICAST_ALL off, so
it receives the group's datagrams only: not unicast to its port, not other groups joined by
other sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..core.framing import Framer, RawFramer
from ..core.path import PathStats
from ..core.settings import Settings
from ..system import tcpinfo
from .base import (
    AttemptSpec,
    ListenSpec,
    bind_server,
    connected_datagram_socket,
    family_of,
    tos_option,
)
from .transient import Transient

__all__ = ["DatagramTransient", "UdpStack", "bind_sink"]


class DatagramTransient(Transient, asyncio.DatagramProtocol):
    """UDP: one message per datagram; no ordering, no acknowledgement."""

    accepts_plain = True

    def __init__(self, *, stack: str, framer: Framer, max_size: int,
                 interface: str | None = None, peer: tuple[str, int] | None = None) -> None:
        super().__init__(stack=stack, framer=framer, max_size=max_size, interface=interface)
        self.peer = peer
        self.last_send_error: OSError | None = None
        """The last error the kernel answered a send with (Rule 3)."""
        self.on_datagram: Callable[[bytes, tuple[str, int]], bool] | None = None
        self._raw_socket: socket.socket | None = None
        self._tos: tuple[int, int] = (socket.IPPROTO_IP, socket.IP_TOS)
        """The socket's (level, option) of a DSCP mark (Rule 4), read once per socket."""

    @property
    def raw_socket(self) -> socket.socket | None:
        """The real socket (asyncio only shows a TransportSocket, which cannot send)."""
        return self._raw_socket

    @raw_socket.setter
    def raw_socket(self, sock: socket.socket | None) -> None:
        self._raw_socket = sock
        if sock is not None:
            self._tos = tos_option(sock.family)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername") or self.peer
        self.local_address = (local[0], local[1]) if local else None
        self.remote_address = (peer[0], peer[1]) if peer else None
        self._schedule_pump()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._direct = True
        first = self.first_data
        if not first.done():
            first.set_result(None)
        if self.on_datagram is not None and self.on_datagram(data, addr):
            return
        if len(data) > self.max_size:
            return  # an oversize datagram is dropped, as the network would
        self.deliver([data], (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on UDP are soft (softErrorNotify); they do not close the carrier.
        self.report_soft_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.terminate(exc)

    def write_ready(self, ready: list[Any]) -> None:
        # The transport sends to the peer itself: a connected socket, or a listener's
        # per-peer view (_PeerView), which addresses its peer.
        sendto = self.transport.sendto
        plain_cp = self.dscp_for(0)  # None: nothing is marked
        for p in ready:
            if type(p) is bytes:
                if plain_cp is None:
                    sendto(p)
                    continue
                err = self._send_raw(p, plain_cp)
                if err is not None:
                    self.last_send_error = err
                continue
            err = self._send_raw(p.message.data, self.dscp_for(p.message.niceness))
            if err is not None:
                self.last_send_error = err
                self.fire(p.on_send_error, p.message)
            else:
                self.fire(p.on_sent, p.message)
        self.sent_any = True

    def _send_raw(self, data: bytes, cp: int | None) -> OSError | None:
        """Rule 3: write one datagram (marked with code point `cp`, Rule 4; None: unmarked)
        and return the kernel's refusal, None when it took the datagram or asyncio holds it
        (errors then come as soft errors). The caller fires the message's callbacks."""
        sock = self.raw_socket
        transport = self.transport
        if sock is not None and not transport.get_write_buffer_size():
            to = self.peer  # None: the socket is connected
            try:
                if cp is not None:
                    level, option = self._tos
                    anc = [(level, option, struct.pack("i", cp << 2))]
                    if to is not None:
                        sock.sendmsg([data], anc, 0, to)
                    else:
                        sock.sendmsg([data], anc)
                elif to is not None:
                    sock.sendto(data, to)
                else:
                    sock.send(data)
            except (BlockingIOError, InterruptedError):
                pass  # the kernel's buffer is full: asyncio queues it below
            except OSError as exc:
                return exc
            else:
                return None
        transport.sendto(data)  # a _PeerView adds its peer's address
        return None

    def path_stats(self) -> PathStats:
        """UDP measures nothing but the path MTU a connected socket knows."""
        return PathStats(mtu=tcpinfo.ip_mtu(self.raw_socket)
                         if self.peer is None else None)


class UdpStack:
    name = "udp"
    ip_protocol = "udp"

    async def connect(self, spec: AttemptSpec) -> DatagramTransient:
        loop = asyncio.get_running_loop()
        c = spec.candidate
        sock = connected_datagram_socket(c, local_port=spec.local_port)
        try:
            started = loop.time()
            transient = DatagramTransient(stack="udp", framer=spec.framer(),
                                          max_size=spec.settings.max_size,
                                          interface=c.interface)
            transient.raw_socket = sock
            transient.dscp = spec.settings.dscp
            await loop.create_datagram_endpoint(lambda: transient, sock=sock)
            transient.established_ms = (loop.time() - started) * 1000.0
            return transient
        except BaseException:
            sock.close()
            raise

    async def listen(self, spec: ListenSpec) -> UdpListening:
        loop = asyncio.get_running_loop()
        sock = _server_socket(spec.address, spec.port, spec.interface)
        try:
            listening = UdpListening(spec, sock.getsockname()[1])
            listening.sock = sock
            await loop.create_datagram_endpoint(lambda: listening, sock=sock)
        except BaseException:
            sock.close()
            raise
        return listening


async def bind_sink(address: str, port: int, interface: str | None,
                    settings: Settings) -> DatagramTransient:
    """An unconnected, bound UDP socket whose one Transient receives from every peer."""
    loop = asyncio.get_running_loop()
    sock = _server_socket(address, port, interface)
    try:
        transient = DatagramTransient(stack="udp", framer=RawFramer(settings.max_size),
                                      max_size=settings.max_size, interface=interface)
        transient.raw_socket = sock
        await loop.create_datagram_endpoint(lambda: transient, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transient


def _server_socket(address: str, port: int, interface: str | None) -> socket.socket:
    """A bound UDP socket for listeners and sinks; a multicast `address` joins its group."""
    sock = socket.socket(family_of(address), socket.SOCK_DGRAM)
    try:
        bind_server(sock, address, port, interface)
        group = _multicast(address)
        if group is not None:
            _join(sock, group, interface)
    except BaseException:
        sock.close()
        raise
    return sock


def _multicast(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    ip = ipaddress.ip_address(address)
    return ip if ip.is_multicast else None


_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
_IPV6_MULTICAST_ALL = 29


def _join(sock: socket.socket, group: ipaddress.IPv4Address | ipaddress.IPv6Address,
          interface: str | None) -> None:
    index = socket.if_nametoindex(interface) if interface else 0
    if group.version == 4:
        with contextlib.suppress(OSError):  # Rule 5 (Linux; elsewhere the default is off)
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        mreq = struct.pack("4s4si", group.packed, b"\0\0\0\0", index)  # struct ip_mreqn
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    else:
        with contextlib.suppress(OSError):  # Linux >= 4.20
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
        mreq6 = group.packed + struct.pack("@I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)


class _PeerView:
    """The transport a per-peer Transient sees: sends go to its peer via the shared socket."""

    def __init__(self, parent: UdpListening, peer: tuple[str, int]) -> None:
        self._parent = parent
        self._peer = peer
        self._closing = False

    def sendto(self, data: bytes, addr: Any = None) -> None:
        assert self._parent.transport is not None
        self._parent.transport.sendto(data, addr or self._peer)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        assert self._parent.transport is not None
        return self._parent.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            transient = self._parent.peers.pop(self._peer, None)
            if transient is not None:
                asyncio.get_running_loop().call_soon(transient.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


class UdpListening(asyncio.DatagramProtocol):
    stack = "udp"

    def __init__(self, spec: ListenSpec, port: int) -> None:
        self.spec = spec
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple[str, int], DatagramTransient] = {}
        self.sock: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (Python 3.11's selector datagram transport does not subclass DatagramTransport.)
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer = (addr[0], addr[1])
        transient = self.peers.get(peer)
        if transient is None:
            transient = DatagramTransient(stack="udp", framer=self.spec.framer(),
                                          max_size=self.spec.settings.max_size,
                                          interface=self.spec.interface, peer=peer)
            self.peers[peer] = transient
            transient.raw_socket = self.sock
            transient.dscp = self.spec.settings.dscp
            transient.connection_made(_PeerView(self, peer))  # type: ignore[arg-type]
            self.spec.on_transient(transient)
        transient.datagram_received(data, peer)

    def error_received(self, exc: Exception) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for transient in list(self.peers.values()):
            transient.connection_lost(exc)
        self.peers.clear()

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
