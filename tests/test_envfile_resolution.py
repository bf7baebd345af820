"""Environment snapshots' resolution sections: `svcb:`, `tlsa:`, `arrivals:` and the cache's
`age_s` and `port` (taps_post/decision/envfile.py, Rules 5-7).

Every bad input is refused with `file:line:col: message` pointing at the value at fault (or
at the key, for a name), and a good snapshot round-trips through `Environment.to_dict()`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taps_post as tp
from helpers import PYTHON, installed_env
from taps_post.decision.envfile import load_environment
from taps_post.decision.names import Arrival, ServiceRecord, TlsaRecord, TlsaSet

DIGEST = "ab" * 32
GOOD: dict[str, Any] = {
    "interfaces": [{"name": "eth0", "type": "ethernet",
                    "addresses": ["198.18.0.2", "fd00::2"]}],
    "dns": {"svc.example": ["fd00::10", "198.18.0.10"], "pool.example": ["198.18.0.11"]},
    "svcb": {
        "Svc.Example.": [{"priority": 0, "target": "cdn.example."}],
        "cdn.example": [
            {"priority": 1, "target": "pool.example", "alpn": ["h3", "h2"], "port": 8443,
             "ipv4hint": ["198.18.0.11"], "ipv6hint": ["fd00::11"], "ech": True,
             "mandatory": ["alpn", "port"], "ttl": 300},
            {"priority": 2, "target": ".", "alpn": ["h2"], "no_default_alpn": True,
             "port": 0, "ttl": 0},
        ],
        "_8080._foo.svc.example": [],
    },
    "tlsa": {"_443._tcp.svc.example": {"validated": True, "records": [
        {"usage": 3, "selector": 1, "matching": 1, "data": DIGEST.upper()},
        {"usage": 2, "selector": 0, "matching": 0, "data": "3082"}]},
        "_443._udp.svc.example": {"records": []}},
    "arrivals": [
        {"name": "svc.example", "type": "HTTPS", "at_ms": 3},
        {"name": "cdn.example", "type": "HTTPS", "at_ms": 6.5, "ttl": 300},
        {"name": "_8080._foo.svc.example", "type": "SVCB", "at_ms": 4, "negative": True},
        {"name": "svc.example", "type": "A", "at_ms": 10, "ttl": 60},
        {"name": "svc.example", "type": "AAAA", "at_ms": 90, "ttl": 60},
        {"name": "pool.example", "type": "A", "at_ms": 12},
        {"name": "pool.example", "type": "AAAA", "at_ms": 13, "negative": True},
        {"name": "_443._tcp.svc.example", "type": "TLSA", "at_ms": 20},
        {"name": "_443._udp.svc.example", "type": "TLSA", "at_ms": 21, "negative": True},
    ],
    "cache": [
        {"remote": "svc.example:443", "stack": "quic", "outcome": "failure", "age_s": 30},
        {"remote": "svc.example:443", "stack": "tls", "outcome": "success", "rtt_ms": 12,
         "age_s": 0},
        {"remote": "svc.example:443", "stack": "tcp", "outcome": "failure"},
        {"remote": "svc.example:443", "stack": "tls", "outcome": "failure", "port": 8443,
         "address": "198.18.0.11", "age_s": 5},
    ],
}


def test_a_full_snapshot_loads_into_the_names_values() -> None:
    env = load_environment(GOOD)
    assert env.svcb["svc.example"] == (ServiceRecord(0, "cdn.example"),)
    assert env.svcb["cdn.example"] == (
        ServiceRecord(1, "pool.example", ("h3", "h2"), False, 8443, ("198.18.0.11",),
                      ("fd00::11",), True, ("alpn", "port"), 300),
        ServiceRecord(2, ".", ("h2",), True, 0, ttl=0))
    assert env.svcb["_8080._foo.svc.example"] == ()  # a negative answer
    assert env.tlsa["_443._tcp.svc.example"] == TlsaSet(
        "_443._tcp.svc.example",
        (TlsaRecord(3, 1, 1, bytes.fromhex(DIGEST)), TlsaRecord(2, 0, 0, b"\x30\x82")), True)
    assert env.tlsa["_443._udp.svc.example"] == TlsaSet("_443._udp.svc.example", (), False)
    assert env.arrivals[0] == Arrival("svc.example", "HTTPS", 3.0)
    assert env.arrivals[4] == Arrival("svc.example", "AAAA", 90.0, 60, False)
    assert env.arrivals[6].negative
    # Rule 6: ages against a decision at time 0; no age: no time
    assert env.now == 0.0
    assert [c.at for c in env.cache] == [-30.0, 0.0, None, -5.0]
    # R2-2: an entry's remote port; without one it is about any port
    assert [c.port for c in env.cache] == [None, None, None, 8443]


def test_a_snapshot_round_trips_through_to_dict() -> None:
    env = load_environment(GOOD)
    again = load_environment(env.to_dict())
    assert again == env
    assert again.to_dict() == env.to_dict()
    data = env.to_dict()
    assert data["svcb"]["svc.example"] == [{"priority": 0, "target": "cdn.example"}]
    assert data["svcb"]["cdn.example"][1] == {"priority": 2, "target": ".", "alpn": ["h2"],
                                              "no_default_alpn": True, "port": 0, "ttl": 0}
    assert data["tlsa"]["_443._tcp.svc.example"]["records"][0]["data"] == DIGEST
    assert data["cache"][0]["age_s"] == 30.0 and "age_s" not in data["cache"][2]
    assert data["cache"][3]["port"] == 8443 and "port" not in data["cache"][0]


def test_a_snapshot_without_the_new_sections_says_nothing_of_them() -> None:
    env = load_environment({"dns": {"a.example": ["198.18.0.1"]},
                            "cache": [{"remote": "a.example:1", "stack": "tcp",
                                       "outcome": "failure"}]})
    assert env.now is None and env.cache[0].at is None
    assert env.svcb == {} and env.tlsa == {} and env.arrivals == ()
    assert set(env.to_dict()) == {"interfaces", "dns", "cache"}


def test_a_live_environment_writes_ages_not_clock_times() -> None:
    """An Environment on the wall clock (the runtime's) becomes a snapshot with ages, which
    loads back to the same ages (times relative to 0)."""
    live = tp.Environment(cache=(
        tp.CacheEntry("a.example:1", "tcp", "failure", at=1_700_000_000.0),
        tp.CacheEntry("a.example:1", "tls", "failure", at=1_700_000_090.0)),
        now=1_700_000_100.0)
    data = live.to_dict()
    assert [c["age_s"] for c in data["cache"]] == [100.0, 10.0]
    again = load_environment(data)
    assert again.now == 0.0 and [c.at for c in again.cache] == [-100.0, -10.0]


GOOD_YAML = """\
dns:
  svc.example: ["198.18.0.10"]
svcb:
  svc.example:
    - {priority: 1, target: ., alpn: [h3]}
arrivals:
  - {name: svc.example, type: A, at_ms: 10}
  - {name: svc.example, type: HTTPS, at_ms: 5}
"""


def _svcb(record: str, owner: str = "svc.example") -> str:
    return f"svcb:\n  {owner}:\n    - {record}\n"


CASES = [
    # svcb: owner names
    pytest.param("svcb:\n  198.18.0.1: []\n", 2, 3,
                 "svcb: '198.18.0.1' is an IP address, which is never resolved",
                 id="svcb-owner-ip"),
    pytest.param("svcb:\n  a..example: []\n", 2, 3, "'a..example' has an empty label",
                 id="svcb-owner-empty-label"),
    pytest.param("svcb:\n  Svc.example: []\n  svc.example.: []\n", 3, 3,
                 "duplicate svcb owner 'svc.example.'", id="svcb-owner-duplicate"),
    pytest.param(f"svcb:\n  {'x' * 300}.example: []\n", 2, 3, "characters)",
                 id="svcb-owner-long-cut-short"),
    # svcb: record fields
    pytest.param(_svcb("{priority: 65536, target: .}"), 3, 18,
                 "less than or equal to 65535", id="svcb-priority-over"),
    pytest.param(_svcb("{priority: -1, target: .}"), 3, 18, "greater than or equal to 0",
                 id="svcb-priority-negative"),
    pytest.param(_svcb("{priority: 1}"), 3, 7, "missing required key 'target'",
                 id="svcb-target-missing"),
    pytest.param(_svcb("{priority: 1, target: 'a b'}"), 3, 29, "target: 'a b' is not a host",
                 id="svcb-target-bad"),
    pytest.param(_svcb("{priority: 1, target: '::1'}"), 3, 29,
                 "target: '::1' is an IP address", id="svcb-target-ip"),
    pytest.param(_svcb("{priority: 0, target: a.example, alpn: [h3]}"), 3, 46,
                 "an AliasMode record (priority 0) takes only a target", id="alias-with-alpn"),
    pytest.param(_svcb("{priority: 0, target: a.example, port: 443}"), 3, 46,
                 "port belongs in a ServiceMode record", id="alias-with-port"),
    pytest.param("svcb:\n  svc.example:\n    - {priority: 0, target: a.example}\n"
                 "    - {priority: 0, target: b.example}\n", 4, 18,
                 "a second AliasMode record", id="alias-twice"),
    pytest.param(_svcb("{priority: 1, target: ., port: 65536}"), 3, 38,
                 "less than or equal to 65535", id="svcb-port-over"),
    pytest.param(_svcb("{priority: 1, target: ., ipv4hint: ['fd00::1']}"), 3, 43,
                 "ipv4hint 'fd00::1' is not an IPv4 address", id="ipv4hint-wrong-family"),
    pytest.param(_svcb("{priority: 1, target: ., ipv6hint: [198.18.0.1, 'fd00::1']}"), 3,
                 43, "ipv6hint '198.18.0.1' is not an IPv6 address", id="ipv6hint-wrong-family"),
    pytest.param(_svcb("{priority: 1, target: ., ipv4hint: [198.18.0.1, nope]}"), 3, 55,
                 "ipv4hint 'nope' is not an IP address", id="hint-not-an-address"),
    pytest.param(_svcb("{priority: 1, target: ., alpn: [h2, '']}"), 3, 43,
                 "alpn '' is not an ALPN protocol id", id="alpn-empty"),
    pytest.param(_svcb("{priority: 1, target: ., no_default_alpn: true}"), 3, 49,
                 "no_default_alpn needs an alpn list", id="no-default-alpn-alone"),
    pytest.param(_svcb("{priority: 1, target: ., alpn: [h3], mandatory: [port]}"), 3, 56,
                 "mandatory names port, which the record does not have",
                 id="mandatory-absent-key"),
    pytest.param(_svcb("{priority: 1, target: ., mandatory: [mandatory]}"), 3, 44,
                 "mandatory may not name itself", id="mandatory-itself"),
    pytest.param(_svcb("{priority: 1, target: ., mandatory: [Bogus]}"), 3, 44,
                 "mandatory 'Bogus' is not a SvcParamKey", id="mandatory-bad-key"),
    pytest.param(_svcb("{priority: 1, target: ., ech: yes please}"), 3, 37,
                 "expected true or false", id="ech-not-bool"),
    pytest.param(_svcb("{priority: 1, target: ., alpm: [h3]}"), 3, 32,
                 "unknown key 'alpm' (did you mean 'alpn'?)", id="svcb-unknown-key"),
    pytest.param(_svcb("{priority: 1, target: ., ttl: 2147483648}"), 3, 37,
                 "less than or equal to 2147483647", id="svcb-ttl-over"),
    pytest.param("svcb:\n  svc.example: {priority: 1}\n", 2, 16, "expected a list",
                 id="svcb-not-a-list"),
    # tlsa
    pytest.param("tlsa:\n  _443._sctp.svc.example: {}\n", 2, 3,
                 "is not a TLSA name: _PORT._tcp.HOST or _PORT._udp.HOST", id="tlsa-name-proto"),
    pytest.param("tlsa:\n  _99999._tcp.svc.example: {}\n", 2, 3,
                 "port 99999 is not from 0 to 65535", id="tlsa-name-port"),
    pytest.param("tlsa:\n  _443._tcp.192.0.2.1: {}\n", 2, 3, "is an IP address",
                 id="tlsa-name-ip"),
    pytest.param("tlsa:\n  _443._tcp.a.example: {}\n  _443._TCP.A.example.: {}\n", 3, 3,
                 "duplicate tlsa name", id="tlsa-duplicate"),
    pytest.param("tlsa:\n  _443._tcp.a.example:\n    records:\n"
                 "      - {usage: 4, selector: 1, matching: 1, data: ab}\n", 4, 17,
                 "less than or equal to 3", id="tlsa-usage-over"),
    pytest.param("tlsa:\n  _443._tcp.a.example:\n    records:\n"
                 "      - {usage: 3, selector: 2, matching: 1, data: ab}\n", 4, 30,
                 "less than or equal to 1", id="tlsa-selector-over"),
    pytest.param("tlsa:\n  _443._tcp.a.example:\n    records:\n"
                 "      - {usage: 3, selector: 1, matching: 3, data: ab}\n", 4, 43,
                 "less than or equal to 2", id="tlsa-matching-over"),
    pytest.param("tlsa:\n  _443._tcp.a.example:\n    records:\n"
                 "      - {usage: 3, selector: 1, matching: 0, data: xyz}\n", 4, 52,
                 "data 'xyz' is not hexadecimal", id="tlsa-data-not-hex"),
    pytest.param("tlsa:\n  _443._tcp.a.example:\n    records:\n"
                 "      - {usage: 3, selector: 1, matching: 1, data: abcd}\n", 4, 52,
                 "data is 2 bytes; matching 1 (SHA-256) is 32", id="tlsa-digest-size"),
    pytest.param("tlsa:\n  _443._tcp.a.example: {validated: 1}\n", 2, 36,
                 "expected true or false", id="tlsa-validated-not-bool"),
    # arrivals
    pytest.param("arrivals:\n  - {name: a.example, type: MX, at_ms: 1, negative: true}\n", 2,
                 29, "input should be 'A', 'AAAA', 'HTTPS', 'SVCB' or 'TLSA'",
                 id="arrival-type"),
    pytest.param("arrivals:\n  - {name: a.example, type: A, at_ms: -1, negative: true}\n", 2,
                 39, "at_ms -1 is not a time", id="arrival-negative-time"),
    pytest.param("arrivals:\n  - {name: a.example, type: A, at_ms: .nan, negative: true}\n",
                 2, 39, "at_ms nan is not a time", id="arrival-nan"),
    pytest.param("arrivals:\n  - {name: 198.18.0.1, type: A, at_ms: 1}\n", 2, 12,
                 "name: '198.18.0.1' is an IP address", id="arrival-ip-name"),
    pytest.param("arrivals:\n  - {name: a.example, type: A, at_ms: 1}\n", 2, 5,
                 "a positive A answer for 'a.example', but dns holds no IPv4 address",
                 id="arrival-positive-without-address"),
    pytest.param('dns:\n  a.example: ["198.18.0.1"]\narrivals:\n'
                 "  - {name: a.example, type: A, at_ms: 1, negative: true}\n", 4, 52,
                 "a negative A answer for 'a.example', but dns holds an IPv4 address",
                 id="arrival-negative-with-address"),
    pytest.param('dns:\n  a.example: ["198.18.0.1"]\narrivals:\n'
                 "  - {name: a.example, type: A, at_ms: 1}\n"
                 "  - {name: A.example., type: A, at_ms: 2}\n", 5, 30,
                 "a second A answer for 'a.example' (the first is arrivals[0])",
                 id="arrival-twice"),
    pytest.param("arrivals:\n  - {name: a.example, type: HTTPS, at_ms: 1, negative: true}\n",
                 2, 56, "svcb has no entry for it (a negative answer is `a.example: []`)",
                 id="arrival-negative-https-needs-entry"),
    pytest.param("svcb:\n  a.example: []\narrivals:\n"
                 "  - {name: a.example, type: HTTPS, at_ms: 1}\n", 4, 5,
                 "a positive HTTPS answer for 'a.example', but svcb holds 0 record(s)",
                 id="arrival-positive-https-without-records"),
    pytest.param("tlsa:\n  _443._tcp.a.example: {records: []}\narrivals:\n"
                 "  - {name: _443._tcp.a.example, type: TLSA, at_ms: 1}\n", 4, 5,
                 "a positive TLSA answer", id="arrival-positive-tlsa-without-records"),
    pytest.param('dns:\n  a.example: ["198.18.0.1", "fd00::1"]\narrivals:\n'
                 "  - {name: a.example, type: A, at_ms: 1}\n", 2, 3,
                 "dns['a.example'] holds IPv6 addresses but arrivals has no AAAA answer",
                 id="answer-without-arrival"),
    pytest.param('dns:\n  a.example: ["198.18.0.1"]\nsvcb:\n  a.example: []\narrivals:\n'
                 "  - {name: a.example, type: A, at_ms: 1}\n", 4, 3,
                 "svcb['a.example'] has no HTTPS or SVCB arrival", id="svcb-without-arrival"),
    # cache ages
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, age_s: -5}\n', 2,
                 58, "age_s -5 is not an age", id="age-negative"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, age_s: 1.0e+300}\n',
                 2, 58, "age_s 1e+300 is not an age", id="age-huge"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, age_s: soon}\n',
                 2, 58, "age_s 'soon' is not a number of seconds", id="age-not-a-number"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, age_s: true}\n',
                 2, 58, "age_s True is not a number of seconds", id="age-bool"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, age_s: "5"}\n',
                 2, 58, "age_s '5' is not a number of seconds", id="age-string"),
    pytest.param('arrivals:\n  - {name: a.example, type: A, at_ms: "5", negative: true}\n',
                 2, 39, "at_ms '5' is not a number of milliseconds", id="arrival-at-string"),
    # R2-2: a cache entry's port
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, port: 65536}\n',
                 2, 57, "port 65536 is not a port from 0 to 65535", id="cache-port-over"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, port: -1}\n',
                 2, 57, "port -1 is not a port from 0 to 65535", id="cache-port-negative"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, port: "443"}\n',
                 2, 57, "port '443' is not a number", id="cache-port-string"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, port: true}\n',
                 2, 57, "port True is not a number", id="cache-port-bool"),
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: failure, port: 443.5}\n',
                 2, 57, "expected an integer, got 443.5", id="cache-port-fraction"),
    # one validator for every bounded number (R2 F12 D7): rtt_ms refuses YAML true as well
    pytest.param('cache:\n  - {remote: "x:1", stack: tcp, outcome: success, rtt_ms: true}\n',
                 2, 59, "rtt_ms True is not a number of milliseconds", id="cache-rtt-bool"),
    # R2 F4: an HTTPS/SVCB arrival has the type its query is asked with (Rule 7)
    pytest.param("svcb:\n  svc.example: []\narrivals:\n"
                 "  - {name: svc.example, type: SVCB, at_ms: 1, negative: true}\n", 4, 31,
                 "'svc.example' is asked as HTTPS, not SVCB", id="arrival-svcb-for-https-host"),
    pytest.param("svcb:\n  _8443._https.svc.example: []\narrivals:\n"
                 "  - {name: _8443._https.svc.example, type: SVCB, at_ms: 1, negative: true}\n",
                 4, 44, "'_8443._https.svc.example' is asked as HTTPS, not SVCB",
                 id="arrival-svcb-for-https-port-owner"),
    pytest.param("svcb:\n  _8080._foo.svc.example: []\narrivals:\n"
                 "  - {name: _8080._foo.svc.example, type: HTTPS, at_ms: 1, negative: true}\n",
                 4, 42, "'_8080._foo.svc.example' is asked as SVCB, not HTTPS",
                 id="arrival-https-for-svcb-owner"),
    pytest.param("arrivals:\n  - {name: svc.example, type: SVCB, at_ms: 1, negative: true}\n",
                 2, 31, "is asked as HTTPS, not SVCB", id="arrival-svcb-without-entry"),
    pytest.param('dns:\n  svc.example: ["198.18.0.10"]\nsvcb:\n  svc.example:\n'
                 "    - {priority: 1, target: ., alpn: [h2]}\narrivals:\n"
                 "  - {name: svc.example, type: A, at_ms: 1}\n"
                 "  - {name: svc.example, type: SVCB, at_ms: 10}\n", 8, 31,
                 "is asked as HTTPS, not SVCB", id="arrival-svcb-refused-once"),
    # dns names are unique after lowercasing too
    pytest.param('dns:\n  a.example: []\n  A.Example: []\n', 3, 3,
                 "duplicate dns name 'A.Example'", id="dns-duplicate-after-lowercasing"),
]


def _located(text: str, path: Path) -> tuple[int, int, str]:
    m = re.fullmatch(rf"{re.escape(str(path))}:(\d+):(\d+): (.+)", text)
    assert m, f"not a `file:line:col: message` line: {text!r}"
    return int(m[1]), int(m[2]), m[3]


@pytest.mark.parametrize(("text", "line", "col", "message"), CASES)
def test_a_bad_resolution_section_is_refused_where_it_is_wrong(
        tmp_path: Path, text: str, line: int, col: int, message: str) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(tp.InputError) as info:
        load_environment(path)
    [only] = [str(d) for d in info.value.diagnostics]
    got = _located(only, path)
    assert got[:2] == (line, col), only
    assert message in got[2], only
    assert len(only) < 400, only  # values are cut short


def test_a_good_yaml_snapshot_loads(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(GOOD_YAML, encoding="utf-8")
    env = load_environment(path)
    assert env.svcb["svc.example"][0].alpn == ("h3",)
    assert [a.rtype for a in env.arrivals] == ["A", "HTTPS"]


def test_an_alias_target_is_timed_with_the_type_of_its_chain() -> None:
    """Rule 7: the target of an SVCB chain's AliasMode is asked for SVCB (RFC 9460 section
    2.4.2), of an HTTPS chain for HTTPS; a name both chains reach may be timed as either."""
    def doc(chains: dict[str, str], arrival: str) -> dict[str, Any]:
        return {"svcb": {**{owner: [{"priority": 0, "target": "alias.example"}]
                            for owner in chains},
                         "alias.example": []},
                "arrivals": [*({"name": owner, "type": rtype, "at_ms": 1}
                               for owner, rtype in chains.items()),
                             {"name": "alias.example", "type": arrival, "at_ms": 2,
                              "negative": True}]}

    svcb_chain = {"_53._dns.svc.example": "SVCB"}
    https_chain = {"svc.example": "HTTPS"}
    assert load_environment(doc(svcb_chain, "SVCB")).arrivals[1].rtype == "SVCB"
    assert load_environment(doc(https_chain, "HTTPS")).arrivals[1].rtype == "HTTPS"
    both = {**svcb_chain, **https_chain}
    assert load_environment(doc(both, "SVCB")).arrivals[2].rtype == "SVCB"
    with pytest.raises(tp.InputError, match=r"'alias\.example' is asked as HTTPS, not SVCB"):
        load_environment(doc(https_chain, "SVCB"))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("svcb:\n  a.example:\n    - {priority: 1, target: ., ipv4hint: ['fd00::1'],"
                    " ipv6hint: [198.18.0.1]}\n"
                    "tlsa:\n  _1._tcp.a.example:\n    records:\n"
                    "      - {usage: 3, selector: 1, matching: 2, data: ab}\n",
                    encoding="utf-8")
    with pytest.raises(tp.InputError) as info:
        load_environment(path)
    lines = [_located(str(d), path) for d in info.value.diagnostics]
    assert [(line, col) for line, col, _ in lines] == [(3, 43), (3, 66), (7, 52)]


def test_the_cli_exits_2_on_a_bad_svcb_section(tmp_path: Path) -> None:
    env = tmp_path / "env.yaml"
    env.write_text(_svcb("{priority: 1, target: ., ipv4hint: ['fd00::1']}"), encoding="utf-8")
    r = subprocess.run([*PYTHON, "-m", "taps_post.cli", "policy", "explain",
                        "https://svc.example", "--no-system", "--env", str(env)],
                       capture_output=True, text=True, env=installed_env(), timeout=60,
                       check=False)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    [only] = r.stderr.splitlines()
    assert _located(only, env)[:2] == (3, 43)


# ---- round trip, generated --------------------------------------------------------------

NAMES = ("svc.example", "cdn.example", "_8443._https.svc.example")


@st.composite
def resolution_snapshots(draw: st.DrawFn) -> dict[str, Any]:
    """Consistent snapshots: records in range, and (when timed) an arrival for each answer."""
    dns: dict[str, list[str]] = {}
    for name in draw(st.lists(st.sampled_from(NAMES[:2]), unique=True)):
        dns[name] = draw(st.lists(st.sampled_from(("198.18.0.1", "198.18.0.2", "fd00::1")),
                                  unique=True))
    svcb: dict[str, list[dict[str, Any]]] = {}
    for owner in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        records: list[dict[str, Any]] = []
        if draw(st.booleans()):
            records.append({"priority": 0, "target": draw(st.sampled_from(("cdn.example",
                                                                             ".")))})
        for _ in range(draw(st.integers(0, 2))):
            record: dict[str, Any] = {"priority": draw(st.integers(1, 65535)),
                                      "target": draw(st.sampled_from((".", "cdn.example")))}
            if draw(st.booleans()):
                record["alpn"] = draw(st.lists(st.sampled_from(("h3", "h2", "http/1.1")),
                                               min_size=1, unique=True))
                record["no_default_alpn"] = draw(st.booleans())
            if draw(st.booleans()):
                record["port"] = draw(st.integers(0, 65535))
            record["ipv4hint"] = draw(st.lists(st.sampled_from(("198.18.0.3", "198.18.0.4")),
                                               unique=True))
            record["ipv6hint"] = draw(st.lists(st.sampled_from(("fd00::3",)), unique=True))
            record["ech"] = draw(st.booleans())
            record["ttl"] = draw(st.none() | st.integers(0, 2**31 - 1))
            records.append(record)
        svcb[owner] = records
    tlsa: dict[str, Any] = {}
    if draw(st.booleans()):
        tlsa["_443._tcp.svc.example"] = {
            "validated": draw(st.booleans()),
            "records": [{"usage": u, "selector": s, "matching": m,
                         "data": DIGEST if m == 1 else ("cd" * 64 if m == 2 else "3082")}
                        for u, s, m in draw(st.lists(st.tuples(st.integers(0, 3),
                                                               st.integers(0, 1),
                                                               st.integers(0, 2)),
                                                     max_size=2))]}
    cache: list[dict[str, Any]] = []
    if draw(st.booleans()):
        cache.append({"remote": "svc.example:443", "stack": "quic", "outcome": "failure",
                      "age_s": draw(st.floats(0, 1e6))})
        if (port := draw(st.none() | st.integers(0, 65535))) is not None:
            cache[0]["port"] = port
    doc: dict[str, Any] = {"dns": dns, "svcb": svcb, "tlsa": tlsa, "cache": cache}
    if draw(st.booleans()):
        times = st.floats(0, 5000, allow_nan=False)
        arrivals = []
        for name, addresses in dns.items():
            for rtype, family in (("A", "."), ("AAAA", ":")):
                has = any(family in a for a in addresses)
                if has or draw(st.booleans()):
                    arrivals.append({"name": name, "type": rtype, "at_ms": draw(times),
                                     "negative": not has})
        for owner, records in svcb.items():
            arrivals.append({"name": owner, "type": "HTTPS", "at_ms": draw(times),
                             "negative": not records})
        for name, entry in tlsa.items():
            arrivals.append({"name": name, "type": "TLSA", "at_ms": draw(times),
                             "negative": not entry["records"]})
        doc["arrivals"] = draw(st.permutations(arrivals))
    return doc


@settings(max_examples=150, deadline=None)
@given(resolution_snapshots())
def test_any_consistent_snapshot_loads_and_round_trips(doc: dict[str, Any]) -> None:
    env = load_environment(doc)
    assert load_environment(env.to_dict()) == env
