"""Fuzz: the QUIC envelope (taps_post.stacks.quic.wire), pure byte layouts.

Contract: a varint encodes every value 0 to 2**62 - 1 in the shortest of 1, 2, 4 or 8 bytes
and `split_datagram` reads it back with the rest untouched; `split_datagram` and `split_uni`
take any bytes a peer sends and return None or a value, never raise.
"""

from __future__ import annotations

from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from taps_post.stacks.quic.wire import (
    datagram_fits,
    datagram_frame_size,
    datagram_payload,
    encode_varint,
    split_datagram,
    split_uni,
    uni_payload,
)

VARINT_MAX = 2**62 - 1
_edges = st.sampled_from((0, 0x3F, 0x40, 0x3FFF, 0x4000, 0x3FFFFFFF, 0x40000000, VARINT_MAX))
varints = st.one_of(_edges, st.integers(0, VARINT_MAX))


@fuzz(500)
@given(value=varints, tail=st.binary(max_size=20))
def test_fuzz_varint_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_varint(value)
    size = 1 if value < 2**6 else 2 if value < 2**14 else 4 if value < 2**30 else 8
    assert len(encoded) == size
    assert split_datagram(encoded + tail) == (value, tail)
    assert split_datagram(datagram_payload(value, tail)) == (value, tail)
    assert datagram_frame_size(len(tail)) == 1 + len(encode_varint(len(tail))) + len(tail)


@fuzz(100)
@given(value=st.one_of(st.integers(VARINT_MAX + 1, 2**80), st.integers(-(2**70), -1)))
def test_fuzz_varint_out_of_range_is_a_value_error(value: int) -> None:
    try:
        encode_varint(value)
    except ValueError:
        return
    raise AssertionError(f"{value} encoded")


@fuzz(500)
@given(data=st.one_of(st.binary(max_size=24), st.binary(max_size=2).map(lambda b: b"\xff" + b)))
def test_fuzz_split_garbage_never_raises(data: bytes) -> None:
    got = split_datagram(data)
    if got is not None:
        stream_id, rest = got
        assert 0 <= stream_id <= VARINT_MAX and len(rest) < len(data)
        assert encode_varint(stream_id) + rest == data or data[0] >> 6  # non-minimal ok
    owned = split_uni(data)
    assert owned is None or (owned[0] < 2**64 and owned[1] == data[8:])
    assert (split_uni(memoryview(data)) is None) == (owned is None)


@fuzz(300)
@given(owner=st.integers(0, 2**64 - 1), frame=st.binary(max_size=40))
def test_fuzz_uni_round_trip(owner: int, frame: bytes) -> None:
    assert split_uni(uni_payload(owner, frame)) == (owner, frame)


@fuzz(200)
@given(size=st.integers(0, 2**20), peer=st.one_of(st.none(), st.integers(0, 2**20)))
def test_fuzz_datagram_fits_is_consistent(size: int, peer: int | None) -> None:
    fits = datagram_fits(size, peer)
    if fits:
        assert peer is not None and datagram_frame_size(size) <= peer and size <= 1100
