"""Fork is a fork request at the peer (issue 9, item 8; draft 2.1), and the control frames it
rides on (core/framing.py, Rule 4).

The framer part is sans-I/O (any split of a stream mixing messages and control frames). The
protocol part runs on real loopback sockets: two taps_post endpoints over tcp and tls, and
plain asyncio / socat peers that do not speak the protocol.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taps_post.core.framing import (
    CONTROL_MAX,
    Control,
    DeframingError,
    FrameTooLargeError,
    LengthPrefixFramer,
    LineFramer,
    RawFramer,
)
from taps_post.errors import ArgumentError, UsageError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# ---- control frames on the length-prefix framer --------------------------------------------

def test_control_frame_wire_format() -> None:
    f = LengthPrefixFramer()
    assert f.encode_control(b"HELLO") == b"\xff\xff\xff\xff\x00\x05HELLO"
    assert f.encode_control(b"") == b"\xff\xff\xff\xff\x00\x00"
    with pytest.raises(ArgumentError):
        f.encode_control(b"x" * (CONTROL_MAX + 1))


def test_control_items_come_back_in_order_and_flag_the_framer() -> None:
    enc = LengthPrefixFramer()
    f = LengthPrefixFramer(max_size=100)
    assert f.control_seen is False
    data = enc.encode(b"a") + enc.encode_control(b"HELLO") + enc.encode(b"b")
    items = f.feed(data)
    assert items == [b"a", b"HELLO", b"b"]
    assert [type(i) for i in items] == [bytes, Control, bytes]
    assert f.control_seen is True
    # feed_with builds messages with `make`, control frames stay Control
    g = LengthPrefixFramer()
    items = g.feed_with(data, lambda mv: ("msg", bytes(mv)))
    assert items == [("msg", b"a"), Control(b"HELLO"), ("msg", b"b")]
    assert type(items[1]) is Control


def test_oversize_still_refused_beside_the_marker() -> None:
    f = LengthPrefixFramer(max_size=10)
    with pytest.raises(FrameTooLargeError):
        f.feed((11).to_bytes(4, "big"))
    huge = LengthPrefixFramer(max_size=0xFFFFFFFF)  # a max_size at the marker still sees it
    assert huge.feed(huge.encode_control(b"X")) == [b"X"]
    assert huge.control_seen
    bad = LengthPrefixFramer()
    with pytest.raises(DeframingError):
        bad.feed(b"\xff\xff\xff\xff" + (CONTROL_MAX + 1).to_bytes(2, "big"))


def test_other_framers_refuse_control_frames() -> None:
    for framer in (LineFramer(), RawFramer()):
        assert framer.control_seen is False
        with pytest.raises(UsageError, match="length-prefix framer"):
            framer.encode_control(b"HELLO")


@FAST
@given(items=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_messages_and_controls_round_trip_whatever_the_split(
        items: list[tuple[bool, bytes]], cuts: list[int]) -> None:
    enc = LengthPrefixFramer()
    data = b"".join(enc.encode_control(p) if ctl else enc.encode(p) for ctl, p in items)
    f = LengthPrefixFramer(max_size=64)
    got: list[bytes] = []
    for piece in _split(data, cuts):
        got += f.feed_with(piece, bytes)
    assert [(type(g) is Control, bytes(g)) for g in got] == items
    assert f.buffered() == b""
    assert f.control_seen == any(ctl for ctl, _ in items)
