"""Framers: how messages become bytes on a stream stack and bytes become messages again.

Rule 1: framers are sans-I/O. `encode()` returns bytes, `feed()` takes whatever the network
delivered (any split, any size) and returns the complete messages it now holds. They never
block, never guess, and never see a socket, so a property test can throw arbitrary byte
streams at them.
Rule 2: a framer enforces `max_size` on receive itself: a peer announcing a 4 GiB message is
refused before we buffer it (FrameTooLargeError, a RemoteProtocolError and a
MessageTooLargeError, so callers branch on the type, never on the text).
Rule 3: `encodes_anything` says whether `encode()` can refuse a message within max_size; the
transport checks a message at send time only for framers that can (line framing).
Rule 4: control frames (the fork protocol, runtime/fork.py) exist only on the length-prefix
framer: 4 bytes 0xFFFFFFFF, a big-endian u16 length, then at most 1024 bytes of payload. That
prefix is never a message length (message.maxSize is capped below it), so no legal stream
changes meaning. feed()/feed_with() return them in order among the messages as `Control`
items and set `control_seen`, which the Transient checks once per batch to route them away
from the inbox; the check for the marker sits inside the oversize branch, so ordinary
messages pay nothing for it. Other framers cannot carry them: `encode_control` raises.
Rule 5: a framer never preallocates what a peer announces: a partial message is accumulated
as its bytes arrive, and `pending_size` says how many are held, so the receive budget
(carrier.recvBudget) counts a message still arriving; `discard()` drops them (the transport
ended: nothing can complete any more, and the memory goes back at once).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..errors import (
    ArgumentError,
    DeframingError,
    FrameTooLargeError,
    MessageTooLargeError,
    UsageError,
)

__all__ = ["CONTROL_MARK", "CONTROL_MAX", "LENGTH", "Control", "DeframingError", "Framer",
           "LengthPrefixFramer", "LineFramer", "RawFramer"]

CONTROL_MARK = 0xFFFFFFFF
"""The length prefix that announces a control frame instead of a message."""
CONTROL_MAX = 1024
"""Largest control payload (bytes): control frames are small protocol words, not data."""
_CONTROL_HEAD = b"\xff\xff\xff\xff"
_U16 = struct.Struct(">H")


class Control(bytes):
    """A control frame's payload, as feed() returns it among the messages; never a message.

    A bytes subclass so the framer builds it as cheaply as a message; the Transient tells
    the two apart by type (`type(item) is Control`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Control({bytes(self)!r})"


def _no_control(payload: bytes) -> bytes:
    raise UsageError("fork requests need the length-prefix framer (message.framing "
                     "lengthPrefix); this carrier's framing cannot carry control frames")


@runtime_checkable
class Framer(Protocol):
    """Encodes outgoing messages and incrementally decodes incoming bytes.

    Optional (Rule 5, read with getattr so framers written before them still satisfy the
    protocol): `pending_size` (int, bytes of a partial message held; 0 when absent) and
    `discard()` (drop them)."""

    max_size: int
    encodes_anything: bool
    """True when encode() accepts every message within max_size (no send-time check needed)."""

    def fresh(self) -> Framer:
        """A framer with the same configuration and no state, for a new connection."""
        ...

    def buffered(self) -> bytes:
        """Received bytes that are not yet a message (handed over by `as_stream()`)."""
        ...

    def encode(self, message: bytes) -> bytes: ...

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages now complete, in order."""
        ...

    def eof(self) -> list[bytes]:
        """The peer closed; return a final message if the framing allows one, else raise."""
        ...

    control_seen: bool = False
    """True once feed() returned a Control item (the Transient then routes them). A framer
    of your own that subclasses Framer inherits False and the refusing encode_control()."""

    def encode_control(self, payload: bytes) -> bytes:
        """The bytes of one control frame, or UsageError where the framing has none."""
        return _no_control(payload)


LENGTH = struct.Struct(">I")
"""The Post-to-Post length prefix: 4 bytes, big-endian."""


class LengthPrefixFramer:
    """4-byte big-endian length, then the payload: the Post-to-Post default."""

    encodes_anything = True
    control_seen = False

    def __init__(self, max_size: int = 16 * 1024 * 1024) -> None:
        self.max_size = max_size
        self._limit = min(max_size, CONTROL_MARK - 1)
        """max_size as the receive check uses it: never reaches the control marker."""
        self._buf = bytearray()
        self._need = 0
        """Buffered bytes needed before anything can complete (header, or header + body)."""

    def fresh(self) -> LengthPrefixFramer:
        return LengthPrefixFramer(self.max_size)

    def encode(self, message: bytes) -> bytes:
        if len(message) > self.max_size:
            raise MessageTooLargeError(f"message of {len(message)} bytes is over "
                                       f"message.maxSize ({self.max_size})")
        return len(message).to_bytes(4, "big") + message

    def encode_control(self, payload: bytes) -> bytes:
        """One control frame: 0xFFFFFFFF, u16 length, payload (at most CONTROL_MAX bytes)."""
        if len(payload) > CONTROL_MAX:
            raise ArgumentError(f"control payload of {len(payload)} bytes is over "
                                f"{CONTROL_MAX}")
        return _CONTROL_HEAD + _U16.pack(len(payload)) + bytes(payload)

    def feed(self, data: bytes) -> list[bytes]:
        return self.feed_with(data, bytes)

    def feed_with(self, data: bytes, make: Callable[[memoryview], Any]) -> list[Any]:
        """feed(), with each message built by `make(view)` straight from the received bytes
        (one copy). Without a partial message buffered, `data` is parsed in place."""
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:  # inside a known message: nothing can complete yet
                return []
            src: bytes | bytearray = buf
        else:
            src = data
        end = len(src)
        out: list[Any] = []
        pos = 0
        need = 4
        if end >= 4:
            append = out.append
            unpack_from = LENGTH.unpack_from
            max_size = self._limit
            with memoryview(src) as mv:
                while end - pos >= 4:
                    (size,) = unpack_from(src, pos)
                    if size > max_size:
                        if size != CONTROL_MARK:
                            raise FrameTooLargeError(f"peer announced a {size}-byte message,"
                                                     f" over message.maxSize "
                                                     f"({self.max_size})")
                        if end - pos < 6:
                            need = 6
                            break
                        (clen,) = _U16.unpack_from(src, pos + 4)
                        if clen > CONTROL_MAX:
                            raise DeframingError(f"peer announced a {clen}-byte control "
                                                 f"frame, over {CONTROL_MAX}")
                        if end - pos - 6 < clen:
                            need = 6 + clen
                            break
                        append(Control(mv[pos + 6 : pos + 6 + clen]))
                        pos += 6 + clen
                        self.control_seen = True
                        continue
                    if end - pos - 4 < size:
                        need = 4 + size
                        break
                    pos += 4
                    append(make(mv[pos : pos + size]))
                    pos += size
                if src is data and pos < end:
                    buf += mv[pos:]
            if src is buf and pos:
                del buf[:pos]  # keeps the buffer's capacity
        elif src is data:
            buf += data
        self._need = need
        return out

    def buffered(self) -> bytes:
        """Bytes received but not yet a message (handed over by `as_stream()`)."""
        out = bytes(self._buf)
        self.discard()
        return out

    @property
    def pending_size(self) -> int:
        """Rule 5: bytes of the partial message (and of a header) held."""
        return len(self._buf)

    def discard(self) -> None:
        self._buf = bytearray()  # a new one: the old capacity goes back at once
        self._need = 0

    def eof(self) -> list[bytes]:
        if self._buf:
            raise DeframingError(f"connection closed inside a message ({len(self._buf)} bytes "
                                 "of it received)")
        return []


class LineFramer:
    """Messages end with a delimiter (default LF); for line protocols and tools like socat."""

    encodes_anything = False
    control_seen = False
    encode_control = staticmethod(_no_control)

    def __init__(self, delimiter: bytes = b"\n", max_size: int = 16 * 1024 * 1024,
                 strip: bytes = b"\r") -> None:
        if not delimiter:
            raise ArgumentError("the delimiter must not be empty")
        self.delimiter = delimiter
        self.max_size = max_size
        self._strip = strip
        self._buf = bytearray()
        self._scan = 0

    def fresh(self) -> LineFramer:
        return LineFramer(self.delimiter, self.max_size, self._strip)

    def encode(self, message: bytes) -> bytes:
        # `message + delimiter[:-1]` also catches a tail that overlaps the delimiter ("a=" with
        # "=="), which would otherwise move the boundary.
        if self.delimiter in message + self.delimiter[:-1]:
            raise ArgumentError("message contains the delimiter; it would arrive as two messages")
        if self._strip and message.endswith(self._strip):
            raise ArgumentError(f"message ends with {self._strip!r}, which the receiver strips")
        if len(message) > self.max_size:
            raise MessageTooLargeError(f"message of {len(message)} bytes is over "
                                       f"message.maxSize ({self.max_size})")
        return message + self.delimiter

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        d = self.delimiter
        start = 0
        scan = self._scan
        while True:
            idx = buf.find(d, max(start, scan - len(d) + 1))
            if idx < 0:
                break
            msg = bytes(buf[start:idx])
            if self._strip and msg.endswith(self._strip):
                msg = msg[: -len(self._strip)]
            if len(msg) > self.max_size:
                raise FrameTooLargeError(f"line of {len(msg)} bytes is over message.maxSize "
                                     f"({self.max_size})")
            out.append(msg)
            start = idx + len(d)
            scan = start
        if start:
            del buf[:start]
        self._scan = len(buf)
        if len(buf) > self.max_size + len(d):
            raise FrameTooLargeError(f"no delimiter within message.maxSize ({self.max_size}) "
                                     "bytes")
        return out

    def buffered(self) -> bytes:
        out = bytes(self._buf)
        self.discard()
        return out

    @property
    def pending_size(self) -> int:
        """Rule 5: bytes of the line not yet ended by its delimiter."""
        return len(self._buf)

    def discard(self) -> None:
        self._buf = bytearray()
        self._scan = 0

    def eof(self) -> list[bytes]:
        if self._buf:
            rest = bytes(self._buf)
            self._buf.clear()
            if self._strip and rest.endswith(self._strip):
                rest = rest[: -len(self._strip)]
            if len(rest) > self.max_size:
                raise FrameTooLargeError(f"final line of {len(rest)} bytes is over "
                                     f"message.maxSize ({self.max_size})")
            return [rest]
        return []


class RawFramer:
    """No framing: every chunk the network delivers is a message (stream semantics)."""

    encodes_anything = True
    control_seen = False
    encode_control = staticmethod(_no_control)

    def __init__(self, max_size: int = 16 * 1024 * 1024) -> None:
        self.max_size = max_size

    def fresh(self) -> RawFramer:
        return RawFramer(self.max_size)

    def encode(self, message: bytes) -> bytes:
        return bytes(message)

    def feed(self, data: bytes) -> list[bytes]:
        size = self.max_size
        if len(data) <= size:
            return [bytes(data)] if data else []
        return [bytes(data[i : i + size]) for i in range(0, len(data), size)]

    def buffered(self) -> bytes:
        return b""

    pending_size = 0
    """Rule 5: every chunk is a message at once; nothing is ever held."""

    def discard(self) -> None:
        return None

    def eof(self) -> list[bytes]:
        return []
