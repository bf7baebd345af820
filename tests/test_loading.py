"""Where policy comes from: discovery of the system layer, directories, dicts, the file cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import taps_post as tp
from helpers import ENV, policy
from taps_post.policy.load import bundled_path, discover_system_sources


def write(path: Path, doc: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_env_var_names_the_system_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "corp.yaml", policy("system", {"id": "r", "set": {"maxCost": 3}}))
    monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(f))
    ctx = tp.PolicyContext()
    assert [x.source for x in ctx.files] == [str(f)]
    assert tp.explain("tcp://127.0.0.1:1", env=ENV).value("maxCost") == 3


def test_bundled_default_when_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAPS_POST_SYSTEM_POLICY", raising=False)
    if Path("/etc/taps-post/policy.d").is_dir():
        pytest.skip("this machine has /etc/taps-post/policy.d")
    (source,) = discover_system_sources()
    assert Path(source) == Path(bundled_path("policies", "system", "default.yaml"))
    d = tp.explain("https://example.com", env=ENV)
    assert d.properties["metered"].statement.rule == "avoid-metered"


@pytest.mark.skipif(os.geteuid() != 0, reason="writing /etc/taps-post needs root")
def test_etc_policy_d_in_name_order(monkeypatch: pytest.MonkeyPatch) -> None:
    etc = Path("/etc/taps-post/policy.d")
    if etc.exists():
        pytest.skip("/etc/taps-post/policy.d already exists; not touching an admin's policy")
    monkeypatch.delenv("TAPS_POST_SYSTEM_POLICY", raising=False)
    etc.mkdir(parents=True)
    try:
        write(etc / "20-b.yaml", policy("system", {"id": "b", "set": {"secure": "avoid"}}))
        write(etc / "10-a.yaml", policy("system", {"id": "a", "set": {"secure": "prefer"}}))
        (etc / "README").write_text("ignored")
        ctx = tp.PolicyContext()
        assert [Path(f.source).name for f in ctx.files] == ["10-a.yaml", "20-b.yaml"]
    finally:
        for p in etc.iterdir():
            p.unlink()
        etc.rmdir()
        etc.parent.rmdir()


def test_layers_accept_files_dirs_dicts_and_lists(tmp_path: Path) -> None:
    d = tmp_path / "sys.d"
    d.mkdir()
    write(d / "b.yaml", policy("system", {"id": "b", "set": {"metered": "avoid"}}))
    write(d / "a.yml", policy("system", {"id": "a", "set": {"secure": "prefer"}}))
    single = write(tmp_path / "app.yaml",
                   policy("app", {"id": "x", "set": {"keepAlive": "prefer"}}))
    ctx = tp.PolicyContext(system=[str(d), policy("system", {"id": "inline"})],
                           app=single, carrier=policy("carrier"), app_name="me")
    assert [f.source for f in ctx.files] == [
        f"{d}/a.yml", f"{d}/b.yaml", "<system>", str(single), "<carrier>"]


def test_layer_mismatch_is_an_error_and_nothing_loads(tmp_path: Path) -> None:
    f = write(tmp_path / "app.yaml", policy("app"))
    with pytest.raises(tp.InputError) as info:
        tp.PolicyContext(system=str(f), app=policy("app", {"id": "ok"}))
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column) == (2, 8)
    assert "declares layer 'app' but was loaded as the system layer" in diag.message


def test_dict_errors_name_the_path() -> None:
    with pytest.raises(tp.InputError) as info:
        tp.PolicyContext(system=[], app=policy("app", {"id": "x", "set": {"secrue": "require"}}))
    assert str(info.value) == "<app>: rules[0].set.secrue: unknown property 'secrue' " \
                              "(did you mean 'secure'?)"


def test_edited_file_is_reloaded(tmp_path: Path) -> None:
    f = write(tmp_path / "sys.yaml", policy("system", {"id": "r", "set": {"maxCost": 1}}))
    assert tp.explain("tcp://127.0.0.1:1", system=str(f), env=ENV).value("maxCost") == 1
    before = os.stat(f)
    write(f, policy("system", {"id": "r", "set": {"maxCost": 22}}))
    # An editor's save lands on a later mtime; set one explicitly rather than sleep until the
    # file system's (coarse, often jiffy-grained) clock has moved on.
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert tp.explain("tcp://127.0.0.1:1", system=str(f), env=ENV).value("maxCost") == 22


def test_nested_and_dotted_keys_are_the_same_statement() -> None:
    nested = policy("app", {"id": "r", "set": {"racing": {"attemptDelay": 100},
                                                "interface": {"cellular": "avoid"}}})
    dotted = policy("app", {"id": "r", "set": {"racing.attemptDelay": 100,
                                                "interface.cellular": "avoid"}})
    a = tp.explain("https://example.com", system=[], app=nested, env=ENV).to_dict()
    b = tp.explain("https://example.com", system=[], app=dotted, env=ENV).to_dict()
    assert a["properties"] == b["properties"]
    both = policy("app", {"id": "r", "set": {"racing": {"attemptDelay": 100},
                                              "racing.attemptDelay": 200}})
    with pytest.raises(tp.InputError, match="set twice"):
        tp.PolicyContext(system=[], app=both)
