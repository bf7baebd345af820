"""How two rendezvous peers exchange their offers (draft 3.1.3; docs/rendezvous.md).

Rule 1: signalling is an interface, `Signalling`: the built-in one is the rendezvous point
(`RendezvousClient`, over a taps_post TLS carrier that authenticates us by our client
certificate); an application may carry the same offers over its own channel instead (a chat
connection, a web API) by passing any object with these three methods as
`Remote.rendezvous(..., via=obj)`.
Rule 2: an offer is a JSON-serialisable dict (taps_post.ice.offer defines its fields and
checks them); signalling never looks inside it and never sees application data: that
travels only over the ICE path, encrypted by QUIC end to end.
Rule 3: `receive` returns only offers from the peer it names, newest first; an offer older
than the one it last returned for that peer is never returned again.
Rule 4: what holds offers is bounded (`Mailboxes`, shared by the rendezvous point and by
`MemorySignalling`): per recipient at most `queue` offers (the oldest is dropped), each
deliverable for `ttl` seconds only, at most `max_identities` recipients with offers waiting
and `max_bytes` of offers in all (beyond: `MailboxFull`, nothing is dropped to make room).
Taking the newest offer from a peer drops that peer's older ones (Rule 3), so a queue only
ever holds what may still be delivered.
Rule 5: an offer is kept as the JSON text it was sent as (`encode_offer`: at most
MAX_OFFER_BYTES), never as live objects: what the receiver gets is a copy, whichever
Signalling carried it, and nothing here reads its fields.

The wire of the rendezvous point (its bounds and error codes) is defined here, where both
ends read it: the client is runtime/rendezvous_client.py (it needs Remote and Local, and
runtime/endpoints.py names this module's protocol, so it cannot live here), the point
runtime/rendezvous_point.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import ArgumentError

__all__ = ["ERROR_CODES", "MAX_OFFER_BYTES", "MAX_REQUEST", "MAX_WAIT", "REPLY_SLACK", "Letter",
           "MailboxFull", "MailboxStats", "Mailboxes", "MemorySignalling", "OfferTooLargeError",
           "RendezvousError", "Signalling", "decode_offer", "encode_offer"]

MAX_OFFER_BYTES = 16 * 1024
"""The largest offer (its JSON text, in bytes) signalling carries; ice/offer.py's bound."""
MAX_REQUEST = MAX_OFFER_BYTES + 1024
"""The rendezvous point's wire: the largest frame either side sends (an offer at its largest
plus the request's or the reply's own fields)."""
MAX_WAIT = 60.0
"""The longest one `wait` is held at the point (seconds); the client waits longer in turns."""
REPLY_SLACK = 10.0
"""How much longer than the wait itself the client waits for the point's answer."""
ERROR_CODES = ("bad-request", "no-identity", "not-your-identity", "too-large", "full",
               "too-many-waits", "timeout")
"""What an `{"error": ...}` reply of the point may say (docs/rendezvous.md: what each means)."""


@runtime_checkable
class Signalling(Protocol):
    """Carries offers between identities (Rule 1)."""

    async def send(self, sender: str, to: str, offer: dict[str, Any]) -> None:
        """Deliver `offer` from `sender` (our identity) to the peer `to`."""
        ...

    async def receive(self, me: str, peer: str, timeout: float) -> dict[str, Any]:
        """The next offer to `me` from `peer`; TimeoutError after `timeout` seconds."""
        ...

    async def aclose(self) -> None:
        """Release what the channel holds (its carrier to the rendezvous point)."""
        ...


class RendezvousError(ConnectionError):
    """The rendezvous point refused a request (`code` says why, one of the wire's error
    codes: docs/rendezvous.md) or the connection to it ended before it answered."""

    def __init__(self, message: str, code: str = "closed") -> None:
        super().__init__(message)
        self.code = code


class OfferTooLargeError(ArgumentError):
    """An offer's JSON text is over MAX_OFFER_BYTES."""


class MailboxFull(Exception):
    """Rule 4: no room for another recipient's offers (`max_identities`, `max_bytes`)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode_offer(offer: object) -> str:
    """The offer as the JSON text signalling keeps (Rule 5); ArgumentError for anything that
    is not a JSON object or is over MAX_OFFER_BYTES. The message names no value of it."""
    if not isinstance(offer, dict):
        raise ArgumentError(f"an offer is a JSON object (dict), not {type(offer).__name__}")
    try:
        text = json.dumps(offer, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArgumentError(f"the offer is not JSON-serialisable ({type(exc).__name__})") \
            from None
    if len(text) > MAX_OFFER_BYTES:  # ensure_ascii: characters are bytes
        raise OfferTooLargeError(f"the offer is {len(text)} bytes of JSON, over "
                                 f"{MAX_OFFER_BYTES}")
    return text


def decode_offer(text: str | bytes) -> dict[str, Any]:
    """An offer's JSON text back as a dict (a fresh copy: Rule 5)."""
    got = json.loads(text, parse_constant=_no_constant)
    if not isinstance(got, dict):
        raise ValueError("an offer is a JSON object")
    return got


@dataclass(frozen=True, slots=True)
class Letter:
    """One queued offer: who sent it, its JSON text, when (monotonic seconds)."""

    sender: str
    text: str
    at: float


@dataclass(slots=True)
class MailboxStats:
    """What the mailboxes did, by count (never what an offer said)."""

    put: int = 0
    delivered: int = 0
    superseded: int = 0
    """Older offers from a peer dropped when a newer one was taken (Rule 3)."""
    dropped: int = 0
    """Offers pushed out of a full queue, oldest first (Rule 4)."""
    expired: int = 0
    refused: int = 0
    """Puts refused because the mailboxes were full (MailboxFull)."""


class Mailboxes:
    """Offers waiting for their recipients, bounded (Rule 4), with waiters woken at once."""

    def __init__(self, *, queue: int = 8, ttl: float = 60.0, max_identities: int = 4096,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        if queue < 1 or max_identities < 1 or max_bytes < 1 or not ttl > 0:
            raise ArgumentError("Mailboxes: queue, max_identities and max_bytes are at "
                                "least 1, ttl over 0")
        self.queue = queue
        self.ttl = float(ttl)
        self.max_identities = max_identities
        self.max_bytes = max_bytes
        self.stats = MailboxStats()
        self._boxes: dict[str, collections.deque[Letter]] = {}
        self._bytes = 0
        self._waiters: dict[tuple[str, str], list[asyncio.Future[Letter]]] = {}

    @property
    def identities(self) -> int:
        """Recipients with offers waiting now (expired ones may still count until swept)."""
        return len(self._boxes)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def put(self, sender: str, to: str, text: str) -> None:
        """Queue `text` (an offer's JSON) from `sender` for `to`, or hand it to a waiting
        `take()` at once. MailboxFull when there is no room (Rule 4)."""
        self.stats.put += 1
        letter = Letter(sender, text, time.monotonic())
        for fut in self._waiters.get((to, sender), ()):
            if not fut.done():
                fut.set_result(letter)
                self.stats.delivered += 1
                return
        box = self._boxes.get(to)
        if box is not None:
            self._expire(to, box)
            box = self._boxes.get(to)
        if (box is None and len(self._boxes) >= self.max_identities) or \
                self._bytes + len(text) > self.max_bytes:
            self.sweep()
            box = self._boxes.get(to)
            if (box is None and len(self._boxes) >= self.max_identities) or \
                    self._bytes + len(text) > self.max_bytes:
                self.stats.refused += 1
                raise MailboxFull("the rendezvous mailboxes are full")
        if box is None:
            box = self._boxes[to] = collections.deque()
        if len(box) >= self.queue:
            old = box.popleft()
            self._bytes -= len(old.text)
            self.stats.dropped += 1
        box.append(letter)
        self._bytes += len(text)

    async def take(self, me: str, sender: str, timeout: float) -> tuple[Letter, int]:
        """The newest offer to `me` from `sender` and how many older ones it superseded
        (dropped: Rule 3); waits up to `timeout` seconds for one (TimeoutError). A caller
        that cannot pass the letter on after all gives it back with `restore()`."""
        got = self._take_now(me, sender)
        if got is not None:
            return got
        fut: asyncio.Future[Letter] = asyncio.get_running_loop().create_future()
        key = (me, sender)
        self._waiters.setdefault(key, []).append(fut)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                letter = await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.restore(me, fut.result())  # handed over as the wait ended: kept
            fut.cancel()
            raise
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[key]
        return letter, 0

    def restore(self, me: str, letter: Letter) -> None:
        """Put back a letter `take()` gave but that never reached `me` (its connection
        ended first): it is still the newest, and its age still counts."""
        self.stats.delivered -= 1
        box = self._boxes.setdefault(me, collections.deque())
        box.append(letter)
        self._bytes += len(letter.text)

    def _take_now(self, me: str, sender: str) -> tuple[Letter, int] | None:
        box = self._boxes.get(me)
        if box is None:
            return None
        self._expire(me, box)
        mine = [letter for letter in box if letter.sender == sender]
        if not mine:
            return None
        rest = collections.deque(letter for letter in box if letter.sender != sender)
        for letter in mine:
            self._bytes -= len(letter.text)
        if rest:
            self._boxes[me] = rest
        else:
            del self._boxes[me]
        self.stats.delivered += 1
        self.stats.superseded += len(mine) - 1
        return mine[-1], len(mine) - 1

    def _expire(self, me: str, box: collections.deque[Letter]) -> None:
        """Drop the offers of `box` older than ttl (the oldest are first)."""
        limit = time.monotonic() - self.ttl
        while box and box[0].at < limit:
            self._bytes -= len(box.popleft().text)
            self.stats.expired += 1
        if not box:
            del self._boxes[me]

    def sweep(self) -> None:
        """Drop every expired offer (Rule 4): called when the mailboxes look full."""
        for me, box in list(self._boxes.items()):
            self._expire(me, box)

    def close(self) -> None:
        """Forget every offer; waiting takes are cancelled."""
        for waiting in list(self._waiters.values()):
            for fut in waiting:
                if not fut.done():
                    fut.cancel()
        self._boxes.clear()
        self._bytes = 0


class MemorySignalling:
    """Signalling inside one process (Rule 1): both peers pass the same hub as
    `Remote.rendezvous(..., via=hub)`. For tests, and for applications whose peers share a
    process or already have a channel they bridge to this. Bounded like the point (Rule 4);
    it trusts the `sender` it is told: there is nobody to authenticate in one process."""

    def __init__(self, *, queue: int = 8, ttl: float = 60.0, max_identities: int = 4096) -> None:
        self.mailboxes = Mailboxes(queue=queue, ttl=ttl, max_identities=max_identities)

    def __repr__(self) -> str:
        return f"MemorySignalling(identities={self.mailboxes.identities})"

    async def send(self, sender: str, to: str, offer: dict[str, Any]) -> None:
        _check_names(sender, to)
        try:
            self.mailboxes.put(sender.lower(), to.lower(), encode_offer(offer))
        except MailboxFull as exc:
            raise RendezvousError(str(exc), "full") from None

    async def receive(self, me: str, peer: str, timeout: float) -> dict[str, Any]:
        _check_names(me, peer)
        letter, _ = await self.mailboxes.take(me.lower(), peer.lower(), timeout)
        return decode_offer(letter.text)

    async def aclose(self) -> None:
        """Nothing to release: the hub is shared, and the other peer may still use it."""


def _check_names(*names: object) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"an identity is a non-empty string, not {name!r}")
