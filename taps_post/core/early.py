"""Early flight: messages queued on a carrier before it is active, offered to every attempt.

Rule 1: sans-I/O and clock-free (times are passed in), like the rest of the core. The
Carrier holds what the application sent while it was dormant or activating in one
`EarlyFlight`; whichever Transient wins the race receives them, in the order they were
submitted, with their lifetimes counted from `send_msg()`.
Rule 2: an attempt that can carry data in its first flight (QUIC 0-RTT, TCP Fast Open) asks
its `EarlyAttempt` for *copies* of the idempotent messages (`take()`), never the originals:
several attempts race, and a message must be sent once. A copy's callbacks are relays: their
events are held per attempt until the race is decided (`settle(winner)`); the winner's are
replayed onto the originals, the losers' are dropped. So the application sees each message's
`on_sent`/`on_acked`/`on_expired`/`on_send_error` once, from the Transient that won.
Rule 3: only idempotent messages ride early, and only when every antecedent is already sent
or rides early before them on the same attempt. Non-idempotent messages wait in the flight
until the winner is known and its handshake completed.
Rule 4: a message is held once: `hold()` refuses one that is not new (sent, queued, held).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentError
from .messages import Callback, OutMessage

__all__ = ["EarlyAttempt", "EarlyFlight", "Held"]


@dataclass(eq=False, slots=True)
class Held:
    """A message the application submitted before the carrier was active."""

    message: OutMessage
    on_sent: Callback = None
    on_acked: Callback = None
    on_expired: Callback = None
    on_send_error: Callback = None
    queued_at: float = 0.0
    """Loop time of `send_msg()`: the message's lifetime counts from here."""

    @property
    def deadline(self) -> float | None:
        life = self.message.lifetime
        return None if life is None else self.queued_at + life


Relay = Callable[[OutMessage], None]
Relays = tuple[Relay, Relay, Relay, Relay]
"""(on_sent, on_acked, on_expired, on_send_error) for one copy."""


class EarlyAttempt:
    """One racing attempt's view of the flight (Rule 2). A stack calls `take()` once while it
    builds its first flight, and may `watch()` for messages held while its handshake runs."""

    __slots__ = ("_flight", "_held_events", "_watcher", "taken")

    def __init__(self, flight: EarlyFlight) -> None:
        self._flight = flight
        self.taken: list[Held] = []
        """The originals whose copies this attempt carries early, in sending order."""
        self._held_events: list[tuple[Callable[[OutMessage], Any], OutMessage]] = []
        self._watcher: Callable[[list[tuple[OutMessage, Relays]]], None] | None = None

    def take(self, limit: int | None = None) -> list[tuple[OutMessage, Relays]]:
        """Copies of the idempotent messages that may ride early now (Rule 3), each with its
        relay callbacks, for `transient.submit(copy, *relays)`. `limit`: at most that many
        (TCP Fast Open carries one)."""
        out: list[tuple[OutMessage, Relays]] = []
        for held in self._flight.eligible(self.taken):
            if limit is not None and len(out) >= limit:
                break
            out.append(self._copy(held))
        return out

    def watch(self, callback: Callable[[list[tuple[OutMessage, Relays]]], None] | None) -> None:
        """Until the race is decided, hand `callback` the copies of idempotent messages held
        after `take()` (a QUIC attempt still in its handshake writes them as 0-RTT too).
        None stops watching."""
        self._watcher = callback

    @property
    def decided(self) -> bool:
        return self._flight.winner is not None

    def _copy(self, held: Held) -> tuple[OutMessage, Relays]:
        taken = {id(h.message): i for i, h in enumerate(self.taken)}
        copies = self._copies
        original = held.message
        antecedents = tuple(copies[taken[id(a)]] if id(a) in taken else a
                            for a in original.antecedents)
        copy = dataclasses.replace(original, antecedents=antecedents)
        self.taken.append(held)
        self._copies.append(copy)
        return copy, (self._relay(held.on_sent, original, "sent"),
                      self._relay(held.on_acked, original, None),
                      self._relay(held.on_expired, original, "expired"),
                      self._relay(held.on_send_error, original, "expired"))

    @property
    def _copies(self) -> list[OutMessage]:
        return self._flight.copies_of(self)

    def _relay(self, callback: Callback, original: OutMessage, state: str | None) -> Relay:
        def relay(_copy: OutMessage) -> None:
            winner = self._flight.winner
            if winner is None:
                self._held_events.append((_stamp(callback, original, state), original))
            elif winner is self:
                _stamp(callback, original, state)(original)
        return relay

    def _notify(self, held: Held) -> None:
        if self._watcher is None or self._flight.winner is not None:
            return
        if held in self._flight.eligible(self.taken):
            self._watcher([self._copy(held)])

    def _replay(self) -> None:
        events, self._held_events = self._held_events, []
        for callback, original in events:
            callback(original)


def _stamp(callback: Callback, original: OutMessage,
           state: str | None) -> Callable[[OutMessage], Any]:
    """The original's callback, after giving the original the state its copy reached."""
    def fire(message: OutMessage) -> Any:
        if state is not None:
            original.state = state
        return callback(original) if callback is not None else None
    return fire


class EarlyFlight:
    """What a carrier holds before it is active (Rule 1), and the attempts offered it."""

    def __init__(self) -> None:
        self.held: list[Held] = []
        self.winner: EarlyAttempt | None = None
        self._attempts: list[EarlyAttempt] = []
        self._copies: dict[int, list[OutMessage]] = {}

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, held: Held) -> None:
        msg = held.message
        if msg.state != "new":
            raise ArgumentError(f"{msg!r} is already {msg.state}; a message is sent once")
        msg.state = "held"
        self.held.append(held)
        for attempt in list(self._attempts):
            attempt._notify(held)

    def attempt(self) -> EarlyAttempt:
        """A new attempt's view (one per racing attempt that can send early)."""
        a = EarlyAttempt(self)
        self._attempts.append(a)
        self._copies[id(a)] = []
        return a

    def copies_of(self, attempt: EarlyAttempt) -> list[OutMessage]:
        return self._copies[id(attempt)]

    def eligible(self, taken: list[Held]) -> list[Held]:
        """Held idempotent messages not yet in `taken` whose antecedents are all sent or in
        `taken` (or eligible before them), in submission order."""
        riding = {id(h.message) for h in taken}
        out: list[Held] = []
        for h in self.held:
            m = h.message
            if id(m) in riding or not m.idempotent:
                continue
            if all(a.state == "sent" or id(a) in riding for a in m.antecedents):
                riding.add(id(m))
                out.append(h)
        return out

    def settle(self, winner: EarlyAttempt | None) -> list[Held]:
        """The race is decided: replay the winner's held events onto the originals, drop the
        losers'; return the held messages the winner did not carry early, in order, each
        made new again so the winner's queue can take it. `winner` None: no attempt of
        the winning Transient sent anything early."""
        self.winner = winner if winner is not None else EarlyAttempt(self)
        for a in self._attempts:
            a._watcher = None
        carried = {id(h.message) for h in winner.taken} if winner is not None else set()
        rest = [h for h in self.held if id(h.message) not in carried]
        self.held = []
        self._attempts = []
        for h in rest:
            if h.message.state == "held":
                h.message.state = "new"
        if winner is not None:
            winner._replay()
        return rest

    def expire(self, now: float) -> list[Held]:
        """Held messages whose lifetime passed (and those whose antecedent did), removed."""
        gone = {id(h.message) for h in self.held
                if h.deadline is not None and h.deadline <= now}
        if not gone:
            return []
        changed = True
        while changed:
            changed = False
            for h in self.held:
                if id(h.message) not in gone and any(id(a) in gone or a.state == "expired"
                                                     for a in h.message.antecedents):
                    gone.add(id(h.message))
                    changed = True
        out = [h for h in self.held if id(h.message) in gone]
        self.held = [h for h in self.held if id(h.message) not in gone]
        for h in out:
            h.message.state = "expired"
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for h in self.held if (d := h.deadline) is not None]
        return min(deadlines) if deadlines else None

    def drain(self) -> list[Held]:
        """Everything held (activation failed, or the carrier closed): the caller reports
        each with on_send_error."""
        out, self.held = self.held, []
        for h in out:
            h.message.state = "expired"
        for a in self._attempts:
            a._watcher = None
        self._attempts = []
        return out
