"""What a QUIC carrier puts on the wire besides its framed bidirectional stream (docs/quic.md).

Rule 1: a bidirectional stream carries the Post-to-Post default, a 4-byte big-endian length
prefix per message (the carrier's framer writes it, not this module), so any QUIC peer can
speak to a Carrier.
Rule 2: two additions never appear unless used. A message sent with `reliable=False` (and only
such a message: `immediate` means "own packet, now", not "unreliable") goes as a DATAGRAM
frame (RFC 9221) when both sides negotiated them: its payload is the QUIC variable-length
integer (RFC 9000 section 16) of the sending carrier's bidirectional stream id, then the
message bytes, unframed (`datagram_payload`, `split_datagram`), so the receiver hands it to
the carrier on that stream and no other (RFC 9297 prefixes its datagrams the same way, with
a quarter stream id). A message with a lifetime under `perMsgReliability` rides its own
unidirectional stream (8-byte owning stream id, then one framed message), so that expiring
it resets that stream with `RESET_EXPIRED`, not the carrier's.
Rule 3: pure: constants and byte layouts only, no aioquic and no asyncio, so stream and
session agree on one definition.
"""

from __future__ import annotations

import struct

__all__ = ["DATAGRAM_FRAME_SIZE", "DATAGRAM_MAX_PAYLOAD", "REFUSED_STREAM", "RESET_EXPIRED",
           "TOO_LARGE", "UNI_OVERHEAD",
           "datagram_fits", "datagram_frame_size", "datagram_payload",
           "encode_varint", "is_client_initiated", "is_unidirectional", "split_datagram",
           "split_uni", "uni_payload"]

DATAGRAM_FRAME_SIZE = 65536
"""The `max_datagram_frame_size` we advertise: DATAGRAM frames up to 64 KiB are accepted."""
DATAGRAM_MAX_PAYLOAD = 1100
"""Largest DATAGRAM frame payload we write (stream id prefix included): it must fit one
packet of aioquic's default 1,200-byte datagrams, whose header, packet number, AEAD tag and
frame header take the rest. aioquic keeps a frame that fits no packet at the head of its
queue forever, so nothing larger is ever handed to it."""
RESET_EXPIRED = 0x1
"""Application error code of a unidirectional stream reset because its message expired."""
REFUSED_STREAM = 0x2
"""Application error code of the RESET_STREAM and STOP_SENDING that refuse a stream the peer
opened after this connection's carriers stopped accepting siblings (accept callback False)."""

TOO_LARGE = 0x3
"""Application error code of the STOP_SENDING that ends a unidirectional stream grown over
message.maxSize (docs/quic.md, "Memory limits")."""
UNI_OVERHEAD = 64
"""Bytes a unidirectional stream may hold beyond message.maxSize: its 8-byte owner and the
framing of its one message, with room to spare."""

_OWNER = struct.Struct("!Q")


def encode_varint(value: int) -> bytes:
    """RFC 9000 section 16: 1, 2, 4 or 8 bytes, the two top bits of the first saying which."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"{value} is negative: QUIC variable-length integers are unsigned")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value < 0x4000000000000000:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError(f"{value} does not fit a QUIC variable-length integer")


def datagram_payload(stream_id: int, data: bytes) -> bytes:
    """A DATAGRAM frame's payload: the sending carrier's stream id (varint), then the message."""
    return encode_varint(stream_id) + data


def split_datagram(payload: bytes) -> tuple[int, bytes] | None:
    """(stream id, message) of a received DATAGRAM payload; None when it does not start with
    a whole varint (a peer that does not speak this prefix)."""
    if not payload:
        return None
    first = payload[0]
    length = 1 << (first >> 6)
    if len(payload) < length:
        return None
    value = first & 0x3F
    for b in payload[1:length]:
        value = (value << 8) | b
    return value, payload[length:]


def datagram_frame_size(payload_size: int) -> int:
    """Bytes of the whole DATAGRAM frame (type 0x31, length, payload), the unit of the peer's
    `max_datagram_frame_size` (RFC 9221 section 3)."""
    return 1 + len(encode_varint(payload_size)) + payload_size


def datagram_fits(payload_size: int, peer_max_frame: int | None) -> bool:
    """May a payload of `payload_size` bytes go as one DATAGRAM frame: within one packet and
    within the peer's `max_datagram_frame_size` (None: the peer takes no DATAGRAM frames)."""
    return (peer_max_frame is not None and payload_size <= DATAGRAM_MAX_PAYLOAD
            and datagram_frame_size(payload_size) <= peer_max_frame)


def is_client_initiated(stream_id: int) -> bool:
    """RFC 9000 section 2.1: bit 0x1 clear marks a stream the client opened."""
    return not stream_id & 0x1


def is_unidirectional(stream_id: int) -> bool:
    """RFC 9000 section 2.1: bit 0x2 of a stream id marks a unidirectional stream."""
    return bool(stream_id & 0x2)


def uni_payload(owner: int, frame: bytes) -> bytes:
    """The whole content of an expiring message's unidirectional stream: the bidirectional
    stream id of the carrier it belongs to, then the framed message."""
    if not 0 <= owner < 1 << 64:
        raise ValueError(f"stream id {owner} is not a QUIC stream id (0 to 2**64 - 1)")
    return _OWNER.pack(owner) + frame


def split_uni(data: bytes) -> tuple[int, bytes] | None:
    """(owning stream id, framed message) of a finished unidirectional stream, or None when
    it is too short to name its owner (a reset or a peer that does not speak this)."""
    if len(data) < _OWNER.size:
        return None
    (owner,) = _OWNER.unpack_from(data)
    return owner, data[_OWNER.size:]
