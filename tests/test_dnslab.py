"""The DNS lab (tests/dnslab.py) serves what the other resolution tests rely on.

Rule 1: every claim is checked against the real servers with clients that are not ours:
knot's `kdig`, BIND's `dig`, dnspython, glibc (`getent`), and `openssl` for TLSA digests.
Rule 2: loopback tests need no root; the namespace test skips without root, with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
from dns.rdtypes.svcbbase import ParamKey

import dnslab
from dnslab import Lab, Zone, dig, dig_flags, dig_query_ms, dig_status, example_zone, lab

pytestmark = pytest.mark.skipif(dnslab.missing_tools() is not None,
                                reason=dnslab.missing_tools() or "")


@pytest.fixture(scope="module")
def signed() -> Iterator[Lab]:
    """knot signing example_zone() behind a validating unbound, loopback."""
    with lab(example_zone(), signed=True) as running:
        yield running


def ask(server: tuple[str, int], name: str, rtype: str) -> dns.message.Message:
    """dnspython over UDP, asking for DNSSEC data and the AD bit (RFC 6840 5.7)."""
    query = dns.message.make_query(name, rtype, want_dnssec=True)
    query.flags |= dns.flags.AD
    return dns.query.udp(query, server[0], port=server[1], timeout=3)


def test_a_and_aaaa_carry_their_own_ttls(signed: Lab) -> None:
    knot = signed.knot.address
    a = subprocess.run(["kdig", f"@{knot[0]}", "-p", str(knot[1]), "+noall", "+answer",
                        "svc.lab.test", "A"], capture_output=True, text=True, check=True)
    assert a.stdout.split()[1:5] == ["300", "IN", "A", "198.18.1.2"], a.stdout
    reply = ask(signed.nameserver, "svc.lab.test.", "AAAA")
    (rrset,) = [r for r in reply.answer if r.rdtype == dns.rdatatype.AAAA]
    assert [r.address for r in rrset] == ["fd00:1::2"]
    assert 55 <= rrset.ttl <= 60


def test_https_service_mode_fields(signed: Lab) -> None:
    reply = ask(signed.nameserver, "svc.lab.test.", "HTTPS")
    (rrset,) = [r for r in reply.answer if r.rdtype == dns.rdatatype.HTTPS]
    (rd,) = list(rrset)
    params = {ParamKey(k).name.lower(): v for k, v in rd.params.items()}
    assert rd.priority == 1 and rd.target.to_text() == "."
    assert [a.decode() for a in params["alpn"].ids] == ["h3", "h2"]
    assert params["port"].port == 8443
    assert [str(a) for a in params["ipv4hint"].addresses] == ["198.18.1.2"]
    assert [str(a) for a in params["ipv6hint"].addresses] == ["fd00:1::2"]
    assert params["ech"].ech == base64.b64decode(dnslab.ECH_CONFIG)
    out = dig(signed.nameserver, "svc.lab.test", "HTTPS", "+short")
    assert "alpn=\"h3,h2\" port=8443" in out.stdout, out.stdout


def test_https_alias_mode(signed: Lab) -> None:
    out = dig(signed.nameserver, "alias.lab.test", "HTTPS", "+short")
    assert out.stdout.strip() == "0 svc.lab.test.", out.stdout


def test_tlsa_record_built_from_a_certificate_matches_openssl(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-subj", "/CN=svc.lab.test", "-days", "2"], check=True, capture_output=True)
    spki = subprocess.run(["sh", "-c", f"openssl x509 -in {cert} -pubkey -noout | "
                           "openssl pkey -pubin -outform DER | openssl dgst -sha256 -r"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    full = subprocess.run(["sh", "-c", f"openssl x509 -in {cert} -outform DER | "
                           "openssl dgst -sha512 -r"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    pem = cert.read_bytes()
    zone = Zone("tlsa.test.")
    zone.add(*dnslab.tlsa_record(pem))                           # 3 1 1
    zone.add(*dnslab.tlsa_record(pem, usage=2, selector=0, matching=2))
    assert dnslab.tlsa_rdata(pem) == f"3 1 1 {spki}"
    with lab(zone, signed=True) as running:
        out = dig(running.nameserver, "_443._tcp.svc.tlsa.test", "TLSA", "+dnssec")
        assert dig_status(out.stdout) == "NOERROR" and "ad" in dig_flags(out.stdout)
        short = dig(running.nameserver, "_443._tcp.svc.tlsa.test", "TLSA", "+short").stdout
        got = sorted("".join(line.split()[3:]).lower() for line in short.splitlines())
        assert got == sorted([spki, full]), short


def test_signed_answers_carry_ad_through_unbound(signed: Lab) -> None:
    out = dig(signed.nameserver, "_443._tcp.svc.lab.test", "TLSA", "+dnssec")
    assert dig_status(out.stdout) == "NOERROR"
    assert {"ad", "ra"} <= dig_flags(out.stdout), out.stdout
    assert "RRSIG\tTLSA" in out.stdout
    direct = dig(signed.knot.address, "_443._tcp.svc.lab.test", "TLSA", "+dnssec")
    assert "aa" in dig_flags(direct.stdout) and "ad" not in dig_flags(direct.stdout)
    reply = ask(signed.nameserver, "svc.lab.test.", "A")
    assert reply.flags & dns.flags.AD
    nx = ask(signed.nameserver, "nothing.lab.test.", "A")
    assert nx.rcode() == 3 and nx.flags & dns.flags.AD  # NSEC-proven NXDOMAIN


def test_no_ad_without_validation() -> None:
    with lab(example_zone(), signed=True, validate=False) as no_anchor:
        out = dig(no_anchor.nameserver, "_443._tcp.svc.lab.test", "TLSA", "+dnssec")
        assert dig_status(out.stdout) == "NOERROR" and "ad" not in dig_flags(out.stdout)
        assert no_anchor.trust_anchor is None
    with lab(example_zone(), signed=False) as unsigned:
        out = dig(unsigned.nameserver, "svc.lab.test", "AAAA", "+dnssec")
        assert dig_status(out.stdout) == "NOERROR" and "ad" not in dig_flags(out.stdout)
        assert "RRSIG" not in out.stdout


def test_wrong_trust_anchor_is_servfail(signed: Lab) -> None:
    anchor = signed.trust_anchor
    assert anchor is not None and " DS " in anchor
    with dnslab.unbound(signed.knot.address, signed.zone,
                        dnslab.corrupt_anchor(anchor)) as bogus:
        out = dig(bogus.address, "_443._tcp.svc.lab.test", "TLSA", "+dnssec")
        assert dig_status(out.stdout) == "SERVFAIL", out.stdout


def test_tampered_answers_are_servfail_and_unvalidated_ones_pass_unflagged() -> None:
    with lab(example_zone(), tamper=["TLSA"]) as running:
        out = dig(running.nameserver, "_443._tcp.svc.lab.test", "TLSA", "+dnssec")
        assert dig_status(out.stdout) == "SERVFAIL", out.stdout
        assert "validation failure" in running.unbound.log()  # type: ignore[union-attr]
        good = dig(running.nameserver, "svc.lab.test", "AAAA", "+dnssec")
        assert "ad" in dig_flags(good.stdout)  # only the TLSA answers were altered
        assert running.inner_relay is not None
        direct = dig(running.inner_relay.address, "_443._tcp.svc.lab.test", "TLSA", "+short")
        assert direct.stdout.split()[3].lower() != hashlib.sha256(b"lab").hexdigest()
    with lab(example_zone(), tamper=["TLSA"], validate=False) as running:
        out = dig(running.nameserver, "_443._tcp.svc.lab.test", "TLSA", "+dnssec")
        assert dig_status(out.stdout) == "NOERROR" and "ad" not in dig_flags(out.stdout)


def test_names_outside_the_lab_zone_never_leave_unbound(signed: Lab) -> None:
    for name in ("example.com", "com", "."):
        out = dig(signed.nameserver, name, "A")
        assert dig_status(out.stdout) == "REFUSED", out.stdout
    # The rest of .test is unbound's built-in RFC 6761 zone: answered locally, no data.
    out = dig(signed.nameserver, "other.test", "A")
    assert dig_status(out.stdout) == "NXDOMAIN" and "ANSWER: 0" in out.stdout, out.stdout


def test_resolv_conf_text_names_the_ports() -> None:
    with lab(example_zone(), loopback="::1", signed=False) as running:
        (addr, port), = running.nameservers
        assert addr == "::1"
        assert running.resolv_conf_text(["timeout:1"]) == (f"nameserver [::1]:{port}\n"
                                                           "options timeout:1\n")
        out = dig(running.nameserver, "svc.lab.test", "A", "+short")
        assert out.stdout.split() == ["198.18.1.2"]


def test_changed_records_show_after_the_ttl() -> None:
    zone = Zone("change.test.").add("svc", 1, "A", "198.18.1.2")
    with lab(zone, signed=True) as running:
        first = dig(running.nameserver, "svc.change.test", "A", "+short").stdout.split()
        assert first == ["198.18.1.2"]
        zone.replace("svc", "A", 1, "198.18.1.3")
        running.knot.reload()
        changed_at = time.monotonic()
        assert dig(running.knot.address, "svc.change.test", "A",
                   "+short").stdout.split() == ["198.18.1.3"]
        while True:  # unbound serves its cached answer until the 1 s TTL runs out
            now = dig(running.nameserver, "svc.change.test", "A", "+short").stdout.split()
            if now == ["198.18.1.3"]:
                break
            assert now == ["198.18.1.2"]
            assert time.monotonic() - changed_at < 3, running.logs()
            time.sleep(0.05)  # pacing between polls, the loop ends on the new answer
        out = dig(running.nameserver, "svc.change.test", "A", "+dnssec")
        assert "ad" in dig_flags(out.stdout)  # re-signed by knot on reload


def test_delay_relay_delays_one_qtype() -> None:
    with lab(example_zone(), signed=True, delays={"AAAA": 0.4}) as running:
        assert running.relay is not None
        for transport in ("+notcp", "+tcp"):
            aaaa = [dig_query_ms(dig(running.nameserver, "svc.lab.test", "AAAA",
                                     transport).stdout) for _ in range(2)]
            a = [dig_query_ms(dig(running.nameserver, "svc.lab.test", "A",
                                  transport).stdout) for _ in range(2)]
            assert None not in aaaa and None not in a, (aaaa, a)
            assert all(abs(ms - 400) <= 30 for ms in aaaa if ms is not None), (transport, aaaa)
            assert all(ms <= 30 for ms in a if ms is not None), (transport, a)
        seen = running.relay.queries(clear=True)
        assert [q.rtype for q in seen] == ["AAAA", "AAAA", "A", "A"] * 2
        assert [q.transport for q in seen] == ["udp"] * 4 + ["tcp"] * 4
        held = [q.answered - q.received for q in seen if q.rtype == "AAAA" and q.answered]
        assert abs(statistics.median(held) - 0.4) <= 0.03
        running.relay.set(delays={"A": 0.1})
        ms = dig_query_ms(dig(running.nameserver, "svc.lab.test", "A").stdout)
        assert ms is not None and abs(ms - 100) <= 30
        running.relay.set(drop=["AAAA"])
        out = dig(running.nameserver, "svc.lab.test", "AAAA", "+time=1")
        assert "timed out" in out.stdout + out.stderr
        assert running.relay.queries()[-1].answered is None


def test_port53_lab_is_named_by_a_plain_resolv_conf(tmp_path: Path) -> None:
    reason = dnslab.port53_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from taps_post.resolver.conf import parse_resolv_conf

    with lab(example_zone(), port53=True, relay=True) as running:
        ((addr, port),) = running.nameservers
        assert port == 53 and addr.startswith("127.53.")
        text = running.write_resolv_conf(tmp_path / "resolv.conf").read_text()
        assert text == f"nameserver {addr}\n"
        config = parse_resolv_conf(text)
        assert [(ns.address, ns.port) for ns in config.nameservers] == [(addr, 53)]
        out = dig((addr, 53), "svc.lab.test", "A", "+dnssec")
        assert "ad" in dig_flags(out.stdout), out.stdout


def test_relay_answers_an_rcode_or_truncates() -> None:
    with lab(example_zone(), rcode={"HTTPS": "SERVFAIL"}, truncate=["A"]) as running:
        assert running.relay is not None
        out = dig(running.nameserver, "svc.lab.test", "HTTPS")
        assert dig_status(out.stdout) == "SERVFAIL", out.stdout
        out = dig(running.nameserver, "svc.lab.test", "A", "+short")  # dig retries over TCP
        assert out.stdout.split() == ["198.18.1.2"]
        query = dns.message.make_query("svc.lab.test.", "A")
        reply = dns.query.udp(query, *running.nameserver[:1], port=running.nameserver[1],
                              timeout=3)
        assert reply.flags & dns.flags.TC and not reply.answer
        seen = [(q.rtype, q.transport) for q in running.relay.queries()]
        assert seen == [("HTTPS", "udp"), ("A", "udp"), ("A", "tcp"), ("A", "udp")]
        running.relay.set(rcode={}, truncate=[])
        out = dig(running.nameserver, "svc.lab.test", "HTTPS", "+short")
        assert out.stdout.startswith("1 . alpn="), out.stdout


def test_a_port_taken_before_the_server_binds_it_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    ports = iter([taken.getsockname()[1]])
    real = dnslab.free_port
    monkeypatch.setattr(dnslab, "free_port", lambda host="127.0.0.1": next(ports, None)
                        or real(host))
    with taken, lab(example_zone(), signed=False) as running:
        assert running.knot.address[1] != taken.getsockname()[1]
        out = dig(running.nameserver, "svc.lab.test", "A", "+short")
        assert out.stdout.split() == ["198.18.1.2"]


def test_knot_restart_keeps_its_keys(signed: Lab) -> None:
    zone = Zone("restart.test.").add("svc", 300, "A", "198.18.1.2")
    with dnslab.knot(zone, signed=True) as k:
        before = k.trust_anchor
        k.restart()
        assert k.trust_anchor == before
        out = dig(k.address, "svc.restart.test", "A", "+dnssec", "+norec")
        assert "aa" in dig_flags(out.stdout) and "RRSIG" in out.stdout


def test_lab_on_port_53_in_a_namespace() -> None:
    netns = pytest.importorskip("netns")
    with netns.topology("dl") as topo, lab(example_zone(), topo=topo,
                                           delays={"AAAA": 0.2}) as running:
        assert running.nameservers == ((netns.B1_V4, 53), (netns.B1_V6, 53))
        conf = (netns.Path("/etc/netns") / topo.a / "resolv.conf").read_text()
        assert conf.splitlines() == [f"nameserver {netns.B1_V4}", f"nameserver {netns.B1_V6}"]
        out = dig((netns.B1_V6, 53), "_443._tcp.svc.lab.test", "TLSA", "+dnssec",
                  netns=topo.a)
        assert "ad" in dig_flags(out.stdout), out.stdout
        ms = dig_query_ms(dig((netns.B1_V4, 53), "svc.lab.test", "AAAA", netns=topo.a).stdout)
        assert ms is not None and abs(ms - 200) <= 30  # the relay owns port 53 there
        hosts = topo.exec(topo.a, "getent", "ahosts", "svc.lab.test").stdout
        assert {line.split()[0] for line in hosts.splitlines()} == {"198.18.1.2", "fd00:1::2"}
