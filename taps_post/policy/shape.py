"""File formats as typed records that pydantic-core validates directly.

A format (the policy file, the environment snapshot) is a set of `Record` classes. Their
annotations and `field()` defaults are the one definition of the format: the validator and
the JSON Schema are both built from them. This replaces pydantic's `BaseModel`, whose schema
builder costs more at every cold start of the CLI than the whole rest of `policy explain`
(docs/performance.md, "CLI cold start").

Rule 1: nothing is built or imported at import. A record class's annotations are resolved,
and its validator built, on its first validation, which is also when pydantic-core is first
imported (a process that connects and validates no document never loads it); pydantic
itself is imported only to generate a JSON Schema (`json_schema`), never to validate. The
modules that define formats do not use `from __future__ import annotations`: their
annotations are then objects in the bytecode, where strings would each be compiled by `eval`
at every start (a string still works).
Rule 2: the validator is pydantic-core's model validator, the one `BaseModel` runs, given
the core schema pydantic would build for the same annotations; errors (types, messages,
locations, aliases) are therefore pydantic's, and `load.pydantic_diagnostics` reads them.
Rule 3: the translator knows the types the formats use (str, int, float, bool, Any, None,
Literal, X | None, list, tuple, dict, Record, and `Annotated` with the markers below) and
refuses any other with a TypeError naming the field, never by accepting anything.
Rule 4: a record is made only by validation (`Cls.validate(data)`), and is immutable:
assignment raises, equality and hashing are by value, like a frozen dataclass; copy, deepcopy
and pickle give an equal record.
Rule 5: tests/test_shape.py writes one format both as records and as pydantic models and
holds the records to the models' values, errors and JSON Schema on generated inputs.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator, core_schema

__all__ = [
    "After",
    "Before",
    "JsonSchema",
    "Record",
    "StrictBool",
    "StrictInt",
    "child",
    "field",
    "json_schema",
    "keys",
]

JsonValue = dict[str, Any]


# The markers are plain slotted classes, not dataclasses: this module is imported by every
# command that reads a policy file, and a dataclass costs about a millisecond to create.
class Before:
    """Run `check(value)` before the type's own validation (pydantic's BeforeValidator)."""

    __slots__ = ("check",)

    def __init__(self, check: Callable[[Any], Any]) -> None:
        self.check = check


class After:
    """Run `check(value)` on the validated value (pydantic's AfterValidator)."""

    __slots__ = ("check",)

    def __init__(self, check: Callable[[Any], Any]) -> None:
        self.check = check


class JsonSchema:
    """The JSON Schema of the annotated type, or a function building it when a schema is
    generated (a choice read from the stack catalogue must include stacks registered after
    import)."""

    __slots__ = ("value",)

    def __init__(self, value: JsonValue | Callable[[], JsonValue]) -> None:
        self.value = value

    def build(self) -> JsonValue:
        return self.value() if callable(self.value) else self.value


class _Strict:
    """No lax conversion: YAML's `true` is no int, a quoted "5" no number."""

    __slots__ = ()


StrictBool = typing.Annotated[bool, _Strict()]
StrictInt = typing.Annotated[int, _Strict()]

_REQUIRED: Any = object()


class _Field:
    __slots__ = ("alias", "constraints", "default", "default_factory", "description")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None,
                 alias: str | None, description: str | None,
                 constraints: Mapping[str, Any]) -> None:
        self.default = default
        self.default_factory = default_factory
        self.alias = alias
        self.description = description
        self.constraints = constraints


def field(default: Any = _REQUIRED, *, default_factory: Callable[[], Any] | None = None,
          alias: str | None = None, description: str | None = None,
          min_length: int | None = None, pattern: str | None = None,
          ge: float | None = None, le: float | None = None) -> Any:
    """A field's default, alias, description and constraints (pydantic's `Field`). The
    constraints apply to the field's scalar type, under `X | None` and before any
    `Before`/`After` check of the annotation, where pydantic puts them."""
    given = {"min_length": min_length, "pattern": pattern, "ge": ge, "le": le}
    return _Field(default, default_factory, alias, description,
                  {k: v for k, v in given.items() if v is not None})


_Spec = dict[str, tuple[Any, _Field]]
"""A record class's resolved fields: name -> (annotation, field)."""


class Record:
    """Base of a format's records (Rule 4). Subclasses declare fields as annotations with
    `field()` defaults; `title` names the class in the JSON Schema, `by_name` lets an aliased
    field also be given by its Python name."""

    # pydantic-core's model validator stores the fields in __dict__ and its bookkeeping in
    # these three slots, as it does for BaseModel.
    __slots__ = (
        "__dict__",
        "__pydantic_extra__",
        "__pydantic_fields_set__",
        "__pydantic_private__",
    )
    __pydantic_fields_set__: set[str]

    model_config: ClassVar[dict[str, Any]]
    """Read by pydantic's JSON Schema generator (title, extra) and nothing else."""
    _fields: ClassVar[dict[str, _Field]]
    _by_name: ClassVar[bool]
    _spec: ClassVar[_Spec | None]
    _validator: ClassVar[SchemaValidator | None]

    def __init_subclass__(cls, *, title: str | None = None, by_name: bool = False) -> None:
        own = inspect.get_annotations(cls)
        fields: dict[str, _Field] = dict(getattr(cls, "_fields", {}))  # a base's come first
        for name in own:
            value = cls.__dict__.get(name, _REQUIRED)  # a bare default is field(default)
            fields[name] = value if isinstance(value, _Field) else field(value)
            if name in cls.__dict__:
                delattr(cls, name)  # an instance's value lives in its __dict__
        cls._fields = fields
        cls._by_name = by_name
        cls._spec = None
        cls._validator = None
        cls.model_config = {"extra": "forbid", **({"title": title} if title else {})}

    @classmethod
    def validate(cls, data: Any) -> Self:
        """`data` as a record; pydantic_core.ValidationError when it does not fit."""
        validator = cls._validator
        if validator is None:
            from pydantic_core import SchemaValidator  # Rule 1: at the first validation

            validator = cls._validator = SchemaValidator(_core(cls))
        out: Self = validator.validate_python(data)
        return out

    @property
    def fields_set(self) -> frozenset[str]:
        """The fields the input gave, as opposed to those left at their defaults."""
        return frozenset(self.__pydantic_fields_set__)

    def values(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The fields by name, in declaration order."""
        values = {n: self.__dict__[n] for n in self._fields}
        return {n: v for n, v in values.items() if v is not None} if exclude_none else values

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle rebuild the record as validation left it; the default
        # would set each slot through __setattr__, which refuses.
        return (_rebuilt, (type(self), dict(self.__dict__), set(self.__pydantic_fields_set__)))


def _rebuilt(cls: type[Record], values: dict[str, Any], given: set[str]) -> Record:
    out = object.__new__(cls)
    for name, value in (("__dict__", values), ("__pydantic_fields_set__", given),
                        ("__pydantic_extra__", None), ("__pydantic_private__", None)):
        object.__setattr__(out, name, value)
    return out


def keys(cls: type[Record]) -> list[str]:
    """The keys a document gives `cls`'s fields by: the alias where there is one."""
    return [f.alias or n for n, f in cls._fields.items()]


def child(cls: type[Record], key: str) -> type[Record] | None:
    """The record class a key of `cls` holds (itself, or inside a list, a dict's values,
    `X | None` or `Annotated`), or None for a key that holds no record or does not exist."""
    for name, (annotation, spec) in _resolve(cls).items():
        if key in (name, spec.alias):
            return _record_in(annotation)
    return None


def json_schema(cls: type[Record], *, by_alias: bool = True) -> JsonValue:
    """The JSON Schema pydantic generates for `cls`'s core schema (Rule 1: the one place
    pydantic itself is imported)."""
    from pydantic.json_schema import GenerateJsonSchema

    out: JsonValue = GenerateJsonSchema(by_alias=by_alias).generate(_core(cls))
    return out


def _record_in(annotation: Any) -> type[Record] | None:
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return annotation
    for arg in typing.get_args(annotation):
        found = _record_in(arg)
        if found is not None:
            return found
    return None


def _resolve(cls: type[Record]) -> _Spec:
    spec = cls._spec
    if spec is None:
        # Each annotation is evaluated in the globals of the module that wrote it, which
        # typing.get_type_hints does not do for a class (a lambda inside an annotation would
        # see the class's namespace as its globals).
        hints: dict[str, Any] = {}
        for base in reversed(cls.__mro__):
            if issubclass(base, Record) and base is not Record:
                hints.update(inspect.get_annotations(base, eval_str=True))
        spec = cls._spec = {n: (hints[n], f) for n, f in cls._fields.items()}
    return spec


def _ref(cls: type[Record]) -> str:
    # pydantic's form: its JSON Schema generator names a $defs entry from the part before ':'.
    return f"{cls.__module__}.{cls.__qualname__}:{id(cls)}"


def _core(root: type[Record]) -> core_schema.CoreSchema:
    """The core schema of `root` and every record it holds, each defined once."""
    from pydantic_core import core_schema  # Rule 1: built on the first validation only

    defs: dict[type[Record], core_schema.CoreSchema] = {}
    pending = [root]
    while pending:
        cls = pending.pop()
        if cls in defs:
            continue
        fields: dict[str, core_schema.ModelField] = {}
        for name, (annotation, spec) in _resolve(cls).items():
            try:
                inner = _translate(annotation, dict(spec.constraints), pending)
            except TypeError as exc:
                raise TypeError(f"{cls.__qualname__}.{name}: {exc}") from None
            if spec.default_factory is not None:
                inner = core_schema.with_default_schema(inner,
                                                        default_factory=spec.default_factory)
            elif spec.default is not _REQUIRED:
                inner = core_schema.with_default_schema(inner, default=spec.default)
            updates = {"description": spec.description} if spec.description else None
            fields[name] = core_schema.model_field(
                inner, validation_alias=spec.alias, serialization_alias=spec.alias,
                metadata={"pydantic_js_updates": updates} if updates else None)
        config: core_schema.CoreConfig = {"extra_fields_behavior": "forbid",
                                          "title": cls.__name__}
        if cls._by_name:
            config["validate_by_name"] = config["validate_by_alias"] = True
        defs[cls] = core_schema.model_schema(
            cls, core_schema.model_fields_schema(fields, model_name=cls.__name__),
            config=config, ref=_ref(cls))
    return core_schema.definitions_schema(core_schema.definition_reference_schema(_ref(root)),
                                          list(defs.values()))


_SCALARS: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", Any: "any"}
"""The core schema type of each scalar: `{"type": NAME}` is what core_schema.str_schema() and
its siblings return when given no options."""


def _translate(tp: Any, constraints: dict[str, Any],
               pending: list[type[Record]]) -> core_schema.CoreSchema:
    """`tp` as pydantic's core schema; `constraints` are consumed by the scalar they reach
    (popped, so a constraint nothing takes is an error)."""
    out = _translate_inner(tp, constraints, pending)
    if constraints:
        raise TypeError(f"{', '.join(constraints)} cannot constrain {tp!r}")
    return out


def _translate_inner(tp: Any, constraints: dict[str, Any],
                     pending: list[type[Record]]) -> core_schema.CoreSchema:
    from pydantic_core import core_schema

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        out = _translate_inner(args[0], constraints, pending)
        for mark in args[1:]:
            out = _apply(mark, out)
        return out
    if tp in _SCALARS:
        base: dict[str, Any] = {"type": _SCALARS[tp]}
        for key in [k for k in constraints if k in _ALLOWED.get(tp, ())]:
            base[key] = constraints.pop(key)
        return typing.cast(core_schema.CoreSchema, base)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return core_schema.nullable_schema(_translate_inner(rest[0], constraints, pending))
        raise TypeError(f"only `X | None` unions are supported, not {tp!r}")
    if origin is Literal:
        return core_schema.literal_schema(list(args))
    if origin is list:
        return core_schema.list_schema(_translate(args[0], {}, pending))
    if origin is dict:
        return core_schema.dict_schema(_translate(args[0], {}, pending),
                                       _translate(args[1], {}, pending))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return core_schema.tuple_schema([_translate(args[0], {}, pending)],
                                            variadic_item_index=0)
        return core_schema.tuple_schema([_translate(a, {}, pending) for a in args])
    if isinstance(tp, type) and issubclass(tp, Record):
        pending.append(tp)
        return core_schema.definition_reference_schema(_ref(tp))
    raise TypeError(f"no validator for {tp!r}")


_ALLOWED: dict[Any, tuple[str, ...]] = {str: ("min_length", "pattern"), int: ("ge", "le"),
                                        float: ("ge", "le")}


def _apply(mark: Any, schema: core_schema.CoreSchema) -> core_schema.CoreSchema:
    from pydantic_core import core_schema

    if isinstance(mark, _Strict):
        return typing.cast(core_schema.CoreSchema, {**schema, "strict": True})
    if isinstance(mark, Before):
        return core_schema.no_info_before_validator_function(mark.check, schema)
    if isinstance(mark, After):
        return core_schema.no_info_after_validator_function(mark.check, schema)
    if isinstance(mark, JsonSchema):
        def js(_schema: Any, _handler: Any, mark: JsonSchema = mark) -> JsonValue:
            return mark.build()
        return typing.cast(core_schema.CoreSchema, {
            **schema, "metadata": {"pydantic_js_annotation_functions": [js]}})
    raise TypeError(f"unknown annotation {mark!r}")
