"""The policy file format (version 1) as pydantic models; the JSON Schema is generated from here.

Rule 1: the models check shape and types only. Meaning (does this key exist, is this glob
well formed, does the layer match how the file was loaded) is checked in `load.py`, which has
the positions to point at.
Rule 2: every field that accepts "one or a list" is normalised to a tuple here, so the matcher
never branches on shape.
Rule 3: a choice that can grow after import (schemes and stack names, from the stack catalogue)
is never frozen into a `Literal`: it is checked, and written into the JSON Schema, from the
catalogue at the moment of use (`one_of`, `JsonSchemaFrom`).
Rule 4: every model is built on first use (`defer_build`), here and in the environment
snapshot's models: `policy validate` never builds the snapshot's eleven models, and
`import taps_post` builds none (docs/performance.md, CLI start-up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StrictInt,
)
from pydantic.functional_serializers import PlainSerializer
from pydantic.json_schema import JsonSchemaValue, WithJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from . import catalog
from .registry import INTERFACE_TYPES, KINDS, PROFILES, nearest

__all__ = [
    "InterfaceFact",
    "InterfaceMatch",
    "JsonSchemaFrom",
    "PolicyDocument",
    "Rule",
    "When",
    "enum_schema",
    "one_of",
    "scheme_names",
]


@dataclass(frozen=True, slots=True)
class JsonSchemaFrom:
    """Like pydantic's `WithJsonSchema`, but the schema is built when a schema is generated:
    pydantic builds a model's validators once, at import, and a stack registered later must
    still appear in a freshly generated schema."""

    build: Callable[[], JsonSchemaValue]

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return self.build()


def _quoted_or(choices: Sequence[str]) -> str:
    """`'a', 'b' or 'c'`, pydantic's own wording for a Literal, so messages stay the same."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def one_of(source: Callable[[], Sequence[str]]) -> BeforeValidator:
    """A validator accepting only what `source()` returns at validation time, failing with
    the error a `Literal` of the same choices gives (same type, same message)."""

    def check(value: Any) -> Any:
        choices = tuple(source())
        if not isinstance(value, str) or value not in choices:
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": _quoted_or(choices)})
        return value

    return BeforeValidator(check)


def enum_schema(source: Callable[[], Sequence[str]]) -> JsonSchemaFrom:
    """The JSON Schema a `Literal` of `source()` would have, read when it is generated."""
    return JsonSchemaFrom(lambda: {"enum": list(source()), "type": "string"})


def scheme_names() -> tuple[str, ...]:
    """Every scheme a `when:` may name: the catalogue's, then `hostport` (the bare form)."""
    return (*catalog.schemes(), "hostport")


def _str_list(what: str, choices: Callable[[], Sequence[str]] | None = None) -> Any:
    def check(value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ValueError(f"expected {what} or a non-empty list of them, got {value!r}")
        at = "@{} " if isinstance(value, list) else ""  # `@N `: load.py points at item N
        allowed = None if choices is None else tuple(choices())
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise ValueError(f"{at.format(i)}expected {what}, got {item!r}")
            if allowed is not None and item not in allowed:
                hint = nearest(item, allowed)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                raise ValueError(f"{at.format(i)}expected one of {', '.join(allowed)}, "
                                 f"got {item!r}{extra}")
        return tuple(items)

    return check


def _ports(value: Any) -> tuple[tuple[int, int], ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a port, a list of ports or a range 'a-b', got an empty list")
    out: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        try:
            out.append(_port_item(item))
        except ValueError as exc:
            raise ValueError(f"@{i} {exc}" if isinstance(value, list) else str(exc)) from None
    return tuple(out)


def _port_item(item: Any) -> tuple[int, int]:
    if isinstance(item, bool):
        raise ValueError(f"expected a port number or a range 'a-b', got {item!r}")
    if isinstance(item, int):
        lo = hi = item
    elif isinstance(item, str) and item.count("-") == 1:
        a, b = item.split("-")
        if not (a.strip().isdigit() and b.strip().isdigit()):
            raise ValueError(f"expected a port range 'a-b' of two numbers, got {item!r}")
        lo, hi = int(a), int(b)
        if lo > hi:
            raise ValueError(f"port range {item!r} is empty: {lo} is above {hi}")
    elif isinstance(item, str) and item.isdigit():
        lo = hi = int(item)
    else:
        raise ValueError(f"expected a port number or a range 'a-b', got {item!r}")
    for port in (lo, hi):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0-65535")
    return (lo, hi)


_STR_LIST_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                     "minItems": 1}]}


def _enum_list_schema(choices: tuple[str, ...]) -> dict[str, Any]:
    item = {"type": "string", "enum": list(choices)}
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}


_PORT_ITEM = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535},
                        {"type": "string", "pattern": r"^\d+(-\d+)?$"}]}

StrList = Annotated[
    tuple[str, ...] | None,
    BeforeValidator(_str_list("a string")),
    WithJsonSchema(_STR_LIST_SCHEMA),
    PlainSerializer(lambda v: list(v) if v else None),
]
SchemeList = Annotated[
    tuple[str, ...] | None,
    BeforeValidator(_str_list("a scheme", scheme_names)),
    JsonSchemaFrom(lambda: _enum_list_schema(scheme_names())),
]
KindList = Annotated[
    tuple[str, ...] | None,
    BeforeValidator(_str_list("a kind", lambda: KINDS)),
    WithJsonSchema(_enum_list_schema(KINDS)),
]
PortList = Annotated[
    tuple[tuple[int, int], ...] | None,
    BeforeValidator(_ports),
    WithJsonSchema({"anyOf": [_PORT_ITEM, {"type": "array", "items": _PORT_ITEM,
                                           "minItems": 1}]}),
]


class When(BaseModel):
    """Which requests a rule applies to: every field given must match; a list means any of."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    app: StrList = Field(None, description="Application name glob(s)")
    host: StrList = Field(None, description="Host glob(s), or CIDR for IP-literal hosts")
    port: PortList = Field(None, description="Port, list of ports, or range 'a-b'")
    scheme: SchemeList = Field(None, description="Target scheme(s); hostport = host:port form")
    kind: KindList = Field(None, description="Carrier kind(s)")

    @property
    def specificity(self) -> int:
        return sum(1 for f in (self.app, self.host, self.port, self.scheme, self.kind) if f)


ProfileName = Literal["reliable-inorder-stream", "reliable-message", "unreliable-datagram"]
assert set(ProfileName.__args__) == set(PROFILES)  # type: ignore[attr-defined]


class Rule(BaseModel):
    """One rule: when it matches a request, its statements take part in resolution."""

    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    id: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$",
                    description="Unique within the file")
    description: str | None = None
    when: When = Field(default_factory=When)
    enforce: StrictBool = Field(False, description="Lower layers may not loosen this rule")
    priority: StrictInt = Field(0, description="Higher wins within one layer")
    use: list[ProfileName] = Field(default_factory=list,
                                   description="Built-in profiles (RFC 9622 appendix B.2)")
    set_: dict[str, Any] = Field(default_factory=dict, alias="set",
                                 description="Property statements, nested or dotted")


class InterfaceMatch(BaseModel):
    """Which interfaces a fact is about: every field given must match."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    name: str | None = Field(None, description="Interface-name glob")
    type: Literal["loopback", "ethernet", "wifi", "cellular", "vpn", "other"] | None = None


assert set(InterfaceMatch.model_fields["type"].annotation.__args__[0].__args__) == set(  # type: ignore[union-attr]
    INTERFACE_TYPES
)


class InterfaceFact(BaseModel):
    """Facts an administrator states about interfaces discovery cannot classify."""

    # Frozen: loaded facts end up inside every Decision (via its files), and a Decision is
    # immutable data.
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    match: InterfaceMatch
    type: Literal["loopback", "ethernet", "wifi", "cellular", "vpn", "other"] | None = None
    metered: StrictBool | None = None
    cost: StrictInt | None = Field(None, ge=0)
    pvd: str | None = None


class PolicyDocument(BaseModel):
    """A policy file, version 1."""

    model_config = ConfigDict(defer_build=True, extra="forbid", title="taps_post policy")

    version: Literal[1]
    layer: Literal["system", "app", "carrier"]
    name: str | None = Field(None, description="Defaults to the file's stem")
    interfaces: list[InterfaceFact] = Field(default_factory=list,
                                            description="System layer only")
    rules: list[Rule] = Field(default_factory=list)
