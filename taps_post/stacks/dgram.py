"""Datagram endpoints for listeners: the one place a bound UDP socket meets the event loop.

Rule 1: every listening UDP socket (UDP Listener, Sink, QUIC Listener) is attached through
`open_datagram_endpoint`, so how replies pick their source address on a wildcard bind is
decided here and nowhere else (docs/reliability.md, "Datagram listeners").
Rule 2: a socket bound to a specific address keeps asyncio's own datagram transport: the
kernel answers from that address. A socket bound to a wildcard (0.0.0.0, or :: with
v4-mapped peers) on Linux gets `PktinfoTransport`: it learns the destination address of
each datagram (IP_PKTINFO / IPV6_RECVPKTINFO through recvmsg) and sends each reply with that
address as its source (an IP_PKTINFO / IPV6_PKTINFO item on sendmsg). Without it, the
kernel picks the source by route, and on a host with several addresses a client that sent
to the second one gets its reply from the first and drops it (a connected UDP socket, QUIC).
Rule 3: the peer -> local address table is bounded (`MAX_PEERS`, least recently heard
evicted first): a peer beyond it is answered with the kernel's choice, as without the table.
Rule 4: datagram semantics on the send side: a datagram the kernel cannot take now (EAGAIN)
is queued up to `MAX_BUFFER` bytes and written when the socket is writable; beyond that it is
dropped and counted (`dropped`), never held without bound. The protocol's pause_writing /
resume_writing are called at asyncio's 64 KiB / 16 KiB marks, as asyncio's own transport does.
Rule 5: errors are reported as asyncio reports them: an OSError of recvmsg or sendmsg goes
to the protocol's `error_received` (ICMP errors on UDP are soft); anything else is fatal to
the transport (the loop's exception handler, then connection_lost(exc)).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import socket
import struct
import sys
from asyncio.trsock import TransportSocket
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MAX_BUFFER", "MAX_PEERS", "PktinfoTransport", "is_wildcard",
           "open_datagram_endpoint"]

MAX_PEERS = 32768
"""Peers whose local address a wildcard transport remembers (Rule 3): about 290 bytes each
(measured), so about 9 MB when full."""
MAX_BUFFER = 1 << 20
"""Bytes of datagrams queued while the kernel's send buffer is full (Rule 4)."""
READ_BATCH = 16
"""Datagrams read per readiness callback (asyncio reads one): fewer loop turns under load,
bounded so one busy socket does not starve the loop's other callbacks."""

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux; Python 3.11 does not export it
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IN_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # struct in6_pktinfo: addr, ifindex
_ANC_SIZE = socket.CMSG_SPACE(_IN_PKTINFO.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size) + 64
_RECV_SIZE = 65536
_V4MAPPED = b"\0" * 10 + b"\xff\xff"
_HIGH_WATER = 64 * 1024


class _Dropped(OSError):
    """What send_now returns for a datagram the full send queue dropped (Rule 4): a
    message's caller ends it with a send error, never with on_sent; sendto() stays silent,
    as the network would be."""


def _dropped() -> OSError:
    return _Dropped(errno.ENOBUFS, "datagram dropped: the send queue is full")
_LOW_WATER = 16 * 1024

Ancillary = tuple[int, int, bytes]


def is_wildcard(sock: socket.socket) -> bool:
    """Is `sock` a UDP socket bound to 0.0.0.0 or :: (Rule 2)?"""
    try:
        host = sock.getsockname()[0]
    except OSError:
        return False
    return host in ("0.0.0.0", "::")


async def open_datagram_endpoint(factory: Callable[[], asyncio.DatagramProtocol],
                                 sock: socket.socket) -> tuple[Any, Any]:
    """(transport, protocol) for the bound, non-blocking `sock`, as
    `loop.create_datagram_endpoint(factory, sock=sock)` returns them (connection_made has
    run); a wildcard socket gets a `PktinfoTransport` (Rule 2)."""
    loop = asyncio.get_running_loop()
    if not sys.platform.startswith("linux") or not is_wildcard(sock):
        return await loop.create_datagram_endpoint(factory, sock=sock)
    protocol = factory()
    waiter = loop.create_future()
    transport = PktinfoTransport(loop, sock, protocol, waiter=waiter)
    try:
        await waiter
    except BaseException:
        transport.abort()
        raise
    return transport, protocol


class PktinfoTransport(asyncio.DatagramTransport):
    """An asyncio datagram transport on a wildcard-bound socket that answers each peer from
    the address its datagrams came to (Rule 2), driven by loop.add_reader / add_writer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.BaseProtocol, *, waiter: asyncio.Future[None] | None = None,
                 max_peers: int = MAX_PEERS, max_buffer: int = MAX_BUFFER) -> None:
        super().__init__({"socket": TransportSocket(sock), "sockname": sock.getsockname(),
                          "peername": None})
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._v6 = sock.family == socket.AF_INET6
        self.max_peers = max_peers
        self.max_buffer = max_buffer
        self.dropped = 0
        """Datagrams dropped because the send queue was full (Rule 4)."""
        self._local: dict[tuple[Any, Any], Ancillary] = {}
        """Peer (host, port) -> the pktinfo item its replies carry, oldest heard first."""
        self._buffer: collections.deque[tuple[bytes, Any, Sequence[Ancillary]]] = \
            collections.deque()
        self._buffer_size = 0
        self._closing = False
        self._lost = False
        self._paused = False
        self._writing = False
        self._protocol_paused = False
        if self._v6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            with contextlib.suppress(OSError):  # v4-mapped peers on a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        loop.call_soon(self._connect, waiter)

    def _connect(self, waiter: asyncio.Future[None] | None) -> None:
        if self._lost:
            return
        try:
            self._protocol.connection_made(self)
            if not self._closing and not self._paused:
                self._loop.add_reader(self._fd, self._read_ready)
        finally:  # a failing connection_made is the loop's to report (as asyncio does);
            if waiter is not None and not waiter.done():  # the opener is not left waiting
                waiter.set_result(None)

    # ---- the asyncio transport interface ---------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self.is_reading():
            self._paused = True
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.add_reader(self._fd, self._read_ready)

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return _LOW_WATER, _HIGH_WATER

    def close(self) -> None:
        """Stop reading; the queued datagrams go out, then connection_lost(None)."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._lose(None)

    def abort(self) -> None:
        self._force_close(None)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if not data or self._lost:
            return
        if addr is None:
            raise ValueError("an unconnected datagram transport needs an address")
        err = self.send_now(data, addr)
        if err is not None and not isinstance(err, _Dropped):
            self._protocol.error_received(err)  # type: ignore[attr-defined]

    # ---- ours ------------------------------------------------------------------------------

    def local_address(self, addr: Any) -> str | None:
        """The local address `addr`'s datagrams last came to (None: not known, Rule 3)."""
        item = self._local.get((addr[0], addr[1]))
        if item is None:
            return None
        packed = item[2][:16] if item[0] == socket.IPPROTO_IPV6 else item[2][4:8]
        if len(packed) == 16 and packed.startswith(_V4MAPPED):
            return "::ffff:" + socket.inet_ntop(socket.AF_INET, packed[12:])
        return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET,
                                packed)

    @property
    def peers_known(self) -> int:
        return len(self._local)

    def send_now(self, data: Any, addr: Any,
                 ancillary: Sequence[Ancillary] = ()) -> OSError | None:
        """Write one datagram to `addr` from the address it last wrote to us (Rule 2), with
        the caller's extra `ancillary` items (a DSCP mark); return the kernel's refusal
        instead of reporting it (the caller ends its message with it). EAGAIN queues it
        (Rule 4), so it returns None then, as for a datagram the kernel took."""
        if self._lost:
            return None
        if self._buffer:
            return None if self._queue(bytes(data), addr, ancillary) else _dropped()
        try:
            self._write(data, addr, ancillary)
        except (BlockingIOError, InterruptedError):
            if not self._queue(bytes(data), addr, ancillary):
                return _dropped()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._write_ready)
        except OSError as exc:
            return exc
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on datagram transport")
        return None

    # ---- internals ---------------------------------------------------------------------------

    def _write(self, data: Any, addr: Any, ancillary: Sequence[Ancillary]) -> None:
        sock = self._sock
        assert sock is not None
        item = self._local.get((addr[0], addr[1]))
        if item is None:
            if ancillary:
                sock.sendmsg([data], ancillary, 0, addr)
            else:
                sock.sendto(data, addr)
            return
        try:
            sock.sendmsg([data], [item, *ancillary], 0, addr)
        except OSError as exc:
            if isinstance(exc, (BlockingIOError, InterruptedError)):
                raise
            # The address may have left the host (EADDRNOTAVAIL, EINVAL): forget it and let
            # the kernel choose, as it would without the table.
            self._local.pop((addr[0], addr[1]), None)
            sock.sendmsg([data], ancillary, 0, addr)

    def _queue(self, data: bytes, addr: Any, ancillary: Sequence[Ancillary]) -> bool:
        """Queue one datagram for when the socket is writable; False when it was dropped
        because the queue is full (Rule 4)."""
        if self._buffer_size + len(data) > self.max_buffer:
            self.dropped += 1  # Rule 4: the network could have lost it just as well
            return False
        self._buffer.append((data, addr, ancillary))
        self._buffer_size += len(data)
        if not self._protocol_paused and self._buffer_size > _HIGH_WATER:
            self._protocol_paused = True
            self._call_protocol("pause_writing")
        return True

    def _write_ready(self) -> None:
        buffer = self._buffer
        while buffer:
            data, addr, ancillary = buffer[0]
            try:
                self._write(data, addr, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                buffer.popleft()
                self._buffer_size -= len(data)
                self._protocol.error_received(exc)  # type: ignore[attr-defined]
                if self._lost:
                    return
                continue
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
            buffer.popleft()
            self._buffer_size -= len(data)
        if self._protocol_paused and self._buffer_size <= _LOW_WATER:
            self._protocol_paused = False
            self._call_protocol("resume_writing")  # may queue more
        if not buffer and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._lose(None)

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        local = self._local
        v6 = self._v6
        for _ in range(READ_BATCH):
            if self._closing or self._paused:
                return
            try:
                data, anc, flags, addr = sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)  # type: ignore[attr-defined]
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on datagram transport")
                return
            if flags & socket.MSG_TRUNC:
                continue  # larger than any UDP payload: not a datagram we can deliver
            item = _reply_item(anc, v6)
            if item is not None:
                key = (addr[0], addr[1])
                if local.pop(key, None) is None and len(local) >= self.max_peers:
                    del local[next(iter(local))]  # Rule 3: the least recently heard goes
                local[key] = item
            self._protocol.datagram_received(data, addr)  # type: ignore[attr-defined]

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler({"message": message, "exception": exc,
                                               "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._fd)
        self._lose(exc)

    def _lose(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._local.clear()


def _reply_item(anc: list[tuple[int, int, bytes]], v6: bool) -> Ancillary | None:
    """The sendmsg item that makes a reply leave from where this datagram came (Rule 2), or
    None (no pktinfo, or a multicast destination, which is no source address)."""
    v4_dst: bytes | None = None
    v6_item: tuple[bytes, int] | None = None
    for level, kind, payload in anc:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO \
                and len(payload) >= _IN_PKTINFO.size:
            _, spec_dst, _ = _IN_PKTINFO.unpack_from(payload)
            v4_dst = spec_dst  # the local address a reply should use (never a broadcast)
        elif level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO \
                and len(payload) >= _IN6_PKTINFO.size:
            v6_item = _IN6_PKTINFO.unpack_from(payload)
    if v6:
        if v4_dst is not None:
            if v4_dst[0] >= 224:
                return None
            return (socket.IPPROTO_IPV6, _IPV6_PKTINFO, _IN6_PKTINFO.pack(_V4MAPPED + v4_dst, 0))
        if v6_item is None:
            return None
        addr, ifindex = v6_item
        if addr[0] == 0xFF:
            return None
        if addr.startswith(_V4MAPPED):
            if addr[12] >= 224:
                return None
            return (socket.IPPROTO_IPV6, _IPV6_PKTINFO, _IN6_PKTINFO.pack(addr, 0))
        # A link-local source is only meaningful on its link: keep the interface index.
        scoped = addr[0] == 0xFE and (addr[1] & 0xC0) == 0x80
        return (socket.IPPROTO_IPV6, _IPV6_PKTINFO,
                _IN6_PKTINFO.pack(addr, ifindex if scoped else 0))
    if v4_dst is None or v4_dst[0] >= 224:
        return None
    return (socket.IPPROTO_IP, _IP_PKTINFO, _IN_PKTINFO.pack(0, v4_dst, b"\0\0\0\0"))
