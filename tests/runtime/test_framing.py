"""Framers are sans-I/O: arbitrary byte streams split at arbitrary points, no sockets.

Properties: no framer crashes (only DeframingError), messages round-trip whatever the split,
`max_size` is enforced on receive without buffering more than max_size + the framing overhead,
and `buffered()` hands over exactly the partial bytes.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taps_post.core.framing import (
    DeframingError,
    Framer,
    LengthPrefixFramer,
    LineFramer,
    RawFramer,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Delimiters with no border (no proper prefix that is also a suffix): for these a message
# without the delimiter always round-trips. Self-overlapping ones are refused by encode().
PLAIN_DELIMITERS = (b"\n", b"\r\n", b"\x00", b"<|>")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length), in order, empty pieces kept."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def held(framer: Framer) -> int:
    """How many bytes the framer holds, without disturbing it (buffered() is destructive)."""
    return len(copy.deepcopy(framer).buffered())


def feed_all(framer: Framer, pieces: list[bytes], bound: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out.extend(framer.feed(piece))
        if bound is not None:
            assert held(framer) <= bound
    return out


cuts = st.lists(st.integers(0, 10_000), max_size=12)


def test_framers_satisfy_the_protocol_and_fresh_drops_state() -> None:
    for f in (LengthPrefixFramer(100), LineFramer(b"\r\n", 100), RawFramer(100)):
        assert isinstance(f, Framer)
        f.feed(b"\x00\x00\x00")  # something partial for the stateful ones
        g = f.fresh()
        assert type(g) is type(f) and g.max_size == 100 and g.buffered() == b""
    line = LineFramer(b"--", 7, strip=b"")
    clone = line.fresh()
    assert clone.encode(b"ab") == b"ab--" and clone.max_size == 7


# ---- never crash ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=400), cuts, st.integers(0, 64))
def test_length_prefix_never_crashes(stream: bytes, where: list[int], max_size: int) -> None:
    f = LengthPrefixFramer(max_size)
    try:
        for m in feed_all(f, split(stream, where), bound=max_size + 4):
            assert len(m) <= max_size
        assert f.eof() == []
    except DeframingError:
        pass


@FAST
@given(st.binary(max_size=400), cuts, st.integers(0, 64), st.sampled_from(
    [b"\n", b"\r\n", b"==", b"abab", b"\x00"]), st.sampled_from([b"\r", b""]))
def test_line_never_crashes(stream: bytes, where: list[int], max_size: int, delim: bytes,
                            strip: bytes) -> None:
    f = LineFramer(delim, max_size, strip=strip)
    try:
        for m in feed_all(f, split(stream, where), bound=max_size + len(delim)):
            assert len(m) <= max_size
            assert delim not in m
        f.eof()
    except DeframingError:
        pass


@FAST
@given(st.binary(max_size=400), cuts)
def test_raw_never_crashes_and_keeps_the_stream(stream: bytes, where: list[int]) -> None:
    f = RawFramer()
    out = feed_all(f, split(stream, where))
    assert b"".join(out) == stream
    assert all(out)  # no empty messages from empty reads
    assert f.eof() == [] and f.buffered() == b""


# ---- round trips ---------------------------------------------------------------------------


@FAST
@given(st.lists(st.binary(max_size=80), max_size=12), cuts)
def test_length_prefix_round_trip(messages: list[bytes], where: list[int]) -> None:
    enc = LengthPrefixFramer(80)
    stream = b"".join(enc.encode(m) for m in messages)
    dec = LengthPrefixFramer(80)
    assert feed_all(dec, split(stream, where), bound=80 + 4) == messages
    assert dec.eof() == [] and dec.buffered() == b""


@FAST
@given(st.data(), st.sampled_from(PLAIN_DELIMITERS), cuts)
def test_line_round_trip_without_strip(data: st.DataObject, delim: bytes,
                                       where: list[int]) -> None:
    messages = data.draw(st.lists(st.binary(max_size=40).filter(lambda m: delim not in m),
                                  max_size=12))
    enc = LineFramer(delim, 40, strip=b"")
    stream = b"".join(enc.encode(m) for m in messages)
    dec = LineFramer(delim, 40, strip=b"")
    assert feed_all(dec, split(stream, where), bound=40 + len(delim)) == messages
    assert dec.eof() == [] and dec.buffered() == b""


@FAST
@given(st.lists(st.binary(max_size=40).filter(lambda m: b"\n" not in m
                                              and not m.endswith(b"\r")), max_size=12), cuts)
def test_line_round_trip_default_crlf_tolerant(messages: list[bytes], where: list[int]) -> None:
    enc = LineFramer()
    stream = b"".join(enc.encode(m) for m in messages)
    dec = LineFramer(max_size=40)
    assert feed_all(dec, split(stream, where)) == messages


def test_line_strips_cr_of_crlf_lines() -> None:
    assert LineFramer().feed(b"one\r\ntwo\n") == [b"one", b"two"]


def test_line_default_round_trips_a_message_ending_in_cr() -> None:
    f = LineFramer()
    try:
        wire = f.encode(b"a\r")
    except ValueError:
        return  # refusing what cannot round-trip is fine too
    assert LineFramer().feed(wire) == [b"a\r"]


def test_line_self_overlapping_delimiter_round_trip() -> None:
    f = LineFramer(b"==", strip=b"")
    try:
        wire = f.encode(b"a=")
    except ValueError:
        return
    dec = LineFramer(b"==", strip=b"")
    assert dec.feed(wire) == [b"a="] and dec.buffered() == b""


@FAST
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=12), cuts)
def test_raw_round_trip_as_a_stream(messages: list[bytes], where: list[int]) -> None:
    enc = RawFramer()
    stream = b"".join(enc.encode(m) for m in messages)
    assert b"".join(feed_all(RawFramer(), split(stream, where))) == stream


# ---- max_size on receive -------------------------------------------------------------------


def test_length_prefix_refuses_at_the_header_before_buffering() -> None:
    big = LengthPrefixFramer(1 << 30).encode(b"x" * 101)
    f = LengthPrefixFramer(100)
    with pytest.raises(DeframingError, match="maxSize"):
        f.feed(big[:4])  # the header alone is enough to refuse
    # A 4 GiB announcement is refused the same way (0xFFFFFFFF itself announces a control
    # frame, core/framing.py Rule 4, so the largest length is one less).
    with pytest.raises(DeframingError, match="maxSize"):
        LengthPrefixFramer(100).feed(b"\xff\xff\xff\xfe")


def test_length_prefix_exact_max_size_is_accepted() -> None:
    f = LengthPrefixFramer(100)
    assert f.feed(f.encode(b"y" * 100)) == [b"y" * 100]
    with pytest.raises(ValueError, match="maxSize"):
        f.encode(b"y" * 101)


@FAST
@given(st.integers(1, 50), cuts)
def test_line_without_delimiter_is_refused_once_over_the_bound(max_size: int,
                                                               where: list[int]) -> None:
    f = LineFramer(b"\r\n", max_size)
    with pytest.raises(DeframingError, match="maxSize"):
        for piece in split(b"z" * (max_size + 200), where):
            f.feed(piece)
            # Never holds more than max_size + the delimiter while it accepts bytes.
            assert held(f) <= max_size + 2


def test_line_over_max_size_with_delimiter_is_refused() -> None:
    f = LineFramer(max_size=3)
    assert f.feed(b"abc\n") == [b"abc"]
    with pytest.raises(DeframingError, match="maxSize"):
        f.feed(b"abcd\n")


def test_line_eof_enforces_max_size() -> None:
    f = LineFramer(max_size=4)
    assert f.feed(b"abcde") == []
    try:
        rest = f.eof()
    except DeframingError:
        return
    assert all(len(m) <= 4 for m in rest)


def test_raw_enforces_max_size_on_receive() -> None:
    f = RawFramer(max_size=4)
    try:
        out = f.feed(b"123456789")
    except DeframingError:
        return
    assert all(len(m) <= 4 for m in out)
    assert b"".join(out) == b"123456789"


# ---- buffered() ----------------------------------------------------------------------------


@FAST
@given(st.lists(st.binary(max_size=30), max_size=5), st.binary(max_size=30), st.integers(0, 33))
def test_length_prefix_buffered_returns_the_partial_bytes(messages: list[bytes], last: bytes,
                                                          keep: int) -> None:
    f = LengthPrefixFramer(30)
    whole = b"".join(f.encode(m) for m in messages)
    partial = f.encode(last)[: min(keep, len(last) + 3)]  # always short of complete
    assert f.feed(whole + partial) == messages
    assert f.buffered() == partial
    assert f.buffered() == b""  # handed over once
    assert f.feed(f.encode(b"next")) == [b"next"]


def test_line_buffered_returns_the_partial_line() -> None:
    f = LineFramer(b"\r\n")
    assert f.feed(b"one\r\ntw") == [b"one"]
    assert f.feed(b"o\r") == []
    assert f.buffered() == b"two\r"
    assert f.buffered() == b""
    assert f.feed(b"\r\nthree\r\n") == [b"", b"three"]  # state really was reset


def test_length_prefix_eof_inside_a_message_is_an_error() -> None:
    f = LengthPrefixFramer()
    f.feed(f.encode(b"abcdef")[:6])
    with pytest.raises(DeframingError, match="inside a message"):
        f.eof()


def test_line_eof_returns_the_unterminated_last_line() -> None:
    f = LineFramer()
    assert f.feed(b"a\nb") == [b"a"]
    assert f.eof() == [b"b"]
    assert f.eof() == []
