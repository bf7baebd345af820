"""Every aioquic detail the QUIC stack relies on that aioquic does not promise, one function each.

Rule 1: no other module of taps_post reads or writes a private (underscore) aioquic name, nor a
`QuicConfiguration` field aioquic marks "for internal purposes, not guaranteed to be stable".
Where aioquic offers no public route, the access lives here, in one function whose comment
names the detail, says why no public route exists, and which aioquic releases it was checked
against (`CHECKED`). tests/runtime/test_quic_compat.py drives each function against real
aioquic connections, so an upgrade that moves a detail fails a test naming the function; the
memory-limit ones (`govern_credit`, `stream_receive_buffered`, `pending_datagram_bytes`,
`server_knows`, `set_server_retry`, `forget_connection`, `path_validated`,
`stop_timer`, `validate_paths`) are driven by
tests/stress/test_quic_limits.py and tests/stress/test_quic_floods.py.
Rule 2: these functions only read or set connection or configuration state; they never drive
a connection (no datagram is sent, no timer armed), so callers keep the one place where that
happens.
Rule 3: everything else the stack needs from aioquic is public: the documented
`QuicConfiguration` fields and `load_verify_locations()`, the sans-I/O `QuicConnection`
methods, `QuicConnectionProtocol.transmit()` / `connect()` / `close()`, events, and the
server's `create_protocol`, `session_ticket_fetcher` and `session_ticket_handler` hooks.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_transport_parameters
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.tls import ExtensionType
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["CHECKED", "RecoveryState", "active_path_validated", "count_lost_packets",
           "forget_connection", "govern_credit", "handshake_confirmed",
           "offer_datagram_frames", "path_validated", "peer_certificate", "peer_chain",
           "peer_connection_id",
           "peer_disables_migration",
           "peer_max_datagram_frame_size", "pending_datagram_bytes", "pending_datagram_frames",
           "recovery_state", "refuse_early_data", "request_client_certificate", "server_knows",
           "set_identity", "set_peer_verification", "set_server_retry", "spare_connection_ids",
           "stop_timer", "stream_receive_buffered", "stream_send_offsets", "validate_paths"]

CHECKED = ("1.6.0", "1.7.2")
"""The aioquic releases every function here was read against and tested with: the lowest one
`refuse_early_data` works with and the newest one released. pyproject.toml's bound on aioquic
stays inside them."""


# ---- configuration fields aioquic marks internal ------------------------------------------


def set_identity(config: QuicConfiguration, certificate: Any, private_key: Any) -> None:
    """Present `certificate` (a cryptography x509 certificate) signed by `private_key`: what a
    listener needs, and a client offering a certificate. Both come from PEM held in memory
    (a taps_post Certificate), never from a file."""
    # Internal: QuicConfiguration.certificate and .private_key. The public route,
    # load_cert_chain(), only reads files (certfile, keyfile paths), and our certificates
    # live in memory: writing the private key to disk to read it back is worse than this.
    # Checked against aioquic 1.6.0 and 1.7.2.
    config.certificate = certificate
    config.private_key = private_key


def set_peer_verification(config: QuicConfiguration, required: bool) -> None:
    """Verify the peer's certificate chain (CERT_REQUIRED), or accept any certificate
    (CERT_NONE, the policy's `verifyPeer: false`)."""
    # Internal: QuicConfiguration.verify_mode. aioquic offers no public switch: its client
    # verifies unless this field says CERT_NONE, and its default (None) is resolved inside
    # tls.Context. Set explicitly both ways, so a change of that default cannot turn
    # verification off. Checked against aioquic 1.6.0 and 1.7.2.
    config.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_NONE


def offer_datagram_frames(config: QuicConfiguration, max_frame_size: int) -> None:
    """Advertise the `max_datagram_frame_size` transport parameter (RFC 9221): the peer may
    send DATAGRAM frames up to `max_frame_size` bytes, and knows we accept them."""
    # Internal: QuicConfiguration.max_datagram_frame_size, the only way aioquic negotiates
    # DATAGRAM frames (aioquic's own example servers pass it to the constructor the same
    # way).
    # Checked against aioquic 1.6.0 and 1.7.2.
    config.max_datagram_frame_size = max_frame_size


# ---- connection state aioquic keeps private -----------------------------------------------


def stream_send_offsets(quic: QuicConnection, stream_id: int) -> tuple[int, int] | None:
    """How far aioquic has sent one stream, and how far the peer acknowledged it, as stream
    offsets `(sent, acknowledged)`; None when aioquic holds no such stream, either because
    nothing was ever written to it or because it was discarded once all of its data and its
    FIN (or its reset) were acknowledged. `on_sent` and `on_acked` compare these offsets with
    the end of each message in the stream."""
    # Private: QuicConnection._streams (aioquic has no public lookup of a stream's state)
    # and QuicStreamSender._buffer_start (the start of the not-yet-acknowledged buffer, so
    # the contiguously acknowledged prefix: aioquic reports acknowledgements of stream data
    # through no event or callback). `next_offset` is a public property of the sender: the
    # first offset not yet handed to a packet (it moves back while lost data awaits its
    # retransmission). Checked against aioquic 1.2.0, 1.5.0, 1.6.0 and 1.7.2.
    stream = quic._streams.get(stream_id)
    if stream is None:
        return None
    sender = stream.sender
    return sender.next_offset, sender._buffer_start


def peer_max_datagram_frame_size(quic: QuicConnection) -> int | None:
    """The peer's `max_datagram_frame_size` transport parameter: None until its transport
    parameters arrived, or when the peer does not accept DATAGRAM frames (RFC 9221)."""
    # Private: QuicConnection._remote_max_datagram_frame_size. aioquic publishes no view of
    # the peer's transport parameters and no event when they arrive, and
    # send_datagram_frame() queues a frame whether or not the peer accepts DATAGRAM frames
    # (a peer that does not closes the connection with PROTOCOL_VIOLATION), so we must ask
    # before sending. Checked against aioquic 1.2.0, 1.5.0, 1.6.0 and 1.7.2.
    size: int | None = quic._remote_max_datagram_frame_size
    return size


def peer_certificate(quic: QuicConnection) -> bytes | None:
    """The (DER) certificate the peer presented in this connection's handshake: None before
    it arrived, and after a resumed handshake, where TLS 1.3 sends no certificate. A client
    reads it once the handshake completed, to compare it with the pinned fingerprints."""
    # Public but undocumented: QuicConnection.tls (None until the connection started).
    # Private: tls.Context._peer_certificate, the cryptography x509.Certificate parsed from
    # the peer's Certificate message (its signature over the handshake is checked before
    # the handshake completes, with or without verification). aioquic has no accessor and
    # its HandshakeCompleted event carries no certificate; the TLS context consults it only
    # for its own chain check, against trust anchors, never by fingerprint.
    # Checked against aioquic 1.6.0 and 1.7.2.
    context = getattr(quic, "tls", None)
    cert = getattr(context, "_peer_certificate", None)
    if cert is None:
        return None
    der: bytes = cert.public_bytes(Encoding.DER)
    return der


def peer_chain(quic: QuicConnection) -> tuple[bytes, ...]:
    """The (DER) certificates the peer presented, leaf first, then the rest of its
    Certificate message in the order sent: what DANE matches against (stacks/dane.py; a
    DANE-TA record names a certificate above the leaf). Empty before the certificate
    arrived and after a resumed handshake, like `peer_certificate`."""
    # Private: tls.Context._peer_certificate and tls.Context._peer_certificate_chain, the
    # cryptography x509 certificates parsed from the peer's Certificate message (aioquic
    # builds its own verification from them and offers no accessor; HandshakeCompleted
    # carries none). Checked against aioquic 1.6.0 and 1.7.2.
    leaf = peer_certificate(quic)
    if leaf is None:
        return ()
    rest = getattr(getattr(quic, "tls", None), "_peer_certificate_chain", None) or ()
    return (leaf, *(c.public_bytes(Encoding.DER) for c in rest))


def refuse_early_data(quic: QuicConnection) -> bool:
    """Make a server connection issue session tickets that allow no early data, so clients
    resuming with them use a 1-RTT handshake (the listener's policy avoids or prohibits
    0-RTT). Returns False while the connection's TLS context does not exist yet (no Initial
    packet processed): call it again after the next datagram. Call it before the client's
    Finished arrives, which is when the ticket is issued; the first datagram received is
    always early enough, because the client cannot send Finished before our reply."""
    # Public but undocumented: QuicConnection.tls, created by the private _initialize() on
    # the first Initial packet a server receives. Private: tls.Context._max_early_data, the
    # `max_early_data_size` written into every NewSessionTicket. aioquic sets it to
    # MAX_EARLY_DATA for every server with no configuration option
    # (QuicConfiguration has none), and the server-side ticket fetcher cannot refuse 0-RTT
    # alone: the TLS context accepts early data whenever the ClientHello offers it and the
    # ticket resumes, and returning no ticket would refuse resumption too.
    # Checked against aioquic 1.6.0 and 1.7.2. Before 1.6.0 the server issued its ticket in
    # its first flight, while processing the ClientHello, so setting this after the first
    # datagram is too late there; only replacing the private _initialize() would do.
    context = getattr(quic, "tls", None)
    if context is None:
        return False
    context._max_early_data = None
    return True


def pending_datagram_frames(quic: QuicConnection) -> int:
    """How many DATAGRAM frames handed to `send_datagram_frame()` aioquic still holds, not
    yet written into any packet. aioquic writes them first in, first out, so a caller that
    counts what it handed over knows which frames have left: `on_sent` fires for those only,
    and frames still held when the connection ends get `on_send_error`, not a silent
    `on_sent`."""
    # Private: QuicConnection._datagrams_pending, the deque send_datagram_frame() appends to
    # and _write_application() pops from when a frame fits the packet being built (a full
    # congestion window or pacing leaves frames there across transmits). aioquic reports no
    # event when a frame is written. Checked against aioquic 1.7.2 (the one installed here;
    # 1.6.0 not re-read).
    return len(quic._datagrams_pending)


@dataclass(frozen=True, slots=True)
class RecoveryState:
    """aioquic's loss recovery and congestion control figures for one connection."""

    smoothed_rtt: float | None
    """Seconds (RFC 9002 smoothed_rtt); None before the first RTT sample."""
    rtt_variance: float | None
    congestion_window: int
    """Bytes."""
    packets_sent: int
    """Packets sent so far (all packet number spaces)."""
    packets_lost: int | None
    """Packets declared lost so far; None unless `count_lost_packets()` was called first."""


_LOST = "_taps_post_lost"
"""The attribute under which count_lost_packets() keeps its counter on the recovery object."""


def count_lost_packets(quic: QuicConnection) -> None:
    """Start counting the packets aioquic declares lost on this connection (by its ACK-based
    loss detection or a probe timeout), for `recovery_state().packets_lost`. Call once, right
    after creating the connection."""
    # Private: QuicConnection._loss (the QuicPacketRecovery, created once in __init__) and
    # its _on_packets_lost(), through which every declared loss passes (loss detection,
    # PTO, discarded spaces do not: they are not losses). aioquic keeps no loss counter and
    # emits no event, only qlog records. The wrapper is set on the instance, calls the
    # original with the same arguments and only counts. Checked against aioquic 1.7.2 (the
    # one installed here; 1.6.0 not re-read).
    recovery = quic._loss
    if hasattr(recovery, _LOST):
        return
    original = recovery._on_packets_lost
    setattr(recovery, _LOST, 0)

    def counting(**kwargs: Any) -> None:
        packets = list(kwargs.pop("packets"))
        setattr(recovery, _LOST, getattr(recovery, _LOST) + len(packets))
        original(packets=packets, **kwargs)

    recovery._on_packets_lost = counting  # type: ignore[method-assign]


def recovery_state(quic: QuicConnection) -> RecoveryState:
    """The connection's RTT estimate, congestion window and packet counts, read now."""
    # Private: QuicConnection._loss (QuicPacketRecovery) and its _rtt_initialized,
    # _rtt_smoothed and _rtt_variance (RFC 9002 section 5.3 estimator state; aioquic
    # exposes them only in qlog events), and QuicConnection._packet_number, the next packet
    # number, which aioquic shares across its packet number spaces, so it counts the packets
    # sent (reset only by a Retry or version negotiation, before any application data).
    # congestion_window is a public property of QuicPacketRecovery.
    # Checked against aioquic 1.7.2 (the one installed here; 1.6.0 not re-read).
    recovery = quic._loss
    measured = bool(recovery._rtt_initialized)
    lost = getattr(recovery, _LOST, None)
    return RecoveryState(
        smoothed_rtt=float(recovery._rtt_smoothed) if measured else None,
        rtt_variance=float(recovery._rtt_variance) if measured else None,
        congestion_window=int(recovery.congestion_window),
        packets_sent=int(quic._packet_number),
        packets_lost=None if lost is None else int(lost))


def request_client_certificate(quic: QuicConnection) -> None:
    """Make a server connection send a CertificateRequest in its first flight, so the client
    presents its certificate (and proves its key with CertificateVerify, which aioquic
    checks). aioquic checks nothing else about a client certificate: the caller reads it with
    `peer_certificate()` once the handshake completed and decides. A client with no
    certificate answers with an empty Certificate message and the handshake completes.
    Call right after creating the connection, before its first datagram arrives."""
    # Private: tls.Context._request_client_certificate (commented "For test purposes only":
    # aioquic has no configuration option for it) and QuicConnection._initialize(), which
    # creates the TLS context when the first Initial packet arrives and processes the
    # ClientHello in the same call, so the flag must be set the moment the context exists:
    # the wrapper, set on the instance, runs the original and then sets it. Resumed
    # handshakes (PSK) send no CertificateRequest at all (RFC 8446 section 4.3.2).
    # Checked against aioquic 1.7.2 (the one installed here; 1.6.0 not re-read).
    original = quic._initialize

    def initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        quic.tls._request_client_certificate = True

    quic._initialize = initialize  # type: ignore[method-assign]


# ---- flow-control credit (docs/quic.md, "Memory limits") ------------------------------------

StreamCredit = Callable[[int, int, int], int]
"""(stream id, bytes aioquic delivered in order on it, current limit) -> the limit wanted."""
ConnectionCredit = Callable[[int, int], int]
"""(bytes received on all streams, current limit) -> the limit wanted."""


def govern_credit(quic: QuicConnection, stream_credit: StreamCredit,
                  connection_credit: ConnectionCredit) -> None:
    """Let the caller decide the flow-control credit this connection grants its peer
    (MAX_STREAM_DATA per stream, MAX_DATA for the connection) instead of aioquic's policy,
    which doubles a limit whenever more than half of it was used, however much of it the
    application left unread. Before each packet is built the callbacks are asked for the
    limit wanted; a limit never shrinks (RFC 9000 section 4.1), so returning the current one
    withholds credit. Call once, right after creating the connection."""
    # Private: QuicConnection._write_stream_limits(builder, space, stream) and
    # _write_connection_limits(builder, space), called while every packet is built. They
    # raise QuicStream.max_stream_data_local (when receiver.highest_offset * 2 exceeds it)
    # and the Limit _local_max_data.value (when .used * 2 exceeds it), then write a frame
    # when the value differs from what was sent. The wrappers, set on the instance, set the
    # value the caller wants (not asked once the receiver is_finished: FIN or reset came),
    # hide the field the doubling reads (highest_offset, used: read by nothing else in
    # those two methods) for the length of the call, and let aioquic's
    # own code write the frames. aioquic offers no public knob (QuicConfiguration.max_data
    # and max_stream_data are only the initial limits). Checked against aioquic 1.6.0 and
    # 1.7.2 (1.6.0's _write_connection_limits doubles MAX_STREAMS in the same loop; `used`
    # is hidden only on _local_max_data, so the stream-count limits keep aioquic's policy).
    write_stream = quic._write_stream_limits
    write_connection = quic._write_connection_limits
    max_data = quic._local_max_data

    def stream_limits(builder: Any, space: Any, stream: Any) -> None:
        current = stream.max_stream_data_local
        if not current:  # our own unidirectional streams: nothing to receive
            return
        receiver = stream.receiver
        if not receiver.is_finished:  # FIN or reset received: no credit to give any more
            wanted = stream_credit(stream.stream_id, receiver.starting_offset(), current)
            if wanted > current:
                stream.max_stream_data_local = wanted
        highest = receiver.highest_offset
        receiver.highest_offset = 0
        try:
            write_stream(builder=builder, space=space, stream=stream)
        finally:
            receiver.highest_offset = highest

    def connection_limits(builder: Any, space: Any) -> None:
        used = max_data.used
        wanted = connection_credit(used, max_data.value)
        if wanted > max_data.value:
            max_data.value = wanted
        max_data.used = 0
        try:
            write_connection(builder=builder, space=space)
        finally:
            max_data.used = used

    quic._write_stream_limits = stream_limits  # type: ignore[method-assign]
    quic._write_connection_limits = connection_limits  # type: ignore[method-assign]


def stream_receive_buffered(quic: QuicConnection) -> int:
    """Bytes aioquic holds received but not yet delivered (out of order, behind a gap), over
    all streams of the connection: what a peer can pin in aioquic itself, bounded by the
    credit granted (tests and the memory figures read it)."""
    # Private: QuicConnection._streams and QuicStreamReceiver._buffer (the bytearray of data
    # after the first gap). Checked against aioquic 1.6.0 and 1.7.2.
    return sum(len(s.receiver._buffer) for s in quic._streams.values())


def pending_datagram_bytes(quic: QuicConnection) -> int:
    """Bytes of the DATAGRAM frames aioquic still holds, not yet written into a packet."""
    # Private: QuicConnection._datagrams_pending (see pending_datagram_frames), a deque of
    # the frames' payloads. Checked against aioquic 1.6.0 and 1.7.2.
    return sum(len(d) for d in quic._datagrams_pending)


# ---- the listener (aioquic's QuicServer) ----------------------------------------------------


def server_knows(server: QuicServer, connection_id: bytes) -> bool:
    """Does the server route datagrams with this destination connection id to a connection
    already? (False: an Initial with it would create a new connection.)"""
    # Private: QuicServer._protocols, its table of connection ids; aioquic has no lookup,
    # and QuicServer.datagram_received decides "new connection" by exactly this test.
    # Checked against aioquic 1.6.0 and 1.7.2.
    return connection_id in server._protocols


def validate_paths(quic: QuicConnection) -> bool:
    """Count this server connection's peer address as validated (a Retry token it sent
    back proved it, RFC 9000 section 8.1.2), lifting the 3x anti-amplification limit, so
    the server's whole first flight goes out at once instead of an RTT at a time. Returns
    False while the connection has no path yet (before its first datagram)."""
    # Private: QuicConnection._network_paths and QuicNetworkPath.is_validated. aioquic's
    # server validates Retry tokens but never marks the path (it counts only a Handshake
    # packet), and offers no way to. Checked against aioquic 1.6.0 and 1.7.2.
    paths = quic._network_paths
    for path in paths:
        path.is_validated = True
    return bool(paths)


def forget_connection(server: QuicServer, protocol: QuicConnectionProtocol) -> list[bytes]:
    """Make the server forget one connection now: its connection ids no longer route to it
    and its timer is cancelled, so no datagram is ever sent for it again and nothing keeps
    it alive (a listener's handshake that timed out, its peer's address never validated).
    Returns the connection ids it was known by: the caller drops what still comes to them,
    or the peer's next datagram (an Initial carrying only an ACK) would open a new
    connection aioquic refuses with "Packet contains no CRYPTO frame"."""
    # Private: QuicServer._protocols (its table of connection ids) and
    # _connection_terminated(protocol), which removes every connection id of `protocol`
    # from it (aioquic calls it on ConnectionTerminated); the timer through stop_timer().
    # aioquic has no public way to drop a connection without the closing period (RFC 9000
    # section 10.2: which is for a peer that may still send, here an address nobody
    # validated). Checked against aioquic 1.6.0 and 1.7.2.
    cids = [cid for cid, proto in server._protocols.items() if proto is protocol]
    server._connection_terminated(protocol)
    stop_timer(protocol)
    return cids


def stop_timer(protocol: QuicConnectionProtocol) -> None:
    """Cancel the loop timer aioquic's protocol keeps for its connection (retransmissions,
    idle timeout, closing period): nothing more is sent or reported for it. A client whose
    closing period outlasts carrier.linger releases its socket this way."""
    # Private: QuicConnectionProtocol._timer (and _timer_at), set by its _transmit(); no
    # public way to stop a connection's timer. Checked against aioquic 1.6.0 and 1.7.2.
    timer = protocol._timer
    if timer is not None:
        timer.cancel()
        protocol._timer = None
        protocol._timer_at = None


def path_validated(quic: QuicConnection) -> bool:
    """Has this server connection's peer proven its address: a Handshake packet came from
    it (RFC 9000 section 8.1), so it holds our Initial keys' reply, not a spoofed source?"""
    # Private: QuicConnection._network_paths and QuicNetworkPath.is_validated, set when a
    # Handshake packet is received on the path (or by path validation). aioquic publishes
    # no view of its paths. Checked against aioquic 1.6.0 and 1.7.2.
    return any(path.is_validated for path in quic._network_paths)


def set_server_retry(server: QuicServer, handler: QuicRetryTokenHandler | None) -> None:
    """Make the server answer Initials without a token with a Retry (address validation,
    RFC 9000 section 8.1.2) while `handler` is set, and validate the tokens that come back
    with it; None: no Retry. The same handler must be kept across toggles, so that tokens it
    issued still validate."""
    # Private: QuicServer._retry, which its constructor sets from the `retry` flag once;
    # aioquic offers no way to turn Retry on or off under load. datagram_received reads it
    # for each new connection only. Checked against aioquic 1.6.0 and 1.7.2 (1.6.0's token
    # handler takes positional arguments, called by QuicServer itself only).
    server._retry = handler  # type: ignore[assignment]  # aioquic annotates it without None


def stream_discarded(quic: QuicConnection, stream_id: int) -> bool:
    """aioquic forgot this stream for good (both of its halves ended and were acknowledged):
    no event will name it again, and a frame for it is ignored, so the session may forget it
    too (its maps would otherwise only grow)."""
    # Private: QuicConnection._stream_is_discarded(stream_id) (the stream-id watermarks
    # aioquic keeps of discarded streams); no public lookup. Checked against aioquic 1.7.2;
    # where it is missing, streams are never taken as discarded (kept, as before).
    discarded = getattr(quic, "_stream_is_discarded", None)
    return bool(discarded(stream_id)) if discarded is not None else False


# ---- connection migration (docs/quic.md, "Connection migration") ---------------------------


def handshake_confirmed(quic: QuicConnection) -> bool:
    """Is the handshake confirmed (a client received HANDSHAKE_DONE, RFC 9001 section
    4.1.2)? RFC 9000 section 9 forbids migrating before that, and HandshakeCompleted comes
    earlier (when our side of the handshake completed)."""
    # Private: QuicConnection._handshake_confirmed, set by _confirm_handshake(); aioquic
    # emits no event for it. Checked against aioquic 1.7.2 (the one installed here; 1.6.0
    # not re-read).
    return bool(quic._handshake_confirmed)


def peer_connection_id(quic: QuicConnection) -> bytes:
    """The connection id our packets carry now (the peer's, chosen by the peer): a
    migration switches to another one (`change_connection_id()`), so that an observer of
    both paths cannot link them (RFC 9000 section 9.5)."""
    # Private: QuicConnection._peer_cid (a QuicConnectionId) and its public `cid`; aioquic
    # has no accessor. Checked against aioquic 1.7.2 (1.6.0 not re-read).
    cid: bytes = quic._peer_cid.cid
    return cid


def spare_connection_ids(quic: QuicConnection) -> int:
    """How many unused connection ids the peer issued us (NEW_CONNECTION_ID): with none,
    `change_connection_id()` does nothing and a migration keeps the current id."""
    # Private: QuicConnection._peer_cid_available, the list change_connection_id() pops
    # from. Checked against aioquic 1.7.2 (1.6.0 not re-read).
    return len(quic._peer_cid_available)


def active_path_validated(quic: QuicConnection) -> bool:
    """Has the path this connection sends on now (`get_peer_address()`) been validated?
    A server whose client migrated sends to the new address at once, within 3x what it
    received from there (anti-amplification), until its PATH_CHALLENGE is answered."""
    # Private: QuicConnection._network_paths (the active path first) and
    # QuicNetworkPath.is_validated. aioquic publishes no view of its paths. Checked against
    # aioquic 1.7.2 (1.6.0 not re-read).
    paths = quic._network_paths
    return bool(paths) and bool(paths[0].is_validated)


def peer_disables_migration(quic: QuicConnection) -> bool:
    """Did the peer send the `disable_active_migration` transport parameter (RFC 9000
    section 18.2)? Then we must not send from another local address: a migration is
    refused (the carrier re-races instead). False before the parameters arrived."""
    # Public but undocumented: QuicConnection.tls and tls.Context.received_extensions (the
    # peer's EncryptedExtensions on a client), parsed again with aioquic's public
    # pull_quic_transport_parameters(). aioquic parses the parameter but ignores it, and
    # keeps no copy of the peer's transport parameters. Checked against aioquic 1.7.2
    # (1.6.0 not re-read).
    context = getattr(quic, "tls", None)
    for ext_type, data in getattr(context, "received_extensions", None) or ():
        if ext_type == ExtensionType.QUIC_TRANSPORT_PARAMETERS:
            try:
                params = pull_quic_transport_parameters(Buffer(data=data))
            except ValueError:
                return False
            return bool(params.disable_active_migration)
    return False
