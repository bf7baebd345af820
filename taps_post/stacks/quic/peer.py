"""`quic-ice`: QUIC between two peers over a path someone else established (an ICE pair).

Rule 1 (the plug-in face, stacks.base Rule 5): `PeerQuicStack` opens no socket. The runtime
hands it a `DatagramPath` in `AttemptSpec.path` (this end opens the connection: QUIC client)
or `ListenSpec.path` (the peer opens it: QUIC server), and the stack owns that path from
then on: it closes it when the connection ends, and on any failure. The QUIC is the `quic`
stack's own (`QuicSession`, `QuicStreamTransient`, `config`), unchanged: `_PathTransport`
is the asyncio datagram transport aioquic's protocol writes to, forwarding to
`path.send()`, and the path's receiver feeds `QuicSession.datagram_received` with one fixed
peer address (`path.remote`), so aioquic sees one network path that never moves.
Rule 2 (who the peer is): certificates, and only their SHA-256 fingerprints. Each end
presents `identity[0]` (the certificate whose fingerprint its offer announced) and accepts
the peer only if the peer's certificate is one of `peer_fingerprints`: the client through
`config.Trust` pins (no CA, no name: `verifyPeer` off for the chain, the pin always), the
server through `PeerClients`, a `config.ClientAuth` that requires a client certificate and
accepts it by fingerprint alone, never through a CA. aioquic checks each side's
CertificateVerify, so the peer also proved it holds the certificate's key. An empty
`peer_fingerprints`, or an identity without its key, is refused before anything is sent.
Rule 3 (what peers do not do): no session tickets (the server issues none, the client
keeps none), so no resumption and no 0-RTT; no SNI (the peer's identity is not sent in
clear); ALPN is `ALPN` only, so a peer that is not quic-ice fails the handshake; no
connection migration (the path is the ICE pair: moving would leave it; `migrate()` is
False); no DSCP marking (the path's socket is not ours to mark).
Rule 4 (the first stream): a QUIC stream exists at the peer only once bytes were sent on
it, but both ends of a rendezvous expect a carrier as soon as the connection is up, whoever
speaks first. So the client writes `OPEN` on its first stream (stream 0) at once, counted
in the stream's own offsets like any message, and the listener delivers that stream to
`on_transient` when it has read those bytes, and strips them: the application never sees
them. A first stream that does not begin with them closes the connection
(CONNECTION_REFUSED). Later streams (forks, from either side) are plain QUIC streams, as
on the `quic` stack: the client's go to the listener's `on_transient` (held until the
first stream was delivered), the listener's to the client carrier that called
`accept_siblings()`.
Rule 5 (connect): returns the first stream's Transient once the handshake is confirmed
(HANDSHAKE_DONE), i.e. once the listener, too, accepted our certificate: a peer that
refuses us makes connect() raise (`QuicClosedError`, CRYPTO_ERROR plus certificate_required
or bad_certificate) instead of the carrier failing later; a peer whose certificate is not
pinned raises `PinMismatchError` before a byte of the application is sent.
Rule 6 (listen): one connection per path, made on the first QUIC Initial that arrives;
anything else before it is dropped. A connection that is not established within
listener.handshakeTimeout (counted from listen()) is closed, and the path with it.
`PeerQuicListening.wait_connected()` says how the connection came out; on_transient is
never called for a refused peer.
Rule 7: every Transient of a quic-ice connection names its stack `quic-ice`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header

from ...certs import Certificate, fingerprint_of_der
from ...core.framing import Framer
from ...core.messages import OutMessage, Pending
from ...errors import DeframingError
from ..base import AttemptSpec, DatagramPath, ListenSpec
from .compat import handshake_confirmed
from .config import (
    BAD_CERTIFICATE,
    CERTIFICATE_REQUIRED,
    ClientAuth,
    ClientAuthError,
    Trust,
    client_configuration,
    server_configuration,
)
from .session import QuicSession
from .stream import QuicStreamTransient

__all__ = ["ALPN", "NAME", "OPEN", "PeerClients", "PeerQuicListening", "PeerQuicStack"]

NAME = "quic-ice"
ALPN = "taps-p2p"
"""The only application protocol a quic-ice connection negotiates (Rule 3)."""
OPEN = b"taps-p2p 1\n"
"""The bytes that open a connection's first stream (Rule 4), before any message."""


class PeerClients(ClientAuth):
    """A listener's check of its one peer (Rule 2): a certificate is required, and it is
    accepted only by fingerprint; no CA is ever consulted (`cadata` stays empty)."""

    __slots__ = ()

    def check(self, peer_der: bytes | None) -> str | None:
        if peer_der is None:
            raise ClientAuthError("the peer presented no certificate; a rendezvous peer "
                                  "must present the one its offer announced",
                                  CERTIFICATE_REQUIRED)
        got = fingerprint_of_der(peer_der)
        if got not in self.pins:
            raise ClientAuthError(f"the peer's certificate {got} is not the one its offer "
                                  "announced", BAD_CERTIFICATE)
        return got


def _fingerprints(given: frozenset[str], side: str) -> frozenset[str]:
    """The peer fingerprints in `Certificate.fingerprint` spelling (upper-case hex with
    colons); ValueError when there are none (Rule 2: nobody would be authenticated)."""
    pins = frozenset(f.strip().upper() for f in given if isinstance(f, str) and f.strip())
    if not pins:
        raise ValueError(f"quic-ice {side}: no peer_fingerprints; the peer's certificate "
                         "must be pinned (its offer's fingerprint)")
    return pins


def _identity(identity: Any, side: str) -> tuple[Certificate]:
    """`identity[0]`, which must come with its private key (Rule 2)."""
    first = identity[0] if identity else None
    if not isinstance(first, Certificate) or not first.key_pem:
        raise ValueError(f"quic-ice {side}: needs our certificate with its private key as "
                         "identity[0] (the one our offer announced)")
    return (first,)


def _path(path: DatagramPath | None, side: str) -> DatagramPath:
    if path is None:
        raise TypeError(f"quic-ice {side}: the spec has no path; a rendezvous stack runs "
                        "over the DatagramPath the runtime established (stacks.base Rule 5)")
    return path


class _PathTransport(asyncio.DatagramTransport):
    """What aioquic's protocol writes to (Rule 1): each datagram goes to `path.send()`.
    Its `peername` makes the session's outbound side send without an address (as on a
    connected socket); `socket` is None (no DSCP, Rule 3). close() stops delivery at once,
    tells the protocol as asyncio's own transports do, and closes the path one loop
    iteration later, so a path whose send() only schedules the datagram (an ICE pair)
    still sends the CONNECTION_CLOSE written just before."""

    def __init__(self, path: DatagramPath, protocol: asyncio.BaseProtocol) -> None:
        super().__init__(extra={"peername": path.remote, "sockname": path.local,
                                "socket": None})
        self._path = path
        self._protocol = protocol
        self._closing = False
        self._loop = asyncio.get_running_loop()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing:
            self._path.send(data if type(data) is bytes else bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        path = self._path
        path.receive(None)
        self._loop.call_soon(path.close)
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0


class _PeerSession(QuicSession):
    """A `QuicSession` over a path (Rule 1): it may not migrate (Rule 3), names its streams
    `quic-ice` (Rule 7), and tells when it is established or failed (`established`)."""

    def __init__(self, quic: QuicConnection, peer: tuple[str, int], *,
                 on_change: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.peer = peer
        """The one address aioquic knows the peer by (`path.remote`)."""
        self.on_change = on_change
        """Told whenever the connection may have become established or failed."""
        self.started = self.loop.time()
        self.handshake_ms: float | None = None
        """Milliseconds from the session's start to the completed, accepted handshake."""
        self._peer_waiters: list[asyncio.Future[None]] = []

    def feed(self, data: bytes) -> None:
        """A datagram from the path."""
        self.datagram_received(data, self.peer)

    # ---- outcome ---------------------------------------------------------------------------

    def verdict(self) -> BaseException | bool:
        """True once established (a client: handshake confirmed; a listener: completed and
        the client's certificate accepted), False while it may still be, or why it failed."""
        failed = self.failure()  # the quic stack's own reading of a refusal or close
        if failed is not None:
            return failed
        if not self.handshake_done:
            return False
        return not self.connection.configuration.is_client or \
            handshake_confirmed(self.connection)

    async def established(self) -> None:
        """Wait until `verdict()` decides; raise what it failed with."""
        while (v := self.verdict()) is False:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._peer_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._peer_waiters.remove(waiter)
        if isinstance(v, BaseException):
            raise v

    def _changed(self) -> None:
        if self.handshake_done and self.handshake_ms is None:
            self.handshake_ms = (self.loop.time() - self.started) * 1000.0
        waiters, self._peer_waiters = self._peer_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        if self.on_change is not None:
            self.on_change()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self._changed()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, events.HandshakeCompleted | events.ConnectionTerminated):
            self._changed()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._changed()

    def shutdown(self, error_code: int = QuicErrorCode.NO_ERROR, reason: str = "") -> None:
        super().shutdown(error_code, reason)
        self._changed()

    # ---- streams ---------------------------------------------------------------------------

    def new_stream(self) -> QuicStreamTransient:
        t = super().new_stream()
        t.stack = NAME
        return t

    def accept_streams(self, callback: Callable[[QuicStreamTransient], Any],
                       owner: QuicStreamTransient | None = None) -> None:
        def named(t: QuicStreamTransient) -> Any:
            t.stack = NAME
            return callback(t)

        super().accept_streams(named, owner)

    async def migrate(self, local_address: str, interface: str | None) -> bool:
        return False  # Rule 3: the connection lives on its ICE pair


class _Preamble:
    """A framer for one write only: whatever message it is given, it encodes `OPEN`
    (Rule 4). Everything else is the stream's own framer's."""

    def __init__(self, inner: Framer) -> None:
        self.inner = inner
        self.max_size = inner.max_size
        self.encodes_anything = True
        self.control_seen = False

    def fresh(self) -> Framer:
        return self.inner.fresh()

    def buffered(self) -> bytes:
        return self.inner.buffered()

    def encode(self, message: bytes) -> bytes:
        return OPEN

    def feed(self, data: bytes) -> list[bytes]:
        return self.inner.feed(data)

    def eof(self) -> list[bytes]:
        return self.inner.eof()

    def encode_control(self, payload: bytes) -> bytes:
        return self.inner.encode_control(payload)


class _Opening:
    """The listener's first stream until `OPEN` was read (Rule 4): it strips those bytes,
    then puts the stream's own framer back and tells `opened`; anything else is refused."""

    def __init__(self, owner: QuicStreamTransient, opened: Callable[[], None],
                 refused: Callable[[str], None]) -> None:
        self.owner = owner
        self.inner: Framer = owner.framer
        self.opened = opened
        self.refused = refused
        self.max_size = self.inner.max_size
        self.encodes_anything = self.inner.encodes_anything
        self.control_seen = False
        self._got = b""

    @property
    def pending_size(self) -> int:
        return len(self._got)

    def fresh(self) -> Framer:
        return self.inner.fresh()

    def buffered(self) -> bytes:
        return b""

    def encode(self, message: bytes) -> bytes:
        return self.inner.encode(message)

    def encode_control(self, payload: bytes) -> bytes:
        return self.inner.encode_control(payload)

    def feed(self, data: bytes) -> list[bytes]:
        need = len(OPEN) - len(self._got)
        self._got += bytes(data[:need])
        rest = bytes(data[need:])
        if not OPEN.startswith(self._got):
            why = "its first stream did not open with the taps-p2p preamble"
            self.refused(why)
            raise DeframingError(f"quic-ice: {why}")
        if len(self._got) < len(OPEN):
            return []
        self.owner.framer = self.inner
        self.opened()
        return self.inner.feed(rest) if rest else []

    def eof(self) -> list[bytes]:
        why = "its first stream ended before the taps-p2p preamble"
        self.refused(why)
        raise DeframingError(f"quic-ice: {why}")


def _open_first_stream(t: QuicStreamTransient) -> None:
    """Write `OPEN` on the client's first stream now, through the stream's own write path
    (so its offsets count it, and on_sent / on_acked of later messages stay exact), with
    no callbacks of its own (Rule 4)."""
    inner = t.framer
    t.framer = _Preamble(inner)
    try:
        t.write_ready([Pending(OutMessage(b""), None)])
    finally:
        t.framer = inner


def _peer_addr(path: DatagramPath) -> tuple[str, int]:
    return (str(path.remote[0]), int(path.remote[1]))


class PeerQuicStack:
    """The built-in `quic-ice` stack (StackInfo in taps_post.policy.catalog)."""

    name = NAME
    ip_protocol = "udp"

    async def connect(self, spec: AttemptSpec) -> QuicStreamTransient:
        """The first stream of a QUIC connection to the peer over `spec.path` (Rules 2, 4,
        5); the path is closed when this raises."""
        loop = asyncio.get_running_loop()
        path = _path(spec.path, "connect")
        session: _PeerSession | None = None
        try:
            pins = _fingerprints(spec.peer_fingerprints, "connect")
            identity = _identity(spec.identity, "connect")
            s = spec.settings
            own = dataclasses.replace(
                spec, settings=dataclasses.replace(s, alpn=(ALPN,), verify_peer=False,
                                                   dane="off", zero_rtt=False,
                                                   session_cache=False),
                pinned=(), identity=identity, tlsa=None, early=None)
            config = client_configuration(own)
            config.server_name = None  # Rule 3: no SNI
            trust = Trust(pins, verify=False, tlsa=None, dane="off", host=None)
            quic = QuicConnection(configuration=config)  # no ticket handler: none kept
            peer = _peer_addr(path)
            session = _PeerSession(quic, peer, framer=spec.framer, max_size=s.max_size,
                                   interface=path.interface,
                                   per_msg_reliability=s.per_msg_reliability, trust=trust,
                                   recv_budget=s.recv_budget, linger=s.linger,
                                   allow_early=False)
            session.connection_made(_PathTransport(path, session))
            session.owns_transport = True
            session.remote_address = peer
            path.receive(session.feed)
            session.connect(peer, transmit=False)
            transient = session.new_stream()
            _open_first_stream(transient)
            session.transmit()
            await session.established()
            transient.rtt_ms = session.handshake_ms
            transient.established_ms = (loop.time() - session.started) * 1000.0
            transient.session_reused = False
            return transient
        except BaseException:
            if session is not None:
                session.shutdown()
            path.receive(None)
            path.close()
            raise

    async def listen(self, spec: ListenSpec) -> PeerQuicListening:
        """Accept the one connection the peer opens over `spec.path` (Rules 2, 4, 6)."""
        path = _path(spec.path, "listen")
        try:
            pins = _fingerprints(spec.peer_fingerprints, "listen")
            identity = _identity(spec.identity, "listen")
            own = dataclasses.replace(
                spec, settings=dataclasses.replace(spec.settings, alpn=(ALPN,),
                                                   zero_rtt=False),
                identity=identity)
            config = server_configuration(own)
        except BaseException:
            path.receive(None)
            path.close()
            raise
        auth = PeerClients(required=True, pins=pins, cadata=b"")
        return PeerQuicListening(spec, path, config, auth)


class PeerQuicListening:
    """The listening end of one quic-ice connection (Rule 6)."""

    stack = NAME

    def __init__(self, spec: ListenSpec, path: DatagramPath, config: Any,
                 auth: PeerClients) -> None:
        self.loop = asyncio.get_running_loop()
        self._spec = spec
        self._path = path
        self._config = config
        self._auth = auth
        self.port = int(path.local[1])
        self.session: _PeerSession | None = None
        self.peer_fingerprint: str | None = None
        """The fingerprint of the peer's accepted certificate, once it was accepted."""
        self.first: QuicStreamTransient | None = None
        """The connection's first stream, once delivered to on_transient."""
        self._held: list[QuicStreamTransient] = []
        """Streams the peer opened before its first stream was delivered (Rule 4)."""
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._ready.add_done_callback(_retrieve)
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(
            max(spec.settings.handshake_timeout, 0.001), self._timed_out)
        self._closed = False
        path.receive(self._first_datagram)

    def __repr__(self) -> str:
        return f"<PeerQuicListening over {self._path!r}>"

    async def wait_connected(self) -> None:
        """Return once the peer's connection is established and its certificate accepted;
        raise why not (ClientAuthError, QuicClosedError, TimeoutError, ConnectionError)."""
        await asyncio.shield(self._ready)

    @property
    def handshakes(self) -> int:
        """1 while the connection's handshake is in progress (Listener.handshakes)."""
        s = self.session
        return 1 if s is not None and s.is_open and not s.handshake_done else 0

    # ---- the connection --------------------------------------------------------------------

    def _first_datagram(self, data: bytes) -> None:
        """Make the connection on the first QUIC Initial (Rule 6); drop anything else."""
        if self._closed or self.session is not None:
            return
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE or not data[0] & 0x80:
            return  # an Initial is a long-header packet in a datagram of 1,200 bytes or more
        config = self._config
        try:
            header = pull_quic_header(Buffer(data=data),
                                      host_cid_length=config.connection_id_length)
        except ValueError:
            return
        if header.packet_type != QuicPacketType.INITIAL or \
                header.version not in config.supported_versions:
            return
        spec = self._spec
        s = spec.settings
        quic = QuicConnection(configuration=config,
                              original_destination_connection_id=header.destination_cid)
        peer = _peer_addr(self._path)
        session = _PeerSession(quic, peer, framer=spec.framer, max_size=s.max_size,
                               interface=self._path.interface, on_stream=self._on_stream,
                               per_msg_reliability=s.per_msg_reliability, allow_early=False,
                               client_auth=self._auth, recv_budget=s.recv_budget,
                               linger=s.linger, on_change=self._changed)
        self.session = session
        session.connection_made(_PathTransport(self._path, session))
        session.owns_transport = True
        session.remote_address = peer
        self._path.receive(session.feed)
        session.feed(data)

    def _changed(self) -> None:
        session = self.session
        if session is None or self._ready.done():
            return
        v = session.verdict()
        if v is False:
            return
        self._cancel_timer()
        if isinstance(v, BaseException):
            self._ready.set_exception(v)
            self._drop_held()
        else:
            self.peer_fingerprint = session.client_fingerprint
            self._ready.set_result(None)

    def _on_stream(self, t: QuicStreamTransient) -> None:
        """A stream the peer opened that no carrier accepted: the first one once its `OPEN`
        was read, later ones (forks) to on_transient after it (Rule 4)."""
        session = self.session
        if session is None or not session.handshake_done or not session.client_verified:
            t.abort()  # never reached (streams follow the accepted handshake): Rule 2 holds
            return
        t.stack = NAME
        if t.stream_id == 0 and self.first is None:
            t.framer = _Opening(t, lambda: self._opened(t), self._refused)
            return
        if self.first is None:
            self._held.append(t)
            return
        self._spec.on_transient(t)

    def _opened(self, t: QuicStreamTransient) -> None:
        self.first = t
        self._spec.on_transient(t)
        held, self._held = self._held, []
        for h in held:
            if h.is_open:
                self._spec.on_transient(h)

    def _refused(self, why: str) -> None:
        session = self.session
        if session is not None:
            self.loop.call_soon(session.shutdown, QuicErrorCode.CONNECTION_REFUSED,
                                f"not a quic-ice peer: {why}")

    def _drop_held(self) -> None:
        held, self._held = self._held, []
        for h in held:
            h.abort()

    def _timed_out(self) -> None:
        self._timer = None
        if self._ready.done():
            return
        why = (f"no quic-ice connection established over {self._path!r} within "
               f"listener.handshakeTimeout ({self._spec.settings.handshake_timeout:g} s)")
        self._ready.set_exception(TimeoutError(why))
        self._drop_held()
        session = self.session
        if session is not None and session.is_open:
            session.shutdown(QuicErrorCode.CONNECTION_REFUSED, "handshake timeout")
        else:
            self._release_path()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release_path(self) -> None:
        self._path.receive(None)
        self._path.close()

    async def aclose(self) -> None:
        """Close the connection (the peer gets CONNECTION_CLOSE) and the path."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        if not self._ready.done():
            self._ready.set_exception(ConnectionError("the quic-ice listener was closed"))
        self._drop_held()
        session = self.session
        if session is None:
            self._release_path()
            return
        session.shutdown()
        await asyncio.sleep(0)  # let the CONNECTION_CLOSE go out (the path closes after)
        await session.settle()


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Nobody may ask a listener how it came out: its failure is not an unhandled error."""
    if not fut.cancelled():
        fut.exception()

