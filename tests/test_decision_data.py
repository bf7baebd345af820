"""A Decision is immutable data, all the way down, and shares nothing mutable with another.

The runtime caches Decisions and hands them to applications (carrier.explanation,
PolicyError.decision), so a caller that changes one must fail loudly instead of changing
what the next connection, or another thread, reads."""

from __future__ import annotations

import dataclasses
import enum
import gc
import ipaddress
import re
from types import MappingProxyType
from typing import Any

import pytest

import taps_post as tp
from helpers import ENV, policy
from taps_post.policy.shape import Record

SYSTEM = {
    "version": 1, "layer": "system",
    "interfaces": [{"match": {"name": "wwan*"}, "cost": 20, "metered": True}],
    "rules": [{"id": "cap", "enforce": True, "when": {"host": ["*.com", "10.0.0.0/8"],
                                                       "port": [80, "440-450"]},
               "set": {"maxCost": 50, "security.alpn": ["h2", "http/1.1"]}}],
}
APP = policy("app", {"id": "v6", "when": {"app": ["video*"], "scheme": ["https", "tcp"]},
                     "use": ["reliable-inorder-stream"],
                     "set": {"addressFamily.ipv4": "avoid", "interface.wifi": "prefer"}})

_IMMUTABLE_LEAVES = (str, bytes, int, float, complex, bool, type(None), enum.Enum, re.Pattern,
                     ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address,
                     ipaddress.IPv6Address)


def mutable_parts(root: object) -> list[str]:
    """Every reachable object that could be changed in place, with the path to it."""
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[object, str]] = [(root, "decision")]
    while stack:
        obj, where = stack.pop()
        if id(obj) in seen or isinstance(obj, _IMMUTABLE_LEAVES):
            continue
        seen.add(id(obj))
        children: list[tuple[object, str]] = []
        if isinstance(obj, MappingProxyType):
            children = [(v, f"{where}[{k!r}]") for k, v in obj.items()]
            children += [(k, f"{where} key") for k in obj]
        elif isinstance(obj, tuple | frozenset):
            children = [(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            if not type(obj).__dataclass_params__.frozen:  # type: ignore[attr-defined]
                found.append(f"{where}: {type(obj).__name__} is a mutable dataclass")
            children = [(getattr(obj, f.name), f"{where}.{f.name}")
                        for f in dataclasses.fields(obj)]
        elif isinstance(obj, Record):  # immutable itself (shape Rule 4); its values are walked
            children = [(v, f"{where}.{n}") for n, v in obj.values().items()]
        else:
            found.append(f"{where}: {type(obj).__name__}")
        stack.extend(children)
    return found


@pytest.fixture
def context() -> tp.PolicyContext:
    return tp.PolicyContext(system=SYSTEM, app=APP, app_name="video-player")


def decision(ctx: tp.PolicyContext, target: str = "https://example.com") -> tp.Decision:
    return tp.explain(target, policy=ctx, env=ENV)


def test_properties_cannot_be_changed(context: tp.PolicyContext) -> None:
    d = decision(context)
    before = d.to_dict()
    with pytest.raises(TypeError):
        d.properties["maxCost"] = d.properties["secure"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del d.properties["maxCost"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        d.properties.clear()  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.outcome = "no_candidates"  # type: ignore[misc]
    assert d.to_dict() == before


def test_nothing_inside_a_decision_can_be_changed(context: tp.PolicyContext) -> None:
    d = decision(context)
    assert d.files and d.candidates and d.matched and d.excluded  # the walk sees every kind
    assert d.files[0].interfaces and any(r.when for f in d.files for r in f.rules)
    assert mutable_parts(d) == []
    rule = d.files[0].rules[0]
    with pytest.raises(TypeError):
        rule.when["host"] = ("*",)  # type: ignore[index]
    fact, _source = d.files[0].interfaces[0]
    with pytest.raises(AttributeError, match="InterfaceFact is immutable"):
        fact.cost = 0


def test_a_conflict_decision_is_frozen_too() -> None:
    app = policy("app", {"id": "x", "set": {"maxCost": 99}})
    system = policy("system", {"id": "s", "enforce": True, "set": {"secure": "require"}})
    carrier = policy("carrier", {"id": "c", "set": {"secure": "prohibit"}})
    d = tp.explain("https://example.com", system=system, app=app, carrier=carrier, env=ENV)
    assert d.outcome == "policy_prohibited" and d.conflicts
    assert mutable_parts(d) == []


def _backing_dict(proxy: Any) -> dict[str, Any]:
    (inner,) = [r for r in gc.get_referents(proxy) if isinstance(r, dict)]
    return inner


def test_two_decisions_from_one_context_share_nothing_mutable(
        context: tp.PolicyContext) -> None:
    a = decision(context)
    b = decision(context)  # the same rules match: the resolution is memoised
    assert a.to_dict() == b.to_dict()
    assert a.properties is not b.properties
    assert _backing_dict(a.properties) is not _backing_dict(b.properties)
    # What they do share is immutable (statements, files, interfaces): nothing to race on.
    assert mutable_parts((a, b)) == []


def test_decisions_do_not_share_the_resolvers_memo(context: tp.PolicyContext) -> None:
    d = decision(context)
    resolution = context.resolve_for(d.request)
    assert isinstance(resolution.effective, MappingProxyType)
    assert _backing_dict(d.properties) is not _backing_dict(resolution.effective)
    assert dict(d.properties) == dict(resolution.effective)


def test_a_decision_built_by_hand_is_frozen_as_well(context: tp.PolicyContext) -> None:
    d = decision(context)
    made = tp.Decision(d.request, list(d.files), set(d.matched),  # type: ignore[arg-type]
                       dict(d.properties), list(d.conflicts),  # type: ignore[arg-type]
                       list(d.candidates), list(d.excluded),  # type: ignore[arg-type]
                       d.outcome, list(d.warnings), list(d.interfaces),  # type: ignore[arg-type]
                       list(d.subflows), d.path_manager,  # type: ignore[arg-type]
                       passes=list(d.passes), attempt_delay=d.attempt_delay,  # type: ignore[arg-type]
                       services=list(d.services), dane=d.dane)  # type: ignore[arg-type]
    assert mutable_parts(made) == []
    assert made.to_dict() == d.to_dict()


def test_a_multipath_decision_and_its_subflow_plan_are_frozen() -> None:
    ctx = tp.PolicyContext(system=[], app=policy("app", {"id": "mp", "set": {
        "multipath": "active", "interface.eth1": "avoid"}}))
    env = {"interfaces": [{"name": "eth0", "type": "ethernet", "addresses": ["198.18.1.1"]},
                          {"name": "eth1", "type": "ethernet", "addresses": ["198.18.2.1"]}],
           "dns": {"example.com": ["198.18.1.2"]}, "mptcp": {"pathManager": "userspace"}}
    d = tp.explain("tcp://example.com:80", policy=ctx, env=env)
    assert [(s.interface, s.role) for s in d.subflows] == [("eth0", "primary"),
                                                          ("eth1", "backup")]
    assert d.path_manager == "userspace"
    assert mutable_parts(d) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.subflows[0].role = "backup"  # type: ignore[misc]


def test_a_snapshot_round_trips_with_its_mptcp_section() -> None:
    env = {"interfaces": [{"name": "eth0", "type": "ethernet", "addresses": ["198.18.1.1"]}],
           "dns": {"example.com": ["198.18.1.2"]},
           "cache": [{"remote": "example.com:80", "stack": "mptcp", "outcome": "fallback"}],
           "mptcp": {"pathManager": "kernel"}}
    loaded = tp.load_environment(env)
    assert loaded.path_manager == "kernel" and loaded.cache[0].outcome == "fallback"
    again = tp.load_environment(loaded.to_dict())
    assert again.to_dict() == loaded.to_dict() and again.path_manager == "kernel"
    assert "mptcp" not in tp.load_environment({}).to_dict()
