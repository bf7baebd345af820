"""DANE (RFC 6698, RFC 7671): the peer's certificates against the TLSA records of its name.

Rule 1: only a `validated` TLSA set counts (the AD bit from a resolver the system trusts;
decision/names.py Rule 5). An unvalidated set never accepts nor refuses a certificate: under
`opportunistic` it is ignored (PKIX as usual), under `require` the peer is refused for it.
Rule 2: the usable records are the ones `decision.names.usable()` names (one definition for
the decision and the stacks, so explain never promises what a stack refuses): DANE-TA(2) and
DANE-EE(3) with selector 0 or 1 and matching 0, 1 or 2; `leaf_only` on a stack that sees only
the peer's leaf (Rule 5). PKIX-TA(0), PKIX-EE(1) and unknown parameters are not used (RFC 7671
section 4.1, RFC 6698 section 4.1).
Rule 3: `check()` is the one place a stack asks: `security.dane` off checks nothing;
`opportunistic` requires a match only when a validated set has usable records (a mismatch is
a DaneError, whatever PKIX said); `require` requires a validated usable match and names why
when there is none (no TLSA, not validated, no usable record, mismatch). The string it
returns says how the peer was accepted, for the attempt record and the trace.
Rule 4: DANE-EE(3) matches the leaf only; names, dates and issuers do not apply (RFC 7671
section 5.1). DANE-TA(2) matches a certificate above the leaf, and the path from the leaf up
to it is validated as PKIX would from that anchor (RFC 7671 section 5.2, RFC 5280 section 6):
each certificate is issued by the next (`verify_directly_issued_by`), every certificate above
the leaf is a CA (basicConstraints cA, keyCertSign when keyUsage is present, its
pathLenConstraint not exceeded), the same for the anchor when the record names a whole
certificate (selector 0; a selector-1 record names only a key), the certificates below the
anchor are within their dates and the leaf carries the host's name. So an end-entity
certificate under the anchor cannot mint a leaf for another name. A full-certificate TA
record (2 0 0) is itself a trust anchor: the peer need not send it.
Rule 5: some stacks see only the leaf (the stdlib's ssl before Python 3.13 has no public
peer chain: `partial_chain=True`). There a TA record that names a digest cannot be checked
(the certificate it names is never seen) and is unusable on that stack; a full-certificate TA
record still works when it issued the leaf directly.
Rule 6: DANE never weakens PKIX unless the caller asked for DANE: under `opportunistic`
(the default) PKIX always runs (the stack's normal verification and name check) and a
validated usable set must match as well, so DANE only adds refusals. Only under `require`
does `defers_pkix()` let the set decide alone (RFC 7671 section 5: DANE-EE ignores names and
dates, a DANE-TA record is the trust anchor): the stack handshakes without PKIX and the DANE
match accepts the peer. Without a deciding set PKIX applies as it always does.
Rule 7: where only the leaf is seen and every usable record is a full trust-anchor
certificate (2 0 0) of a CA (Rule 4), `anchors()` gives those certificates: the stack may let
its TLS library verify the chain the peer sent (intermediates, CA flags, path lengths), its
dates and the name against exactly them, and `check(anchored=True)` accepts what that
verification accepted. So a 2 0 0 anchor above an intermediate works even where the chain
itself is not visible. The stack does so under `require`, and under `opportunistic` only
where that verification is itself a PKIX verification (the anchors are CAs the system
trusts, no pins; stacks/tls.py Rule 6), since there PKIX must still run. Otherwise the leaf
is matched as Rule 5 says: a 2 0 0 anchor must have issued the leaf directly.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Any

from ..decision.names import TlsaRecord, TlsaSet, normal, usable
from ..errors import DaneError

__all__ = ["DANE_EE", "DANE_TA", "MODES", "anchors", "check", "decides", "defers_pkix",
           "refuse_undecidable", "usable_records"]

DANE_TA = 2
DANE_EE = 3
MODES = ("off", "opportunistic", "require")


def usable_records(tlsa: TlsaSet | None, *, partial_chain: bool = False
                   ) -> tuple[TlsaRecord, ...]:
    """The records of `tlsa` this library checks (Rule 2: `decision.names.usable`), on a
    stack that sees the whole chain, or only the leaf (`partial_chain`, Rule 5)."""
    if tlsa is None:
        return ()
    return tuple(r for r in tlsa.records if usable(r, leaf_only=partial_chain))


def decides(tlsa: TlsaSet | None, mode: str, *, partial_chain: bool = False) -> bool:
    """Does DANE apply to this peer: a validated set with usable records and dane not off?
    (Under `opportunistic` it must match on top of PKIX, under `require` it decides alone.)"""
    return (mode != "off" and tlsa is not None and tlsa.validated
            and bool(usable_records(tlsa, partial_chain=partial_chain)))


def defers_pkix(tlsa: TlsaSet | None, mode: str, *, partial_chain: bool = False) -> bool:
    """Does this set decide the peer alone, so the handshake skips PKIX (Rule 6: only under
    `require`)?"""
    return mode == "require" and decides(tlsa, mode, partial_chain=partial_chain)


def anchors(tlsa: TlsaSet | None, mode: str, *, partial_chain: bool = False
            ) -> tuple[bytes, ...]:
    """The trust-anchor certificates (DER) the stack's TLS library may verify the peer
    against instead of DANE matching the leaf (Rule 7); empty: match as usual."""
    if not partial_chain or not decides(tlsa, mode, partial_chain=True):
        return ()
    records = usable_records(tlsa, partial_chain=True)
    if not all((r.usage, r.selector, r.matching) == (DANE_TA, 0, 0) for r in records):
        return ()
    from cryptography import x509

    try:
        certs = [x509.load_der_x509_certificate(bytes(r.data)) for r in records]
    except ValueError:
        return ()
    if not all(_ca_why(c, None) is None for c in certs):  # check() refuses it (Rule 4)
        return ()
    return tuple(bytes(r.data) for r in records)


def refuse_undecidable(tlsa: TlsaSet | None, mode: str, *, host: str | None = None,
                       partial_chain: bool = False) -> None:
    """Under `require`, a set that cannot decide the peer (none, unvalidated, no usable
    record) refuses the attempt before it connects: DaneError, as check() would after."""
    if mode == "require" and not defers_pkix(tlsa, mode, partial_chain=partial_chain):
        check(tlsa, mode, (), host=host, partial_chain=partial_chain)


def check(tlsa: TlsaSet | None, mode: str, chain: Sequence[bytes], *,
          host: str | None = None, partial_chain: bool = False,
          anchored: bool = False) -> str:
    """Check the peer's `chain` (DER, leaf first) against `tlsa` as `mode` says (Rule 3).
    Returns how the peer was accepted; raises DaneError when it is refused. `host` is the
    name a DANE-TA match must carry (None: not checked). `anchored`: the handshake verified
    the chain and the name against exactly `anchors()` (Rule 7)."""
    if mode == "off":
        return "dane off"
    if mode not in MODES:
        raise ValueError(f"unknown security.dane {mode!r} ({', '.join(MODES)})")
    require = mode == "require"
    name = tlsa.name if tlsa is not None else (host or "?")
    if tlsa is None or (tlsa.validated and not tlsa.records):
        why = ("no TLSA answer" if tlsa is None
               else f"a validated answer says {tlsa.name} has no TLSA records")
        if require:
            raise DaneError(f"DANE required, but {why}", name, "no_tlsa")
        return f"no TLSA ({why}): PKIX"
    if not tlsa.validated:
        if require:
            raise DaneError(f"DANE required, but the TLSA records of {name} are not "
                            "DNSSEC-validated (never trusted without validation)",
                            name, "not_validated")
        return f"TLSA of {name} not validated: ignored, PKIX"
    records = usable_records(tlsa, partial_chain=partial_chain)
    if not records:
        why = _unusable_why(tlsa, partial_chain)
        if require:
            raise DaneError(f"DANE required, but {name} has no usable TLSA record ({why})",
                            name, "no_usable_record")
        return f"no usable TLSA record at {name} ({why}): PKIX"
    if not chain:
        raise DaneError(f"the peer presented no certificate, but {name} has validated "
                        "TLSA records", name, "mismatch")
    if anchored and anchors(tlsa, mode, partial_chain=True):
        return (f"dane-ta match (2 0 0) at {name}: the chain and the name verified to the "
                "record's certificate in the handshake")
    from cryptography import x509

    try:
        certs = [x509.load_der_x509_certificate(bytes(der)) for der in chain]
    except ValueError as exc:
        raise DaneError(f"the peer's certificate cannot be parsed for DANE ({exc})", name,
                        "mismatch") from exc
    tried = []
    for r in records:
        label = f"{r.usage} {r.selector} {r.matching}"
        if r.usage == DANE_EE:
            if _matches(r, chain[0], certs[0]):
                return f"dane-ee match ({label}) at {name}"
            what = "certificate" if r.selector == 0 else "key"
            tried.append(f"{label}: not the leaf's {what}")
            continue
        found, why = _ta_match(r, chain, certs, host)
        if found:
            return f"dane-ta match ({label}) at {name}: {why}"
        tried.append(f"{label}: {why}")
    seen = "the leaf only" if partial_chain else f"{len(chain)} certificate(s)"
    raise DaneError(f"the peer's certificate matches none of the validated TLSA records of "
                    f"{name} ({'; '.join(tried)}; seen: {seen})", name, "mismatch")


def _unusable_why(tlsa: TlsaSet, partial_chain: bool) -> str:
    usages = sorted({r.usage for r in tlsa.records})
    if partial_chain and any(r.usage == DANE_TA for r in tlsa.records):
        return ("its DANE-TA records name a digest, and this stack sees only the peer's "
                "leaf certificate (Python before 3.13 exposes no peer chain)")
    if all(r.usage in (0, 1) for r in tlsa.records):
        return (f"usages {usages}: PKIX-TA/PKIX-EE records are not used by this library "
                "(RFC 7671 section 4.1)")
    return "unknown usage, selector or matching type"


def _selected(selector: int, der: bytes, cert: Any) -> bytes:
    if selector == 0:
        return bytes(der)
    from cryptography.hazmat.primitives import serialization

    spki: bytes = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return spki


def _digest(matching: int, data: bytes) -> bytes:
    if matching == 1:
        return hashlib.sha256(data).digest()
    if matching == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(r: TlsaRecord, der: bytes, cert: Any) -> bool:
    return hmac.compare_digest(_digest(r.matching, _selected(r.selector, der, cert)),
                               bytes(r.data))


def _issued(child: Any, issuer: Any) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except Exception:  # a wrong signature, another issuer name, an unsupported key
        return False
    return True


def _current(cert: Any, now: datetime.datetime) -> bool:
    return bool(cert.not_valid_before_utc <= now <= cert.not_valid_after_utc)


def _ca_why(cert: Any, below: int | None) -> str | None:
    """Why `cert` may not issue certificates in a path where `below` intermediates sit
    under it (None: not known, pathLen not checked), or None when it may (Rule 4, RFC 5280
    sections 4.2.1.3, 4.2.1.9 and 6.1.4)."""
    from cryptography import x509

    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "has no basicConstraints (not a CA)"
    except ValueError:
        return "has extensions that cannot be parsed"
    if not bc.ca:
        return "is not a CA (basicConstraints cA false)"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.key_cert_sign:
        return "may not sign certificates (keyUsage without keyCertSign)"
    if below is not None and bc.path_length is not None and below > bc.path_length:
        return f"allows {bc.path_length} intermediate(s) below it, the path has {below}"
    return None


def _subject(cert: Any) -> str:
    return str(cert.subject.rfc4514_string() or "an empty subject")


def _ta_match(r: TlsaRecord, chain: Sequence[bytes], certs: list[Any],
              host: str | None) -> tuple[bool, str]:
    """Rule 4 for one DANE-TA record: (matched, how or why not)."""
    now = datetime.datetime.now(datetime.UTC)
    leaf = certs[0]
    # The path from the leaf upwards, as far as each certificate issued the one below it.
    path = [leaf]
    for cert in certs[1:]:
        if not _issued(path[-1], cert):
            break
        path.append(cert)
    anchor_at: int | None = None
    anchor: Any = None
    if (r.selector, r.matching) == (0, 0):
        from cryptography import x509

        try:
            anchor = x509.load_der_x509_certificate(bytes(r.data))
        except ValueError:
            return False, "the record's certificate cannot be parsed"
        for depth, cert in enumerate(path):
            if depth > 0 and _same(cert, anchor):  # the peer sent the anchor itself
                anchor_at = depth
                path = path[:depth + 1]
                break
            if _issued(cert, anchor):
                anchor_at = depth + 1  # the anchor itself, above the last one sent
                path = path[:depth + 1]
                break
    else:
        for depth in range(1, len(path)):
            if _matches(r, chain[depth], path[depth]):
                anchor_at = depth
                path = path[:depth + 1]
                if r.selector == 0:  # the record names the whole certificate
                    anchor = path[depth]
                break
    if anchor_at is None:
        return False, "no certificate the leaf chains to matches"
    # Every certificate between the leaf and the anchor issues, and so must be a CA; so
    # must the anchor when the record names its certificate (a key alone has no flags).
    for depth in range(1, anchor_at):
        why = _ca_why(path[depth], depth - 1)
        if why is not None:
            return False, (f"the certificate at depth {depth} ({_subject(path[depth])}), "
                           f"below the trust anchor, {why}")
    if anchor is not None:
        why = _ca_why(anchor, anchor_at - 1)
        if why is not None:
            return False, f"the trust anchor ({_subject(anchor)}) {why}"
    if not all(_current(c, now) for c in path[:anchor_at]):
        return False, "a certificate below the trust anchor is outside its validity dates"
    if host is not None and not _names(leaf, host):
        return False, f"the leaf does not name {host}"
    return True, f"trust anchor at depth {anchor_at}"


def _same(a: Any, b: Any) -> bool:
    from cryptography.hazmat.primitives import serialization

    return bool(a.public_bytes(serialization.Encoding.DER)
                == b.public_bytes(serialization.Encoding.DER))


def _names(cert: Any, host: str) -> bool:
    """Does the leaf name `host` (RFC 6125: subjectAltName DNS or IP entries, a wildcard
    only as the whole leftmost label; the common name only without any DNS entry)?"""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    host = normal(host)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return san is not None and ip in san.get_values_for_type(x509.IPAddress)
    dns = list(san.get_values_for_type(x509.DNSName)) if san is not None else []
    if not dns:
        dns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    for pattern in dns:
        pattern = normal(pattern)
        if pattern == host:
            return True
        if (pattern.startswith("*.") and "." in host and pattern.count(".") >= 2
                and host.split(".", 1)[1] == pattern[2:]):
            return True
    return False
