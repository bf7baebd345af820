"""aioquic configurations built from what the decision and the endpoints ask for, and what a
server must prove beyond them.

Rule 1: one function per side, `client_configuration(AttemptSpec)` and
`server_configuration(ListenSpec)`: the settings they read are the only ones that reach
aioquic, so a new policy property that changes QUIC's behaviour shows up here.
Rule 2: verification is CERT_REQUIRED unless the policy says `verifyPeer: false`; pinned
certificates (the Remote's) are the only trust anchors when given, else the system's CA file.
Rule 3: public `QuicConfiguration` routes only (its documented fields, `load_verify_locations`);
the fields aioquic marks internal are set through `compat`.
Rule 4: a pin means "this certificate", as over TLS (taps_post.stacks.tls): `Trust.check`
compares the server's certificate with the pinned fingerprints after every full handshake,
whatever `verifyPeer` says, and raises PinMismatchError (racing: tls_verify). aioquic only
uses pins as trust anchors, and not at all under `verifyPeer: false`.
Rule 5: a resumed handshake shows no certificate (TLS 1.3 PSK), so a session ticket carries
the `Origin` proven by the connection that received it (`QuicTicket`), and a connection
resumes only with a ticket whose origin meets its own `Trust` (`Trust.admits`): with pins,
the issuing server presented a pinned certificate; with verification, it was verified (against
the system CAs when no pins are given). Any other ticket is not offered at all (a full
handshake instead), so neither resumption nor 0-RTT data bypasses a pin or a verification
the ticket's first connection did not make.
Rule 6: a listener under `security.clientAuth` request or require asks every client for its
certificate (`compat.request_client_certificate`: aioquic checks the client's CertificateVerify
signature, nothing else) and `ClientAuth.check` decides once the handshake completed, against
the Local's `trusted` certificates: a pinned one by fingerprint, or one they signed (as CAs).
`require` refuses a client without a certificate; both refuse one they do not trust. A
resumed handshake carries no certificate (TLS 1.3 PSK), and aioquic's server, asked for one,
expects a client Certificate on a resumed handshake too (and fails it): so such a listener
issues no session tickets at all, and every connection is a full handshake (no resumption,
no 0-RTT). TLS 1.3 lets the client finish its handshake before the server has seen its
certificate: a refused client's connect() succeeds and its carrier fails at once with the
close (QuicClosedError, CRYPTO_ERROR plus certificate_required or bad_certificate).
Rule 8: DANE (stacks/dane.py) as over TLS (stacks/tls.py Rule 6), with the peer's whole chain
(`compat.peer_chain`). Under `opportunistic` verification stays as Rule 2 says (PKIX and the
name) and `Trust.check` refuses a validated usable set that does not match on top of it:
DANE only adds refusals. Only under `require`, when a validated usable TLSA set decides the
peer (`dane.defers_pkix`), does aioquic verify nothing (CERT_NONE) and `Trust.check` accept
the server only on a DANE match, after the pins; under `require` a set that cannot decide is
refused. A resumed handshake shows no certificate, so a ticket's Origin records the TLSA
records its connection matched (`Origin.dane`), and wherever DANE applies (a validated usable
set, `Trust.dane_applies`) only a ticket that matched the very same records is offered
(`Trust.admits`), and under `opportunistic` only one that was PKIX-verified as well.
Rule 7: the initial flow-control limits come from carrier.recvBudget (`flow_windows`): a
stream may receive one window before its first MAX_STREAM_DATA, the connection two; the
session extends a stream's limit as aioquic delivers its bytes in order (not while its
carrier is over its receive budget), and the connection's only as its carriers consume
(session, Rule 8).
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Sequence
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import SessionTicket, verify_certificate

from ...certs import Certificate, fingerprint_of_der
from ...decision.names import TlsaRecord, TlsaSet
from .. import dane
from ..base import AttemptSpec, ListenSpec
from ..tls import PinMismatchError
from .compat import offer_datagram_frames, set_identity, set_peer_verification
from .wire import DATAGRAM_FRAME_SIZE

__all__ = ["CERTIFICATE_REQUIRED", "ClientAuth", "ClientAuthError", "Origin", "QuicTicket",
           "Trust", "client_auth", "client_configuration", "client_trust",
           "flow_windows", "server_configuration", "ticket_origin", "with_origin"]


def client_configuration(spec: AttemptSpec) -> QuicConfiguration:
    s = spec.settings
    config = QuicConfiguration(is_client=True, alpn_protocols=list(s.alpn) or None,
                               server_name=spec.host, idle_timeout=max(5.0, s.conn_timeout))
    offer_datagram_frames(config, DATAGRAM_FRAME_SIZE)
    flow_windows(config, s.recv_budget)
    verify = s.verify_peer and not dane.defers_pkix(spec.tlsa, s.dane)  # Rule 8
    set_peer_verification(config, verify)
    if verify:
        if spec.pinned:
            config.load_verify_locations(
                cadata="".join(c.cert_pem for c in spec.pinned).encode("ascii"))
        else:
            config.load_verify_locations(cafile=ssl.get_default_verify_paths().cafile)
    _load_identity(config, spec.identity)
    return config


def server_configuration(spec: ListenSpec) -> QuicConfiguration:
    """A listener's configuration; ValueError without a Local certificate and its key."""
    config = QuicConfiguration(is_client=False,
                               alpn_protocols=list(spec.settings.alpn) or None)
    offer_datagram_frames(config, DATAGRAM_FRAME_SIZE)
    flow_windows(config, spec.settings.recv_budget)
    if not _load_identity(config, spec.identity):
        raise ValueError("a QUIC listener needs a Local certificate with its private key")
    return config


def flow_windows(config: QuicConfiguration, recv_budget: int) -> None:
    """Rule 7: initial MAX_STREAM_DATA of one window (carrier.recvBudget, at least 16 KiB),
    initial MAX_DATA of two."""
    window = max(int(recv_budget), 16 << 10)
    config.max_stream_data = window
    config.max_data = 2 * window


def _load_identity(config: QuicConfiguration, identity: Sequence[Certificate]) -> bool:
    """Present the first certificate that comes with its private key; False when none does."""
    for cert in identity:
        if cert.key_pem:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            set_identity(config, x509.load_pem_x509_certificate(cert.cert_pem.encode()),
                         serialization.load_pem_private_key(cert.key_pem.encode(), None))
            return True
    return False


# ---- pins and the origin of session tickets -----------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """What one connection proved about its server, and so about the tickets it received."""

    fingerprint: str | None
    """The certificate the server presented (and signed the handshake with, which aioquic
    checks even without verification); None when it presented none."""
    verified: bool
    """aioquic verified the certificate's chain, dates and name."""
    system_anchors: bool
    """... against the system's CAs (not against pinned certificates)."""
    dane: tuple[TlsaRecord, ...] = ()
    """The usable TLSA records DANE matched the server by (empty: DANE did not apply)."""
    dane_how: str | None = dataclasses.field(default=None, compare=False)
    """How DANE accepted it (stacks/dane.py `check`); None: not checked."""


@dataclasses.dataclass(frozen=True, slots=True)
class Trust:
    """What a client connection requires of its server (see Rules 4 and 5)."""

    pins: frozenset[str]
    """Fingerprints of the pinned certificates; empty when the Remote pins none."""
    verify: bool
    """The policy's verifyPeer."""
    tlsa: TlsaSet | None = None
    """The TLSA set of the server's name (None: not asked)."""
    dane: str = "off"
    """security.dane."""
    host: str | None = None
    """The name a DANE-TA match must carry."""

    @property
    def system_anchors(self) -> bool:
        return self.verify and not self.pins and not self.dane_decides

    @property
    def dane_decides(self) -> bool:
        """A validated usable TLSA set decides the server, not PKIX (Rule 8: require only)."""
        return dane.defers_pkix(self.tlsa, self.dane)

    @property
    def dane_applies(self) -> bool:
        """A validated usable TLSA set must match (alone or on top of PKIX, Rule 8)."""
        return dane.decides(self.tlsa, self.dane)

    def admits(self, origin: Origin | None) -> bool:
        """May a ticket from a connection that proved `origin` resume this one?"""
        if origin is None:  # a ticket nobody vouches for
            return not self.pins and not self.verify and not self.dane_applies
        if self.pins and origin.fingerprint not in self.pins:
            return False
        if self.dane_applies and not (  # matched the very same records (Rule 8)
                origin.dane and origin.dane == dane.usable_records(self.tlsa)):
            return False
        if self.dane_decides:
            return True
        if self.verify and not origin.verified:
            return False
        return not self.system_anchors or origin.system_anchors

    def check(self, chain: Sequence[bytes], resumed: bool, offered: Origin | None) -> Origin:
        """What a completed handshake proved: the origin of the ticket it resumed with (only
        tickets `admits()` accepts are offered, and resuming proves the server holds it), or
        the certificates it presented (`chain`, leaf first). PinMismatchError when the leaf
        is not a pinned one, then DaneError when DANE refuses it (Rule 8)."""
        if resumed:
            if offered is None:
                return Origin(None, False, False)
            how = offered.dane_how
            return dataclasses.replace(
                offered, dane_how=None if how is None else f"resumed, first {how}")
        peer_der = chain[0] if chain else None
        if peer_der is None:
            if self.pins:
                raise PinMismatchError(
                    "the peer presented no certificate, but certificates are pinned")
            how = dane.check(self.tlsa, self.dane, (), host=self.host)
            return Origin(None, False, False, dane_how=how)
        got = fingerprint_of_der(peer_der)
        if self.pins and got not in self.pins:
            raise PinMismatchError(f"the peer's certificate {got} is not one of the pinned ones")
        how = dane.check(self.tlsa, self.dane, chain, host=self.host)
        matched = dane.usable_records(self.tlsa) if self.dane_applies else ()
        if self.dane_decides:
            return Origin(got, False, False, matched, how)
        return Origin(got, self.verify, self.system_anchors, matched, how)


def client_trust(spec: AttemptSpec) -> Trust:
    return Trust(frozenset(c.fingerprint for c in spec.pinned), spec.settings.verify_peer,
                 spec.tlsa, spec.settings.dane, spec.host)


@dataclasses.dataclass
class QuicTicket(SessionTicket):
    """aioquic's SessionTicket (what aioquic resumes with) plus the Origin it came from."""

    origin: Origin | None = None


def with_origin(ticket: SessionTicket, origin: Origin | None) -> QuicTicket:
    fields = {f.name: getattr(ticket, f.name) for f in dataclasses.fields(ticket) if f.init}
    fields["origin"] = origin
    return QuicTicket(**fields)


def ticket_origin(ticket: Any) -> Origin | None:
    """The Origin a stored ticket carries; None for any other object (nobody vouches)."""
    return ticket.origin if isinstance(ticket, QuicTicket) else None


# ---- client certificates on a listener (Rule 6) ---------------------------------------------

CERTIFICATE_REQUIRED = QuicErrorCode.CRYPTO_ERROR + 116
"""How a listener closes on a client without a certificate under `require`: the TLS
certificate_required alert (RFC 8446 section 6.2, RFC 9001 section 4.8)."""
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42
"""...and on a client certificate it does not trust: bad_certificate."""


class ClientAuthError(PermissionError):
    """A listener refused a client's certificate (or its lack of one) under clientAuth;
    `error_code` is the QUIC CRYPTO_ERROR the connection is closed with."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = int(error_code)
        self.reason_phrase = message
        """With `error_code`, the shape of a QUIC close: racing.classify reads the TLS alert
        inside the CRYPTO_ERROR (bad_certificate, certificate_required: tls_verify)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientAuth:
    """What a listener requires of its clients' certificates (Rule 6)."""

    required: bool
    """`require`: a client without a certificate is refused (`request`: let in)."""
    pins: frozenset[str]
    """Fingerprints of the trusted certificates: each is accepted as itself."""
    cadata: bytes
    """The trusted certificates as PEM, used as CAs for a certificate they signed."""

    def check(self, peer_der: bytes | None) -> str | None:
        """The fingerprint of the client's accepted certificate (None: it presented none and
        none is required); ClientAuthError when refused."""
        if peer_der is None:
            if self.required:
                raise ClientAuthError("the client presented no certificate, and this "
                                      "listener requires one (clientAuth: require)",
                                      CERTIFICATE_REQUIRED)
            return None
        got = fingerprint_of_der(peer_der)
        if got in self.pins:
            return got
        from cryptography import x509

        try:
            verify_certificate(certificate=x509.load_der_x509_certificate(peer_der),
                               cadata=self.cadata)
        except Exception as exc:
            raise ClientAuthError(f"the client's certificate {got} is not trusted: {exc}",
                                  BAD_CERTIFICATE) from exc
        return got


def client_auth(spec: ListenSpec) -> ClientAuth | None:
    """The listener's ClientAuth, or None under `clientAuth: none`. ValueError for a mode it
    does not know, and for request/require with no trusted certificate (no client could
    ever be accepted: a configuration mistake, said at listen time)."""
    mode = spec.settings.client_auth
    if mode == "none":
        return None
    if mode not in ("request", "require"):
        raise ValueError(f"unknown security.clientAuth {mode!r} (none, request, require)")
    trusted: Sequence[Certificate] = spec.trusted
    if not trusted:
        raise ValueError(f"security.clientAuth {mode} on a QUIC listener needs trusted "
                         "certificates (Local.trusted: CAs or pinned client certificates)")
    return ClientAuth(required=mode == "require",
                      pins=frozenset(c.fingerprint for c in trusted),
                      cadata="".join(c.cert_pem for c in trusted).encode("ascii"))
