"""runtime/resolution.py against real DNS servers on loopback (tests/dnslab.py: knot, unbound
and the delaying relay; no root needed).

Each test asks `resolve_passes()` through a real `DnsClient` pointed at the lab and checks the
snapshots it yields: when pass 1 came (relative to the answers, on the loop's clock), what
each pass knew, and that the queries it sent are the ones the module rules name. Timing
bounds are wide enough for a loaded 2-core machine: they separate "about resolutionDelay
after A" (tens of ms) from "after the AAAA" (400 ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dnslab
from dnslab import Zone, lab
from taps_post.errors import ResolutionError
from taps_post.resolver.client import DnsClient
from taps_post.resolver.conf import Nameserver, ResolverConfig
from taps_post.runtime.resolution import Snapshot, Wanted, resolve_passes
from taps_post.runtime.trace import Tracer

AAAA_DELAY = 0.4


def client_for(address: tuple[str, int], timeout: float = 2.0) -> DnsClient:
    # trust_ad: the lab's validating unbound, as resolv.conf's `options trust-ad` says (glibc:
    # no AD bit is believed without it, loopback or not; resolver conf.py Rule 5).
    return DnsClient(ResolverConfig(nameservers=(Nameserver(*address),), timeout=timeout,
                                    attempts=1, trust_ad=True))


def zone() -> Zone:
    z = Zone("res.test.")
    z.add("plain", 300, "A", "198.18.1.2").add("plain", 300, "AAAA", "fd00:1::2")
    z.add("web", 300, "A", "198.18.1.2").add("web", 300, "AAAA", "fd00:1::2")
    z.add("web", 300, "HTTPS", "1 . alpn=h3 port=8443 ipv4hint=198.18.1.9")
    z.add("alias", 300, "HTTPS", "0 hop.res.test.")
    z.add("hop", 300, "HTTPS", "0 end.res.test.")
    z.add("end", 300, "HTTPS", "1 . alpn=h2")
    z.add("end", 300, "A", "198.18.1.3")
    z.add("v4only", 300, "A", "198.18.1.4")
    z.add("_443._tcp.web", 300, "TLSA", "3 1 1 " + "ab" * 32)
    z.add("pooled", 300, "HTTPS", "1 pool.res.test. alpn=h2").add("pooled", 300, "A", "198.18.1.5")
    z.add("pool", 300, "A", "198.18.2.5").add("pool", 300, "AAAA", "fd00:2::5")
    z.add("loop1", 300, "HTTPS", "0 loop2.res.test.")
    z.add("loop2", 300, "HTTPS", "0 loop1.res.test.")
    z.add("loop1", 300, "A", "198.18.1.6")
    z.add("ports", 300, "A", "198.18.1.8")
    for priority in (6, 5, 4, 3, 2, 1):  # six ports, listed lowest priority first
        z.add("ports", 300, "HTTPS", f"{priority} . alpn=h2 port={8000 + priority}")
    return z


@pytest.fixture(scope="module")
def dns() -> Iterator[Any]:
    with lab(zone(), signed=True, delays={"TLSA": 0.0}) as running:  # a relay, no delay yet
        yield running


@pytest.fixture(autouse=True)
def _no_delays(dns: Any) -> Iterator[None]:
    dns.relay.set(delays={})
    yield
    dns.relay.set(delays={})


async def collect(wanted: Wanted, client: DnsClient,
                  trace: list[tuple[str, dict[str, Any]]] | None = None) -> list[Snapshot]:
    # nss=False: a name the lab does not know must not reach this machine's own resolver
    # through getaddrinfo (resolution Rule 5; test_resolution_netns covers that fallback).
    tracer = None if trace is None else Tracer(lambda n, i: trace.append((n, i)))
    return [s async for s in resolve_passes(wanted, client=client, hosts=False,
                                            tracer=tracer, nss=False)]


def arrival(snap: Snapshot, name: str, rtype: str) -> float:
    return next(a.at_ms for a in snap.arrivals if (a.name, a.rtype) == (name, rtype))


def test_a_delayed_aaaa_starts_pass_one_resolution_delay_after_the_a_answer(dns: Any) -> None:
    dns.relay.set(delays={"AAAA": AAAA_DELAY})
    trace: list[tuple[str, dict[str, Any]]] = []
    snaps = asyncio.run(collect(Wanted("plain.res.test", 80, "tcp"), client_for(dns.nameserver),
                                trace))
    first, last = snaps[0], snaps[-1]
    a_at = arrival(first, "plain.res.test", "A")
    assert first.dns == {"plain.res.test": ("198.18.1.2",)}, "pass 1 knows only the A answer"
    assert not first.complete and "resolutionDelay 50 ms after A" in first.trigger
    assert 50.0 <= first.at_ms - a_at < 200.0, (first.at_ms, a_at)
    assert first.at_ms < AAAA_DELAY * 1000 - 100, "pass 1 did not wait for the AAAA"
    assert last.complete and last.dns == {"plain.res.test": ("fd00:1::2", "198.18.1.2")}
    assert arrival(last, "plain.res.test", "AAAA") >= AAAA_DELAY * 1000 - 40
    assert len(snaps) == 2
    answers = [i for n, i in trace if n == "resolution.answer"]
    assert {(i["rtype"], i["status"], i["count"]) for i in answers} == {
        ("A", "ok", 1), ("AAAA", "ok", 1)}
    assert all(i["ttl"] is not None and i["ttl"] <= 300 and not i["from_cache"]
               for i in answers)


def test_cached_answers_are_one_complete_pass_that_may_key_a_plan(dns: Any) -> None:
    client = client_for(dns.nameserver)
    snaps = asyncio.run(collect(Wanted("plain.res.test", 80, "tcp"), client))
    # Undelayed, AAAA alone may start pass 1 (the preferred family answered) a moment before
    # the A answer: one or two passes, the last complete.
    assert len(snaps) <= 2 and snaps[-1].complete
    assert snaps[-1].dns == {"plain.res.test": ("fd00:1::2", "198.18.1.2")}
    assert not any(s.reusable for s in snaps), "answers that travelled never key a plan"
    again = asyncio.run(collect(Wanted("plain.res.test", 80, "tcp"), client))
    assert len(again) == 1 and again[0].from_cache and again[0].reusable
    assert again[0].key() == snaps[-1].key()


def test_an_ipv4hint_is_an_address_before_the_a_answer(dns: Any) -> None:
    dns.relay.set(delays={"A": 0.5})
    wanted = Wanted("web.res.test", 443, "https")
    snaps = asyncio.run(collect(wanted, client_for(dns.nameserver)))
    first = snaps[0]
    assert "web.res.test" in first.svcb and first.svcb["web.res.test"][0].ipv4hint == (
        "198.18.1.9",)
    assert first.dns == {"web.res.test": ("fd00:1::2",)}
    assert first.at_ms < 400.0, "pass 1 waited for the delayed A"
    assert snaps[-1].dns["web.res.test"] == ("fd00:1::2", "198.18.1.2")


def test_an_ipv4hint_alone_starts_pass_one(dns: Any) -> None:
    dns.relay.set(delays={"A": 0.5, "AAAA": 0.5})
    snaps = asyncio.run(collect(Wanted("web.res.test", 443, "https"),
                                client_for(dns.nameserver)))
    first = snaps[0]
    assert first.dns == {} and first.addresses() == ("198.18.1.9",)
    assert first.at_ms < 400.0


def test_an_alias_chain_is_followed_to_its_addresses(dns: Any) -> None:
    client = client_for(dns.nameserver)
    snaps = asyncio.run(collect(Wanted("alias.res.test", 443, "https"), client))
    last = snaps[-1]
    assert last.complete
    assert last.svcb["alias.res.test"][0].target == "hop.res.test"
    assert last.svcb["hop.res.test"][0].target == "end.res.test"
    assert last.svcb["end.res.test"][0].alpn == ("h2",)
    assert last.dns == {"end.res.test": ("198.18.1.3",)}
    assert last.addresses() == ("198.18.1.3",)


def test_tlsa_is_fetched_for_the_secure_protocols_and_validated(dns: Any) -> None:
    wanted = Wanted("web.res.test", 443, "https", tlsa_protocols=("tcp", "udp"))
    last = asyncio.run(collect(wanted, client_for(dns.nameserver)))[-1]
    tcp = last.tlsa["_443._tcp.web.res.test"]
    assert tcp.validated and [r.usage for r in tcp.records] == [3]
    assert last.tlsa["_443._udp.web.res.test"].records == ()  # negative, known
    assert "_8443._udp.web.res.test" in last.tlsa, "the record's port is asked too"


def test_a_name_with_no_address_is_a_resolution_error_naming_it(dns: Any) -> None:
    with pytest.raises(ResolutionError, match=r"nothing\.res\.test") as info:
        asyncio.run(collect(Wanted("nothing.res.test", 80, "tcp"), client_for(dns.nameserver)))
    assert info.value.name == "nothing.res.test"
    assert "nxdomain" in str(info.value)


def test_a_family_with_no_records_does_not_hold_pass_one(dns: Any) -> None:
    snaps = asyncio.run(collect(Wanted("v4only.res.test", 80, "tcp"),
                                client_for(dns.nameserver)))
    assert len(snaps) == 1 and snaps[0].dns == {"v4only.res.test": ("198.18.1.4",)}


def test_every_nameserver_failing_falls_back_to_getaddrinfo() -> None:
    # Nothing listens on this port: every query fails (ICMP port unreachable or timeout);
    # localhost then resolves through the system (its hosts file), as before issue 12.
    dead = client_for(("127.0.0.1", dnslab.free_port()), timeout=0.3)
    trace: list[tuple[str, dict[str, Any]]] = []
    snaps = asyncio.run(collect(Wanted("localhost", 80, "tcp"), dead, trace))
    assert len(snaps) == 1 and snaps[0].source == "getaddrinfo"
    assert "127.0.0.1" in snaps[0].addresses()
    assert "every nameserver failed" in snaps[0].trigger
    assert [i["status"] for n, i in trace if n == "resolution.answer"][-1] == "getaddrinfo"


def test_stopping_early_cancels_and_awaits_every_query(dns: Any) -> None:
    dns.relay.set(delays={"AAAA": 2.0})

    async def main() -> None:
        gen = resolve_passes(Wanted("plain.res.test", 80, "tcp"), client=client_for(
            dns.nameserver, timeout=5.0), hosts=False)
        first = await anext(gen)
        assert not first.complete
        started = time.monotonic()
        await gen.aclose()
        assert time.monotonic() - started < 0.5
        assert asyncio.all_tasks() == {asyncio.current_task()}, "a query outlived aclose()"

    asyncio.run(main())


def test_ttl_expiry_is_observed_through_the_client_cache() -> None:
    # Unsigned: the point is the client cache's TTL, and knot re-signing on reload is what
    # made the reload slow. The cached lookup must come before the TTL could have run out;
    # when the machine is so loaded that the reload alone takes that long, the test cannot
    # tell a cache hit from a miss and skips, saying how long it took.
    ttl = 2
    z = Zone("ttl.test.")
    z.add("svc", ttl, "A", "198.18.1.2")
    with lab(z, resolver=False, signed=False) as dns:
        client = client_for(dns.nameserver)
        wanted = Wanted("svc.ttl.test", 80, "tcp")
        asked = time.monotonic()
        before = asyncio.run(collect(wanted, client))[-1]
        learnt = time.monotonic()
        z.replace("svc", "A", ttl, "198.18.1.7")
        dns.knot.reload()
        cached = asyncio.run(collect(wanted, client))[-1]
        took = time.monotonic() - asked
        if took > ttl - 0.3:
            pytest.skip(f"the first lookup, the zone reload and the cached lookup took "
                        f"{took:.2f} s, too close to the {ttl} s TTL to tell a hit")
        assert cached.from_cache and cached.addresses() == ("198.18.1.2",)
        time.sleep(max(0.0, learnt + ttl + 0.3 - time.monotonic()))
        after = asyncio.run(collect(wanted, client))[-1]
    assert before.addresses() == ("198.18.1.2",)
    assert not after.from_cache and after.addresses() == ("198.18.1.7",)


def test_a_service_mode_target_gets_its_own_address_queries(dns: Any) -> None:
    trace: list[tuple[str, dict[str, Any]]] = []
    last = asyncio.run(collect(Wanted("pooled.res.test", 443, "https"),
                               client_for(dns.nameserver), trace))[-1]
    assert last.dns == {"pooled.res.test": ("198.18.1.5",),
                        "pool.res.test": ("fd00:2::5", "198.18.2.5")}
    asked = [(i["name"], i["rtype"]) for n, i in trace if n == "resolution.answer"]
    assert sorted(a for a in asked if a[0] == "pool.res.test") == [
        ("pool.res.test", "A"), ("pool.res.test", "AAAA")], "asked once each, no HTTPS"


def test_an_alias_loop_asks_each_name_once_and_ends(dns: Any) -> None:
    trace: list[tuple[str, dict[str, Any]]] = []
    last = asyncio.run(collect(Wanted("loop1.res.test", 443, "https"),
                               client_for(dns.nameserver), trace))[-1]
    assert last.complete and last.dns == {"loop1.res.test": ("198.18.1.6",)}
    asked = [(i["name"], i["rtype"]) for n, i in trace if n == "resolution.answer"]
    assert len(asked) == len(set(asked)), asked
    assert ("loop2.res.test", "HTTPS") in asked


def test_an_unanswered_https_query_holds_pass_one_for_resolution_delay_only(dns: Any) -> None:
    dns.relay.set(drop=["HTTPS"])
    try:
        snaps = asyncio.run(collect(Wanted("web.res.test", 443, "https"),
                                    client_for(dns.nameserver, timeout=0.6)))
    finally:
        dns.relay.set(drop=[])
    first, last = snaps[0], snaps[-1]
    assert "resolutionDelay" in first.trigger and first.at_ms < 300.0, first
    assert "web.res.test" not in first.svcb
    assert last.complete and last.at_ms >= 550.0 and "web.res.test" not in last.svcb


def test_the_search_list_applies_and_the_snapshot_keeps_the_callers_name(dns: Any) -> None:
    client = DnsClient(ResolverConfig(nameservers=(Nameserver(*dns.nameserver),),
                                      search=("nowhere.test", "res.test"), timeout=2.0,
                                      attempts=1, trust_ad=True))
    trace: list[tuple[str, dict[str, Any]]] = []
    wanted = Wanted("web", 443, "https", tlsa_protocols=("tcp",))
    last = asyncio.run(collect(wanted, client, trace))[-1]
    # `web` has no dot (ndots 1): web.nowhere.test first (NXDOMAIN), then web.res.test.
    assert last.host == "web" and last.dns == {"web": ("fd00:1::2", "198.18.1.2")}
    assert last.svcb["web"][0].port == 8443
    # Rule 9: the TLSA set of web.res.test is validated (test_tlsa_is_fetched_...), but
    # reached through the search list it is not a secure source for `web`.
    tlsa = last.tlsa["_443._tcp.web"]
    assert tlsa.name == "_443._tcp.web" and [r.usage for r in tlsa.records] == [3]
    assert not tlsa.validated, "a search-list expansion's TLSA counted as validated"
    asked = {i["name"] for n, i in trace if n == "resolution.answer"}
    assert {"web.nowhere.test", "web.res.test"} <= asked
    with pytest.raises(ResolutionError, match=r"nothing\.nowhere\.test \(AAAA nxdomain, "
                                              r"A nxdomain\) or nothing\.res\.test") as info:
        asyncio.run(collect(Wanted("nothing", 80, "tcp"), client))
    assert info.value.name == "nothing"
    # The bare name last: the lab refuses it, but its servers answered the others, so that is
    # this name's failure (no getaddrinfo, which nss=False leaves out here).
    assert "nothing (every nameserver failed: refused)" in str(info.value)


def test_tlsa_is_asked_for_at_most_four_ports_the_urls_first_then_by_priority(dns: Any) -> None:
    trace: list[tuple[str, dict[str, Any]]] = []
    wanted = Wanted("ports.res.test", 443, "https", tlsa_protocols=("tcp",))
    last = asyncio.run(collect(wanted, client_for(dns.nameserver), trace))[-1]
    assert len(last.svcb["ports.res.test"]) == 6
    asked = {i["name"] for n, i in trace if n == "resolution.answer" and i["rtype"] == "TLSA"}
    assert asked == {f"_{p}._tcp.ports.res.test" for p in (443, 8001, 8002, 8003)}, asked


def test_dead_nameservers_and_a_search_list_cost_one_timeout_and_one_getaddrinfo() -> None:
    # A silent nameserver (it reads nothing, answers nothing) and three search domains:
    # `localhost` (no dot, ndots 1) would be localhost.a.test, .b.test, .c.test, then
    # localhost. The servers failing for the first name say nothing about the others: one
    # timeout, then getaddrinfo once for the caller's name (glibc's /etc/hosts knows it).
    import socket

    timeout = 0.5
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        client = DnsClient(ResolverConfig(
            nameservers=(Nameserver("127.0.0.1", silent.getsockname()[1]),),
            search=("a.test", "b.test", "c.test"), timeout=timeout, attempts=1))
        trace: list[tuple[str, dict[str, Any]]] = []
        started = time.monotonic()
        snaps = asyncio.run(collect(Wanted("localhost", 80, "tcp"), client, trace))
        elapsed = time.monotonic() - started
    answers = [i for n, i in trace if n == "resolution.answer"]
    assert [i["status"] for i in answers if i["status"] == "getaddrinfo"] == ["getaddrinfo"]
    assert {i["name"] for i in answers if i["status"] != "getaddrinfo"} == {
        "localhost.a.test"}, "a search name was asked after the servers failed"
    assert {i["status"] for i in answers if i["status"] != "getaddrinfo"} == {"timeout"}
    assert len(snaps) == 1 and snaps[0].source == "getaddrinfo" and snaps[0].host == "localhost"
    assert "127.0.0.1" in snaps[0].addresses()
    assert "every nameserver failed for localhost.a.test (timeout)" in snaps[0].trigger
    assert elapsed < 2.5 * timeout, f"{elapsed:.2f} s: the timeout was paid more than once"


def test_the_search_list_is_bounded_as_glibc_bounded_it() -> None:
    from taps_post.runtime.resolution import search_names

    many = ResolverConfig(nameservers=(), search=tuple(f"d{i}.test" for i in range(9)))
    assert search_names(many, "x") == (*(f"x.d{i}.test" for i in range(6)), "x")
    long = ResolverConfig(nameservers=(), search=("a" * 120, "b" * 120, "c" * 120))
    assert search_names(long, "x.y") == ("x.y", "x.y." + "a" * 120, "x.y." + "b" * 120)
    assert search_names(many, "x.") == ("x",)
