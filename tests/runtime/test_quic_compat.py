"""taps_post.stacks.quic.compat against real aioquic connections: one test per detail.

Each compat function reaches one private aioquic name or one QuicConfiguration field aioquic
marks internal; the tests here drive it against genuine aioquic objects, so an aioquic upgrade
that renames or changes that detail fails the test named after the function, not some
distant QUIC test. One more test checks that no other module of the QUIC package sets those
internal fields. Most tests run a client and a server
`QuicConnection` in memory with aioquic's own sans-I/O API (`datagrams_to_send`,
`receive_datagram`, `handle_timer`, time passed in): no sockets, no event loop. The last group
pins the public aioquic behaviours `QuicSession` builds on instead of copying aioquic's code:
its `transmit()` writing to the transport given to `connection_made`, and attribute names that
must not collide with ours.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import taps_post as tp
from helpers import disable_active_migration
from taps_post.stacks import quic as quic_stack
from taps_post.stacks.quic.compat import (
    active_path_validated,
    count_lost_packets,
    handshake_confirmed,
    offer_datagram_frames,
    peer_certificate,
    peer_connection_id,
    peer_disables_migration,
    peer_max_datagram_frame_size,
    pending_datagram_frames,
    recovery_state,
    refuse_early_data,
    request_client_certificate,
    set_identity,
    set_peer_verification,
    spare_connection_ids,
    stream_send_offsets,
)

CLIENT_ADDR = ("192.0.2.1", 50000)
SERVER_ADDR = ("192.0.2.2", 4433)
FRAME_SIZE = 65536


@pytest.fixture(scope="module")
def cert() -> tp.certs.Certificate:
    return tp.certs.self_signed(["localhost"])


@dataclass
class Pair:
    """A client and a server QuicConnection wired together in memory, sharing one clock."""

    client: QuicConnection
    server: QuicConnection
    now: float = 0.0
    client_tickets: list[SessionTicket] = field(default_factory=list)
    client_events: list[events.QuicEvent] = field(default_factory=list)
    server_events: list[events.QuicEvent] = field(default_factory=list)
    client_addr: tuple[str, int] = CLIENT_ADDR
    """Where the server sees the client's datagrams come from (a migration changes it)."""

    def _deliver(self, src: QuicConnection, dst: QuicConnection, limit: int | None = None
                 ) -> int:
        src_addr = self.client_addr if src is self.client else SERVER_ADDR
        sent = src.datagrams_to_send(now=self.now)
        for data, _addr in sent[:limit]:
            dst.receive_datagram(data, src_addr, now=self.now)
        self._drain()
        return len(sent)

    def _drain(self) -> None:
        for conn, seen in ((self.client, self.client_events),
                           (self.server, self.server_events)):
            while (event := conn.next_event()) is not None:
                seen.append(event)

    def client_to_server(self, limit: int | None = None) -> int:
        """Send the client's pending datagrams (the first `limit` of them reach the server)."""
        return self._deliver(self.client, self.server, limit)

    def exchange(self) -> None:
        """Both ways until neither side has anything to send now (timers not run)."""
        while self._deliver(self.client, self.server) + self._deliver(self.server, self.client):
            pass

    def settle(self, seconds: float = 0.2) -> None:
        """Exchange, running due timers (delayed ACKs, loss detection) for `seconds`."""
        end = self.now + seconds
        self.exchange()
        while True:
            timers = [t for t in (self.client.get_timer(), self.server.get_timer())
                      if t is not None and t <= end]
            if not timers:
                break
            self.now = max(self.now, min(timers))
            for conn in (self.client, self.server):
                at = conn.get_timer()
                if at is not None and at <= self.now:
                    conn.handle_timer(now=self.now)
            self.exchange()
        self.now = end

    def handshake(self) -> None:
        self.settle()
        assert any(isinstance(e, events.HandshakeCompleted) for e in self.client_events)
        assert any(isinstance(e, events.HandshakeCompleted) for e in self.server_events)


def _server_config(cert: tp.certs.Certificate, datagrams: bool) -> QuicConfiguration:
    config = QuicConfiguration(is_client=False)
    if datagrams:
        offer_datagram_frames(config, FRAME_SIZE)
    assert cert.key_pem is not None
    set_identity(config, x509.load_pem_x509_certificate(cert.cert_pem.encode()),
                 serialization.load_pem_private_key(cert.key_pem.encode(), None))
    return config


def _client_config(*, trust: tp.certs.Certificate | None = None,
                   datagrams: int = FRAME_SIZE) -> QuicConfiguration:
    """What config.client_configuration builds: verifying against `trust` only, or (None)
    not verifying at all."""
    config = QuicConfiguration(is_client=True, server_name="localhost")
    offer_datagram_frames(config, datagrams)
    set_peer_verification(config, trust is not None)
    if trust is not None:
        config.load_verify_locations(cadata=trust.cert_pem.encode())
    return config


def make_pair(cert: tp.certs.Certificate, *, server_datagrams: bool = True,
              ticket: SessionTicket | None = None,
              server_tickets: dict[bytes, SessionTicket] | None = None,
              client_config: QuicConfiguration | None = None) -> Pair:
    if client_config is None:
        client_config = _client_config()
    client_config.session_ticket = ticket
    tickets: list[SessionTicket] = []
    store = server_tickets if server_tickets is not None else {}
    client = QuicConnection(configuration=client_config, session_ticket_handler=tickets.append)
    client.connect(SERVER_ADDR, now=0.0)
    server = QuicConnection(
        configuration=_server_config(cert, server_datagrams),
        original_destination_connection_id=client.original_destination_connection_id,
        session_ticket_fetcher=lambda t: store.pop(t, None),
        session_ticket_handler=lambda t: store.__setitem__(t.ticket, t))
    return Pair(client, server, client_tickets=tickets)


# ---- set_identity, set_peer_verification, offer_datagram_frames ------------------------------

CRYPTO_ERROR = 0x100
BAD_CERTIFICATE = 42


def test_set_identity_serves_a_certificate_a_verifying_client_accepts(cert: Any) -> None:
    pair = make_pair(cert, client_config=_client_config(trust=cert))
    pair.handshake()


def test_set_peer_verification_required_refuses_an_untrusted_certificate(cert: Any) -> None:
    """The close taps_post.runtime.racing.classify() reads as tls_verify: CRYPTO_ERROR plus
    the bad_certificate alert (RFC 9001 section 4.8), reported by the client itself."""
    other = tp.certs.self_signed(["localhost"])
    pair = make_pair(cert, client_config=_client_config(trust=other))
    pair.settle(3.0)  # the client's closing period (3 PTO) ends with ConnectionTerminated
    assert not any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events)
    closed = [e for e in pair.client_events if isinstance(e, events.ConnectionTerminated)]
    assert [e.error_code for e in closed] == [CRYPTO_ERROR + BAD_CERTIFICATE]


def test_set_peer_verification_not_required_accepts_any_certificate(cert: Any) -> None:
    config = _client_config(trust=tp.certs.self_signed(["localhost"]))
    set_peer_verification(config, False)
    pair = make_pair(cert, client_config=config)
    pair.handshake()


def test_offer_datagram_frames_advertises_max_datagram_frame_size(cert: Any) -> None:
    pair = make_pair(cert, client_config=_client_config(datagrams=1234))
    pair.handshake()
    assert peer_max_datagram_frame_size(pair.server) == 1234


def _internal_configuration_fields() -> set[str]:
    """The QuicConfiguration fields aioquic lists under its "internal purposes" comment."""
    source = inspect.getsource(QuicConfiguration)
    marker = "# For internal purposes, not guaranteed to be stable."
    assert marker in source, "aioquic no longer marks internal fields: re-read configuration.py"
    internal = source.split(marker, 1)[1].split("\n    def ", 1)[0]
    return set(re.findall(r"^    (\w+):", internal, re.MULTILINE))


def test_internal_configuration_fields_are_set_only_in_compat() -> None:
    """Assigning one (`config.verify_mode = ...`) or passing one to the constructor
    (`QuicConfiguration(max_datagram_frame_size=...)`) anywhere in the QUIC package but
    compat.py breaks the package's rule; the public routes (load_verify_locations) are fine."""
    internal = _internal_configuration_fields()
    assert {"certificate", "private_key", "verify_mode", "max_datagram_frame_size"} <= internal
    package = Path(quic_stack.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and node.attr in internal):
                found.append(f"{path.name}:{node.lineno} sets .{node.attr}")
            elif (isinstance(node, ast.Call)
                  and ast.unparse(node.func).endswith("QuicConfiguration")):
                found += [f"{path.name}:{node.lineno} passes {k.arg}=" for k in node.keywords
                          if k.arg in internal]
    assert len(list(package.glob("*.py"))) > 3, "the package source was not found"
    assert not found, "\n".join(found)


# ---- stream_send_offsets ------------------------------------------------------------------


def test_stream_send_offsets_follow_sending_then_acknowledgement(cert: Any) -> None:
    pair = make_pair(cert)
    pair.handshake()
    sid = pair.client.get_next_available_stream_id()
    assert stream_send_offsets(pair.client, sid) is None, "no stream before the first write"
    pair.client.send_stream_data(sid, b"x" * 3000)
    assert stream_send_offsets(pair.client, sid) == (0, 0), "written, nothing sent yet"
    pair.client_to_server()
    assert stream_send_offsets(pair.client, sid) == (3000, 0), "sent, not acknowledged"
    pair.settle()
    assert stream_send_offsets(pair.client, sid) == (3000, 3000), "acknowledged"


def test_stream_send_offsets_is_none_once_a_finished_stream_was_acknowledged(
        cert: Any) -> None:
    """The progress check treats a stream aioquic forgot as wholly sent and acknowledged."""
    pair = make_pair(cert)
    pair.handshake()
    uni = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(uni, b"y" * 500, end_stream=True)
    pair.client_to_server()
    assert stream_send_offsets(pair.client, uni) == (500, 0)
    pair.settle()
    # aioquic 1.6 and later have forgotten it by now, earlier releases only later: either
    # way it reads as wholly acknowledged, which is all the progress check relies on.
    assert stream_send_offsets(pair.client, uni) in (None, (500, 500))

    bidi = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(bidi, b"z" * 10, end_stream=True)
    pair.settle()
    assert stream_send_offsets(pair.client, bidi) == (10, 10), "the peer's half is still open"
    pair.server.send_stream_data(bidi, b"", end_stream=True)
    pair.settle()
    assert stream_send_offsets(pair.client, bidi) in (None, (10, 10)), "both halves done"


# ---- peer_max_datagram_frame_size ---------------------------------------------------------


def test_peer_max_datagram_frame_size_reports_the_peers_transport_parameter(
        cert: Any) -> None:
    pair = make_pair(cert)
    assert peer_max_datagram_frame_size(pair.client) is None, "before the handshake"
    pair.handshake()
    assert peer_max_datagram_frame_size(pair.client) == FRAME_SIZE
    assert peer_max_datagram_frame_size(pair.server) == FRAME_SIZE


def test_peer_max_datagram_frame_size_is_none_when_the_peer_refuses_datagrams(
        cert: Any) -> None:
    pair = make_pair(cert, server_datagrams=False)
    pair.handshake()
    assert peer_max_datagram_frame_size(pair.client) is None
    assert peer_max_datagram_frame_size(pair.server) == FRAME_SIZE


# ---- refuse_early_data --------------------------------------------------------------------


def _first_ticket(cert: Any, *, refuse: bool,
                  server_tickets: dict[bytes, SessionTicket]) -> SessionTicket:
    """A full handshake; with `refuse`, refuse_early_data() runs right after the server
    received its first datagram, as QuicSession.datagram_received does."""
    pair = make_pair(cert, server_tickets=server_tickets)
    if refuse:
        assert refuse_early_data(pair.server) is False, "no TLS context before any datagram"
    pair.client_to_server(limit=1)
    if refuse:
        assert refuse_early_data(pair.server) is True
    pair.handshake()
    pair.settle()
    assert pair.client_tickets, "the server issued a session ticket"
    return pair.client_tickets[-1]


def test_refuse_early_data_issues_tickets_that_allow_no_early_data(cert: Any) -> None:
    """Fails on aioquic before 1.6.0, which issued the ticket in the server's first flight."""
    allowed = _first_ticket(cert, refuse=False, server_tickets={})
    assert allowed.max_early_data_size is not None, "aioquic's default: early data allowed"
    refused = _first_ticket(cert, refuse=True, server_tickets={})
    assert refused.max_early_data_size is None


def test_refuse_early_data_clients_resume_without_0rtt(cert: Any) -> None:
    store: dict[bytes, SessionTicket] = {}
    ticket = _first_ticket(cert, refuse=True, server_tickets=store)
    pair = make_pair(cert, ticket=ticket, server_tickets=store)
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"early?")  # goes as 0-RTT only if the ticket allows it
    pair.client_to_server(limit=1)
    refuse_early_data(pair.server)
    pair.handshake()
    done = next(e for e in pair.server_events if isinstance(e, events.HandshakeCompleted))
    assert done.session_resumed, "the ticket still resumes the session"
    assert not done.early_data_accepted
    received = [e for e in pair.server_events if isinstance(e, events.StreamDataReceived)]
    assert b"".join(e.data for e in received) == b"early?", "sent in 1-RTT instead"


# ---- peer_certificate ------------------------------------------------------------------


def test_peer_certificate_is_what_the_server_presented_and_none_on_resumption(
        cert: Any) -> None:
    """The pin check compares this with the pinned fingerprints; a resumed handshake shows
    no certificate (so tickets carry their origin instead), nor does a client without one."""
    store: dict[bytes, SessionTicket] = {}
    pair = make_pair(cert, server_tickets=store)
    assert peer_certificate(pair.client) is None, "nothing received yet"
    pair.handshake()
    pair.settle()
    assert peer_certificate(pair.client) == ssl.PEM_cert_to_DER_cert(cert.cert_pem)
    assert peer_certificate(pair.server) is None, "the client presented no certificate"
    assert pair.client_tickets, "the server issued a session ticket"
    resumed = make_pair(cert, ticket=pair.client_tickets[-1], server_tickets=store)
    resumed.handshake()
    done = next(e for e in resumed.client_events if isinstance(e, events.HandshakeCompleted))
    assert done.session_resumed
    assert peer_certificate(resumed.client) is None


# ---- public aioquic behaviour QuicSession builds on -----------------------------------------


class _RecordingTransport(asyncio.DatagramTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append((bytes(data), addr))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


# ---- pending_datagram_frames, recovery_state, count_lost_packets -----------------------------


def test_pending_datagram_frames_counts_frames_no_packet_carried_yet(cert: Any) -> None:
    """Frames wait in aioquic until a transmit writes them, first in first out; one that
    fits no packet stays at the head for good (why the stack never hands one over)."""
    pair = make_pair(cert)
    pair.handshake()
    pair.client.send_datagram_frame(b"a" * 100)
    pair.client.send_datagram_frame(b"b" * 100)
    assert pending_datagram_frames(pair.client) == 2
    pair.client_to_server()
    assert pending_datagram_frames(pair.client) == 0
    assert [e.data for e in pair.server_events
            if isinstance(e, events.DatagramFrameReceived)] == [b"a" * 100, b"b" * 100]
    pair.client.send_datagram_frame(b"c" * 2000)
    pair.client.send_datagram_frame(b"d")
    pair.client_to_server()
    assert pending_datagram_frames(pair.client) == 2


def test_recovery_state_reads_rtt_window_and_packet_counts(cert: Any) -> None:
    pair = make_pair(cert)
    before = recovery_state(pair.client)
    assert (before.smoothed_rtt, before.rtt_variance, before.packets_lost) == (None, None, None)
    assert before.packets_sent == 0 and before.congestion_window > 0
    count_lost_packets(pair.client)
    pair.handshake()
    after = recovery_state(pair.client)
    assert after.smoothed_rtt is not None and after.smoothed_rtt >= 0.0
    assert after.rtt_variance is not None and after.rtt_variance >= 0.0
    assert after.packets_sent > 0 and after.packets_lost == 0
    assert after.congestion_window >= before.congestion_window // 2


def test_count_lost_packets_counts_what_loss_detection_declares_lost(cert: Any) -> None:
    """Stream data whose packets never reach the server: aioquic's probe timeout declares
    them lost and sends the data again, which then arrives."""
    pair = make_pair(cert)
    count_lost_packets(pair.client)
    count_lost_packets(pair.client)  # idempotent: one counter
    pair.handshake()
    pair.client.send_stream_data(0, b"x" * 5000)
    sent = pair.client_to_server(limit=0)  # all dropped
    assert sent > 0
    pair.settle(3.0)
    state = recovery_state(pair.client)
    assert state.packets_lost is not None and state.packets_lost >= sent
    got = b"".join(e.data for e in pair.server_events
                   if isinstance(e, events.StreamDataReceived))
    assert got == b"x" * 5000


# ---- request_client_certificate --------------------------------------------------------------


def _pair_requesting(cert: Any, client_identity: tp.certs.Certificate | None) -> Pair:
    config = _client_config()
    if client_identity is not None:
        assert client_identity.key_pem is not None
        set_identity(config,
                     x509.load_pem_x509_certificate(client_identity.cert_pem.encode()),
                     serialization.load_pem_private_key(client_identity.key_pem.encode(),
                                                        None))
    pair = make_pair(cert, client_config=config)
    request_client_certificate(pair.server)
    return pair


def test_request_client_certificate_gets_the_clients_certificate(cert: Any) -> None:
    client = tp.certs.self_signed(["client.example"])
    pair = _pair_requesting(cert, client)
    pair.handshake()
    der = peer_certificate(pair.server)
    assert der is not None
    assert tp.certs.fingerprint_of_der(der) == client.fingerprint


def test_request_client_certificate_a_client_without_one_still_completes(cert: Any) -> None:
    pair = _pair_requesting(cert, None)
    pair.handshake()
    assert peer_certificate(pair.server) is None


def test_without_request_client_certificate_the_server_sees_none(cert: Any) -> None:
    client = tp.certs.self_signed(["client.example"])
    config = _client_config()
    assert client.key_pem is not None
    set_identity(config, x509.load_pem_x509_certificate(client.cert_pem.encode()),
                 serialization.load_pem_private_key(client.key_pem.encode(), None))
    pair = make_pair(cert, client_config=config)
    pair.handshake()
    assert peer_certificate(pair.server) is None


def _client_connection() -> QuicConnection:
    return QuicConnection(configuration=_client_config())


def test_aioquic_transmit_writes_to_the_transport_given_to_connection_made(run: Any) -> None:
    """QuicSession hands aioquic an adapter (connected sockets take no address, closed ones
    drop datagrams) and lets aioquic's own transmit() and timer run, instead of a copy."""

    async def main() -> None:
        protocol = QuicConnectionProtocol(_client_connection())
        transport = _RecordingTransport()
        protocol.connection_made(transport)
        protocol.connect(SERVER_ADDR)  # transmits the Initial
        assert transport.sent, "the ClientHello went to our transport"
        assert all(addr == SERVER_ADDR for _, addr in transport.sent)

    run(main(), 5)


def _assigned_names(cls: type) -> set[str]:
    return set(re.findall(r"\bself\.(\w+)\s*(?::[^=\n]*)?=(?!=)", inspect.getsource(cls)))


def test_quic_session_attributes_do_not_collide_with_aioquic_protocol_attributes(
        run: Any) -> None:
    """QuicSession keeps its own state (connection, loop, handshake waiter, transmit handle)
    beside aioquic's protocol; a name aioquic adds later must not silently overwrite it."""

    async def main() -> None:
        base = QuicConnectionProtocol(_client_connection())
        theirs = set(vars(base)) | {n for n in dir(QuicConnectionProtocol)
                                    if not n.startswith("__")}
        ours = _assigned_names(quic_stack.QuicSession)
        assert "connection" in ours and "_out" in ours, "the source scan found nothing"
        assert ours & theirs == set()

    run(main(), 5)


# ---- connection migration: handshake_confirmed, peer_connection_id, spare_connection_ids,
# ---- active_path_validated ------------------------------------------------------------------


def test_handshake_confirmed_only_once_the_client_has_handshake_done(cert: Any) -> None:
    """HandshakeCompleted comes first; confirmation (HANDSHAKE_DONE) follows, and only then
    may a client migrate (RFC 9000 section 9)."""
    pair = make_pair(cert)
    assert not handshake_confirmed(pair.client)
    pair.exchange()
    assert any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events)
    pair.settle()
    assert handshake_confirmed(pair.client) and handshake_confirmed(pair.server)


def test_peer_connection_id_changes_with_change_connection_id(cert: Any) -> None:
    """The server issues spare connection ids once the handshake is done; the public
    change_connection_id() takes one, so the id our packets carry changes."""
    pair = make_pair(cert)
    pair.handshake()
    spare = spare_connection_ids(pair.client)
    assert spare >= 1
    before = peer_connection_id(pair.client)
    assert isinstance(before, bytes) and before
    pair.client.change_connection_id()
    assert peer_connection_id(pair.client) != before
    assert spare_connection_ids(pair.client) == spare - 1
    pair.settle()  # the server retires the old id and issues a new one
    assert spare_connection_ids(pair.client) == spare


def test_spare_connection_ids_none_means_change_connection_id_keeps_the_id(cert: Any) -> None:
    pair = make_pair(cert)
    assert spare_connection_ids(pair.client) == 0  # nothing issued before the handshake
    before = peer_connection_id(pair.client)
    pair.client.change_connection_id()
    assert peer_connection_id(pair.client) == before


def test_active_path_validated_follows_the_servers_path_validation(cert: Any) -> None:
    """A client that migrated (its datagrams come from a new address): aioquic's server
    moves its active path there on a non-probing packet (a PING), unvalidated, and
    validates it with PATH_CHALLENGE / PATH_RESPONSE."""
    pair = make_pair(cert)
    pair.handshake()
    assert active_path_validated(pair.server)
    pair.client_addr = ("192.0.2.9", 50001)
    pair.client.change_connection_id()
    pair.client.send_ping(1)
    pair.client_to_server()
    assert pair.server.get_peer_address() == pair.client_addr
    assert not active_path_validated(pair.server)
    pair.settle()
    assert pair.server.get_peer_address() == pair.client_addr
    assert active_path_validated(pair.server)
    assert any(isinstance(e, events.PingAcknowledged) and e.uid == 1
               for e in pair.client_events)


def test_peer_disables_migration_reads_the_servers_transport_parameter(cert: Any) -> None:
    """aioquic's server has no option to send disable_active_migration, so this one adds it
    to what it serializes (with aioquic's public transport parameter codec); our client
    must then see it, and a server that does not send it (aioquic's default) reads False."""
    plain = make_pair(cert)
    assert not peer_disables_migration(plain.client)  # nothing received yet
    plain.handshake()
    assert not peer_disables_migration(plain.client)

    pair = make_pair(cert)
    disable_active_migration(pair.server)
    pair.handshake()
    assert peer_disables_migration(pair.client)


@pytest.fixture(autouse=True)
def _no_stray_warnings(recwarn: Any) -> Iterator[None]:
    yield
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
