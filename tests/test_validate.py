"""`taps-post policy validate`: errors stop everything, warnings point at policy that will not
behave as its author meant (dead rules, contradicting enforced statements).

The lint is indexed so that big policies stay fast; its answer must stay the pairwise
definition's, which `taps_post.policy.validate.pairwise_lint` spells out the slow way,
rule against rule.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import policy, run_cli
from strategies import KEYS, values_for, whens
from taps_post.policy.load import load_layer
from taps_post.policy.validate import pairwise_lint, validate_paths


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


# --- the indexed lint against the pairwise definition (validate.pairwise_lint) -------------

def _validate_docs(docs: Sequence[tuple[str, dict[str, Any]]], *,
                   again: bool = False) -> tuple[list[str], list[str]]:
    """(validate's lint warnings, the oracle's) for documents written as files; `again`
    names the first file twice."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (layer, doc) in enumerate(docs):
            path = Path(tmp) / f"{i}-{layer}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            paths.append(str(path))
        report = validate_paths([*paths, *paths[:again]], load_snapshot=lambda _path: None)
    assert not report.errors, report.errors
    own = sum(len(f.warnings) for f in report.files)
    return report.warnings[own:], pairwise_lint(report.files)


# Values that cover one another in every way the index looks things up: globs found by a
# literal prefix (`mail*`, `api.*`), by a literal suffix (`*.example.com`, `[bm]ail`), by
# neither (`*a*`), "*", case folding of hosts, CIDRs, nested and equal port ranges.
_LINT_FIELDS: dict[str, tuple[Any, ...]] = {
    "app": ("mail", "mail*", "m*", "*", "[bm]ail", "backup", "ma?l", "*ail", "*a*", "Mail"),
    "host": ("api.example.com", "API.example.com", "*.example.com", "api.*", "*", "*.com",
             "198.18.1.5", "198.18.0.0/15", "198.18.*", "a?i.example.com", "*example*",
             "cdn.example.net"),
    "port": (443, 80, "400-500", "443-443", "0-1023", "440-450", "1-65535", 8443),
    "scheme": ("https", "tls", "hostport", "quic"),
    "kind": ("initiate", "listen", "sink"),
}


@st.composite
def _lint_whens(draw: st.DrawFn, only: str | None = None) -> dict[str, Any]:
    """A `when` from `_LINT_FIELDS`: each field with probability 1/3, or just field `only`."""
    when: dict[str, Any] = {}
    for name, pool in _LINT_FIELDS.items():
        if name == only or (only is None and draw(st.integers(0, 2)) == 0):
            items = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
            when[name] = items[0] if len(items) == 1 else items
    return when


@st.composite
def _lint_docs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Up to four documents whose rules share a small pool of keys and of `when`s, often
    enforced, so that rules cover, shadow, deny and contradict one another."""
    pool = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True))
    shared = draw(st.lists(_lint_whens(), min_size=1, max_size=4))
    docs: list[tuple[str, dict[str, Any]]] = []
    for d in range(draw(st.integers(1, 4))):
        layer = draw(st.sampled_from(("system", "app", "carrier")))
        rules: list[dict[str, Any]] = []
        for j in range(draw(st.integers(0, 6))):
            rule: dict[str, Any] = {"id": f"r{j}"}
            when = draw(st.one_of(st.sampled_from(shared), _lint_whens(), whens()))
            if when:
                rule["when"] = when
            flags = draw(st.integers(0, 31))
            if flags & 1:
                rule["enforce"] = True
            if flags & 2:
                rule["priority"] = draw(st.sampled_from((-1, 1, 5)))
            if flags & 28 == 28:
                rule["use"] = [draw(st.sampled_from(("reliable-inorder-stream",
                                                     "unreliable-datagram")))]
            keys = draw(st.lists(st.sampled_from(pool), max_size=len(pool), unique=True))
            rule["set"] = {k: draw(values_for(k)) for k in keys}
            rules.append(rule)
        docs.append((layer, policy(layer, *rules, name=f"doc{d}")))
    return docs


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_lint_docs(), st.booleans())
def test_lint_reports_exactly_what_the_pairwise_definition_does(
        docs: list[tuple[str, dict[str, Any]]], again: bool) -> None:
    got, expected = _validate_docs(docs, again=again)
    assert got == expected


@st.composite
def _cover_docs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """One document of broad-looking rules at priority 5 and narrow-looking ones at 0, all
    stating `secure`, in a random order: a narrow one is dead exactly where a broad one's
    `when` covers its own, so this exercises the cover relation more than anything else.
    Half the time every `when` has the same single field, so that nothing else decides."""
    only = draw(st.one_of(st.none(), st.sampled_from(sorted(_LINT_FIELDS))))
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, 8))
    rules = [{"id": f"broad{i}", "when": draw(_lint_whens(only)), "priority": 5,
              "set": {"secure": "prefer"}} for i in range(n)]
    rules += [{"id": f"narrow{i}", "when": draw(_lint_whens(only)), "set": {"secure": "avoid"}}
              for i in range(m)]
    order = draw(st.permutations(range(n + m)))
    return [("app", policy("app", *(rules[i] for i in order)))]


@st.composite
def _contradiction_docs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Two or three documents of enforced `secure: require` and `secure: prohibit` rules: two
    of them contradict exactly where their `when`s overlap."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for d in range(draw(st.integers(2, 3))):
        layer = draw(st.sampled_from(("system", "app")))
        rules = [{"id": f"r{i}", "when": draw(_lint_whens()), "enforce": True,
                  "set": {"secure": draw(st.sampled_from(("require", "prohibit")))}}
                 for i in range(draw(st.integers(1, 5)))]
        docs.append((layer, policy(layer, *rules, name=f"doc{d}")))
    return docs


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(_cover_docs(), _contradiction_docs()))
def test_lint_finds_every_kind_of_cover_and_overlap(
        docs: list[tuple[str, dict[str, Any]]]) -> None:
    got, expected = _validate_docs(docs)
    assert got == expected


@pytest.mark.parametrize("field", sorted(_LINT_FIELDS))
def test_lint_matches_the_definition_on_every_pair_of_field_values(field: str) -> None:
    # One key per (outer, inner) pair of values, so that each pair is judged on its own: the
    # narrow rule is dead exactly when the outer value covers the inner one, and the enforced
    # pair contradicts exactly when the two overlap.
    pool = list(_LINT_FIELDS[field])
    values: list[Any] = [*pool, *([a, b] for a, b in zip(pool, pool[2:], strict=False))]
    broad, narrow, require, prohibit = [], [], [], []
    for i, inner in enumerate(values):
        for j, outer in enumerate(values):
            key = f"interface.p{i}x{j}"
            broad.append({"id": f"broad-{i}-{j}", "when": {field: outer}, "priority": 5,
                          "set": {key: "prefer"}})
            narrow.append({"id": f"narrow-{i}-{j}", "when": {field: inner},
                           "set": {key: "avoid"}})
            require.append({"id": f"need-{i}-{j}", "when": {field: outer}, "enforce": True,
                            "set": {key: "require"}})
            prohibit.append({"id": f"deny-{i}-{j}", "when": {field: inner}, "enforce": True,
                             "set": {key: "prohibit"}})
    got, expected = _validate_docs([("app", policy("app", *broad, *narrow)),
                                    ("system", policy("system", *require, name="a")),
                                    ("system", policy("system", *prohibit, name="b"))])
    assert got == expected
    assert any("can never win" in w for w in got) and any("contradicts" in w for w in got)


def test_lint_cites_the_first_beater_in_file_order(tmp_path: Path) -> None:
    # Three rules beat 'narrow' (a broad higher-priority one, an enforced system one, and one
    # with the same `when` and a higher priority); the warning names the first in file order.
    sys_path = write(tmp_path, "sys.yaml", policy(
        "system", {"id": "sys-no-quic", "enforce": True, "set": {"stack.quic": "prohibit"}}))
    app_path = write(tmp_path, "app.yaml", policy(
        "app",
        {"id": "same-when", "when": {"host": "a.example", "port": 443}, "priority": 9,
         "set": {"stack.quic": "avoid"}},
        {"id": "narrow", "when": {"host": "A.EXAMPLE", "port": 443},
         "set": {"stack.quic": "prefer"}},
        {"id": "broad", "when": {"host": "*.example"}, "priority": 50,
         "set": {"stack.quic": "no_preference"}}))
    got, expected = _validate_docs([("system", yaml.safe_load(Path(sys_path).read_text())),
                                    ("app", yaml.safe_load(Path(app_path).read_text()))])
    assert got == expected
    narrow = [w for w in got if "'narrow'" in w.split("can never win")[0]]
    assert len(narrow) == 1 and "denied by enforced system rule 'sys-no-quic'" in narrow[0]


def _per_host_policy(n: int) -> dict[str, Any]:
    """A rule per host, as a per-site policy has, and one broad rule above them all: every
    tenth rule says only what the broad rule outranks, so it is dead."""
    rules: list[dict[str, Any]] = [{"id": "everyone", "priority": 10,
                                    "set": {"secure": "prefer"}}]
    for i in range(n):
        body: dict[str, Any] = {"secure": "avoid"}
        if i % 10:
            body["stack.quic"] = ("avoid", "prefer")[i % 2]
        rules.append({"id": f"site-{i}", "when": {"host": f"h{i}.example", "port": 443},
                      "set": body})
    return policy("app", *rules)


def test_lint_costs_about_what_loading_does_on_a_thousand_rules(tmp_path: Path) -> None:
    # The pairwise lint compared each rule with every other one: 1,000 per-host rules cost it
    # 20 times their loading time. Measured against loading in the same process, so a busy
    # machine slows both sides alike; the best of three attempts absorbs a stray pause.
    path = write(tmp_path, "app.yaml", _per_host_policy(1000))
    ratios = []
    for attempt in range(3):
        Path(path).write_text(Path(path).read_text() + f"# {attempt}\n")  # a cold load cache
        start = time.perf_counter()
        load_layer(path, "app")
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        report = validate_paths([path], load_snapshot=lambda _path: None)
        validated = time.perf_counter() - start
        dead = [w for w in report.warnings if "can never win" in w]
        assert len(dead) == 100
        assert dead[0].endswith("rule 'site-0' can never win: secure is always shadowed by "
                                f"rule 'everyone' ({path}:4)")
        ratios.append(validated / loaded)
        if ratios[-1] < 5:
            break
    assert min(ratios) < 5, ratios


# --------------------------------------------------------------------------- sorting files

def _layer_from_full_load(text: str) -> str:
    """How validate sorted files when it built every document twice: the answer the
    top-level read (yamlpos.top_level) must keep giving."""
    from taps_post.errors import InputError
    from taps_post.policy.yamlpos import load_yaml

    try:
        data, _ = load_yaml(text, "x.yaml")
    except InputError:
        return "app"
    if not isinstance(data, dict):
        return "app"
    if "version" not in data and "layer" not in data and (
            {"interfaces", "dns", "cache"} & set(data)):
        return "env"
    layer = data.get("layer")
    return layer if layer in ("system", "app", "carrier") else "app"


SORTING_EDGES = [
    "version: 1\nlayer: system\n", "version: 1\n'layer': carrier\n", "layer: !!str app\n",
    "layer: [system]\n", "layer: 7\n", "- layer: system\n", "just text\n", "", "{",
    "version: 1\nlayer: system\nlayer: app\n", "interfaces: []\n", "dns: {}\ncache: []\n",
    "interfaces: []\nlayer: system\n", "b: &b {layer: system}\n<<: *b\n",
    "<<: {interfaces: []}\n", "? [a, b]\n: 1\nlayer: carrier\n", "1: x\nlayer: system\n",
]
ROOT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text", [
    *SORTING_EDGES,
    *(p.read_text(encoding="utf-8") for p in sorted(ROOT_DIR.glob("policies/**/*.yaml"))),
    *(p.read_text(encoding="utf-8") for p in sorted(ROOT_DIR.glob("tests/tables/*.yaml"))[:40]),
])
def test_validate_sorts_a_file_as_the_full_load_would(text: str, tmp_path: Path) -> None:
    from taps_post.policy.validate import _declared_layer  # the function under test

    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    assert _declared_layer(str(path)) == _layer_from_full_load(text)
