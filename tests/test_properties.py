"""Hypothesis properties of the decision core (docs/policy-language.md,
docs/conflict-resolution.md and docs/explain.md).

Every property drives the public `taps_post.explain()` with inline dict documents and a dict
environment (never the machine: `system=` is always a list). The oracles below are written
from the documentation, not from the engine: defaults, strictness order, the conflict table,
profiles, stack features and `when` matching are restated here, so a change to the engine's
tables that contradicts the contract shows up as a failing property.
"""

from __future__ import annotations

import copy
import fnmatch
import ipaddress
import json
import re
from collections import Counter
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import taps_post
from strategies import PREFS, environments, flatten_set, scenarios, values_for
from taps_post.schemas import schema

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LAYERS = ("system", "app", "carrier")


# --- the oracle: the policy language and conflict resolution docs, restated ----------------

DEFAULTS: dict[str, Any] = {
    "reliability": "require", "preserveOrder": "require", "congestionControl": "require",
    "fullChecksumSend": "require", "fullChecksumRecv": "require",
    "preserveMsgBoundaries": "no_preference", "perMsgReliability": "no_preference",
    "zeroRttMsg": "no_preference", "keepAlive": "no_preference",
    "softErrorNotify": "no_preference", "activeReadBeforeSend": "no_preference",
    "multistreaming": "prefer", "secure": "no_preference", "metered": "no_preference",
    "useTemporaryLocalAddress": "prefer", "maxCost": None, "multipath": "disabled",
    "multipathPolicy": "handover",
    "racing.attemptDelay": 250, "racing.resolutionDelay": 50, "connTimeout": 30000,
    "racing.minAttemptDelay": 100, "racing.maxAttemptDelay": 2000,
    "racing.failureMemory": 600000, "dns.svcbSchemes": ["https", "quic"],
    "security.ech": "prefer", "security.dane": "opportunistic",
    "message.maxSize": 16 * 1024 * 1024, "security.minTlsVersion": "1.2",
    "security.verifyPeer": True, "security.sessionCache": True, "security.alpn": None,
    "security.clientAuth": "none", "carrier.reactivate": True, "carrier.maxHandlers": 16,
    "carrier.forkParallel": False, "message.dscp": None,
    "carrier.recvBudget": 4 * 1024 * 1024, "carrier.sendBudget": 1024 * 1024,
    "carrier.idleTimeout": 0, "carrier.linger": 5000, "listener.handshakeTimeout": 10000,
    "listener.maxHandshakes": 512, "listener.backlog": 0, "listener.retry": "auto",
    "rendezvous.stun": None, "rendezvous.turn": None, "rendezvous.relay": "avoid",
    "rendezvous.peerWait": 30000,
}
LISTEN_DEFAULTS = {"useTemporaryLocalAddress": "avoid", "multipath": "passive",
                   "carrier.idleTimeout": 30000}
MAP_PREFIXES = ("stack.", "interface.", "pvd.", "addressFamily.")
NON_PREFERENCE = {"maxCost", "multipath", "multipathPolicy", "racing.attemptDelay",
                  "racing.resolutionDelay", "racing.minAttemptDelay", "racing.maxAttemptDelay",
                  "racing.failureMemory", "dns.svcbSchemes", "security.ech", "security.dane",
                  "connTimeout", "message.maxSize", "security.minTlsVersion",
                  "security.verifyPeer", "security.sessionCache", "security.alpn",
                  "security.clientAuth", "carrier.reactivate", "carrier.maxHandlers",
                  "carrier.forkParallel", "message.dscp", "carrier.recvBudget",
                  "carrier.sendBudget", "carrier.idleTimeout", "carrier.linger",
                  "listener.handshakeTimeout", "listener.maxHandshakes", "listener.backlog",
                  "listener.retry", "rendezvous.stun", "rendezvous.turn",
                  "rendezvous.peerWait"}
# "smaller is stricter", "higher is stricter", "true is stricter", "false is stricter";
# every other non-preference key has no order (only an equal value passes a floor).
DIRECTION = {"maxCost": "smaller", "message.maxSize": "smaller",
             "security.minTlsVersion": "larger", "security.verifyPeer": "true",
             "security.sessionCache": "false", "security.clientAuth": "larger",
             "carrier.reactivate": "false", "carrier.maxHandlers": "smaller",
             "carrier.forkParallel": "false", "carrier.recvBudget": "smaller",
             "carrier.sendBudget": "smaller", "listener.maxHandshakes": "smaller",
             "listener.retry": "larger", "security.ech": "larger", "security.dane": "larger"}
PREF_STRENGTH = {"prohibit": 4, "require": 3, "avoid": 2, "prefer": 1, "no_preference": 0}
HARD, SOFT = {"require", "prohibit"}, {"prefer", "avoid"}
PROFILES = {
    "reliable-inorder-stream": {"reliability": "require", "preserveOrder": "require",
                                "congestionControl": "require"},
    "reliable-message": {"reliability": "require", "preserveOrder": "require",
                         "congestionControl": "require", "preserveMsgBoundaries": "require"},
    "unreliable-datagram": {"reliability": "avoid", "preserveOrder": "avoid",
                            "congestionControl": "no_preference",
                            "preserveMsgBoundaries": "require"},
}
_RELIABLE = {"reliability", "preserveOrder", "congestionControl", "keepAlive"}
_ALWAYS = {"fullChecksumSend", "fullChecksumRecv", "softErrorNotify", "activeReadBeforeSend"}
STACK_FEATURES = {
    "tcp": _ALWAYS | _RELIABLE | {"zeroRttMsg"},
    "tls": _ALWAYS | _RELIABLE | {"secure"},
    "quic": _ALWAYS | _RELIABLE | {"preserveMsgBoundaries", "perMsgReliability",
                                   "multistreaming", "zeroRttMsg", "secure"},
    "mptcp": _ALWAYS | _RELIABLE,
    "tls-mptcp": _ALWAYS | _RELIABLE | {"secure"},
    "udp": _ALWAYS | {"preserveMsgBoundaries", "zeroRttMsg"},
    "quic-ice": _ALWAYS | _RELIABLE | {"preserveMsgBoundaries", "perMsgReliability",
                                       "multistreaming", "secure"},
}
RENDEZVOUS_STACKS = {"quic-ice"}
"""Stacks that serve rendezvous:// targets and nothing else, the bare host:port form
included (docs/rendezvous.md)."""
PROTOCOL_PREFS = ("reliability", "preserveOrder", "congestionControl", "fullChecksumSend",
                  "fullChecksumRecv", "preserveMsgBoundaries", "perMsgReliability",
                  "zeroRttMsg", "keepAlive", "softErrorNotify", "activeReadBeforeSend",
                  "multistreaming", "secure")
SCHEME_STACKS = {"https": {"tls", "quic", "tls-mptcp"}, "tls": {"tls", "tls-mptcp"},
                 "tcp": {"tcp", "mptcp"}, "udp": {"udp"}, "quic": {"quic"},
                 "hostport": set(STACK_FEATURES) - RENDEZVOUS_STACKS,
                 "rendezvous": RENDEZVOUS_STACKS}
SECRET_KEYS = {"rendezvous.turn"}
"""Keys whose values hold a password, shown as `turn:USER:***@HOST:PORT` in every output
(docs/policy-language.md, "Rendezvous")."""
INTERFACE_TYPES = ("loopback", "ethernet", "wifi", "cellular", "vpn", "other")


def default_value(key: str, kind: str) -> Any:
    if key.startswith(MAP_PREFIXES):
        return "no_preference"
    if kind == "listen" and key in LISTEN_DEFAULTS:
        return LISTEN_DEFAULTS[key]
    return DEFAULTS[key]


def normalise(key: str, value: Any) -> Any:
    """A value as a policy author wrote it -> as explain JSON shows it."""
    if key == "security.minTlsVersion":
        return str(value)
    if key in ("security.alpn", "message.dscp", "dns.svcbSchemes", "rendezvous.stun",
               "rendezvous.turn") and isinstance(value, str):
        value = [value]
    if key in SECRET_KEYS:
        return [re.sub(r"^turn:([^:@]*):.*@", r"turn:\1:***@", v) for v in value]
    return value


def strictness(key: str, value: Any) -> int:
    """Larger is stricter (docs/conflict-resolution.md, step 1); 0 for keys without an order."""
    if key not in NON_PREFERENCE:
        return PREF_STRENGTH[value]
    direction = DIRECTION.get(key)
    if direction == "smaller":
        return -value
    if direction == "larger":
        if key == "listener.retry":
            return {"never": 0, "auto": 1, "always": 2}[value]
        if key == "security.ech":
            return {"prefer": 0, "require": 1}[value]
        if key == "security.dane":
            return {"off": 0, "opportunistic": 1, "require": 2}[value]
        return {"1.2": 2, "1.3": 3, "none": 0, "request": 1, "require": 2}[value]
    if direction == "true":
        return int(value)
    if direction == "false":
        return int(not value)
    return 0


def verdict(key: str, floor: Any, value: Any) -> str:
    """docs/conflict-resolution.md step 2: what happens to a lower layer's `value` under
    `floor`."""
    if value == floor:
        return "accepted"
    if key in NON_PREFERENCE:
        stricter = key in DIRECTION and strictness(key, value) > strictness(key, floor)
        return "accepted" if stricter else "denied"
    if floor in HARD:
        return "conflict" if value in HARD else "denied"
    if floor in SOFT:
        return "accepted" if value in HARD else "denied"
    return "denied"  # enforced no_preference: nothing else gets in


def not_looser(key: str, floor: Any, value: Any) -> bool:
    """The 'never loosened' invariant for an effective value under an enforced floor."""
    if value == floor:
        return True
    if key in NON_PREFERENCE:
        return key in DIRECTION and strictness(key, value) > strictness(key, floor)
    return floor in SOFT and value in HARD


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def when_matches(when: dict[str, Any], req: dict[str, Any]) -> bool:
    """docs/policy-language.md `when`: every field given must match; a list means any of."""
    if "kind" in when and req["kind"] not in _items(when["kind"]):
        return False
    if "scheme" in when and req["scheme"] not in _items(when["scheme"]):
        return False
    if "port" in when:
        ranges = []
        for item in _items(when["port"]):
            if isinstance(item, int):
                ranges.append((item, item))
            else:
                lo, _, hi = item.partition("-")
                ranges.append((int(lo), int(hi or lo)))
        if not any(lo <= req["port"] <= hi for lo, hi in ranges):
            return False
    if "app" in when and (req["app"] is None or not any(
            fnmatch.fnmatchcase(req["app"], g) for g in _items(when["app"]))):
        return False
    if "host" in when:
        host = req["host"]
        try:
            ip: Any = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        hit = False
        for g in _items(when["host"]):
            if "/" in g:
                hit |= ip is not None and ip in ipaddress.ip_network(g, strict=False)
            else:
                hit |= fnmatch.fnmatchcase(host.lower(), g.lower())
        if not hit:
            return False
    return True


def rule_index(scn: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(layer, rule id) -> what the oracle needs to know about that rule."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for layer in LAYERS:
        for doc in scn[layer]:
            for rule in doc["rules"]:
                statements: dict[str, Any] = {}
                for profile in rule.get("use", []):  # a later profile wins over an earlier one
                    statements.update(PROFILES[profile])
                statements.update(flatten_set(rule.get("set", {})))  # own `set` wins
                assert (layer, rule["id"]) not in out, "strategy promise: unique rule ids"
                out[(layer, rule["id"])] = {
                    "name": doc["name"],
                    "priority": rule.get("priority", 0),
                    "specificity": len(rule.get("when", {})),
                    "enforce": rule.get("enforce", False),
                    "when": rule.get("when", {}),
                    "statements": {k: normalise(k, v) for k, v in statements.items()},
                }
    return out


def explain(scn: dict[str, Any], **override: Any) -> taps_post.Decision:
    args: dict[str, Any] = {"system": scn["system"], "app": scn["app"],
                            "carrier": scn["carrier"], "app_name": scn["app_name"],
                            "kind": scn["kind"], "env": scn["env"]}
    args.update(override)
    assert isinstance(args["system"], list), "never let the machine's system policy load"
    return taps_post.explain(scn["target"], **args)


def _ident(s: dict[str, Any]) -> str:
    return json.dumps([s["layer"], s["rule"], s["value"]])


# --- order independence --------------------------------------------------------------------

def _norm_source(source: str | None) -> str | None:
    # Dict documents are located by path (`<app>:rules[2].set.secure`): moving a rule within
    # its file legitimately changes the index, so provenance is compared without it.
    return None if source is None else re.sub(r"rules\[\d+\]", "rules[*]", source)


def _stmt(s: dict[str, Any], *extra: str) -> str:
    return json.dumps([s["value"], s["layer"], s["rule"], _norm_source(s["source"]), *extra])


def canonical(d: dict[str, Any]) -> dict[str, Any]:
    """to_dict() minus what legitimately follows the order files and rules were given in."""
    return {
        "version": d["version"],
        "request": d["request"],
        "layers": Counter(
            json.dumps([f["layer"], f["name"], sorted(
                json.dumps([r["id"], _norm_source(r["source"]), r["matched"], r["enforce"],
                            r["priority"]]) for r in f["rules"])])
            for f in d["layers"]),
        "properties": {
            key: (_stmt(p), p["enforced"],
                  Counter(_stmt(o, o["outcome"]) for o in p["others"]))
            for key, p in d["properties"].items()
        },
        "conflicts": Counter(
            json.dumps([c["key"], [_stmt(s) for s in c["statements"]],
                        _norm_source(c["reason"])])
            for c in d["conflicts"]),
        "candidates": d["candidates"],
        "excluded": Counter(
            json.dumps({**e, "source": _norm_source(e["source"])}, sort_keys=True)
            for e in d["excluded"]),
        "multipath": {**d["multipath"], "subflows": [
            {**f, "source": _norm_source(f["source"]), "reason": _norm_source(f["reason"])}
            for f in d["multipath"]["subflows"]]},
        "outcome": d["outcome"],
        "warnings": Counter(_norm_source(w) for w in d["warnings"]),  # a warning names its rule
    }


def _shuffled(scn: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    out = copy.deepcopy(scn)
    for layer in LAYERS:
        docs = data.draw(st.permutations(out[layer]), label=f"{layer} file order")
        for doc in docs:
            doc["rules"] = data.draw(st.permutations(doc["rules"]), label="rule order")
        out[layer] = list(docs)
    return out


def _add_twin(scn: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Add a second document with the same name (or both unnamed) holding a rule with the same
    id as one of the first's, maybe differently enforced: only the tie-breaks after name and
    rule id can tell them apart."""
    places = [(layer, i, j) for layer in LAYERS for i, doc in enumerate(scn[layer])
              for j in range(len(doc["rules"]))]
    if not places:
        return scn
    layer, i, j = data.draw(st.sampled_from(places), label="rule to twin")
    scn = copy.deepcopy(scn)
    doc = scn[layer][i]
    twin = copy.deepcopy(doc["rules"][j])
    twin["enforce"] = not twin.get("enforce", False)
    twin_doc: dict[str, Any] = {"version": 1, "layer": layer, "rules": [twin]}
    if data.draw(st.booleans(), label="both unnamed"):
        del doc["name"]
    else:
        twin_doc["name"] = doc["name"]
    scn[layer].append(twin_doc)
    # A lower layer that speaks about one of the twin's keys: whether it is denied depends on
    # which of the two wins.
    keys = sorted(flatten_set(twin.get("set", {})))
    if keys and layer != "carrier":
        key = data.draw(st.sampled_from(keys), label="challenged key")
        lower = LAYERS[LAYERS.index(layer) + 1]
        scn[lower].append({"version": 1, "layer": lower, "name": "challenger", "rules": [
            {"id": "challenger", "set": {key: data.draw(values_for(key))}}]})
    return scn


@SETTINGS
@given(scn=scenarios(), data=st.data())
def test_file_and_rule_order_never_change_the_decision(scn: dict[str, Any],
                                                       data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="add a same-named twin"):
        scn = _add_twin(scn, data)
    before = explain(scn).to_dict()
    after = explain(_shuffled(scn, data)).to_dict()
    assert canonical(after) == canonical(before)


# --- duplicating a rule ----------------------------------------------------------------------

def _essence(d: dict[str, Any]) -> tuple[Any, ...]:
    return (
        {k: (p["value"], p["enforced"]) for k, p in d["properties"].items()},
        [(c["interface"], c["stack"], c["remote_address"], c["start_ms"])
         for c in d["candidates"]],
        d["outcome"],
    )


@SETTINGS
@given(scn=scenarios(), data=st.data())
def test_duplicating_a_rule_changes_nothing(scn: dict[str, Any], data: st.DataObject) -> None:
    """A copy of a rule that sorts after its original changes nothing. (A copy named to sort
    first may: between statements equal in priority, specificity and strictness, the
    document name and then the rule id decide, alphabetically, by design (conflict
    resolution, step 1), so a copy of a losing `security.alpn` value in `aaa-dup.yaml` wins
    over its original's rivals. Hypothesis found that case; it is the rule, not a bug.)"""
    places = [(layer, i, j) for layer in LAYERS for i, doc in enumerate(scn[layer])
              for j in range(len(doc["rules"]))]
    if not places:
        return
    layer, i, j = data.draw(st.sampled_from(places), label="rule to duplicate")
    dup = copy.deepcopy(scn)
    rule = copy.deepcopy(dup[layer][i]["rules"][j])
    if data.draw(st.booleans(), label="copy within the same file"):
        rule["id"] = "zzz-copy"
        rules = dup[layer][i]["rules"]
        rules.insert(data.draw(st.integers(0, len(rules)), label="position"), rule)
    else:
        name = "zzz-dup"
        docs = dup[layer]
        docs.insert(data.draw(st.integers(0, len(docs)), label="position"),
                    {"version": 1, "layer": layer, "name": name, "rules": [rule]})
    assert _essence(explain(dup).to_dict()) == _essence(explain(scn).to_dict())


# --- enforced statements are never loosened ---------------------------------------------------

def _with_floor(scn: dict[str, Any], data: st.DataObject) -> tuple[dict[str, Any], str, Any]:
    """A copy of `scn` whose system layer surely wins with an enforced statement for one key,
    and whose app and carrier layers challenge it (sometimes enforced themselves)."""
    key = data.draw(st.sampled_from(scn["pool"]), label="enforced key")
    value = data.draw(values_for(key), label="floor value")
    floor_rule: dict[str, Any] = {"id": "the-floor", "enforce": True, "priority": 100,
                                  "set": {key: value}}
    if data.draw(st.booleans(), label="floor rule has a when"):
        floor_rule["when"] = {"kind": [scn["kind"]], "port": "0-65535"}
    scn = copy.deepcopy(scn)
    if scn["system"]:
        doc = data.draw(st.sampled_from(scn["system"]), label="floor file")
        doc["rules"].insert(data.draw(st.integers(0, len(doc["rules"])), label="position"),
                            floor_rule)
    else:
        scn["system"].append({"version": 1, "layer": "system", "name": "floor",
                              "rules": [floor_rule]})
    for layer in ("app", "carrier"):
        for n in range(data.draw(st.integers(0, 2), label=f"{layer} challengers")):
            rule = {"id": f"challenger-{n}", "enforce": data.draw(st.booleans()),
                    "priority": data.draw(st.integers(-2, 2)),
                    "set": {key: data.draw(values_for(key))}}
            scn[layer].append({"version": 1, "layer": layer, "name": f"challenger-{n}",
                               "rules": [rule]})
    return scn, key, value


@SETTINGS
@given(scn=scenarios(max_docs=2), data=st.data())
def test_enforced_statements_are_never_loosened(scn: dict[str, Any], data: st.DataObject) -> None:
    scn, key, value = _with_floor(scn, data)
    d = explain(scn).to_dict()
    floor = normalise(key, value)
    eff = d["properties"][key]
    event(f"outcome: {d['outcome']}")
    event(f"ends at the floor value: {eff['value'] == floor}")
    assert d["properties"][key]["layer"] != "defaults"
    conflicts = [c for c in d["conflicts"] if c["key"] == key]
    if conflicts:
        # A hard clash with the floor (or with a hard value that narrowed it): fail early.
        assert d["outcome"] == "policy_prohibited"
        floor_side, lower = conflicts[0]["statements"]
        assert {floor_side["value"], lower["value"]} == HARD
        assert floor_side["value"] == floor or floor in SOFT
        assert LAYERS.index(floor_side["layer"]) < LAYERS.index(lower["layer"])
        return
    assert not_looser(key, floor, eff["value"]), (key, floor, eff)
    if eff["value"] == floor or key in NON_PREFERENCE:
        return
    # A preference moved off an enforced soft floor only to a hard value (it narrows).
    assert floor in SOFT and eff["value"] in HARD


# --- the resolver follows the section 4 table, statement by statement ----------------------

def _rank(key: str, s: dict[str, Any], info: dict[tuple[str, str], dict[str, Any]]) -> tuple:
    r = info[(s["layer"], s["rule"])]
    # docs/conflict-resolution.md step 1: between equal values an enforced statement wins,
    # before document name and rule id.
    return (-r["priority"], -r["specificity"], -strictness(key, s["value"]), not r["enforce"],
            r["name"], s["rule"])


@SETTINGS
@given(scn=scenarios(), data=st.data())
def test_resolution_follows_the_design_table(scn: dict[str, Any], data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="add an enforced floor and challengers"):
        scn, _key, _value = _with_floor(scn, data)
    d = explain(scn).to_dict()
    req = d["request"]
    info = rule_index(scn)

    # Which rules match: the engine's flags against the oracle's reading of `when`.
    flags = {(f["layer"], r["id"]): r["matched"] for f in d["layers"] for r in f["rules"]}
    assert flags == {k: when_matches(r["when"], req) for k, r in info.items()}

    # Every statement of every matching rule takes part, and nothing else does.
    expected_statements = Counter(
        (key, layer, rid, json.dumps(value))
        for (layer, rid), r in info.items() if flags[(layer, rid)]
        for key, value in r["statements"].items())
    seen_statements = Counter(
        (key, s["layer"], s["rule"], json.dumps(s["value"]))
        for key, p in d["properties"].items() for s in (p, *p["others"])
        if s["layer"] != "defaults")
    assert seen_statements == expected_statements

    expected_conflicts = set()
    for key, p in d["properties"].items():
        statements = [(p, "effective"), *((o, o["outcome"]) for o in p["others"])]
        defaults = [s for s, _ in statements if s["layer"] == "defaults"]
        assert len(defaults) == 1
        assert defaults[0]["value"] == default_value(key, req["kind"])
        bests = []
        for layer in LAYERS:
            group = [(s, o) for s, o in statements if s["layer"] == layer]
            if not group:
                continue
            winners = [s for s, o in group if o != "shadowed"]
            assert len(winners) == 1, (key, layer, group)
            best = winners[0]
            for s, o in group:
                if o == "shadowed":
                    assert _rank(key, best, info) < _rank(key, s, info), (key, best, s)
            bests.append(best)
        # Fold the per-layer winners with the oracle's table.
        current, floor = defaults[0], None
        expected = Counter()
        for s in bests:
            v = "accepted" if floor is None else verdict(key, floor["value"], s["value"])
            event(f"verdict: {v}")
            if v == "accepted":
                expected[(_ident(current), "overridden")] += 1
                current = s
                if info[(s["layer"], s["rule"])]["enforce"]:
                    floor = s
            elif v == "denied":
                expected[(_ident(s), "denied")] += 1
            else:
                expected[(_ident(s), "conflict")] += 1
                expected_conflicts.add((key, _ident(floor), _ident(s)))
        actual = Counter((_ident(o), o["outcome"]) for o in p["others"]
                         if o["outcome"] != "shadowed")
        assert _ident(p) == _ident(current), key
        assert actual == expected, key
        enforced = current["layer"] != "defaults" and info[(current["layer"],
                                                            current["rule"])]["enforce"]
        assert p["enforced"] == enforced
    # One conflict per key at most: the first one met in the fold names the request's fate.
    seen = {(c["key"], _ident(c["statements"][0]), _ident(c["statements"][1]))
            for c in d["conflicts"]}
    assert seen <= expected_conflicts
    assert {k for k, _, _ in seen} == {k for k, _, _ in expected_conflicts}
    assert (d["outcome"] == "policy_prohibited") == bool(expected_conflicts)


# --- candidates honour hard preferences and the plan -----------------------------------------

def _rank_tuple(key: dict[str, Any]) -> tuple[Any, ...]:
    """docs/explain.md, "The ranking key": the field order, written out here."""
    history = ("success", "none", "fallback", "failure").index(key["history"])
    rtt = key["rtt_ms"] if key["rtt_ms"] is not None else (float("inf") if history == 0 else 0)
    return (int(key["recent_failure"]), -key["path_prefer"], key["path_avoid"],
            key["service_priority"], -key["protocol_prefer"], key["protocol_avoid"], history,
            rtt, key["cost"], key["interface"], key["stack_order"], key["endpoint_order"])


def _check_attempt_delay(props: dict[str, Any], first: dict[str, Any] | None, ms: int) -> None:
    """docs/explain.md, stated as promises rather than as the engine's formula: without a
    history RTT the delay is racing.attemptDelay; with one it never exceeds
    racing.maxAttemptDelay, never goes below racing.minAttemptDelay when the bounds are
    ordered, and is twice the RTT when that lies inside them."""
    low, high = props["racing.minAttemptDelay"], props["racing.maxAttemptDelay"]
    if first is None or first["key"]["rtt_ms"] is None:
        assert ms == props["racing.attemptDelay"]
        return
    assert ms <= high
    if low <= high:
        assert low <= ms
        if low <= 2 * first["key"]["rtt_ms"] <= high:
            assert abs(ms - 2 * first["key"]["rtt_ms"]) <= 0.5


@SETTINGS
@given(scn=scenarios())
def test_candidates_honour_hard_preferences(scn: dict[str, Any]) -> None:
    d = explain(scn).to_dict()
    props = {k: p["value"] for k, p in d["properties"].items()}
    cands = d["candidates"]
    assert (d["outcome"] == "ok") == bool(cands) or d["outcome"] == "policy_prohibited"
    if d["outcome"] == "policy_prohibited":
        assert not cands and not d["excluded"]
        return
    delay = props["racing.attemptDelay"]
    if cands:
        delay = d["resolution"]["attempt_delay"]["ms"]
        _check_attempt_delay(props, cands[0], delay)
    assert [c["rank"] for c in cands] == list(range(1, len(cands) + 1))
    assert [c["start_ms"] for c in cands] == [(c["rank"] - 1) * delay for c in cands]
    keys = [(c["pass"], _rank_tuple(c["key"])) for c in cands]
    assert keys == sorted(keys)
    assert len({(c["interface"], c["stack"], c["remote_address"]) for c in cands}) == len(cands)
    for c in cands:
        stack, features = c["stack"], STACK_FEATURES[c["stack"]]
        assert stack in SCHEME_STACKS[d["request"]["scheme"]]
        assert c["remote_port"] == d["request"]["port"]
        assert c["family"] == ("ipv6" if ":" in c["remote_address"] else "ipv4")
        assert (":" in c["local_address"]) == (c["family"] == "ipv6")
        for key in PROTOCOL_PREFS:
            assert not (props[key] == "prohibit" and key in features), (key, c)
            assert not (props[key] == "require" and key not in features), (key, c)
        for name in STACK_FEATURES:
            value = props.get(f"stack.{name}")
            assert not (value == "prohibit" and stack == name)
            assert not (value == "require" and stack != name)
        if props["multipath"] == "disabled":
            assert stack not in ("mptcp", "tls-mptcp")
        for fam in ("ipv4", "ipv6"):
            value = props.get(f"addressFamily.{fam}")
            assert not (value == "prohibit" and c["family"] == fam)
            assert not (value == "require" and c["family"] != fam)
        for key, value in props.items():
            leaf = key.partition(".")[2]
            if key.startswith("interface.") and leaf not in INTERFACE_TYPES:
                hit = fnmatch.fnmatchcase(c["interface"], leaf)
                assert not (value == "prohibit" and hit) and not (value == "require" and not hit)
        if props["maxCost"] is not None:
            assert c["key"]["cost"] <= props["maxCost"]


# --- determinism, purity, schema ----------------------------------------------------------------

@SETTINGS
@given(scn=scenarios())
def test_same_input_same_output(scn: dict[str, Any]) -> None:
    pristine = copy.deepcopy(scn)
    first = explain(scn).to_dict()
    assert scn == pristine, "explain() must not modify the documents it was given"
    assert explain(scn).to_dict() == first
    ctx = taps_post.PolicyContext(system=scn["system"], app=scn["app"], carrier=scn["carrier"],
                                  app_name=scn["app_name"])
    again = taps_post.explain(scn["target"], policy=ctx, kind=scn["kind"], env=scn["env"])
    assert again.to_dict() == first
    request = taps_post.parse_target(scn["target"], app=scn["app_name"], kind=scn["kind"])
    environment = taps_post.load_environment(scn["env"])
    assert taps_post.decide(request, ctx, environment).to_dict() == first
    assert taps_post.decide(request, ctx, environment).to_dict() == first


EXPLAIN_SCHEMA = schema("explain")
VALIDATOR = jsonschema.Draft202012Validator(EXPLAIN_SCHEMA)


def test_explain_schema_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(EXPLAIN_SCHEMA)


@SETTINGS
@given(scn=scenarios())
def test_to_dict_is_json_and_matches_the_schema(scn: dict[str, Any]) -> None:
    d = explain(scn).to_dict()
    text = json.dumps(d, allow_nan=False)
    errors = sorted(VALIDATOR.iter_errors(json.loads(text)), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:3]]
    assert json.loads(text) == d


# --- order independence where names tie (regressions) ---------------------------------

_ENV = {"interfaces": [{"name": "eth0", "type": "ethernet", "addresses": ["198.18.0.1"]}],
        "dns": {"example.com": ["198.18.1.1"]}}


# Regression: resolve._rank used to ignore `enforce` when two documents of one layer share a
# name (unnamed dicts are all '<system>'; same-stem files in two directories), a rule id and a
# value, so the floor followed the order the files were given in.
@pytest.mark.parametrize("how", ["unnamed-dicts", "same-name", "same-stem-files"])
def test_same_named_files_are_order_independent(how: str, tmp_path: Any) -> None:
    extra = {"name": "site"} if how == "same-name" else {}
    enforced: Any = {"version": 1, "layer": "system", **extra,
                     "rules": [{"id": "r", "enforce": True, "set": {"secure": "prefer"}}]}
    plain: Any = {"version": 1, "layer": "system", **extra,
                  "rules": [{"id": "r", "set": {"secure": "prefer"}}]}
    if how == "same-stem-files":
        for sub, doc in (("one", enforced), ("two", plain)):
            (tmp_path / sub).mkdir()
            (tmp_path / sub / "site.yaml").write_text(json.dumps(doc))
        enforced, plain = str(tmp_path / "one" / "site.yaml"), str(tmp_path / "two" / "site.yaml")
    app = {"version": 1, "layer": "app", "rules": [{"id": "x", "set": {"secure": "avoid"}}]}
    one = taps_post.explain("https://example.com", system=[enforced, plain], app=[app],
                            env=_ENV)
    two = taps_post.explain("https://example.com", system=[plain, enforced], app=[app],
                            env=_ENV)
    # Either way round, the enforced `prefer` must deny the app's `avoid`.
    assert one.value("secure") == two.value("secure") == taps_post.Pref.PREFER


def _facts_cost(docs: list[dict[str, Any]]) -> int:
    return taps_post.explain("https://example.com", system=docs, env=_ENV).candidates[0].key.cost


def test_interface_facts_from_named_documents_are_order_independent() -> None:
    a = {"version": 1, "layer": "system", "name": "a",
         "interfaces": [{"match": {"name": "eth0"}, "cost": 5}]}
    b = {"version": 1, "layer": "system", "name": "b",
         "interfaces": [{"match": {"name": "eth0"}, "cost": 50}]}
    assert _facts_cost([a, b]) == _facts_cost([b, a]) == 5  # the first name wins


# Regression: unnamed dict documents all have name and source '<system>', and their interface
# facts used to apply in the order the documents were given in.
def test_interface_facts_from_unnamed_dicts_are_order_independent() -> None:
    a = {"version": 1, "layer": "system", "interfaces": [{"match": {"name": "eth0"}, "cost": 5}]}
    b = {"version": 1, "layer": "system", "interfaces": [{"match": {"name": "eth0"}, "cost": 50}]}
    assert _facts_cost([a, b]) == _facts_cost([b, a])


def test_strategy_vocabulary_matches_the_registry() -> None:
    """The oracle's tables name exactly the keys and kinds the engine knows."""
    from taps_post.policy.registry import fixed_keys

    assert set(fixed_keys()) == set(DEFAULTS)
    assert set(PREFS) == set(PREF_STRENGTH)


# --- MPTCP subflows (docs/multipath.md, docs/policy-language.md "Multipath") ------------------

IFACE_WORDS = ("eth0", "eth1", "wlan0", "wwan0", "tun0", "en0", "eth*", "wwan?", "en[0-9]",
               "cellular", "wifi", "ethernet", "vpn")
MULTIPATH_STACKS = {"mptcp", "tls-mptcp"}


@st.composite
def multipath_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Any scenario, plus a carrier document turning multipath on with a policy and a few
    interface statements (usually avoid or prohibit), so subflows have work to do."""
    scn = draw(scenarios(max_docs=2))
    statements: dict[str, Any] = {
        "multipath": draw(st.sampled_from(("active", "active", "passive", "disabled"))),
        "multipathPolicy": draw(st.sampled_from(("handover", "interactive", "aggregate"))),
    }
    for word in draw(st.lists(st.sampled_from(IFACE_WORDS), max_size=3, unique=True)):
        statements[f"interface.{word}"] = draw(st.sampled_from(
            ("avoid", "avoid", "prohibit", "prefer", "require")))
    if draw(st.booleans()):
        statements["metered"] = draw(st.sampled_from(("avoid", "prohibit")))
    for family in ("ipv4", "ipv6"):
        if draw(st.integers(0, 3)) == 0:
            statements[f"addressFamily.{family}"] = draw(st.sampled_from(PREFS))
    if draw(st.integers(0, 3)) == 0:
        # A dual-stack listener on "::": its plan adds IPv4 addresses the tree does not hold.
        scn["target"], scn["kind"] = "tcp://[::]:9000", draw(st.sampled_from(("listen",
                                                                                "respond")))
    scn["carrier"] = [*scn["carrier"], {"version": 1, "layer": "carrier", "name": "mp",
                                        "rules": [{"id": "mp", "set": statements}]}]
    return scn


CONNECTING_KINDS = {"initiate", "source"}
"""docs/policy-language.md: an end that opens its own connection; passive there opens no
subflow (RFC 9622), so its plan is empty."""


def _family_allowed(address: str, props: dict[str, Any]) -> bool:
    """May a subflow use `address`, by addressFamily.* (prohibit its family, or require the
    other one, bars it)?"""
    family = "ipv6" if ":" in address else "ipv4"
    other = "ipv4" if family == "ipv6" else "ipv6"
    return (props.get(f"addressFamily.{family}") != "prohibit"
            and props.get(f"addressFamily.{other}") != "require")


def _path_hits(key: str, iface: Any) -> bool:
    """Does the path-level key `key` speak about `iface`? (docs/policy-language.md)"""
    family, _, leaf = key.partition(".")
    if key == "metered":
        return bool(iface.metered)
    if family == "pvd":
        return bool(iface.pvd == leaf)
    if family == "interface":
        return (iface.type == leaf) if leaf in INTERFACE_TYPES else \
            fnmatch.fnmatchcase(iface.name, leaf)
    return False


def _is_path_key(key: str) -> bool:
    return key == "metered" or key.startswith(("interface.", "pvd."))


@SETTINGS
@given(scn=multipath_scenarios())
def test_subflows_follow_the_interface_rules(scn: dict[str, Any]) -> None:
    decision = explain(scn)
    d = decision.to_dict()
    mp = d["multipath"]
    subflows = mp["subflows"]
    props = {k: p["value"] for k, p in d["properties"].items()}
    assert mp["mode"] == props["multipath"] and mp["policy"] == props["multipathPolicy"]
    assert mp["path_manager"] == (scn["env"].get("mptcp") or {}).get("pathManager")
    opens = props["multipath"] == "active" or (props["multipath"] == "passive"
                                               and scn["kind"] not in CONNECTING_KINDS)
    assert mp["opens_subflows"] is opens
    if not opens or d["outcome"] == "policy_prohibited":
        assert subflows == []
        return
    event(f"{len(subflows)} subflows, {props['multipathPolicy']}")
    names = [f["interface"] for f in subflows]
    assert len(set(names)) == len(names)
    by_name = {i.name: i for i in decision.interfaces}
    barred = {e["interface"] for e in d["excluded"]
              if e["interface"] and not e["stack"] and not e["remote_address"]}
    avoided = {}
    for name in names:
        iface = by_name[name]
        # Every subflow interface survived pruning: up, not barred, within maxCost, and no
        # prohibit that speaks about it, no require that does not.
        assert iface.up and name not in barred, name
        if props["maxCost"] is not None:
            assert iface.cost <= props["maxCost"]
        for key, value in props.items():
            if _is_path_key(key):
                hit = _path_hits(key, iface)
                assert not (value == "prohibit" and hit), (name, key)
                assert not (value == "require" and not hit), (name, key)
        avoided[name] = sorted(k for k, v in props.items()
                               if _is_path_key(k) and v == "avoid" and _path_hits(k, iface))
    for f in subflows:
        own = {a.address for a in by_name[f["interface"]].addresses}
        assert f["addresses"] and set(f["addresses"]) <= own, f
        # Every address obeys addressFamily.*, also the IPv4 ones a "::" listener adds.
        assert all(_family_allowed(a, props) for a in f["addresses"]), (f, props)
    # Completeness and order: every interface a multipath candidate uses, in rank order.
    firsts = list(dict.fromkeys(c["interface"] for c in d["candidates"]
                                if c["stack"] in MULTIPATH_STACKS))
    if d["request"]["host"] != "::":
        assert names == firsts
    else:
        assert names[:len(firsts)] == firsts
    if not subflows:
        return
    primaries = [f["interface"] for f in subflows if f["role"] == "primary"]
    assert primaries, "a connection needs one path to send on"
    best = next((n for n in names if not avoided[n]), names[0])
    if props["multipathPolicy"] == "handover":
        assert primaries == [best]
    else:
        assert set(primaries) == {n for n in names if not avoided[n]} | {best}
    for f in subflows:
        if avoided[f["interface"]] and f["interface"] != best:
            assert f["role"] == "backup"
            assert f["property"] in avoided[f["interface"]]
            assert f["rule"] is not None and f["rule"] in f["reason"]
            assert f["source"] is None or f["source"] in f["reason"]
        elif f["role"] == "backup":
            assert f["property"] == "multipathPolicy"
            assert "multipathPolicy handover" in f["reason"]


@SETTINGS
@given(env=environments("example.com:80"), secure=st.booleans(),
       scoped=st.sampled_from(("none", "interface", "address")))
def test_a_fallback_ranks_the_plain_stack_first(env: dict[str, Any], secure: bool,
                                                scoped: str) -> None:
    """History "fallback" (the peer answered MPTCP as TCP) puts the plain counterpart first,
    on every interface the entry covers, for every remote address it covers."""
    plain, multi = ("tls", "tls-mptcp") if secure else ("tcp", "mptcp")
    target = f"{'tls' if secure else 'tcp'}://example.com:80"
    entry: dict[str, Any] = {"remote": "example.com:80", "stack": multi, "outcome": "fallback"}
    up = [i for i in env["interfaces"] if i.get("up", True) and i["type"] != "loopback"]
    answers = env["dns"].get("example.com") or []
    if scoped == "interface" and up:
        entry["interface"] = up[0]["name"]
    if scoped == "address" and answers:
        entry["address"] = answers[0]
    env = {**env, "cache": [entry]}
    carrier = [{"version": 1, "layer": "carrier",
                "rules": [{"id": "mp", "set": {"multipath": "active"}}]}]
    d = taps_post.explain(target, system=[], carrier=carrier, env=env).to_dict()
    rank = {(c["interface"], c["stack"], c["remote_address"]): c for c in d["candidates"]}
    for (iface, stack, addr), c in rank.items():
        if stack != multi:
            continue
        covered = entry.get("interface", iface) == iface and entry.get("address", addr) == addr
        other = rank[(iface, plain, addr)]
        assert (c["key"]["history"] == "fallback") == covered
        assert (c["rank"] > other["rank"]) == covered, (c, other)


@SETTINGS
@given(scn=multipath_scenarios())
def test_kernel_endpoints_on_excluded_interfaces_warn(scn: dict[str, Any]) -> None:
    """Under the in-kernel path manager, explain warns about exactly the endpoints that sit
    on an interface the policy excludes (docs/explain.md, "The Multipath block")."""
    # Bound to its interface with `dev` (addresses repeat across interfaces in these
    # environments, so an address alone would not say which one it is on).
    endpoints = [{"address": (i["addresses"][0] if isinstance(i["addresses"][0], str)
                              else i["addresses"][0]["address"]), "id": n,
                  "interface": i["name"]}
                 for n, i in enumerate(scn["env"]["interfaces"]) if i.get("addresses")]
    scn["env"] = {**scn["env"], "mptcp": {"pathManager": "kernel", "endpoints": endpoints}}
    d = explain(scn).to_dict()
    warned = {w.split(" is on ")[1].split(",")[0] for w in d["warnings"]
              if w.startswith("kernel MPTCP endpoint")}
    if not d["multipath"]["opens_subflows"] or d["outcome"] == "policy_prohibited":
        assert warned == set()
        return
    barred = {e["interface"] for e in d["excluded"]
              if e["interface"] and not e["stack"] and not e["remote_address"]}
    holders = {i["name"] for i in scn["env"]["interfaces"] if i.get("addresses")}
    event(f"{len(warned)} warned")
    assert warned == barred & holders


# --- rendezvous targets (docs/policy-language.md "Rendezvous", decide Rule 13) ---------------

RENDEZVOUS_TARGETS = ("rendezvous://bob", "rendezvous://peer.example.com")
RENDEZVOUS_WORDS = ("eth0", "wlan0", "wwan?", "loopback", "cellular", "wifi", "ethernet")


@st.composite
def rendezvous_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Any scenario aimed at a rendezvous peer, plus a carrier document with a few interface,
    family, temporary-address and relay statements, so the host candidates have work to do."""
    scn = draw(scenarios(max_docs=2))
    scn["target"] = draw(st.sampled_from(RENDEZVOUS_TARGETS))
    statements: dict[str, Any] = {}
    for word in draw(st.lists(st.sampled_from(RENDEZVOUS_WORDS), max_size=3, unique=True)):
        statements[f"interface.{word}"] = draw(st.sampled_from(
            ("avoid", "prohibit", "prohibit", "prefer", "require")))
    for family in ("ipv4", "ipv6"):
        if draw(st.integers(0, 2)) == 0:
            statements[f"addressFamily.{family}"] = draw(st.sampled_from(PREFS))
    if draw(st.integers(0, 2)) == 0:
        statements["useTemporaryLocalAddress"] = draw(st.sampled_from(PREFS))
    if draw(st.integers(0, 2)) == 0:
        statements["rendezvous.relay"] = draw(st.sampled_from(PREFS))
    if draw(st.integers(0, 2)) == 0:
        statements["rendezvous.turn"] = draw(values_for("rendezvous.turn"))
    if draw(st.integers(0, 3)) == 0:
        statements["security.dane"] = "require"
    scn["carrier"] = [*scn["carrier"], {"version": 1, "layer": "carrier", "name": "p2p",
                                        "rules": [{"id": "p2p", "set": statements}]}]
    return scn


def _wanted_hosts(iface: Any, family: str, temp: str) -> list[str]:
    """docs/policy-language.md "Rendezvous": the addresses of `family` on `iface` that gather
    host candidates under useTemporaryLocalAddress `temp` (link-local never does)."""
    usable = [a for a in iface.addresses if a.family == family
              and not ipaddress.ip_address(a.address).is_link_local]
    temporary = [a.address for a in usable if a.temporary]
    stable = [a.address for a in usable if not a.temporary]
    return {"require": temporary, "prohibit": stable,
            "prefer": temporary or stable}.get(temp, stable or temporary)


@SETTINGS
@given(scn=rendezvous_scenarios())
def test_rendezvous_host_candidates_follow_the_policy(scn: dict[str, Any]) -> None:
    """Every (interface, local address) the policy allows gathers a host candidate, and no
    other does: interface and family rules, maxCost and useTemporaryLocalAddress apply as to
    any candidate; loopback only when a rule names it (interface.loopback or its own name,
    prefer or require, no glob: RFC 8445 section 5.1.1.1); nothing is resolved, nothing is
    raced."""
    decision = explain(scn)
    d = decision.to_dict()
    props = {k: p["value"] for k, p in d["properties"].items()}
    cands = d["candidates"]
    if d["outcome"] == "policy_prohibited":
        assert not cands
        return
    assert (d["outcome"] == "ok") == bool(cands)
    assert d["resolution"]["passes"] == [] and d["resolution"]["services"] == []
    assert not any("did not resolve" in w for w in d["warnings"])
    assert [c["rank"] for c in cands] == list(range(1, len(cands) + 1))
    keys = [_rank_tuple(c["key"]) for c in cands]
    assert keys == sorted(keys)
    for c in cands:
        assert c["stack"] in RENDEZVOUS_STACKS and c["remote_port"] == 0 and c["start_ms"] == 0
        assert c["remote_address"] == ("::" if c["family"] == "ipv6" else "0.0.0.0")
        assert (":" in c["local_address"]) == (c["family"] == "ipv6")
        assert c["key"]["history"] == "none"
    # The oracle: which stacks may serve it at all ...
    features = STACK_FEATURES["quic-ice"]
    stack_ok = all(not (props[k] == "prohibit" and k in features)
                   and not (props[k] == "require" and k not in features)
                   for k in PROTOCOL_PREFS)
    stack_ok &= all(not (v == "prohibit" and k == "stack.quic-ice")
                    and not (v == "require" and k != "stack.quic-ice")
                    for k, v in props.items() if k.startswith("stack."))
    stack_ok &= not (props["rendezvous.relay"] == "require" and not props["rendezvous.turn"])
    # ... on which paths, families and addresses.
    expected: list[tuple[str, str]] = []
    families = [f for f in ("ipv6", "ipv4") if _family_allowed(
        "::" if f == "ipv6" else "0.0.0.0", props)]
    for iface in decision.interfaces:
        if not iface.up or (props["maxCost"] is not None and iface.cost > props["maxCost"]):
            continue
        if any((v == "prohibit" and _path_hits(k, iface)) or
               (v == "require" and not _path_hits(k, iface))
               for k, v in props.items() if _is_path_key(k)):
            continue
        if iface.type == "loopback" and not any(
                v in ("prefer", "require") and k.startswith("interface.")
                and not any(c in k for c in "*?[") and _path_hits(k, iface)
                for k, v in props.items()):
            continue
        for family in families:
            expected.extend((iface.name, a) for a in _wanted_hosts(
                iface, family, props["useTemporaryLocalAddress"]))
    got = [(c["interface"], c["local_address"]) for c in cands]
    assert sorted(got) == sorted(expected if stack_ok else []), (got, expected, props)


def _passwords(scn: dict[str, Any]) -> set[str]:
    """The TURN passwords a scenario's documents hold (between USER: and the last '@')."""
    found: set[str] = set()
    for layer in LAYERS:
        for doc in scn[layer]:
            for rule in doc["rules"]:
                value = flatten_set(rule.get("set", {})).get("rendezvous.turn")
                for url in [value] if isinstance(value, str) else value or []:
                    found.add(url[5:].rpartition("@")[0].partition(":")[2])
    return found


@SETTINGS
@given(scn=rendezvous_scenarios())
def test_turn_passwords_never_reach_an_output(scn: dict[str, Any]) -> None:
    """rendezvous.turn is secret: its password is in no rendering of any decision."""
    from taps_post.decision.render import render_dot, render_properties, render_text

    decision = explain(scn)
    texts = [json.dumps(decision.to_dict()), render_text(decision), render_dot(decision),
             "\n".join(render_properties(decision, everything=True)), repr(decision)]
    for password in _passwords(scn):
        assert not any(password in t for t in texts)
    assert VALIDATOR.is_valid(decision.to_dict())
