"""The resolution block of explain's text and DOT (taps_post/decision/render.py Rule 2):
passes, service endpoints, the attempt delay and its source, DANE, ECH, and each
candidate's pass, service priority and remembered failure; nothing of it for an IP literal
or a snapshot whose answers were all known at once.

The Decisions are built directly (the renderers read a Decision only, render Rule 1), plus
one real `explain()` on a snapshot with SVCB records, arrivals and history.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp
from taps_post.decision.decision import (
    AttemptDelay,
    Candidate,
    DaneStatus,
    Decision,
    RankKey,
    ResolutionPass,
    ServiceEndpoint,
)
from taps_post.decision.environment import Address, Interface
from taps_post.decision.render import render_dot, render_text
from taps_post.decision.request import parse_target
from taps_post.schemas import ExplainOutput

WLAN = Interface("wlan0", "wifi", True, (Address("198.18.0.2"), Address("fd00::2")))


def key(*, failure: int = 0, service: int = 0, history: int = 1,
        rtt: float = float("inf")) -> RankKey:
    return RankKey(recent_failure=failure, path_prefer=0, path_avoid=0, service_priority=service,
                   protocol_prefer=0, protocol_avoid=0, history=history, rtt_ms=rtt, cost=0,
                   interface="wlan0", stack_order=1, endpoint_order=0)


def candidate(rank: int, stack: str, address: str, port: int, start: int, *,
              resolution_pass: int = 1, **kw: Any) -> Candidate:
    family = "ipv6" if ":" in address else "ipv4"
    local = "fd00::2" if family == "ipv6" else "198.18.0.2"
    return Candidate(rank, "wlan0", local, stack, address, port, family, start, key(**kw),
                     resolution_pass)


def decision(target: str = "https://svc.example", **fields: Any) -> Decision:
    base = Decision(parse_target(target), (), frozenset(), {}, (), (), (), "ok", (),
                    interfaces=(WLAN,))
    return replace(base, **fields)


PASSES = (
    ResolutionPass(1, 59.0, "resolutionDelay 50 ms after A",
                   ("HTTPS svc.example: 1 record at 4 ms, ttl 300",
                    "A svc.example: 1 address at 9 ms, ttl 60")),
    ResolutionPass(2, 180.0, "AAAA svc.example answered",
                   ("AAAA svc.example: 1 address at 180 ms, ttl 60",)),
)
SERVICES = (
    ServiceEndpoint("svc.example", 1, "pool.example", 8443, ("h3",), ("quic",), True,
                    ("cdn.example",)),
    ServiceEndpoint("svc.example", 2, "pool.example", 443, ("h2", "http/1.1"), ("tls",),
                    False, ("cdn.example",)),
    ServiceEndpoint("svc.example", 3, "gone.example", 443, ("h2",), ("tls",), False,
                    ("cdn.example",), "no address: gone.example has no A/AAAA answer"),
    ServiceEndpoint("svc.example", 65536, "svc.example", 443, (), ("tls",), False,
                    ("cdn.example",),
                    "fallback: the target's own addresses on the URL's port"),
)
CANDIDATES = (
    candidate(1, "tls", "198.18.0.11", 443, 0, service=2, history=0, rtt=30.0),
    candidate(2, "tls", "198.18.0.10", 443, 100, service=65536),
    candidate(3, "tls", "fd00::10", 443, 200, service=65536, resolution_pass=2),
    candidate(4, "quic", "198.18.0.11", 8443, 300, service=1, failure=1, history=3),
)
DELAY = AttemptDelay(100, "history", "2 x 30 ms handshake RTT of tls over wlan0 to "
                                     "198.18.0.11 (history), raised to racing.minAttemptDelay "
                                     "100 ms")
DANE = DaneStatus("opportunistic", "_443._tcp.svc.example", 2, True, 1,
                  "1 usable record(s), DNSSEC-validated: the peer's certificate must match "
                  "one after the handshake")
FULL = dict(passes=PASSES, services=SERVICES, candidates=CANDIDATES, attempt_delay=DELAY,
            dane=DANE)


def block(text: str) -> list[str]:
    """The lines of the resolution block (from `resolution` to `tree`, exclusive)."""
    lines = text.splitlines()
    if "resolution" not in lines:
        return []
    start = lines.index("resolution")
    return lines[start:lines.index("tree")]


def test_the_block_shows_passes_services_delay_dane_and_ech() -> None:
    text = render_text(decision(**FULL))
    assert block(text) == [
        "resolution",
        "  pass 1  at 59 ms  resolutionDelay 50 ms after A",
        "    HTTPS svc.example: 1 record at 4 ms, ttl 300",
        "    A svc.example: 1 address at 9 ms, ttl 60",
        "  pass 2  at 180 ms  AAAA svc.example answered",
        "    AAAA svc.example: 1 address at 180 ms, ttl 60",
        "  services of svc.example (alias svc.example -> cdn.example)",
        "    priority 1  pool.example:8443  alpn h3  stacks quic  ech",
        "    priority 2  pool.example:443   alpn h2,http/1.1  stacks tls",
        "    priority 3  gone.example:443   alpn h2  stacks tls  no address: gone.example has "
        "no A/AAAA answer",
        "    fallback    svc.example:443    stacks tls  fallback: the target's own addresses "
        "on the URL's port",
        f"  attempt delay  100 ms from history: {DELAY.reason}",
        f"  dane           opportunistic  _443._tcp.svc.example: {DANE.reason}",
        "  ech            cdn.example (for pool.example) publishes ECH; security.ech prefer: "
        "no stack here can send ECH, the server name goes in clear",
    ]
    # the block comes before the tree, which it explains
    assert text.index("resolution\n") < text.index("tree\n")


def test_each_candidate_says_its_pass_service_and_remembered_failure() -> None:
    lines = render_text(decision(**FULL)).splitlines()
    tree = lines[lines.index("tree") + 1:]
    line = {int(m[1]): s for s in tree if (m := re.search(r"#(\d+)", s))}
    assert line[1].endswith("start 0 ms  pass 1  service priority 2")
    assert line[1].lstrip().startswith("* #1")
    assert line[2].endswith("start 100 ms  pass 1  fallback endpoint")
    assert line[3].endswith("start 200 ms  pass 2  fallback endpoint")
    # demoted within its pass: #4 (pass 1) still ranks before #3 (pass 2), so not "last"
    assert line[4].endswith("start 300 ms  pass 1  service priority 1  recent failure: "
                            "ranked after its pass's candidates without one")


def test_one_pass_says_the_failure_ranks_after_the_candidates_without_one() -> None:
    d = decision(candidates=(candidate(1, "tls", "198.18.0.10", 443, 0),
                             candidate(2, "quic", "198.18.0.10", 443, 100, failure=1)))
    [demoted] = [s for s in render_text(d).splitlines() if "#2" in s]
    assert demoted.endswith("start 100 ms  recent failure: ranked after the candidates "
                            "without one"), demoted


def test_the_ech_line_names_the_record_owner_and_its_target() -> None:
    """The owner of the record that carries `ech` (the name `dig` shows it under, the one
    decide()'s warning names) and, when it is another name, the record's target."""
    own = ServiceEndpoint("svc.example", 1, "svc.example", 443, ("h3",), ("quic",), True)
    lines = block(render_text(decision(services=(own,), candidates=CANDIDATES[:1])))
    assert any(line.startswith("  ech            svc.example publishes ECH;")
               for line in lines), lines
    two = (SERVICES[0], replace(SERVICES[1], ech=True))
    lines = block(render_text(decision(services=two, candidates=CANDIDATES[:1])))
    assert any(line.startswith("  ech            cdn.example (for pool.example) publishes "
                               "ECH;") for line in lines), lines


def test_an_ip_literal_has_no_resolution_block() -> None:
    """An IP literal resolves nothing: no passes, services or DANE name; the policy's
    attempt delay shows in the start times alone (Rule 2)."""
    d = decision("https://198.18.0.10", candidates=(
        candidate(1, "quic", "198.18.0.10", 443, 0),
        candidate(2, "tls", "198.18.0.10", 443, 250)),
        attempt_delay=AttemptDelay(250, "policy", "racing.attemptDelay 250 ms (default)"),
        dane=DaneStatus("opportunistic", None, 0, False, 0,
                        "an IP address has no TLSA name: PKIX only"))
    text = render_text(d)
    assert "resolution" not in text and "pass" not in text and "service" not in text
    assert "start 0 ms\n" in text and "start 250 ms\n" in text


def test_a_snapshot_known_at_once_has_no_resolution_block() -> None:
    d = decision(passes=(ResolutionPass(1, 0.0, "every answer known at once",
                                        ("A svc.example: 1 address",)),),
                 candidates=(candidate(1, "tls", "198.18.0.10", 443, 0),),
                 attempt_delay=AttemptDelay(250, "policy", "racing.attemptDelay 250 ms"),
                 dane=DaneStatus("opportunistic", "_443._tcp.svc.example", 0, False, 0,
                                 "no TLSA answer for _443._tcp.svc.example is known: PKIX "
                                 "only"))
    text = render_text(d)
    assert block(text) == []
    assert text.splitlines()[-2].endswith("start 0 ms")  # no notes on the candidate


@pytest.mark.parametrize(("fields", "want"), [
    pytest.param({"attempt_delay": DELAY}, ["attempt delay  100 ms from history"],
                 id="history-delay-alone"),
    pytest.param({"dane": replace(DANE, mode="require", records=0, validated=False,
                                  usable=0, reason="no TLSA answer is known")},
                 ["dane           require  _443._tcp.svc.example: no TLSA answer is known"],
                 id="dane-require-alone"),
    pytest.param({"passes": PASSES[:1]}, ["pass 1  at 59 ms"], id="one-late-pass"),
])
def test_one_fact_worth_a_line_shows_the_block_with_that_line(fields: dict[str, Any],
                                                              want: list[str]) -> None:
    got = block(render_text(decision(candidates=CANDIDATES[:1], **fields)))
    assert got[0] == "resolution"
    for line in want:
        assert any(g.strip().startswith(line) for g in got), got


def test_ech_require_is_said_even_without_a_record(tmp_path: Path) -> None:
    d = tp.explain("https://svc.example", system=[], app={
        "version": 1, "layer": "app", "rules": [{"id": "ech", "set": {"security.ech": "require"}}]},
        env={"interfaces": [WLAN_DICT], "dns": {"svc.example": ["198.18.0.10"]}})
    lines = block(render_text(d))
    assert any("no target publishes ECH; security.ech require: candidates whose stack cannot "
               "send ECH are excluded" in line for line in lines), lines


def test_the_dot_has_the_resolution_note_and_each_leaf_its_notes() -> None:
    dot = render_dot(decision(**FULL))
    note = next(line for line in dot.splitlines() if line.startswith('  "resolution" ['))
    assert "shape=note" in note and "pass 2  at 180 ms" in note and "ech" in note
    assert '"root" -> "resolution" [style=dotted, arrowhead=none];' in dot
    leaf = next(line for line in dot.splitlines()
                if line.startswith('  "ep:wlan0:quic:198.18.0.11:8443" ['))
    assert "pass 1\\nservice priority 1\\nrecent failure: ranked after its pass's " \
           "candidates without one" in leaf
    # the same address on two ports gives two leaves
    assert '"ep:wlan0:tls:198.18.0.11:443"' in dot


def test_the_dot_of_an_ip_literal_has_no_note() -> None:
    d = decision("https://198.18.0.10", candidates=(candidate(1, "tls", "198.18.0.10", 443, 0),))
    assert "resolution" not in render_dot(d)


def test_the_json_of_a_built_decision_matches_the_schema() -> None:
    data = decision(**FULL).to_dict()
    ExplainOutput.validate(data)
    assert data["resolution"]["attempt_delay"] == {"ms": 100, "source": "history",
                                                   "reason": DELAY.reason}
    assert [c["pass"] for c in data["candidates"]] == [1, 1, 2, 1]
    assert data["candidates"][3]["key"]["recent_failure"] is True
    assert data["resolution"]["services"][0]["alias_chain"] == ["cdn.example"]
    json.dumps(data)


# ---- a real decide() on a snapshot -------------------------------------------------------

WLAN_DICT = {"name": "wlan0", "type": "wifi", "addresses": ["198.18.0.2", "fd00::2"]}
SNAPSHOT = {
    "interfaces": [WLAN_DICT],
    "dns": {"svc.example": ["fd00::10", "198.18.0.10"], "pool.example": ["198.18.0.11"]},
    "svcb": {"svc.example": [{"priority": 1, "target": "pool.example", "alpn": ["h3"],
                              "port": 8443, "ech": True}]},
    "arrivals": [{"name": "svc.example", "type": "HTTPS", "at_ms": 2},
                 {"name": "svc.example", "type": "A", "at_ms": 5},
                 {"name": "pool.example", "type": "A", "at_ms": 7},
                 {"name": "svc.example", "type": "AAAA", "at_ms": 200}],
    "cache": [{"remote": "svc.example:443", "stack": "quic", "outcome": "failure",
               "interface": "wlan0", "age_s": 60}],
}


def test_a_real_decision_renders_its_passes_and_services() -> None:
    d = tp.explain("https://svc.example", system=[], env=SNAPSHOT)
    text = render_text(d)
    lines = block(text)
    assert lines, text
    assert sum(1 for line in lines if re.match(r"  pass \d+  at ", line)) == len(d.passes)
    assert len(d.passes) >= 2, d.passes
    assert any(line.startswith("  services of svc.example") for line in lines), text
    assert any("priority 1  pool.example:8443" in line for line in lines), text
    assert any(line.startswith("  ech            svc.example (for pool.example) publishes ECH")
               for line in lines), lines
    for c in d.candidates:
        assert f"pass {c.resolution_pass}" in text
    ExplainOutput.validate(d.to_dict())
    assert "resolution" in render_dot(d)
