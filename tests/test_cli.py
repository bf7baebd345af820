"""The `taps-post` command line, run as a subprocess exactly as an administrator runs it."""

from __future__ import annotations

import contextlib
import enum
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import taps_post as tp
from helpers import ENV, ROOT, policy, run_cli
from taps_post import cli

SYSTEM = policy("system",
                {"id": "no-cell-backup", "when": {"app": "backup*"}, "enforce": True,
                 "set": {"interface": {"cellular": "prohibit"}}},
                {"id": "secure", "set": {"secure": "prefer"}}, name="corp")
APP = policy("app", {"id": "cell-please", "set": {"interface.cellular": "prefer"}})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, doc in (("system", SYSTEM), ("app", APP), ("env", ENV)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out[name] = str(path)
    return out


def test_json_output_equals_python_explain(files: dict[str, str]) -> None:
    proc = run_cli("policy", "explain", "https://example.com", "--system", files["system"],
                   "--app", files["app"], "--app-name", "backup-nightly", "--env", files["env"],
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    decision = tp.explain("https://example.com", system=files["system"], app=files["app"],
                          app_name="backup-nightly", env=files["env"])
    assert json.loads(proc.stdout) == decision.to_dict()
    out = json.loads(proc.stdout)
    assert out["properties"]["interface.cellular"]["value"] == "prohibit"
    denied = out["properties"]["interface.cellular"]["others"]
    assert {"rule": "cell-please", "outcome": "denied"}.items() <= denied[-1].items()
    assert all(c["interface"] == "wlan0" for c in out["candidates"])


def test_text_marks_winner_and_names_rule_with_line(files: dict[str, str]) -> None:
    proc = run_cli("policy", "explain", "https://example.com", "--system", files["system"],
                   "--app", files["app"], "--app-name", "backup-nightly", "--env", files["env"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    winner = [line for line in lines if line.lstrip().startswith("* #1")]
    assert len(winner) == 1 and "2001:db8::5" in winner[0]
    wwan = next(line for line in lines if "x wwan0" in line)
    # The exclusion names the property, the rule and file:line of the statement.
    assert "interface.cellular" in wwan and "no-cell-backup" in wwan
    assert f"{files['system']}:" in wwan


def test_exit_3_for_no_candidates_and_policy_prohibited(files: dict[str, str],
                                                       tmp_path: Path) -> None:
    carrier = tmp_path / "carrier.yaml"
    carrier.write_text(yaml.safe_dump(policy(
        "carrier", {"id": "only-cell", "set": {"interface": {"cellular": "require"}}})))
    proc = run_cli("policy", "explain", "https://example.com", "--system", files["system"],
                   "--carrier", str(carrier), "--app-name", "backup-x", "--env", files["env"],
                   "--format", "json")
    assert proc.returncode == 3
    out = json.loads(proc.stdout)
    assert out["outcome"] == "policy_prohibited"
    assert out["conflicts"][0]["key"] == "interface.cellular"

    proc = run_cli("policy", "explain", "https://nowhere.example", "--system", files["system"],
                   "--env", files["env"])
    assert proc.returncode == 3
    assert "no_candidates" in proc.stdout and "nowhere.example" in proc.stdout


def test_dot_output_renders_with_graphviz(files: dict[str, str]) -> None:
    proc = run_cli("policy", "explain", "https://example.com", "--system", files["system"],
                   "--env", files["env"], "--format", "dot")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digraph decision {")
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("graphviz `dot` is not installed (CI installs it)")
    svg = subprocess.run([dot, "-Tsvg"], input=proc.stdout, capture_output=True, text=True,
                         check=False)
    assert svg.returncode == 0, svg.stderr
    assert "<svg" in svg.stdout and "wlan0" in svg.stdout


def test_show_lists_every_key_with_provenance(files: dict[str, str]) -> None:
    proc = run_cli("policy", "show", "https://example.com", "--system", files["system"],
                   "--env", files["env"])
    assert proc.returncode == 0, proc.stderr
    keys = {line.split()[0] for line in proc.stdout.splitlines() if not line.startswith(" ")}
    for key in ("reliability", "multipath", "racing.attemptDelay", "security.verifyPeer",
                "secure", "maxCost"):
        assert key in keys
    secure = next(line for line in proc.stdout.splitlines() if line.startswith("secure "))
    assert "prefer" in secure and "rule secure" in secure


def test_schema_command_prints_checked_in_schemas() -> None:
    for name in ("policy", "env", "explain"):
        proc = run_cli("policy", "schema", name)
        assert proc.returncode == 0
        assert proc.stdout == (ROOT / "schemas" / f"{name}.schema.json").read_text(), (
            f"schemas/{name}.schema.json is stale: run `make schemas`")


def test_usage_errors_exit_2_without_traceback() -> None:
    for args in (["policy"], ["policy", "explain"], ["policy", "explain", "x:1", "--format", "xml"],
                 ["policy", "schema", "nope"], ["frobnicate"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr


def test_missing_policy_file_is_input_error(tmp_path: Path) -> None:
    proc = run_cli("policy", "explain", "tcp://127.0.0.1:80", "--system",
                   str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    missing = tmp_path / "nope.yaml"
    assert proc.stderr.strip() == f"{missing}: no such system policy file or directory"


def test_interfaces_lists_loopback() -> None:
    proc = run_cli("interfaces", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    found = {i["name"]: i for i in json.loads(proc.stdout)}
    assert found["lo"]["type"] == "loopback" and "127.0.0.1" in found["lo"]["addresses"]


def test_interfaces_says_which_mptcp_path_manager_runs() -> None:
    from taps_post.system.mptcp import path_manager

    proc = run_cli("interfaces")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].split() == ["(mptcp)", "path", "manager",
                                                    path_manager()]


def test_interface_facts_from_system_policy_apply(tmp_path: Path) -> None:
    system = tmp_path / "facts.yaml"
    system.write_text(yaml.safe_dump(policy(
        "system", interfaces=[{"match": {"name": "lo"}, "metered": True, "cost": 7}])))
    proc = run_cli("interfaces", "--system", str(system))
    assert proc.returncode == 0, proc.stderr
    lo = next(line for line in proc.stdout.splitlines() if line.startswith("lo "))
    assert "metered" in lo and "cost 7" in lo


def test_explain_live_machine_loopback() -> None:
    """Without --env the decision runs against this machine's real interfaces."""
    proc = run_cli("policy", "explain", "tcp://127.0.0.1:9", "--no-system", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["candidates"][0]["interface"] == "lo"
    assert out["candidates"][0]["local_address"] == "127.0.0.1"
    assert [c["stack"] for c in out["candidates"]] == ["tcp"]


# --- the Multipath block (docs/explain.md, "The Multipath block") ---------------------------

EXAMPLES = ROOT / "policies" / "examples"
MULTIPATH = ["--no-system", "--app-name", "file-sync",
             "--app", str(EXAMPLES / "app-multipath.yaml"),
             "--env", str(EXAMPLES / "env-two-paths.yaml")]


def _block(text: str) -> list[str]:
    """The lines of the Multipath block, from its heading to the outcome line."""
    lines = text.splitlines()
    start = lines.index("multipath")
    end = next(i for i, line in enumerate(lines) if line.startswith(("outcome", "warnings")))
    return lines[start:end]


def test_explain_multipath_block_gives_each_subflow_role_and_rule() -> None:
    proc = run_cli("policy", "explain", "tls://files.example:8443", *MULTIPATH)
    assert proc.returncode == 0, proc.stderr
    block = _block(proc.stdout)
    app = str(EXAMPLES / "app-multipath.yaml")
    assert block[1].split()[:2] == ["mode", "active"]
    assert block[2].split()[:2] == ["policy", "aggregate"] and f"{app}:17" in block[2]
    assert block[3].split()[:3] == ["path", "manager", "userspace"]
    assert "roles are enforced" in block[3]
    rows = {line.split()[0]: line for line in block if line.startswith("    ")}
    assert rows["eth0"].split()[1] == "primary"
    assert "multipathPolicy aggregate" in rows["eth0"]
    assert rows["wlan0"].split()[1] == "backup"
    # an avoided interface is a backup, and the line names the rule and its file:line
    assert f"avoided by interface.wifi: app rule wifi-standby ({app}:23)" in rows["wlan0"]
    # the prohibited modem carries no subflow: listed under "no subflow on" only
    assert block.index("  no subflow on") < block.index(rows["wwan0"])
    assert "prohibited by interface.cellular" in rows["wwan0"]


def test_explain_kernel_path_manager_says_roles_are_only_reported(tmp_path: Path) -> None:
    env = yaml.safe_load((EXAMPLES / "env-two-paths.yaml").read_text())
    env["mptcp"] = {"pathManager": "kernel"}
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(env))
    proc = run_cli("policy", "explain", "tls://files.example:8443", *MULTIPATH[:-1], str(path))
    assert proc.returncode == 0, proc.stderr
    manager = next(line for line in _block(proc.stdout) if "path manager" in line)
    assert "kernel" in manager and "roles are reported, not enforced" in manager
    assert "ip mptcp endpoint" in manager


def test_explain_multipath_block_for_a_listener() -> None:
    """Listen decisions get the same plan: multipath defaults to passive for them."""
    proc = run_cli("policy", "explain", "[::]:8443", "--kind", "listen", *MULTIPATH)
    assert proc.returncode == 0, proc.stderr
    block = _block(proc.stdout)
    rows = {line.split()[0]: line.split() for line in block if line.startswith("    ")}
    assert rows["eth0"][1] == "primary" and rows["wlan0"][1] == "backup"
    assert "2001:db8:1::10," in rows["eth0"] and "192.0.2.10" in rows["eth0"]


def test_explain_without_multipath_has_no_block(files: dict[str, str]) -> None:
    proc = run_cli("policy", "explain", "https://example.com", "--system", files["system"],
                   "--env", files["env"])
    assert proc.returncode == 0, proc.stderr
    assert "multipath" not in proc.stdout.splitlines()


def test_explain_multipath_json_and_dot() -> None:
    proc = run_cli("policy", "explain", "tls://files.example:8443", *MULTIPATH,
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    mp = json.loads(proc.stdout)["multipath"]
    assert {k: mp[k] for k in ("mode", "policy", "path_manager")} == {
        "mode": "active", "policy": "aggregate", "path_manager": "userspace"}
    assert [(s["interface"], s["role"], s["rule"]) for s in mp["subflows"]] == [
        ("eth0", "primary", "sync-over-mptcp"), ("wlan0", "backup", "wifi-standby")]
    assert mp["subflows"][1]["source"].endswith("app-multipath.yaml:23")
    assert mp["subflows"][0]["addresses"] == ["2001:db8:1::10", "192.0.2.10"]
    dot = run_cli("policy", "explain", "tls://files.example:8443", *MULTIPATH, "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert '"if:wlan0" [label="wlan0\\nwifi\\nsubflow backup"]' in dot.stdout


def test_explain_live_machine_reports_its_path_manager() -> None:
    """Without --env, the path manager is this network namespace's (net.mptcp sysctls)."""
    from taps_post.system.mptcp import path_manager

    proc = run_cli("policy", "explain", "tcp://127.0.0.1:9", "--no-system", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["multipath"]["path_manager"] == path_manager()


def test_explain_says_when_the_peer_fell_back_to_tcp(tmp_path: Path) -> None:
    env = yaml.safe_load((EXAMPLES / "env-two-paths.yaml").read_text())
    env["cache"] = [{"remote": "files.example:8443", "stack": "tls-mptcp",
                     "outcome": "fallback"}]
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(env))
    proc = run_cli("policy", "explain", "tls://files.example:8443", *MULTIPATH[:-1], str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    stacks = [line.strip() for line in lines if line.strip() in ("tls", "tls-mptcp")]
    assert stacks[:2] == ["tls", "tls-mptcp"], "the plain counterpart ranks first"
    noted = [line for line in lines if "history: peer fell back to TCP" in line]
    assert noted and all("from" in line for line in noted)
    assert proc.stdout.splitlines()[-1].split()[-2] == "tls"


# cli Rule 7 and Rule 8: what start-up speed changed must not change what a user sees.

def _help(argv: list[str], parser: Any) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command", [
    [], ["policy"], ["policy", "explain"], ["policy", "show"], ["policy", "validate"],
    ["policy", "test"], ["policy", "diff"], ["policy", "schema"], ["rendezvous"],
    ["rendezvous", "serve"], ["interfaces"]])
def test_a_parser_filled_for_one_command_helps_as_the_whole_one(command: list[str]) -> None:
    assert _help(command, cli.build_parser(command)) == _help(command, cli.build_parser())


def test_a_command_not_named_gets_no_options() -> None:
    parser = cli.build_parser(["policy", "validate"])
    args = parser.parse_args(["policy", "validate", "a.yaml"])
    assert args.paths == ["a.yaml"]
    # explain is listed but not filled: its options are unknown to this parser
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["policy", "explain", "x", "--env", "e.yaml"])


_json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text())
_json_keys = st.text() | st.integers(-10**6, 10**6) | st.booleans() | st.none() | st.floats()
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(_json_keys, inner, max_size=4)),
    max_leaves=30)


@settings(max_examples=300)
@given(_json_values)
def test_json_output_is_what_json_dumps_writes(value: Any) -> None:
    assert cli._json(value) == json.dumps(value, indent=2)


class _Level(enum.IntEnum):
    LOW = 1


class _Name(str):
    pass


def test_json_output_takes_what_json_takes_and_refuses_what_it_refuses() -> None:
    odd = {_Level.LOW: [_Level.LOW, _Name("é\n\x00"), 1e300 * 10, -(1e300 * 10), float("nan")],
           1.5: {}, "": [], False: ()}
    assert cli._json(odd) == json.dumps(odd, indent=2)
    for bad in ({"k": {1, 2}}, [object()], {(1, 2): "tuple key"}, b"bytes"):
        with pytest.raises(TypeError):
            json.dumps(bad, indent=2)
        with pytest.raises(TypeError):
            cli._json(bad)


def test_explain_json_is_what_json_dumps_writes(files: dict[str, str]) -> None:
    decision = tp.explain("https://example.com", system=files["system"], app=files["app"],
                          app_name="backup-nightly", env=files["env"])
    assert cli._json(decision.to_dict()) == json.dumps(decision.to_dict(), indent=2)


@pytest.mark.parametrize("columns", [None, "50", "200", "0", "-3", "wide"])
def test_help_is_as_wide_as_argparse_makes_it(columns: str | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """cli Rule 9: the width is shutil's, found without importing shutil."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    cli._help_width.cache_clear()
    try:
        assert cli._help_width() == shutil.get_terminal_size().columns - 2
    finally:
        cli._help_width.cache_clear()
