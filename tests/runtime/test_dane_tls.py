"""DANE on the TLS stack (stacks/tls.py Rule 6) against a TLS server that is not ours:
`openssl s_server`, with certificates from taps_post.certs and cryptography.

The stack is driven directly (`StreamStack.connect` with an AttemptSpec that carries the TLSA
set, as the runtime fills it); test_dane_lab.py gets the TLSA sets from real DNS servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import taps_post as tp
from dnslab import free_port
from taps_post.certs import Certificate
from taps_post.core.framing import RawFramer
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate, RankKey
from taps_post.decision.names import TlsaRecord, TlsaSet
from taps_post.errors import DaneError, FailureKind
from taps_post.runtime.racing import classify
from taps_post.stacks.base import AttemptSpec
from taps_post.stacks.tcp import StreamStack
from taps_post.stacks.tls import PEER_CHAIN
from test_dane_match import make, record

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl command line tool is not installed")

LO4 = "127.0.0.1"
HOST = "localhost"
NAME = "_443._tcp.localhost"


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(conn_timeout=5.0, attempt_delay=0.05, max_size=16 << 20,
                                min_tls="1.2", verify_peer=True, session_cache=True, alpn=(),
                                zero_rtt=False)
    base.update(kw)
    return Settings(**base)


def run(coro: Any, timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@contextlib.contextmanager
def s_server(tmp: Path, cert: Certificate, chain: tuple[Certificate, ...] = (),
             port: int = 0) -> Iterator[int]:
    """openssl s_server serving `cert` (and `chain` after it) on a loopback port (`port`,
    or a free one)."""
    assert cert.key_pem is not None
    (tmp / "cert.pem").write_text(cert.cert_pem)
    (tmp / "key.pem").write_text(cert.key_pem)
    argv = ["openssl", "s_server", "-accept", f"{LO4}:{port or free_port()}", "-www",
            "-cert", str(tmp / "cert.pem"), "-key", str(tmp / "key.pem")]
    if chain:
        (tmp / "chain.pem").write_text("".join(c.cert_pem for c in chain))
        argv += ["-cert_chain", str(tmp / "chain.pem")]
    port = int(argv[3].rsplit(":", 1)[1])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"s_server exited with {proc.returncode}"
            with contextlib.suppress(OSError), socket.create_connection((LO4, port), 0.5):
                break
            assert time.monotonic() < deadline, "s_server did not listen"
            time.sleep(0.02)  # pacing while another process starts (no loop to yield to)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def spec(port: int, *, tlsa: TlsaSet | None, s: Settings | None = None,
         pinned: tuple[Certificate, ...] = (), assoc: Any = None,
         host: str = HOST) -> AttemptSpec:
    s = s or settings()
    c = Candidate(0, "lo", LO4, "tls", LO4, port, "ipv4", 0,
                  RankKey(0, 0, 0, 0, 0, 0, 1, 0.0, 0, "lo", 0, 0))
    return AttemptSpec(candidate=c, host=host, settings=s,
                       association=assoc or tp.AssociationStore().get(f"{LO4}:{port}"),
                       framer=RawFramer, pinned=pinned, tlsa=tlsa)


async def fetch(sp: AttemptSpec) -> tuple[str | None, bool, bytes]:
    """Connect, GET s_server's status page, close: (how DANE accepted, resumed, page)."""
    t = await StreamStack("tls", secure=True, mptcp=False).connect(sp)
    try:
        t.submit_data(b"GET / HTTP/1.0\r\n\r\n")
        page = bytes(await t.receive())  # s_server's TLS 1.3 tickets came before it
        return t.dane, t.session_reused, page
    finally:
        await t.aclose()


def x509_of(cert: Certificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_pem.encode())


def pem(cert: x509.Certificate, key: Any = None) -> Certificate:
    key_pem = None if key is None else key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    return Certificate(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


def tlsa(*records: TlsaRecord, validated: bool = True) -> TlsaSet:
    return TlsaSet(NAME, records, validated)


@pytest.fixture(scope="module")
def server_cert() -> Certificate:
    return tp.certs.self_signed([HOST])


@pytest.fixture(scope="module")
def other_cert() -> Certificate:
    return tp.certs.self_signed([HOST])


def test_dane_ee_self_signed_refused_by_pkix_under_opportunistic_accepted_under_require(
        tmp_path: Path, server_cert: Certificate) -> None:
    """A self-signed certificate no CA vouches for, published as DANE-EE (3 1 1): under
    opportunistic PKIX still runs and refuses it (DANE only adds refusals, R1-H4), unless it
    is pinned, and then the record must match too; under require the validated record alone
    makes it the peer (RFC 7671 section 5.1, PKIX deferred)."""
    started = time.monotonic()
    ee = tlsa(record(3, 1, 1, x509_of(server_cert)))
    with s_server(tmp_path, server_cert) as port:
        for t in (None, ee):
            with pytest.raises(ssl_cert_error()) as err:
                run(fetch(spec(port, tlsa=t, s=settings(dane="opportunistic"))))
            assert not isinstance(err.value, DaneError), "PKIX refused it, not DANE"
            assert classify(err.value) is FailureKind.TLS_VERIFY
        how, _, _ = run(fetch(spec(port, tlsa=ee, pinned=(server_cert,))))
        assert how == f"dane-ee match (3 1 1) at {NAME}"
        how, _, page = run(fetch(spec(port, tlsa=ee, s=settings(dane="require"))))
        assert how == f"dane-ee match (3 1 1) at {NAME}"
        assert page.startswith(b"HTTP/1.0 200 ok"), page[:100]
    assert time.monotonic() - started < 10


def test_contexts_are_keyed_by_whether_pkix_is_deferred(tmp_path: Path,
                                                         server_cert: Certificate) -> None:
    """One association: a require attempt (PKIX deferred) first, then an opportunistic one
    with the same records: the second gets its own PKIX context and is refused."""
    ee = tlsa(record(3, 1, 1, x509_of(server_cert)))
    with s_server(tmp_path, server_cert) as port:
        assoc = tp.AssociationStore().get(f"{LO4}:{port}")
        how, _, _ = run(fetch(spec(port, tlsa=ee, assoc=assoc, s=settings(dane="require"))))
        assert how is not None and how.startswith("dane-ee match")
        with pytest.raises(ssl_cert_error()) as err:
            run(fetch(spec(port, tlsa=ee, assoc=assoc)))
        assert not isinstance(err.value, DaneError)
        assert len(assoc.tls_contexts) == 2


def ssl_cert_error() -> type[BaseException]:
    import ssl

    return ssl.SSLCertVerificationError


@pytest.mark.parametrize("mode", ["opportunistic", "require"])
def test_dane_mismatch_refuses_a_peer_pkix_and_the_pin_accept(
        tmp_path: Path, server_cert: Certificate, other_cert: Certificate, mode: str) -> None:
    """The server's certificate is pinned (PKIX and the pin pass without DANE), but the
    validated TLSA records name another key: DaneError, classified tls_verify."""
    with s_server(tmp_path, server_cert) as port:
        how, _, _ = run(fetch(spec(port, tlsa=None, pinned=(server_cert,))))
        assert how is not None and how.startswith("no TLSA")
        if mode == "require":
            with pytest.raises(DaneError) as missing:
                run(fetch(spec(port, tlsa=None, pinned=(server_cert,),
                               s=settings(dane=mode))))
            assert missing.value.reason == "no_tlsa"
        wrong = tlsa(record(3, 1, 1, x509_of(other_cert)))
        with pytest.raises(DaneError) as err:
            run(fetch(spec(port, tlsa=wrong, pinned=(server_cert,), s=settings(dane=mode))))
    assert err.value.reason == "mismatch" and err.value.name == NAME
    assert classify(err.value) is FailureKind.TLS_VERIFY


def test_unvalidated_tlsa_is_ignored_under_opportunistic_and_refused_under_require(
        tmp_path: Path, server_cert: Certificate, other_cert: Certificate) -> None:
    unvalidated = tlsa(record(3, 1, 1, x509_of(other_cert)), validated=False)
    with s_server(tmp_path, server_cert) as port:
        how, _, _ = run(fetch(spec(port, tlsa=unvalidated, pinned=(server_cert,))))
        assert how == f"TLSA of {NAME} not validated: ignored, PKIX"
        with pytest.raises(DaneError) as err:
            run(fetch(spec(port, tlsa=unvalidated, pinned=(server_cert,),
                           s=settings(dane="require"))))
        # An unvalidated record of the right key does not accept an unpinned peer either.
        right = tlsa(record(3, 1, 1, x509_of(server_cert)), validated=False)
        with pytest.raises(ssl_cert_error()) as pkix:
            run(fetch(spec(port, tlsa=right)))
    assert err.value.reason == "not_validated"
    assert not isinstance(pkix.value, DaneError)


def test_dane_off_checks_nothing(tmp_path: Path, server_cert: Certificate,
                                 other_cert: Certificate) -> None:
    wrong = tlsa(record(3, 1, 1, x509_of(other_cert)))
    with s_server(tmp_path, server_cert) as port:
        how, _, _ = run(fetch(spec(port, tlsa=wrong, pinned=(server_cert,),
                                   s=settings(dane="off"))))
        with pytest.raises(ssl_cert_error()):  # and it does not defer PKIX
            run(fetch(spec(port, tlsa=tlsa(record(3, 1, 1, x509_of(server_cert))),
                           s=settings(dane="off"))))
    assert how == "dane off"


def test_dane_ta_full_certificate_anchors_a_private_ca(tmp_path: Path) -> None:
    """2 0 0: the zone publishes its CA; a leaf it issued is accepted for its name, one for
    another name is refused (RFC 7671 section 5.2 keeps the name check)."""
    ca = make("Lab CA", ca=True)
    leaf, key = make(HOST, ca, names=(HOST,))
    anchor = tlsa(record(2, 0, 0, ca[0]))
    with s_server(tmp_path, pem(leaf, key), chain=(pem(ca[0]),)) as port:
        how, _, _ = run(fetch(spec(port, tlsa=anchor, s=settings(dane="require"))))
        assert how is not None and how.startswith(f"dane-ta match (2 0 0) at {NAME}")
        with pytest.raises(DaneError) as named:
            run(fetch(spec(port, tlsa=anchor, host="other.test", s=settings(dane="require"))))
        assert named.value.reason == "mismatch"
        # Python < 3.13: the handshake verified against the anchor (dane Rule 7), and
        # OpenSSL's name check failed; 3.13+: dane.check's own name check.
        assert "other.test" in str(named.value) or "Hostname mismatch" in str(named.value)
        digest = tlsa(record(2, 0, 1, ca[0]))
        with pytest.raises(ssl_cert_error()) as pkix:  # opportunistic: PKIX still decides
            run(fetch(spec(port, tlsa=anchor)))
        assert not isinstance(pkix.value, DaneError)
        if PEER_CHAIN:
            how, _, _ = run(fetch(spec(port, tlsa=digest, s=settings(dane="require"))))
            assert how is not None and how.startswith("dane-ta match (2 0 1)")
        else:  # Python < 3.13: the chain is not visible, a digest TA cannot be checked
            with pytest.raises(DaneError) as err:
                run(fetch(spec(port, tlsa=digest, s=settings(dane="require"))))
            assert err.value.reason == "no_usable_record"
            assert "leaf" in str(err.value)


def test_a_resumed_session_is_checked_again(tmp_path: Path, server_cert: Certificate,
                                            other_cert: Certificate) -> None:
    """A resumed TLS session still shows the certificate it was made with (OpenSSL keeps it
    in the session), so DANE is checked on every connection, resumed or not."""
    ee = tlsa(record(3, 1, 1, x509_of(server_cert)))
    with s_server(tmp_path, server_cert) as port:
        assoc = tp.AssociationStore().get(f"{LO4}:{port}")

        async def twice() -> list[tuple[str | None, bool, bytes]]:
            return [await fetch(spec(port, tlsa=ee, assoc=assoc, pinned=(server_cert,)))
                    for _ in range(2)]

        (how1, reused1, _), (how2, reused2, _) = run(twice())
    assert how1 == how2 == f"dane-ee match (3 1 1) at {NAME}"
    assert (reused1, reused2) == (False, True)


def test_dane_ta_anchor_above_an_intermediate(tmp_path: Path) -> None:
    """leaf <- intermediate <- root, the server sends leaf and intermediate: a 2 0 0 record
    of the root or of the intermediate accepts, one of another CA refuses (DaneError). On
    Python < 3.13 the handshake verifies against the records' certificates (dane Rule 7)."""
    root = make("Lab Root", ca=True)
    inter = make("Lab Intermediate", root, ca=True)
    leaf, key = make(HOST, inter, names=(HOST,))
    stranger = make("Lab Root", ca=True)
    with s_server(tmp_path, pem(leaf, key), chain=(pem(inter[0]),)) as port:
        for anchor in (root[0], inter[0]):
            how, _, page = run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, anchor)),
                                          s=settings(dane="require"))))
            assert how is not None and how.startswith(f"dane-ta match (2 0 0) at {NAME}")
            assert page.startswith(b"HTTP/1.0 200 ok")
        with pytest.raises(DaneError) as err:
            run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, stranger[0])),
                           s=settings(dane="require"))))
    assert err.value.reason == "mismatch" and err.value.name == NAME
    assert classify(err.value) is FailureKind.TLS_VERIFY


@pytest.mark.parametrize("sent_anchor", [False, True])
def test_an_end_entity_under_the_anchor_cannot_issue_the_servers_leaf(
        tmp_path: Path, sent_anchor: bool) -> None:
    """R1-H2 over TLS: TA -> lowvalue (CA:FALSE) -> a leaf for localhost signed with
    lowvalue's key, served with lowvalue (and the TA). Under require (PKIX deferred) a 2 0 0
    record of the TA is refused: before Python 3.13 OpenSSL verifies against the anchor
    (dane Rule 7) and refuses the non-CA issuer, from 3.13 dane.check sees the chain; a
    2 0 1 digest is checked by dane.check where the chain is visible (3.13+) and unusable
    before. A real intermediate in lowvalue's place is accepted (the control)."""
    ta = make("Org TA", ca=True)
    ee = make("lowvalue.example", ta, names=("lowvalue.example",))
    leaf, key = make(HOST, ee, names=(HOST,))
    chain = (pem(ee[0]), pem(ta[0])) if sent_anchor else (pem(ee[0]),)
    (tmp_path / "forged").mkdir()
    with s_server(tmp_path / "forged", pem(leaf, key), chain=chain) as port:
        with pytest.raises(DaneError) as err:
            run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, ta[0])),
                           s=settings(dane="require"))))
        assert err.value.reason == "mismatch"
        if PEER_CHAIN:
            with pytest.raises(DaneError, match="is not a CA"):
                run(fetch(spec(port, tlsa=tlsa(record(2, 0, 1, ta[0])),
                               s=settings(dane="require"))))
    inter = make("Org Issuing CA", ta, ca=True)
    good, good_key = make(HOST, inter, names=(HOST,))
    chain = (pem(inter[0]), pem(ta[0])) if sent_anchor else (pem(inter[0]),)
    (tmp_path / "good").mkdir()
    with s_server(tmp_path / "good", pem(good, good_key), chain=chain) as port:
        how, _, _ = run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, ta[0])),
                                   s=settings(dane="require"))))
    assert how is not None and how.startswith(f"dane-ta match (2 0 0) at {NAME}")


def test_a_2_0_0_record_of_an_end_entity_is_no_anchor(tmp_path: Path) -> None:
    """A 2 0 0 record naming a CA:FALSE certificate that signed the leaf directly: not handed
    to OpenSSL as an anchor (dane.anchors), and dane.check refuses it (R1-H2)."""
    ta = make("Org TA", ca=True)
    ee = make("lowvalue.example", ta, names=("lowvalue.example",))
    leaf, key = make(HOST, ee, names=(HOST,))
    with (s_server(tmp_path, pem(leaf, key), chain=(pem(ee[0]),)) as port,
          pytest.raises(DaneError, match="not a CA") as err):
        run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, ee[0])), s=settings(dane="require"))))
    assert err.value.reason == "mismatch"


@pytest.fixture
def system_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """A lab CA the system trusts for this test ($SSL_CERT_FILE names the system CA file,
    which `load_default_certs` and `ssl.get_default_verify_paths` read), and a stranger CA
    it trusts too."""
    root = make("System Lab Root", ca=True)
    stranger = make("System Lab Stranger", ca=True)
    (tmp_path / "system-ca.pem").write_text(pem(root[0]).cert_pem + pem(stranger[0]).cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "system-ca.pem"))
    return root, stranger


def test_opportunistic_keeps_pkix_and_dane_only_adds_refusals(
        tmp_path: Path, system_ca: tuple[Any, Any], other_cert: Certificate) -> None:
    """R1-H4: a server PKIX accepts (its CA is a system CA). Under opportunistic a matching
    DANE-EE record is reported, a mismatching one refuses (DaneError), and PKIX's name check
    still runs (a DANE-EE match for another name is refused by PKIX); under require the
    DANE-EE record decides alone and names do not apply (RFC 7671 section 5.1)."""
    root, _ = system_ca
    leaf, key = make(HOST, root, names=(HOST,))
    good = tlsa(record(3, 1, 1, leaf))
    (tmp_path / "srv").mkdir()
    with s_server(tmp_path / "srv", pem(leaf, key)) as port:
        how, _, _ = run(fetch(spec(port, tlsa=None)))
        assert how is not None and how.startswith("no TLSA"), "PKIX alone accepts it"
        how, _, _ = run(fetch(spec(port, tlsa=good)))
        assert how == f"dane-ee match (3 1 1) at {NAME}"
        with pytest.raises(DaneError) as err:
            run(fetch(spec(port, tlsa=tlsa(record(3, 1, 1, x509_of(other_cert))))))
        assert err.value.reason == "mismatch"
        with pytest.raises(ssl_cert_error()) as named:
            run(fetch(spec(port, tlsa=good, host="other.test")))
        assert not isinstance(named.value, DaneError), "PKIX's name check refused it"
        how, _, _ = run(fetch(spec(port, tlsa=good, host="other.test",
                                   s=settings(dane="require"))))
        assert how == f"dane-ee match (3 1 1) at {NAME}"


def test_opportunistic_2_0_0_above_an_intermediate(tmp_path: Path,
                                                   system_ca: tuple[Any, Any]) -> None:
    """leaf <- intermediate <- a system-trusted root; the server sends leaf and intermediate.
    Under opportunistic a 2 0 0 record of the root accepts (before Python 3.13 the handshake
    verifies against the root alone, which is a PKIX verification since the system trusts
    it: tls.py Rule 6), one of the intermediate accepts, one of another system CA refuses
    (DaneError). A root the system does not trust is refused by PKIX, DANE or not."""
    root, stranger = system_ca
    inter = make("System Lab Intermediate", root, ca=True)
    leaf, key = make(HOST, inter, names=(HOST,))
    (tmp_path / "srv").mkdir()
    with s_server(tmp_path / "srv", pem(leaf, key), chain=(pem(inter[0]),)) as port:
        for anchor in (root[0], inter[0]):
            how, _, _ = run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, anchor)))))
            assert how is not None and how.startswith(f"dane-ta match (2 0 0) at {NAME}")
            if anchor is root[0] and not PEER_CHAIN:
                assert "verified to the record's certificate in the handshake" in how
        with pytest.raises(DaneError) as err:
            run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, stranger[0])))))
        assert err.value.reason == "mismatch"
    private = make("Private Root", ca=True)
    inter2 = make("Private Intermediate", private, ca=True)
    leaf2, key2 = make(HOST, inter2, names=(HOST,))
    (tmp_path / "private").mkdir()
    with s_server(tmp_path / "private", pem(leaf2, key2), chain=(pem(inter2[0]),)) as port:
        with pytest.raises(ssl_cert_error()) as pkix:
            run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, private[0])))))
        assert not isinstance(pkix.value, DaneError)
        how, _, _ = run(fetch(spec(port, tlsa=tlsa(record(2, 0, 0, private[0])),
                                   s=settings(dane="require"))))
        assert how is not None and how.startswith("dane-ta match (2 0 0)")
