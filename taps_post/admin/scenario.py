"""Scenario files: what is asked, which policies, what the machine looks like, what must be
decided; loaded, checked and run by the project's tables and `taps-post policy test` alike.

Rule 1: the project's own tables (tests/tables/*.yaml) and an administrator's scenarios run
through this same code, so a scenario means the same thing in CI and in the test suite.
Rule 2: every function here is pure and returns a list of problems (strings, or Diagnostics
with file:line:col for a malformed file); nothing raises for a failed expectation.
Rule 3: a scenario never reads the live machine: its `env` (or the one given) is a snapshot,
and an absent layer is `[]`, never the system policy on disk, unless the caller passes one.
The format is documented in docs/admin.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

from ..diagnostics import Diagnostic
from ..policy.yamlpos import Positions, load_yaml

__all__ = ["check", "essence", "load_scenario", "reorderable", "reversed_policies", "run",
           "shape_problems"]

TOP_KEYS = {"description", "request", "policies", "env", "expect", "xfail", "stacks"}
STACK_KEYS = {"like", "name", "ech", "dane", "order", "alpn", "schemes"}
REQUEST_KEYS = {"target", "app", "kind"}
LAYER_KEYS = {"system", "app", "carrier"}
EXPECT_KEYS = {"outcome", "properties", "candidates", "start_ms", "excluded", "conflicts",
               "warnings_contain", "multipath", "subflows", "passes", "services",
               "attempt_delay", "dane"}
PROPERTY_KEYS = {"value", "layer", "rule", "enforced", "others"}
OUTCOMES = {"ok", "no_candidates", "policy_prohibited"}


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
        return bool(want == got)
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


def load_scenario(text: str, source: str) -> tuple[Any, Positions]:
    """Parse one scenario file (InputError with file:line:col when it is not YAML)."""
    return load_yaml(text, source)


def shape_problems(scenario: Any, positions: Positions, *, need_policies: bool = True,
                   need_env: bool = True) -> list[Diagnostic]:
    """Every way `scenario` is not a scenario, located in its file (Rule 2)."""
    src = positions.source
    out: list[Diagnostic] = []

    def bad(path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        line, col = positions.locate(path, key=key)
        out.append(Diagnostic(src, message, line, col))

    if not isinstance(scenario, dict):
        bad((), f"a scenario is a mapping, got {type(scenario).__name__}")
        return out
    for k in sorted(set(scenario) - TOP_KEYS, key=str):
        bad((k,), f"unknown top-level key {k!r}; expected one of {sorted(TOP_KEYS)}", key=True)
    if not (isinstance(scenario.get("description"), str) and scenario["description"].strip()):
        bad(("description",), "description: one sentence is required")
    request = scenario.get("request")
    if not (isinstance(request, dict) and isinstance(request.get("target"), str)):
        bad(("request",), "request needs a target")
    else:
        for k in sorted(set(request) - REQUEST_KEYS, key=str):
            bad(("request", k), f"unknown request key {k!r}", key=True)
    policies = scenario.get("policies")
    if policies is None and need_policies:
        bad((), "policies is required")
    elif policies is not None and not isinstance(policies, dict):
        bad(("policies",), "policies is a mapping of layer to a list of documents")
    else:
        for layer, docs in (policies or {}).items():
            if layer not in LAYER_KEYS:
                bad(("policies", layer), f"unknown layer {layer!r}", key=True)
            elif not isinstance(docs, list | None):
                bad(("policies", layer), f"policies.{layer} must be a list of policy documents")
    if scenario.get("env") is None and need_env:
        bad((), "env is required (an environment snapshot, or give --env FILE)")
    elif scenario.get("env") is not None and not isinstance(scenario["env"], dict):
        bad(("env",), "env is a mapping (an environment snapshot)")
    for i, stack in enumerate(scenario.get("stacks") or []):
        if not (isinstance(stack, dict) and {"like", "name"} <= set(stack)):
            bad(("stacks", i), "each stacks item needs like and name")
        elif set(stack) - STACK_KEYS:
            bad(("stacks", i), f"unknown stacks keys {sorted(set(stack) - STACK_KEYS)}")
    expect = scenario.get("expect")
    if not isinstance(expect, dict):
        bad(("expect",), "expect is required")
        return out
    for k in sorted(set(expect) - EXPECT_KEYS, key=str):
        bad(("expect", k), f"unknown expect key {k!r}", key=True)
    if expect.get("outcome") not in OUTCOMES:
        bad(("expect", "outcome"), f"expect.outcome must be one of {sorted(OUTCOMES)}")
    return out


def run(scenario: dict[str, Any], policies: dict[str, Any] | None = None,
        env: Any = None) -> dict[str, Any]:
    """explain() the scenario (Rule 3); `policies` replaces the scenario's, `env` its env.

    A caller's `policies` is passed as given: `{"system": None}` is the system layer this
    machine discovers, which is what `policy test` uses when it is not told `--system`."""
    import taps_post

    from ..policy import catalog

    request = scenario["request"]
    if policies is None:  # the scenario's own layers: an absent one is [] (Rule 3)
        own = scenario.get("policies") or {}
        policies = {layer: own.get(layer) or [] for layer in LAYER_KEYS}
    if env is None:
        env = scenario.get("env") or {}
    with contextlib.ExitStack() as plugged:
        for item in scenario.get("stacks") or []:
            fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in item.items() if k != "like"}
            plugged.enter_context(catalog.registered(
                dataclasses.replace(catalog.info(item["like"]), **fields)))
        decision = taps_post.explain(
            request["target"],
            system=policies.get("system", []),  # the caller's None: the discovered layer
            app=policies.get("app") or [],
            carrier=policies.get("carrier") or [],
            app_name=request.get("app"),
            kind=request.get("kind") or "initiate",
            env=env,
        )
        return decision.to_dict()


def reversed_policies(policies: dict[str, Any]) -> dict[str, Any]:
    """The same documents and rules, each list in the opposite order: conflict resolution
    says the result never depends on file order or rule order."""
    out: dict[str, Any] = {}
    for layer, docs in policies.items():
        out[layer] = [
            {**doc, "rules": list(reversed(doc["rules"]))} if isinstance(doc.get("rules"), list)
            else doc
            for doc in reversed(docs or [])
        ]
    return out


def reorderable(scenario: Any) -> bool:
    """Whether a scenario has several documents in a layer or several rules in a document."""
    policies = (scenario.get("policies") if isinstance(scenario, dict) else None) or {}
    return any(len(docs or []) > 1 or any(len(d.get("rules") or []) > 1 for d in docs or [])
               for docs in policies.values())


def essence(result: dict[str, Any]) -> dict[str, Any]:
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
