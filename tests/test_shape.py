"""policy/shape.py: file formats as records that pydantic-core validates directly.

The records replaced pydantic `BaseModel`s, so the promise is "what pydantic did, without
its start-up cost": each format below is written both ways and the two must accept the same
inputs, build the same values, report the same errors at the same places, and generate the
same JSON Schema."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import StrictBool as PStrictBool
from pydantic import StrictInt as PStrictInt
from pydantic import ValidationError as PValidationError
from pydantic_core import ValidationError

from taps_post.policy import shape
from taps_post.policy.shape import After, Before, Record, StrictBool, StrictInt, field


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _shout(value: str) -> str:
    if value == "no":
        raise ValueError("no is not an answer")
    return value.upper()


# --- one format, written as records ----------------------------------------------------------

class Inner(Record):
    """A nested record."""

    name: str = field(min_length=1, pattern=r"^[a-z]+$")
    level: StrictInt | None = field(None, ge=0, le=9)


class Outer(Record, title="outer format", by_name=True):
    """Every type form the formats use."""

    kind: Literal["a", "b"]
    flag: StrictBool = False
    ratio: float | None = field(None, ge=0, le=1, description="a share")
    count: int = 0
    tags: Annotated[tuple[str, ...], Before(_listed)] = field(default_factory=tuple)
    pair: tuple[int, int] | None = None
    shout: Annotated[str | None, After(lambda v: v if v is None else _shout(v))] = None
    inner: Inner | None = None
    inners: list[Inner] = field(default_factory=list)
    by_key: dict[str, list[Inner]] = field(default_factory=dict)
    set_: dict[str, Any] = field(default_factory=dict, alias="set")


# --- the same format, written as pydantic models ---------------------------------------------

class PInner(BaseModel):
    """A nested record."""

    model_config = ConfigDict(extra="forbid", title="Inner")
    name: str = Field(..., min_length=1, pattern=r"^[a-z]+$")
    level: PStrictInt | None = Field(None, ge=0, le=9)


class POuter(BaseModel):
    """Every type form the formats use."""

    model_config = ConfigDict(extra="forbid", title="outer format", populate_by_name=True)
    kind: Literal["a", "b"]
    flag: PStrictBool = False
    ratio: float | None = Field(None, ge=0, le=1, description="a share")
    count: int = 0
    tags: Annotated[tuple[str, ...], BeforeValidator(_listed)] = Field(default_factory=tuple)
    pair: tuple[int, int] | None = None
    shout: Annotated[str | None, AfterValidator(lambda v: v if v is None else _shout(v))] = None
    inner: PInner | None = None
    inners: list[PInner] = Field(default_factory=list)
    by_key: dict[str, list[PInner]] = Field(default_factory=dict)
    set_: dict[str, Any] = Field(default_factory=dict, alias="set")


def _plain(value: Any) -> Any:
    """A record or a model as nested plain data, to compare the two."""
    if isinstance(value, Record):
        return {k: _plain(v) for k, v in value.values().items()}
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _outcome(validate: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", _plain(validate(data))
    except (ValidationError, PValidationError) as exc:
        # A message may name the nested class: ours is Inner, the model PInner.
        return "error", [(e["type"], e["loc"], e["msg"].replace("PInner", "Inner"))
                         for e in exc.errors(include_url=False)]


_junk = st.none() | st.booleans() | st.integers(-3, 12) | st.floats(-1, 2) | st.text(max_size=3)
_names = st.sampled_from(["ab", "", "A", "x1", "ok"]) | _junk
_inner = st.fixed_dictionaries({"name": _names}, optional={"level": _junk, "extra": _junk}) | _junk
_outer = st.fixed_dictionaries(
    {"kind": st.sampled_from(["a", "b", "c"]) | _junk},
    optional={
        "flag": _junk, "ratio": _junk, "count": _junk | st.sampled_from(["5", 5.0, 5.5]),
        "tags": _junk | st.lists(_junk, max_size=3), "pair": _junk | st.lists(_junk, max_size=3),
        "shout": st.sampled_from(["no", "yes"]) | _junk, "inner": _inner,
        "inners": st.lists(_inner, max_size=2) | _junk,
        "by_key": st.dictionaries(st.text(max_size=2), st.lists(_inner, max_size=2), max_size=2)
        | _junk,
        "set": st.dictionaries(st.text(max_size=2), _junk, max_size=2) | _junk,
        "set_": _junk, "unknown": _junk,
    })


@settings(max_examples=400)
@given(_outer)
def test_records_accept_and_refuse_exactly_what_pydantic_models_do(data: dict[str, Any]) -> None:
    assert _outcome(Outer.validate, data) == _outcome(POuter.model_validate, data)


def test_records_generate_the_json_schema_pydantic_models_do() -> None:
    ours = shape.json_schema(Outer)
    # The nested model's $defs key follows the class name; ours is Inner, theirs PInner.
    theirs = json.dumps(POuter.model_json_schema(by_alias=True)).replace("PInner", "Inner")
    assert ours == json.loads(theirs)


def test_fields_set_says_what_the_input_gave() -> None:
    rec = Outer.validate({"kind": "a", "count": 3})
    assert rec.fields_set == {"kind", "count"}
    assert Outer.validate({"kind": "a", "set": {}}).fields_set == {"kind", "set_"}


def test_an_aliased_field_takes_its_python_name_only_with_by_name() -> None:
    assert Outer.validate({"kind": "a", "set_": {"k": 1}}).set_ == {"k": 1}

    class Strict(Record):
        set_: dict[str, Any] = field(default_factory=dict, alias="set")

    with pytest.raises(ValidationError, match="set_"):
        Strict.validate({"set_": {}})


def test_a_record_is_immutable_and_compared_by_value() -> None:
    a = Inner.validate({"name": "ab", "level": 2})
    b = Inner.validate({"name": "ab", "level": 2})
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != Inner.validate({"name": "ab"})
    assert a != PInner.model_validate({"name": "ab", "level": 2})  # another type, never equal
    assert repr(a) == "Inner(name='ab', level=2)"
    with pytest.raises(AttributeError, match="Inner is immutable"):
        a.name = "cd"
    with pytest.raises(AttributeError, match="Inner is immutable"):
        del a.level
    assert a.values() == {"name": "ab", "level": 2}
    assert Inner.validate({"name": "ab"}).values(exclude_none=True) == {"name": "ab"}


def test_a_record_copies_deep_copies_and_pickles_equal() -> None:
    rec = Outer.validate({"kind": "b", "inners": [{"name": "ab"}], "set": {"k": [1]}})
    for again in (copy.copy(rec), copy.deepcopy(rec), pickle.loads(pickle.dumps(rec))):
        assert again == rec and type(again) is Outer
        assert again.fields_set == rec.fields_set
        with pytest.raises(AttributeError):
            again.kind = "a"
    assert copy.deepcopy(rec).set_ is not rec.set_


def test_keys_and_child_follow_aliases_and_containers() -> None:
    assert shape.keys(Outer)[-1] == "set"
    assert "set_" not in shape.keys(Outer)
    assert shape.child(Outer, "inner") is Inner        # X | None
    assert shape.child(Outer, "inners") is Inner       # list[X]
    assert shape.child(Outer, "by_key") is Inner       # dict[str, list[X]]
    assert shape.child(Outer, "set") is None           # holds no record
    assert shape.child(Outer, "missing") is None


def test_a_base_records_fields_come_first() -> None:
    class Base(Record):
        a: int

    class Child(Base):
        b: int = 0

    assert shape.keys(Child) == ["a", "b"]
    assert Child.validate({"a": 1}).values() == {"a": 1, "b": 0}
    with pytest.raises(ValidationError, match="Field required"):
        Child.validate({"b": 1})


def test_a_type_the_translator_does_not_know_is_refused_by_name() -> None:
    class Odd(Record):
        when: set[str]

    with pytest.raises(TypeError, match=r"Odd.when: no validator for set\[str\]"):
        Odd.validate({"when": []})

    class Union(Record):
        value: int | str

    with pytest.raises(TypeError, match=r"Union.value: only `X \| None` unions"):
        Union.validate({"value": 1})


def test_a_constraint_nothing_takes_is_refused() -> None:
    class Misplaced(Record):
        items: list[str] = field(default_factory=list, ge=0)

    with pytest.raises(TypeError, match=r"Misplaced\.items: ge cannot constrain"):
        Misplaced.validate({})


def test_an_annotation_is_evaluated_in_its_modules_globals() -> None:
    # A lambda in an annotation must see this module's names (here `_shout`), not the class's.
    assert Outer.validate({"kind": "a", "shout": "yes"}).shout == "YES"
    with pytest.raises(ValidationError, match="no is not an answer"):
        Outer.validate({"kind": "a", "shout": "no"})


def test_validating_imports_no_pydantic_and_schemas_do() -> None:
    code = ("import sys\n"
            "from taps_post.policy.model import PolicyDocument\n"
            "from taps_post.decision.envfile import EnvDocument\n"
            "PolicyDocument.validate({'version': 1, 'layer': 'app', 'rules': [{'id': 'r'}]})\n"
            "EnvDocument.validate({'interfaces': [{'name': 'eth0'}]})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))\n"
            "from taps_post.policy import shape\n"
            "shape.json_schema(PolicyDocument)\n"
            "print('pydantic.json_schema' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "True"


def test_the_formats_annotations_are_objects_not_strings() -> None:
    """shape Rule 1: no format module defers its annotations (each string would be compiled
    by eval at every start); this module's own strings show that strings still work."""
    import inspect

    from taps_post import schemas
    from taps_post.decision import envfile
    from taps_post.policy import model

    for module in (model, envfile, schemas):
        records = [c for c in vars(module).values() if isinstance(c, type)
                   and issubclass(c, Record) and c.__module__ == module.__name__]
        assert records, module
        for cls in records:
            found = inspect.get_annotations(cls)
            assert not any(isinstance(a, str) for a in found.values()), cls
    assert all(isinstance(a, str) for a in inspect.get_annotations(Inner).values())
