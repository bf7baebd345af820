"""What a QUIC carrier puts on the wire besides its framed bidirectional stream (docs/quic.md).

Rule 1: a bidirectional stream carries the Post-to-Post default, a 4-byte big-endian length
prefix per message (the carrier's framer writes it, not this module), so any QUIC peer can
speak to a Carrier.
Rule 2: two additions never appear unless used: messages sent unreliably or immediately go as
DATAGRAM frames (RFC 9221) when both sides negotiated them and the message fits one packet;
a message with a lifetime under `perMsgReliability` rides its own unidirectional stream
(8-byte owning stream id, then one framed message), so that expiring it resets that stream
with `RESET_EXPIRED`, not the carrier's.
Rule 3: pure: constants and byte layouts only, no aioquic and no asyncio, so stream and
session agree on one definition.
"""

from __future__ import annotations

import struct

__all__ = ["DATAGRAM_FRAME_SIZE", "DATAGRAM_MAX_PAYLOAD", "RESET_EXPIRED", "as_datagram",
           "is_unidirectional", "split_uni", "uni_payload"]

DATAGRAM_FRAME_SIZE = 65536
"""The `max_datagram_frame_size` we advertise: DATAGRAM frames up to 64 KiB are accepted."""
DATAGRAM_MAX_PAYLOAD = 1100
"""Largest message we put in one DATAGRAM frame (it must fit one packet)."""
RESET_EXPIRED = 0x1
"""Application error code of a unidirectional stream reset because its message expired."""

_OWNER = struct.Struct("!Q")


def as_datagram(reliable: bool, immediate: bool, size: int) -> bool:
    """A message that goes as a DATAGRAM frame once both sides negotiated them."""
    return (not reliable or immediate) and size <= DATAGRAM_MAX_PAYLOAD


def is_unidirectional(stream_id: int) -> bool:
    """RFC 9000 section 2.1: bit 0x2 of a stream id marks a unidirectional stream."""
    return bool(stream_id & 0x2)


def uni_payload(owner: int, frame: bytes) -> bytes:
    """The whole content of an expiring message's unidirectional stream: the bidirectional
    stream id of the carrier it belongs to, then the framed message."""
    return _OWNER.pack(owner) + frame


def split_uni(data: bytes) -> tuple[int, bytes] | None:
    """(owning stream id, framed message) of a finished unidirectional stream, or None when
    it is too short to name its owner (a reset or a peer that does not speak this)."""
    if len(data) < _OWNER.size:
        return None
    (owner,) = _OWNER.unpack_from(data)
    return owner, data[_OWNER.size:]
