"""The DNS client against real servers on loopback: knot (authoritative, signing its zone)
and a validating unbound in front of it (tests/dnslab.py), plus plain UDP sockets that
record what the client sends and never answer (a nameserver that is down).

One lab serves the whole module (starting a signed knot and unbound costs ~2.5 s); the one
test that edits the zone only touches its own names. Answers are asked of knot directly
where the test is about the client (TTLs, CNAMEs, truncation), of unbound where it is about
validation (AD).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dnslab import Lab, corrupt_anchor, delay_relay, example_zone, lab, unbound
from taps_post.resolver.client import DnsClient
from taps_post.resolver.conf import Nameserver, ResolverConfig

MANY = 100
"""A records of `many`: 100 x 16 bytes do not fit a 1232-byte UDP answer."""


@pytest.fixture(scope="module")
def dns_lab() -> Iterator[Lab]:
    zone = example_zone()
    zone.negative_ttl = 2  # the SOA MINIMUM: NXDOMAIN/NODATA live 2 s (RFC 2308)
    zone.add("short", 2, "A", "198.18.1.10")
    zone.add("week", 604800, "A", "198.18.1.13")
    zone.add("week", 604800, "HTTPS", "1 . alpn=h2")
    zone.add("c1", 120, "CNAME", "c2.lab.test.")
    zone.add("c2", 40, "CNAME", "svc.lab.test.")
    zone.add("ext", 300, "CNAME", "svc.elsewhere.test.")
    zone.add("plain", 300, "HTTPS", "2 svc.lab.test. alpn=h2 no-default-alpn")
    zone.add("_8080._foo.svc", 300, "SVCB",
             '1 svc.lab.test. mandatory=alpn,port,key65000 alpn=foo port=8080 key65000="x"')
    for n in range(1, MANY + 1):
        zone.add("many", 300, "A", f"198.18.3.{n}")
    with lab(zone, signed=True) as running:
        yield running


def client(*servers: tuple[str, int], timeout: float = 2.0, attempts: int = 1,
           trust_ad: bool = False) -> DnsClient:
    return DnsClient(ResolverConfig(tuple(Nameserver(a, p) for a, p in servers),
                                    timeout=timeout, attempts=attempts, trust_ad=trust_ad))


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A bound UDP socket nobody reads: a nameserver that never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def datagrams(sock: socket.socket) -> list[tuple[bytes, Any]]:
    """Every datagram waiting on `sock`, with its source."""
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65535))
        except BlockingIOError:
            return out


def received(sock: socket.socket) -> list[dns.message.Message]:
    return [dns.message.from_wire(wire) for wire, _source in datagrams(sock)]


def test_a_and_aaaa_keep_their_own_ttls(dns_lab: Lab, run: Any) -> None:
    c = client(dns_lab.knot.address)

    async def main() -> None:
        a, aaaa = await asyncio.gather(c.query("svc.lab.test", "A"),
                                       c.query("svc.lab.test", "AAAA"))
        assert (a.status, a.addresses, a.ttl) == ("ok", ("198.18.1.2",), 300)
        assert (aaaa.status, aaaa.addresses, aaaa.ttl) == ("ok", ("fd00:1::2",), 60)
        assert not a.from_cache and a.nameserver == Nameserver(*dns_lab.knot.address)
        sent = c.sent
        again = await c.query("SVC.lab.test.", "AAAA")
        assert again.from_cache and again.addresses == ("fd00:1::2",) and again.ttl <= 60
        assert c.sent == sent  # served from the cache: nothing on the wire

    run(main())


def test_concurrent_questions_share_one_query(dns_lab: Lab, run: Any) -> None:
    c = client(dns_lab.knot.address)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(c.query("svc.lab.test", "A") for _ in range(5)),
                                         c.query("svc.lab.test", "AAAA")))

    answers = run(main())
    assert c.sent == 2
    assert all(a.addresses == ("198.18.1.2",) for a in answers[:5])
    assert run(c.query("svc.lab.test", "A")).from_cache and c.sent == 2
    assert c.forget(["svc.lab.test"]) == 2
    assert not run(c.query("svc.lab.test", "A")).from_cache and c.sent == 3


def test_cname_chain_ttl_is_the_minimum(dns_lab: Lab, run: Any) -> None:
    c = client(dns_lab.knot.address)
    answer = run(c.query("c1.lab.test", "A"))
    assert (answer.status, answer.addresses, answer.ttl) == ("ok", ("198.18.1.2",), 40)
    www = run(c.query("www.lab.test", "AAAA"))
    assert (www.addresses, www.ttl) == (("fd00:1::2",), 60)


def test_chain_leaving_the_zone_is_not_cached(dns_lab: Lab, run: Any) -> None:
    """knot answers a CNAME to another zone with the CNAME alone and no SOA: nothing says how
    long the absence lasts (RFC 2308 section 5), so the answer is not cached."""
    c = client(dns_lab.knot.address)
    first = run(c.query("ext.lab.test", "A"))
    assert (first.status, first.ttl, first.addresses) == ("nodata", None, ())
    again = run(c.query("ext.lab.test", "A"))
    assert not again.from_cache and c.sent == 2


def test_ttl_and_negative_ttl_expire(dns_lab: Lab, run: Any) -> None:
    """short (A, TTL 2), later (NXDOMAIN) and v4only's AAAA (NODATA) with SOA MINIMUM 2: the
    zone changes at once, the cache keeps the old answers until 2 s passed, then asks."""
    c = client(dns_lab.knot.address)
    zone = dns_lab.zone

    async def ask() -> tuple[Any, Any, Any]:
        return await asyncio.gather(c.query("short.lab.test", "A"),
                                    c.query("later.lab.test", "A"),
                                    c.query("v4only.lab.test", "AAAA"))

    short, later, nodata = run(ask())
    learnt = time.monotonic()
    assert (short.status, short.addresses, short.ttl) == ("ok", ("198.18.1.10",), 2)
    assert (later.status, later.ttl) == ("nxdomain", 2)  # min(SOA TTL 300, MINIMUM 2)
    assert (nodata.status, nodata.ttl) == ("nodata", 2)
    zone.replace("short", "A", 2, "198.18.1.11")
    zone.add("later", 300, "A", "198.18.1.12")
    zone.add("v4only", 300, "AAAA", "fd00:1::12")
    dns_lab.knot.reload()
    sent = c.sent
    cached = run(ask())
    if time.monotonic() - learnt >= 2.0:
        pytest.skip("knot's re-signing reload took longer than the 2 s TTL (loaded machine)")
    assert [a.from_cache for a in cached] == [True, True, True] and c.sent == sent
    assert cached[0].addresses == ("198.18.1.10",) and cached[1].status == "nxdomain"
    time.sleep(max(0.0, learnt + 2.05 - time.monotonic()))  # the TTL running out is the test
    short, later, nodata = run(ask())
    assert (short.addresses, short.from_cache) == (("198.18.1.11",), False)
    assert (later.status, later.addresses) == ("ok", ("198.18.1.12",))
    assert (nodata.status, nodata.addresses) == ("ok", ("fd00:1::12",))


def test_the_first_answer_reports_the_capped_ttl(dns_lab: Lab, run: Any) -> None:
    """client.py Rule 6 (review L11): a week's TTL is reported as the cache's 3600 s cap on
    the first answer too, for the answer and its service records."""
    c = client(dns_lab.knot.address)

    async def main() -> list[Any]:
        return list(await asyncio.gather(c.query("week.lab.test", "A"),
                                         c.query("week.lab.test", "HTTPS")))

    a, https = run(main())
    assert (a.status, a.ttl, https.ttl, https.services[0].ttl) == ("ok", 3600, 3600, 3600)
    hit = run(c.query("week.lab.test", "A"))
    assert hit.from_cache and 3598 <= hit.ttl <= 3600


def test_a_negative_answers_soa_must_be_at_or_above_the_name(run: Any) -> None:
    """client.py Rule 6 (review L9): a server answers NXDOMAIN with an SOA for another zone
    (elsewhere.test): it says nothing about the name, so the answer is not cached; the same
    answer with the zone's own SOA is (ttl = min(SOA TTL, MINIMUM))."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)

    def answer(count: int) -> None:
        for _ in range(count):
            wire, peer = server.recvfrom(65535)
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.NXDOMAIN)
            name = query.question[0].name.to_text()
            owner = "elsewhere.test." if name.startswith("foreign") else "lab.test."
            reply.authority.append(dns.rrset.from_text(
                owner, 300, "IN", "SOA", f"ns.{owner} admin.{owner} 1 60 60 600 30"))
            server.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=answer, args=(2,), daemon=True)
    thread.start()
    try:
        c = client(server.getsockname())
        foreign = run(c.query("foreign.lab.test", "A"))
        own = run(c.query("own.lab.test", "A"))
    finally:
        thread.join(5)
        server.close()
    assert (foreign.status, foreign.ttl) == ("nxdomain", None)
    assert (own.status, own.ttl) == ("nxdomain", 30)
    assert c.cache.get(("foreign.lab.test", "A"), time.monotonic()) is None
    cached = c.cache.get(("own.lab.test", "AAAA"), time.monotonic())  # cache.py Rule 8
    assert cached is not None and cached.status == "nxdomain"


def test_https_and_svcb_fields_from_knot(dns_lab: Lab, run: Any) -> None:
    c = client(dns_lab.knot.address)

    async def main() -> list[Any]:
        return list(await asyncio.gather(
            c.query("svc.lab.test", "HTTPS"), c.query("alias.lab.test", "HTTPS"),
            c.query("plain.lab.test", "HTTPS"), c.query("_8080._foo.svc.lab.test", "SVCB"),
            c.query("v4only.lab.test", "HTTPS")))

    svc, alias, plain, svcb, none = run(main())
    (record,) = svc.services
    assert (record.priority, record.target, record.alpn, record.port) == (1, ".", ("h3", "h2"),
                                                                          8443)
    assert (record.ipv4hint, record.ipv6hint) == (("198.18.1.2",), ("fd00:1::2",))
    assert record.ech and not record.no_default_alpn and record.ttl == 300
    (hop,) = alias.services
    assert hop.alias and hop.target == "svc.lab.test"
    (p,) = plain.services
    assert (p.priority, p.alpn, p.no_default_alpn, p.ech, p.port) == (2, ("h2",), True, False,
                                                                      None)
    (s,) = svcb.services
    assert (s.alpn, s.port, s.mandatory) == (("foo",), 8080, ("alpn", "port", "key65000"))
    assert none.status == "nodata" and none.services == ()


def test_tlsa_parsed(dns_lab: Lab, run: Any) -> None:
    answer = run(client(dns_lab.nameserver, trust_ad=True).query("_443._tcp.svc.lab.test",
                                                                  "TLSA"))
    (record,) = answer.tlsa
    assert (record.usage, record.selector, record.matching) == (3, 1, 1)
    assert record.data == hashlib.sha256(b"lab").digest()
    assert answer.authenticated


def test_ad_only_from_a_validating_trusted_resolver(dns_lab: Lab, run: Any) -> None:
    """unbound on loopback validated the signed zone: authenticated with trust-ad (glibc's
    rule, conf.py Rule 5). The same unbound without trust-ad: not (loopback is not trust).
    knot itself (an authoritative server sets no AD) and a failure: not. The non-loopback
    case is tests/runtime/test_resolver_netns.py."""
    via_unbound = client(dns_lab.nameserver, trust_ad=True)
    untrusted = client(dns_lab.nameserver)
    direct = client(dns_lab.knot.address, trust_ad=True)

    async def main() -> list[Any]:
        return list(await asyncio.gather(
            via_unbound.query("svc.lab.test", "A"), via_unbound.query("nope.lab.test", "A"),
            direct.query("svc.lab.test", "A"), direct.query("_443._tcp.svc.lab.test", "TLSA"),
            untrusted.query("svc.lab.test", "A"),
            untrusted.query("_443._tcp.svc.lab.test", "TLSA")))

    a, nx, knot_a, knot_tlsa, plain_a, plain_tlsa = run(main())
    assert a.authenticated and nx.authenticated and nx.status == "nxdomain"
    assert not knot_a.authenticated and not knot_tlsa.authenticated and knot_tlsa.tlsa
    assert plain_a.status == "ok" and not plain_a.authenticated
    assert plain_tlsa.tlsa and not plain_tlsa.authenticated


def test_queries_ask_for_validation(silent: socket.socket, run: Any) -> None:
    """What goes on the wire (read from a socket posing as the nameserver): RD, AD, EDNS0
    with 1232 bytes, DO for TLSA and HTTPS only, a fresh ID per try."""
    c = client(silent.getsockname(), timeout=0.2, attempts=2)

    async def main() -> list[Any]:
        return list(await asyncio.gather(c.query("svc.lab.test", "A"),
                                         c.query("_443._tcp.svc.lab.test", "TLSA"),
                                         c.query("svc.lab.test", "HTTPS")))

    answers = run(main())
    assert [a.status for a in answers] == ["timeout"] * 3
    queries = received(silent)
    assert len(queries) == 6
    for q in queries:
        assert q.flags & dns.flags.RD and q.flags & dns.flags.AD
        assert q.edns == 0 and q.payload == 1232
        want_do = q.question[0].rdtype in (dns.rdatatype.TLSA, dns.rdatatype.HTTPS)
        assert bool(q.ednsflags & dns.flags.DO) == want_do
    a_ids = [q.id for q in queries if q.question[0].rdtype == dns.rdatatype.A]
    assert len(a_ids) == 2  # one per attempt (IDs are random, so they differ almost surely)


def test_forged_answers_are_skipped(dns_lab: Lab, run: Any) -> None:
    """An off-path attacker's guesses arrive first (a wrong ID; the right ID for another
    question, from the right address): the client waits for the answer to its question."""
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", 0))
    front.settimeout(5)

    def attacker_then_relay() -> None:
        wire, peer = front.recvfrom(65535)
        query = dns.message.from_wire(wire)
        for forged_id, name in ((query.id ^ 0x5A5A, "svc.lab.test."), (query.id, "x.lab.test.")):
            forged = dns.message.make_query(name, "A", id=forged_id)
            reply = dns.message.make_response(forged)
            reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "198.18.9.9"))
            front.sendto(reply.to_wire(), peer)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(wire, dns_lab.knot.address)
            front.sendto(up.recv(65535), peer)

    thread = threading.Thread(target=attacker_then_relay, daemon=True)
    thread.start()
    c = client(front.getsockname())
    try:
        answer = run(c.query("svc.lab.test", "A"))
    finally:
        thread.join(5)
        front.close()
    assert (answer.status, answer.addresses) == ("ok", ("198.18.1.2",))
    assert c.cache.get(("x.lab.test", "A"), time.monotonic()) is None  # nothing poisoned
    assert len(c.cache) == 1


def test_truncated_answer_is_asked_again_over_tcp(dns_lab: Lab, run: Any) -> None:
    """Through the lab's relay, which logs each query's transport: UDP (truncated), then TCP."""
    with delay_relay(dns_lab.knot.address) as relay:
        answer = run(client(relay.address).query("many.lab.test", "A"))
        seen = [(q.name.rstrip(".").lower(), q.rtype, q.transport) for q in relay.queries()]
    assert answer.status == "ok" and len(answer.addresses) == MANY
    assert set(answer.addresses) == {f"198.18.3.{n}" for n in range(1, MANY + 1)}
    assert seen == [("many.lab.test", "A", "udp"), ("many.lab.test", "A", "tcp")]


def test_silent_nameserver_times_out_then_the_next_answers(dns_lab: Lab,
                                                           silent: socket.socket,
                                                           run: Any) -> None:
    c = client(silent.getsockname(), dns_lab.knot.address, timeout=0.3)
    start = time.monotonic()
    answer = run(c.query("svc.lab.test", "A"))
    elapsed = time.monotonic() - start
    assert answer.status == "ok" and answer.nameserver == Nameserver(*dns_lab.knot.address)
    assert 0.3 <= elapsed < 1.5, elapsed
    assert len(received(silent)) == 1
    alone = client(silent.getsockname(), timeout=0.2, attempts=2)
    start = time.monotonic()
    answer = run(alone.query("svc.lab.test", "A"))
    assert answer.status == "timeout" and 0.4 <= time.monotonic() - start < 1.5
    assert run(alone.query("svc.lab.test", "A")).from_cache is False  # failures not cached


@pytest.fixture(scope="module")
def bogus(dns_lab: Lab) -> Iterator[Any]:
    """An unbound given a wrong trust anchor: it finds the zone bogus and answers SERVFAIL,
    which is what a validator says about a forged (or signature-stripped) RRset."""
    anchor = dns_lab.trust_anchor
    assert anchor is not None
    with unbound(dns_lab.knot.address, dns_lab.zone, corrupt_anchor(anchor)) as running:
        yield running


def test_servfail_is_not_cached_and_the_next_server_is_asked_for_addresses(
        dns_lab: Lab, bogus: Any, silent: socket.socket, run: Any) -> None:
    """Addresses keep glibc's behaviour: SERVFAIL moves on to the next server."""
    alone = client(bogus.address)
    failed = run(alone.query("svc.lab.test", "A"))
    assert (failed.status, failed.addresses, failed.ttl) == ("servfail", (), None)
    assert failed.nameserver == Nameserver(*bogus.address) and not failed.authenticated
    sent = alone.sent
    assert run(alone.query("svc.lab.test", "A")).status == "servfail"
    assert alone.sent == sent + 1  # asked again: failures are not cached
    mixed = run(client(bogus.address, silent.getsockname(), timeout=0.2)
                .query("svc.lab.test", "A"))
    assert (mixed.status, mixed.nameserver) == ("servfail", Nameserver(*bogus.address))
    both = client(bogus.address, dns_lab.nameserver, trust_ad=True)
    answer = run(both.query("svc.lab.test", "A"))
    assert (answer.status, answer.addresses, answer.authenticated) == ("ok", ("198.18.1.2",),
                                                                      True)
    assert answer.nameserver == Nameserver(*dns_lab.nameserver)


@pytest.mark.parametrize("second", ["trusted", "per-link"])
def test_a_trusted_validators_tlsa_or_https_failure_is_final(dns_lab: Lab, bogus: Any,
                                                             second: str, run: Any) -> None:
    """client.py Rule 4 (review H1/M6): the validator (trusted: trust-ad, a resolv.conf
    server) says SERVFAIL for TLSA and HTTPS; a second server that would answer them with AD
    (the lab's good unbound, behind a relay that logs what reaches it) is never asked, so
    the answer stays SERVFAIL and unauthenticated. Each attempt asks the validator again.
    The second server as a per-link one (never trusted) is the H1 case: it still answers
    the A question, without `authenticated`."""
    with delay_relay(dns_lab.nameserver) as good:
        ns = (Nameserver(*bogus.address),
              Nameserver(*good.address, interface="lo" if second == "per-link" else None,
                         per_link=second == "per-link"))
        c = DnsClient(ResolverConfig(ns, timeout=2.0, attempts=2, trust_ad=True))
        assert [c.config.trusts(n) for n in ns] == [True, second == "trusted"]

        async def main() -> list[Any]:
            return list(await asyncio.gather(c.query("_443._tcp.svc.lab.test", "TLSA"),
                                             c.query("svc.lab.test", "HTTPS")))

        tlsa, https = run(main())
        assert c.sent == 4  # two attempts each, all at the validator
        assert good.queries() == []
        for answer in (tlsa, https):
            assert (answer.status, answer.authenticated, answer.tlsa, answer.services) == (
                "servfail", False, (), ())
            assert answer.nameserver == ns[0]
        address = run(c.query("svc.lab.test", "A"))
        assert [(q.name.rstrip(".").lower(), q.rtype) for q in good.queries()] == [
            ("svc.lab.test", "A")]
    assert (address.status, address.addresses, address.nameserver) == ("ok", ("198.18.1.2",),
                                                                       ns[1])
    assert address.authenticated is (second == "trusted")
    # An untrusted first server's failure is not a verdict: the validator behind it is asked.
    flipped = DnsClient(ResolverConfig((ns[0], Nameserver(*dns_lab.nameserver)), timeout=2.0,
                                       attempts=1))
    assert run(flipped.query("_443._tcp.svc.lab.test", "TLSA")).status == "ok"


def test_refused_is_a_status_and_the_next_server_is_asked(dns_lab: Lab, run: Any) -> None:
    """unbound refuses names outside the lab zone, knot answers for its own zone only."""
    refused = run(client(dns_lab.nameserver).query("outside.example", "A"))
    assert refused.status == "refused" and refused.ttl is None
    both = client(dns_lab.knot.address, dns_lab.nameserver)
    answer = run(both.query("outside.example", "A"))
    assert answer.status == "refused" and answer.nameserver == Nameserver(*dns_lab.nameserver)
    sent = both.sent
    for bad in ("a..b", "", ".", "a" * 64 + ".test"):
        assert run(both.query(bad, "A")).status == "error", bad
    assert both.sent == sent  # nothing asked for a name that cannot be one


def test_junk_and_echoed_queries_are_skipped(dns_lab: Lab, run: Any) -> None:
    """Datagrams from the nameserver's own address and port that are not the answer: bytes
    that are no DNS message, a header cut short, the query itself echoed back (same ID and
    question, QR clear), and an answer that is QR but another opcode. The client keeps
    waiting and takes the real answer after them (client.py Rule 3)."""
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", 0))
    front.settimeout(5)

    def junk_then_relay() -> None:
        wire, peer = front.recvfrom(65535)
        notify = bytearray(dns.message.make_response(dns.message.from_wire(wire)).to_wire())
        notify[2] |= 4 << 3  # opcode NOTIFY
        for junk in (b"not dns at all", wire[:7], wire, bytes(notify)):
            front.sendto(junk, peer)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(wire, dns_lab.knot.address)
            front.sendto(up.recv(65535), peer)

    thread = threading.Thread(target=junk_then_relay, daemon=True)
    thread.start()
    try:
        answer = run(client(front.getsockname()).query("svc.lab.test", "AAAA"))
    finally:
        thread.join(5)
        front.close()
    assert (answer.status, answer.addresses) == ("ok", ("fd00:1::2",))


def test_truncated_answer_over_tcp_from_the_same_nameserver_over_ipv6(run: Any) -> None:
    """knot on ::1 (a lab of its own): the 100 A records do not fit UDP; TCP over IPv6
    brings them, on the same address and port."""
    zone = example_zone()
    for n in range(1, MANY + 1):
        zone.add("many", 300, "A", f"198.18.3.{n}")
    with lab(zone, signed=False, resolver=False, loopback="::1") as v6:
        answer = run(client(v6.knot.address).query("many.lab.test", "A"))
    assert answer.status == "ok" and len(answer.addresses) == MANY
    assert answer.nameserver == Nameserver(*v6.knot.address)


def test_cancelling_the_only_caller_cancels_the_question(silent: socket.socket,
                                                        run: Any) -> None:
    """client.py Rule 9: the last waiting caller cancelled, the shared question is cancelled
    and awaited before the cancellation reaches the caller: nothing of the client's is left
    on the loop, and the next caller asks afresh."""
    c = client(silent.getsockname(), timeout=5.0)

    async def main() -> None:
        asker = asyncio.create_task(c.query("svc.lab.test", "A"))
        while not received_any(silent):
            await asyncio.sleep(0)  # until the query is on the wire
        asker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asker
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert len(received(silent)) == 1
        again = asyncio.create_task(c.query("svc.lab.test", "A"))
        while not received_any(silent):
            await asyncio.sleep(0)
        assert c.sent == 2  # a fresh question, not the cancelled one
        again.cancel()
        with pytest.raises(asyncio.CancelledError):
            await again
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())


def test_a_timeout_around_the_caller_leaves_no_task(silent: socket.socket, run: Any) -> None:
    """asyncio.timeout() around query(): TimeoutError for the caller, no task left behind."""
    c = client(silent.getsockname(), timeout=5.0)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.gather(c.query("svc.lab.test", "A"),
                                     c.query("svc.lab.test", "AAAA"))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert len(received(silent)) == 2

    run(main())


def test_a_cancelled_caller_leaves_the_question_to_the_others(dns_lab: Lab, run: Any) -> None:
    """Two callers share one question that the relay holds 0.3 s; one is cancelled at once,
    the other still gets the answer, which fills the cache (client.py Rule 9)."""
    with delay_relay(dns_lab.knot.address, {"A": 0.3}) as relay:
        c = client(relay.address)

        async def main() -> Any:
            first = asyncio.create_task(c.query("svc.lab.test", "A"))
            second = asyncio.create_task(c.query("svc.lab.test", "A"))
            await asyncio.sleep(0.05)  # both wait on the shared question now
            first.cancel()
            answer = await second
            assert first.cancelled()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            return answer

        answer = run(main())
        assert len(relay.queries()) == 1
    assert (answer.status, answer.addresses) == ("ok", ("198.18.1.2",)) and c.sent == 1
    assert run(c.query("svc.lab.test", "A")).from_cache


def received_any(sock: socket.socket) -> bool:
    """Whether a datagram waits on `sock` (left there for received() to read)."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    return True


def test_questions_in_flight_together_share_one_socket(silent: socket.socket,
                                                        run: Any) -> None:
    """transport.py Rule 6: A and AAAA asked at once leave from one socket (one source
    port, as glibc's stub does), each with its own ID; once both ended the socket is closed,
    and the next question opens a new one."""
    c = client(silent.getsockname(), timeout=0.3)

    def sources() -> list[tuple[str, int]]:
        return [source for _wire, source in datagrams(silent)]

    def open_udp_sockets() -> int:
        import os

        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # listdir's own descriptor
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        return count

    async def main() -> None:
        before = open_udp_sockets()
        both = asyncio.gather(c.query("svc.lab.test", "A"), c.query("svc.lab.test", "AAAA"))
        await asyncio.sleep(0.1)
        assert open_udp_sockets() == before + 1
        first = sources()
        assert len(first) == 2 and first[0] == first[1], first
        assert [a.status for a in await both] == ["timeout", "timeout"]
        assert open_udp_sockets() == before
        await c.query("svc.lab.test", "HTTPS")
        (later,) = sources()
        assert later[1] != first[0][1]  # a new socket, a new random port

    run(main())


def test_shared_socket_answers_each_question_by_its_id(dns_lab: Lab, run: Any) -> None:
    """Rule 6 against knot: three questions in flight on one socket each get their own
    answer, whatever order the datagrams come back in."""
    c = client(dns_lab.knot.address)

    async def main() -> list[Any]:
        return list(await asyncio.gather(c.query("svc.lab.test", "A"),
                                         c.query("svc.lab.test", "AAAA"),
                                         c.query("week.lab.test", "A")))

    a, aaaa, week = run(main())
    assert (a.status, a.addresses) == ("ok", ("198.18.1.2",))
    assert aaaa.status == "ok" and all(":" in x for x in aaaa.addresses)
    assert week.addresses == ("198.18.1.13",) and c.sent == 3
