"""The decision core's half of HEv3 resolution (issue 12), on Environment objects built here.

The pass schedule (`decision/passes.py`), SVCB/HTTPS shaping (`decision/service.py`) and what
`decide()` makes of them: resolution passes on candidates, service priorities and the
fallback endpoint, failure memory, the adaptive attempt delay, ECH and DANE. The oracles are
restated from docs/explain.md ("The ranking key") and the issue, not read off the engine.
The scenario tables (tests/tables/*.yaml) cover the same rules through snapshot files; these
tests drive the pure functions directly and search the input space with hypothesis.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taps_post
from taps_post import parse_target
from taps_post.decision.decide import decide
from taps_post.decision.environment import Address, CacheEntry, Environment, Interface
from taps_post.decision.names import ALIAS_LIMIT, Arrival, ServiceRecord, TlsaRecord, TlsaSet
from taps_post.decision.passes import first_pass, pass_of, passes
from taps_post.decision.service import FALLBACK_PRIORITY, shape, target_names
from taps_post.policy import catalog

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
HOST = "svc.example"
ASKED = {(HOST, "A"), (HOST, "AAAA")}
ASKED_HTTPS = ASKED | {(HOST, "HTTPS")}
ETH0 = Interface("eth0", "ethernet", addresses=(Address("198.18.0.10"), Address("fd00::10")))
WLAN0 = Interface("wlan0", "wifi", addresses=(Address("198.18.1.10"),))


def ctx(*rules: dict[str, Any]) -> taps_post.PolicyContext:
    app = [{"version": 1, "layer": "app", "name": "t", "rules": list(rules)}] if rules else []
    return taps_post.PolicyContext(system=[], app=app)


def run(target: str, env: Environment, *rules: dict[str, Any]) -> taps_post.Decision:
    return decide(parse_target(target), ctx(*rules), env)


def arrival(rtype: str, at: float, negative: bool = False, name: str = HOST) -> Arrival:
    return Arrival(name, rtype, at, None, negative)


# --- first_pass: the HEv3 rule -----------------------------------------------------------

def test_aaaa_late_starts_resolution_delay_after_a() -> None:
    got = first_pass([arrival("A", 10), arrival("AAAA", 200)], ASKED, 50)
    # The trigger names what held the pass: the AAAA query, unanswered at 60 ms.
    assert got == (60, f"resolutionDelay 50 ms after A; AAAA {HOST} not answered")


def test_preferred_family_first_starts_at_once() -> None:
    assert first_pass([arrival("AAAA", 10), arrival("A", 300)], ASKED, 50) == (10, "AAAA answered")
    # With IPv4 preferred, the A answer is the one that does not wait.
    assert first_pass([arrival("A", 10), arrival("AAAA", 300)], ASKED, 50, "A") == \
        (10, "A answered")


def test_negative_preferred_answer_counts_as_answered() -> None:
    at, trigger = first_pass([arrival("A", 10), arrival("AAAA", 20, negative=True)],
                             ASKED, 50) or (None, "")
    assert at == 20 and trigger == "every query answered"


def test_an_outstanding_service_query_is_waited_for_within_resolution_delay() -> None:
    both = [arrival("A", 5), arrival("AAAA", 5)]
    assert first_pass([*both, arrival("HTTPS", 30)], ASKED_HTTPS, 50) == \
        (30, "every query answered")
    held = f"resolutionDelay 50 ms after A; HTTPS {HOST} not answered"
    assert first_pass([*both, arrival("HTTPS", 100)], ASKED_HTTPS, 50) == (55, held)
    # Asked, not yet answered: the runtime learns to wait until 55 or the next arrival.
    assert first_pass(both, ASKED_HTTPS, 50) == (55, held)


def test_no_address_no_pass() -> None:
    assert first_pass([], ASKED, 50) is None
    assert first_pass([arrival("AAAA", 5, negative=True)], ASKED, 50) is None


def test_a_hint_is_an_address_only_with_the_records() -> None:
    records = {HOST: (ServiceRecord(1, ".", ("h2",), ipv4hint=("198.18.0.21",)),)}
    got = [arrival("HTTPS", 5)]
    assert first_pass(got, ASKED_HTTPS, 50) is None
    assert first_pass(got, ASKED_HTTPS, 50, services=records) == \
        (55, f"resolutionDelay 50 ms after HTTPS; A {HOST}, AAAA {HOST} not answered")
    # The AAAA answer then ends the wait: preferred answered, no service query outstanding.
    assert first_pass([*got, arrival("AAAA", 8, negative=True)], ASKED_HTTPS, 50,
                      services=records) == (8, "AAAA answered and no service query outstanding")


def test_passes_later_answers_start_passes_negative_ones_do_not() -> None:
    got = passes([arrival("A", 10), arrival("AAAA", 200), arrival("A", 200, name="x.example"),
                  arrival("HTTPS", 300, negative=True), arrival("HTTPS", 400, name="y.example")],
                 ASKED_HTTPS, 50)
    assert [(p.number, p.at_ms) for p in got] == [(1, 60), (2, 200), (3, 400)]
    assert len(got[1].answers) == 3  # two same-instant answers, plus the negative one after
    assert "HTTPS svc.example no records" in got[1].answers[2]
    assert pass_of(got, 0) == 1 and pass_of(got, 250) == 2 and pass_of(got, 400) == 3


@st.composite
def arrival_sets(draw: st.DrawFn) -> tuple[list[Arrival], set[tuple[str, str]]]:
    asked = {(HOST, "A"), (HOST, "AAAA")}
    if draw(st.booleans()):
        asked.add((HOST, "HTTPS"))
    out = []
    for name, rtype in sorted(asked):
        if draw(st.booleans()):
            out.append(Arrival(name, rtype, draw(st.integers(0, 400)), None,
                               draw(st.booleans())))
    for i in range(draw(st.integers(0, 3))):  # answers for other names (SVCB targets)
        out.append(Arrival(f"t{i}.example", draw(st.sampled_from(["A", "AAAA"])),
                           draw(st.integers(0, 400)), None, draw(st.booleans())))
    return out, asked


@SETTINGS
@given(data=arrival_sets(), delay=st.integers(10, 200), preferred=st.sampled_from(["A", "AAAA"]))
def test_more_arrivals_never_delay_pass_one(data: tuple[list[Arrival], set[tuple[str, str]]],
                                            delay: int, preferred: str) -> None:
    """For every prefix in time: the full result is never later than the prefix's (c) bound
    (first address + resolutionDelay), and a pass that had started stays where it was."""
    arrivals, asked = data
    full = first_pass(arrivals, asked, delay, preferred)
    for t in sorted({a.at_ms for a in arrivals}):
        prefix = [a for a in arrivals if a.at_ms <= t]
        early = first_pass(prefix, asked, delay, preferred)
        if early is None:
            continue
        assert full is not None
        first_address = min(a.at_ms for a in prefix
                            if not a.negative and a.rtype in ("A", "AAAA"))
        assert full[0] <= first_address + delay
        assert early[0] >= first_address
        if early[0] <= t:
            assert full == early


@SETTINGS
@given(data=arrival_sets(), delay=st.integers(10, 200))
def test_all_at_once_is_one_pass_at_zero(data: tuple[list[Arrival], set[tuple[str, str]]],
                                         delay: int) -> None:
    """Every asked query answered at 0 ms (what a snapshot without arrivals means)."""
    arrivals = [Arrival(a.name, a.rtype, 0, a.ttl, a.negative) for a in data[0]]
    answered = {(a.name, a.rtype) for a in arrivals}
    arrivals += [Arrival(n, t, 0, None, True) for n, t in sorted(data[1] - answered)]
    got = passes(arrivals, data[1], delay)
    if any(not a.negative and a.rtype in ("A", "AAAA") for a in arrivals):
        assert [(p.number, p.at_ms) for p in got] == [(1, 0)]
        assert len(got[0].answers) == len(arrivals)
    else:
        assert got == []


# --- service shaping ------------------------------------------------------------------------

def test_alias_chain_longer_than_the_limit_is_a_loop() -> None:
    names = [f"a{i}.example" for i in range(ALIAS_LIMIT + 2)]
    svcb = {HOST: (ServiceRecord(0, names[0]),)}
    svcb.update({n: (ServiceRecord(0, m),) for n, m in itertools.pairwise(names)})
    got = shape((HOST, "HTTPS"), HOST, 443, svcb, {HOST: ("198.18.0.20",)}, catalog.infos())
    assert not got.records and len(got.endpoints) == 1 and got.endpoints[0].priority == 0
    assert f"longer than {ALIAS_LIMIT} names" in got.warnings[0]


def test_alias_to_dot_means_no_service() -> None:
    got = shape((HOST, "HTTPS"), HOST, 443, {HOST: (ServiceRecord(0, "."),)},
                {HOST: ("198.18.0.20",)}, catalog.infos())
    assert not got.records and not got.warnings and got.endpoints[0].stacks is None


def test_target_dot_of_a_port_prefixed_owner_is_the_host() -> None:
    owner = f"_8443._https.{HOST}"
    got = shape((owner, "HTTPS"), HOST, 8443, {owner: (ServiceRecord(1, ".", ("h3",)),)},
                {HOST: ("198.18.0.20",)}, catalog.infos())
    assert got.endpoints[0].target == HOST and got.endpoints[0].addresses == ("198.18.0.20",)
    assert target_names((owner, "HTTPS"), HOST, {owner: (ServiceRecord(1, ".", ("h3",)),)}) \
        == (HOST,)


def test_target_names_follow_aliases_and_targets() -> None:
    svcb = {HOST: (ServiceRecord(0, "cdn.example"),),
            "cdn.example": (ServiceRecord(1, "edge.example", ("h2",)),
                            ServiceRecord(2, ".", ("h3",)))}
    assert target_names((HOST, "HTTPS"), HOST, svcb) == (HOST, "cdn.example", "edge.example")


def test_an_svcb_record_without_alpn_offers_every_stack_an_https_one_only_tls() -> None:
    svc = ServiceRecord(1, ".")
    infos = catalog.infos()
    owner = f"_5000._tcp.{HOST}"
    plain = shape((owner, "SVCB"), HOST, 5000, {owner: (svc,)}, {}, infos).endpoints[0]
    assert plain.stacks == frozenset(i.name for i in infos)
    https = shape((HOST, "HTTPS"), HOST, 443, {HOST: (svc,)}, {}, infos).endpoints[0]
    assert https.stacks == frozenset({"tls", "tls-mptcp"}) and https.alpn == ("http/1.1",)


# --- decide() with records, passes and history ----------------------------------------------

def test_no_records_is_todays_behaviour() -> None:
    env = Environment((ETH0,), {HOST: ("fd00::20", "198.18.0.20")})
    before = run(f"https://{HOST}", env)
    negative = run(f"https://{HOST}", Environment((ETH0,), {HOST: ("fd00::20", "198.18.0.20")},
                                                  svcb={HOST: ()}))
    assert before.candidates == negative.candidates
    assert {c.key.service_priority for c in before.candidates} == {0}
    assert before.services == () and [p.number for p in before.passes] == [1]


def test_an_ip_literal_resolves_nothing() -> None:
    d = run("https://198.18.0.20", Environment((ETH0,)))
    assert d.passes == () and d.services == () and d.candidates
    assert {c.resolution_pass for c in d.candidates} == {1}


def test_a_leaf_two_endpoints_give_is_kept_once_from_its_earliest_pass() -> None:
    # The record (priority 1) arrives in pass 2, the fallback's address in pass 1: TLS to
    # 198.18.0.20:443 is the same leaf from both, kept with priority 1 and pass 1.
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)},
                      svcb={HOST: (ServiceRecord(1, ".", ("h2", "h3")),)},
                      arrivals=(arrival("A", 5), arrival("AAAA", 5, negative=True),
                                arrival("HTTPS", 300)))
    d = run(f"https://{HOST}", env)
    tls = [c for c in d.candidates if c.stack == "tls"]
    assert len(tls) == 1 and tls[0].resolution_pass == 1 and tls[0].key.service_priority == 1
    quic = [c for c in d.candidates if c.stack == "quic"]
    assert [c.resolution_pass for c in quic] == [2]
    assert d.services[1].priority == FALLBACK_PRIORITY
    assert "kept once with the better priority" in d.services[1].reason


def test_failure_memory_uses_the_clock_of_the_environment() -> None:
    failed = CacheEntry(f"{HOST}:443", "quic", "failure", at=1000.0)
    base = Environment((ETH0,), {HOST: ("198.18.0.20",)}, cache=(failed,))
    first = {now: run(f"https://{HOST}", Environment(
        base.interfaces, base.dns, base.cache, now=now)).candidates[0].stack
        for now in (None, 1000.0 + 599.0, 1000.0 + 601.0)}
    assert first == {None: "tls", 1599.0: "tls", 1601.0: "quic"}


def test_a_required_interface_still_demotes_a_failed_stack() -> None:
    """Only `stack.NAME: require` lifts the demotion: pinning an app to eth0 must not bring
    back the black-holed QUIC attempt first on every connection (review r2 F7)."""
    failed = CacheEntry(f"{HOST}:443", "quic", "failure", interface="eth0")
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)}, cache=(failed,))
    assert run(f"https://{HOST}", env).candidates[0].stack == "tls"
    d = run(f"https://{HOST}", env, {"id": "eth", "set": {"interface.eth0": "require"}})
    assert [(c.stack, c.key.recent_failure) for c in d.candidates] == [("tls", 0), ("quic", 1)]
    d = run(f"https://{HOST}", env, {"id": "q", "set": {"stack.quic": "require"}})
    assert [(c.stack, c.key.recent_failure) for c in d.candidates] == [("quic", 0)]


def test_failure_memory_is_per_port() -> None:
    """An SVCB record sends TLS to 8443; TLS on the fallback 443 reaches the same address.
    A failure on 8443 demotes only 8443, and the 443 success does not hide it (r2 F3)."""
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)},
                      cache=(CacheEntry(f"{HOST}:443", "tls", "failure", address="198.18.0.20",
                                        port=8443),
                             CacheEntry(f"{HOST}:443", "tls", "success", 20.0,
                                        address="198.18.0.20", port=443)),
                      svcb={HOST: (ServiceRecord(1, ".", ("h2",), port=8443),)})
    d = run(f"https://{HOST}", env)
    assert [(c.remote_port, c.key.recent_failure, c.key.history) for c in d.candidates] == \
        [(443, 0, 0), (8443, 1, 3)]
    # An entry without a port matches every port, as before.
    old = Environment(env.interfaces, env.dns, (CacheEntry(f"{HOST}:443", "tls", "failure"),),
                      svcb=env.svcb)
    assert {c.key.recent_failure for c in run(f"https://{HOST}", old).candidates} == {1}


def test_dane_require_without_validated_usable_record_excludes_that_port_only() -> None:
    unusable = TlsaSet(f"_443._tcp.{HOST}", (TlsaRecord(1, 1, 1, b"\x01" * 32),), True)
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)},
                      svcb={HOST: (ServiceRecord(1, ".", ("h2",), port=8443),)},
                      tlsa={unusable.name: unusable})
    d = run(f"https://{HOST}", env, {"id": "dane", "set": {"security.dane": "require"}})
    assert [(c.stack, c.remote_port) for c in d.candidates] == [("tls", 8443)]
    assert any(e.outcome == "dane" and e.stack == "tls" and e.remote_port == 443 and
               f"TLSA _443._tcp.{HOST} holds no" in e.detail for e in d.excluded)
    assert d.dane is not None and d.dane.name == f"_8443._tcp.{HOST}"


@pytest.mark.parametrize(("rtt", "low", "high", "expected"), [
    (30.0, 100, 2000, 100),     # 60 ms is below the minimum: raised to it
    (300.0, 100, 2000, 600),    # inside the bounds: twice the RTT
    (1500.0, 100, 2000, 2000),  # 3000 ms is above the maximum: cut to it
    (400.0, 1500, 300, 300),    # minimum above maximum: the maximum wins (and a warning)
    (10.0, 1500, 300, 300),
])
def test_adaptive_delay_by_hand(rtt: float, low: int, high: int, expected: int) -> None:
    ok = CacheEntry(f"{HOST}:443", "tls", "success", rtt)
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)}, cache=(ok,))
    d = run(f"tls://{HOST}:443", env, {"id": "b", "set": {"racing.minAttemptDelay": low,
                                                      "racing.maxAttemptDelay": high}})
    assert d.attempt_delay is not None and d.attempt_delay.source == "history"
    assert d.attempt_delay.ms == expected
    assert any("the maximum wins" in w for w in d.warnings) == (low > high)


def test_alias_to_an_address_only_target_connects_there() -> None:
    """The apex alias (RFC 9460 section 3): svc.example has no address of its own and an
    AliasMode record to cdn.example, which has addresses but no ServiceMode records."""
    for cdn in (None, ()):  # unanswered, or a negative answer
        svcb: dict[str, tuple[ServiceRecord, ...]] = {HOST: (ServiceRecord(0, "cdn.example"),)}
        if cdn is not None:
            svcb["cdn.example"] = cdn
        env = Environment((ETH0,), {"cdn.example": ("198.18.1.30",)}, svcb=svcb)
        d = run(f"https://{HOST}", env)
        # Every stack, as for a target without records (QUIC first by multistreaming).
        assert [(c.stack, c.remote_address, c.remote_port, c.key.service_priority)
                for c in d.candidates] == [("quic", "198.18.1.30", 443, 0),
                                           ("tls", "198.18.1.30", 443, 0)]
        assert [(s.priority, s.target) for s in d.services] == \
            [(0, "cdn.example"), (FALLBACK_PRIORITY, HOST)]
        assert not any(e.outcome == "not_offered" for e in d.excluded)
    # An AliasMode to "." says there is no service: no alias target endpoint.
    env = Environment((ETH0,), {"cdn.example": ("198.18.1.30",)},
                      svcb={HOST: (ServiceRecord(0, "cdn.example"),),
                            "cdn.example": (ServiceRecord(0, "."),)})
    assert not run(f"https://{HOST}", env).candidates


def test_a_record_with_port_0_is_skipped() -> None:
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)},
                      svcb={HOST: (ServiceRecord(1, ".", ("h2",), port=0),)})
    d = run(f"https://{HOST}", env)
    assert {c.remote_port for c in d.candidates} == {443}
    assert "port 0" in d.services[0].reason


def test_ech_require_keeps_an_ech_stack_only_for_an_ech_endpoint() -> None:
    ech_tls = dataclasses.replace(catalog.info("tls"), name="tls-ech", ech=True, order=9)
    records = (ServiceRecord(1, "a.example", ("h2",), ech=True),
               ServiceRecord(2, "b.example", ("h2",)))
    env = Environment((ETH0,), {HOST: ("198.18.0.20",), "a.example": ("198.18.0.21",),
                                "b.example": ("198.18.0.22",)}, svcb={HOST: records})
    rule = {"id": "ech", "set": {"security.ech": "require"}}
    with catalog.registered(ech_tls):
        d = run(f"https://{HOST}", env, rule)
        plain = run(f"https://{HOST}", Environment((ETH0,), {HOST: ("198.18.0.20",)}), rule)
    assert [(c.stack, c.remote_address) for c in d.candidates] == [("tls-ech", "198.18.0.21")]
    assert any(e.outcome == "ech" and e.stack == "tls-ech" and "b.example:443 publishes no ECH"
               in e.detail for e in d.excluded)
    assert not plain.candidates and any(
        e.outcome == "ech" and e.stack == "tls-ech" for e in plain.excluded)


def test_dane_require_refuses_secure_stacks_to_an_ip_literal() -> None:
    env = Environment((ETH0,), {})
    d = run("https://198.18.0.20", env, {"id": "d", "set": {"security.dane": "require"}})
    assert not d.candidates
    assert {e.stack for e in d.excluded if e.outcome == "dane"
            and "an IP literal has no TLSA name" in e.detail} == {"tls", "quic"}
    d = run("https://198.18.0.20", env)  # opportunistic: PKIX only, as before
    assert d.candidates and d.dane is not None and "PKIX only" in d.dane.reason


def test_dane_require_judges_each_stack_by_what_it_sees() -> None:
    """A DANE-TA digest (2 1 1) is usable by a stack that sees the chain, not by one that
    sees only the leaf; a secure stack that checks no TLSA is excluded under require."""
    ta = TlsaSet(f"_443._tcp.{HOST}", (TlsaRecord(2, 1, 1, b"\x01" * 32),), True)
    env = Environment((ETH0,), {HOST: ("198.18.0.20",)}, tlsa={ta.name: ta})
    rule = {"id": "d", "set": {"security.dane": "require"}}
    leaf = dataclasses.replace(catalog.info("tls"), name="tls-leaf", dane="leaf", order=7)
    chain = dataclasses.replace(catalog.info("tls"), name="tls-chain", dane="chain", order=8)
    blind = dataclasses.replace(catalog.info("tls"), name="tls-blind", dane="none", order=9)
    with catalog.registered(leaf), catalog.registered(chain), catalog.registered(blind):
        d = run(f"tls://{HOST}:443", env, rule)
    stacks = {c.stack for c in d.candidates}
    assert "tls-chain" in stacks and not stacks & {"tls-leaf", "tls-blind"}
    assert any(e.stack == "tls-leaf" and "leaf-only" in e.detail for e in d.excluded)
    assert any(e.stack == "tls-blind" and "does not check TLSA" in e.detail
               for e in d.excluded)
    # Only chain stacks are left, so the first one counts the digest as usable.
    assert d.dane is not None and d.dane.usable == 1


# --- hypothesis: properties of decide() over random resolutions -----------------------------

TARGETS = ("a.example", "b.example")
V4 = ("198.18.0.20", "198.18.0.21", "198.18.2.1", "198.18.2.2")
V6 = ("fd00::20", "fd00::21")


@st.composite
def records(draw: st.DrawFn) -> tuple[ServiceRecord, ...]:
    if draw(st.integers(0, 5)) == 0:
        return (ServiceRecord(0, draw(st.sampled_from(TARGETS))),)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        out.append(ServiceRecord(
            draw(st.integers(1, 3)), draw(st.sampled_from((".", *TARGETS))),
            tuple(draw(st.lists(st.sampled_from(("h3", "h2", "http/1.1")), unique=True))),
            draw(st.booleans()), draw(st.sampled_from((None, 8443, 4433))),
            tuple(draw(st.lists(st.sampled_from(V4[2:]), max_size=1))),
            tuple(draw(st.lists(st.sampled_from(V6), max_size=1))),
            draw(st.booleans()),
            tuple(draw(st.lists(st.sampled_from(("alpn", "key65000", "port")), max_size=1,
                                unique=True)))))
    return tuple(out)


@st.composite
def resolutions(draw: st.DrawFn) -> tuple[str, Environment, list[dict[str, Any]]]:
    scheme = draw(st.sampled_from(("https", "quic", "tls", "hostport")))
    port = draw(st.sampled_from((443, 8443)))
    target = f"{HOST}:{port}" if scheme == "hostport" else f"{scheme}://{HOST}:{port}"
    names = (HOST, *TARGETS)
    dns = {n: tuple(draw(st.lists(st.sampled_from((*V4, *V6)), unique=True, max_size=3)))
           for n in names if draw(st.booleans())}
    owner = HOST if port == 443 else f"_{port}._https.{HOST}"
    svcb: dict[str, tuple[ServiceRecord, ...]] = {}
    if draw(st.booleans()):
        svcb[owner] = draw(records())
        for t in TARGETS:
            if draw(st.booleans()):
                svcb[t] = draw(records())
    arrivals: list[Arrival] = []
    if draw(st.booleans()):
        for n in names:
            for rtype, fam in (("A", False), ("AAAA", True)):
                has = any((":" in a) == fam for a in dns.get(n, ()))
                if has or draw(st.booleans()):
                    arrivals.append(Arrival(n, rtype, draw(st.integers(0, 600)), None, not has))
        for n, recs in svcb.items():
            arrivals.append(Arrival(n, "HTTPS", draw(st.integers(0, 600)), None, not recs))
    now = draw(st.sampled_from((None, 0.0)))
    cache = tuple(
        CacheEntry(f"{HOST}:{port}", draw(st.sampled_from(("quic", "tls", "tcp"))),
                   draw(st.sampled_from(("success", "failure"))),
                   draw(st.sampled_from((None, 10.0, 400.0, 1500.0))),
                   interface=draw(st.sampled_from((None, "eth0", "wlan0"))),
                   address=draw(st.sampled_from((None, *V4[:2], *V6))),
                   at=draw(st.sampled_from((None, -30.0, -3600.0))),
                   port=draw(st.sampled_from((None, port, 8443, 4433))))
        for _ in range(draw(st.integers(0, 4))))
    rules = draw(st.lists(st.sampled_from((
        {"id": "r1", "set": {"stack.quic": "prefer"}},
        {"id": "r2", "set": {"stack.tls": "require"}},
        {"id": "r3", "set": {"security.dane": "require"}},
        {"id": "r4", "set": {"security.ech": "require"}},
        {"id": "r5", "set": {"racing.failureMemory": 0}},
        {"id": "r6", "set": {"addressFamily.ipv4": "prefer"}},
        {"id": "r7", "set": {"racing.resolutionDelay": 300}},
        {"id": "r8", "set": {"dns.svcbSchemes": ["https", "quic", "tls"]}},
        {"id": "r9", "set": {"racing.minAttemptDelay": 1500, "racing.maxAttemptDelay": 300}},
        {"id": "r10", "set": {"interface.eth0": "require"}},
    )), unique_by=lambda r: str(r["id"]), max_size=3))
    tlsa: dict[str, TlsaSet] = {}
    for name in (f"_{p}._{proto}.{HOST}" for p in (port, 8443, 4433) for proto in ("tcp", "udp")):
        if draw(st.integers(0, 3)) == 0:
            tlsa_records = tuple(TlsaRecord(draw(st.integers(0, 3)), draw(st.integers(0, 1)),
                                    draw(st.integers(0, 2)), b"\x01" * 32)
                         for _ in range(draw(st.integers(0, 2))))
            tlsa[name] = TlsaSet(name, tlsa_records, draw(st.booleans()))
    env = Environment((ETH0, WLAN0), dns, cache, svcb=svcb, tlsa=tlsa, arrivals=tuple(arrivals),
                      now=now)
    return target, env, rules


@SETTINGS
@given(case=resolutions())
def test_decide_with_resolution_keeps_its_promises(
        case: tuple[str, Environment, list[dict[str, Any]]]) -> None:
    target, env, rules = case
    d = run(target, env, *rules)
    again = run(target, env, *rules)
    assert d.to_dict() == again.to_dict()  # deterministic
    cands = d.candidates
    numbers = {p.number for p in d.passes}
    # Rule 9: each candidate is the best-ranked one not started yet whose pass had begun by
    # its start (a later pass is sorted in, not appended); within a pass, keys only rise.
    assert all(c.resolution_pass in numbers for c in cands)
    if cands:
        began = {p.number: p.at_ms for p in d.passes}
        first_at = began[cands[0].resolution_pass]
        for i, c in enumerate(cands):
            for later in cands[i + 1:]:
                if round(began[later.resolution_pass] - first_at) <= c.start_ms:
                    assert c.key <= later.key, (c, later)
        for number in numbers:
            keys = [c.key for c in cands if c.resolution_pass == number]
            assert keys == sorted(keys)
    assert [c.rank for c in cands] == list(range(1, len(cands) + 1))
    # start_ms is non-decreasing, at least one attempt delay apart, and no later pass's
    # candidate starts before its pass.
    if cands:
        assert d.attempt_delay is not None
        delay = d.attempt_delay.ms
        low, high = d.value("racing.minAttemptDelay"), d.value("racing.maxAttemptDelay")
        if d.attempt_delay.source == "history":
            # The promise, not the formula: never above the maximum, within the bounds when
            # they are ordered; the RTT itself counts when it is inside them.
            assert delay <= high
            if low <= high:
                assert low <= delay
                if low <= 2 * cands[0].key.rtt_ms <= high:
                    assert abs(delay - 2 * cands[0].key.rtt_ms) <= 0.5
        else:
            assert delay == d.value("racing.attemptDelay")
        if low > high:
            assert any("the maximum wins" in w for w in d.warnings)
        starts = [c.start_ms for c in cands]
        assert starts[0] == 0
        assert all(b - a >= delay for a, b in itertools.pairwise(starts))
        at = {p.number: p.at_ms for p in d.passes}
        for c in cands:  # counted from the first candidate's pass
            assert c.start_ms >= round(at[c.resolution_pass] - at[cands[0].resolution_pass])
    # Within a pass, a recent failure ranks after everything without one.
    for number in numbers:
        flags = [c.key.recent_failure for c in cands if c.resolution_pass == number]
        assert flags == sorted(flags)
    # Each leaf once.
    leaves = [(c.interface, c.stack, c.remote_address, c.remote_port) for c in cands]
    assert len(set(leaves)) == len(leaves)
    # A stack the policy requires is never demoted.
    if d.value("stack.tls") == "require":
        assert not any(c.key.recent_failure for c in cands if c.stack == "tls")
    # Every candidate's address is its endpoint's: the endpoint target's A/AAAA answer or a
    # record's hint; without records, the host's own.
    hints = {a for recs in env.svcb.values() for r in recs for a in (*r.ipv4hint, *r.ipv6hint)}
    for c in cands:
        if not d.services:
            assert c.remote_address in env.dns.get(HOST, ()), c
        else:
            targets = [s.target for s in d.services if s.priority == c.key.service_priority
                       and s.port == c.remote_port and c.stack in s.stacks]
            assert any(c.remote_address in env.dns.get(t, ()) for t in targets) or \
                c.remote_address in hints, c
    # With records, every candidate's stack is offered by a record of its priority (or
    # is a non-QUIC fallback, or an alias target without ServiceMode records, which offers
    # every stack); without, priority 0 everywhere.
    if not d.services:
        assert {c.key.service_priority for c in cands} <= {0}
        assert all(c.remote_port == d.request.port for c in cands)
    for c in cands:
        info = catalog.info(c.stack)
        if c.key.service_priority == FALLBACK_PRIORITY:
            assert "h3" not in info.alpn and c.remote_port == d.request.port
        elif d.services:
            offers = [s for s in d.services if s.priority == c.key.service_priority
                      and s.port == c.remote_port and c.stack in s.stacks]
            assert offers, c
            if c.key.service_priority == 0:  # the alias target: the chain's last name
                assert all(s.target == s.alias_chain[-1] for s in offers), c
                continue
            https = d.request.scheme in ("https", "quic")
            assert any(set(info.alpn) & set(s.alpn) or (not s.alpn and not https)
                       for s in offers), c
    # security.ech require refuses every stack (none can send ECH); dane require every
    # insecure one.
    if d.value("security.ech") == "require":
        assert not cands
    if d.value("security.dane") == "require":
        assert all(catalog.info(c.stack).secure and catalog.info(c.stack).dane != "none"
                   for c in cands)
        # Any candidate whose TLSA answer is known holds a record its stack can check.
        for c in cands:
            info = catalog.info(c.stack)
            tset = env.tlsa.get(f"_{c.remote_port}._{info.ip_protocol}.{HOST}")
            if tset is not None:
                assert tset.validated and any(
                    r.usage in (2, 3) and (info.dane == "chain" or r.usage == 3
                                           or (r.selector, r.matching) == (0, 0))
                    for r in tset.records), c


@pytest.mark.parametrize("scheme", ["https", "tls"])
def test_decide_without_resolution_data_matches_a_plain_environment(scheme: str) -> None:
    """The issue 12 fields left empty change nothing about the candidates of old."""
    env = Environment((ETH0, WLAN0), {HOST: ("fd00::20", "198.18.0.20")})
    d = run(f"{scheme}://{HOST}:443", env)
    assert [c.start_ms for c in d.candidates] == [250 * i for i in range(len(d.candidates))]
    assert d.attempt_delay is not None and d.attempt_delay.source == "policy"
