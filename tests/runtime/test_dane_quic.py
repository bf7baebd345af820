"""DANE on the QUIC stack (stacks/quic/config.py Rule 8) against aioquic's own server
(`aioquic.asyncio.serve`, not a taps_post listener), and `compat.peer_chain` on it.

The stack is driven directly (`QuicStack.connect` with an AttemptSpec carrying the TLSA set,
as the runtime fills it). Real UDP sockets on loopback, no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
from cryptography import x509
from test_dane_tls import pem, run, x509_of
from test_dane_tls import settings as tls_settings

import taps_post as tp
from taps_post.certs import Certificate
from taps_post.core.framing import LengthPrefixFramer
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate
from taps_post.decision.names import TlsaRecord, TlsaSet
from taps_post.errors import DaneError, FailureKind
from taps_post.runtime.racing import classify
from taps_post.stacks.base import AttemptSpec
from taps_post.stacks.quic.compat import peer_chain
from taps_post.stacks.quic.config import Origin, Trust
from taps_post.stacks.quic.stack import QuicStack
from test_dane_match import make, record

LO4 = "127.0.0.1"
HOST = "localhost"
NAME = "_443._udp.localhost"


def settings(**kw: Any) -> Settings:
    """test_dane_tls's settings, with TLS 1.3 (QUIC's only version)."""
    return tls_settings(**{"min_tls": "1.3", **kw})


class Tickets:
    """The SessionState a stack sees (the runtime's Association implements it)."""

    def __init__(self) -> None:
        self.tickets: list[Any] = []
        self.tls_contexts: dict[Any, Any] = {}

    def take_ticket(self, stack: str, accept: Callable[[Any], bool] | None = None) -> Any:
        for t in reversed(self.tickets):
            if accept is None or accept(t):
                self.tickets.remove(t)
                return t
        return None

    def add_ticket(self, stack: str, ticket: Any) -> None:
        self.tickets.append(ticket)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO4, 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def aioquic_server(tmp: Path, cert: Certificate, chain: tuple[Certificate, ...] = (),
                         port: int = 0) -> AsyncIterator[int]:
    """aioquic's own server with `cert` (and `chain`), read from files by its public
    load_cert_chain; it keeps session tickets, so clients resume."""
    assert cert.key_pem is not None
    (tmp / "cert.pem").write_text(cert.cert_pem + "".join(c.cert_pem for c in chain))
    (tmp / "key.pem").write_text(cert.key_pem)
    config = QuicConfiguration(is_client=False)
    config.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    store: dict[bytes, SessionTicket] = {}
    port = port or free_udp_port()
    server = await serve(LO4, port, configuration=config,
                         session_ticket_fetcher=lambda t: store.pop(t, None),
                         session_ticket_handler=lambda t: store.__setitem__(t.ticket, t))
    try:
        yield port
    finally:
        server.close()


def spec(port: int, *, tlsa: TlsaSet | None, state: Tickets | None = None,
         pinned: tuple[Certificate, ...] = (), host: str = HOST, **s: Any) -> AttemptSpec:
    c = Candidate(rank=0, interface="lo", local_address=LO4, stack="quic",
                  remote_address=LO4, remote_port=port, family="ipv4", start_ms=0,
                  key=cast(Any, None))
    return AttemptSpec(candidate=c, host=host, settings=settings(**s),
                       association=state or Tickets(), framer=LengthPrefixFramer,
                       pinned=pinned, tlsa=tlsa)


async def connect(sp: AttemptSpec, *, ticket: bool = False
                  ) -> tuple[str | None, bool, tuple[bytes, ...]]:
    """(how DANE accepted, resumed, the chain compat.peer_chain read); with `ticket`, after
    the server's session ticket arrived (checked once per loop iteration)."""
    t = await QuicStack().connect(sp)
    try:
        state = cast(Tickets, sp.association)
        deadline = asyncio.get_running_loop().time() + 2
        while ticket and not state.tickets:
            assert asyncio.get_running_loop().time() < deadline, "no session ticket"
            await asyncio.sleep(0)
        return t.dane, t.session_reused, peer_chain(t.session.connection)
    finally:
        await t.aclose()


def tlsa(*records: TlsaRecord, validated: bool = True) -> TlsaSet:
    return TlsaSet(NAME, records, validated)


@pytest.fixture(scope="module")
def server_cert() -> Certificate:
    return tp.certs.self_signed([HOST])


def test_dane_ee_match_connects_and_resumes_only_with_a_ticket_that_matched(
        tmp_path: Path, server_cert: Certificate) -> None:
    """Under require the validated DANE-EE record decides (PKIX deferred); under
    opportunistic PKIX still refuses the self-signed certificate (R1-H4); a ticket from the
    require connection would not be offered to it either (it proved no PKIX verification:
    test_trust_admits_only_tickets_that_matched_the_same_records)."""
    ee = tlsa(record(3, 1, 1, x509_of(server_cert)))

    async def main() -> Any:
        async with aioquic_server(tmp_path, server_cert) as port:
            with pytest.raises(Exception) as pkix:  # nobody vouches for a self-signed one
                await QuicStack().connect(spec(port, tlsa=None))
            state = Tickets()
            first = await connect(spec(port, tlsa=ee, state=state, dane="require"),
                                  ticket=True)
            with pytest.raises(Exception) as opportunistic:
                await QuicStack().connect(spec(port, tlsa=ee))
            second = await connect(spec(port, tlsa=ee, state=state, dane="require"))
            return pkix.value, opportunistic.value, first, second

    pkix, opp, (how1, reused1, chain1), (how2, reused2, chain2) = run(main())
    assert classify(pkix) is FailureKind.TLS_VERIFY and not isinstance(pkix, DaneError)
    assert classify(opp) is FailureKind.TLS_VERIFY and not isinstance(opp, DaneError)
    assert how1 == f"dane-ee match (3 1 1) at {NAME}"
    assert chain1 == (ssl.PEM_cert_to_DER_cert(server_cert.cert_pem),)
    assert (reused1, reused2) == (False, True)
    assert how2 == f"resumed, first dane-ee match (3 1 1) at {NAME}"
    assert chain2 == (), "a resumed handshake shows no certificate"


@pytest.mark.parametrize("mode", ["opportunistic", "require"])
def test_dane_mismatch_refuses_a_pinned_server(tmp_path: Path, server_cert: Certificate,
                                               mode: str) -> None:
    other = tp.certs.self_signed([HOST])
    wrong = tlsa(record(3, 1, 1, x509_of(other)))

    async def main() -> BaseException:
        async with aioquic_server(tmp_path, server_cert) as port:
            how, _, _ = await connect(spec(port, tlsa=None, pinned=(server_cert,)))
            assert how is not None and how.startswith("no TLSA")
            with pytest.raises(DaneError) as err:
                await QuicStack().connect(spec(port, tlsa=wrong, pinned=(server_cert,),
                                               dane=mode))
            return err.value

    err = run(main())
    assert err.reason == "mismatch" and err.name == NAME
    assert classify(err) is FailureKind.TLS_VERIFY


def test_unvalidated_tlsa_ignored_under_opportunistic_refused_under_require(
        tmp_path: Path, server_cert: Certificate) -> None:
    other = tp.certs.self_signed([HOST])
    unvalidated = tlsa(record(3, 1, 1, x509_of(other)), validated=False)

    async def main() -> tuple[str | None, BaseException]:
        async with aioquic_server(tmp_path, server_cert) as port:
            how, _, _ = await connect(spec(port, tlsa=unvalidated, pinned=(server_cert,)))
            with pytest.raises(DaneError) as err:
                await QuicStack().connect(spec(port, tlsa=unvalidated, pinned=(server_cert,),
                                               dane="require"))
            return how, err.value

    how, err = run(main())
    assert how == f"TLSA of {NAME} not validated: ignored, PKIX"
    assert err.reason == "not_validated"


def test_dane_ta_digest_matches_the_chain_aioquic_received(tmp_path: Path) -> None:
    """QUIC sees the whole chain (compat.peer_chain), so a 2 1 1 record of the CA works."""
    ca = make("Lab CA", ca=True)
    leaf, key = make(HOST, ca, names=(HOST,))

    async def main() -> Any:
        async with aioquic_server(tmp_path, pem(leaf, key), chain=(pem(ca[0]),)) as port:
            return await connect(spec(port, tlsa=tlsa(record(2, 1, 1, ca[0])),
                                      dane="require"))

    how, _, chain = run(main())
    assert how == f"dane-ta match (2 1 1) at {NAME}: trust anchor at depth 1"
    assert [x509.load_der_x509_certificate(c) for c in chain] == [leaf, ca[0]]


@pytest.mark.parametrize("selector,matching", [(0, 1), (1, 1), (0, 0)])
def test_an_end_entity_under_the_anchor_cannot_issue_the_servers_leaf(
        tmp_path: Path, selector: int, matching: int) -> None:
    """R1-H2 on the QUIC chain path (the review's experiment against aioquic's server): TA
    -> lowvalue.example (CA:FALSE) -> a localhost leaf signed with lowvalue's key, all three
    sent. Under require aioquic verifies nothing (PKIX deferred) and Trust.check refuses
    the path: lowvalue is not a CA. The same with a real intermediate connects."""
    ta = make("Org TA", ca=True)
    ee = make("lowvalue.example", ta, names=("lowvalue.example",))
    leaf, key = make(HOST, ee, names=(HOST,))
    inter = make("Org Issuing CA", ta, ca=True)
    good, good_key = make(HOST, inter, names=(HOST,))
    anchor = tlsa(record(2, selector, matching, ta[0]))
    (tmp_path / "forged").mkdir()
    (tmp_path / "good").mkdir()

    async def main() -> Any:
        async with aioquic_server(tmp_path / "forged", pem(leaf, key),
                                  chain=(pem(ee[0]), pem(ta[0]))) as port:
            with pytest.raises(DaneError) as err:
                await QuicStack().connect(spec(port, tlsa=anchor, dane="require"))
        async with aioquic_server(tmp_path / "good", pem(good, good_key),
                                  chain=(pem(inter[0]), pem(ta[0]))) as port:
            ok = await connect(spec(port, tlsa=anchor, dane="require"))
        return err.value, ok

    err, (how, _, _) = run(main())
    assert err.reason == "mismatch" and "is not a CA" in str(err)
    assert classify(err) is FailureKind.TLS_VERIFY
    assert how == (f"dane-ta match (2 {selector} {matching}) at {NAME}: "
                   "trust anchor at depth 2")


def test_opportunistic_keeps_pkix_and_adds_the_dane_refusal(tmp_path: Path,
                                                            server_cert: Certificate) -> None:
    """A pinned server (PKIX passes by the pin) with its own DANE-EE record: accepted and the
    match reported; aioquic verified (Origin.verified), so DANE did not replace PKIX."""
    ee = tlsa(record(3, 1, 1, x509_of(server_cert)))

    async def main() -> Any:
        async with aioquic_server(tmp_path, server_cert) as port:
            t = await QuicStack().connect(spec(port, tlsa=ee, pinned=(server_cert,)))
            try:
                return t.dane, t.session.origin
            finally:
                await t.aclose()

    how, origin = run(main())
    assert how == f"dane-ee match (3 1 1) at {NAME}"
    assert origin is not None and origin.verified and origin.dane == ee.records


def test_trust_admits_only_tickets_that_matched_the_same_records(
        server_cert: Certificate) -> None:
    ee = tlsa(record(3, 1, 1, x509_of(server_cert)))
    trust = Trust(frozenset(), True, ee, "require", HOST)
    assert trust.dane_decides and not trust.system_anchors
    records = ee.records
    assert trust.admits(Origin("A", False, False, records))
    assert not trust.admits(Origin("A", True, True)), "PKIX-verified, never DANE-matched"
    assert not trust.admits(None)
    other = tlsa(record(3, 1, 1, x509_of(tp.certs.self_signed([HOST]))))
    assert not Trust(frozenset(), True, other, "require").admits(
        Origin("A", False, False, records)), "matched other records"
    # Opportunistic: PKIX stays, DANE must match as well (R1-H4).
    opp = Trust(frozenset(), True, ee, "opportunistic", HOST)
    assert not opp.dane_decides and opp.dane_applies and opp.system_anchors
    assert opp.admits(Origin("A", True, True, records))
    assert not opp.admits(Origin("A", False, False, records)), "DANE-only, no PKIX"
    assert not opp.admits(Origin("A", True, True)), "PKIX-only, never DANE-matched"
    assert not Trust(frozenset(), False, ee, "opportunistic").admits(None)
    # Without a deciding set, a DANE-matched ticket proved no PKIX verification.
    assert not Trust(frozenset(), True).admits(Origin("A", False, False, records))


def test_compat_peer_chain_is_what_the_server_sent_and_empty_on_resumption(
        tmp_path: Path) -> None:
    """compat.peer_chain (aioquic's tls.Context._peer_certificate and
    _peer_certificate_chain): leaf first, then the rest of the Certificate message in order;
    nothing after a resumed handshake (TLS 1.3 PSK sends no certificate)."""
    root = make("Root CA", ca=True)
    inter = make("Intermediate CA", root, ca=True)
    leaf, key = make(HOST, inter, names=(HOST,))
    sent = (pem(inter[0]), pem(root[0]))

    async def main() -> Any:
        async with aioquic_server(tmp_path, pem(leaf, key), chain=sent) as port:
            state = Tickets()
            first = await connect(spec(port, tlsa=None, state=state, verify_peer=False),
                                  ticket=True)
            second = await connect(spec(port, tlsa=None, state=state, verify_peer=False))
            return first, second

    (_, reused1, chain1), (_, reused2, chain2) = run(main())
    assert [x509.load_der_x509_certificate(c) for c in chain1] == [leaf, inter[0], root[0]]
    assert (reused1, reused2, chain2) == (False, True, ())
