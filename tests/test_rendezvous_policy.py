"""Rendezvous policy and its explanation (docs/policy-language.md "Rendezvous", docs/explain.md
"Explaining a rendezvous"): the `rendezvous.*` keys and their checks, the TURN password kept
out of every output (policy/registry.py Rule 4), the dry run of a `rendezvous://` target
(decide Rule 13) and the rendering of what ICE did (render Rule 3).

The CLI runs in-process through `cli.main` (it reads this tree) and once as a subprocess
against the installed package, as an administrator runs it.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import taps_post as tp
from helpers import policy, run_cli
from taps_post import cli
from taps_post.decision.decision import IceCandidate, IcePair, RendezvousReport
from taps_post.decision.render import render_dot, render_properties, render_text
from taps_post.policy.registry import (
    REGISTRY,
    Secret,
    redact_turn_url,
    revealed,
    stun_server_problem,
    turn_url_problem,
)
from taps_post.schemas import schema

PASSWORD = "Tr0ub4dor-3"
TURN = f"turn:alice:{PASSWORD}@turn.example.net:3478?transport=udp"
SHOWN = "turn:alice:***@turn.example.net:3478?transport=udp"

ENV = {"interfaces": [
    {"name": "lo", "type": "loopback", "addresses": ["127.0.0.1", "::1"]},
    {"name": "eth0", "type": "ethernet", "addresses": ["198.18.0.2", "fd00::2"]},
    {"name": "wwan0", "type": "cellular", "addresses": ["198.18.9.2"]},
]}

APP_YAML = f"""\
version: 1
layer: app
name: chat
rules:
  - id: servers
    when: {{scheme: rendezvous}}
    set:
      rendezvous.stun: ["stun.example.net:3478"]
      rendezvous.turn: ["{TURN}"]
      rendezvous.relay: prohibit
  - id: no-modem
    set:
      interface.cellular: prohibit
"""

SYSTEM_YAML = f"""\
version: 1
layer: system
name: corp
rules:
  - id: corp-turn
    enforce: true
    set:
      rendezvous.turn: ["turn:corp:{PASSWORD}x@198.18.0.1:3478"]
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, text in (("app", APP_YAML), ("system", SYSTEM_YAML),
                       ("env", yaml.safe_dump(ENV))):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out[name] = str(path)
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def explain_args(files: dict[str, str], *extra: str) -> list[str]:
    return ["rendezvous://bob", "--system", files["system"], "--app", files["app"],
            "--env", files["env"], *extra]


# --- the keys ---------------------------------------------------------------------------------

def test_the_keys_and_their_defaults() -> None:
    d = tp.explain("rendezvous://bob", system=[], env=ENV)
    assert d.value("rendezvous.stun") is None and d.value("rendezvous.turn") is None
    assert d.value("rendezvous.relay") is tp.Pref.AVOID
    assert d.value("rendezvous.peerWait") == 30000
    assert REGISTRY["rendezvous.turn"].secret and not REGISTRY["rendezvous.stun"].secret
    for spec in (REGISTRY["rendezvous.stun"], REGISTRY["rendezvous.turn"]):
        assert spec.samples and all(spec.item_check(s) is None for s in spec.samples)


def test_the_runtime_gets_the_credential_back() -> None:
    d = tp.explain("rendezvous://bob", system=[], env=ENV, app=[policy("app", {
        "id": "t", "set": {"rendezvous.turn": TURN, "rendezvous.stun": "[fd00::1]:3478"}})])
    (url,) = d.value("rendezvous.turn")
    assert isinstance(url, Secret) and str(url) == SHOWN and revealed(url) == TURN
    assert d.value("rendezvous.stun") == ("[fd00::1]:3478",)
    assert revealed(d.value("rendezvous.stun")[0]) == "[fd00::1]:3478"


def test_a_secret_prints_redacted_and_keeps_its_value() -> None:
    s = Secret(redact_turn_url(TURN), TURN)
    assert str(s) == f"{s}" == SHOWN and repr(s) == repr(SHOWN)
    assert json.dumps([s]) == json.dumps([SHOWN]) and ",".join([s, s]) == f"{SHOWN},{SHOWN}"
    assert s == SHOWN and SHOWN in {s} and hash(s) == hash(SHOWN)
    for again in (copy.copy(s), copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert isinstance(again, Secret) and again.reveal() == TURN and again == s
    other = Secret(SHOWN, TURN.replace(PASSWORD, "another"))
    assert other != s and other not in {s}  # two passwords for one server are two values


@pytest.mark.parametrize(("url", "shown"), [
    ("turn:alice:pw@h.example:3478", "turn:alice:***@h.example:3478"),
    ("turn:alice:p:w@x@[fd00::1]:3478?transport=tcp", "turn:alice:***@[fd00::1]:3478"
                                                      "?transport=tcp"),
    ("turn:pw@h:1", "turn:***@h:1"),
    ("turn:alice:pw:h:1", "turn:***"),
    ("nonsense", "***"),
])
def test_redaction_hides_every_password_shape(url: str, shown: str) -> None:
    assert redact_turn_url(url) == shown


@pytest.mark.parametrize(("url", "why"), [
    (f"turn:alice:{PASSWORD}@turn.example.net", "no port"),
    (f"turn:alice:{PASSWORD}@turn.example.net:0", "not a number from 1 to 65535"),
    (f"turn:alice:{PASSWORD}@fd00::1:3478", "must be in brackets"),
    (f"turns:alice:{PASSWORD}@turn.example.net:5349", "turns:"),
    (f"alice:{PASSWORD}@turn.example.net:3478", "not a TURN URL"),
    (f"turn:alice:{PASSWORD}:turn.example.net:3478", "no USER:PASS@"),
    (f"turn:{PASSWORD}@turn.example.net:3478", "both non-empty"),
    (f"turn:alice:{PASSWORD}@turn.example.net:3478?transport=sctp", "transport=udp"),
    (f"turn:alice:{PASSWORD}@turn.example.net:3478 ", "whitespace"),
    (f"turn:alice:{PASSWORD}@" + "a" * 600 + ".example:1", "over 512"),
    (f"turn:alice:x@{PASSWORD}", "no port"),  # a password holding '@', no server at all
])
def test_a_malformed_turn_url_is_refused_without_its_password(url: str, why: str) -> None:
    problem = turn_url_problem(url)
    assert problem is not None and why in problem
    assert PASSWORD not in problem


@pytest.mark.parametrize(("entry", "why"), [
    ("stun.example.net", "no port"),
    ("stun:stun.example.net:3478", "without the stun: scheme"),
    ("user:pw@stun.example.net:3478", "takes no credentials"),
    ("256.256.256.256:3478", "neither an IP address nor a DNS name"),
    ("a..b:3478", "neither an IP address nor a DNS name"),
    ("[fd00::1:3478", "no closing"),
    ("[198.18.0.1]:3478", "not an IPv6 address"),
    ("stun.example.net:65536", "1 to 65535"),
])
def test_a_malformed_stun_entry_is_refused(entry: str, why: str) -> None:
    problem = stun_server_problem(entry)
    shown = "an entry with '@'" if "@" in entry else repr(entry)  # credentials never echoed
    assert problem is not None and why in problem and problem.startswith(shown)


@pytest.mark.parametrize("entry", ["stun.example.net:3478", "198.18.0.1:19302",
                                   "[fd00::1]:3478", "stun.example.net.:3478"])
def test_a_good_stun_entry_is_accepted(entry: str) -> None:
    assert stun_server_problem(entry) is None


def test_validation_errors_say_file_line_col_and_never_the_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"""\
version: 1
layer: app
rules:
  - id: servers
    set:
      rendezvous.stun: ["stun.example.net:3478", "stun.example.net"]
      rendezvous.turn:
        - turn:alice:{PASSWORD}@turn.example.net:3478
        - turn:bob:{PASSWORD}@turn.example.net
  - id: shapes
    set:
      rendezvous.turn: {{user: alice, password: {PASSWORD}}}
      rendezvous.relay: sometimes
      rendezvous.peerWait: 0
""")
    code, out, err = run(capsys, "policy", "validate", str(path))
    assert code == 2 and PASSWORD not in out + err
    lines = err.splitlines()
    assert len(lines) == 5, err
    at = {m.group(2): (int(m.group(1).split(":")[0]), m.group(3)) for m in (
        re.match(rf"^{re.escape(str(path))}:(\d+:\d+): ([\w.]+): (.*)$", line) for line in lines)
        if m}
    # Each error names the file, line and column (at the list, or at the item at fault).
    assert set(at) == {"rendezvous.stun", "rendezvous.turn", "rendezvous.relay",
                       "rendezvous.peerWait"}
    assert at["rendezvous.stun"][0] == 6 and "'stun.example.net': no port" in at[
        "rendezvous.stun"][1]
    turn_lines = [line for line in lines if ": rendezvous.turn: " in line]
    assert len(turn_lines) == 2
    assert any(re.search(r":(8|9):\d+: rendezvous.turn: entry 2: turn:bob:\*\*\*@", line)
               for line in turn_lines)
    assert any(":12:" in line and "not shown" in line for line in turn_lines)


def test_explain_refuses_a_bad_turn_url_without_the_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, env = tmp_path / "app.yaml", tmp_path / "env.yaml"
    path.write_text(APP_YAML.replace("3478?transport=udp", "3478?transport=quic"))
    env.write_text(yaml.safe_dump(ENV))
    code, out, err = run(capsys, "policy", "explain", "rendezvous://bob", "--no-system",
                         "--app", str(path), "--env", str(env))
    assert code == 2 and PASSWORD not in out + err
    assert re.search(rf"^{re.escape(str(path))}:9:\d+: rendezvous.turn: turn:alice:\*\*\*@",
                     err, re.M), err
    with pytest.raises(tp.InputError) as exc:
        tp.explain("rendezvous://bob", system=[], app=str(path), env=ENV)
    assert PASSWORD not in str(exc.value) + repr(exc.value)


# --- redaction everywhere ---------------------------------------------------------------------

def test_explain_text_json_dot_and_show_redact_the_password(
        files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    outputs = {}
    for fmt in ("text", "json", "dot"):
        code, out, err = run(capsys, "policy", "explain", *explain_args(files, "--format", fmt))
        assert code == 0, err
        outputs[fmt] = out + err
    for fmt in ("text", "json"):
        code, out, err = run(capsys, "policy", "show", *explain_args(files, "--format", fmt))
        assert code == 0, err
        outputs[f"show {fmt}"] = out + err
    for name, text in outputs.items():
        assert PASSWORD not in text, name
        assert "turn:corp:***@198.18.0.1:3478" in text, name
    # The app's URL is denied by the system's enforced one; it is listed, redacted.
    assert SHOWN in outputs["text"] and SHOWN in outputs["show text"]
    props = json.loads(outputs["show json"])
    turn = props["rendezvous.turn"]
    assert turn["value"] == ["turn:corp:***@198.18.0.1:3478"] and turn["enforced"]
    assert {"value": [SHOWN], "outcome": "denied"}.items() <= turn["others"][-1].items()


def test_show_as_a_subprocess_redacts_the_password(files: dict[str, str]) -> None:
    proc = run_cli("policy", "show", *explain_args(files))
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("rendezvous.turn"))
    assert "turn:corp:***@198.18.0.1:3478" in line and "[enforced]" in line


def test_repr_of_the_decision_and_its_policy_hold_no_password(files: dict[str, str]) -> None:
    d = tp.explain("rendezvous://bob", system=files["system"], app=files["app"],
                   env=files["env"])
    texts = [repr(d), str(d), repr(d.files), repr(d.properties), json.dumps(d.to_dict()),
             render_text(d), render_dot(d), "\n".join(render_properties(d, everything=True))]
    assert not any(PASSWORD in t for t in texts)


def test_lint_warnings_redact_the_password(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(SYSTEM_YAML)
    b.write_text(SYSTEM_YAML.replace("corp-turn", "other-turn").replace("name: corp",
                                                                         "name: other"))
    code, out, err = run(capsys, "policy", "validate", str(a), str(b))
    assert code == 0 and PASSWORD not in out + err


# --- the dry run ------------------------------------------------------------------------------

def test_dry_run_says_where_host_candidates_gather_and_who_set_the_servers(
        files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "explain", "rendezvous://bob", "--no-system",
                       "--app", files["app"], "--env", files["env"])
    assert code == 0
    lines = out.splitlines()
    block = lines[lines.index("rendezvous"):]
    text = "\n".join(block)
    assert "  peer          bob" in block
    hosts = block[block.index("  host candidates") + 1:]
    assert hosts[0].split() == ["eth0", "fd00::2,", "198.18.0.2"]
    assert hosts[1].split()[0] == "stun"  # lo: no rule asks for loopback (RFC 8445 5.1.1.1)
    assert "x lo (loopback)  unreachable; loopback addresses are no ICE host candidates" in out
    assert "wwan0" not in text  # prohibited: no candidate (the tree says why)
    assert re.search(r"x wwan0 \(cellular\)  prohibited by interface.cellular: app rule "
                     rf"no-modem \({re.escape(files['app'])}:13\)", out)
    assert re.search(rf"stun +stun.example.net:3478  app rule servers "
                     rf"\({re.escape(files['app'])}:8\)", text)
    assert re.search(rf"turn +{re.escape(SHOWN)}  app rule servers "
                     rf"\({re.escape(files['app'])}:9\)", text)
    assert re.search(rf"relay +prohibit +app rule servers \({re.escape(files['app'])}:10\): "
                     "no relayed candidate, ours or the peer's", text)
    assert "peer wait     30000 ms" in text
    assert lines[-1].startswith("outcome  ok: 2 host candidates on 1 interface")
    assert "did not resolve" not in out and "start" not in out and PASSWORD not in out


def test_dry_run_on_the_live_machine(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing is resolved for a peer's identity, so the live dry run needs no DNS."""
    code, out, err = run(capsys, "policy", "explain", "rendezvous://bob", "--no-system",
                         "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["request"]["scheme"] == "rendezvous" and d["request"]["port"] == 0
    assert {c["stack"] for c in d["candidates"]} <= {"quic-ice"}
    assert not any(c["interface"] == "lo" for c in d["candidates"])  # RFC 8445 5.1.1.1
    assert any(e["interface"] == "lo" and e["outcome"] == "unreachable"
               for e in d["excluded"])
    assert d["warnings"] == []


def test_family_exclusion_reads_as_the_family_in_the_tree() -> None:
    d = tp.explain("rendezvous://bob", system=[], env=ENV, app=[policy("app", {
        "id": "v4", "set": {"addressFamily.ipv6": "prohibit"}})])
    text = render_text(d)
    assert "  x ipv6 host candidates  prohibited by addressFamily.ipv6: app rule v4" in text
    assert all(c.family == "ipv4" for c in d.candidates)
    assert "x wwan0" not in text and "    x ipv6  unreachable; wwan0 has no ipv6 address" \
        not in text  # the family is gone everywhere: one exclusion, not one per interface
    dot = render_dot(d)
    assert '"x:0" [label="ipv6\\nprohibited addressFamily.ipv6"' in dot


# --- rendering what ICE did -------------------------------------------------------------------

HOST = IceCandidate("host", "198.18.0.2", 50000, 2130706431, "eth0")
SRFLX = IceCandidate("srflx", "203.0.113.5", 61000, 1694498815, None, "198.18.0.2:50000")
PEER_HOST = IceCandidate("host", "198.18.1.2", 40000, 2130706431)
PEER_SRFLX = IceCandidate("srflx", "203.0.113.9", 62000, 1694498815, None, "198.18.1.2")
REPORT = RendezvousReport(
    "bob", "controlling", (HOST, SRFLX), (PEER_HOST, PEER_SRFLX),
    (IcePair(SRFLX, PEER_SRFLX, "succeeded", True), IcePair(HOST, PEER_HOST, "failed"),
     IcePair(HOST, PEER_SRFLX, "in-progress")),
    ("the peer's relay 203.0.113.77:3478: rendezvous.relay prohibit",),
    ("stun.example.net:3478",), ("turn.example.net:3478",), "AB:CD:EF", 512.5)


def activated(files: dict[str, str]) -> tp.Decision:
    d = tp.explain("rendezvous://bob", system=files["system"], app=files["app"],
                   env=files["env"])
    return replace(d, rendezvous=REPORT)


def test_text_renders_the_ice_outcome(files: dict[str, str]) -> None:
    lines = render_text(activated(files)).splitlines()
    block = lines[lines.index("rendezvous"):]
    assert ("  role          controlling: this end nominates the pair and opens the QUIC "
            "connection") in block
    assert "  fingerprint   AB:CD:EF (the peer's certificate)" in block
    assert "  elapsed       512.5 ms to the nominated pair" in block
    assert "  servers used  stun.example.net:3478, turn.example.net:3478" in block
    ours = block.index("  ours")
    assert block[ours + 1].split() == ["host", "198.18.0.2:50000", "on", "eth0", "priority",
                                       "2130706431"]
    assert block[ours + 2].split() == ["srflx", "203.0.113.5:61000", "from",
                                       "198.18.0.2:50000", "priority", "1694498815"]
    peers = block.index("  the peer's")
    assert block[peers + 1].split()[:2] == ["host", "198.18.1.2:40000"]
    pairs = block[block.index("  pairs") + 1:block.index("  dropped")]
    assert pairs == [
        "    * 203.0.113.5:61000 (srflx) -> 203.0.113.9:62000 (srflx)  succeeded  nominated",
        "      198.18.0.2:50000 (host) -> 198.18.1.2:40000 (host)  failed",
        "      198.18.0.2:50000 (host) -> 203.0.113.9:62000 (srflx)  in-progress"]
    assert block[block.index("  dropped") + 1] == (
        "    - the peer's relay 203.0.113.77:3478: rendezvous.relay prohibit")
    assert lines[-1].endswith("; nominated 203.0.113.5:61000 (srflx) -> 203.0.113.9:62000 "
                              "(srflx)")


def test_text_without_a_nominated_pair_says_so(files: dict[str, str]) -> None:
    failed = replace(REPORT, role="controlled", pairs=(IcePair(HOST, PEER_HOST, "failed"),),
                     elapsed_ms=None, peer_fingerprint=None)
    text = render_text(replace(activated(files), rendezvous=failed))
    assert "  role          controlled: the peer nominates the pair" in text
    assert "    (no pair was nominated)" in text and "fingerprint" not in text
    assert "; nominated" not in text


def test_dot_carries_the_rendezvous_block(files: dict[str, str]) -> None:
    dot = render_dot(activated(files))
    note = next(line for line in dot.splitlines() if line.startswith('  "rendezvous"'))
    assert "shape=note" in note and "role          controlling" in note
    assert "* 203.0.113.5:61000 (srflx) -> 203.0.113.9:62000 (srflx)" in note
    assert PASSWORD not in dot


def test_json_carries_the_report_and_matches_the_schema(files: dict[str, str]) -> None:
    import jsonschema

    d = activated(files).to_dict()
    if "rendezvous" not in d:
        pytest.skip("Decision.to_dict() has no rendezvous key yet (decision.py, schemas.py: "
                    "the patch in /tmp/taps13/h4-unowned.patch)")
    assert d["rendezvous"] == json.loads(json.dumps(REPORT.to_dict()))
    assert d["rendezvous"]["selected"]["local"]["kind"] == "srflx"
    jsonschema.validate(json.loads(json.dumps(d)), schema("explain"))
    dry = tp.explain("rendezvous://bob", system=[], env=ENV).to_dict()
    assert dry["rendezvous"] is None
    jsonschema.validate(dry, schema("explain"))


def test_a_turn_url_in_the_stun_list_is_refused_without_its_password() -> None:
    """A TURN URL pasted under rendezvous.stun: refused, and the message never quotes it."""
    problem = stun_server_problem("turn:al:PWLEAK@198.18.0.1:3478")
    assert problem is not None and "PWLEAK" not in problem and "no credentials" in problem


def test_only_a_rule_naming_loopback_gathers_on_it() -> None:
    """`interface.*: prefer` is about every interface, not about meeting on loopback (RFC 8445
    section 5.1.1.1); `interface.lo: prefer` names it. IPv4 link-local never gathers."""
    env = {"interfaces": [
        {"name": "lo", "type": "loopback", "addresses": ["127.0.0.1"]},
        {"name": "eth0", "type": "ethernet", "addresses": ["198.18.0.2", "169.254.3.4"]}]}

    def hosts(rule: dict[str, object]) -> set[tuple[str, str]]:
        d = tp.explain("rendezvous://bob", system=[], env=env, app=[policy("app", rule)])
        return {(c.interface, c.local_address) for c in d.candidates}

    assert hosts({"id": "all", "set": {"interface.*": "prefer"}}) == {("eth0", "198.18.0.2")}
    assert hosts({"id": "lo", "set": {"interface.lo": "prefer"}}) == {
        ("lo", "127.0.0.1"), ("eth0", "198.18.0.2")}
