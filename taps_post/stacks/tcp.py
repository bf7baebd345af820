"""TCP, TLS over TCP, MPTCP and TLS over MPTCP: one implementation, two switches.

Rule 1: we create every socket ourselves (to bind the candidate's interface and address, and
for IPPROTO_MPTCP), so TCP_NODELAY is set here explicitly; asyncio only does it for sockets it
creates (otherwise Nagle plus delayed ACKs add ~40 ms per small exchange; docs/runtime.md).
Rule 2: a TLS attempt is ready only after its handshake and, when certificates are pinned,
after the peer's certificate matched a pin, and after DANE accepted it (stacks/tls.py Rule 6;
`dane` says how). A racing TLS attempt is not a winner before that.
Rule 3: TLS sessions are resumed through a per-association SSLContext (sessions only resume
on the context that made them) and each ticket goes to one attempt only: a ticket is stored
with the context that made it and only an attempt on that very context takes it (another
ALPN or client certificate means another context, which must never see a foreign session).
Rule 4: Fast Open carries the first idempotent message of the early flight in the SYN (a
copy, `EarlyAttempt.take(limit=1)`), tracked in the Ledger from offset 0 like any written
message, so its on_sent/on_acked come from the kernel's offsets. On the accepting side only
what certainly arrived in the SYN is marked `InMessage.early`: TCP_INFO says the SYN carried
data (TCPI_OPT_SYN_DATA), and while tcpi_data_segs_in is 1 tcpi_bytes_received is exactly
that data (tcp_fastopen_add_skb sets both); with more data segments already in, nothing is.
Rule 5: DSCP marks are per socket on TCP (IP_TOS / IPV6_TCLASS = code point << 2), set before
a write batch to the code point of its most urgent niceness, only when it changes; without
a `message.dscp` table no setsockopt is made at all.
Rule 6: at the end of a connection, the messages written but not acknowledged fail (the
Transient's Rule 5); what the peer acknowledged and the kernel had taken are read from
TCP_INFO (tcpi_bytes_acked, which counts the SYN as one, plus the bytes still in the send
queue), since asyncio drops its own buffer on an error.
Rule 7: an MPTCP connection that fell back to plain TCP reports `tcp`/`tls` and
`mptcp_fallback = True`, never a multipath it does not have: the kernel's TCP_IS_MPTCP is read
when the connection is made (accepted on an MPTCP listener, or connected by an `mptcp` /
`tls-mptcp` attempt to a peer that answered without MP_CAPABLE) and again whenever the
subflows are read (a fallback can also happen later, e.g. a middlebox dropping the option).
Rule 8: a connection we cut off (`fail`: a protocol error, the idle timeout, a close past its
linger) is reset (SO_LINGER 0), so no kernel keeps buffering for a peer we gave up on.
Rule 9: after the peer's EOF (kept open for our replies, plain TCP only) whatever we write is
watched until the peer acknowledged it: a reset, which nothing reads any more, is seen in
TCP_INFO (state CLOSE) and ends the Transient (the Transient's Rule 10).
Rule 10: a kernel or namespace that refuses IPPROTO_MPTCP (net.mptcp.enabled=0, no MPTCP
built in: socket() fails with ENOPROTOOPT, EPROTONOSUPPORT or EINVAL) fails the attempt at
once with that errno, which racing classifies as `unsupported`: no packet is sent, no timer
runs, the race starts the next candidate (plain TCP) immediately. Only a listener, which
must serve single-path clients anyway, opens a plain TCP socket instead.
Rule 11: the subflows of an MPTCP connection are the kernel's view, read on every call
(`system.mptcp.read_subflows`: MPTCP_FULL_INFO or MPTCP_TCPINFO + MPTCP_SUBFLOW_ADDRS), never
remembered: subflows come and go while the connection lives. A connection that fell back has
none (its one path is the Transient's own).
Rule 12: `connect_socket` is an attempt of `tp.open_socket`: the socket is made and bound as
for a Transient (Rules 1, 5: TCP_NODELAY, the candidate's interface, the SYN's DSCP mark)
and connected with a plain connect, never Fast Open (the caller sends its first bytes
itself) and never TLS (left to the caller: a secure stack refuses the attempt as
unsupported). An MPTCP socket that fell back reports `tcp` (Rule 7). Nothing reads from the
socket, so whatever the server sends first (a banner) is still there for the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import socket
import ssl
import struct
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.framing import LENGTH, Framer, LengthPrefixFramer
from ..core.messages import InMessage, Pending
from ..core.path import PathStats, Subflow
from ..decision.environment import Interface
from ..errors import DeframingError, MptcpRefusedError
from ..system import mptcp, tcpinfo
from ..system.mptcp import is_mptcp
from .accept import Acceptor, backlog_for
from .base import AttemptSpec, DscpMarker, ListenSpec, bind_server, bind_to_device, family_of
from .tls import (
    client_tls_context,
    dane_anchors,
    dane_refusal,
    defers_pkix,
    open_tls,
    refuse_before_dane,
    server_tls_context,
    verify_dane,
    verify_pins,
)
from .transient import Transient

__all__ = ["FALLBACK", "BareSocket", "MptcpRefusedError", "ResumingContext", "StreamStack",
           "StreamTransient", "is_mptcp", "outq"]

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2
_TCP_CLOSE = 7
"""tcpi_state of a connection that ended (include/net/tcp_states.h TCP_CLOSE)."""
FALLBACK = {"mptcp": "tcp", "tls-mptcp": "tls"}
"""The single-path stack an MPTCP stack's connection is after a fallback (Rule 7)."""
_REFUSED = frozenset({errno.ENOPROTOOPT, errno.EPROTONOSUPPORT, errno.EINVAL})
"""socket(IPPROTO_MPTCP) errors of a kernel or namespace without MPTCP (Rule 10)."""


def _mptcp_enabled_sysctl() -> str:
    """net.mptcp.enabled of this namespace as text, for an error message."""
    value = mptcp.sysctl("enabled")
    if value is None:
        return "absent (no MPTCP in this kernel)"
    return value or "empty"


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def _fastopen_sysctl() -> int | None:
    """net.ipv4.tcp_fastopen of this namespace; None when it cannot be read."""
    try:
        with open("/proc/sys/net/ipv4/tcp_fastopen", encoding="ascii") as fh:
            return int(fh.read().strip() or "0")
    except (OSError, ValueError):
        return None


def fastopen_enabled() -> bool:
    """net.ipv4.tcp_fastopen bit 0 allows Fast Open on client sockets (per namespace)."""
    return bool((_fastopen_sysctl() or 0) & 1)


_TFO_SERVER = 0x2 | 0x400
"""net.ipv4.tcp_fastopen: server Fast Open (0x2) on listeners without TCP_FASTOPEN (0x400)."""


def fastopen_without_sockopt() -> bool:
    """Can a listener that did not set TCP_FASTOPEN take data in SYNs all the same? Only
    where the sysctl enables it for every listener; True when it cannot be read."""
    value = _fastopen_sysctl()
    return value is None or value & _TFO_SERVER == _TFO_SERVER


def syn_data_acked(sock: Any) -> bool:
    """Client: the server acknowledged the data of our SYN. Server: the SYN carried data."""
    return tcpinfo.syn_data(tcpinfo.read(sock))


def syn_bytes(sock: Any) -> int:
    """How many bytes certainly arrived in the SYN of an accepted connection (Rule 4)."""
    info = tcpinfo.read(sock)
    if not tcpinfo.syn_data(info) or info is None or info.data_segs_in != 1:
        return 0
    return info.bytes_received or 0


async def _fastopen_connect(sock: socket.socket, addr: tuple[str, int], data: bytes) -> int:
    """Connect with `data` in the SYN (MSG_FASTOPEN). Without a cookie yet the kernel sends a
    plain SYN asking for one and takes no data (EINPROGRESS): the caller sends it afterwards.
    Returns how many bytes rode in the SYN; waits until the handshake completed."""
    try:
        sent = sock.sendto(data, socket.MSG_FASTOPEN, addr)
    except BlockingIOError:
        sent = 0
    await _connected(sock, addr)
    return sent


async def _connect(sock: socket.socket, addr: tuple[str, int]) -> None:
    """Non-blocking connect. Not loop.sock_connect(): asyncio resolves the address again
    with the socket's protocol, and getaddrinfo refuses IPPROTO_MPTCP."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        sock.connect(addr)
    await _connected(sock, addr)


async def _connected(sock: socket.socket, addr: tuple[str, int]) -> None:
    """Wait until a connect in progress completed; raise its error."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_writer(sock.fileno(), writable)
    try:
        await done
    finally:
        loop.remove_writer(sock.fileno())
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"Connect call failed {addr}: {os.strerror(err)}")


_TRANSPORT_HIGH = 1 << 18
"""asyncio's own buffer limit: small, so ordering decisions stay in our queue, not in a FIFO."""
_OWN_WRITE = 1 << 16
"""Frames this large get their own transport.write(): joining them would copy them again."""
_new_message = functools.partial(bytes.__new__, InMessage)


def outq(sock: Any) -> int | None:
    """Bytes the kernel still holds for this socket (unsent + unacknowledged)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
    except (OSError, ValueError, AttributeError):
        return None
    return int(struct.unpack("i", buf)[0])


class StreamTransient(Transient, asyncio.Protocol):
    """TCP, TLS and MPTCP: messages framed onto one byte stream."""

    __slots__ = ("_aborted", "_early_left", "_feeds_messages", "_length_prefixed", "_preload_rest",
                 "_written", "dane", "dscp_marker", "fallback_stack", "mptcp_fallback",
                 "nodelay_set", "on_connection", "raw_socket", "secure", "session_sink",
                 "syn_data_possible", "used_session")

    accepts_plain = True

    def __init__(self, *, stack: str, framer: Framer, max_size: int,
                 interface: str | None = None, secure: bool = False) -> None:
        super().__init__(stack=stack, framer=framer, max_size=max_size, interface=interface)
        self.secure = secure
        self.raw_socket: Any = None
        self.nodelay_set = False
        self.on_connection: Callable[[StreamTransient], None] | None = None
        self._length_prefixed = type(framer) is LengthPrefixFramer
        self._feeds_messages = isinstance(framer, LengthPrefixFramer)
        """One-copy deframing straight into InMessage objects (`feed_with`), for the default
        framer (a flag, not the bound method: 64 bytes less per idle carrier)."""
        self._written = 0
        self.session_sink: Callable[[Any], None] | None = None
        self.used_session: Any = None
        self.dane: str | None = None
        """How DANE accepted the peer (stacks/dane.py `check`); None: not checked."""
        """The TLS session this connection resumed with, never to be stored again."""
        self.fallback_stack: str | None = None
        """An MPTCP socket (connected or accepted): the stack to report if MPTCP fell back
        (Rule 7); None on a plain TCP socket."""
        self.mptcp_fallback = False
        """MPTCP was asked for and the connection is plain TCP (Rule 7): the peer (or a
        middlebox) did not speak MPTCP; `stack` then names the plain stack."""
        self.syn_data_possible = False
        """Accepted on a plain (not TLS) listener whose SYNs may carry data (TCP_FASTOPEN was
        set, or the sysctl allows it without): only then is TCP_INFO read for it (Rule 4)."""
        self._early_left = 0
        """Accepted: bytes of the stream that arrived in the SYN, not yet framed (Rule 4)."""
        self.dscp_marker: DscpMarker | None = None
        """The socket's DSCP mark (Rule 5), made with the socket when `dscp` marks."""
        self._preload_rest = b""
        """The part of the Fast Open frame the SYN did not carry (preload)."""
        self._aborted = False
        """We aborted the transport: asyncio dropped what it buffered, so the end's offsets
        come from TCP_INFO (Rule 6), as after an error."""

    # ---- the Transient interface ------------------------------------------------------------

    def detach_stream(self) -> tuple[Any, bytes, bool]:
        self.stop_idle()  # the stream is the application's now: no timer of ours may cut it
        return self.transport, self.framer.buffered(), self._eof

    def submit_data(self, data: bytes) -> None:
        if self._direct and self._pump_handle is None and not self._writing_paused \
                and not self._queue.queued_bytes and not len(self._queue):
            self._admit(data)
            self._direct = False  # idle link: frame and write, no queue round trip
            if self.dscp:
                self._mark(0)  # Rule 5: what write_ready would mark for plain bytes
            self._emit(self.framer.encode(data))
            self.sent_any = True
            if self.idle_timeout:
                self.note_activity()  # the Transient's Rule 9: a message went
            if self._eof and self._progress_handle is None:
                self.check_progress()  # Rule 9: written after the peer's EOF, watch it
            return
        super().submit_data(data)

    def abort(self) -> None:
        self._aborted = True  # asyncio drops its buffer: our own offsets are wrong now
        super().abort()

    def fail(self, exc: BaseException) -> None:
        """Cut off (a protocol error, the idle timeout, a close past its linger): reset the
        connection (SO_LINGER 0), so neither side's kernel keeps buffers for it."""
        self._aborted = True
        sock = self.raw_socket
        if sock is not None and self.transport is not None and not self.closed.done():
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        super().fail(exc)

    # ---- MPTCP (Rules 7, 11) ---------------------------------------------------------------

    def fell_back(self) -> None:
        """The connection is plain TCP although MPTCP was asked for (Rule 7)."""
        if self.fallback_stack is not None:
            self.stack = self.fallback_stack
        self.mptcp_fallback = True

    def multipath_in_use(self) -> bool:
        """MPTCP is in use on this connection now, as the kernel says (TCP_IS_MPTCP, read
        now: a later fallback is noticed here too). False on plain TCP, after a fallback,
        once closed, and when the kernel cannot say."""
        if self.fallback_stack is None or self.mptcp_fallback:
            return False
        sock = self.raw_socket
        if sock is None or self.transport is None or self.closed.done():
            return False
        using = is_mptcp(sock)
        if using is False:
            self.fell_back()
        return bool(using)

    def subflows(self, interfaces: Sequence[Interface] = ()) -> tuple[Subflow, ...]:
        """The kernel's subflows of this MPTCP connection, read now (Rule 11): addresses,
        interface (looked up in `interfaces`, else by the kernel's interface index), backup
        flag, RTT and bytes of each; () on plain TCP and after a fallback."""
        if not self.multipath_in_use():
            return ()
        return mptcp.read_subflows(self.raw_socket, interfaces)

    def measure_subflows(self, interfaces: Sequence[Interface] = ()) -> tuple[Subflow, ...]:
        """`subflows()` without the per-subflow sock_diag lookups (backup None, interface
        from the local address in `interfaces`): addresses, RTT and bytes, for a Path that
        reads its figures on every access (runtime/path.py Rule 4)."""
        if not self.multipath_in_use():
            return ()
        return mptcp.read_subflows(self.raw_socket, interfaces, backup=False)

    @property
    def mptcp_token(self) -> int | None:
        """The MPTCP connection token (MPTCP_INFO), which the userspace path manager names
        the connection by; None on plain TCP, after a fallback, or when the kernel cannot
        say."""
        if not self.multipath_in_use():
            return None
        info = mptcp.read_info(self.raw_socket)
        return None if info is None else info.token

    # ---- TLS tickets ---------------------------------------------------------------------

    def before_close(self) -> None:
        if self.session_sink is not None:
            self._capture_session()

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

    # ---- asyncio Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.raw_socket = sock
        if sock is not None and not self.nodelay_set:
            # asyncio sets this only on sockets it created itself (see the module rules).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_TRANSPORT_HIGH)  # type: ignore[attr-defined]
        if self.dscp and self.dscp_marker is None and sock is not None:
            self.dscp_marker = DscpMarker(sock, current=None)  # accepted: never set yet
        if self.fallback_stack is not None and is_mptcp(sock) is False:
            self.fell_back()
        if self.syn_data_possible:
            self._early_left = syn_bytes(sock)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.remote_address = (peer[0], peer[1]) if peer else None
        self.local_address = (local[0], local[1]) if local else None
        if self._preload_rest:
            rest, self._preload_rest = self._preload_rest, b""
            self._emit(rest)  # before anything else: it continues the stream's first frame
        if self.on_connection is not None:
            self.on_connection(self)
        self._schedule_pump()
        if self._ledger and self._progress_handle is None:
            self.check_progress()  # the Fast Open copy, written before the transport existed

    def data_received(self, data: bytes) -> None:
        if self.session_sink is not None:
            self._capture_session()
        if not self._data_seen:
            self.data_arrived()
        self._direct = True
        if self._early_left:
            self._receive_early(data)
            return
        framer: Any = self.framer
        try:
            messages: Any = (framer.feed_with(data, _new_message) if self._feeds_messages
                             else framer.feed(data))
        except DeframingError as exc:  # FrameTooLargeError is a MessageTooLargeError too
            self.fail(exc)
            return
        self.deliver(messages)

    def _receive_early(self, data: bytes) -> None:
        """Rule 4: messages that end within the SYN's bytes are early, later ones are not."""
        n = min(self._early_left, len(data))
        self._early_left -= n
        try:
            self.early = True
            self.deliver(self.framer.feed(data[:n]))
            self.early = False
            if n < len(data):
                self._early_left = 0
                self.deliver(self.framer.feed(data[n:]))
        except DeframingError as exc:
            self.early = False
            self.fail(exc)

    def eof_received(self) -> bool | None:
        self.data_arrived()
        try:
            self.deliver(self.framer.eof())
        except DeframingError as exc:
            self._error = exc
        self._eof = True
        self.wake()
        # A half-close ends the peer's messages, not ours: keep the transport open so replies
        # still go out (a line client that shuts down its side after the last line expects
        # its answers). TLS cannot half-close; asyncio closes it whatever we return.
        return not self.secure

    def connection_lost(self, exc: Exception | None) -> None:
        self.terminate(exc)

    def write_ready(self, ready: list[Any]) -> None:
        if self.dscp:
            self._mark(min(0 if type(p) is bytes else p.message.niceness for p in ready))
        encode = self.framer.encode
        # Length prefix: plain messages were size-checked at submit; the prefix and the payload
        # go into the join as two items (no per-message concatenation).
        pack = LENGTH.pack if self._length_prefixed else None
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
                self.track(offset, p)
        if batch:
            self._emit(b"".join(batch) if len(batch) > 1 else batch[0])
        self.sent_any = True
        if (self._ledger or self._eof) and self._progress_handle is None:
            self.check_progress()  # with EOF seen, also to watch for a reset (Rule 9)

    def _emit(self, data: bytes) -> None:
        self.transport.write(data)
        self._written += len(data)

    def _mark(self, niceness: int) -> None:
        """Rule 5: the socket's mark follows the batch's most urgent message."""
        cp = self.dscp_for(niceness)
        marker = self.dscp_marker
        if cp is None or marker is None:
            return
        with contextlib.suppress(OSError):  # refused: the old mark stands, tried again later
            marker.set(cp)

    def preload(self, frame: bytes, in_syn: int, pending: Pending) -> None:
        """`frame` opens the stream (Fast Open, Rule 4): its first `in_syn` bytes rode in the
        SYN, the rest is written first thing when the transport exists; `pending` is tracked
        as ending with it."""
        self._written += in_syn
        self._preload_rest = frame[in_syn:]
        self.sent_any = True
        self.track(len(frame), pending)

    def end_offsets(self, exc: BaseException | None) -> tuple[int | None, int | None]:
        """Rule 6, one read: after a clean end our own offsets; after an error or our abort
        (asyncio dropped its buffer) TCP_INFO's acknowledged bytes plus what the kernel still
        holds."""
        if exc is None and not self._aborted:
            offsets = self.offsets()
            return (None, None) if offsets is None else offsets
        if self.secure:
            return None, None  # ciphertext offsets differ from ours
        info = tcpinfo.read(self.raw_socket)
        if info is None or info.bytes_acked is None:
            return None, None
        acked = max(0, info.bytes_acked - 1)  # tcpi_bytes_acked counts the SYN
        held = outq(self.raw_socket)
        return (None if held is None else acked + held), acked

    def watch_after_eof(self) -> bool:
        """Rule 9: after the peer's EOF asyncio reads the socket no more, so a reset (the
        peer's process died: its kernel answers our data with RST) is read from TCP_INFO:
        state CLOSE ends the Transient with ConnectionResetError. True while the kernel
        still holds bytes the peer has not acknowledged (keep watching)."""
        sock = self.raw_socket
        if self.secure or sock is None or self.transport is None or self.closed.done():
            return False  # TLS cannot half-close: asyncio closed it at EOF
        info = tcpinfo.read(sock)
        if info is not None and info.state == _TCP_CLOSE:
            self.fail(ConnectionResetError(errno.ECONNRESET, "the peer reset the connection "
                                           "after closing its side (it is gone)"))
            return False
        return bool(outq(sock))

    def write_control(self, frame: bytes) -> None:
        self._emit(frame)
        self.sent_any = True

    def path_stats(self) -> PathStats:
        """TCP_INFO and IP_MTU of the socket, read now (system/tcpinfo.py). On an MPTCP
        socket the kernel answers TCP_INFO with its first subflow's; when it cannot (that
        subflow is gone), the first subflow the kernel lists now speaks for the connection
        (each subflow's own figures are in `subflows()` and the carrier's paths)."""
        stats = tcpinfo.path_stats(self.raw_socket)
        if stats.rtt_ms is None and self.multipath_in_use():
            flows = self.measure_subflows()  # the figures only: no backup-flag lookups
            if flows:
                return flows[0].stats
        return stats

    def offsets(self) -> tuple[int, int | None] | None:
        transport = self.transport
        if transport is None:
            return None
        buffered = transport.get_write_buffer_size()
        accepted = self._written - buffered
        if not self._ledger.wants_acks:
            return accepted, None
        held = outq(self.raw_socket)
        if held is None:
            return accepted, None
        if self.secure:
            # Ciphertext offsets differ from ours: only "everything handed over is acked" is
            # certain, when neither asyncio nor the kernel hold any byte of ours.
            return accepted, (accepted if held == 0 and buffered == 0 else None)
        return accepted, accepted - held

    def send_progress(self) -> tuple[int, int | None] | None:
        # The Transient's Rule 9: the kernel may hold a whole large message at once (its
        # send buffer grows to megabytes), so what moves while a slow reader reads is the
        # kernel's queue (unsent + unacknowledged, in ciphertext bytes on TLS).
        transport = self.transport
        if transport is None:
            return None
        return self._written - transport.get_write_buffer_size(), outq(self.raw_socket)



@dataclass(frozen=True, slots=True)
class TlsTicket:
    """A TLS session and the SSLContext that made it: it resumes only there (Rule 3)."""

    context: ssl.SSLContext
    session: ssl.SSLSession


def _keep_ticket(association: Any, stack: str, context: ssl.SSLContext,
                 session: ssl.SSLSession) -> None:
    association.add_ticket(stack, TlsTicket(context, session))


def _take_ticket(association: Any, stack: str,
                 context: ssl.SSLContext) -> ssl.SSLSession | None:
    """The newest ticket made by `context` (Rule 3); tickets of other contexts stay."""
    def mine(t: Any) -> bool:
        return isinstance(t, TlsTicket) and t.context is context

    ticket = association.take_ticket(stack, accept=mine)  # only a ticket mine() accepts
    return None if ticket is None else ticket.session


class ResumingContext:
    """Duck-typed SSLContext that offers one session: asyncio's create_connection has no
    `session=` argument, but it only ever calls `wrap_bio()` on the context it is given."""

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> None:
        self._context = context
        self._session = session

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None) -> ssl.SSLObject:
        return self._context.wrap_bio(incoming, outgoing, server_side=server_side,
                                      server_hostname=server_hostname, session=self._session)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


@dataclass(slots=True)
class _Server:
    """A listening stream socket and its Acceptor (stacks/accept.py)."""

    stack: str
    port: int
    acceptor: Acceptor

    @property
    def handshakes(self) -> int:
        """Accepted connections whose TLS handshake is still in progress."""
        return self.acceptor.handshakes

    async def aclose(self) -> None:
        """Close the listening socket and abort the handshakes in progress (connections
        already handed over stay with their carriers)."""
        await self.acceptor.aclose()


def _bind(sock: socket.socket, spec: AttemptSpec) -> DscpMarker | None:
    """Bind a client socket to its candidate's interface, address and the Local's port, and
    mark its SYN with niceness 0's code point; the marker, when there is one."""
    c = spec.candidate
    if not _is_loopback(c.local_address):  # loopback routes only via lo anyway
        bind_to_device(sock, c.interface, remote=c.remote_address, local=c.local_address)
    if spec.local_port:
        # Racing attempts from one local port to different remotes all bind it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        with contextlib.suppress(OSError):  # port chosen at connect(), by 4-tuple
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((c.local_address, spec.local_port))
    if not spec.settings.dscp:
        return None
    marker = DscpMarker(sock, current=None)
    marker.set(spec.settings.dscp[0])  # the SYN: niceness 0's mark
    return marker


class BareSocket:
    """A connected socket as a racing attempt's result (Rule 12): what racing and the
    Association's history read of it (`stack`, `rtt_ms`, `abort`), and the socket itself,
    which the winner's caller takes over."""

    __slots__ = ("rtt_ms", "sock", "stack")

    def __init__(self, sock: socket.socket, stack: str, rtt_ms: float | None) -> None:
        self.sock = sock
        self.stack = stack
        self.rtt_ms = rtt_ms

    def abort(self) -> None:
        self.sock.close()

    def __repr__(self) -> str:
        return f"<BareSocket {self.stack} fd={self.sock.fileno()}>"


class StreamStack:
    """A byte-stream stack: `secure` adds TLS, `mptcp` opens IPPROTO_MPTCP sockets."""

    ip_protocol = "tcp"

    def __init__(self, name: str, *, secure: bool, mptcp: bool) -> None:
        self.name = name
        self.secure = secure
        self.mptcp = mptcp

    def _socket(self, address: str, *, fallback: bool = False) -> socket.socket:
        proto = IPPROTO_MPTCP if self.mptcp else 0
        try:
            sock = socket.socket(family_of(address), socket.SOCK_STREAM, proto)
        except OSError as exc:
            if not self.mptcp:
                raise
            if not fallback:  # Rule 10: fail the attempt now, as `unsupported`
                if exc.errno not in _REFUSED:
                    raise
                raise MptcpRefusedError(
                    exc.errno, f"this kernel or network namespace refuses MPTCP sockets "
                    f"({os.strerror(exc.errno)}; net.mptcp.enabled is "
                    f"{_mptcp_enabled_sysctl()})") from exc
            # MPTCP disabled in this kernel or namespace: a listener still serves plain TCP.
            sock = socket.socket(family_of(address), socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _client_context(self, spec: AttemptSpec) -> ssl.SSLContext:
        # Keyed on what client_tls_context reads, not the whole Settings: the attempt delay
        # follows RTT history (it changes between connections) and must not cost the
        # association its TLS sessions (Rule 3).
        s = spec.settings
        defer = defers_pkix(spec.tlsa, s)  # the set decides alone: require only (tls.py Rule 6)
        anchors = dane_anchors(spec.tlsa, s, spec.pinned)
        key = (s.min_tls, s.verify_peer, s.alpn, tuple(c.fingerprint for c in spec.pinned),
               tuple(c.fingerprint for c in spec.identity if c.key_pem), defer, anchors)
        contexts = spec.association.tls_contexts
        ctx = contexts.get(key)
        if ctx is None:
            ctx = contexts[key] = client_tls_context(spec.settings, spec.pinned, spec.identity,
                                                     defer_pkix=defer, anchors=anchors)
        return ctx

    async def connect(self, spec: AttemptSpec) -> StreamTransient:
        loop = asyncio.get_running_loop()
        c = spec.candidate
        if self.secure:  # DANE required and no TLSA set that could decide: nothing sent
            refuse_before_dane(spec.tlsa, spec.settings, spec.host)
        sock = self._socket(c.remote_address)
        transport: Any = None
        try:
            marker = _bind(sock, spec)
            started = loop.time()
            addr = (c.remote_address, c.remote_port)
            framer = spec.framer()
            early = spec.early
            copies = (early.take(limit=1)
                      if early is not None and not self.secure and not self.mptcp
                      and spec.settings.zero_rtt and fastopen_enabled() else [])
            frame = b""
            in_syn = 0
            if copies:
                copy, relays = copies[0]
                frame = framer.encode(copy.data)
                in_syn = await _fastopen_connect(sock, addr, frame)
            else:
                await _connect(sock, addr)
            connected = loop.time()
            transient = StreamTransient(stack=self.name, framer=framer,
                                        max_size=spec.settings.max_size, interface=c.interface,
                                        secure=self.secure)
            transient.nodelay_set = True  # _socket() did it; connection_made need not
            if self.mptcp:
                transient.fallback_stack = FALLBACK[self.name]  # Rule 7, read when made
            transient.dscp = spec.settings.dscp
            transient.dscp_marker = marker  # set for the SYN above
            if copies:
                copy.state = "sent"
                transient.preload(frame, in_syn, Pending(copy, None, *relays))
                transient.early_attempt = early
                transient.early_sent = True
                transient.early_in_syn = bool(in_syn) and syn_data_acked(sock)
            tls: Any = None
            if self.secure:
                ctx = self._client_context(spec)
                ticket = (_take_ticket(spec.association, self.name, ctx)
                          if spec.settings.session_cache else None)
                tls = ResumingContext(ctx, ticket)
                transient.used_session = ticket
            if self.secure:  # 64 KiB read buffer, heap trims (stacks/tls.py Rules 4, 5)
                anchored = bool(dane_anchors(spec.tlsa, spec.settings, spec.pinned))
                try:
                    transport, _ = await open_tls(
                        lambda: transient, sock, tls, server_side=False,
                        server_hostname=spec.host, handshake_timeout=spec.settings.conn_timeout)
                except ssl.SSLCertVerificationError as exc:
                    if anchored:  # verified against the DANE-TA anchors (tls.py Rule 6)
                        raise dane_refusal(exc, spec.tlsa) from exc
                    raise
            else:
                transport, _ = await loop.create_connection(lambda: transient, sock=sock)
            if self.secure:
                ssl_object = transport.get_extra_info("ssl_object")
                verify_pins(ssl_object, spec.pinned)
                transient.dane = verify_dane(ssl_object, spec.tlsa, spec.settings, spec.host,
                                             anchored=anchored)
                transient.session_reused = bool(ssl_object and ssl_object.session_reused)
                if spec.settings.session_cache:
                    transient.session_sink = functools.partial(
                        _keep_ticket, spec.association, self.name, ctx)
            transient.rtt_ms = (connected - started) * 1000.0
            transient.established_ms = (loop.time() - started) * 1000.0
            return transient
        except BaseException:
            if transport is not None:
                transport.abort()
            sock.close()
            raise

    async def connect_socket(self, spec: AttemptSpec) -> BareSocket:
        """The attempt of `tp.open_socket` (Rule 12): the same socket, bound the same way,
        connected and handed over bare; nothing else is done on it."""
        if self.secure:
            raise OSError(errno.EPROTONOSUPPORT,
                          f"{self.name} is not a bare socket: TLS is left to the caller")
        loop = asyncio.get_running_loop()
        c = spec.candidate
        sock = self._socket(c.remote_address)
        try:
            _bind(sock, spec)
            started = loop.time()
            await _connect(sock, (c.remote_address, c.remote_port))
            rtt_ms = (loop.time() - started) * 1000.0
            stack = self.name
            if self.mptcp and is_mptcp(sock) is False:  # fell back (Rule 7)
                stack = FALLBACK[self.name]
            return BareSocket(sock, stack, rtt_ms)
        except BaseException:
            sock.close()
            raise

    async def listen(self, spec: ListenSpec) -> _Server:
        sock = self._socket(spec.address, fallback=True)
        try:
            bind_server(sock, spec.address, spec.port, spec.interface)
            syn_data = False
            if spec.settings.zero_rtt and not self.secure:
                # Accept data in SYNs (TCP Fast Open) where the namespace's sysctl allows.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 64)
                    syn_data = True
            if not syn_data and not self.secure:
                syn_data = fastopen_without_sockopt()
            sock.listen(backlog_for(spec.settings.backlog))
            tls = (server_tls_context(spec.settings, spec.identity, spec.trusted)
                   if self.secure else None)
            fallback = FALLBACK.get(self.name) if self.mptcp else None

            def factory() -> StreamTransient:
                t = StreamTransient(stack=self.name, framer=spec.framer(),
                                    max_size=spec.settings.max_size, interface=spec.interface,
                                    secure=self.secure)
                t.on_connection = spec.on_transient
                t.fallback_stack = fallback
                t.syn_data_possible = syn_data
                t.dscp = spec.settings.dscp
                return t

            acceptor = Acceptor(sock, factory, tls=tls,
                                handshake_timeout=spec.settings.handshake_timeout,
                                max_handshakes=spec.settings.max_handshakes)
            acceptor.start()
        except BaseException:
            sock.close()
            raise
        return _Server(self.name, sock.getsockname()[1], acceptor)
