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
Rule 6: a listener's per-peer state lives exactly as long as the peer's Transient (which
ends when idle for carrier.idleTimeout, set by the Carrier from the listen Decision), and
Rule 7: the per-peer table is bounded (MAX_PEERS); a new peer beyond it is not answered.
Listening sockets and Sinks are attached through stacks/dgram.py, so a wildcard one answers
each peer from the address the peer wrote to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from functools import partial
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
from .dgram import PktinfoTransport, open_datagram_endpoint
from .transient import Transient

__all__ = ["MAX_PEERS", "DatagramTransient", "UdpListening", "UdpStack", "bind_sink"]


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
        and return the kernel's refusal, None when it took the datagram or the transport
        holds it (errors then come as soft errors). The caller fires the message's
        callbacks. A listener's peer writes through its _PeerView (Rule 6)."""
        ancillary: list[tuple[int, int, bytes]] = []
        if cp is not None:
            level, option = self._tos
            ancillary.append((level, option, struct.pack("i", cp << 2)))
        transport = self.transport
        if isinstance(transport, _PeerView):
            return transport.send_now(data, ancillary)
        return _send_or_queue(self.raw_socket, transport, data, ancillary, None)

    def path_stats(self) -> PathStats:
        """UDP measures nothing but the path MTU a connected socket knows."""
        return PathStats(mtu=tcpinfo.ip_mtu(self.raw_socket)
                         if self.peer is None else None)


def _send_or_queue(sock: socket.socket | None, transport: Any, data: bytes,
                   ancillary: list[tuple[int, int, bytes]],
                   peer: tuple[str, int] | None) -> OSError | None:
    """Rule 3's one write, for a connected socket (`peer` None) and a listener's peer alike:
    straight to the kernel while asyncio's buffer is empty (so order holds), returning its
    refusal; a full kernel buffer (EAGAIN) leaves the datagram to the transport's queue."""
    if sock is not None and not transport.get_write_buffer_size():
        try:
            if peer is None:
                if ancillary:
                    sock.sendmsg([data], ancillary)
                else:
                    sock.send(data)
            elif ancillary:
                sock.sendmsg([data], ancillary, 0, peer)
            else:
                sock.sendto(data, peer)
        except (BlockingIOError, InterruptedError):
            pass  # the kernel's buffer is full: asyncio queues it below
        except OSError as exc:
            return exc
        else:
            return None
    if peer is None:
        transport.sendto(data)
    else:
        transport.sendto(data, peer)
    return None


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
        sock = _server_socket(spec.address, spec.port, spec.interface)
        try:
            listening = UdpListening(spec, sock.getsockname()[1])
            listening.sock = sock
            await open_datagram_endpoint(lambda: listening, sock)
        except BaseException:
            sock.close()
            raise
        return listening


async def bind_sink(address: str, port: int, interface: str | None,
                    settings: Settings) -> DatagramTransient:
    """An unconnected, bound UDP socket whose one Transient receives from every peer."""
    sock = _server_socket(address, port, interface)
    try:
        transient = DatagramTransient(stack="udp", framer=RawFramer(settings.max_size),
                                      max_size=settings.max_size, interface=interface)
        transient.raw_socket = sock
        await open_datagram_endpoint(lambda: transient, sock)
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
    """The transport a per-peer Transient sees: sends go to its peer via the shared socket
    (from the address the peer wrote to, on a wildcard socket: stacks/dgram.py)."""

    def __init__(self, parent: UdpListening, peer: tuple[str, int]) -> None:
        self._parent = parent
        self._peer = peer
        self._closing = False

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._closing:
            return
        assert self._parent.transport is not None
        self._parent.transport.sendto(data, addr or self._peer)

    def send_now(self, data: bytes, ancillary: list[tuple[int, int, bytes]]) -> OSError | None:
        """Rule 3 for a listener's peer: the kernel's refusal, or None (taken or queued)."""
        if self._closing:
            return None
        endpoint: Any = self._parent.transport
        assert endpoint is not None
        peer = self._peer
        if isinstance(endpoint, PktinfoTransport):
            return endpoint.send_now(data, peer, ancillary)
        return _send_or_queue(self._parent.sock, endpoint, data, ancillary, peer)

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
            transient = self._parent.forget(self._peer)
            if transient is not None:
                asyncio.get_running_loop().call_soon(transient.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


MAX_PEERS = 8192
"""Per-peer Transients one UDP listener holds at once (Rule 7); datagrams from further new
peers are dropped (counted in `UdpListening.refused`) until some expire or close. UDP
sources are forgeable, so this, not the idle timeout, is what bounds a flood's memory: about
13 KB per accepted carrier (measured, 20,000 peers), so about 100 MB when full."""


class UdpListening(asyncio.DatagramProtocol):
    """Rule 2's demultiplexer. Rule 6: a peer's entry lives exactly as long as its Transient:
    removed when its view closes (close, abort, the idle timeout: all close the transport)
    and, whatever ends the Transient, when its `closed` resolves; a later datagram from that
    peer is a new peer. Rule 7: the table is bounded (`max_peers`)."""

    stack = "udp"

    def __init__(self, spec: ListenSpec, port: int) -> None:
        self.spec = spec
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple[str, int], DatagramTransient] = {}
        self.sock: socket.socket | None = None
        self.max_peers = MAX_PEERS
        self.refused = 0
        """Datagrams dropped because the table was full (Rule 7)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (Python 3.11's selector datagram transport does not subclass DatagramTransport.)
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer = (addr[0], addr[1])
        transient = self.peers.get(peer)
        if transient is not None and transient.closed.done():
            del self.peers[peer]  # ended this turn; its `_ended` has not run yet
            transient = None
        if transient is None:
            if len(self.peers) >= self.max_peers:
                self.refused += 1
                return
            spec = self.spec
            settings = spec.settings
            transient = DatagramTransient(stack="udp", framer=spec.framer(),
                                          max_size=settings.max_size,
                                          interface=spec.interface, peer=peer)
            self.peers[peer] = transient
            transient.closed.add_done_callback(partial(self._ended, peer, transient))
            transient.raw_socket = self.sock
            transient.dscp = settings.dscp
            transient.connection_made(_PeerView(self, peer))  # type: ignore[arg-type]
            spec.on_transient(transient)
            if self.peers.get(peer) is not transient:
                return  # refused by the listener (its view closed): nothing to deliver
        transient.datagram_received(data, peer)

    def forget(self, peer: tuple[str, int]) -> DatagramTransient | None:
        """Remove `peer`'s entry (its view closed); its Transient, if it had one."""
        return self.peers.pop(peer, None)

    def _ended(self, peer: tuple[str, int], transient: DatagramTransient,
               _done: object = None) -> None:
        if self.peers.get(peer) is transient:
            del self.peers[peer]

    def error_received(self, exc: Exception) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        peers = list(self.peers.values())
        self.peers.clear()
        for transient in peers:
            transient.connection_lost(exc)

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
