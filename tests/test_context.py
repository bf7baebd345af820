"""PolicyContext identity and cost: `fingerprint` names what a context was built from, and
building one again from unchanged files costs a few stats, never a parse, while a changed
file is always read again."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import taps_post as tp
from helpers import ENV, policy
from taps_post.policy import catalog
from taps_post.policy import load as load_module


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def app_doc(value: str = "prefer") -> dict[str, Any]:
    return policy("app", {"id": "r", "set": {"secure": value}})


def avoid_doc() -> dict[str, Any]:
    """As long as `app_doc()` in YAML (one letter more in the id, one less in the value)."""
    return policy("app", {"id": "rr", "set": {"secure": "avoid"}})


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source of every YAML text load.py parses from now on."""
    seen: list[str] = []
    real = load_module.load_yaml

    def counting(text: str, source: str) -> Any:
        seen.append(source)
        return real(text, source)

    monkeypatch.setattr(load_module, "load_yaml", counting)
    return seen


# --- fingerprint ------------------------------------------------------------------------------


def test_equal_inputs_equal_fingerprints(tmp_path: Path) -> None:
    f = write(tmp_path / "app.yaml", app_doc())
    a = tp.PolicyContext(system=[], app=str(f), app_name="x")
    b = tp.PolicyContext(system=[], app=f, app_name="x")  # a Path, not a str: same file
    assert a is not b
    assert a.fingerprint == b.fingerprint
    assert hash(a.fingerprint) == hash(b.fingerprint)
    assert len({a.fingerprint, b.fingerprint}) == 1


def test_equal_dicts_equal_fingerprints() -> None:
    doc = app_doc()
    reordered = {k: doc[k] for k in reversed(list(doc))}
    a = tp.PolicyContext(system=[], app=doc)
    b = tp.PolicyContext(system=[], app=reordered)
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize("other", [
    {"app_name": "y"},
    {"app": app_doc("avoid")},
    {"app": [app_doc(), app_doc("avoid") | {"name": "second"}]},
    {"app": None, "carrier": policy("carrier", {"id": "r", "set": {"secure": "prefer"}})},
    {"system": [policy("system", {"id": "r", "set": {"secure": "prefer"}})], "app": None},
    {"system": None},
])
def test_different_inputs_different_fingerprints(other: dict[str, Any]) -> None:
    base: dict[str, Any] = {"system": [], "app": app_doc(), "app_name": "x"}
    a = tp.PolicyContext(**base)
    b = tp.PolicyContext(**(base | other))
    assert a.fingerprint != b.fingerprint


def test_same_content_in_another_file_is_another_input(tmp_path: Path) -> None:
    # Explain output names the file and line of every statement: a copy is not the same input.
    a = write(tmp_path / "a.yaml", app_doc())
    b = write(tmp_path / "b.yaml", app_doc())
    assert (tp.PolicyContext(system=[], app=a).fingerprint
            != tp.PolicyContext(system=[], app=b).fingerprint)


def test_with_carrier_fingerprints_what_it_adds() -> None:
    base = tp.PolicyContext(system=[], app=app_doc())
    extra = policy("carrier", {"id": "c", "set": {"maxCost": 3}})
    one, two = base.with_carrier(extra), base.with_carrier(dict(extra))
    assert one.fingerprint == two.fingerprint != base.fingerprint
    assert one.fingerprint == tp.PolicyContext(system=[], app=app_doc(),
                                               carrier=extra).fingerprint


def test_a_changed_file_changes_the_fingerprint(tmp_path: Path) -> None:
    f = write(tmp_path / "app.yaml", app_doc("prefer"))
    before = tp.PolicyContext(system=[], app=f)
    write(f, app_doc("avoid"))
    after = tp.PolicyContext(system=[], app=f)
    assert before.fingerprint != after.fingerprint
    # Back to the first content: the first fingerprint again (it names content, not time).
    write(f, app_doc("prefer"))
    assert tp.PolicyContext(system=[], app=f).fingerprint == before.fingerprint


# --- the file cache -------------------------------------------------------------------------


def test_rebuilding_from_unchanged_files_does_not_parse(tmp_path: Path,
                                                         parses: list[str]) -> None:
    f = write(tmp_path / "app.yaml", app_doc())
    first = tp.PolicyContext(system=[], app=f, app_name="x")
    assert parses == [str(f)]
    again = [tp.PolicyContext(system=[], app=f, app_name="x") for _ in range(20)]
    assert parses == [str(f)]
    assert all(c.files[0] is first.files[0] for c in again)


def test_rebuilding_shares_the_resolution(tmp_path: Path) -> None:
    f = write(tmp_path / "app.yaml", app_doc())
    request = tp.parse_target("https://example.com")
    a = tp.PolicyContext(system=[], app=f, app_name="x")
    b = tp.PolicyContext(system=[], app=f, app_name="other")  # rules match on the request
    assert a.resolve_for(request) is b.resolve_for(request)
    da, db = (tp.explain("https://example.com", policy=c, env=ENV) for c in (a, b))
    assert da.properties is not db.properties
    assert da.to_dict()["properties"] == db.to_dict()["properties"]


def _stamp(path: Path) -> os.stat_result:
    return os.stat(path)


def test_a_rewrite_with_the_same_size_and_mtime_but_new_inode_is_read(
        tmp_path: Path, parses: list[str]) -> None:
    """The usual way tools replace a file: write a new one, rename it over the old."""
    f = write(tmp_path / "app.yaml", app_doc("prefer"))
    old = _stamp(f)
    assert tp.explain("https://example.com", system=[], app=f, env=ENV).value(
        "secure") is tp.Pref.PREFER
    new = write(tmp_path / "new.yaml", avoid_doc())
    assert new.stat().st_size == old.st_size
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, f)
    assert (_stamp(f).st_size, _stamp(f).st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    d = tp.explain("https://example.com", system=[], app=f, env=ENV)
    assert d.value("secure") is tp.Pref.AVOID
    assert parses == [str(f), str(f)]


def test_an_in_place_rewrite_is_read(tmp_path: Path, parses: list[str]) -> None:
    f = write(tmp_path / "app.yaml", app_doc("prefer"))
    tp.PolicyContext(system=[], app=f)
    st = _stamp(f)
    write(f, avoid_doc())  # same size, same inode
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a later mtime, however small
    assert _stamp(f).st_ino == st.st_ino and _stamp(f).st_size == st.st_size
    ctx = tp.PolicyContext(system=[], app=f)
    assert ctx.files[0].rules[0].statements[0].value is tp.Pref.AVOID
    assert parses == [str(f), str(f)]


def test_a_catalogue_change_reloads(tmp_path: Path) -> None:
    """Whether `stack.NAME` is valid depends on the catalogue: a file loaded while a stack was
    registered must not be served from the cache once it is gone."""
    f = write(tmp_path / "app.yaml", policy("app", {"id": "r", "set": {"stack.tcp-alt": "prefer"}}))
    info = dataclasses.replace(catalog.info("tcp"), name="tcp-alt", order=100)
    with catalog.registered(info):
        tp.PolicyContext(system=[], app=f)
        tp.PolicyContext(system=[], app=policy("app", {"id": "r",
                                                       "set": {"stack.tcp-alt": "prefer"}}))
    with pytest.raises(tp.InputError, match=r"unknown property 'stack\.tcp-alt'"):
        tp.PolicyContext(system=[], app=f)
    with pytest.raises(tp.InputError, match=r"unknown property 'stack\.tcp-alt'"):
        tp.PolicyContext(system=[], app=policy("app", {"id": "r",
                                                       "set": {"stack.tcp-alt": "prefer"}}))


def test_dict_documents_are_cached_by_content(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = load_module.load_document

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["source"])
        return real(*args, **kwargs)

    monkeypatch.setattr(load_module, "load_document", counting)
    doc = app_doc("require") | {"name": "cached-by-content"}
    first = tp.PolicyContext(system=[], app=doc)
    second = tp.PolicyContext(system=[], app=dict(doc))
    assert calls == ["<app>"] and second.files[0] is first.files[0]
    doc["rules"] = [{"id": "r", "set": {"secure": "avoid"}}]  # the caller changes its dict
    third = tp.PolicyContext(system=[], app=doc)
    assert calls == ["<app>", "<app>"]
    assert third.files[0].rules[0].statements[0].value is tp.Pref.AVOID
    assert first.files[0].rules[0].statements[0].value is tp.Pref.REQUIRE
