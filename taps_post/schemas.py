"""JSON Schemas for policy files, environment snapshots and explain output.

Rule 1: schemas are generated from the formats' records and the property registry, never
written by hand, and `schemas/*.schema.json` in the repository are checked against this
module by a test, so editors' completion and the engine agree.
Rule 2: stack names and schemes are read from the stack catalogue each time a schema is
generated, so a stack registered after import is in the next schema.
"""

import json
from typing import Annotated, Any, Literal

from .decision.envfile import EnvDocument
from .policy import catalog
from .policy.model import PolicyDocument, enum_schema, scheme_names
from .policy.registry import REGISTRY, PropertySpec
from .policy.shape import Record, field, json_schema

__all__ = ["SCHEMA_NAMES", "schema", "schema_text"]

SCHEMA_NAMES = ("policy", "env", "explain")
_ID = "https://taps-post.invalid/schemas/{}.schema.json"


def _value_schema(spec: PropertySpec) -> dict[str, Any]:
    desc = spec.description() + (f" ({spec.unit})" if spec.unit else "")
    if spec.kind == "preference":
        out: dict[str, Any] = {"enum": ["require", "prefer", "no_preference", "avoid",
                                        "prohibit"]}
    elif spec.kind == "int":
        out = {"type": "integer"}
        if spec.minimum is not None:
            out["minimum"] = spec.minimum
        if spec.maximum is not None:
            out["maximum"] = spec.maximum
    elif spec.kind == "bool":
        out = {"type": "boolean"}
    elif spec.kind == "enum":
        out = {"enum": list(spec.options())}
    elif spec.kind == "tls_version":
        out = {"anyOf": [{"enum": ["1.2", "1.3"]}, {"enum": [1.2, 1.3]}]}
    else:
        out = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    out["description"] = desc
    return out


def _set_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    patterns: dict[str, Any] = {}
    for name, spec in REGISTRY.items():
        value = _value_schema(spec)
        if spec.map_key:
            inner: dict[str, Any] = {"type": "object", "additionalProperties": value,
                                     "description": spec.description()}
            choices = spec.options()
            if choices:
                inner["propertyNames"] = {"enum": list(choices)}
            props[name] = inner
            leaf = "(" + "|".join(choices) + ")" if choices else ".+"
            patterns[rf"^{name}\.{leaf}$"] = value
            continue
        props[name] = value
        if "." in name:
            head, _, tail = name.partition(".")
            group = props.setdefault(head, {"type": "object", "properties": {},
                                            "additionalProperties": False})
            group["properties"][tail] = value
    return {"type": "object", "properties": dict(sorted(props.items())),
            "patternProperties": patterns, "additionalProperties": False,
            "description": "Property statements, nested or dotted (docs/policy-language.md)"}


def _policy() -> dict[str, Any]:
    out = json_schema(PolicyDocument)
    out["$defs"]["Rule"]["properties"]["set"] = _set_schema()
    return out


# Records of the explain JSON output (docs/explain.md, "JSON output"): its schema is generated
# from them, and the tests validate explain's output against them.
Value = Any


class _RequestOut(Record):
    target: str
    app: str | None
    kind: Literal["initiate", "listen", "source", "sink", "respond"]
    host: str
    port: int
    scheme: Annotated[str, enum_schema(scheme_names)]


class _RuleOut(Record):
    id: str
    source: str
    matched: bool
    enforce: bool
    priority: int


class _LayerOut(Record):
    layer: Literal["system", "app", "carrier"]
    source: str
    name: str
    rules: list[_RuleOut]


class _StatementOut(Record):
    value: Value
    layer: Literal["defaults", "system", "app", "carrier"]
    rule: str | None
    source: str | None


class _OtherOut(_StatementOut):
    outcome: Literal["overridden", "shadowed", "denied", "conflict"]


class _PropertyOut(_StatementOut):
    enforced: bool
    others: list[_OtherOut]


class _ConflictOut(Record):
    key: str
    statements: list[_StatementOut]
    reason: str


class _KeyOut(Record):
    recent_failure: bool
    path_prefer: int
    path_avoid: int
    service_priority: int
    protocol_prefer: int
    protocol_avoid: int
    history: Literal["success", "none", "fallback", "failure"]
    rtt_ms: float | None
    cost: int
    interface: str
    stack_order: int
    endpoint_order: int


class _CandidateOut(Record):
    rank: int
    interface: str
    local_address: str
    stack: Annotated[str, enum_schema(catalog.names)]
    remote_address: str
    remote_port: int
    family: Literal["ipv4", "ipv6"]
    start_ms: int
    pass_: int = field(alias="pass")
    key: _KeyOut


class _ExcludedOut(Record):
    interface: str | None
    stack: str | None
    remote_address: str | None
    remote_port: int | None
    outcome: Literal["unreachable", "scheme", "prohibited", "required_missing", "over_cost",
                     "not_offered", "ech", "dane"]
    property: str | None
    rule: str | None
    source: str | None
    layer: str | None
    detail: str


class _SubflowOut(Record):
    interface: str
    role: Literal["primary", "backup"]
    reason: str
    addresses: list[str]
    property: str | None
    rule: str | None
    source: str | None
    layer: str | None


class _MultipathOut(Record):
    mode: Literal["disabled", "passive", "active"]
    policy: Literal["handover", "interactive", "aggregate"]
    path_manager: Literal["kernel", "userspace", "disabled"] | None
    opens_subflows: bool
    subflows: list[_SubflowOut]


class _PassOut(Record):
    number: int
    at_ms: float
    trigger: str
    answers: list[str]


class _ServiceOut(Record):
    name: str
    priority: int
    target: str
    port: int
    alpn: list[str]
    stacks: list[str]
    ech: bool
    alias_chain: list[str]
    reason: str


class _DelayOut(Record):
    ms: int
    source: Literal["policy", "history"]
    reason: str


class _DaneOut(Record):
    mode: Literal["off", "opportunistic", "require"]
    name: str | None
    records: int
    validated: bool
    usable: int
    reason: str


class _ResolutionOut(Record):
    passes: list[_PassOut]
    services: list[_ServiceOut]
    attempt_delay: _DelayOut | None
    dane: _DaneOut | None


class _IceCandidateOut(Record):
    kind: Literal["host", "srflx", "prflx", "relay"]
    address: str
    port: int
    priority: int
    interface: str | None
    base: str | None


class _IcePairOut(Record):
    local: _IceCandidateOut
    remote: _IceCandidateOut
    state: str
    nominated: bool


class _RendezvousOut(Record):
    peer: str
    role: Literal["controlling", "controlled"]
    local: list[_IceCandidateOut]
    remote: list[_IceCandidateOut]
    pairs: list[_IcePairOut]
    selected: _IcePairOut | None
    dropped: list[str]
    stun: list[str]
    turn: list[str]
    peer_fingerprint: str | None
    elapsed_ms: float | None


class ExplainOutput(Record, title="taps_post explain output"):
    """The output of `taps-post policy explain --format json` (docs/explain.md)."""

    version: Literal[1]
    request: _RequestOut
    layers: list[_LayerOut]
    properties: dict[str, _PropertyOut]
    conflicts: list[_ConflictOut]
    candidates: list[_CandidateOut]
    excluded: list[_ExcludedOut]
    multipath: _MultipathOut
    resolution: _ResolutionOut
    rendezvous: _RendezvousOut | None
    outcome: Literal["ok", "no_candidates", "policy_prohibited"]
    warnings: list[str]


def schema(name: str) -> dict[str, Any]:
    if name == "policy":
        out = _policy()
    elif name == "env":
        out = json_schema(EnvDocument)
    elif name == "explain":
        out = json_schema(ExplainOutput)
    else:
        raise ValueError(f"unknown schema {name!r}; expected one of {', '.join(SCHEMA_NAMES)}")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": _ID.format(name),
            **out}


def schema_text(name: str) -> str:
    return json.dumps(schema(name), indent=2, sort_keys=True) + "\n"
