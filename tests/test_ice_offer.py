"""taps_post.ice.offer: the offer two rendezvous peers exchange (pure data, no sockets).

Every malformed field is refused with OfferError naming it; anything at all given to
`Offer.from_dict` (it comes from the network) either gives an Offer that round-trips or
raises OfferError, never another exception (hypothesis, on arbitrary JSON and on valid
offers with a field replaced by arbitrary JSON).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taps_post.ice import MAX_CANDIDATES, MAX_OFFER_BYTES, Offer, OfferError
from taps_post.ice.offer import MAX_CANDIDATE_CHARS, candidate_problem

FP = ":".join(["AB"] * 32)
HOST = "16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 38799 typ host"
SRFLX = ("9f1b0c 1 udp 1694498815 198.18.0.7 40000 typ srflx raddr 198.18.1.2 rport 5000 "
         "generation 0")


def valid(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"identity": "alice.example", "session": "0123456789abcdef" * 2,
                         "ufrag": "abcd", "pwd": "A" * 22, "candidates": [HOST, SRFLX],
                         "fingerprint": FP, "created": 1_700_000_000.5}
    d.update(changes)
    return d


def test_round_trip_and_json() -> None:
    offer = Offer.from_dict(valid())
    assert offer.candidates == (HOST, SRFLX)
    assert Offer.from_dict(offer.to_dict()) == offer
    assert Offer.from_dict(json.loads(json.dumps(offer.to_dict()))) == offer


def test_create_makes_a_fresh_session_now() -> None:
    before = time.time()
    a = Offer.create(identity="bob", ufrag="wxyz", pwd="b" * 22, candidates=[HOST],
                     fingerprint=FP.lower())
    b = Offer.create(identity="bob", ufrag="wxyz", pwd="b" * 22, candidates=[HOST],
                     fingerprint=FP)
    assert a.session != b.session and len(a.session) == 32
    assert before <= a.created <= time.time()
    assert a.fingerprint == FP  # one spelling, as Certificate.fingerprint


def test_repr_hides_the_password() -> None:
    offer = Offer.from_dict(valid(pwd="Secret" + "x" * 20))
    assert "Secret" not in repr(offer) and "Secret" not in str(offer)
    assert "pwd='***'" in repr(offer)


def test_unknown_fields_are_ignored_and_ints_are_times() -> None:
    offer = Offer.from_dict(valid(extra={"a": [1, 2]}, created=5))
    assert offer.created == 5.0 and isinstance(offer.created, float)
    assert "extra" not in offer.to_dict()


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"identity": 7}, "'identity': a string, not int"),
    ({"identity": ""}, "'identity'"),
    ({"identity": "a b"}, "not a DNS-like name"),
    ({"identity": "198.18.0.1"}, "is an IP address"),
    ({"identity": "bad..name"}, "'identity'"),
    ({"session": "ABCDEF" * 6}, "'session'"),
    ({"session": "0" * 31}, "32 lowercase hex digits"),
    ({"ufrag": "abc"}, "'ufrag'"),
    ({"ufrag": "a" * 257}, "'ufrag'"),
    ({"ufrag": "ab:cd"}, "ice-chars"),
    ({"pwd": "A" * 21}, "'pwd': 21 characters"),
    ({"pwd": None}, "'pwd': a string, not NoneType"),
    ({"candidates": "x"}, "'candidates': a list of strings, not str"),
    ({"candidates": [HOST] * (MAX_CANDIDATES + 1)}, f"at most {MAX_CANDIDATES}"),
    ({"candidates": [3]}, "item 0: a string, not int"),
    ({"candidates": [HOST + " x" * MAX_CANDIDATE_CHARS]}, f"at most {MAX_CANDIDATE_CHARS}"),
    ({"candidates": ["1 1 udp 1 127.0.0.1 9 host"]}, "not a candidate line"),
    ({"candidates": ["1 1 udp 1 127.0.0.1 9 type host"]}, "no 'typ TYPE'"),
    ({"candidates": ["1 1 udp 1 127.0.0.1 99999 typ host"]}, "port '99999'"),
    ({"candidates": ["1 0 udp 1 127.0.0.1 9 typ host"]}, "component '0'"),
    ({"candidates": ["1 1 udp -5 127.0.0.1 9 typ host"]}, "priority '-5'"),
    ({"candidates": ["f:o 1 udp 1 127.0.0.1 9 typ host"]}, "foundation"),
    ({"candidates": ["1 1 udp 1 127.0.0.1 9 typ host raddr"]}, "without a value"),
    ({"candidates": ["1  1 udp 1 127.0.0.1 9 typ host"]}, "single spaces"),
    ({"candidates": ["1 1 udp 1 127.0.0.1 9 typ host\nx"]}, "not a candidate line"),
    ({"fingerprint": "AB:CD"}, "'fingerprint'"),
    ({"fingerprint": FP + ":00"}, "'fingerprint'"),
    ({"created": "now"}, "'created'"),
    ({"created": True}, "'created'"),
    ({"created": -1.0}, "'created'"),
    ({"created": float("inf")}, "plain JSON"),
])
def test_malformed_fields_are_named(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(OfferError) as caught:
        Offer.from_dict(valid(**changes))
    assert fragment in str(caught.value)
    assert "A" * 21 not in str(caught.value)  # the password is never shown


@pytest.mark.parametrize("missing", ["identity", "session", "ufrag", "pwd", "candidates",
                                     "fingerprint", "created"])
def test_missing_fields_are_named(missing: str) -> None:
    d = valid()
    del d[missing]
    with pytest.raises(OfferError, match=f"missing '{missing}'"):
        Offer.from_dict(d)


@pytest.mark.parametrize("data", [None, [], "offer", 3, b"{}"])
def test_not_an_object(data: object) -> None:
    with pytest.raises(OfferError, match="JSON object"):
        Offer.from_dict(data)


def test_not_json_and_too_deep() -> None:
    with pytest.raises(OfferError, match="plain JSON"):
        Offer.from_dict(valid(extra={1, 2}))
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(OfferError, match="plain JSON"):
        Offer.from_dict(valid(extra=deep))


def test_size_bound_checked_first() -> None:
    line = "1 1 udp 1 127.0.0.1 9 typ host" + " x y" * 100
    big = valid(candidates=[line] * MAX_CANDIDATES)
    assert len(json.dumps(big)) > MAX_OFFER_BYTES
    with pytest.raises(OfferError, match=f"over {MAX_OFFER_BYTES}"):
        Offer.from_dict(big)
    with pytest.raises(OfferError, match=f"over {MAX_OFFER_BYTES}"):
        Offer.from_dict(valid(extra="x" * MAX_OFFER_BYTES))
    with pytest.raises(OfferError, match=f"over {MAX_OFFER_BYTES}"):  # the constructor too
        Offer(**{**valid(), "candidates": tuple(big["candidates"])})


def test_candidate_problem_shapes() -> None:
    assert candidate_problem(HOST) is None
    assert candidate_problem("candidate:" + SRFLX) is None
    assert candidate_problem(None) == "a string, not NoneType"
    assert "not a number" in (candidate_problem("1 1 udp 1 h 0x1 typ host") or "x")


# ---- hypothesis ------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=40), st.sampled_from([HOST, SRFLX, FP, "abcd", "A" * 22]))
json_like = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=20)


def _never_crashes(data: object) -> None:
    try:
        offer = Offer.from_dict(data)
    except OfferError as exc:
        assert str(exc)
        return
    assert Offer.from_dict(offer.to_dict()) == offer
    assert Offer.from_dict(json.loads(json.dumps(offer.to_dict()))) == offer


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=json_like)
def test_arbitrary_json_returns_an_offer_or_offer_error(data: object) -> None:
    _never_crashes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(["identity", "session", "ufrag", "pwd", "candidates",
                              "fingerprint", "created", "extra"]),
       value=json_like, item=st.one_of(st.none(), json_like))
def test_one_field_replaced_by_junk(field: str, value: Any, item: Any) -> None:
    d = valid()
    d[field] = value
    if item is not None:
        d["candidates"] = [*d["candidates"], item] if field != "candidates" else value
    _never_crashes(d)


_ice = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/",
               min_size=1, max_size=60)


@st.composite
def offers(draw: st.DrawFn) -> dict[str, Any]:
    label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
    lines = st.builds(
        lambda f, c, p, port, kind: f"{f} {c} udp {p} 198.18.0.1 {port} typ {kind}",
        st.text(alphabet="abcdef0123456789", min_size=1, max_size=32), st.integers(1, 256),
        st.integers(0, 2**32 - 1), st.integers(0, 65535),
        st.sampled_from(["host", "srflx", "relay", "prflx"]))
    return valid(identity=".".join(draw(st.lists(label, min_size=1, max_size=3))) + ".x",
                 session=draw(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)),
                 ufrag=draw(_ice.filter(lambda s: len(s) >= 4)),
                 pwd=draw(_ice.filter(lambda s: len(s) >= 22)),
                 candidates=draw(st.lists(lines, max_size=MAX_CANDIDATES)),
                 created=draw(st.floats(0, 4e9)))


@settings(max_examples=100, deadline=None)
@given(d=offers())
def test_valid_offers_round_trip(d: dict[str, Any]) -> None:
    offer = Offer.from_dict(d)
    assert offer.to_dict() == {**d, "candidates": list(d["candidates"])}
    assert Offer.from_dict(offer.to_dict()) == offer
