"""`taps-post policy validate`: errors stop everything, warnings point at policy that will not
behave as its author meant (dead rules, contradicting enforced statements)."""

from __future__ import annotations

from pathlib import Path

import yaml

from helpers import policy, run_cli


def write(tmp_path: Path, name: str, doc: dict[str, object]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_clean_files_validate_ok(tmp_path: Path) -> None:
    a = write(tmp_path, "sys.yaml", policy("system", {"id": "r", "set": {"secure": "prefer"}}))
    b = write(tmp_path, "app.yaml", policy("app", {"id": "r", "set": {"secure": "require"}}))
    proc = run_cli("policy", "validate", a, b)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok: 2 file(s), 2 rule(s), 0 warning(s)"
    assert proc.stderr == ""


def test_rule_shadowed_by_broader_higher_priority_rule_can_never_win(tmp_path: Path) -> None:
    doc = policy("app",
                 {"id": "everyone", "priority": 5, "set": {"secure": "prefer"}},
                 {"id": "video-only", "when": {"app": "video"}, "set": {"secure": "avoid"}})
    path = write(tmp_path, "app.yaml", doc)
    proc = run_cli("policy", "validate", path)
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:8:3: warning: rule 'video-only' can never win")
    assert "'everyone'" in lines[0]
    assert run_cli("policy", "validate", "--strict", path).returncode == 1


def test_narrower_rule_is_not_dead(tmp_path: Path) -> None:
    # Equal priority: the more specific rule wins where it matches, so it is alive.
    doc = policy("app",
                 {"id": "everyone", "set": {"secure": "prefer"}},
                 {"id": "video-only", "when": {"app": "video"}, "set": {"secure": "avoid"}})
    proc = run_cli("policy", "validate", write(tmp_path, "app.yaml", doc))
    assert proc.returncode == 0 and "warning" not in proc.stderr


def test_statement_always_denied_by_enforced_system_rule_is_dead(tmp_path: Path) -> None:
    sys_path = write(tmp_path, "sys.yaml", policy(
        "system", {"id": "no-cell", "enforce": True, "set": {"interface.cellular": "prohibit"}}))
    app_path = write(tmp_path, "app.yaml", policy(
        "app", {"id": "cell", "when": {"app": "x"}, "set": {"interface.cellular": "prefer"}}))
    proc = run_cli("policy", "validate", sys_path, app_path)
    assert proc.returncode == 0
    assert "rule 'cell' can never win: interface.cellular: prefer is always denied by " \
           "enforced system rule 'no-cell'" in proc.stderr


def test_enforced_contradictions_across_files_with_overlapping_when(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", policy(
        "system", {"id": "need-tls", "when": {"port": "400-500"}, "enforce": True,
                   "set": {"secure": "require"}}))
    b = write(tmp_path, "b.yaml", policy(
        "system", {"id": "no-crypto", "when": {"port": 443}, "enforce": True,
                   "set": {"secure": "prohibit"}}))
    c = write(tmp_path, "c.yaml", policy(
        "system", {"id": "elsewhere", "when": {"port": 80}, "enforce": True,
                   "set": {"secure": "prohibit"}}))
    proc = run_cli("policy", "validate", a, b, c)
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if "contradicts" in line]
    assert len(warnings) == 1, proc.stderr
    assert "no-crypto" in warnings[0] and "need-tls" in warnings[0]


def test_interface_facts_outside_system_layer_warn(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", policy(
        "app", interfaces=[{"match": {"name": "wlan*"}, "metered": True}]))
    proc = run_cli("policy", "validate", path)
    assert proc.returncode == 0
    assert proc.stderr.startswith(f"{path}:5:3: warning: interface facts belong in the system")


def test_directory_is_validated_file_by_file(tmp_path: Path) -> None:
    write(tmp_path, "10-ok.yaml", policy("system", {"id": "r", "set": {"metered": "avoid"}}))
    (tmp_path / "20-bad.yaml").write_text("version: 1\nlayer: system\nrules:\n  - id: x\n"
                                          "    set: {meterd: avoid}\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    proc = run_cli("policy", "validate", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{tmp_path / '20-bad.yaml'}:5:11: unknown property 'meterd' (did you mean 'metered'?)"]
    assert proc.stdout.strip() == "1 error(s); nothing was applied"
