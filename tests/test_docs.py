"""The documentation and the example policies cannot rot.

- Generated tables in docs/*.md match the registry and the conflict table they come from.
- Every ```console example in docs/*.md shows what its commands really print today.
- Every ```yaml block in docs/*.md that holds `version: 1` loads as a policy (blocks fenced as
  ```yaml invalid must fail to load: they illustrate errors).
- Every example policy validates, without warnings, through the real CLI, and the commands of
  `make demo` and policies/examples/README.md succeed.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from helpers import ROOT, run_cli
from taps_post import docgen
from taps_post.errors import InputError
from taps_post.policy.load import load_layer

DOCS = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = ROOT / "policies" / "examples"
ENV_FILES = sorted(EXAMPLES.glob("env-*.yaml"))
POLICY_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if p not in ENV_FILES)

DEMO_EXPLAIN = [
    "policy", "explain", "https://video.example",
    "--system", "policies/examples/system-corp-laptop.yaml",
    "--app", "policies/examples/app-video.yaml", "--app-name", "video-player",
    "--env", "policies/examples/env-laptop.yaml",
]

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _fences(path: Path) -> list[tuple[int, str, str]]:
    """(line, info string, body) of every fenced block."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
            for m in _FENCE.finditer(text)]


# --- generated blocks and console examples ---------------------------------------------------


def test_docs_exist_with_their_generated_blocks() -> None:
    names = {p.name: docgen.block_names(p.read_text(encoding="utf-8")) for p in DOCS}
    assert names.get("policy-language.md") == ["properties", "stacks"]
    assert names.get("conflict-resolution.md") == ["conflict-table"]
    assert "explain.md" in names


@pytest.mark.parametrize("doc", [p for p in DOCS
                                 if docgen.block_names(p.read_text(encoding="utf-8"))],
                         ids=lambda p: p.name)
def test_generated_blocks_are_fresh(doc: Path) -> None:
    assert docgen.main(["--check", str(doc)]) == 0, (
        f"{_rel(doc)} is stale: run `python -m taps_post.docgen {_rel(doc)}`")


def test_generated_tables_follow_the_code() -> None:
    from taps_post.policy import catalog
    from taps_post.policy.registry import REGISTRY
    from taps_post.policy.resolve import PREF_TABLE

    props = docgen.render_properties_table()
    for name in REGISTRY:
        assert f"`{name}" in props, name
    stacks = docgen.render_stack_table()
    assert all(f"| `{s}` |" in stacks for s in catalog.names())
    table = docgen.render_conflict_table()
    assert table.count("**conflict**") == sum(v == "conflict" for v in PREF_TABLE.values())
    # The generator is idempotent and leaves everything outside the markers alone.
    text = "intro\n<!-- BEGIN GENERATED: stacks -->\nold\n<!-- END GENERATED: stacks -->\nend\n"
    once = docgen.update_text(text)
    assert once.startswith("intro\n") and once.endswith("end\n") and "old" not in once
    assert docgen.update_text(once) == once


def test_generator_refuses_malformed_blocks() -> None:
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        docgen.update_text("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->\n")
    with pytest.raises(ValueError, match="no <!-- END GENERATED: stacks -->"):
        docgen.update_text("<!-- BEGIN GENERATED: stacks -->\n")


@pytest.mark.parametrize("doc", [p for p in DOCS if "```console" in p.read_text(encoding="utf-8")],
                         ids=lambda p: p.name)
def test_console_examples_show_real_output(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    if shutil.which("bash") is None:
        pytest.skip("the console examples run under bash, which is not installed")
    for tool in ("jq",):
        if f"| {tool} " in text and shutil.which(tool) is None:
            pytest.skip(f"{doc.name} pipes output through {tool}, which is not installed")
    fresh = docgen.run_examples(text, _rel(doc))
    if fresh != text:
        diff = "".join(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True),
                                            _rel(doc), "real output", n=1))
        pytest.fail(f"{_rel(doc)}: a console example no longer matches what the command "
                    f"prints; if the change is intended, run `python -m taps_post.docgen "
                    f"--run-examples {_rel(doc)}` and review the diff:\n{diff[:6000]}")


# --- yaml blocks in the docs -------------------------------------------------------------------


def _yaml_blocks() -> list[tuple[str, str, str]]:
    out = []
    for doc in DOCS:
        for line, info, body in _fences(doc):
            if info.split()[:1] == ["yaml"] and re.search(r"^version:\s*1\b", body, re.M):
                out.append((f"{doc.name}:{line}", info, body))
    return out


@pytest.mark.parametrize(("where", "info", "body"), _yaml_blocks(),
                         ids=[where for where, _info, _body in _yaml_blocks()])
def test_docs_yaml_policies_load(where: str, info: str, body: str, tmp_path: Path) -> None:
    match = re.search(r"^layer:\s*(\w+)", body, re.M)
    assert match, f"{where}: a policy example without a `layer:` line"
    path = tmp_path / "example.yaml"
    path.write_text(body, encoding="utf-8")
    if "invalid" in info.split():
        with pytest.raises(InputError):
            load_layer(str(path), match.group(1))
        return
    try:
        load_layer(str(path), match.group(1))
    except InputError as exc:
        pytest.fail(f"{where}: this policy example does not load:\n{exc}")


def test_docs_have_yaml_examples() -> None:
    found = {w.split(":")[0] for w, _i, _b in _yaml_blocks()}
    assert {"policy-language.md", "conflict-resolution.md", "explain.md"} <= found


# --- example policies and the demo -----------------------------------------------------------


def test_examples_are_there() -> None:
    names = {p.name for p in EXAMPLES.iterdir()}
    assert {"system-corp-laptop.yaml", "app-video.yaml", "app-backup.yaml",
            "carrier-bulk-upload.yaml", "app-telemetry.yaml", "env-laptop.yaml",
            "app-multipath.yaml", "env-two-paths.yaml", "README.md"} <= names


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_example_policy_validates(path: Path) -> None:
    result = run_cli("policy", "validate", _rel(path), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("ok: 1 file(s),") and "0 warning(s)" in result.stdout


def test_example_policies_validate_together() -> None:
    # Together, so the cross-file lint (dead rules, contradicting floors) sees them all.
    result = run_cli("policy", "validate", *map(_rel, POLICY_FILES), "--strict", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"ok: {len(POLICY_FILES)} file(s)" in result.stdout
    assert "0 warning(s)" in result.stdout


def test_examples_directory_validates_as_make_demo_does() -> None:
    result = run_cli("policy", "validate", "policies/examples", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {len(POLICY_FILES)} file(s)")
    assert f"{len(ENV_FILES)} environment snapshot(s)" in result.stdout
    assert "0 warning(s)" in result.stdout


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_example_snapshot_loads(path: Path) -> None:
    from taps_post import load_environment

    env = load_environment(path)
    assert env.interfaces and env.dns
    if path.name == "env-laptop.yaml":  # what the docs' laptop examples rely on
        assert {"lo", "wlan0", "wwan0", "wg0"} <= {i.name for i in env.interfaces}
        assert {"video.example", "backup.example", "telemetry.example"} <= set(env.dns)
    if path.name == "env-two-paths.yaml":  # docs/multipath.md's worked example
        assert {"eth0", "wlan0", "wwan0"} <= {i.name for i in env.interfaces}
        assert env.path_manager == "userspace" and "files.example" in env.dns


def test_demo_explain_marks_a_winner() -> None:
    result = run_cli(*DEMO_EXPLAIN, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    winners = [line for line in out.splitlines() if line.lstrip().startswith("* #1 ")]
    assert len(winners) == 1, out
    assert out.rstrip().splitlines()[-1].startswith("outcome  ok")
    # What the example is there to show: a denial, a shadowed rule, an enforced floor.
    assert re.search(r"^\s+denied\s+50\s+app rule streaming", out, re.M), out
    assert re.search(r"^\s+shadowed\s+300\s+app rule streaming", out, re.M), out
    assert re.search(r"^  maxCost\s+20\s+system rule cost-cap .*\[enforced\]$", out, re.M), out


def test_demo_explain_json_agrees() -> None:
    result = run_cli(*DEMO_EXPLAIN, "--format", "json", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == "ok"
    first = data["candidates"][0]
    assert (first["interface"], first["stack"]) == ("wlan0", "quic")
    assert [o["outcome"] for o in data["properties"]["maxCost"]["others"]] == [
        "overridden", "denied"]


def _readme_commands() -> list[list[str]]:
    commands = []
    for _line, info, body in _fences(EXAMPLES / "README.md"):
        if info != "sh":
            continue
        text = body.replace("\\\n", " ")
        commands.extend(shlex.split(line) for line in text.splitlines()
                        if line.startswith("taps-post policy explain "))
    return commands


def test_examples_readme_has_commands() -> None:
    assert len(_readme_commands()) >= 3


# (The README's `policy validate policies/examples` is the test above.)
@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda a: a[3])
def test_examples_readme_commands_succeed(argv: list[str]) -> None:
    result = run_cli(*argv[1:], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "* #1 " in result.stdout
