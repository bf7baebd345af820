"""aioquic configurations built from what the decision and the endpoints ask for.

Rule 1: one function per side, `client_configuration(AttemptSpec)` and
`server_configuration(ListenSpec)`: the settings they read are the only ones that reach
aioquic, so a new policy property that changes QUIC's behaviour shows up here.
Rule 2: verification is CERT_REQUIRED unless the policy says `verifyPeer: false`; pinned
certificates (the Remote's) are the only trust anchors when given, else the system's CA file.
Rule 3: public `QuicConfiguration` routes only (its documented fields, `load_verify_locations`);
the fields aioquic marks internal are set through `compat`.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from aioquic.quic.configuration import QuicConfiguration

from ...certs import Certificate
from ..base import AttemptSpec, ListenSpec
from .compat import offer_datagram_frames, set_identity, set_peer_verification
from .wire import DATAGRAM_FRAME_SIZE

__all__ = ["client_configuration", "server_configuration"]


def client_configuration(spec: AttemptSpec) -> QuicConfiguration:
    s = spec.settings
    config = QuicConfiguration(is_client=True, alpn_protocols=list(s.alpn) or None,
                               server_name=spec.host, idle_timeout=max(5.0, s.conn_timeout))
    offer_datagram_frames(config, DATAGRAM_FRAME_SIZE)
    set_peer_verification(config, s.verify_peer)
    if s.verify_peer:
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
    if not _load_identity(config, spec.identity):
        raise ValueError("a QUIC listener needs a Local certificate with its private key")
    return config


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
