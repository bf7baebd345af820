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
`MemorySignalling`), so that no sender can push out or crowd out another sender's offers:
offers are queued per (recipient, sender) pair, at most `queue` each (8), a full queue
dropping its own oldest offer, never another sender's; each is deliverable for `ttl`
seconds only (60). A recipient holds queues from at most `senders_per_recipient` senders
(64); a sender has offers queued at at most `recipients_per_sender` recipients (64) and
`bytes_per_sender` bytes in all (1 MiB); over all, at most `max_identities` recipients
(4096) and `max_bytes` (64 MiB). An offer beyond any of these is refused (`MailboxFull`,
its `bound` says which): nothing is dropped to make room. An offer given back
(`restore`: its connection ended before delivery) passes the same bounds, pushing nothing
out; when it does not fit it is counted as dropped. Taking the newest offer from a peer
drops that peer's older ones (Rule 3), so a queue only ever holds what may still be
delivered.
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
import math
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
               "too-many-waits", "too-many-connections", "timeout")
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
    """Rule 4: no room for this offer; `bound` names the bound that refused it:
    "identities", "bytes" (the global ones), "senders" (the recipient holds queues from
    `senders_per_recipient` senders), "sender-recipients" or "sender-bytes" (the sender's
    own quota: `recipients_per_sender`, `bytes_per_sender`)."""

    def __init__(self, message: str, bound: str = "bytes") -> None:
        super().__init__(message)
        self.bound = bound


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
    """Offers pushed out of their (recipient, sender) queue by a newer one from the same
    sender, oldest first, and given-back offers that no longer fit (Rule 4)."""
    expired: int = 0
    refused: int = 0
    """Puts refused because the mailboxes were full (MailboxFull)."""


class Mailboxes:
    """Offers waiting for their recipients, bounded (Rule 4), with waiters woken at once.

    Offers are queued per (recipient, sender) pair, so what one sender does can only ever
    push out its own older offers; the per-sender quotas keep any one sender from filling
    the global bounds that every sender shares."""

    def __init__(self, *, queue: int = 8, ttl: float = 60.0, max_identities: int = 4096,
                 max_bytes: int = 64 * 1024 * 1024, senders_per_recipient: int = 64,
                 recipients_per_sender: int = 64, bytes_per_sender: int = 1024 * 1024) -> None:
        if min(queue, max_identities, max_bytes, senders_per_recipient,
               recipients_per_sender, bytes_per_sender) < 1 or not ttl > 0:
            raise ArgumentError("Mailboxes: queue, max_identities, max_bytes, "
                                "senders_per_recipient, recipients_per_sender and "
                                "bytes_per_sender are at least 1, ttl over 0")
        self.queue = queue
        self.ttl = float(ttl)
        self.max_identities = max_identities
        self.max_bytes = max_bytes
        self.senders_per_recipient = senders_per_recipient
        self.recipients_per_sender = recipients_per_sender
        self.bytes_per_sender = bytes_per_sender
        self.stats = MailboxStats()
        self._boxes: dict[str, dict[str, collections.deque[Letter]]] = {}
        """recipient -> sender -> that sender's offers to it, oldest first (never empty)."""
        self._bytes = 0
        self._to: dict[str, set[str]] = {}
        """sender -> the recipients it has offers queued at (its quota, Rule 4)."""
        self._sender_bytes: dict[str, int] = {}
        self._swept = -math.inf
        self._waiters: dict[tuple[str, str], list[asyncio.Future[Letter]]] = {}

    @property
    def identities(self) -> int:
        """Recipients with offers waiting now (expired ones may still count until swept)."""
        return len(self._boxes)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def usage(self, sender: str) -> tuple[int, int]:
        """How much of its quota `sender` uses now: (recipients, bytes) of offers queued."""
        return len(self._to.get(sender, ())), self._sender_bytes.get(sender, 0)

    def put(self, sender: str, to: str, text: str) -> None:
        """Queue `text` (an offer's JSON) from `sender` for `to`, or hand it to a waiting
        `take()` at once. A full (to, sender) queue drops its own oldest offer; MailboxFull
        when any other bound has no room (Rule 4): nobody else's offer is dropped for it."""
        self.stats.put += 1
        letter = Letter(sender, text, time.monotonic())
        for fut in self._waiters.get((to, sender), ()):
            if not fut.done():
                fut.set_result(letter)
                self.stats.delivered += 1
                return
        self._expire(to, sender)
        bound = self._room(to, sender, len(text), evict=True)
        if bound is not None:
            self._sweep_for(bound, to, sender)
            bound = self._room(to, sender, len(text), evict=True)
            if bound is not None:
                self.stats.refused += 1
                raise MailboxFull(_FULL[bound], bound)
        self._add(to, letter)

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

    def restore(self, me: str, letter: Letter) -> bool:
        """Put back a letter `take()` gave but that never reached `me` (its connection
        ended first); its age still counts. It goes through the same bounds as `put`
        (Rule 4) but pushes nothing out: False when it was not kept (counted as dropped;
        as expired or superseded when it is too old or a newer offer came meanwhile)."""
        self.stats.delivered -= 1
        sender = letter.sender
        if letter.at < time.monotonic() - self.ttl:
            self.stats.expired += 1
            return False
        self._expire(me, sender)
        if sender in self._boxes.get(me, {}):  # newer offers came since it was taken
            self.stats.superseded += 1
            return False
        bound = self._room(me, sender, len(letter.text), evict=False)
        if bound is not None:
            self._sweep_for(bound, me, sender)
            if self._room(me, sender, len(letter.text), evict=False) is not None:
                self.stats.dropped += 1
                return False
        self._add(me, letter)
        return True

    def _room(self, to: str, sender: str, size: int, *, evict: bool) -> str | None:
        """The bound (a MailboxFull.bound) that leaves no room for `size` more bytes from
        `sender` to `to`, or None. `evict`: a full pair queue drops its oldest (Rule 4)."""
        box = self._boxes.get(to)
        pair = box.get(sender) if box is not None else None
        freed = 0
        if pair is not None and len(pair) >= self.queue:
            if not evict:
                return "queue"
            freed = len(pair[0].text)
        if pair is None:
            if box is None and len(self._boxes) >= self.max_identities:
                return "identities"
            if box is not None and len(box) >= self.senders_per_recipient:
                return "senders"
            if len(self._to.get(sender, ())) >= self.recipients_per_sender:
                return "sender-recipients"
        if self._sender_bytes.get(sender, 0) - freed + size > self.bytes_per_sender:
            return "sender-bytes"
        if self._bytes - freed + size > self.max_bytes:
            return "bytes"
        return None

    def _add(self, to: str, letter: Letter) -> None:
        """Queue `letter` (its room checked: `_room`), dropping its pair's oldest if full."""
        sender = letter.sender
        box = self._boxes.setdefault(to, {})
        pair = box.get(sender)
        if pair is None:
            pair = box[sender] = collections.deque()
            self._to.setdefault(sender, set()).add(to)
        if len(pair) >= self.queue:
            self._count(sender, -len(pair.popleft().text))
            self.stats.dropped += 1
        pair.append(letter)
        self._count(sender, len(letter.text))

    def _count(self, sender: str, size: int) -> None:
        self._bytes += size
        left = self._sender_bytes.get(sender, 0) + size
        if left:
            self._sender_bytes[sender] = left
        else:
            self._sender_bytes.pop(sender, None)

    def _drop_pair(self, to: str, sender: str) -> collections.deque[Letter]:
        """Remove the (to, sender) queue (it exists) and return it, its bytes uncounted."""
        box = self._boxes[to]
        pair = box.pop(sender)
        if not box:
            del self._boxes[to]
        recipients = self._to[sender]
        recipients.discard(to)
        if not recipients:
            del self._to[sender]
        self._count(sender, -sum(len(letter.text) for letter in pair))
        return pair

    def _take_now(self, me: str, sender: str) -> tuple[Letter, int] | None:
        self._expire(me, sender)
        if sender not in self._boxes.get(me, {}):
            return None
        mine = self._drop_pair(me, sender)
        self.stats.delivered += 1
        self.stats.superseded += len(mine) - 1
        return mine[-1], len(mine) - 1

    def _expire(self, to: str, sender: str) -> None:
        """Drop the offers from `sender` to `to` older than ttl (the oldest are first)."""
        pair = self._boxes.get(to, {}).get(sender)
        if pair is None:
            return
        limit = time.monotonic() - self.ttl
        while pair and pair[0].at < limit:
            self._count(sender, -len(pair.popleft().text))
            self.stats.expired += 1
        if not pair:
            self._drop_pair(to, sender)

    def _sweep_for(self, bound: str, to: str, sender: str) -> None:
        """Drop the expired offers that count towards `bound`: the sender's own for its
        quota, the recipient's for its senders, all of them for a global bound."""
        if bound.startswith("sender-"):
            for recipient in list(self._to.get(sender, ())):
                self._expire(recipient, sender)
        elif bound == "senders":
            for other in list(self._boxes.get(to, {})):
                self._expire(to, other)
        elif bound != "queue":
            self.sweep()

    def sweep(self) -> None:
        """Drop every expired offer (Rule 4): called when the global bounds look full, at
        most once per 1/8 of the ttl (offers expire no faster, and a sweep walks them all)."""
        now = time.monotonic()
        if now - self._swept < self.ttl / 8:
            return
        self._swept = now
        for to, box in list(self._boxes.items()):
            for sender in list(box):
                self._expire(to, sender)

    def close(self) -> None:
        """Forget every offer; waiting takes are cancelled."""
        for waiting in list(self._waiters.values()):
            for fut in waiting:
                if not fut.done():
                    fut.cancel()
        self._boxes.clear()
        self._to.clear()
        self._sender_bytes.clear()
        self._bytes = 0


_FULL = {
    "identities": "the rendezvous point holds offers for all the recipients it can",
    "bytes": "the rendezvous point holds all the offers it can",
    "senders": "the recipient has offers waiting from all the senders it may",
    "sender-recipients": "you have offers waiting at all the recipients you may",
    "sender-bytes": "you have all the offer bytes waiting you may",
    "queue": "that queue is full",
}
"""What MailboxFull says, by its bound (no identity, no value of the offer)."""


class MemorySignalling:
    """Signalling inside one process (Rule 1): both peers pass the same hub as
    `Remote.rendezvous(..., via=hub)`. For tests, and for applications whose peers share a
    process or already have a channel they bridge to this. Bounded like the point (Rule 4);
    it trusts the `sender` it is told: there is nobody to authenticate in one process."""

    def __init__(self, *, queue: int = 8, ttl: float = 60.0, max_identities: int = 4096,
                 senders_per_recipient: int = 64, recipients_per_sender: int = 64,
                 bytes_per_sender: int = 1024 * 1024) -> None:
        self.mailboxes = Mailboxes(queue=queue, ttl=ttl, max_identities=max_identities,
                                   senders_per_recipient=senders_per_recipient,
                                   recipients_per_sender=recipients_per_sender,
                                   bytes_per_sender=bytes_per_sender)

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
        # ASCII before lower(): "\u212a".lower() == "k" would fold one name onto another
        if not isinstance(name, str) or not name or not name.isascii():
            raise ArgumentError(f"an identity is a non-empty ASCII string, not {name!r}")
