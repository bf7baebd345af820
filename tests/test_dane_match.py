"""DANE matching (taps_post.stacks.dane) on real certificates: RFC 6698 / RFC 7671.

Certificates are made with taps_post.certs and cryptography (a CA, an intermediate, leaves);
TLSA records are computed from them the way a zone publishes them. No network: the handshake
side is tests/runtime/test_dane_tls.py and test_dane_quic.py.
"""

from __future__ import annotations

import datetime
import hashlib
import pickle
import ssl
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import taps_post as tp
from taps_post.decision.names import TlsaRecord, TlsaSet
from taps_post.errors import DaneError, FailureKind
from taps_post.stacks import dane

NAME = "_443._tcp.www.example"
HOST = "www.example"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def make(subject: str, issuer: tuple[x509.Certificate, Any] | None = None, *, ca: bool = False,
         names: tuple[str, ...] = (), days: int = 30, past: bool = False,
         path_length: int | None = None, cert_sign: bool | None = None,
         ) -> tuple[x509.Certificate, Any]:
    """A certificate for `subject` signed by `issuer` (self-signed without one);
    `path_length`: its pathLenConstraint; `cert_sign`: a keyUsage extension with (True) or
    without (False) keyCertSign (None: no keyUsage)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=days + 2 if past else 0, minutes=5)
    end = now - datetime.timedelta(days=1) if past else now + datetime.timedelta(days=days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                        critical=True))
    if cert_sign is not None:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
            crl_sign=cert_sign, encipher_only=False, decipher_only=False), critical=True)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                            critical=False)
    return b.sign(signer, hashes.SHA256()), key


def record(usage: int, selector: int, matching: int, cert: x509.Certificate) -> TlsaRecord:
    data = _der(cert) if selector == 0 else cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if matching == 1:
        data = hashlib.sha256(data).digest()
    elif matching == 2:
        data = hashlib.sha512(data).digest()
    return TlsaRecord(usage, selector, matching, data)


def tlsa(*records: TlsaRecord, validated: bool = True) -> TlsaSet:
    return TlsaSet(NAME, tuple(records), validated)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root = make("Root CA", ca=True)
    inter = make("Intermediate CA", root, ca=True)
    leaf = make(HOST, inter, names=(HOST,))
    direct = make(HOST, root, names=(HOST,))
    other_root = make("Root CA", ca=True)  # same name, another key
    stranger = make(HOST, other_root, names=(HOST,))
    wrong_name = make("other.example", root, names=("other.example",))
    expired = make(HOST, root, names=(HOST,), past=True)
    return dict(root=root[0], inter=inter[0], leaf=leaf[0], direct=direct[0],
                stranger=stranger[0], wrong_name=wrong_name[0], expired=expired[0])


@pytest.fixture(scope="module")
def self_signed() -> x509.Certificate:
    cert = tp.certs.self_signed([HOST])
    return x509.load_pem_x509_certificate(cert.cert_pem.encode())


# ---- DANE-EE(3) -------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("matching", [0, 1, 2])
@pytest.mark.parametrize("mode", ["opportunistic", "require"])
def test_dane_ee_matches_the_leaf_with_every_selector_and_matching_type(
        self_signed: x509.Certificate, selector: int, matching: int, mode: str) -> None:
    how = dane.check(tlsa(record(3, selector, matching, self_signed)), mode,
                     [_der(self_signed)])
    assert how == f"dane-ee match (3 {selector} {matching}) at {NAME}"


@pytest.mark.parametrize("mode", ["opportunistic", "require"])
def test_dane_ee_mismatch_is_a_dane_error_in_both_modes(self_signed: x509.Certificate,
                                                        mode: str) -> None:
    other = x509.load_pem_x509_certificate(tp.certs.self_signed([HOST]).cert_pem.encode())
    with pytest.raises(DaneError) as err:
        dane.check(tlsa(record(3, 1, 1, other)), mode, [_der(self_signed)])
    assert err.value.reason == "mismatch"
    assert err.value.name == NAME
    assert NAME in str(err.value) and "3 1 1" in str(err.value)


def test_dane_ee_ignores_names_and_dates(pki: dict[str, Any]) -> None:
    """RFC 7671 section 5.1: for DANE-EE only the key or certificate counts."""
    for cert in (pki["expired"], pki["wrong_name"]):
        assert dane.check(tlsa(record(3, 1, 1, cert)), "require", [_der(cert)],
                          host=HOST).startswith("dane-ee match")


def test_dane_ee_matches_the_leaf_only(pki: dict[str, Any]) -> None:
    chain = [_der(pki["leaf"]), _der(pki["inter"])]
    with pytest.raises(DaneError, match="not the leaf's key"):
        dane.check(tlsa(record(3, 1, 1, pki["inter"])), "opportunistic", chain)


def test_any_matching_record_of_a_set_accepts(self_signed: x509.Certificate,
                                              pki: dict[str, Any]) -> None:
    s = tlsa(record(3, 1, 1, pki["leaf"]), record(0, 0, 1, self_signed),
             record(3, 0, 2, self_signed))
    assert dane.check(s, "require", [_der(self_signed)]) == f"dane-ee match (3 0 2) at {NAME}"


# ---- DANE-TA(2) -------------------------------------------------------------------------


@pytest.mark.parametrize("selector,matching", [(0, 0), (0, 1), (1, 1), (1, 2)])
def test_dane_ta_matches_a_certificate_above_the_leaf(pki: dict[str, Any], selector: int,
                                                      matching: int) -> None:
    chain = [_der(pki["leaf"]), _der(pki["inter"]), _der(pki["root"])]
    how = dane.check(tlsa(record(2, selector, matching, pki["root"])), "require", chain,
                     host=HOST)
    assert how == (f"dane-ta match (2 {selector} {matching}) at {NAME}: "
                   "trust anchor at depth 2")


def test_dane_ta_intermediate_as_anchor(pki: dict[str, Any]) -> None:
    chain = [_der(pki["leaf"]), _der(pki["inter"]), _der(pki["root"])]
    assert dane.check(tlsa(record(2, 1, 1, pki["inter"])), "require", chain,
                      host=HOST).endswith("depth 1")


def test_dane_ta_full_certificate_record_is_an_anchor_the_peer_need_not_send(
        pki: dict[str, Any]) -> None:
    """2 0 0: the record is the trust anchor itself; the chain sent stops below it."""
    chain = [_der(pki["leaf"]), _der(pki["inter"])]
    assert dane.check(tlsa(record(2, 0, 0, pki["root"])), "require", chain,
                      host=HOST).endswith("depth 2")
    # The leaf alone (what the stdlib shows before Python 3.13), issued by the anchor.
    assert dane.check(tlsa(record(2, 0, 0, pki["root"])), "require", [_der(pki["direct"])],
                      host=HOST, partial_chain=True).endswith("depth 1")


def test_dane_ta_refuses_a_leaf_that_does_not_chain_to_the_anchor(pki: dict[str, Any]) -> None:
    """Same issuer name, another key: the signature does not verify."""
    for chain in ([_der(pki["stranger"]), _der(pki["root"])], [_der(pki["stranger"])]):
        with pytest.raises(DaneError) as err:
            dane.check(tlsa(record(2, 0, 0, pki["root"]), record(2, 1, 1, pki["root"])),
                       "opportunistic", chain, host=HOST)
        assert err.value.reason == "mismatch"
        assert "no certificate the leaf chains to matches" in str(err.value)


def test_dane_ta_checks_the_name_and_the_dates(pki: dict[str, Any]) -> None:
    """RFC 7671 section 5.2: with a TA, the leaf is validated as PKIX would, below it."""
    with pytest.raises(DaneError, match=r"does not name www\.example"):
        dane.check(tlsa(record(2, 1, 1, pki["root"])), "opportunistic",
                   [_der(pki["wrong_name"]), _der(pki["root"])], host=HOST)
    with pytest.raises(DaneError, match="validity dates"):
        dane.check(tlsa(record(2, 1, 1, pki["root"])), "opportunistic",
                   [_der(pki["expired"]), _der(pki["root"])], host=HOST)


# ---- DANE-TA paths: only CAs issue (R1-H2, RFC 5280 section 6 from the DANE anchor) ----


@pytest.fixture(scope="module")
def forged() -> dict[str, Any]:
    """The review's experiment (R1-H2): an organisation's TA, an end-entity certificate it
    issued (CA:FALSE) for lowvalue.example, and a leaf for victim.example that end entity
    "issued" with its own key."""
    ta = make("Org TA", ca=True)
    ee = make("lowvalue.example", ta, names=("lowvalue.example",))
    leaf = make("victim.example", ee, names=("victim.example",))
    return dict(ta=ta[0], ee=ee[0], leaf=leaf[0], ta_pair=ta)


@pytest.mark.parametrize("mode", ["opportunistic", "require"])
@pytest.mark.parametrize("selector,matching", [(0, 1), (1, 1), (0, 0)])
def test_an_end_entity_under_the_anchor_cannot_issue_a_leaf(
        forged: dict[str, Any], mode: str, selector: int, matching: int) -> None:
    chain = [_der(forged["leaf"]), _der(forged["ee"]), _der(forged["ta"])]
    s = TlsaSet("_443._udp.victim.example", (record(2, selector, matching, forged["ta"]),),
                True)
    with pytest.raises(DaneError) as err:
        dane.check(s, mode, chain, host="victim.example")
    assert err.value.reason == "mismatch"
    assert "depth 1 (CN=lowvalue.example)" in str(err.value)
    assert "is not a CA" in str(err.value)


def test_a_2_0_0_anchor_above_an_end_entity_the_peer_stops_at(forged: dict[str, Any]) -> None:
    """The review's second case: a `2 0 0` record, the chain sent stops below the anchor."""
    s = TlsaSet("_443._udp.victim.example", (record(2, 0, 0, forged["ta"]),), True)
    with pytest.raises(DaneError, match="is not a CA"):
        dane.check(s, "require", [_der(forged["leaf"]), _der(forged["ee"])],
                   host="victim.example")


def test_the_same_path_through_a_ca_is_accepted(forged: dict[str, Any]) -> None:
    """The control: a real intermediate (CA:TRUE) in the EE's place is accepted."""
    inter = make("Org Issuing CA", forged["ta_pair"], ca=True)
    leaf = make("victim.example", inter, names=("victim.example",))
    s = TlsaSet("_443._udp.victim.example", (record(2, 0, 1, forged["ta"]),), True)
    assert dane.check(s, "require", [_der(leaf[0]), _der(inter[0]), _der(forged["ta"])],
                      host="victim.example").endswith("trust anchor at depth 2")


def test_a_full_certificate_anchor_must_be_a_ca(forged: dict[str, Any]) -> None:
    """2 0 0 (and 2 0 1) of an end-entity certificate that signed the leaf directly: the
    anchor itself issues, so it must be a CA; on a leaf-only stack `anchors()` does not hand
    it to the TLS library either (check() refuses it instead)."""
    ee_pair = make("lowvalue.example", forged["ta_pair"], names=("lowvalue.example",))
    leaf2 = make("victim.example", ee_pair, names=("victim.example",))
    for r in (record(2, 0, 0, ee_pair[0]), record(2, 0, 1, ee_pair[0])):
        s = TlsaSet("_443._udp.victim.example", (r,), True)
        with pytest.raises(DaneError, match=r"trust anchor \(CN=lowvalue.example\) is not a CA"):
            dane.check(s, "require", [_der(leaf2[0]), _der(ee_pair[0])], host="victim.example")
    s = TlsaSet("_443._udp.victim.example", (record(2, 0, 0, ee_pair[0]),), True)
    assert dane.anchors(s, "require", partial_chain=True) == ()
    with pytest.raises(DaneError, match="is not a CA"):
        dane.check(s, "require", [_der(leaf2[0])], host="victim.example", partial_chain=True)
    # A selector-1 record names a key only: the anchor's own flags are not asked.
    spki = TlsaSet("_443._udp.victim.example", (record(2, 1, 1, ee_pair[0]),), True)
    assert dane.check(spki, "require", [_der(leaf2[0]), _der(ee_pair[0])],
                      host="victim.example").endswith("depth 1")


def test_key_usage_without_cert_sign_and_path_length_are_enforced() -> None:
    root = make("KU Root", ca=True)
    no_sign = make("No-sign CA", root, ca=True, cert_sign=False)
    leaf = make(HOST, no_sign, names=(HOST,))
    s = tlsa(record(2, 1, 1, root[0]))
    with pytest.raises(DaneError, match="keyUsage without keyCertSign"):
        dane.check(s, "require", [_der(leaf[0]), _der(no_sign[0]), _der(root[0])], host=HOST)
    signing = make("Signing CA", root, ca=True, cert_sign=True)
    leaf = make(HOST, signing, names=(HOST,))
    assert dane.check(s, "require", [_der(leaf[0]), _der(signing[0]), _der(root[0])],
                      host=HOST).startswith("dane-ta match")
    # pathLen 0 on the root: no intermediate may follow it; one does.
    tight = make("Tight Root", ca=True, path_length=0)
    inter = make("Under Tight", tight, ca=True)
    leaf = make(HOST, inter, names=(HOST,))
    chain = [_der(leaf[0]), _der(inter[0]), _der(tight[0])]
    for r in (record(2, 0, 0, tight[0]), record(2, 0, 1, tight[0])):
        with pytest.raises(DaneError, match="allows 0 intermediate"):
            dane.check(tlsa(r), "require", chain, host=HOST)
    # pathLen 0 on the intermediate that issued the leaf: allowed.
    zero = make("Zero CA", root, ca=True, path_length=0)
    leaf = make(HOST, zero, names=(HOST,))
    assert dane.check(s, "require", [_der(leaf[0]), _der(zero[0]), _der(root[0])],
                      host=HOST).endswith("depth 2")


def test_wildcard_names_cover_one_label() -> None:
    ca = make("Wild CA", ca=True)
    wild = make("*.dom.example", ca, names=("*.dom.example",))
    s = tlsa(record(2, 1, 1, ca[0]))
    chain = [_der(wild[0]), _der(ca[0])]
    assert dane.check(s, "require", chain, host="WWW.dom.example.").startswith("dane-ta match")
    with pytest.raises(DaneError):
        dane.check(s, "require", chain, host="a.www.dom.example")


def test_anchors_only_where_the_leaf_alone_is_seen_and_every_record_is_a_2_0_0(
        pki: dict[str, Any], self_signed: x509.Certificate) -> None:
    ta = record(2, 0, 0, pki["root"])
    assert dane.anchors(tlsa(ta), "require", partial_chain=True) == (_der(pki["root"]),)
    assert dane.anchors(tlsa(ta), "require") == (), "the chain is seen: match it"
    assert dane.anchors(tlsa(ta), "opportunistic", partial_chain=True) == (_der(pki["root"]),), (
        "the certificates are the same; the stack decides when to use them (tls.py Rule 6)")
    assert dane.anchors(tlsa(ta, record(3, 1, 1, self_signed)), "require",
                        partial_chain=True) == (), "an EE record needs the leaf matched"
    assert dane.anchors(tlsa(ta, validated=False), "require", partial_chain=True) == ()
    assert dane.anchors(tlsa(ta), "off", partial_chain=True) == ()
    how = dane.check(tlsa(ta), "require", [_der(pki["leaf"])], partial_chain=True,
                     anchored=True)
    assert how.startswith(f"dane-ta match (2 0 0) at {NAME}: the chain and the name verified")


def test_digest_ta_records_are_unusable_where_only_the_leaf_is_seen(
        pki: dict[str, Any]) -> None:
    s = tlsa(record(2, 1, 1, pki["root"]))
    assert not dane.defers_pkix(s, "opportunistic", partial_chain=True)
    how = dane.check(s, "opportunistic", [_der(pki["direct"])], partial_chain=True)
    assert how.startswith(f"no usable TLSA record at {NAME}")
    assert "leaf" in how and how.endswith("PKIX")
    with pytest.raises(DaneError) as err:
        dane.check(s, "require", [_der(pki["direct"])], partial_chain=True)
    assert err.value.reason == "no_usable_record"


# ---- validation, usability and modes ----------------------------------------------------


def test_unvalidated_records_are_ignored_under_opportunistic(self_signed: Any) -> None:
    """Never trusted without validation: neither to refuse (a mismatch here) nor accept."""
    other = x509.load_pem_x509_certificate(tp.certs.self_signed([HOST]).cert_pem.encode())
    for cert in (self_signed, other):
        s = tlsa(record(3, 1, 1, cert), validated=False)
        assert not dane.defers_pkix(s, "opportunistic")
        assert dane.check(s, "opportunistic", [_der(self_signed)]) == (
            f"TLSA of {NAME} not validated: ignored, PKIX")


def test_unvalidated_records_are_refused_under_require(self_signed: Any) -> None:
    with pytest.raises(DaneError) as err:
        dane.check(tlsa(record(3, 1, 1, self_signed), validated=False), "require",
                   [_der(self_signed)])
    assert err.value.reason == "not_validated"
    assert "not DNSSEC-validated" in str(err.value)


@pytest.mark.parametrize("usage", [0, 1])
def test_pkix_usages_are_unusable(self_signed: Any, usage: int) -> None:
    s = tlsa(record(usage, 1, 1, self_signed))
    assert not dane.defers_pkix(s, "require")
    how = dane.check(s, "opportunistic", [_der(self_signed)])
    assert "PKIX-TA/PKIX-EE records are not used by this library" in how
    with pytest.raises(DaneError) as err:
        dane.check(s, "require", [_der(self_signed)])
    assert err.value.reason == "no_usable_record"


def test_unknown_selector_or_matching_is_unusable(self_signed: Any) -> None:
    s = tlsa(TlsaRecord(3, 2, 1, b"x" * 32), TlsaRecord(3, 1, 9, b"x"))
    assert dane.usable_records(s) == ()
    assert "unknown" in dane.check(s, "opportunistic", [_der(self_signed)])


def test_no_tlsa(self_signed: Any) -> None:
    assert dane.check(None, "opportunistic", [_der(self_signed)], host=HOST).startswith(
        "no TLSA")
    for s in (None, tlsa()):  # not asked / a validated denial
        with pytest.raises(DaneError) as err:
            dane.check(s, "require", [_der(self_signed)], host=HOST)
        assert err.value.reason == "no_tlsa"


def test_off_checks_nothing(self_signed: Any) -> None:
    other = x509.load_pem_x509_certificate(tp.certs.self_signed([HOST]).cert_pem.encode())
    s = tlsa(record(3, 1, 1, other))
    assert dane.check(s, "off", [_der(self_signed)]) == "dane off"
    assert not dane.defers_pkix(s, "off")
    assert dane.check(None, "off", []) == "dane off"


def test_no_certificate_with_validated_records_is_a_mismatch(self_signed: Any) -> None:
    with pytest.raises(DaneError) as err:
        dane.check(tlsa(record(3, 1, 1, self_signed)), "opportunistic", [])
    assert err.value.reason == "mismatch"


def test_defers_pkix_only_under_require_for_validated_usable_sets(self_signed: Any) -> None:
    """Rule 6 (R1-H4): under opportunistic PKIX always runs and DANE only adds refusals;
    only require lets a validated usable set decide alone."""
    ee = record(3, 1, 1, self_signed)
    assert not dane.defers_pkix(tlsa(ee), "opportunistic")
    assert dane.decides(tlsa(ee), "opportunistic"), "it must still match"
    assert dane.defers_pkix(tlsa(ee), "require")
    assert not dane.decides(tlsa(ee), "off")
    assert not dane.defers_pkix(tlsa(ee, validated=False), "require")
    assert not dane.defers_pkix(None, "require")
    assert not dane.defers_pkix(tlsa(), "require")


def test_opportunistic_adds_a_refusal_and_never_an_acceptance(self_signed: Any) -> None:
    """Under opportunistic the stack verifies PKIX first (stacks/tls.py Rule 6); check() is
    then only a further condition: a match says how, a mismatch refuses."""
    other = x509.load_pem_x509_certificate(tp.certs.self_signed([HOST]).cert_pem.encode())
    s = tlsa(record(3, 1, 1, self_signed))
    assert dane.check(s, "opportunistic", [_der(self_signed)]).startswith("dane-ee match")
    with pytest.raises(DaneError):
        dane.check(s, "opportunistic", [_der(other)])


def test_usable_records_is_decision_names_usable() -> None:
    """R2-5: the stack's record selection is the decision's (`decision.names.usable`)."""
    from taps_post.decision.names import usable

    records = [TlsaRecord(u, sel, m, b"x" * 32) for u in range(5) for sel in range(3)
               for m in range(4)]
    for leaf_only in (False, True):
        got = dane.usable_records(tlsa(*records), partial_chain=leaf_only)
        assert got == tuple(r for r in records if usable(r, leaf_only=leaf_only))
    assert not hasattr(dane, "_SELECTORS"), "no private copy of the rule"


def test_unknown_mode_is_refused(self_signed: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown security\.dane"):
        dane.check(None, "sometimes", [_der(self_signed)])


# ---- the error --------------------------------------------------------------------------


def test_dane_error_is_a_certificate_verification_error_racing_calls_tls_verify() -> None:
    from taps_post.runtime.racing import classify

    err = DaneError("the peer matches nothing", NAME, "mismatch")
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert isinstance(err, tp.TapsError)
    assert tp.DaneError is DaneError and "DaneError" in tp.__all__
    assert classify(err) is FailureKind.TLS_VERIFY
    assert str(err) == "the peer matches nothing"
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.name, back.reason) == (DaneError, str(err), NAME,
                                                               "mismatch")
