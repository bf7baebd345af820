"""What one rendezvous peer tells the other through signalling: its ICE offer.

Rule 1: an `Offer` is valid from the moment it exists: the constructor checks every field
(types, lengths, syntax) and raises `OfferError`, so nothing downstream (the ICE agent, the
runtime) re-checks what a peer sent. `Offer.from_dict` on anything at all (it came from the
network) returns an Offer or raises OfferError, never another exception.
Rule 2: an offer is bounded: at most MAX_CANDIDATES candidate lines of at most
MAX_CANDIDATE_CHARS characters each, and at most MAX_OFFER_BYTES of JSON in all, checked on
the input before any field is looked at, so a hostile peer cannot make us walk a large
document.
Rule 3: pure data: no aioice, no sockets. The candidate lines are RFC 8839 `candidate:`
attribute values (what aioice's `Candidate.to_sdp()` gives); here they are checked for their
shape only (the fields an ICE agent needs are there and numeric where they must be); the
agent (ice/agent.py) judges what they say.
Rule 4: unknown fields are ignored (within the size bound), so a later release may add one
without breaking its older peers; a known field that is missing or malformed is an error
naming it.
Rule 5: `repr()` never shows the ICE password: an offer may be logged, and the password lets
whoever holds it answer our connectivity checks.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..decision.environment import host_name_problem, shown

__all__ = ["MAX_CANDIDATES", "MAX_CANDIDATE_CHARS", "MAX_OFFER_BYTES", "Offer", "OfferError"]

MAX_CANDIDATES = 64
"""Candidate lines in one offer, at most (an agent with more offers its best ones)."""
MAX_CANDIDATE_CHARS = 512
"""Characters in one candidate line, at most (a real one is under 200)."""
MAX_OFFER_BYTES = 16384
"""The whole offer as compact JSON, at most (the rendezvous point refuses larger ones too)."""

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
"""RFC 8445 section 5.3 / RFC 8839 section 5.4: ice-char = ALPHA / DIGIT / "+" / "/"."""
_SESSION = re.compile(r"[0-9a-f]{32}")
_FINGERPRINT = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){31}")
_TOKEN = re.compile(r"[!-~]+")
"""RFC 8839 token characters, simplified to visible ASCII (no space, no control)."""
_FIELDS = ("identity", "session", "ufrag", "pwd", "candidates", "fingerprint", "created")


class OfferError(ValueError):
    """An offer (from a peer, or being made) is malformed; the message says which field."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One peer's ICE offer (docs/rendezvous.md): who it is, the ICE credentials and
    candidates of its agent, and the fingerprint its certificate must have."""

    identity: str
    """The sender's identity (a DNS-like name, as `Local.identity`)."""
    session: str
    """32 lowercase hex digits (16 random bytes), new for every initiate: tells a fresh
    offer from a stale one queued at the rendezvous point."""
    ufrag: str
    """ICE username fragment: 4-256 ice-chars."""
    pwd: str
    """ICE password: 22-256 ice-chars."""
    candidates: tuple[str, ...]
    """RFC 8839 candidate attribute values, best first."""
    fingerprint: str
    """SHA-256 of the sender's certificate, uppercase hex with colons."""
    created: float
    """Wall-clock time (seconds since the epoch) the offer was made."""

    def __post_init__(self) -> None:
        if isinstance(self.candidates, list):
            object.__setattr__(self, "candidates", tuple(self.candidates))
        if isinstance(self.fingerprint, str):
            object.__setattr__(self, "fingerprint", self.fingerprint.upper())
        if isinstance(self.created, int) and not isinstance(self.created, bool):
            object.__setattr__(self, "created", float(self.created))
        _check_identity(self.identity)
        _check_str("session", self.session, _SESSION, 32, 32, "32 lowercase hex digits")
        _check_str("ufrag", self.ufrag, _ICE_CHARS, 4, 256, "4-256 ice-chars (A-Z a-z 0-9 + /)")
        _check_str("pwd", self.pwd, _ICE_CHARS, 22, 256, "22-256 ice-chars (A-Z a-z 0-9 + /)",
                   secret=True)
        _check_candidates(self.candidates)
        _check_str("fingerprint", self.fingerprint, _FINGERPRINT, 95, 95,
                   "a SHA-256 fingerprint, 32 hex bytes with colons (AB:CD:...)")
        if isinstance(self.created, bool) or not isinstance(self.created, float) or \
                not math.isfinite(self.created) or self.created < 0:
            raise OfferError(f"offer field 'created': {_what(self.created)} is not a time "
                             "(seconds since the epoch, a finite number >= 0)")
        size = len(_compact(self.to_dict()))
        if size > MAX_OFFER_BYTES:
            raise OfferError(f"offer of {size} bytes is over {MAX_OFFER_BYTES}")

    @classmethod
    def create(cls, *, identity: str, ufrag: str, pwd: str, candidates: Sequence[str],
               fingerprint: str) -> Offer:
        """A new offer: a fresh random `session`, `created` now."""
        return cls(identity, secrets.token_hex(16), ufrag, pwd, tuple(candidates),
                   fingerprint, time.time())

    def to_dict(self) -> dict[str, Any]:
        """The offer as JSON-serialisable data (what signalling carries)."""
        return {"identity": self.identity, "session": self.session, "ufrag": self.ufrag,
                "pwd": self.pwd, "candidates": list(self.candidates),
                "fingerprint": self.fingerprint, "created": self.created}

    @classmethod
    def from_dict(cls, data: object) -> Offer:
        """The Offer `data` holds (Rule 1), or OfferError saying what is wrong with it."""
        if not isinstance(data, Mapping):
            raise OfferError(f"an offer is a JSON object, not {type(data).__name__}")
        try:
            size = len(_compact(data))
        except (TypeError, ValueError, RecursionError):
            raise OfferError("an offer must be plain JSON (strings, numbers, lists, "
                             "objects)") from None
        if size > MAX_OFFER_BYTES:
            raise OfferError(f"offer of {size} bytes is over {MAX_OFFER_BYTES}")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise OfferError(f"offer is missing {', '.join(repr(m) for m in missing)}")
        candidates = data["candidates"]
        if not isinstance(candidates, list | tuple):
            raise OfferError(f"offer field 'candidates': a list of strings, not "
                             f"{type(candidates).__name__}")
        created = data["created"]
        if isinstance(created, int) and not isinstance(created, bool):
            created = float(created)
        return cls(data["identity"], data["session"], data["ufrag"], data["pwd"],
                   tuple(candidates), data["fingerprint"], created)

    def __repr__(self) -> str:
        return (f"Offer(identity={self.identity!r}, session={self.session!r}, "
                f"ufrag={self.ufrag!r}, pwd='***', candidates={self.candidates!r}, "
                f"fingerprint={self.fingerprint!r}, created={self.created!r})")

    __str__ = __repr__


def _compact(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _what(value: object) -> str:
    return shown(value) if isinstance(value, str) else type(value).__name__


def _check_str(name: str, value: object, pattern: re.Pattern[str], low: int, high: int,
               expected: str, *, secret: bool = False) -> None:
    if not isinstance(value, str):
        raise OfferError(f"offer field {name!r}: a string, not {type(value).__name__}")
    if not low <= len(value) <= high or not pattern.fullmatch(value):
        seen = f"{len(value)} characters" if secret else _what(value)
        raise OfferError(f"offer field {name!r}: {seen} is not {expected}")


def _check_identity(identity: object) -> None:
    if not isinstance(identity, str):
        raise OfferError(f"offer field 'identity': a string, not {type(identity).__name__}")
    if not identity or any(c.isspace() for c in identity):
        raise OfferError(f"offer field 'identity': {shown(identity)} is not a DNS-like name")
    try:
        ipaddress.ip_address(identity)
    except ValueError:
        problem = host_name_problem(identity)
        if problem is not None:
            raise OfferError(f"offer field 'identity': {problem}") from None
    else:
        raise OfferError(f"offer field 'identity': {shown(identity)} is an IP address, "
                         "not an identity")


def _check_candidates(candidates: object) -> None:
    if not isinstance(candidates, tuple):
        raise OfferError("offer field 'candidates': a list of strings, not "
                         f"{type(candidates).__name__}")
    if len(candidates) > MAX_CANDIDATES:
        raise OfferError(f"offer field 'candidates': {len(candidates)} candidates, at most "
                         f"{MAX_CANDIDATES}")
    for index, line in enumerate(candidates):
        why = candidate_problem(line)
        if why is not None:
            raise OfferError(f"offer field 'candidates' item {index}: {why}")


def candidate_problem(line: object) -> str | None:
    """Why `line` is not an RFC 8839 candidate attribute value (None: it is one):
    `foundation component transport priority address port typ type [name value]...`,
    with an optional leading `candidate:`. Only the shape is checked (Rule 3)."""
    if not isinstance(line, str):
        return f"a string, not {type(line).__name__}"
    if len(line) > MAX_CANDIDATE_CHARS:
        return f"{len(line)} characters, at most {MAX_CANDIDATE_CHARS}"
    body = line.removeprefix("candidate:")
    tokens = body.split(" ")
    if len(tokens) < 8 or not all(_TOKEN.fullmatch(t) for t in tokens):
        return f"{shown(line)} is not a candidate line (fields separated by single spaces)"
    foundation, component, _transport, priority, _address, port, typ = tokens[:7]
    if not 1 <= len(foundation) <= 32 or not _ICE_CHARS.fullmatch(foundation):
        return f"{shown(line)}: foundation is not 1-32 ice-chars"
    if typ != "typ" or len(tokens) % 2:
        return f"{shown(line)}: no 'typ TYPE' after the port, or a name without a value"
    for name, text, high in (("component", component, 256), ("priority", priority, 2**32 - 1),
                             ("port", port, 65535)):
        if not text.isdigit() or not text.isascii() or int(text) > high or \
                (name == "component" and int(text) == 0):
            return f"{shown(line)}: {name} {shown(text)} is not a number in range"
    return None
