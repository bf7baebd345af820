"""Transients: one protocol stack instance over one path, as an asyncio Protocol.

Rule 1: a Transient owns exactly one transport and everything that must stay consistent with
it: the send queue and its pump, the receive inbox, and the bookkeeping that turns byte offsets
into `on_sent` / `on_acked` callbacks. The Carrier above it only forwards calls, so a carrier
can move to a new Transient (activate) without any message being lost or duplicated.
Rule 2: writes are batched: the pump drains every ready message into one `transport.write()`,
except `immediate` messages, which get their own write (and so their own segment, because
every stream socket here has TCP_NODELAY set explicitly).
Rule 3: `on_sent` fires when the kernel has taken the message's last byte; `on_acked` when the
peer's TCP acknowledged it, read from the kernel's unsent+unacked count (SIOCOUTQ), not guessed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from ..errors import ConnectionClosedError, MessageTooLargeError
from .framing import _LENGTH, DeframingError, Framer, LengthPrefixFramer
from .messages import InMessage, OutMessage, Pending, SendQueue

__all__ = ["DatagramTransient", "StreamTransient", "Transient"]

_RECV_HIGH = 4096
"""Messages buffered in the inbox before we stop reading from the socket."""
_RECV_LOW = 1024
_SEND_HIGH = 1 << 20
"""Queued bytes above which `send()` waits (backpressure)."""
_SEND_LOW = 1 << 18
_TRANSPORT_HIGH = 1 << 18
"""asyncio's own buffer limit: small, so ordering decisions stay in our queue, not in a FIFO."""
_OWN_WRITE = 1 << 16
"""Frames this large get their own transport.write(): joining them would copy them again."""
_new_message = functools.partial(bytes.__new__, InMessage)


def _outq(sock: Any) -> int | None:
    """Bytes the kernel still holds for this socket (unsent + unacknowledged)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
    except (OSError, ValueError, AttributeError):
        return None
    return int(struct.unpack("i", buf)[0])


class Transient:
    """State shared by stream and datagram transients: queue, pump, inbox, callbacks."""

    accepts_plain = False
    """True when _write() takes bytes items (SendQueue.push_data) as well as Pending."""

    stack: str
    interface: str | None
    local_address: tuple[str, int] | None
    remote_address: tuple[str, int] | None
    established_ms: float | None

    def __init__(self, *, stack: str, framer: Framer, max_size: int,
                 interface: str | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.stack = stack
        self.framer = framer
        self.max_size = max_size
        self.interface = interface
        self.local_address = None
        self.remote_address = None
        self.established_ms = None
        self.transport: Any = None
        self.carrier: Any = None
        self.early = False
        self.rtt_ms: float | None = None
        """Connect time of the transport handshake (TCP SYN to SYN-ACK), as measured."""
        self.session_reused = False
        self.early_sent = False
        """The first message (initiate(send=...)) was written during establishment."""
        self.early_in_syn = False
        """...and rode in the SYN: the peer acknowledged our TCP Fast Open data."""
        self.session_sink: Callable[[Any], None] | None = None
        self.used_session: Any = None
        """The TLS session this connection resumed with, never to be stored again."""
        # receive side
        self._inbox: collections.deque[InMessage] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._callback: Callable[[InMessage], Any] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self.received_any = False
        # send side
        self._queue = SendQueue()
        self._pump_handle: asyncio.Handle | None = None
        self._direct = True
        """May the next submit write at once (no pump pending, first write since the event
        loop last called us)? Re-armed by the loop's callbacks: data received, pump, resume."""
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._written = 0
        self._unsent: collections.deque[tuple[int, Pending]] = collections.deque()
        self._unacked: collections.deque[tuple[int, Pending]] = collections.deque()
        self._progress_handle: asyncio.TimerHandle | None = None
        self._progress_delay = 0.001
        self.sent_any = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._close_waiters: list[asyncio.Future[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done() and self._error is None

    def _lost(self, exc: BaseException | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        for p in self._queue.drain_all():
            self._fire(p.on_expired, p.message)
        self._fail_progress()
        self._cancel_timers()
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        for w in self._close_waiters:
            if not w.done():
                w.set_result(None)
        self._close_waiters.clear()

    def _cancel_timers(self) -> None:
        for h in (self._pump_handle, self._expiry_handle, self._progress_handle):
            if h is not None:
                h.cancel()
        self._pump_handle = self._expiry_handle = self._progress_handle = None

    def fail(self, exc: BaseException) -> None:
        """Abort because of a local protocol error (deframing, oversize): the peer is cut off."""
        if self._error is None:
            self._error = exc
        if self.transport is not None:
            self.transport.abort()
        self._lost(exc)

    async def aclose(self) -> None:
        """Graceful close: queued messages go out first, then the transport closes."""
        if self.transport is None:
            return
        if self.session_sink is not None:
            self._capture_session()
        if not self.closed.done():
            await self._flush()
            if not self.transport.is_closing():
                self.transport.close()
            if not self.closed.done():
                waiter = self.loop.create_future()  # private: cancelling the caller cancels
                self._close_waiters.append(waiter)  # it, never `self.closed`
                timer = self.loop.call_later(5.0, self.transport.abort)
                try:
                    await waiter
                finally:
                    timer.cancel()
        if self.session_sink is not None:
            self._capture_session()  # tickets read during the close (see above)

    async def _flush(self) -> None:
        """Let the pump send everything queued before a close."""
        while len(self._queue) and self.is_open:
            before = self._queue.queued_bytes
            self._schedule_pump()
            await self._wait_drained()
            if self._queue.queued_bytes == before and not self._writing_paused:
                # Nothing could go: what is left waits for antecedents that will never be
                # sent here. Report it rather than hold the close forever.
                for p in self._queue.drain_all():
                    self._fire(p.on_expired, p.message)
                break

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _capture_session(self) -> None:
        # TLS 1.3 tickets arrive after the handshake, so look once data has flowed. On a
        # resumed connection the session starts out as the ticket just used: wait for a new
        # one, since a ticket must serve one connection only.
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        session = getattr(obj, "session", None)
        if session is None or not session.has_ticket or self.session_sink is None:
            return
        if self.used_session is not None and session.id == self.used_session.id \
                and session.time == self.used_session.time:
            return
        self.session_sink(session)
        self.session_sink = None

    # ---- receive side ---------------------------------------------------------------------

    def _deliver(self, messages: list[bytes], remote: tuple[str, int] | None = None) -> None:
        if not messages:
            return
        self.received_any = True
        carrier, early = self.carrier, self.early
        if self._callback is not None:
            for m in messages:
                msg = InMessage(m, carrier=carrier, remote=remote, early=early)
                if self._callback is None:
                    self._inbox.append(msg)
                elif self._callback(msg) is False:
                    self._callback = None
            self._wake()
            return
        inbox = self._inbox
        if remote is None and not early:
            new = bytes.__new__  # InMessage(m, carrier=...) without the Python-level __new__
            for m in messages:
                msg = m if type(m) is InMessage else new(InMessage, m)
                msg.carrier = carrier
                inbox.append(msg)
        else:
            for m in messages:
                inbox.append(InMessage(m, carrier=carrier, remote=remote, early=early))
        if len(inbox) > _RECV_HIGH and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        # Every receiver waiting wakes and re-checks: concurrent receive() calls each get a
        # message or keep waiting, none is forgotten.
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def set_callback(self, callback: Callable[[InMessage], Any] | None) -> None:
        self._callback = callback
        while callback is not None and self._inbox:
            if callback(self._inbox.popleft()) is False:
                self._callback = None
                break

    async def receive(self) -> InMessage:
        while not self._inbox:
            if self._error is not None:
                raise ConnectionClosedError(f"{self.stack} carrier failed: {self._error}") \
                    from self._error
            if self._eof:
                raise ConnectionClosedError(f"the peer closed the {self.stack} carrier")
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.pop_message()

    def pop_message(self) -> InMessage:
        """The next inbox message (the caller checked there is one)."""
        msg = self._inbox.popleft()
        if self._reading_paused and len(self._inbox) < _RECV_LOW and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return msg

    # ---- send side ------------------------------------------------------------------------

    def submit(self, message: OutMessage, on_sent: Any = None, on_acked: Any = None,
               on_expired: Any = None, *, queued_at: float | None = None) -> None:
        """Queue a message; its lifetime counts from `queued_at` (when send_msg() was called,
        before any backpressure wait), else from now."""
        self._admit(message.data)
        start = self.loop.time() if queued_at is None else queued_at
        deadline = None if message.lifetime is None else start + message.lifetime
        self._queue.push(Pending(message, deadline, on_sent, on_acked, on_expired))
        if (message.niceness == 0 and not message.antecedents and on_sent is None
                and on_acked is None and on_expired is None):
            self._kick()  # nothing queued later can overtake (0, seq): writing now keeps order
        else:
            self._schedule_pump()  # callbacks run from the loop, never inside send_msg()

    def submit_data(self, data: bytes) -> None:
        """`send(data)` with default properties: no OutMessage, no Pending, no heap entry."""
        self._admit(data)
        n = len(data)
        q = self._queue
        if self._direct and self._pump_handle is None and not self._writing_paused \
                and not q.queued_bytes and not len(q) and type(self) is StreamTransient:
            self._direct = False  # idle link: frame and write, no queue round trip
            self._emit(self.framer.encode(data))
            self.sent_any = True
            return
        q._plain.append((next(q._arrivals), data))  # SendQueue.push_data, inlined
        q.queued_bytes += n
        if self._pump_handle is None:
            self._kick()

    def _admit(self, data: bytes) -> None:
        """What every send path checks before queueing: open, within message.maxSize, and
        carriable by the framer (a line framer refuses a message containing its delimiter to
        the sender, rather than losing it later inside the pump)."""
        t = self.transport
        if t is None or self._error is not None or self.closed.done() or t.is_closing():
            raise ConnectionClosedError(f"cannot send: the {self.stack} carrier is closed; "
                                        "`await carrier.activate()` re-establishes it")
        limit = min(self.max_size, self.framer.max_size)
        if len(data) > limit:
            raise MessageTooLargeError(f"message of {len(data)} bytes is over "
                                       f"message.maxSize ({limit})")
        if type(self.framer) is not LengthPrefixFramer and isinstance(self, StreamTransient):
            self.framer.encode(data)

    def _kick(self) -> None:
        """Write now if the link is idle and this is the first write since the loop last ran
        one of our callbacks (request/response: no extra loop iteration per message);
        otherwise let the pump batch everything queued in this tick into one write."""
        if self._pump_handle is not None or self.transport is None:
            return
        if self._direct and not self._writing_paused:
            self._direct = False
            self._pump()
        else:
            self._pump_handle = self.loop.call_soon(self._pump_soon)

    def _pump_soon(self) -> None:
        self._direct = True
        self._pump()

    async def wait_writable(self) -> None:
        """Backpressure: return when the queue is below its high-water mark (or when what is
        queued is all held by antecedents, which only the caller can release)."""
        while self._queue.queued_bytes > _SEND_HIGH and self.is_open:
            before = self._queue.queued_bytes
            await self._wait_drained()
            if self._queue.queued_bytes == before and not self._writing_paused:
                return

    async def _wait_drained(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        await self._drained

    def _schedule_pump(self) -> None:
        if self._pump_handle is None and self.transport is not None:
            self._pump_handle = self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_handle = None
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        stuck = False
        if self._writing_paused:
            for p in self._queue.expire(now):
                self._fire(p.on_expired, p.message)
        else:
            ready, expired = self._queue.pop_ready(now)
            for p in expired:
                self._fire(p.on_expired, p.message)
            if ready:
                self._write(ready)
            stuck = not ready and len(self._queue) > 0
        if (self._queue.queued_bytes <= _SEND_LOW or stuck) and self._drained is not None \
                and not self._drained.done():
            self._drained.set_result(None)
        deadline = self._queue.next_deadline()
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        if deadline is not None:
            self._expiry_handle = self.loop.call_at(deadline, self._schedule_pump)

    def _write(self, ready: list[Pending]) -> None:
        raise NotImplementedError

    def _track(self, end: int, p: Pending) -> None:
        if p.on_sent is not None or p.on_acked is not None:
            self._unsent.append((end, p))

    def _check_progress(self) -> None:
        self._progress_handle = None
        transport = self.transport
        if transport is None:
            return
        buffered = transport.get_write_buffer_size()
        accepted = self._written - buffered
        progressed = False
        while self._unsent and self._unsent[0][0] <= accepted:
            end, p = self._unsent.popleft()
            self._fire(p.on_sent, p.message)
            progressed = True
            if p.on_acked is not None:
                self._unacked.append((end, p))
        if self._unacked:
            acked = self._acked_offset(accepted, buffered)
            while self._unacked and acked is not None and self._unacked[0][0] <= acked:
                _end, p = self._unacked.popleft()
                self._fire(p.on_acked, p.message)
                progressed = True
        if self._unsent or self._unacked:
            self._progress_delay = 0.0005 if progressed else min(self._progress_delay * 2, 0.05)
            self._progress_handle = self.loop.call_later(self._progress_delay,
                                                         self._check_progress)

    def _acked_offset(self, accepted: int, buffered: int) -> int | None:
        return None

    def _fail_progress(self) -> None:
        # Messages handed to the kernel but not known sent when the transport died.
        while self._unsent:
            _end, p = self._unsent.popleft()
            self._fire(p.on_expired, p.message)
        self._unacked.clear()

    def _fire(self, callback: Any, message: OutMessage) -> None:
        if callback is None:
            return
        try:
            callback(message)
        except Exception as exc:  # a user callback must not kill the transport
            self.loop.call_exception_handler({"message": "taps_post message callback failed",
                                              "exception": exc})

    # ---- flow control from asyncio --------------------------------------------------------

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._direct = True
        self._schedule_pump()
        if self._unsent and self._progress_handle is None:
            self._check_progress()


class StreamTransient(Transient, asyncio.Protocol):
    """TCP, TLS and MPTCP: messages framed onto one byte stream."""

    accepts_plain = True

    def __init__(self, *, stack: str, framer: Framer, max_size: int,
                 interface: str | None = None, secure: bool = False) -> None:
        super().__init__(stack=stack, framer=framer, max_size=max_size, interface=interface)
        self.secure = secure
        self.raw_socket: Any = None
        self.stream_protocol: asyncio.StreamReaderProtocol | None = None
        self.nodelay_set = False
        self.on_connection: Callable[[StreamTransient], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.raw_socket = sock
        if sock is not None and not self.nodelay_set:
            # asyncio sets this only on sockets it created itself (DESIGN section 8).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_TRANSPORT_HIGH)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.remote_address = (peer[0], peer[1]) if peer else None
        self.local_address = (local[0], local[1]) if local else None
        if self.on_connection is not None:
            self.on_connection(self)
        self._schedule_pump()

    def data_received(self, data: bytes) -> None:
        if self.session_sink is not None:
            self._capture_session()
        self._direct = True
        framer = self.framer
        try:
            messages: Any = (framer.feed_with(data, _new_message)
                             if type(framer) is LengthPrefixFramer else framer.feed(data))
        except DeframingError as exc:
            self.fail(MessageTooLargeError(str(exc)) if "maxSize" in str(exc) else exc)
            return
        self._deliver(messages)

    def eof_received(self) -> bool | None:
        try:
            self._deliver(self.framer.eof())
        except DeframingError as exc:
            self._error = exc
        self._eof = True
        self._wake()
        # A half-close ends the peer's messages, not ours: keep the transport open so replies
        # still go out (a line client that shuts down its side after the last line expects
        # its answers). TLS cannot half-close; asyncio closes it whatever we return.
        return not self.secure

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _write(self, ready: list[Any]) -> None:
        encode = self.framer.encode
        # Length prefix: plain messages were size-checked at submit; the prefix and the payload
        # go into the join as two items (no per-message concatenation).
        pack = _LENGTH.pack if type(self.framer) is LengthPrefixFramer else None
        batch: list[bytes] = []
        offset = self._written
        for p in ready:
            plain = type(p) is bytes
            if plain and pack is not None and len(p) < _OWN_WRITE:
                batch.append(pack(len(p)))
                batch.append(p)
                offset += 4 + len(p)
                continue
            frame = encode(p if plain else p.message.data)
            if len(frame) >= _OWN_WRITE or (not plain and p.message.immediate):
                if batch:
                    self._emit(b"".join(batch) if len(batch) > 1 else batch[0])
                    batch = []
                self._emit(frame)
            else:
                batch.append(frame)
            offset += len(frame)
            if not plain:
                self._track(offset, p)
        if batch:
            self._emit(b"".join(batch) if len(batch) > 1 else batch[0])
        self.sent_any = True
        if (self._unsent or self._unacked) and self._progress_handle is None:
            self._check_progress()

    def _emit(self, data: bytes) -> None:
        self.transport.write(data)
        self._written += len(data)

    def _acked_offset(self, accepted: int, buffered: int) -> int | None:
        outq = _outq(self.raw_socket)
        if outq is None:
            return None
        if self.secure:
            # Ciphertext offsets differ from ours: only "everything handed over is acked" is
            # certain, when neither asyncio nor the kernel hold any byte of ours.
            return accepted if outq == 0 and buffered == 0 else None
        return accepted - outq


class DatagramTransient(Transient, asyncio.DatagramProtocol):
    """UDP: one message per datagram; no ordering, no acknowledgement."""

    accepts_plain = True

    def __init__(self, *, stack: str, framer: Framer, max_size: int,
                 interface: str | None = None, peer: tuple[str, int] | None = None) -> None:
        super().__init__(stack=stack, framer=framer, max_size=max_size, interface=interface)
        self.peer = peer
        self.on_datagram: Callable[[bytes, tuple[str, int]], bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername") or self.peer
        self.local_address = (local[0], local[1]) if local else None
        self.remote_address = (peer[0], peer[1]) if peer else None
        self._schedule_pump()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._direct = True
        if self.on_datagram is not None and self.on_datagram(data, addr):
            return
        if len(data) > self.max_size:
            return  # an oversize datagram is dropped, as the network would
        self._deliver([data], (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on UDP are soft (softErrorNotify); they do not close the carrier.
        self.soft_error = exc

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _write(self, ready: list[Any]) -> None:
        sendto = self.transport.sendto
        for p in ready:
            plain = type(p) is bytes
            data = p if plain else p.message.data
            if self.peer is not None and self.transport.get_extra_info("peername") is None:
                sendto(data, self.peer)
            else:
                sendto(data)
            if not plain:
                self._fire(p.on_sent, p.message)  # sendto hands the datagram to the kernel
        self.sent_any = True
