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

The runner (`taps_post.admin.scenario`, the code `taps-post policy test` runs) calls
`taps_post.explain(target, system=..., app=..., carrier=..., app_name=...,
kind=..., env=...)` with every layer given as a list (an absent layer is `[]`, never `None`,
which would load this machine's system policy) and `env` as a dict (never the live machine),
then checks `decision.to_dict()`, the JSON of docs/explain.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from taps_post.admin import scenario as sc

TABLES = Path(__file__).parent / "tables"
FILES = sorted(TABLES.glob("*.yaml"))


def load_scenario(path: Path) -> dict[str, Any]:
    """One table, checked for shape by the same code `taps-post policy test` uses."""
    data, positions = sc.load_scenario(path.read_text(encoding="utf-8"), str(path))
    problems = sc.shape_problems(data, positions, need_policies=False)
    assert not problems, "\n".join(str(p) for p in problems)
    assert isinstance(data, dict)
    return data


def _params() -> list[Any]:
    params = []
    for path in FILES:
        marks = []
        try:
            data, _ = sc.load_scenario(path.read_text(encoding="utf-8"), str(path))
            reason = data.get("xfail") if isinstance(data, dict) else None
        except Exception:  # the test itself reports the broken file
            reason = None
        if reason:
            marks.append(pytest.mark.xfail(reason=str(reason), strict=True))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", _params())
def test_scenario(path: Path) -> None:
    scenario = load_scenario(path)
    problems = sc.check(scenario, sc.run(scenario))
    assert not problems, f"{path.name}: {scenario['description']}\n" + "\n".join(problems)


def _reorderable() -> list[Any]:
    out = []
    for path in FILES:
        try:
            data, _ = sc.load_scenario(path.read_text(encoding="utf-8"), str(path))
        except Exception:
            continue
        if sc.reorderable(data):
            out.append(pytest.param(path, id=path.stem))
    return out


@pytest.mark.parametrize("path", _reorderable())
def test_scenario_independent_of_file_and_rule_order(path: Path) -> None:
    """docs/conflict-resolution.md: the result never depends on file order or rule order."""
    scenario = load_scenario(path)
    reordered = sc.reversed_policies(scenario.get("policies") or {})
    assert sc.essence(sc.run(scenario, reordered)) == sc.essence(sc.run(scenario))


def test_every_scenario_is_described() -> None:
    assert len(FILES) >= 40, f"only {len(FILES)} scenario files in {TABLES}"
    missing = []
    for path in FILES:
        data, _ = sc.load_scenario(path.read_text(encoding="utf-8"), str(path))
        description = data.get("description")
        outcome = (data.get("expect") or {}).get("outcome")
        if not (isinstance(description, str) and description.strip()) or \
                outcome not in sc.OUTCOMES:
            missing.append(path.name)
    assert not missing, f"scenarios without a description or expect.outcome: {missing}"


def test_a_broken_table_is_reported_with_its_position(tmp_path: Path) -> None:
    """The shape check points at the line and column, as `policy test` reports it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\nrequest: {target: https://a.example}\npolicies: {}\n"
                   "env: {}\nexpect:\n  outcome: maybe\n  colour: red\n", encoding="utf-8")
    data, positions = sc.load_scenario(bad.read_text(encoding="utf-8"), str(bad))
    text = [str(p) for p in sc.shape_problems(data, positions)]
    assert any(t.startswith(f"{bad}:7:3:") and "colour" in t for t in text), text
    assert any(t.startswith(f"{bad}:6:") and "outcome" in t for t in text), text
