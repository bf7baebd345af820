"""Fuzz: the policy loader (taps_post.policy.load, policy.yamlpos) and the decision after it.

Contract (load.py, Rule 1): a document, as YAML text or as Python data, loads whole or is
refused whole with InputError, every diagnostic one printable `file:line:col: what` line (a
dict: `<layer>: path: what`); never another exception and never a half-loaded document. A
document that loads can be decided against: explain() on it raises nothing, or InputError /
PolicyError for a problem it names.
"""

from __future__ import annotations

import copy
import itertools
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fuzzing import check_input_error, fuzz
from hypothesis import event, given
from hypothesis import strategies as st

import taps_post as tp
from strategies import KEYS, junk, policy_doc
from taps_post import InputError
from taps_post.policy.load import load_document, load_layer

LAYERS = ("system", "app", "carrier")
ENV = {"interfaces": [{"name": "eth0", "type": "ethernet", "addresses": ["198.18.0.1"]}],
       "dns": {"example.com": ["198.18.1.1"]}}

_TOKENS = [*"{}[]:,-#&*!|>'\"%@?. \t\n\n\n", "  ", "    ", "version: 1", "layer: ", "system",
           "app", "rules:", "- id: ", "a", "b", "set:", "when:", "host: ", "secure: require",
           "racing.attemptDelay: 5", "use: [", "reliable-message", "enforce: true",
           "priority: 2", "interfaces:", "match:", "name: wwan*", "metered: true", "<<: *x",
           "&x", "*x", "!!int", "!!str", "!!binary", "~", "null", "1e30", "0x10", "0o17",
           ".inf", "\x00", "\x85", "\u2028", "\ufeff", "\udcff", "é"]
yamlish = st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join)


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="taps-fuzz-policy-") as d:
        yield d


_COUNTER = itertools.count()


def _whole(pf: Any, data: Any) -> None:
    """Loaded means every rule, in order, each with a statement per key it sets."""
    assert isinstance(data, dict)
    rules = data.get("rules") or []
    assert [r.id for r in pf.rules] == [r["id"] for r in rules]


def _decide(layer: str, spec: Any) -> None:
    try:
        tp.explain("https://example.com", system=spec if layer == "system" else [],
                   app=spec if layer == "app" else None,
                   carrier=spec if layer == "carrier" else None, env=ENV)
    except (InputError, tp.PolicyError) as exc:
        event(f"decide: {type(exc).__name__}")


def _load_text(text: str, layer: str, directory: str) -> None:
    path = os.path.join(directory, f"p{next(_COUNTER)}.yaml")  # new name: never cached
    with open(path, "wb") as fh:
        fh.write(text.encode("utf-8", "surrogateescape"))
    try:
        (pf,) = load_layer(path, layer)
    except InputError as exc:
        event("text: rejected")
        check_input_error(exc, path, text)
    else:
        event("text: loaded")
        _whole(pf, yaml.safe_load(text))
        _decide(layer, path)
    finally:
        os.unlink(path)


@fuzz(300)
@given(text=yamlish, layer=st.sampled_from(LAYERS))
def test_fuzz_policy_yamlish_text(scratch: str, text: str, layer: str) -> None:
    _load_text(text, layer, scratch)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, Any]:
    layer = draw(st.sampled_from(LAYERS))
    doc: Any = draw(policy_doc(layer, "fuzz", "f", KEYS, facts=True))
    for _ in range(draw(st.integers(0, 3))):
        target = doc
        for step in draw(st.lists(st.sampled_from(("rules", 0, "set", "when", "use", "id",
                                                   "interfaces", "match")), max_size=4)):
            nxt = target.get(step) if isinstance(target, dict) else (
                target[step] if isinstance(target, list) and isinstance(step, int)
                and step < len(target) else None)
            if nxt is None:
                break
            target = nxt
        if isinstance(target, dict):
            target[draw(st.sampled_from(("id", "set", "when", "x", "racing.attemptDelay",
                                         "layer", "secure", "\n", "a\x00")))] = draw(junk(5))
        elif isinstance(target, list):
            target.append(draw(junk(5)))
    return layer, doc


@fuzz(300)
@given(doc=documents())
def test_fuzz_policy_documents(scratch: str, doc: tuple[str, Any]) -> None:
    layer, body = doc
    before = copy.deepcopy(body)
    try:
        pf = load_document(body, layer=layer, source=f"<{layer}>")
    except InputError as exc:
        event("dict: rejected")
        check_input_error(exc, f"<{layer}>")
    else:
        event("dict: loaded")
        _whole(pf, body)
        _decide(layer, body)
    assert body == before, "the loader changed the document it was given"
    try:
        text = yaml.safe_dump(body, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    _load_text(text, layer, scratch)
