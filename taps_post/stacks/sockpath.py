"""`SocketPath`: a connected UDP socket as a `DatagramPath` (stacks.base Rule 5).

A rendezvous stack (quic-ice) runs over a path someone else established: between two peers
that is an ICE candidate pair (taps_post.ice). This is the same contract over one plain
connected UDP socket, so the stack can be tested without ICE and benchmarked against "QUIC
without ICE" on the very same code path.

Rule 1: the socket is connected to `remote` (the kernel takes only that peer's datagrams and
reports ICMP errors to it), bound to `local` and held to `interface` when one is given (base
Rule 3: `bind_to_device`, or the route must prove the interface). No SO_REUSEADDR (base
Rule 4).
Rule 2: sending never blocks and never raises: a datagram the kernel cannot take now
(EAGAIN) waits in a bounded queue (`MAX_BUFFER` bytes) written when the socket is
writable, as asyncio's own datagram transport does; beyond that, and when the kernel
refuses it (an ICMP error reported on the connected socket, EMSGSIZE), it is dropped and
counted (`dropped`). Datagrams are best effort: QUIC above retransmits.
Rule 3: the socket is read only while a receiver is set (`receive(callback)`), at most
`READ_BATCH` datagrams per wake-up so one busy path cannot starve the loop; while none is
set nothing is read, and what arrives waits in the kernel's receive buffer (bounded by
SO_RCVBUF), so a datagram that comes between `open()` and the stack's `receive()` is not
lost. A receiver that raises is reported to the loop's exception handler; the path goes on.
Rule 4: `close()` is idempotent and releases the socket at once (queued datagrams are
dropped, the receiver is forgotten).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Callable

from .base import bind_to_device, family_of

__all__ = ["MAX_BUFFER", "READ_BATCH", "SocketPath"]

MAX_BUFFER = 256 << 10
"""Bytes of datagrams held while the kernel's send buffer is full (Rule 2)."""
READ_BATCH = 128
"""Datagrams read per wake-up of the socket (Rule 3)."""
_MAX_DATAGRAM = 65535


class SocketPath:
    """A connected, non-blocking UDP socket implementing `stacks.base.DatagramPath`."""

    def __init__(self, sock: socket.socket, remote: tuple[str, int],
                 interface: str | None = None) -> None:
        """Take over `sock`, a bound UDP socket connected to `remote` (use `open()`)."""
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        name = sock.getsockname()
        self.local: tuple[str, int] = (name[0], name[1])
        self.remote: tuple[str, int] = (remote[0], remote[1])
        self.interface = interface
        self._callback: Callable[[bytes], None] | None = None
        self._reading = False
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._writing = False
        self.closed = False
        self.dropped = 0
        """Datagrams not sent: the queue was full, or the kernel refused them (Rule 2)."""
        self.errors = 0
        """ICMP errors the kernel reported on the socket (a peer not listening, say)."""
        self.sent = 0
        self.received = 0

    @classmethod
    async def open(cls, *, local: tuple[str, int], remote: tuple[str, int],
                   interface: str | None = None) -> SocketPath:
        """A UDP socket bound to `local` (port 0: any), held to `interface` and connected
        to `remote` (Rule 1). OSError (or InterfaceNotEnforcedError) when any step fails."""
        sock = socket.socket(family_of(remote[0]), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            bind_to_device(sock, interface, remote=remote[0], local=local[0])
            sock.bind((local[0], local[1]))
            sock.connect((remote[0], remote[1]))
        except BaseException:
            sock.close()
            raise
        return cls(sock, remote, interface)

    @classmethod
    async def pair(cls, address: str = "127.0.0.1") -> tuple[SocketPath, SocketPath]:
        """Two paths on `address`, each connected to the other: both ports are bound before
        either socket connects, so neither end has to guess a free port."""
        family = family_of(address)
        a = socket.socket(family, socket.SOCK_DGRAM)
        b = socket.socket(family, socket.SOCK_DGRAM)
        try:
            a.bind((address, 0))
            b.bind((address, 0))
            a_name, b_name = a.getsockname(), b.getsockname()
            a.connect((b_name[0], b_name[1]))
            b.connect((a_name[0], a_name[1]))
            return (cls(a, (b_name[0], b_name[1])), cls(b, (a_name[0], a_name[1])))
        except BaseException:
            a.close()
            b.close()
            raise

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return (f"<SocketPath {self.local[0]}:{self.local[1]} -> "
                f"{self.remote[0]}:{self.remote[1]}{state}>")

    # ---- sending (Rule 2) --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self._queue:  # keep order behind what waits for the socket
            self._enqueue(data)
            return
        try:
            self._sock.send(data)
        except BlockingIOError:
            self._enqueue(data)
            return
        except OSError:
            self.dropped += 1
            self.errors += 1
            return
        self.sent += 1

    def _enqueue(self, data: bytes) -> None:
        if self._queued + len(data) > MAX_BUFFER:
            self.dropped += 1
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._flush)

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            data = queue[0]
            try:
                self._sock.send(data)
            except BlockingIOError:
                return
            except OSError:
                self.dropped += 1
                self.errors += 1
            else:
                self.sent += 1
            queue.popleft()
            self._queued -= len(data)
        self._writing = False
        self._loop.remove_writer(self._sock.fileno())

    # ---- receiving (Rule 3) ------------------------------------------------------------------

    def receive(self, callback: Callable[[bytes], None] | None) -> None:
        self._callback = callback
        if self.closed:
            return
        if callback is not None and not self._reading:
            self._reading = True
            self._loop.add_reader(self._sock.fileno(), self._read)
        elif callback is None and self._reading:
            self._reading = False
            self._loop.remove_reader(self._sock.fileno())

    def _read(self) -> None:
        sock = self._sock
        for _ in range(READ_BATCH):
            callback = self._callback
            if callback is None or self.closed:
                return
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # an ICMP error on the connected socket: soft, read on
                self.errors += 1
                continue
            self.received += 1
            try:
                callback(data)
            except Exception as exc:  # the receiver's bug is not the path's end
                self._loop.call_exception_handler({
                    "message": "SocketPath receiver failed", "exception": exc,
                    "path": self})

    # ---- lifetime (Rule 4) -------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._callback = None
        fd = self._sock.fileno()
        if self._reading:
            self._reading = False
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        if self._writing:
            self._writing = False
            with contextlib.suppress(Exception):
                self._loop.remove_writer(fd)
        self.dropped += len(self._queue)
        self._queue.clear()
        self._queued = 0
        self._sock.close()
