"""Fuzz: every deframer in taps_post.core.framing (LengthPrefixFramer, LineFramer, RawFramer).

Contract (the module's Rule 1 and 2): any split of a stream gives the same messages as feeding
it whole; encode() then feed() gives back the messages sent; no message over max_size is ever
returned; a stream that is not valid framing raises DeframingError (FrameTooLargeError
included) and nothing else; `buffered()` hands over exactly the bytes not yet a message.
"""

from __future__ import annotations

from collections.abc import Callable

from fuzzing import fuzz
from hypothesis import assume, event, given
from hypothesis import strategies as st

from taps_post.core.framing import (
    CONTROL_MARK,
    CONTROL_MAX,
    Control,
    LengthPrefixFramer,
    LineFramer,
    RawFramer,
)
from taps_post.errors import DeframingError, MessageTooLargeError

Framer = LengthPrefixFramer | LineFramer | RawFramer

_DELIMS = (b"\n", b"\r\n", b"\x00", b"==", b"abc")
message_framers: st.SearchStrategy[Callable[[], Framer]] = st.one_of(
    st.integers(0, 300).map(lambda m: lambda: LengthPrefixFramer(m)),
    st.tuples(st.sampled_from(_DELIMS), st.integers(0, 300), st.sampled_from((b"\r", b"")))
    .map(lambda a: lambda: LineFramer(a[0], a[1], a[2])),
)
"""The framers that keep message boundaries."""
framers = st.one_of(message_framers, st.integers(1, 300).map(lambda m: lambda: RawFramer(m)))


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _run(framer: Framer, chunks: list[bytes]) -> tuple[list[bytes], str | None]:
    """Messages returned, and the error type that ended the stream (None: a clean eof)."""
    out: list[bytes] = []
    try:
        for chunk in chunks:
            got = framer.feed(chunk)
            assert isinstance(got, list)
            out.extend(got)
        out.extend(framer.eof())
    except DeframingError as exc:  # FrameTooLargeError is one
        return out, type(exc).__name__
    return out, None


def _sizes_ok(framer: Framer, messages: list[bytes]) -> None:
    for m in messages:
        if type(m) is Control:
            assert len(m) <= CONTROL_MAX
        else:
            assert len(m) <= framer.max_size, (len(m), framer.max_size)


@fuzz(400)
@given(make=framers, data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 10**6),
                                                                  max_size=12))
def test_fuzz_garbage_any_split_same_outcome(make: Callable[[], Framer], data: bytes,
                                             cuts: list[int]) -> None:
    whole, whole_err = _run(make(), [data])
    split, split_err = _run(make(), _splits(data, cuts))
    event(f"{type(make()).__name__}: {whole_err or 'ok'}")
    _sizes_ok(make(), whole + split)
    if isinstance(make(), RawFramer):  # stream semantics: chunking is the message boundary
        assert b"".join(split) == b"".join(whole) == data
        return
    if whole_err is None:
        assert split_err is None and split == whole
    else:  # the split stream fails too, having returned only messages the whole one holds
        assert split_err is not None
        assert split == whole[: len(split)] or _prefix_of_valid(make, data, split)


def _prefix_of_valid(make: Callable[[], Framer], data: bytes, got: list[bytes]) -> bool:
    """Messages delivered before an error are the stream's first messages, one at a time."""
    framer, out = make(), []
    try:
        for i in range(len(data)):
            out.extend(framer.feed(data[i : i + 1]))
    except DeframingError:
        pass
    return got == out[: len(got)]


def _messages_for(framer: Framer) -> st.SearchStrategy[list[bytes]]:
    body = st.binary(max_size=min(framer.max_size, 200))
    if isinstance(framer, LineFramer):
        d, strip = framer.delimiter, framer._strip
        body = body.filter(lambda m: d not in m + d[:-1] and not (strip and m.endswith(strip)))
    return st.lists(body, max_size=8)


@fuzz(400)
@given(make=message_framers, data=st.data(),
       cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_fuzz_round_trip_any_split(make: Callable[[], Framer], data: st.DataObject,
                                   cuts: list[int]) -> None:
    framer = make()
    messages = data.draw(_messages_for(framer))
    stream = b"".join(framer.encode(m) for m in messages)
    got, err = _run(make(), _splits(stream, cuts))
    assert err is None and got == messages


@fuzz(200)
@given(make=framers, message=st.binary(max_size=400))
def test_fuzz_encode_refuses_over_max_size(make: Callable[[], Framer], message: bytes) -> None:
    framer = make()
    try:
        encoded = framer.encode(message)
    except MessageTooLargeError:
        assert len(message) > framer.max_size
        return
    except ValueError:  # ArgumentError: a line framer's message holds its delimiter
        assert isinstance(framer, LineFramer)
        return
    if not isinstance(framer, RawFramer):
        assert len(message) <= framer.max_size
        receiver = make()
        assert receiver.feed(encoded) + receiver.eof() == [message]


@fuzz(300)
@given(make=framers, data=st.binary(max_size=400), at=st.integers(0, 400))
def test_fuzz_buffered_hands_over_the_rest(make: Callable[[], Framer], data: bytes,
                                           at: int) -> None:
    """as_stream(): what feed() kept plus what follows, fed to a fresh framer, gives what
    one framer fed everything would have given."""
    at %= len(data) + 1
    _, first_err = _run_feed(make(), data[:at])
    assume(first_err is None)
    framer = make()
    head = framer.feed(data[:at])
    rest = framer.buffered()
    tail, tail_err = _run(make(), [rest + data[at:]])
    whole, whole_err = _run(make(), [data])
    if isinstance(framer, RawFramer):
        assert rest == b""
        return
    if whole_err is None and tail_err is None:
        assert head + tail == whole


def _run_feed(framer: Framer, data: bytes) -> tuple[list[bytes], str | None]:
    try:
        return framer.feed(data), None
    except DeframingError as exc:
        return [], type(exc).__name__


@fuzz(200)
@given(size=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from((CONTROL_MARK,
                                                                  CONTROL_MARK - 1))),
       max_size=st.integers(0, 2**32), body=st.binary(max_size=8))
def test_fuzz_length_prefix_announcements(size: int, max_size: int, body: bytes) -> None:
    """A prefix announcing more than max_size fails at once, before its body arrives (a 4 GiB
    announcement costs nothing); one within it waits for exactly its body."""
    framer = LengthPrefixFramer(max_size)
    limit = min(max_size, CONTROL_MARK - 1)
    try:
        got = framer.feed(size.to_bytes(4, "big") + body[:size])  # one frame, or less
    except DeframingError:
        assert size > limit
        return
    assert size <= limit or size == CONTROL_MARK
    if size == CONTROL_MARK:
        assert all(type(m) is Control for m in got)  # a control frame (or its start)
    else:
        assert got == ([body[:size]] if len(body) >= size else [])
