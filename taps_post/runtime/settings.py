"""Runtime settings: the effective properties of a Decision, as the runtime needs them.

Rule 1: the runtime reads properties only through this object, so every knob the runtime
honours is visible in one place and comes from the same Decision that `explain` prints.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from ..certs import Certificate, fingerprint_of_der
from ..decision.decision import Decision
from ..policy.registry import Pref

__all__ = ["Settings", "client_tls_context", "server_tls_context", "verify_pins"]


@dataclass(frozen=True, slots=True)
class Settings:
    conn_timeout: float
    attempt_delay: float
    max_size: int
    min_tls: str
    verify_peer: bool
    session_cache: bool
    alpn: tuple[str, ...]
    zero_rtt: bool
    per_msg_reliability: bool = False

    @classmethod
    def from_decision(cls, d: Decision) -> Settings:
        alpn = d.value("security.alpn")
        return cls(
            conn_timeout=d.value("connTimeout") / 1000.0,
            attempt_delay=d.value("racing.attemptDelay") / 1000.0,
            max_size=int(d.value("message.maxSize")),
            min_tls=str(d.value("security.minTlsVersion")),
            verify_peer=bool(d.value("security.verifyPeer")),
            session_cache=bool(d.value("security.sessionCache")),
            alpn=tuple(alpn) if alpn else (),
            zero_rtt=d.value("zeroRttMsg") not in (Pref.PROHIBIT, Pref.AVOID),
            per_msg_reliability=d.value("perMsgReliability") in (Pref.REQUIRE, Pref.PREFER),
        )


_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_tls_context(settings: Settings, pinned: Sequence[Certificate],
                       identity: Sequence[Certificate]) -> ssl.SSLContext:
    """A client context: system CAs, or exactly the pinned certificates when there are some."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[settings.min_tls]
    if settings.verify_peer:
        if pinned:
            for cert in pinned:
                ctx.load_verify_locations(cadata=cert.cert_pem)
        else:
            ctx.load_default_certs()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    for cert in identity:
        if cert.key_pem is not None:
            cert.load_into(ctx)
            break
    return ctx


def server_tls_context(settings: Settings, identity: Sequence[Certificate],
                       client_cas: Sequence[Certificate] = ()) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_tls]
    for cert in identity:
        if cert.key_pem is not None:
            cert.load_into(ctx)
            break
    else:
        raise ValueError("a TLS listener needs a Local certificate with its private key")
    if client_cas:
        for cert in client_cas:
            ctx.load_verify_locations(cadata=cert.cert_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    return ctx


def verify_pins(ssl_object: ssl.SSLObject | None, pinned: Sequence[Certificate]) -> None:
    """Pinning is by fingerprint: the chain check passed, now it must be one of *these*."""
    if not pinned or ssl_object is None:
        return
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the peer presented no certificate, but certificates are pinned")
    got = fingerprint_of_der(der)
    if got not in {c.fingerprint for c in pinned}:
        raise ssl.SSLError(f"the peer's certificate {got} is not one of the pinned ones")
