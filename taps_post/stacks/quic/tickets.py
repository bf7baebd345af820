"""QUIC session tickets on disk: the JSON form of a `QuicTicket`, and the checks a ticket read
back must pass before a connection may offer it.

Rule 1: a ticket is written with everything resumption needs (aioquic's `SessionTicket`
fields: the resumption secret, the cipher suite, the validity window, the server name, the
early-data limit) and the `Origin` its first connection proved (config.py Rule 5). A ticket
without its origin would be offered to nobody but a connection that verifies nothing, so
the origin goes to disk with it and comes back with it.
Rule 2: a ticket read back is rebuilt only from fields that pass their check (types, the
cipher suites aioquic knows, sizes within TLS's own limits, a validity window no longer than
TLS 1.3 allows, RFC 8446 section 4.6.1: seven days); anything else is a reason string, never an
exception, so one damaged ticket costs itself only.
Rule 3: a ticket past its lifetime is never written and never read back (`expired`).
Rule 4: what the file gives back is no more trusted than what the network gave: the stack
still offers it only when `ticket.server_name` is the attempt's host and `Trust.admits` its
origin (stack.py), exactly as for a ticket received in this process.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import re
from typing import Any

from aioquic.tls import CipherSuite

from ...decision.names import TlsaRecord
from .config import Origin, QuicTicket

__all__ = ["EXPIRED", "MAX_LIFETIME_S", "expired", "ticket_from_record", "ticket_to_record"]

MAX_LIFETIME_S = 7 * 24 * 3600
"""The longest ticket lifetime TLS 1.3 allows (RFC 8446 section 4.6.1)."""

EXPIRED = "expired"
"""What `ticket_from_record` answers for a ticket past its lifetime: not damage, so the
store drops it without a warning (Rule 3)."""

_SKEW_S = 60.0
"""How far in the future a ticket's start may be (clock steps between processes are small)."""

_SUITES = frozenset(int(s) for s in (CipherSuite.AES_128_GCM_SHA256,
                                     CipherSuite.AES_256_GCM_SHA384,
                                     CipherSuite.CHACHA20_POLY1305_SHA256))
_FIELDS = frozenset(("stack", "age_add", "cipher_suite", "not_valid_after", "not_valid_before",
                     "resumption_secret", "server_name", "ticket", "max_early_data_size",
                     "other_extensions", "origin"))
_ORIGIN_FIELDS = frozenset(("fingerprint", "verified", "system_anchors", "dane", "dane_how"))
_FINGERPRINT = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){31}")
_U32 = 0xFFFF_FFFF
_U16 = 0xFFFF


class _Bad(Exception):
    """One field of one ticket fails its check (the message says which and why)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def expired(ticket: Any, now: datetime.datetime | None = None) -> bool:
    """Is `ticket` (a QuicTicket) past its lifetime (Rule 3)?"""
    return bool(ticket.not_valid_after <= (now or _now()))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ticket_to_record(ticket: Any) -> dict[str, Any] | None:
    """The JSON form of a QuicTicket (Rule 1); None for anything else (stdlib TLS sessions
    cannot be serialised) and for an expired ticket (Rule 3)."""
    if not isinstance(ticket, QuicTicket) or expired(ticket):
        return None
    origin = ticket.origin
    return {
        "stack": "quic",
        "age_add": ticket.age_add,
        "cipher_suite": int(ticket.cipher_suite),
        "not_valid_after": ticket.not_valid_after.timestamp(),
        "not_valid_before": ticket.not_valid_before.timestamp(),
        "resumption_secret": _b64(ticket.resumption_secret),
        "server_name": ticket.server_name,
        "ticket": _b64(ticket.ticket),
        "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": [[t, _b64(d)] for t, d in ticket.other_extensions],
        "origin": None if origin is None else {
            "fingerprint": origin.fingerprint,
            "verified": origin.verified,
            "system_anchors": origin.system_anchors,
            "dane": [[r.usage, r.selector, r.matching, _b64(r.data)] for r in origin.dane],
            "dane_how": origin.dane_how,
        },
    }


def ticket_from_record(raw: Any, now: datetime.datetime | None = None) -> QuicTicket | str:
    """The QuicTicket a record describes, or why it cannot be used (Rules 2 and 3)."""
    try:
        return _ticket(raw, now or _now())
    except _Bad as exc:
        return str(exc)


def _ticket(raw: Any, now: datetime.datetime) -> QuicTicket:
    if not isinstance(raw, dict):
        raise _Bad("not an object")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise _Bad(f"unknown field {sorted(unknown)[0]!r:.40}")
    if raw.get("stack") != "quic":
        raise _Bad("stack: only quic tickets are kept on disk")
    suite = _int(raw, "cipher_suite", 0, _U16)
    if suite not in _SUITES:
        raise _Bad(f"cipher_suite: {suite:#06x} is not a TLS 1.3 suite aioquic resumes with")
    before = _time(raw, "not_valid_before")
    after = _time(raw, "not_valid_after")
    if before > now + datetime.timedelta(seconds=_SKEW_S):
        raise _Bad("not_valid_before: in the future")
    if (after - before).total_seconds() > MAX_LIFETIME_S + _SKEW_S or after < before:
        raise _Bad("not_valid_after: the lifetime is longer than TLS 1.3's seven days")
    if after <= now:
        raise _Bad(EXPIRED)
    name = raw.get("server_name")
    if not isinstance(name, str) or not 0 < len(name) <= 253:
        raise _Bad("server_name: not a host name")
    early = raw.get("max_early_data_size")
    if early is not None:
        early = _int(raw, "max_early_data_size", 0, _U32)
    extensions = raw.get("other_extensions")
    if not isinstance(extensions, list) or len(extensions) > 16:
        raise _Bad("other_extensions: not a list of at most 16")
    others: list[tuple[int, bytes]] = []
    for item in extensions:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
                and 0 <= item[0] <= _U16):
            raise _Bad("other_extensions: not [type, data] pairs")
        others.append((item[0], _bytes(item[1], "other_extensions", 0, _U16)))
    return QuicTicket(
        age_add=_int(raw, "age_add", 0, _U32),
        cipher_suite=CipherSuite(suite),
        not_valid_after=after,
        not_valid_before=before,
        resumption_secret=_bytes(raw.get("resumption_secret"), "resumption_secret", 32, 64),
        server_name=name,
        ticket=_bytes(raw.get("ticket"), "ticket", 1, _U16),
        max_early_data_size=early,
        other_extensions=others,
        origin=_origin(raw.get("origin", ...)),
    )


def _origin(raw: Any) -> Origin | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != _ORIGIN_FIELDS:
        raise _Bad(f"origin: not an object with {', '.join(sorted(_ORIGIN_FIELDS))}")
    fingerprint = raw["fingerprint"]
    if fingerprint is not None and not (isinstance(fingerprint, str)
                                        and _FINGERPRINT.fullmatch(fingerprint)):
        raise _Bad("origin.fingerprint: not a SHA-256 fingerprint")
    if type(raw["verified"]) is not bool or type(raw["system_anchors"]) is not bool:
        raise _Bad("origin: verified and system_anchors must be true or false")
    how = raw["dane_how"]
    if how is not None and not (isinstance(how, str) and len(how) <= 200):
        raise _Bad("origin.dane_how: not a short string")
    records = raw["dane"]
    if not isinstance(records, list) or len(records) > 32:
        raise _Bad("origin.dane: not a list of at most 32 TLSA records")
    dane: list[TlsaRecord] = []
    for r in records:
        if not (isinstance(r, list) and len(r) == 4 and all(type(x) is int for x in r[:3])
                and 0 <= r[0] <= 3 and 0 <= r[1] <= 1 and 0 <= r[2] <= 2):
            raise _Bad("origin.dane: not [usage, selector, matching, data] records")
        dane.append(TlsaRecord(r[0], r[1], r[2], _bytes(r[3], "origin.dane", 1, 2048)))
    return Origin(fingerprint, raw["verified"], raw["system_anchors"], tuple(dane), how)


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = raw.get(key)
    if type(value) is not int or not low <= value <= high:
        raise _Bad(f"{key}: not an integer from {low} to {high}")
    return value


def _time(raw: dict[str, Any], key: str) -> datetime.datetime:
    value = raw.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0:
        raise _Bad(f"{key}: not a time")
    try:
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise _Bad(f"{key}: not a time") from None


def _bytes(value: Any, key: str, low: int, high: int) -> bytes:
    if not isinstance(value, str) or len(value) > (high + 2) // 3 * 4:
        raise _Bad(f"{key}: not base64 of at most {high} bytes")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _Bad(f"{key}: not base64") from None
    if not low <= len(data) <= high:
        raise _Bad(f"{key}: {len(data)} bytes, expected {low} to {high}")
    return data
