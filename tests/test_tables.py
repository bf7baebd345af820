"""Table-driven tests for the decision core (docs/policy-language.md,
docs/conflict-resolution.md, docs/explain.md).

Every file `tests/tables/*.yaml` is one scenario; the test id is the file's stem. A scenario
is written so that a network administrator can read it: what is asked, which policies are in
force, what the machine looks like, and what the engine must decide.

Scenario file format::

    description: One sentence an administrator understands.
    request: {target: "https://example.com", app: backup-nightly, kind: initiate}
                                         # app and kind are optional (kind defaults to initiate)
    policies:                            # optional; each layer is a list of inline policy
      system:                            # documents, in the format of a policy file
        - {version: 1, layer: system, name: corp, rules: [...]}
      app: [...]
      carrier: [...]
    env:                                 # an environment snapshot, inline
      interfaces: [...]                  # an address may be {address: "2001:db8::99",
      dns: {...}                         #                    temporary: true}
      cache: [...]
    expect:
      outcome: ok                        # ok | no_candidates | policy_prohibited
      properties:                        # optional; KEY: a bare value (the effective value)
        secure: require                  # or a mapping with any of value, layer, rule,
        interface.cellular:              # enforced, others
          {value: prohibit, layer: system, rule: no-cell,
           others: [{rule: app-cell, outcome: denied}]}
      candidates:                        # optional; the EXACT ordered list of candidates,
        - wlan0 quic 2001:db8::5         # each "interface stack remote_address", or a mapping
        - {interface: wlan0, stack: quic, remote_address: "2001:db8::5",
           local_address: "2001:db8:2::99", remote_port: 443}   # matched as a subset
      start_ms: [0, 250]                 # optional; exact start offsets, in candidate order
      excluded:                          # optional; each entry must match at least one
        - {interface: wwan0, outcome: prohibited, property: interface.cellular, rule: no-cell}
                                         # exclusion (a subset of its fields)
      conflicts: [secure]                # optional; the exact set of conflicting keys
      warnings_contain: ["did not resolve"]   # optional; each must occur in some warning
      multipath: {policy: handover, path_manager: userspace}
                                         # optional; matched as a subset of the explain
                                         # JSON's multipath object (mode, policy, path_manager)
      subflows:                          # optional; the EXACT ordered list of MPTCP subflow
        - eth0 primary                   # interfaces, each "interface role", or a mapping
        - {interface: wlan0, role: backup, rule: avoid-wifi, addresses: ["192.0.2.20"]}
                                         # matched as a subset (fields of the explain JSON:
                                         # interface, role, reason, addresses, property,
                                         # rule, source, layer); `reason_contains: TEXT`
                                         # checks a part of the reason
      passes:                            # optional; the EXACT ordered list of resolution
        - {number: 1, at_ms: 60, trigger_contains: resolutionDelay}   # passes, each matched
                                         # as a subset (number, at_ms, trigger, answers);
                                         # `trigger_contains: TEXT` checks part of the trigger
      services:                          # optional; the EXACT ordered list of SVCB/HTTPS
        - {priority: 1, port: 8443, stacks: [tls, quic]}              # service endpoints,
                                         # each a subset (name, priority, target, port, alpn,
                                         # stacks, ech, alias_chain, reason);
                                         # `reason_contains: TEXT` checks part of the reason
      attempt_delay: {ms: 100, source: history, reason_contains: "clamped"}
                                         # optional; a subset of the attempt delay object
      dane: {mode: require, validated: true, usable: 1}
                                         # optional; a subset of the DANE status object
                                         # (mode, name, records, validated, usable, reason),
                                         # or null when there must be none
    stacks:                              # optional: plug-in stacks registered for the
      - {like: tls, name: tls-ech, ech: true, order: 9}   # scenario: a built-in's facts
                                         # (`like`) with the fields given replaced
                                         # (name, ech, dane, order, alpn, schemes)
    xfail: "why"                         # optional: a known implementation bug (strict xfail,
                                         # so the scenario fails loudly once the bug is fixed)

Matching rules: "a subset of fields" means every field written must equal the output's field
and unwritten fields are ignored; a nested mapping (a candidate's `key: {cost: 1}`) is matched
the same way, a list must be equal. In `others`, each listed item must match some entry of the
key's `others` list in the explain output. A candidate written as a mapping is matched against
the candidate at that position (fields of the explain JSON: interface, local_address, stack,
remote_address, remote_port, family, start_ms, pass, key). Numbers written where the output holds
text (`security.minTlsVersion: 1.3`) compare as their text; true is never 1. Map keys
(`interface.*`, `pvd.*`, `stack.*`, `addressFamily.*`) appear in `properties` only when a
matching rule states them.

Every scenario with several documents in a layer, or several rules in a document, is also run
with each of those lists reversed: conflict resolution says the result never depends on file
order or rule order.

The runner calls `taps_post.explain(target, system=..., app=..., carrier=..., app_name=...,
kind=..., env=...)` with every layer given as a list (an absent layer is `[]`, never `None`,
which would load this machine's system policy) and `env` as a dict (never the live machine),
then checks `decision.to_dict()`, the JSON of docs/explain.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import taps_post
from taps_post.policy import catalog

TABLES = Path(__file__).parent / "tables"
FILES = sorted(TABLES.glob("*.yaml"))

TOP_KEYS = {"description", "request", "policies", "env", "expect", "xfail", "stacks"}
STACK_KEYS = {"like", "name", "ech", "dane", "order", "alpn", "schemes"}
REQUEST_KEYS = {"target", "app", "kind"}
LAYER_KEYS = {"system", "app", "carrier"}
EXPECT_KEYS = {"outcome", "properties", "candidates", "start_ms", "excluded", "conflicts",
               "warnings_contain", "multipath", "subflows", "passes", "services",
               "attempt_delay", "dane"}
PROPERTY_KEYS = {"value", "layer", "rule", "enforced", "others"}
OUTCOMES = {"ok", "no_candidates", "policy_prohibited"}


def load_scenario(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a scenario is a mapping, got {type(data).__name__}")
    return data


def _params() -> list[Any]:
    params = []
    for path in FILES:
        marks = []
        try:
            reason = load_scenario(path).get("xfail")
        except (OSError, ValueError, yaml.YAMLError):
            reason = None  # the test itself reports the broken file
        if reason:
            marks.append(pytest.mark.xfail(reason=str(reason), strict=True))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


# --- comparing expectations with the explain output ----------------------------------------

def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict) and isinstance(actual, dict):
        return _subset(expected, actual)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(_same, expected, actual))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual  # True is not 1
    if isinstance(actual, str) and isinstance(expected, int | float):
        return str(expected) == actual
    return bool(expected == actual)


def _subset(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    return all(k in actual and _same(v, actual[k]) for k, v in expected.items())


def _candidate_text(c: dict[str, Any]) -> str:
    return f"{c['interface']} {c['stack']} {c['remote_address']}"


def _check_properties(expected: dict[str, Any], props: dict[str, Any],
                      problems: list[str]) -> None:
    for key, want in expected.items():
        got = props.get(key)
        if got is None:
            problems.append(f"property {key}: not in the output (known: {sorted(props)})")
            continue
        if not isinstance(want, dict):
            want = {"value": want}
        unknown = set(want) - PROPERTY_KEYS
        if unknown:
            problems.append(f"property {key}: unknown expectation fields {sorted(unknown)}")
        for field in ("value", "layer", "rule", "enforced"):
            if field in want and not _same(want[field], got[field]):
                problems.append(f"property {key}: {field} is {got[field]!r}, "
                                f"expected {want[field]!r}")
        for item in want.get("others") or ():
            if not any(_subset(item, other) for other in got["others"]):
                problems.append(f"property {key}: no entry of others matches {item!r}; "
                                f"others are {json.dumps(got['others'])}")


def _check_candidates(expected: list[Any], candidates: list[dict[str, Any]],
                      problems: list[str]) -> None:
    actual_text = [_candidate_text(c) for c in candidates]
    ok = len(expected) == len(candidates)
    for want, got in zip(expected, candidates, strict=False):
        if isinstance(want, str):
            ok = ok and " ".join(want.split()) == _candidate_text(got)
        else:
            ok = ok and _subset(want, got)
    if not ok:
        detail = "\n    ".join(
            f"{_candidate_text(c)} (local {c['local_address']}, port {c['remote_port']})"
            for c in candidates) or "(none)"
        problems.append(f"candidates differ:\n  expected {json.dumps(expected)}\n"
                        f"  got {json.dumps(actual_text)}\n    {detail}")


def _subflow_matches(want: Any, got: dict[str, Any]) -> bool:
    if isinstance(want, str):
        return " ".join(want.split()) == f"{got['interface']} {got['role']}"
    want = dict(want)
    part = want.pop("reason_contains", None)
    return _subset(want, got) and (part is None or part in got["reason"])


def _check_subflows(expected: list[Any], subflows: list[dict[str, Any]],
                    problems: list[str]) -> None:
    if len(expected) != len(subflows) or not all(map(_subflow_matches, expected, subflows)):
        problems.append(f"subflows differ:\n  expected {json.dumps(expected)}\n  got\n    "
                        + "\n    ".join(json.dumps(f) for f in subflows))


def _matches_with_text(want: Any, got: dict[str, Any] | None, field: str) -> bool:
    """A subset match where `FIELD_contains: TEXT` checks a part of the text FIELD."""
    if got is None or not isinstance(want, dict):
        return want == got
    want = dict(want)
    part = want.pop(f"{field}_contains", None)
    return _subset(want, got) and (part is None or part in (got.get(field) or ""))


def _check_list(name: str, field: str, expected: list[Any], got: list[dict[str, Any]],
                problems: list[str]) -> None:
    if len(expected) != len(got) or not all(
            _matches_with_text(w, g, field) for w, g in zip(expected, got, strict=False)):
        problems.append(f"{name} differ:\n  expected {json.dumps(expected)}\n  got\n    "
                        + "\n    ".join(json.dumps(x) for x in got))


def _check_resolution(expect: dict[str, Any], resolution: dict[str, Any],
                      problems: list[str]) -> None:
    if "passes" in expect:
        _check_list("passes", "trigger", expect["passes"] or [], resolution["passes"], problems)
    if "services" in expect:
        _check_list("services", "reason", expect["services"] or [], resolution["services"],
                    problems)
    for key in ("attempt_delay", "dane"):
        if key in expect and not _matches_with_text(expect[key], resolution[key], "reason"):
            problems.append(f"{key} is {json.dumps(resolution[key])}, "
                            f"expected {json.dumps(expect[key])}")


def check(scenario: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Every way `result` (Decision.to_dict()) differs from the scenario's `expect`."""
    expect = scenario["expect"]
    problems: list[str] = []
    if result["outcome"] != expect["outcome"]:
        problems.append(f"outcome is {result['outcome']!r}, expected {expect['outcome']!r}")
    if "properties" in expect:
        _check_properties(expect["properties"], result["properties"], problems)
    if "candidates" in expect:
        _check_candidates(expect["candidates"] or [], result["candidates"], problems)
    if "start_ms" in expect:
        got = [c["start_ms"] for c in result["candidates"]]
        if got != expect["start_ms"]:
            problems.append(f"start_ms is {got}, expected {expect['start_ms']}")
    for item in expect.get("excluded") or ():
        if not any(_subset(item, e) for e in result["excluded"]):
            problems.append(f"no exclusion matches {item!r}")
    if "conflicts" in expect:
        got_keys = sorted(c["key"] for c in result["conflicts"])
        if got_keys != sorted(expect["conflicts"] or []):
            problems.append(f"conflicts are {got_keys}, expected {expect['conflicts']}")
    if "multipath" in expect and not _subset(expect["multipath"], result["multipath"]):
        problems.append(f"multipath is {json.dumps(result['multipath'])}, "
                        f"expected {json.dumps(expect['multipath'])}")
    if "subflows" in expect:
        _check_subflows(expect["subflows"] or [], result["multipath"]["subflows"], problems)
    _check_resolution(expect, result["resolution"], problems)
    for text in expect.get("warnings_contain") or ():
        if not any(text in w for w in result["warnings"]):
            problems.append(f"no warning contains {text!r}; warnings: {result['warnings']}")
    if problems and any("exclusion" in p for p in problems):
        problems.append("exclusions were:\n    " + "\n    ".join(
            json.dumps({k: v for k, v in e.items() if v is not None})
            for e in result["excluded"]))
    return problems


def _check_shape(scenario: dict[str, Any]) -> None:
    unknown = set(scenario) - TOP_KEYS
    assert not unknown, f"unknown top-level keys {sorted(unknown)}; expected {sorted(TOP_KEYS)}"
    assert isinstance(scenario.get("description"), str) and scenario["description"].strip()
    request = scenario.get("request")
    assert isinstance(request, dict) and "target" in request, "request needs a target"
    assert not set(request) - REQUEST_KEYS, f"unknown request keys {set(request) - REQUEST_KEYS}"
    policies = scenario.get("policies") or {}
    assert not set(policies) - LAYER_KEYS, f"unknown layers {set(policies) - LAYER_KEYS}"
    for layer, docs in policies.items():
        assert isinstance(docs, list), f"policies.{layer} must be a list of policy documents"
    for stack in scenario.get("stacks") or []:
        assert isinstance(stack, dict) and {"like", "name"} <= set(stack), \
            "each stacks item needs like and name"
        assert not set(stack) - STACK_KEYS, f"unknown stacks keys {set(stack) - STACK_KEYS}"
    expect = scenario.get("expect")
    assert isinstance(expect, dict), "expect is required"
    assert not set(expect) - EXPECT_KEYS, f"unknown expect keys {set(expect) - EXPECT_KEYS}"
    assert expect.get("outcome") in OUTCOMES, f"expect.outcome must be one of {OUTCOMES}"


# --- the tests ------------------------------------------------------------------------------

def run(scenario: dict[str, Any], policies: dict[str, Any] | None = None) -> dict[str, Any]:
    """explain() the scenario; every layer is a list, the environment is never the live one."""
    request = scenario["request"]
    if policies is None:
        policies = scenario.get("policies") or {}
    with contextlib.ExitStack() as plugged:
        for item in scenario.get("stacks") or []:
            fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in item.items() if k != "like"}
            plugged.enter_context(catalog.registered(
                dataclasses.replace(catalog.info(item["like"]), **fields)))
        decision = taps_post.explain(
            request["target"],
            system=policies.get("system") or [],
            app=policies.get("app") or [],
            carrier=policies.get("carrier") or [],
            app_name=request.get("app"),
            kind=request.get("kind") or "initiate",
            env=scenario.get("env") or {},
        )
        return decision.to_dict()


@pytest.mark.parametrize("path", _params())
def test_scenario(path: Path) -> None:
    scenario = load_scenario(path)
    _check_shape(scenario)
    problems = check(scenario, run(scenario))
    assert not problems, f"{path.name}: {scenario['description']}\n" + "\n".join(problems)


def _reversed_policies(policies: dict[str, Any]) -> dict[str, Any]:
    """The same documents and rules, each list in the opposite order."""
    out: dict[str, Any] = {}
    for layer, docs in policies.items():
        out[layer] = [
            {**doc, "rules": list(reversed(doc["rules"]))} if isinstance(doc.get("rules"), list)
            else doc
            for doc in reversed(docs or [])
        ]
    return out


def _essence(result: dict[str, Any]) -> dict[str, Any]:
    """What a decision says, without `source` (a rule's position in its document)."""
    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "source"}

    return {
        "outcome": result["outcome"],
        "properties": {
            k: (v["value"], v["layer"], v["rule"], v["enforced"],
                sorted(json.dumps(strip(o), sort_keys=True) for o in v["others"]))
            for k, v in result["properties"].items()
        },
        "conflicts": sorted(c["key"] for c in result["conflicts"]),
        "candidates": [strip(c) for c in result["candidates"]],
        "excluded": sorted(json.dumps(strip(e), sort_keys=True) for e in result["excluded"]),
        "subflows": [{k: v for k, v in strip(f).items() if k != "reason"}
                     for f in result["multipath"]["subflows"]],
    }


def _reorderable() -> list[Any]:
    """Scenarios with several documents in a layer or several rules in a document."""
    out = []
    for path in FILES:
        try:
            policies = load_scenario(path).get("policies") or {}
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if any(len(docs or []) > 1 or any(len(d.get("rules") or []) > 1 for d in docs or [])
               for docs in policies.values()):
            out.append(pytest.param(path, id=path.stem))
    return out


@pytest.mark.parametrize("path", _reorderable())
def test_scenario_independent_of_file_and_rule_order(path: Path) -> None:
    """docs/conflict-resolution.md: the result never depends on file order or rule order."""
    scenario = load_scenario(path)
    reordered = _reversed_policies(scenario.get("policies") or {})
    assert _essence(run(scenario, reordered)) == _essence(run(scenario))


def test_every_scenario_is_described() -> None:
    assert len(FILES) >= 40, f"only {len(FILES)} scenario files in {TABLES}"
    missing = []
    for path in FILES:
        scenario = load_scenario(path)
        description = scenario.get("description")
        outcome = (scenario.get("expect") or {}).get("outcome")
        if not (isinstance(description, str) and description.strip()) or outcome not in OUTCOMES:
            missing.append(path.name)
    assert not missing, f"scenarios without a description or expect.outcome: {missing}"
