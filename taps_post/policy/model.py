"""The policy file format (version 1) as records; the JSON Schema is generated from here.

Rule 1: the records check shape and types only. Meaning (does this key exist, is this glob
well formed, does the layer match how the file was loaded) is checked in `load.py`, which has
the positions to point at.
Rule 2: every field that accepts "one or a list" is normalised to a tuple here, so the matcher
never branches on shape.
Rule 3: a choice that can grow after import (schemes and stack names, from the stack catalogue)
is never frozen into a `Literal`: it is checked, and written into the JSON Schema, from the
catalogue at the moment of use (`one_of`, `enum_schema`).
Rule 4: the records are `shape.Record`s, validated by pydantic-core directly and built on
first use, here and in the environment snapshot's records: `import taps_post` builds none,
and no command that reads these files imports pydantic's model machinery
(docs/performance.md, "CLI cold start").
"""

import functools
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from . import catalog
from .registry import INTERFACE_TYPES, KINDS, PROFILES, nearest
from .shape import Before, JsonSchema, Record, StrictBool, StrictInt, field

__all__ = [
    "InterfaceFact",
    "InterfaceMatch",
    "PolicyDocument",
    "Rule",
    "When",
    "enum_schema",
    "one_of",
    "scheme_names",
]


def _quoted_or(choices: Sequence[str]) -> str:
    """`'a', 'b' or 'c'`, pydantic's own wording for a Literal, so messages stay the same."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def one_of(source: Callable[[], Sequence[str]]) -> Before:
    """A validator accepting only what `source()` returns at validation time, failing with
    the error a `Literal` of the same choices gives (same type, same message)."""

    def check(value: Any) -> Any:
        choices = tuple(source())
        if not isinstance(value, str) or value not in choices:
            from pydantic_core import PydanticCustomError  # runs only inside validation

            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": _quoted_or(choices)})
        return value

    return Before(check)


def enum_schema(source: Callable[[], Sequence[str]]) -> JsonSchema:
    """The JSON Schema a `Literal` of `source()` would have, read when it is generated."""
    return JsonSchema(lambda: {"enum": list(source()), "type": "string"})


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
    Before(_str_list("a string")),
    JsonSchema(_STR_LIST_SCHEMA),
]
SchemeList = Annotated[
    tuple[str, ...] | None,
    Before(_str_list("a scheme", scheme_names)),
    JsonSchema(lambda: _enum_list_schema(scheme_names())),
]
KindList = Annotated[
    tuple[str, ...] | None,
    Before(_str_list("a kind", lambda: KINDS)),
    JsonSchema(_enum_list_schema(KINDS)),
]
PortList = Annotated[
    tuple[tuple[int, int], ...] | None,
    Before(_ports),
    JsonSchema({"anyOf": [_PORT_ITEM, {"type": "array", "items": _PORT_ITEM,
                                       "minItems": 1}]}),
]


class When(Record):
    """Which requests a rule applies to: every field given must match; a list means any of."""

    app: StrList = field(None, description="Application name glob(s)")
    host: StrList = field(None, description="Host glob(s), or CIDR for IP-literal hosts")
    port: PortList = field(None, description="Port, list of ports, or range 'a-b'")
    scheme: SchemeList = field(None, description="Target scheme(s); hostport = host:port form")
    kind: KindList = field(None, description="Carrier kind(s)")

    @property
    def specificity(self) -> int:
        return sum(1 for f in (self.app, self.host, self.port, self.scheme, self.kind) if f)


ProfileName = Literal["reliable-inorder-stream", "reliable-message", "unreliable-datagram"]
assert set(ProfileName.__args__) == set(PROFILES)  # type: ignore[attr-defined]
InterfaceType = Literal["loopback", "ethernet", "wifi", "cellular", "vpn", "other"]
assert set(InterfaceType.__args__) == set(INTERFACE_TYPES)  # type: ignore[attr-defined]


@functools.cache
def _no_conditions() -> When:
    """The `when` of a rule that gives none: one record shared by all (records are
    immutable), not a validation per rule."""
    return When.validate({})


class Rule(Record, by_name=True):
    """One rule: when it matches a request, its statements take part in resolution."""

    id: str = field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$",
                    description="Unique within the file")
    description: str | None = None
    when: When = field(default_factory=_no_conditions)
    enforce: StrictBool = field(False, description="Lower layers may not loosen this rule")
    priority: StrictInt = field(0, description="Higher wins within one layer")
    use: list[ProfileName] = field(default_factory=list,
                                   description="Built-in profiles (RFC 9622 appendix B.2)")
    set_: dict[str, Any] = field(default_factory=dict, alias="set",
                                 description="Property statements, nested or dotted")


class InterfaceMatch(Record):
    """Which interfaces a fact is about: every field given must match."""

    name: str | None = field(None, description="Interface-name glob")
    type: InterfaceType | None = None


class InterfaceFact(Record):
    """Facts an administrator states about interfaces discovery cannot classify."""

    # Immutable (as every record): loaded facts end up inside every Decision (via its
    # files), and a Decision is immutable data.
    match: InterfaceMatch
    type: InterfaceType | None = None
    metered: StrictBool | None = None
    cost: StrictInt | None = field(None, ge=0)
    pvd: str | None = None


class PolicyDocument(Record, title="taps_post policy"):
    """A policy file, version 1."""

    version: Literal[1]
    layer: Literal["system", "app", "carrier"]
    name: str | None = field(None, description="Defaults to the file's stem")
    interfaces: list[InterfaceFact] = field(default_factory=list,
                                            description="System layer only")
    rules: list[Rule] = field(default_factory=list)
