"""DANE end to end with real servers that are not ours: TLSA records served by Knot DNS from a
zone it signs, validated by Unbound (tests/dnslab.py), fetched with taps_post's own DNS client,
and checked against `openssl s_server` (TLS) and aioquic's own server (QUIC).

The stacks are driven with the AttemptSpec the runtime builds (its `tlsa` is the answer's
records and whether it was authenticated: `TlsaSet(name, answer.tlsa, answer.authenticated)`,
as runtime/resolution.py does); test_dane_initiate (below) goes through `tp.initiate`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dane_quic import aioquic_server, connect, free_udp_port
from test_dane_quic import spec as quic_spec
from test_dane_tls import fetch, free_port, s_server, settings, spec

import dnslab
import taps_post as tp
from taps_post.decision.names import TlsaSet, tlsa_name
from taps_post.errors import DaneError, FailureKind
from taps_post.resolver.client import DnsClient
from taps_post.resolver.conf import Nameserver, ResolverConfig
from taps_post.runtime.racing import classify

ZONE = "dane.test."
GOOD = "svc.dane.test"
BAD = "bad.dane.test"
SERVER = tp.certs.self_signed([GOOD, BAD])
OTHER = tp.certs.self_signed([GOOD])
TCP_PORT = free_port()
UDP_PORT = free_udp_port()


def zone() -> dnslab.Zone:
    z = dnslab.Zone(ZONE)
    z.add("svc", 300, "A", "127.0.0.1").add("bad", 300, "A", "127.0.0.1")
    z.add(f"_{TCP_PORT}._tcp.svc", 300, "TLSA", dnslab.tlsa_rdata(SERVER.cert_pem))
    z.add(f"_{TCP_PORT}._tcp.bad", 300, "TLSA", dnslab.tlsa_rdata(OTHER.cert_pem))
    z.add(f"_{UDP_PORT}._udp.svc", 300, "TLSA",
          dnslab.tlsa_rdata(SERVER.cert_pem, selector=0, matching=2))
    return z


@pytest.fixture(scope="module")
def validating() -> Iterator[dnslab.Lab]:
    # port 53 when root: a resolv.conf (no ports, glibc) can name it for `resolving` below.
    with dnslab.lab(zone(), signed=True, port53=dnslab.port53_unavailable() is None) as dns:
        yield dns


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with s_server(tmp_path_factory.mktemp("s_server"), SERVER, port=TCP_PORT) as port:
        yield port


def run(coro: Any, timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def tlsa_of(dns: dnslab.Lab, host: str, port: int, proto: str) -> TlsaSet | None:
    """The TLSA set the runtime would hand the stack: None when the DNS gave no answer."""
    # trust_ad: the lab's validating unbound, as resolv.conf's `options trust-ad` says
    # (glibc: no AD bit is believed without it, loopback or not; resolver conf.py Rule 5).
    client = DnsClient(ResolverConfig(nameservers=(Nameserver(*dns.nameserver),),
                                      trust_ad=True))
    name = tlsa_name(host, port, proto)
    answer = await client.query(name, "TLSA")
    if not (answer.ok or answer.negative):
        return None
    return TlsaSet(name, tuple(answer.tlsa), answer.authenticated)


def test_validated_tlsa_accepts_under_require_a_server_pkix_refuses(
        validating: dnslab.Lab, tls_server: int) -> None:
    """Only `require` lets the validated DANE-EE record replace PKIX (R1-H4): under the
    default `opportunistic` the same record adds a condition, and PKIX still refuses the
    self-signed certificate."""
    async def main() -> tuple[TlsaSet | None, Any, BaseException]:
        got = await tlsa_of(validating, GOOD, tls_server, "tcp")
        with pytest.raises(ssl_error()) as pkix:
            await fetch(spec(tls_server, tlsa=got, host=GOOD))
        return got, await fetch(spec(tls_server, tlsa=got, host=GOOD,
                                     s=settings(dane="require"))), pkix.value

    got, (how, _, page), pkix = run(main())
    assert not isinstance(pkix, DaneError), "PKIX refused it under opportunistic"
    assert got is not None and got.validated and len(got.records) == 1
    assert how == f"dane-ee match (3 1 1) at _{tls_server}._tcp.{GOOD}"
    assert page.startswith(b"HTTP/1.0 200 ok")


def test_validated_mismatch_refuses_a_pinned_server(validating: dnslab.Lab,
                                                    tls_server: int) -> None:
    """The zone names another key for bad.dane.test: PKIX (the pin) would accept."""
    async def main() -> Any:
        got = await tlsa_of(validating, BAD, tls_server, "tcp")
        assert got is not None and got.validated
        pinned_only = await fetch(spec(tls_server, tlsa=None, host=BAD, pinned=(SERVER,)))
        with pytest.raises(DaneError) as err:
            await fetch(spec(tls_server, tlsa=got, host=BAD, pinned=(SERVER,)))
        return pinned_only, err.value

    (how, _, _), err = run(main())
    assert how is not None and how.startswith("no TLSA")
    assert err.reason == "mismatch" and err.name == f"_{tls_server}._tcp.{BAD}"
    assert classify(err) is FailureKind.TLS_VERIFY


@pytest.mark.parametrize("how_unvalidated", ["knot-directly", "unsigned-zone"])
def test_an_answer_without_validation_is_ignored_or_refused(tls_server: int,
                                                            how_unvalidated: str) -> None:
    """The signed zone asked of knot directly (an authoritative answer, no AD), or an
    unsigned zone through the validating unbound (insecure, no AD). The records match the
    server, yet they accept nothing (PKIX decides) and `require` refuses the peer for them."""
    kind = ({"signed": True, "resolver": False} if how_unvalidated == "knot-directly"
            else {"signed": False})
    with dnslab.lab(zone(), **kind) as knot_only:
        async def main() -> Any:
            got = await tlsa_of(knot_only, GOOD, tls_server, "tcp")
            assert got is not None and got.records and not got.validated
            ignored = await fetch(spec(tls_server, tlsa=got, host=GOOD, pinned=(SERVER,)))
            with pytest.raises(ssl_error()) as pkix:
                await fetch(spec(tls_server, tlsa=got, host=GOOD))
            with pytest.raises(DaneError) as refused:
                await fetch(spec(tls_server, tlsa=got, host=GOOD, pinned=(SERVER,),
                                 s=settings(dane="require")))
            return ignored, pkix.value, refused.value

        (how, _, _), pkix, refused = run(main())
    assert how == f"TLSA of _{tls_server}._tcp.{GOOD} not validated: ignored, PKIX"
    assert not isinstance(pkix, DaneError)
    assert refused.reason == "not_validated"


def test_a_bogus_answer_is_no_answer(tls_server: int) -> None:
    """TLSA records altered between knot and unbound: validation fails (SERVFAIL), so the
    stack gets no set; `require` refuses before connecting, opportunistic uses PKIX."""
    with dnslab.lab(zone(), signed=True, tamper=["TLSA"]) as bogus:
        async def main() -> Any:
            got = await tlsa_of(bogus, GOOD, tls_server, "tcp")
            assert got is None
            ok = await fetch(spec(tls_server, tlsa=got, host=GOOD, pinned=(SERVER,)))
            with pytest.raises(DaneError) as refused:
                await fetch(spec(tls_server, tlsa=got, host=GOOD, pinned=(SERVER,),
                                 s=settings(dane="require")))
            return ok, refused.value

        (how, _, _), refused = run(main())
    assert how is not None and how.startswith("no TLSA")
    assert refused.reason == "no_tlsa"


def test_quic_validated_tlsa_from_the_lab(validating: dnslab.Lab, tmp_path: Path) -> None:
    """`_port._udp` TLSA (3 0 2: the whole certificate, SHA-512) against aioquic's server."""
    async def main() -> Any:
        got = await tlsa_of(validating, GOOD, UDP_PORT, "udp")
        assert got is not None and got.validated
        async with aioquic_server(tmp_path, SERVER, port=UDP_PORT) as port:
            sp = quic_spec(port, tlsa=got, host=GOOD, dane="require")
            return await connect(sp)

    how, _, _ = run(main())
    assert how == f"dane-ee match (3 0 2) at _{UDP_PORT}._udp.{GOOD}"


def ssl_error() -> type[BaseException]:
    import ssl

    return ssl.SSLCertVerificationError


# ---- through tp.initiate: the runtime asks for TLSA with the addresses --------------------


def dane_policy(mode: str) -> tp.PolicyContext:
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "dane", "set": {"stack": {"tls": "require"},
                                            "security.dane": mode}}]}
    return tp.PolicyContext(system=[], app=app, app_name="dane")


@pytest.fixture
def resolving(validating: dnslab.Lab, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> dnslab.Lab:
    """The runtime's default client asks the validating lab, named by resolv.conf with
    `options trust-ad` (glibc's rule: only then is its AD believed; a systemd-resolved
    per-link server never is, resolver conf.py Rule 5). resolv.conf has no port, so the
    lab listens on port 53 of a 127.53.X.Y address (root)."""
    from taps_post.resolver.client import default_client

    if validating.nameserver[1] != 53:
        pytest.skip(dnslab.port53_unavailable() or "the lab is not on port 53")
    links = tmp_path / "links"
    links.mkdir()
    port = validating.nameserver[1]
    validating.write_resolv_conf(tmp_path / "resolv.conf", ["trust-ad"])
    (tmp_path / "hosts").write_text("")
    monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(tmp_path / "resolv.conf"))
    monkeypatch.setenv("TAPS_POST_RESOLVED_LINKS", str(links))
    monkeypatch.setenv("TAPS_POST_HOSTS", str(tmp_path / "hosts"))
    client = default_client()
    assert client is not None and client.config.nameservers[0].port == port
    return validating


def test_initiate_connects_by_dane_and_refuses_a_mismatch(resolving: dnslab.Lab,
                                                          tls_server: int) -> None:
    """No certificate pinned and none a CA signed: the validated TLSA record is what lets
    the carrier connect under require; bad.dane.test, whose record names another key, fails
    as tls_verify with the DaneError in its attempt record. Under opportunistic the good
    record does not replace PKIX: the same connect fails PKIX (R1-H4)."""
    async def main() -> Any:
        store = tp.AssociationStore()
        carrier = await tp.initiate(f"tls://{GOOD}:{tls_server}", policy=dane_policy("require"),
                                    framer=tp.RawFramer(), store=store)
        try:
            how = carrier.transients[0].dane
            await carrier.send(b"GET / HTTP/1.0\r\n\r\n")
            first = bytes(await carrier.receive())
        finally:
            await carrier.close()
        with pytest.raises(tp.EstablishmentError) as err:  # initiate() activates when awaited
            await tp.initiate(f"tls://{BAD}:{tls_server}", policy=dane_policy("require"),
                              framer=tp.RawFramer(), store=store)
        with pytest.raises(tp.EstablishmentError) as pkix:
            await tp.initiate(f"tls://{GOOD}:{tls_server}",
                              policy=dane_policy("opportunistic"), framer=tp.RawFramer(),
                              store=tp.AssociationStore())
        return how, first, err.value, pkix.value

    how, first, err, pkix = run(main())
    refused = [a for a in pkix.attempts if a.outcome == "failed"]
    assert refused and all(a.kind is FailureKind.TLS_VERIFY for a in refused), pkix
    assert not any(isinstance(a.exception, DaneError) for a in refused), pkix
    assert how == f"dane-ee match (3 1 1) at _{tls_server}._tcp.{GOOD}"
    assert first.startswith(b"HTTP/1.0 200 ok")
    failed = [a for a in err.attempts if a.outcome == "failed"]
    assert failed and all(a.kind is FailureKind.TLS_VERIFY for a in failed), err
    assert all(isinstance(a.exception, DaneError) for a in failed), err
    assert f"_{tls_server}._tcp.{BAD}" in str(err)


def test_initiate_quic_by_dane(resolving: dnslab.Lab, tmp_path: Path) -> None:
    """quic:// through the runtime: the `_port._udp` TLSA record (3 0 2) accepts aioquic's
    server, whose self-signed certificate nobody pinned."""
    policy = tp.PolicyContext(system=[], app={
        "version": 1, "layer": "app",
        "rules": [{"id": "q", "set": {"stack": {"quic": "require"},
                                      "security.dane": "require"}}]}, app_name="dane")

    async def main() -> Any:
        async with aioquic_server(tmp_path, SERVER, port=UDP_PORT) as port:
            carrier = await tp.initiate(f"quic://{GOOD}:{port}", policy=policy)
            try:
                return carrier.stack, carrier.transients[0].dane
            finally:
                await carrier.close()

    stack, how = run(main())
    assert stack == "quic"
    assert how == f"dane-ee match (3 0 2) at _{UDP_PORT}._udp.{GOOD}"
