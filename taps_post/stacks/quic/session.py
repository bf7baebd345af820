"""One QUIC connection (aioquic's own protocol pump) and the stream Transients it carries.

Rule 1: aioquic's sans-I/O `QuicConnection` does the protocol and aioquic's
`QuicConnectionProtocol` pumps it (`transmit()`, its timer, `datagram_received`); `QuicSession`
only routes its events to per-stream Transients and adds what must follow a transmit. We do
not reimplement QUIC or TLS.
Rule 2: the session is the one place datagrams leave (`transmit`, `transmit_soon`); streams
write into the connection and ask. It implements `stream.StreamHost` and calls only public
methods of its streams (`on_data`, `deliver`, `end_of_messages`, `terminate`, `fail`,
`check_progress`, `tracking_pending`, `aclose`).
Rule 3: a close aioquic reports (ConnectionTerminated) becomes a `QuicClosedError` carrying
the QUIC error code and reason phrase: the handshake waiter raises it, and streams fail with it
unless the close was a clean NO_ERROR. An ICMP error during the handshake fails the waiter
with the OSError itself (racing classifies both).
Rule 4: no private aioquic name is used here: where aioquic has no public route, the access
is a function of `compat`, tested against real aioquic connections.
Rule 5: a client session with a `Trust` checks it when aioquic reports the handshake
completed (`config.Trust.check`), before aioquic transmits again: on a pin mismatch the
connection closes (CRYPTO_ERROR plus bad_certificate) with nothing of the application sent,
the handshake waiter raises the PinMismatchError, and no later event is routed. A listener's
session under clientAuth checks the client's certificate the same way (`config.ClientAuth`):
a refused client's connection closes (certificate_required or bad_certificate) before any of
its streams reaches the listener.
Rule 6: DATAGRAM frames name their stream (wire, Rule 2) and reach only its carrier: one for
a stream the peer may still open waits until it opens; one for a stream closed, refused or
never ours is dropped and counted (`datagrams_dropped`). A frame's `on_sent` fires once aioquic
wrote it into a packet (`compat.pending_datagram_frames`), its `on_send_error` when the
connection ends first.
Rule 7: DSCP (the policy's message.dscp, off by default: then no socket option is touched):
before each transmit the socket's IP_TOS / IPV6_TCLASS is set, when it differs, to the code
point of the most urgent niceness written since the previous transmit (`base.DscpMarker`): a
setsockopt only on a change, which asyncio's datagram transport (sendto, no ancillary data)
leaves as the one way in; packets with no new message (ACKs, retransmissions) keep the
socket's last mark.
Rule 8 (memory, docs/quic.md "Memory limits"): the session decides the flow-control credit
aioquic grants (`compat.govern_credit`): a stream's limit is extended to what aioquic
delivered in order plus the window (carrier.recvBudget) once less than half of the window
is left, and not at all while its carrier paused reading (the Transient's receive budget,
`_StreamView.pause_reading`); the connection's limit is what the carriers consumed
(arrived on all streams minus what waits unread in their inboxes) plus two windows, so a
peer that sends without end pins at most a window in aioquic and the carrier's budget plus
a window in the carrier, and one connection with many unread streams pins about two windows
in all plus each stream's partial message, not a budget per stream (a message still being
assembled does not count: one message up to maxSize always completes). A unidirectional
stream (one expiring message) is stopped (STOP_SENDING, `TOO_LARGE`) once it holds more
than message.maxSize plus its header; once all of them together hold more than the window
(at least one such message), only the oldest one in progress is given credit, so none is
stopped for its siblings and the sender never hears of a loss it did not cause; DATAGRAM
frames for a carrier that paused reading, and frames held for a stream not open yet beyond
`_HELD_DATAGRAMS`, are dropped and counted. On the send side, bytes written into aioquic and
not yet sent count against the sender's budget (`QuicStreamTransient.backlog_bytes`); the
session releases blocked senders after each transmit (`notify_drained`).
Rule 10 (STOP_SENDING from the peer): aioquic resets our half of the stream; the session
routes the event to the stream it names (`stop_sending_side`) or to the carrier whose
expiring message rode it (`side_stream_stopped`), so those messages end with on_send_error,
never with on_acked (a stream aioquic discarded after its reset was acknowledged is not taken
for one whose data was).
Rule 9 (close): a client's connection that began closing releases its UDP socket within
carrier.linger (`linger`), even while aioquic's closing period (3 PTO, seconds under load)
runs on: the carrier is closed, so its socket must go too.
Rule 11 (connection migration, RFC 9000 section 9; docs/quic.md "Connection migration"): only
a client migrates (`migrate`), only once the handshake is confirmed, and never to a server
that sent `disable_active_migration` (aioquic ignores it: `compat`): a new UDP socket
bound to the new local address (pinned to its interface like connect's, `bind_to_device`)
and connected to the same remote becomes the one `_Outbound` sends through (aioquic keeps
writing to that object, so no aioquic internals are touched), the old socket is closed once
the server acknowledged the PING from the new path (what it sent before it moved still
arrives there), at most `_DRAIN` later, under a protocol of its own (its close must not end
the connection), the connection switches to a
fresh connection id of the peer (`change_connection_id`, so the two paths cannot be linked)
and sends a PING, a non-probing packet on which the server moves to the new path and starts
validating it (PATH_CHALLENGE / PATH_RESPONSE: aioquic's server does this itself). aioquic's
client keys its paths by the remote address only, so its streams, offsets, congestion state
and keys carry on untouched: no handshake. Every stream of the connection is told its new
addresses (`path_moved`); a server's streams are told when aioquic moved its active path to
a new peer address (`_peer_moved`, checked for every datagram from an address other than
the streams' remote one: aioquic moves on the first non-probing packet from there, which need
not be the first datagram from there).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ...core.messages import Pending
from ...core.path import PathStats
from ...core.settings import dscp_for
from ..base import DscpMarker, bind_to_device, family_of
from .compat import (
    count_lost_packets,
    govern_credit,
    handshake_confirmed,
    peer_certificate,
    peer_chain,
    peer_disables_migration,
    peer_max_datagram_frame_size,
    pending_datagram_frames,
    recovery_state,
    refuse_early_data,
    request_client_certificate,
    stop_timer,
    stream_discarded,
    validate_paths,
)
from .config import ClientAuth, ClientAuthError, Origin, Trust
from .stream import QuicStreamTransient
from .wire import (
    REFUSED_STREAM,
    TOO_LARGE,
    UNI_OVERHEAD,
    is_client_initiated,
    is_unidirectional,
    split_datagram,
    split_uni,
)

__all__ = ["QuicClosedError", "QuicSession"]

_IDLE_CLOSE = 0.5
"""Seconds a connection lingers after its last carrier closed (a fork may follow)."""
_HELD_DATAGRAMS = 64
"""DATAGRAM frames held per connection for streams the peer may still open (Rule 6); more
are dropped (Rule 8)."""
_CONFIRM_WAIT = 2.0
"""Seconds a migration waits for the handshake's confirmation (HANDSHAKE_DONE) before it
gives up (RFC 9000 section 9: no migration before it)."""
_DRAIN = 1.0
"""Seconds at most a migrated client's old socket still receives: until the server
acknowledged the PING from the new path (it has moved), or this long (Rule 11)."""
_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42
"""How a client closes on a pin mismatch: the TLS bad_certificate alert (RFC 9001 section
4.8), as aioquic's own chain check does."""


class QuicClosedError(ConnectionError):
    """The QUIC connection closed, as aioquic reported it (its ConnectionTerminated event).

    `error_code` is the QUIC transport error code (RFC 9000 section 20.1; CRYPTO_ERROR 0x100
    plus a TLS alert when the handshake failed, RFC 9001 section 4.8) or the application's,
    `reason_phrase` the text that came with it. taps_post.runtime.racing.classify() reads
    both attributes by name to tell a certificate rejection from a refusal or a reset."""

    def __init__(self, error_code: int, reason_phrase: str = "",
                 frame_type: int | None = None) -> None:
        # int(): aioquic reports its own codes as QuicErrorCode members (an IntEnum).
        code = int(error_code)
        super().__init__(f"QUIC connection closed: {reason_phrase or 'closed'} "
                         f"(error {code:#x})")
        self.error_code = code
        self.reason_phrase = reason_phrase
        self.frame_type = frame_type

    @classmethod
    def from_event(cls, event: events.ConnectionTerminated) -> QuicClosedError:
        return cls(event.error_code, event.reason_phrase or "", event.frame_type)


class _Outbound(asyncio.DatagramTransport):
    """The transport aioquic's own `transmit()` writes a session's datagrams to.

    A client's socket is connected (so the kernel reports ICMP errors to it): it is given no
    address, whatever aioquic passes. Once the socket is closing, datagrams are dropped instead
    of reaching a closed socket, so aioquic's timer may run a closed connection's closing
    period out on its own (aioquic then reports ConnectionTerminated and forgets it)."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        super().__init__()
        self._inner = cast(asyncio.DatagramTransport, transport)
        self._connected = transport.get_extra_info("peername") is not None
        self.silent = False
        """Drop every datagram: a listener's connection whose handshake timed out is let
        go without a reply to a source address nobody validated (docs/quic.md)."""

    def replace(self, transport: asyncio.BaseTransport) -> asyncio.DatagramTransport:
        """Send through `transport` from now on (a client's migration, Rule 11); returns the
        transport it replaced. aioquic keeps writing to this object, never to a socket."""
        old, self._inner = self._inner, cast(asyncio.DatagramTransport, transport)
        self._connected = transport.get_extra_info("peername") is not None
        return old

    def sendto(self, data: Any, addr: Any = None) -> None:
        inner = self._inner
        if self.silent or inner.is_closing():
            return
        if self._connected:
            inner.sendto(data)
        else:
            inner.sendto(data, addr)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)


class _Draining(asyncio.DatagramProtocol):
    """A migrated client's old socket, for a moment (Rule 11): what the server sent there
    before it moved to the new path still arrives and goes to the session; its errors and
    its close are nobody's business."""

    def __init__(self, session: QuicSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.session.is_open:
            self.session.datagram_received(data, addr)


class _Receiver(asyncio.DatagramProtocol):
    """The protocol of a migrated client's socket (Rule 11): everything goes to the session,
    whose own protocol object belonged to its first socket."""

    def __init__(self, session: QuicSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.session.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)


def migration_socket(local_address: str, interface: str | None,
                     remote: tuple[str, int]) -> socket.socket:
    """A UDP socket for a migrating client (Rule 11), as `base.connected_datagram_socket`
    makes one for a candidate: non-blocking, pinned to `interface`, bound to `local_address`
    (any port) and connected to `remote`. Raises OSError when any step fails (the address is
    not ours, the interface is gone)."""
    sock = socket.socket(family_of(remote[0]), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        bind_to_device(sock, interface, remote=remote[0], local=local_address)
        sock.bind((local_address, 0))
        sock.connect(remote)
    except BaseException:
        sock.close()
        raise
    return sock


class QuicSession(QuicConnectionProtocol):
    """One QUIC connection; bidirectional streams map to QuicStreamTransients.

    aioquic's own protocol pumps the connection (`transmit()`, its timer, `datagram_received`);
    this subclass routes events and adds what must follow each transmit: callbacks queued
    with `after_transmit` and the on_sent / on_acked progress check."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *,
                 framer: Callable[[], Any] | None = None, max_size: int = 16 << 20,
                 interface: str | None = None,
                 on_stream: Callable[[QuicStreamTransient], None] | None = None,
                 per_msg_reliability: bool = False, allow_early: bool = True,
                 on_terminated: Callable[[QuicSession], None] | None = None,
                 trust: Trust | None = None, offered: Origin | None = None,
                 dscp: tuple[int, ...] = (), marker: DscpMarker | None = None,
                 client_auth: ClientAuth | None = None, recv_budget: int = 4 << 20,
                 on_handshake: Callable[[QuicSession], None] | None = None,
                 linger: float = 5.0) -> None:
        super().__init__(quic, stream_handler)
        self.linger = linger
        """carrier.linger: a client's socket is released at most this long after its
        connection began closing, whatever aioquic's closing period (3 PTO) says."""
        self._release: asyncio.TimerHandle | None = None
        self._validated = False
        self.first_received = self.last_received = 0.0
        """Loop times of the first and the last datagram from the peer (a listener's
        handshake timeout gives a validated peer that kept talking one more period)."""
        self._unmarked_validation = False
        """The peer proved its address but aioquic does not know it yet (validate_paths)."""
        count_lost_packets(quic)
        self.window = max(int(recv_budget), 16 << 10)
        """Flow-control credit beyond what was delivered, per stream (Rule 8)."""
        govern_credit(quic, self._stream_credit, self._connection_credit)
        self.on_handshake = on_handshake
        """Told once the handshake completed and passed its checks (a listener counts the
        handshakes in progress)."""
        if client_auth is not None:
            request_client_certificate(quic)
        self.connection = quic
        """The sans-I/O aioquic connection this protocol pumps (we made it, so we keep it)."""
        self.loop = asyncio.get_running_loop()
        self.framer = framer
        self.max_size = max_size
        self.interface = interface
        self.on_stream = on_stream
        """Told of each stream the peer opens that no carrier accepts (a listener's)."""
        self.on_terminated = on_terminated
        """Told once aioquic reports the connection terminated (a listener forgets it)."""
        self.per_msg_reliability = per_msg_reliability
        self.streams: dict[int, QuicStreamTransient] = {}
        self.primary: QuicStreamTransient | None = None
        self.handshake_done = False
        self.early_data_accepted = False
        self.session_resumed = False
        self.is_open = True
        self.local_address: tuple[str, int] | None = None
        self.remote_address: tuple[str, int] | None = None
        self._tracked: dict[QuicStreamTransient, None] = {}
        """Streams with on_sent/on_acked bookkeeping pending, in the order they began to wait
        (a dict as an ordered set): transmit() checks these, not every stream ever opened."""
        self._uni_in: dict[int, bytearray] = {}
        self._uni_bytes = 0
        """Bytes held in `_uni_in` over all unidirectional streams (Rule 8)."""
        self._stopped: set[int] = set()
        """Unidirectional streams stopped for their size: their later bytes are dropped."""
        self.uni_stopped = 0
        """Unidirectional streams stopped because they grew over their bound (Rule 8)."""
        self._blocked: dict[QuicStreamTransient, int] = {}
        """Streams whose senders wait for aioquic's send buffer to drain, with the backlog
        last seen (Rule 8)."""
        self._idle: asyncio.TimerHandle | None = None
        self.credit_short = False
        """The connection's credit (MAX_DATA) is nearly used up and waits for carriers to
        consume (Rule 8): a message taken calls `credit_changed`."""
        self._open_streams: set[int] = set()
        self._next_bidi = 0
        self._held_datagrams: dict[int, list[bytes]] = {}
        """DATAGRAM frames for a stream the peer may still open, by stream id (Rule 6)."""
        self.datagrams_dropped = 0
        """DATAGRAM frames received for no carrier: a closed, refused or unknown stream, or
        without a stream id prefix (Rule 6)."""
        self._datagrams_out: collections.deque[tuple[QuicStreamTransient, Pending]] = \
            collections.deque()
        """DATAGRAM frames handed to aioquic, oldest first, until a packet carries them."""
        self._refused: set[int] = set()
        """Streams the peer opened after the accept callback said no (reset, stopped)."""
        self._ended: set[int] = set()
        """Streams closed, refused or stopped that aioquic may still know: once it discarded
        one, the session forgets it too (`_forget_ended`), so its maps do not only grow."""
        self.refusing_siblings = False
        """The accept callback returned False: streams the peer opens are refused."""
        self._acceptor: QuicStreamTransient | None = None
        """The stream whose carrier called accept(): once it closed, the peer's new streams
        go to the listener again (`on_stream`), not to a carrier that is gone."""
        self._dscp = dscp
        self._marker = marker
        self._urgent: int | None = None
        """The most urgent niceness written since the previous transmit (Rule 7)."""
        self.client_auth = client_auth
        """A listener's clientAuth check (config, Rule 6); None: none asked."""
        self.client_verified = client_auth is None
        """The client passed the clientAuth check (or none was asked)."""
        self.client_fingerprint: str | None = None
        """The accepted client certificate's fingerprint (None: none presented)."""
        self.owns_transport = False
        """A client session owns its UDP socket; a server's sessions share the listener's."""
        self.accept_callback: Callable[[QuicStreamTransient], Any] | None = None
        """Where streams the peer opens go once a carrier of this connection called accept()."""
        self._out: _Outbound | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._handshake: asyncio.Future[None] | None = None
        """Exists while connect() waits for the handshake (see wait_connected)."""
        self.termination: QuicClosedError | None = None
        """Why aioquic closed the connection, once it did."""
        self._refuse_early = not allow_early
        """The server's policy avoids or prohibits zeroRttMsg: the tickets it issues must not
        allow early data, so clients resume with a 1-RTT handshake."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Graceful stream closes started by a synchronous transport.close()."""
        self.trust = trust
        """What the server must prove (a client's); None for a listener's sessions."""
        self.offered_origin = offered
        """The Origin of the session ticket this client offered, if it offered one."""
        self.origin: Origin | None = None
        """What the completed handshake proved (Rule 5): the tickets it brings carry it."""
        self.refusal: BaseException | None = None
        """Why this client refused its server after the handshake (a pin mismatch)."""
        self.handshakes = 0
        """HandshakeCompleted events seen: 1 for the connection's life (a migration does
        not handshake again; tests count it)."""
        self.migrations = 0
        """Times this client moved to a new local address (Rule 11); a server counts the
        times aioquic moved it to a new peer address."""
        self.migrated_at: float | None = None
        """Loop time of the last migration."""
        self.migration_acked_ms: float | None = None
        """Milliseconds from the last migration until the peer acknowledged the PING sent
        from the new path (None: not yet)."""
        self._migration_ping: int | None = None
        self._confirm_waiter: asyncio.Future[None] | None = None
        """A migration waits for the handshake's confirmation (Rule 11)."""
        self._retired: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}
        """Old sockets of a migration still receiving, each with its closing timer."""
        self._migrating: asyncio.Lock | None = None
        """Held while a migration makes its socket (made on first use, Rule 11)."""

    @property
    def datagrams_negotiated(self) -> bool:
        return self.peer_max_datagram_frame is not None

    @property
    def peer_max_datagram_frame(self) -> int | None:
        return peer_max_datagram_frame_size(self.connection)

    @property
    def marking(self) -> bool:
        return bool(self._dscp)

    def mark(self, niceness: int) -> None:
        if self._urgent is None or niceness < self._urgent:
            self._urgent = niceness

    def accept_streams(self, callback: Callable[[QuicStreamTransient], Any],
                       owner: QuicStreamTransient | None = None) -> None:
        self.accept_callback = callback
        self.refusing_siblings = False
        self._acceptor = owner

    def path_stats(self) -> PathStats:
        """aioquic's recovery state now: smoothed RTT and its variation, lost / sent packets,
        congestion window / smoothed RTT as the rate, the configured maximum UDP payload as
        the MTU (aioquic does no path MTU discovery)."""
        r = recovery_state(self.connection)
        srtt = r.smoothed_rtt
        loss = (r.packets_lost / r.packets_sent if r.packets_lost is not None
                and r.packets_sent else None)
        return PathStats(
            rtt_ms=None if srtt is None else srtt * 1000.0,
            rttvar_ms=None if r.rtt_variance is None else r.rtt_variance * 1000.0,
            loss=loss,
            rate_bps=None if not srtt else r.congestion_window * 8 / srtt,
            mtu=self.connection.configuration.max_datagram_size,
            sent=r.packets_sent)

    def progress_pending(self, stream: QuicStreamTransient) -> None:
        self._tracked[stream] = None

    def backlog_pending(self, stream: QuicStreamTransient) -> None:
        if stream not in self._blocked:
            self._blocked[stream] = stream.backlog_bytes()

    # ---- flow-control credit (Rule 8) ------------------------------------------------------

    @property
    def _uni_bound(self) -> int:
        """Bytes all unidirectional streams may hold before credit goes to the oldest only."""
        return max(self.window, self.max_size + UNI_OVERHEAD)

    def _stream_credit(self, stream_id: int, delivered: int, current: int) -> int:
        if current - delivered > self.window // 2:
            return current  # more than half a window left: no frame for so little
        if stream_id in self._stopped or stream_id in self._refused:
            return current
        if is_unidirectional(stream_id):
            # Over the bound for all expiring messages together, credit goes only to the
            # oldest one in progress: it completes (or is stopped for its own size) and
            # frees its bytes, the others wait; nothing is stopped for its siblings (Rule 8).
            if self._uni_bytes > self._uni_bound and self._uni_in and \
                    stream_id != min(self._uni_in):
                return current
            return delivered + self.window
        t = self.streams.get(stream_id)
        if t is not None and (t.credit_withheld or t.recv_stopped):
            return current  # withheld until the carrier reads (resume_reading)
        return delivered + self.window

    def _connection_credit(self, used: int, current: int) -> int:
        """MAX_DATA follows consumption (Rule 8): what arrived on all streams minus what
        still waits unread in carriers' inboxes, plus two windows; a message still being
        assembled (in a framer, or an expiring message on its own stream, bounded apart)
        does not count as unread (one message up to maxSize must complete however large).
        When that leaves little credit, the next message a carrier takes sends what it
        frees (`credit_short`)."""
        window = 2 * self.window
        if current - used > window // 2:
            self.credit_short = False
            return current
        held = 0
        for sid in self._open_streams:
            t = self.streams[sid]
            held += t.buffered_bytes - getattr(t.framer, "pending_size", 0)
        wanted = max(current, used - held + window)
        self.credit_short = wanted - used <= window // 2
        return wanted

    @property
    def address_validated(self) -> bool:
        """A listener's connection whose peer proved its address by a Retry token (a
        Handshake packet proves it too: `compat.path_validated`). Set, it lifts aioquic's
        anti-amplification limit before the next transmit (RFC 9000 section 8.1.2)."""
        return self._validated

    @address_validated.setter
    def address_validated(self, value: bool) -> None:
        self._validated = value
        self._unmarked_validation = value

    def credit_changed(self) -> None:
        """A carrier resumed reading (or took a message while the connection's credit was
        short): the credit it frees goes out with the next packet."""
        self.credit_short = False
        self.transmit_soon()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._dscp and self._marker is None:
            self._marker = DscpMarker(transport.get_extra_info("socket"))
        self._out = _Outbound(transport)
        super().connection_made(self._out)
        local = transport.get_extra_info("sockname")
        self.local_address = (local[0], local[1]) if local else None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.last_received = self.loop.time()
        if not self.first_received:
            self.first_received = self.last_received
        if self.remote_address is None and addr:
            # A listener's connection: its peer is whoever sent the first datagram (the
            # streams it carries take the address when they are attached).
            self.remote_address = (addr[0], addr[1])
        super().datagram_received(data, addr)
        waiter = self._confirm_waiter
        if waiter is not None and not waiter.done() and (
                handshake_confirmed(self.connection) or not self.is_open):
            waiter.set_result(None)
        remote = self.remote_address
        if (not self.owns_transport and addr and remote is not None
                and (addr[0] != remote[0] or addr[1] != remote[1])):
            # Whenever a datagram comes from elsewhere, not only when the source changes:
            # aioquic promotes a path on a later non-probing packet (a peer probing first,
            # packets reordered, a first datagram it drops), so each one is checked.
            self._peer_moved()
        # The first datagram a server receives creates the TLS context; the ticket is only
        # issued once the client's Finished arrives, always in a later datagram.
        if self._refuse_early and refuse_early_data(self.connection):
            self._refuse_early = False

    # ---- connection migration (Rule 11) -----------------------------------------------------

    async def migrate(self, local_address: str, interface: str | None) -> bool:
        """Move this client's connection to `local_address` on `interface` (Rule 11): True
        once it sends from there (the server validates the new path as the packets go),
        False where it cannot (a server's connection, not confirmed yet or closed, an
        address of the remote's other family, a socket that cannot be bound or connected).
        Already on that address and interface: True, nothing done (the carriers of one
        connection may each ask)."""
        remote = self.remote_address
        out = self._out
        if (not self.owns_transport or not self.is_open or remote is None or out is None
                or out.is_closing() or not self.handshake_done):
            return False
        if not handshake_confirmed(self.connection) and not await self._confirmation():
            return False
        if peer_disables_migration(self.connection):
            return False  # RFC 9000 section 9: not from another address, not even a probe
        try:
            if family_of(local_address) != family_of(remote[0]):
                return False
        except ValueError:
            return False
        lock = self._migrating
        if lock is None:
            lock = self._migrating = asyncio.Lock()
        async with lock:  # carriers of one connection asking at once: one move, in turn
            return await self._move(local_address, interface, remote, out)

    async def _move(self, local_address: str, interface: str | None,
                    remote: tuple[str, int], out: _Outbound) -> bool:
        current = self.local_address
        if current is not None and current[0] == local_address and interface == self.interface:
            return True
        try:
            sock = migration_socket(local_address, interface, remote)
        except (OSError, ValueError):
            return False
        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                functools.partial(_Receiver, self), sock=sock)
        except OSError:
            sock.close()
            return False
        except BaseException:
            sock.close()
            raise
        if not self.is_open or out.is_closing():  # it ended while the endpoint was made
            transport.close()
            return False
        old = out.replace(transport)
        self._retire_all()  # a previous move's old socket
        # The old socket listens a moment longer (what the server sent before it moved),
        # under a protocol whose close does not end the connection.
        old.set_protocol(_Draining(self))
        self._retired[old] = self.loop.call_later(_DRAIN, self._retire, old)
        if self._dscp:
            previous = self._marker
            self._marker = DscpMarker(transport.get_extra_info("socket"))
            if previous is not None and previous.current:
                with contextlib.suppress(OSError):
                    self._marker.set(previous.current)
        local = transport.get_extra_info("sockname")
        self.local_address = (local[0], local[1])
        self.interface = interface
        quic = self.connection
        quic.change_connection_id()  # no spare id from the peer: the current one stays
        self.migrations += 1
        self.migrated_at = self.loop.time()
        self.migration_acked_ms = None
        self._migration_ping = self.migrations
        quic.send_ping(self.migrations)  # non-probing: the server moves to this path now
        self.transmit()
        for t in list(self.streams.values()):
            t.path_moved(self.local_address, remote, interface)
        return True

    async def _confirmation(self) -> bool:
        """Wait (at most `_CONFIRM_WAIT`) for the handshake's confirmation, which the
        server's HANDSHAKE_DONE brings about an RTT after our side completed: a path that
        goes away right after connect() is still migrated (Rule 11)."""
        waiter = self._confirm_waiter
        if waiter is None or waiter.done():
            waiter = self._confirm_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), _CONFIRM_WAIT)
        except TimeoutError:
            return False
        finally:
            self._confirm_waiter = None
        return self.is_open and handshake_confirmed(self.connection)

    @property
    def old_sockets(self) -> int:
        """Sockets of earlier paths still receiving after a migration (Rule 11): 0 once the
        server acknowledged the PING from the new path, or `_DRAIN` after the move."""
        return len(self._retired)

    def _retire(self, transport: asyncio.BaseTransport) -> None:
        timer = self._retired.pop(transport, None)
        if timer is not None:
            timer.cancel()
        transport.close()

    def _retire_all(self) -> None:
        for transport in list(self._retired):
            self._retire(transport)

    def _peer_moved(self) -> None:
        """A server's connection: aioquic may have made a new peer address its active path
        (Rule 11); if so, every stream takes it."""
        peer = self.connection.get_peer_address()
        if peer is None or self.remote_address is None:
            return
        moved = (peer[0], peer[1])
        if moved == self.remote_address:
            return
        self.remote_address = moved
        self.migrations += 1
        self.migrated_at = self.loop.time()
        for t in list(self.streams.values()):
            t.path_moved(self.local_address, moved, t.interface)

    async def wait_connected(self) -> None:
        """Wait for the handshake. Unlike aioquic's, this one fails at once on an ICMP error
        (error_received, the OSError itself) and says why the connection terminated (a
        QuicClosedError with aioquic's error code)."""
        if self.handshake_done:
            return
        failed = self.failure()
        if failed is not None:
            raise failed
        if self._handshake is None or self._handshake.done():
            self._handshake = self.loop.create_future()
        await self._handshake

    def failure(self) -> BaseException | None:
        """Why this connection can no longer become established (None: it still may, or it
        is): a check that refused the peer, or how the connection terminated."""
        if self.refusal is not None:
            return self.refusal
        if self.is_open:
            return None
        t = self.termination
        if t is None:
            return ConnectionError("QUIC connection closed before its handshake completed")
        closed = QuicClosedError(t.error_code, t.reason_phrase, t.frame_type)
        closed.__cause__ = t
        return closed

    def _handshake_failed(self, exc: BaseException) -> None:
        waiter = self._handshake
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def new_stream(self) -> QuicStreamTransient:
        # aioquic only advances its next stream id once data was sent on the stream, so two
        # forks in a row would share one: keep our own high-water mark.
        stream_id = max(self.connection.get_next_available_stream_id(), self._next_bidi)
        self._next_bidi = stream_id + 4
        return self._attach(stream_id)

    def _attach(self, stream_id: int) -> QuicStreamTransient:
        assert self.framer is not None
        t = QuicStreamTransient(self, stream_id, framer=self.framer(), max_size=self.max_size,
                                interface=self.interface)
        self.streams[stream_id] = t
        self._open_streams.add(stream_id)
        if self.primary is None:
            self.primary = t
        held = self._held_datagrams.pop(stream_id, None)
        if held:
            t.deliver(held, self.remote_address)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return t

    def _datagram_received(self, payload: bytes) -> None:
        """Rule 6: to the carrier on the stream the frame names, and no other."""
        parts = split_datagram(payload)
        if parts is None:
            self.datagrams_dropped += 1
            return
        sid, data = parts
        t = self.streams.get(sid)
        if t is not None:
            if sid in self._open_streams and not t.credit_withheld:
                t.deliver([data], self.remote_address)
            else:  # closed, or its carrier is over its receive budget (Rule 8)
                self.datagrams_dropped += 1
                t.datagrams_dropped += 1
        elif (is_unidirectional(sid) or sid in self._refused or self.refusing_siblings
              or is_client_initiated(sid) == self.connection.configuration.is_client
              or stream_discarded(self.connection, sid)):
            self.datagrams_dropped += 1  # not a carrier, refused, or ours and never opened
        elif sum(len(v) for v in self._held_datagrams.values()) >= _HELD_DATAGRAMS:
            self.datagrams_dropped += 1  # Rule 8
        else:
            self._held_datagrams.setdefault(sid, []).append(data)  # may overtake the stream

    def datagram_written(self, stream: QuicStreamTransient, pending: Pending) -> None:
        self._datagrams_out.append((stream, pending))

    def _datagrams_left(self) -> None:
        """on_sent for the DATAGRAM frames aioquic wrote into packets (first in, first out)."""
        out = self._datagrams_out
        left = pending_datagram_frames(self.connection)
        while len(out) > left:
            t, p = out.popleft()
            t.datagram_gone(p)
            t.fire(p.on_sent, p.message)

    def _datagrams_failed(self) -> None:
        """The connection ended: frames aioquic never wrote get on_send_error."""
        if self._datagrams_out:
            self._datagrams_left()
        out, self._datagrams_out = self._datagrams_out, collections.deque()
        for t, p in out:
            t.datagram_gone(p)
            t.fire(p.on_send_error, p.message)

    def stream_closed(self, t: QuicStreamTransient) -> None:
        self._open_streams.discard(t.stream_id)
        self._ended.add(t.stream_id)
        if not self._open_streams and self.is_open and self._idle is None:
            self._idle = self.loop.call_later(_IDLE_CLOSE, self._close_idle)

    def close_stream_soon(self, t: QuicStreamTransient) -> None:
        """Close one stream gracefully in a task the session owns: shutdown() cancels it, and
        an error it ends with fails that stream instead of going unreported."""
        task = self.loop.create_task(t.aclose())
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._close_done, t))

    def _close_done(self, t: QuicStreamTransient, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            t.fail(exc)

    def _close_idle(self) -> None:
        self._idle = None
        if not self._open_streams and self.is_open:
            self.close()
            self._bound_closing()

    def _bound_closing(self) -> None:
        """A client's connection began closing: its socket goes within `linger` (Rule 9),
        even when aioquic's closing period (3 PTO, long under load) would keep it longer."""
        if self.owns_transport and self._release is None and self._out is not None:
            self._release = self.loop.call_later(self.linger, self._release_socket)

    def _release_socket(self) -> None:
        self._release = None
        stop_timer(self)
        self._retire_all()
        if self._out is not None and not self._out.is_closing():
            self._out.close()

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self.transmit)

    def flush(self) -> None:
        """Send what aioquic holds now (an immediate message: its own packets). Only the
        datagrams go: the callbacks and progress checks wait for the transmit_soon() that
        follows, so no callback runs inside the caller's send."""
        self._apply_mark()
        QuicConnectionProtocol.transmit(self)
        self.transmit_soon()

    def _apply_mark(self) -> None:
        urgent = self._urgent
        marker = self._marker
        if urgent is not None and marker is not None:
            self._urgent = None
            code_point = dscp_for(self._dscp, urgent)
            if code_point is None:  # no table: mark() is never called then
                return
            try:
                marker.set(code_point)
            except OSError:
                marker.current = code_point  # a refused mark is not tried again until it changes

    def watch_deadline(self, when: float, callback: Callable[[], None]) -> None:
        self.loop.call_at(when, callback)

    def transmit(self) -> None:
        """aioquic's transmit (datagrams out, timer re-armed), then what waits for it: the
        callbacks of DATAGRAM frames just sent and the on_sent / on_acked progress check."""
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        if self._urgent is not None:
            self._apply_mark()
        if self._unmarked_validation and validate_paths(self.connection):
            self._unmarked_validation = False
        super().transmit()
        out = self._out
        if out is None or out.is_closing():
            return
        if self._datagrams_out:
            self._datagrams_left()
        if self._ended:
            self._forget_ended()
        tracked = self._tracked
        if tracked:  # some carrier waits for on_sent / on_acked: read aioquic's offsets
            for t in list(tracked):
                if t.tracking_pending():
                    t.check_progress()
                if not t.tracking_pending():
                    del tracked[t]
        blocked = self._blocked
        if blocked:  # senders waiting for aioquic's buffer (Rule 8)
            for t in list(blocked):
                left = t.backlog_bytes()
                if left < blocked[t]:
                    t.notify_drained()  # it releases its senders at its own low-water mark
                    blocked[t] = left
                if not t.is_open or left <= t.send_limit // 4:
                    del blocked[t]
                    t.notify_drained()

    def _forget_ended(self) -> None:
        """Forget the ended streams aioquic discarded (no event names them again): a
        long-lived connection's maps hold only streams in use (a closed carrier's Transient
        is dropped once it has ended)."""
        quic = self.connection
        for sid in list(self._ended):
            if not stream_discarded(quic, sid):
                continue
            t = self.streams.get(sid)
            if t is not None and (not t.closed.done() or t.tracking_pending()
                                  or sid in self._open_streams):
                continue
            self._ended.discard(sid)
            self.streams.pop(sid, None)
            self._stopped.discard(sid)
            self._refused.discard(sid)
            self._held_datagrams.pop(sid, None)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors: fatal during the handshake (port unreachable means nobody serves QUIC
        there, so the race should move on now, not at connTimeout), soft afterwards."""
        if not self.handshake_done:
            self._handshake_failed(exc)
            return
        for sid in sorted(self._open_streams):
            self.streams[sid].report_soft_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._retire_all()
        self._handshake_failed(exc if exc is not None else ConnectionError(
            "the QUIC connection's socket closed before its handshake completed"))
        if self.is_open:
            self.is_open = False
            self._datagrams_failed()
            for t in list(self.streams.values()):
                t.terminate(exc)

    def abandon(self) -> None:
        """Let a connection go without a word to its peer: a listener's handshake that timed
        out (its source address was never validated, so nothing more is sent to it). The
        listener then makes aioquic's server forget it (`compat.forget_connection`)."""
        if self._out is not None:
            self._out.silent = True
        self.shutdown()

    def shutdown(self, error_code: int = QuicErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection now (CONNECTION_CLOSE to the peer, with `error_code`) and
        end what it runs: the idle timer and stream closes in progress (`settle()` waits for
        them)."""
        if self.is_open:
            with contextlib.suppress(Exception):
                # A transport close (frame_type given): an application close would reach a
                # peer still handshaking as a bare APPLICATION_ERROR (RFC 9000 10.2.3).
                self.connection.close(error_code=error_code, reason_phrase=reason,
                                      frame_type=None if error_code == QuicErrorCode.NO_ERROR
                                      else QuicFrameType.PADDING)
                self.transmit()
        self.is_open = False
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for task in self._tasks:
            task.cancel()
        self._datagrams_failed()
        for t in list(self.streams.values()):
            t.terminate(None)
        if self.owns_transport and self._out is not None:
            self._retire_all()
            self._out.close()

    async def settle(self) -> None:
        """Wait until the stream closes shutdown() cancelled have ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if self.refusal is not None and not isinstance(event, events.ConnectionTerminated):
            return  # a refused server's data goes nowhere
        if isinstance(event, events.HandshakeCompleted):
            if self.trust is not None and not self._trusted(event):
                return
            if self.client_auth is not None and not self._client_trusted(event):
                return
            self.handshake_done = True
            self.handshakes += 1
            if self.on_handshake is not None:
                self.on_handshake(self)
            self.early_data_accepted = event.early_data_accepted
            self.session_resumed = event.session_resumed
            if self._handshake is not None and not self._handshake.done():
                self._handshake.set_result(None)
        elif isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, events.DatagramFrameReceived):
            self._datagram_received(event.data)
        elif isinstance(event, events.PingAcknowledged):
            if event.uid == self._migration_ping and self.migrated_at is not None:
                self._migration_ping = None
                if self._retired:  # the server answered on the new path: it has moved
                    self.loop.call_soon(self._retire_all)
                self.migration_acked_ms = (self.loop.time() - self.migrated_at) * 1000.0
        elif isinstance(event, events.StopSendingReceived):
            self._send_stopped(event.stream_id, event.error_code)
        elif isinstance(event, events.StreamReset):
            self._uni_dropped(event.stream_id)
            self._stopped.discard(event.stream_id)  # no more bytes can come on it
            t = self.streams.get(event.stream_id)
            if t is not None:
                t.end_of_messages()
        elif isinstance(event, events.ConnectionTerminated):
            self.is_open = False
            if self._release is not None:
                self._release.cancel()
                self._release = None
            reason = self.termination = QuicClosedError.from_event(event)
            self._handshake_failed(reason)
            self._datagrams_failed()
            for t in list(self.streams.values()):
                t.terminate(None if event.error_code == 0 else reason)
            if self.owns_transport and self._out is not None:
                # A client's socket is its own: release it with the connection.
                self.loop.call_soon(self._out.close)
                self.loop.call_soon(self._retire_all)
            if self.on_terminated is not None:
                self.on_terminated(self)

    def _trusted(self, event: events.HandshakeCompleted) -> bool:
        """Check the pins (Rule 5). Called while aioquic's events are processed, before its
        next transmit, so a refused server receives the close and nothing else."""
        assert self.trust is not None
        try:
            self.origin = self.trust.check(peer_chain(self.connection),
                                           event.session_resumed, self.offered_origin)
        except Exception as exc:
            self.refusal = exc
            self.connection.close(error_code=_BAD_CERTIFICATE, frame_type=QuicFrameType.CRYPTO,
                                  reason_phrase=str(exc))
            self._handshake_failed(exc)
            return False
        return True

    def _client_trusted(self, event: events.HandshakeCompleted) -> bool:
        """A listener's clientAuth check (config, Rule 6), before any stream is routed: a
        refused client is closed with the TLS alert and nothing of it reaches the listener.
        Such a listener issues no tickets, so no handshake resumes without a certificate."""
        assert self.client_auth is not None
        try:
            self.client_fingerprint = self.client_auth.check(
                peer_certificate(self.connection))
        except ClientAuthError as exc:
            self.refusal = exc
            self.connection.close(error_code=exc.error_code, frame_type=QuicFrameType.CRYPTO,
                                  reason_phrase=str(exc))
            self.transmit_soon()
            return False
        self.client_verified = True
        return True

    def _refuse(self, sid: int) -> None:
        """Refuse a stream the peer opened (accept callback said no): RESET_STREAM and
        STOP_SENDING with REFUSED_STREAM; its data and datagrams are dropped."""
        self._refused.add(sid)
        self._ended.add(sid)
        self._held_datagrams.pop(sid, None)
        with contextlib.suppress(Exception):
            self.connection.stop_stream(sid, REFUSED_STREAM)
        with contextlib.suppress(Exception):
            self.connection.reset_stream(sid, REFUSED_STREAM)
        self.transmit_soon()

    def _send_stopped(self, sid: int, code: int) -> None:
        """The peer's STOP_SENDING (Rule 10): aioquic reset our half of that stream; what
        was written on it and not acknowledged ends with on_send_error, never on_acked."""
        exc = ConnectionResetError(f"the QUIC peer stopped reading stream {sid} "
                                   f"(error {code:#x})")
        if is_unidirectional(sid):
            for owner in [*self._tracked, *self.streams.values()]:
                if owner.side_stream_stopped(sid, exc):
                    return
            return
        t = self.streams.get(sid)
        if t is not None:
            t.stop_sending_side(exc)

    def _uni_dropped(self, sid: int) -> None:
        buf = self._uni_in.pop(sid, None)
        if buf is not None:
            self._uni_bytes -= len(buf)

    def _stop_uni(self, sid: int) -> None:
        """A unidirectional stream over its bound: STOP_SENDING, its bytes forgotten."""
        self._uni_dropped(sid)
        self._stopped.add(sid)
        self._ended.add(sid)
        self.uni_stopped += 1
        with contextlib.suppress(Exception):
            self.connection.stop_stream(sid, TOO_LARGE)
        self.transmit_soon()

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        # 0-RTT data is the client's: a server's bytes reach its client after the client's
        # handshake completed (they follow the server's Finished), so only a server flags.
        early = not self.handshake_done and not self.connection.configuration.is_client
        if is_unidirectional(sid):  # one expiring message for the carrier it names
            if sid in self._stopped:
                return
            buf = self._uni_in.setdefault(sid, bytearray())
            buf += event.data
            self._uni_bytes += len(event.data)
            if len(buf) > self.max_size + UNI_OVERHEAD:
                self._stop_uni(sid)  # Rule 8: one message over message.maxSize
                return
            if event.end_stream:
                over = self._uni_bytes > self._uni_bound
                self._uni_dropped(sid)
                if over:
                    self.credit_changed()  # credit withheld for the others goes out
                parts = split_uni(bytes(buf))
                if parts is not None:
                    owner, frame = parts
                    t = self.streams.get(owner) or self.primary
                    if t is not None:
                        t.on_side_message(frame, early)
            return
        t = self.streams.get(sid)
        if t is None:
            if sid in self._refused:
                return
            accept = self.accept_callback
            acceptor = self._acceptor
            if acceptor is not None and acceptor.stream_id not in self._open_streams:
                accept = None  # the carrier that called accept() closed: on_stream again
            if accept is not None and self.refusing_siblings:
                self._refuse(sid)
                return
            t = self._attach(sid)
            # A connection's first stream is a new carrier (for a listener); later ones go
            # to the carrier that called accept() while it is open, else they are new
            # carriers too. An accept callback that returns False takes this one and
            # refuses every later one.
            if accept is not None and t is not self.primary:
                if accept(t) is False:
                    self.refusing_siblings = True
            elif self.on_stream is not None:
                self.on_stream(t)
        t.on_data(event.data, event.end_stream, early)
