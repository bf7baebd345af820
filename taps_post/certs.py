"""Certificates for tests, demos and pinning: self-signed pairs made with `cryptography`.

Rule 1: a Certificate is PEM text plus its SHA-256 fingerprint; pinning compares
fingerprints, so a pinned peer is accepted whatever CA (if any) signed it.
Rule 2: a private key never leaves the object by accident. `repr()` and `str()` show the
fingerprint and whether a key is held, never PEM text, so a Certificate can be logged, put in
an exception message or printed inside a Local without disclosing the key.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from .errors import ArgumentError

__all__ = ["Certificate", "fingerprint_of_der", "self_signed"]


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate (and, for our own identities, its private key) in PEM form."""

    cert_pem: str = field(repr=False)
    key_pem: str | None = field(default=None, repr=False)
    _fingerprint: str = field(default="", init=False, repr=False, compare=False)
    """The fingerprint once computed: every TLS connect compares pins by fingerprint, so the
    PEM is decoded once, not once per connect."""

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex with colons (as `openssl x509 -fingerprint`)."""
        if not self._fingerprint:
            fp = fingerprint_of_der(ssl.PEM_cert_to_DER_cert(self.cert_pem))
            object.__setattr__(self, "_fingerprint", fp)  # frozen: a cache, not a change
        return self._fingerprint

    def __repr__(self) -> str:
        try:
            shown = f"sha256:{self.fingerprint}"
        except ValueError:  # not a PEM certificate: say so, still without its text
            shown = "(not a PEM certificate)"
        return f"<Certificate {shown}{' with key' if self.key_pem is not None else ''}>"

    __str__ = __repr__

    def load_into(self, context: ssl.SSLContext) -> None:
        """Use this certificate and key as our identity in `context`."""
        if self.key_pem is None:
            raise ArgumentError("this Certificate has no private key; it can only be pinned")
        # ssl.SSLContext.load_cert_chain only reads files: write a private temporary pair.
        import tempfile  # (with shutil, bz2 and lzma: only for a certificate of our own)

        with tempfile.TemporaryDirectory(prefix="taps-post-cert-") as tmp:
            cert_path = os.path.join(tmp, "cert.pem")
            key_path = os.path.join(tmp, "key.pem")
            for path, text in ((cert_path, self.cert_pem), (key_path, self.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
            context.load_cert_chain(cert_path, key_path)

    @classmethod
    def from_files(cls, cert_path: str, key_path: str | None = None) -> Certificate:
        with open(cert_path, encoding="ascii") as fh:
            cert = fh.read()
        key = None
        if key_path is not None:
            with open(key_path, encoding="ascii") as fh:
                key = fh.read()
        return cls(cert, key)


def fingerprint_of_der(der: bytes) -> str:
    import hashlib  # OpenSSL's hashes: only when a pin is checked, not for plain TCP

    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def self_signed(names: list[str] | tuple[str, ...], *, days: int = 30) -> Certificate:
    """A fresh EC P-256 key and a self-signed certificate valid for `names` (DNS or IP)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not names:
        raise ArgumentError("self_signed() needs at least one DNS name or IP address")
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[Any] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode("ascii"),
    )
