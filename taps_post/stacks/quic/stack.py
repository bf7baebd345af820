"""The QUIC stack's plug-in face: `connect` one Candidate, `listen` on an address.

Rule 1: `QuicStack` is what `taps_post.stacks.get("quic")` returns (loaded lazily, so
importing taps_post does not import aioquic): it builds a configuration (`config`), one
`QuicSession` per connection and its first stream, and hands the stream's Transient up.
Rule 2: connect() returns only once the handshake completed; a connection aioquic closed
first raises `QuicClosedError` (QUIC error code and reason), an ICMP error the OSError
itself, so racing classifies either. Whatever it made is closed before it raises.
Rule 3: session tickets come from and go to `SessionState` (the Association), only while the
policy allows the session cache. 0-RTT (the draft's order, 3.1.2): when the offered ticket
allows early data and the policy allows 0-RTT, the attempt writes copies of every idempotent
message of the carrier's early flight (`spec.early.take()`) before its first packet, and of
each one held while its handshake runs (`spec.early.watch`), all as 0-RTT data; it never
writes a non-idempotent message before the handshake completed. A server that refuses the
early data makes aioquic send the same stream bytes again in 1-RTT packets: the stream's
offsets are unchanged, so each message is delivered and reported once.
Rule 4: pins are checked by fingerprint whatever `verifyPeer` says (config, Rule 4): connect()
fails with PinMismatchError before anything of the application is sent. A ticket is offered
(so resumption and 0-RTT happen) only when its Origin meets this attempt's Trust, and a
ticket is kept only from a connection that passed its check, stamped with what it proved
(config, Rule 5).
DANE is checked with the pins, after them (config, Rule 8), and refuses the same way
(DaneError); under security.dane require an attempt without a TLSA set that could decide is
refused before its first packet.
Rule 5: a listener is aioquic's own `QuicServer` whose `create_protocol` makes our sessions;
the listener keeps its own set of them, never the server's table. Under clientAuth it issues
no session tickets (config, Rule 6): every connection is a full handshake showing a
certificate.
Rule 6 (a listener under abuse, docs/quic.md "Memory limits"): the server's ticket store is
an LRU of `TICKETS_PER_HANDSHAKE` x listener.maxHandshakes entries (each used once); an
Initial that would open a connection beyond listener.maxHandshakes handshakes in progress is
dropped before aioquic sees it (no state, no reply); listener.retry `always`, or `auto` while
at least half of maxHandshakes are in progress, answers new Initials with a Retry (address
validation: no connection state until the client proves its address, and no reply beyond
the Retry); a connection whose handshake did not complete within listener.handshakeTimeout
ends then: one whose peer proved its address (a Retry token, or a Handshake packet from it:
the client may consider its handshake complete already) and talking (it sent more than the
datagram that opened the connection: a busy host is slow, its peer not silent) gets one more
timeout, then, or at once when silent, a CONNECTION_CLOSE
(CONNECTION_REFUSED, "handshake timeout"), so its client learns at once; one whose address
nobody validated is dropped without a word (`compat.forget_connection`: no closing period),
and what still comes to its connection ids is dropped for `FORGOTTEN_FOR` seconds, or each
retransmitted Initial (an ACK, no CRYPTO frame) would open a new connection aioquic refuses.
A Retry token proves the address to aioquic too (`compat.validate_paths`): no
anti-amplification limit holds its first flight back an RTT at a time. The listening socket
asks for a `RECEIVE_BUFFER` receive buffer: a burst of Initials overflows the default one.
The socket is attached through `stacks.dgram.open_datagram_endpoint`,
like every listening UDP socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from typing import Any

from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.tls import SessionTicket

from ...core.early import Relays
from ...core.messages import OutMessage
from .. import dane
from ..base import (
    AttemptSpec,
    DscpMarker,
    ListenSpec,
    bind_server,
    connected_datagram_socket,
    family_of,
)
from ..dgram import open_datagram_endpoint
from .compat import forget_connection, path_validated, server_knows, set_server_retry
from .config import (
    Origin,
    client_auth,
    client_configuration,
    client_trust,
    server_configuration,
    ticket_origin,
    with_origin,
)
from .session import QuicSession
from .stream import QuicStreamTransient

__all__ = ["FORGOTTEN_FOR", "RECEIVE_BUFFER", "TICKETS_PER_HANDSHAKE", "QuicListening",
           "QuicStack"]

RECEIVE_BUFFER = 4 << 20
"""SO_RCVBUF asked for a listening socket (bytes; the kernel caps it at net.core.rmem_max)."""

FORGOTTEN_FOR = 60.0
"""Seconds a listener drops datagrams to the connection ids of a handshake it forgot (as
long as a client keeps retransmitting before its own timeouts end it), at most
`TICKETS_PER_HANDSHAKE` x listener.maxHandshakes ids."""

TICKETS_PER_HANDSHAKE = 8
"""Session tickets a listener keeps per listener.maxHandshakes (4,096 by default), least
recently issued dropped first: the resumption cache scales with the handshake capacity."""


class QuicStack:
    """The built-in `quic` stack (StackInfo in taps_post.policy.catalog)."""

    name = "quic"
    ip_protocol = "udp"

    async def connect(self, spec: AttemptSpec) -> QuicStreamTransient:
        loop = asyncio.get_running_loop()
        c = spec.candidate
        # DANE required and no TLSA set that could decide: refused before anything is sent.
        dane.refuse_undecidable(spec.tlsa, spec.settings.dane, host=spec.host)
        config = client_configuration(spec)
        trust = client_trust(spec)
        ticket: SessionTicket | None = (spec.association.take_ticket("quic")
                                        if spec.settings.session_cache else None)
        offered: Origin | None = None
        if ticket is not None and ticket.is_valid and ticket.server_name == spec.host:
            origin = ticket_origin(ticket)
            if trust.admits(origin):
                config.session_ticket = ticket
                offered = origin
        association = spec.association
        session: QuicSession | None = None

        def keep(t: SessionTicket) -> None:
            # Only from a server that passed this attempt's check, with what it proved.
            if spec.settings.session_cache and session is not None and session.handshake_done:
                association.add_ticket("quic", with_origin(t, session.origin))

        quic = QuicConnection(configuration=config, session_ticket_handler=keep)
        sock = connected_datagram_socket(c, spec.local_port)
        early = spec.early
        zero_rtt = (early is not None and spec.settings.zero_rtt and ticket is not None
                    and config.session_ticket is ticket
                    and ticket.max_early_data_size is not None)
        try:
            started = loop.time()
            per_msg = spec.settings.per_msg_reliability
            _, proto = await loop.create_datagram_endpoint(
                lambda: QuicSession(quic, framer=spec.framer, max_size=spec.settings.max_size,
                                    interface=c.interface, per_msg_reliability=per_msg,
                                    trust=trust, offered=offered, dscp=spec.settings.dscp,
                                    recv_budget=spec.settings.recv_budget,
                                    linger=spec.settings.linger),
                sock=sock)
            session = proto
            assert session is not None
            session.owns_transport = True
            session.remote_address = (c.remote_address, c.remote_port)
            # aioquic matches network paths on the exact tuple the socket reports: a 4-tuple
            # for IPv6.
            peer: Any = ((c.remote_address, c.remote_port, 0, 0) if ":" in c.remote_address
                         else (c.remote_address, c.remote_port))
            session.connect(peer, transmit=False)
            transient = session.new_stream()
            if zero_rtt:
                assert early is not None
                transient.early_attempt = early
                self._write_early(transient, early.take())  # with the ClientHello
                running = session

                def held(copies: list[tuple[OutMessage, Relays]]) -> None:
                    # Messages held while the handshake runs ride in 0-RTT too (Rule 3).
                    if not session_done(running):
                        self._write_early(transient, copies)
                        running.transmit()

                early.watch(held)
            session.transmit()
            try:
                await session.wait_connected()
            finally:
                if zero_rtt:
                    assert early is not None
                    early.watch(None)
            transient.rtt_ms = (loop.time() - started) * 1000.0
            transient.established_ms = transient.rtt_ms
            transient.session_reused = session.session_resumed
            transient.dane = session.origin.dane_how if session.origin is not None else None
            # early_in_syn: the server accepted the 0-RTT data; refused, aioquic sends the
            # same stream bytes again in 1-RTT packets (the offsets do not change).
            transient.early_in_syn = transient.early_sent and session.early_data_accepted
            return transient
        except BaseException:
            if session is not None:
                session.shutdown()
            sock.close()
            raise

    @staticmethod
    def _write_early(transient: QuicStreamTransient,
                     copies: list[tuple[OutMessage, Relays]]) -> None:
        """Write copies from the early flight into the stream now, before the next transmit
        (0-RTT packets while the handshake runs). Their relays report to the originals once
        the race is decided (core/early.py)."""
        if not copies:
            return
        for copy, relays in copies:
            try:
                transient.submit(copy, *relays)
            except Exception:  # over maxSize, say: that copy ends here, the others go
                if relays[3] is not None:
                    relays[3](copy)
        transient.pump()
        transient.early_sent = True

    async def listen(self, spec: ListenSpec) -> QuicListening:
        loop = asyncio.get_running_loop()
        config = server_configuration(spec)
        auth = client_auth(spec)
        tickets = _Tickets(TICKETS_PER_HANDSHAKE * max(spec.settings.max_handshakes, 1))
        settings = spec.settings
        # Every connection not yet terminated: aioquic's server creates each through
        # `create`, so the listener need not read the server's own table.
        sessions: set[QuicSession] = set()
        handshaking: dict[QuicSession, asyncio.TimerHandle] = {}
        """Connections whose handshake is in progress, each with its timeout (Rule 6)."""
        server_ref: list[_Server] = []
        sock = socket.socket(family_of(spec.address), socket.SOCK_DGRAM)
        marker = DscpMarker(sock) if settings.dscp else None

        def settled(session: QuicSession) -> None:
            timer = handshaking.pop(session, None)
            if timer is not None:
                timer.cancel()

        def terminated(session: QuicSession) -> None:
            sessions.discard(session)
            settled(session)

        def timed_out(session: QuicSession, extended: bool = False) -> None:
            handshaking.pop(session, None)
            if session.handshake_done or not session.is_open:
                return
            if session.address_validated or path_validated(session.connection):
                if not extended and session.last_received > session.first_received:
                    # A busy host (its own or the client's) is slow, not the peer silent: a
                    # peer that proved its address and sent more than its first datagram
                    # gets one more timeout (so at most twice handshakeTimeout, Rule 6).
                    handshaking[session] = loop.call_later(
                        settings.handshake_timeout, timed_out, session, True)
                    return
                # The peer proved its address (Retry token, or a Handshake packet: it may
                # consider its handshake complete already): tell it at once, and let
                # aioquic's closing period answer its late packets (Rule 6).
                session.shutdown(QuicErrorCode.CONNECTION_REFUSED, "handshake timeout")
                return
            session.abandon()
            sessions.discard(session)
            if server_ref:
                server_ref[0].forget(session)

        def create(quic: QuicConnection, stream_handler: Any = None) -> QuicSession:
            session = QuicSession(quic, framer=spec.framer, max_size=settings.max_size,
                                  interface=spec.interface, on_stream=spec.on_transient,
                                  per_msg_reliability=settings.per_msg_reliability,
                                  allow_early=settings.zero_rtt,
                                  on_terminated=terminated, dscp=settings.dscp,
                                  marker=marker, client_auth=auth,
                                  recv_budget=settings.recv_budget, on_handshake=settled)
            if server_ref:
                session.address_validated = server_ref[0].validating
            sessions.add(session)
            handshaking[session] = loop.call_later(settings.handshake_timeout, timed_out,
                                                   session)
            return session

        try:
            # A burst of Initials (1,200 bytes or more each) overflows the default receive
            # buffer (about 170 of them): ask for more, the kernel caps it at rmem_max.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            bind_server(sock, spec.address, spec.port, spec.interface)
            transport, server = await open_datagram_endpoint(
                lambda: _Server(
                    configuration=config, create_protocol=create,
                    session_ticket_fetcher=None if auth else tickets.take,
                    session_ticket_handler=None if auth else tickets.add,
                    retry_mode=settings.retry, max_handshakes=settings.max_handshakes,
                    handshaking=handshaking),
                sock)
        except BaseException:
            sock.close()
            raise
        server_ref.append(server)
        return QuicListening(transport, sessions, sock.getsockname()[1], server, tickets)


def session_done(session: QuicSession) -> bool:
    """The handshake completed (or the session closed): nothing more rides as 0-RTT."""
    return session.handshake_done or not session.is_open


class _Tickets:
    """The listener's session tickets (Rule 6): at most `limit`, least recent dropped first,
    each handed out once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._store: collections.OrderedDict[bytes, SessionTicket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def add(self, ticket: SessionTicket) -> None:
        store = self._store
        store[ticket.ticket] = ticket
        store.move_to_end(ticket.ticket)
        while len(store) > self.limit:
            store.popitem(last=False)

    def take(self, label: bytes) -> SessionTicket | None:
        return self._store.pop(label, None)


def _token_valid(tokens: QuicRetryTokenHandler, addr: Any, destination_cid: bytes,
                 token: bytes) -> bool:
    """A token that aioquic's Retry check would accept (one of our own Retry tokens, for
    this address and connection id, not expired)."""
    try:
        tokens.validate_token(address=addr, destination_cid=destination_cid, token=token,
                              now=asyncio.get_running_loop().time())
    except Exception:  # ValueError, or a token too short to parse
        return False
    return True


class _Server(QuicServer):
    """aioquic's QuicServer with Rule 6's admission in front of it: new Initials beyond
    max_handshakes are dropped, and Retry is switched on per Initial (`set_server_retry`)."""

    def __init__(self, *, configuration: QuicConfiguration, retry_mode: str,
                 max_handshakes: int, handshaking: dict[QuicSession, asyncio.TimerHandle],
                 **kwargs: Any) -> None:
        super().__init__(configuration=configuration, **kwargs)
        if retry_mode not in ("never", "auto", "always"):
            raise ValueError(f"unknown listener.retry {retry_mode!r} (never, auto, always)")
        self.cid_length = configuration.connection_id_length
        self.retry_mode = retry_mode
        self.max_handshakes = max(int(max_handshakes), 1)
        self.handshaking = handshaking
        self.refused_initials = 0
        """New Initials dropped because max_handshakes handshakes were in progress."""
        self.retries = 0
        """New Initials answered with a Retry (no connection state kept)."""
        self._tokens = QuicRetryTokenHandler() if retry_mode != "never" else None
        set_server_retry(self, None)
        self.validating = False
        """The Initial being handled carries a Retry token (aioquic creates a connection for
        it only once the token validated): the connection's peer proved its address."""
        self._forgotten: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        """Connection ids of forgotten handshakes, with when they stop being dropped."""
        self._forgotten_limit = TICKETS_PER_HANDSHAKE * self.max_handshakes

    def forget(self, session: QuicSession) -> None:
        """Forget a handshake that timed out without a word (Rule 6), and drop what its peer
        still sends to it: its next Initial, an ACK without CRYPTO, would otherwise open a
        new connection aioquic refuses ("Packet contains no CRYPTO frame"), again and again
        while the client retransmits, each one counted as a handshake in progress."""
        until = asyncio.get_running_loop().time() + FORGOTTEN_FOR
        forgotten = self._forgotten
        for cid in forget_connection(self, session):
            forgotten[cid] = until
            forgotten.move_to_end(cid)
        while len(forgotten) > self._forgotten_limit:
            forgotten.popitem(last=False)

    def _was_forgotten(self, cid: bytes) -> bool:
        until = self._forgotten.get(cid)
        if until is None:
            return False
        if until > asyncio.get_running_loop().time():
            return True
        del self._forgotten[cid]
        return False

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.validating = False
        # Only a long header (first bit set) can be an Initial: a short-header datagram
        # (the bulk of an established connection's traffic) is not parsed twice.
        if (isinstance(data, bytes) and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
                and data[0] & 0x80):
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=self.cid_length)
            except ValueError:
                return  # not QUIC: aioquic would drop it too
            if (header.packet_type == QuicPacketType.INITIAL
                    and not server_knows(self, header.destination_cid)):
                if self._forgotten and self._was_forgotten(header.destination_cid):
                    return
                in_progress = len(self.handshaking)
                if in_progress >= self.max_handshakes:
                    self.refused_initials += 1
                    return
                tokens = self._tokens
                if tokens is not None:
                    retry = (self.retry_mode == "always"
                             or 2 * in_progress >= self.max_handshakes)
                    if header.token and not retry:
                        # Not under load: only a Retry token of ours that validates goes
                        # through validation (its client expects the Retry's transport
                        # parameters); any other token (NEW_TOKEN, a stale Retry) is
                        # ignored and the client served as without one (RFC 9000 8.1.3).
                        retry = _token_valid(tokens, addr, header.destination_cid,
                                             header.token)
                    set_server_retry(self, tokens if retry else None)
                    if retry and not header.token:
                        self.retries += 1
                    self.validating = retry and bool(header.token)
        super().datagram_received(data, addr)
        self.validating = False


class QuicListening:
    """A listening QUIC socket and the connections it accepted."""

    stack = "quic"

    def __init__(self, transport: asyncio.BaseTransport, sessions: set[QuicSession],
                 port: int, server: _Server | None = None,
                 tickets: _Tickets | None = None) -> None:
        self._transport = transport
        self._sessions = sessions
        self.port = port
        self.server = server
        """aioquic's server (its counters: refused_initials, retries, handshaking)."""
        self.tickets = tickets

    @property
    def sessions(self) -> int:
        """Connections this listener holds now (handshaking or established)."""
        return len(self._sessions)

    @property
    def handshakes(self) -> int:
        """Connections whose handshake is in progress (Listener.handshakes sums these)."""
        return 0 if self.server is None else len(self.server.handshaking)

    async def aclose(self) -> None:
        """Close every connection (the peers get CONNECTION_CLOSE), then the socket."""
        closing = list(self._sessions)
        if self.server is not None:  # no handshake timer outlives the listener
            for timer in self.server.handshaking.values():
                timer.cancel()
            self.server.handshaking.clear()
        for session in closing:
            session.shutdown()
        await asyncio.sleep(0)  # let the CONNECTION_CLOSE datagrams go out
        self._transport.close()
        for session in closing:
            await session.settle()
