"""`taps-post policy test`, run as a subprocess on real policy directories, as an
administrator's CI runs it (docs/admin.md)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from helpers import ENV, policy, run_cli

SYSTEM = policy("system",
                {"id": "no-cell-backup", "when": {"app": "backup*"}, "enforce": True,
                 "set": {"interface": {"cellular": "prohibit"}}}, name="corp")

# What the administrator expects of the policy: backups never leave over the modem.
BACKUP = {
    "description": "Backups never use the cellular modem.",
    "request": {"target": "https://example.com", "app": "backup-nightly"},
    "expect": {
        "outcome": "ok",
        "properties": {"interface.cellular": {"value": "prohibit", "rule": "no-cell-backup",
                                              "layer": "system"}},
        "excluded": [{"interface": "wwan0", "outcome": "prohibited",
                      "property": "interface.cellular"}],
    },
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """policy.d/ with the system policy, scenarios/ next to it, env.yaml beside them."""
    (tmp_path / "policy.d").mkdir()
    (tmp_path / "policy.d" / "10-corp.yaml").write_text(yaml.safe_dump(SYSTEM, sort_keys=False))
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "backup.yaml").write_text(yaml.safe_dump(BACKUP, sort_keys=False))
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(ENV, sort_keys=False))
    return tmp_path


def _test(site: Path, *extra: str) -> tuple[int, str, str]:
    proc = run_cli("policy", "test", str(site / "scenarios"), "--system",
                   str(site / "policy.d"), "--env", str(site / "env.yaml"), *extra)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_scenario_that_holds_passes(site: Path) -> None:
    rc, out, err = _test(site)
    assert rc == 0, out + err
    assert out.splitlines()[0].startswith("PASS")
    assert "1 scenario(s): 1 passed, 0 failed" in out


def test_a_policy_edit_that_breaks_the_scenario_fails_with_the_difference(site: Path) -> None:
    edited = policy("system", {"id": "no-cell-backup", "when": {"app": "backup*"},
                               "set": {"interface": {"cellular": "avoid"}}}, name="corp")
    (site / "policy.d" / "10-corp.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    rc, out, err = _test(site)
    assert rc == 1, out + err
    assert out.splitlines()[0].startswith("FAIL")
    assert "property interface.cellular: value is 'avoid', expected 'prohibit'" in out
    assert "no exclusion matches" in out
    assert "Traceback" not in out + err


def test_junit_for_ci_systems(site: Path) -> None:
    rc, out, _ = _test(site, "--format", "junit")
    suite = ET.fromstring(out)
    assert rc == 0 and suite.get("tests") == "1" and suite.get("failures") == "0"
    (site / "policy.d" / "10-corp.yaml").write_text(
        yaml.safe_dump(policy("system", name="corp"), sort_keys=False))
    rc, out, _ = _test(site, "--format", "junit")
    suite = ET.fromstring(out)
    assert rc == 1 and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "interface.cellular" in (failure.text or "")


def test_a_scenario_with_its_own_policies_ignores_the_disk(site: Path) -> None:
    """Like the project's tables: stated layers are the whole policy (Rule 1)."""
    own = {**BACKUP, "policies": {"system": []}}
    (site / "scenarios" / "backup.yaml").write_text(yaml.safe_dump(own, sort_keys=False))
    rc, out, _ = _test(site)
    assert rc == 1 and "FAIL" in out


def test_xfail_and_xpass(site: Path) -> None:
    marked = {**BACKUP, "xfail": "known: the modem rule is not written yet"}
    (site / "scenarios" / "backup.yaml").write_text(yaml.safe_dump(marked, sort_keys=False))
    rc, out, _ = _test(site)
    assert rc == 1 and out.startswith("XPASS"), out
    (site / "policy.d" / "10-corp.yaml").write_text(
        yaml.safe_dump(policy("system", name="corp"), sort_keys=False))
    rc, out, _ = _test(site)
    assert rc == 0 and out.startswith("XFAIL"), out


def test_a_malformed_scenario_is_an_input_error_with_its_position(site: Path) -> None:
    (site / "scenarios" / "zz-bad.yaml").write_text(
        "description: broken\nrequest: {target: https://example.com}\nexpect:\n"
        "  outcome: fine\n  winner: wlan0\n")
    rc, out, err = _test(site)
    assert rc == 2, out + err
    bad = site / "scenarios" / "zz-bad.yaml"
    assert f"{bad}:4:12: expect.outcome must be one of" in err
    assert f"{bad}:5:3: unknown expect key 'winner'" in err
    assert out == "" and "Traceback" not in err  # no verdicts: not half a report (Rule 3)


def test_a_scenario_without_env_needs_one(site: Path) -> None:
    proc = run_cli("policy", "test", str(site / "scenarios"), "--system", str(site / "policy.d"))
    assert proc.returncode == 2
    assert "env is required" in proc.stderr and "Traceback" not in proc.stderr


def test_the_projects_tables_pass_through_the_command() -> None:
    tables = Path(__file__).parent / "tables"
    proc = run_cli("policy", "test", str(tables), "--no-system")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    count = len(list(tables.glob("*.yaml")))
    assert f"{count} scenario(s): {count} passed, 0 failed" in proc.stdout


# --- policy diff ----------------------------------------------------------------------------

REQUESTS = [{"target": "https://example.com", "app": "backup-nightly"},
            {"target": "https://example.com", "app": "browser"}]


def _edit(site: Path) -> None:
    """The edit under review: the backup rule turns from prohibit to avoid."""
    edited = policy("system", {"id": "no-cell-backup", "when": {"app": "backup*"},
                               "set": {"interface": {"cellular": "avoid"}}}, name="corp")
    (site / "policy.d" / "10-corp.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))


def test_diff_of_two_directories_names_each_change(site: Path) -> None:
    import shutil

    shutil.copytree(site / "policy.d", site / "old.d")
    _edit(site)
    (site / "requests.yaml").write_text(yaml.safe_dump(REQUESTS))
    proc = run_cli("policy", "diff", "--old", str(site / "old.d"), "--new",
                   str(site / "policy.d"), "--requests", str(site / "requests.yaml"),
                   "--env", str(site / "env.yaml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "https://example.com app=backup-nightly: " in out
    assert "exclusion vanishes: wwan0 prohibited (property interface.cellular, rule " \
           "no-cell-backup, layer system)" in out
    assert 'property interface.cellular: "prohibit" (system rule no-cell-backup, ' in out
    assert '-> "avoid" (system rule no-cell-backup, ' in out and "10-corp.yaml" in out
    assert "order: [" in out
    assert "https://example.com app=browser: unchanged" in out
    assert out.rstrip().endswith("2 request(s), 1 changed")

    zero = run_cli("policy", "diff", "--old", str(site / "old.d"), "--new",
                   str(site / "policy.d"), "--requests", str(site / "requests.yaml"),
                   "--env", str(site / "env.yaml"), "--exit-zero", "--format", "json")
    assert zero.returncode == 0, zero.stderr
    data = json.loads(zero.stdout)
    assert data["changed"] == 1
    whats = {c["what"] for c in data["requests"][0]["changes"]}
    assert {"excluded", "property", "order"} <= whats
    assert data["requests"][1]["changes"] == []


def test_diff_against_a_git_revision(site: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(site), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=admin", "add", "policy.d")
    git("-c", "user.email=a@b", "-c", "user.name=admin", "commit", "-qm", "corp policy")
    _edit(site)
    proc = run_cli("policy", "diff", "--git", "HEAD", str(site / "policy.d"), "--scenarios",
                   str(site / "scenarios"), "--env", str(site / "env.yaml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "HEAD:policy.d/10-corp.yaml" in proc.stdout, proc.stdout
    assert "exclusion vanishes: wwan0 prohibited" in proc.stdout
    same = run_cli("policy", "diff", "--git", "HEAD", str(site / "scenarios"), "--scenarios",
                   str(site / "scenarios"), "--env", str(site / "env.yaml"))
    assert same.returncode == 2 and "not in git revision HEAD" in same.stderr  # not committed
    bad = run_cli("policy", "diff", "--git", "no-such-rev", str(site / "policy.d"),
                  "--scenarios", str(site / "scenarios"), "--env", str(site / "env.yaml"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def test_diff_with_nothing_changed_exits_zero(site: Path) -> None:
    proc = run_cli("policy", "diff", "--old", str(site / "policy.d"), "--new",
                   str(site / "policy.d"), "--scenarios", str(site / "scenarios"),
                   "--env", str(site / "env.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 request(s), 0 changed" in proc.stdout


def test_diff_input_errors(site: Path) -> None:
    (site / "requests.yaml").write_text("- {target: https://example.com}\n- {host: x}\n")
    proc = run_cli("policy", "diff", "--old", str(site / "policy.d"), "--new",
                   str(site / "policy.d"), "--requests", str(site / "requests.yaml"),
                   "--env", str(site / "env.yaml"))
    assert proc.returncode == 2 and f"{site / 'requests.yaml'}:2:3:" in proc.stderr, proc.stderr
    nothing = run_cli("policy", "diff", "--old", str(site / "policy.d"), "--new",
                      str(site / "policy.d"), "--env", str(site / "env.yaml"))
    assert nothing.returncode == 2 and "no requests" in nothing.stderr
    (site / "requests.yaml").write_text(yaml.safe_dump(REQUESTS))
    live = run_cli("policy", "diff", "--old", str(site / "policy.d"), "--new",
                   str(site / "policy.d"), "--requests", str(site / "requests.yaml"))
    assert live.returncode == 2 and "needs --env FILE" in live.stderr, live.stderr
