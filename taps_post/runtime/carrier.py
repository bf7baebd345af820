"""Carrier: the message-oriented connection an application holds.

Rule 1: a Carrier is a thin facade over its current Transient plus what outlives one: the
Decision that chose it, the Association, the policy and the Remote. `activate()` swaps in a
new Transient; nothing else in the Carrier depends on which one it is.
Rule 2: `as_stream()` is a one-way door: allowed before the first message only, on a reliable
ordered stack only, and afterwards the message API refuses with a clear error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..decision.decision import Candidate, Decision
from ..errors import Attempt, ConnectionClosedError
from .association import Association
from .framing import Framer
from .messages import InMessage, OutMessage
from .transient import _SEND_HIGH, Transient

if TYPE_CHECKING:
    from ..policy.context import PolicyContext
    from .endpoints import Local, Remote

__all__ = ["Carrier"]

MessageCallback = Callable[[OutMessage], Any]

_STREAM_CAPABLE = frozenset({"tcp", "tls", "mptcp", "tls-mptcp"})


class Carrier:
    """A message-oriented connection chosen by policy; see DESIGN section 8 for the API."""

    def __init__(
        self,
        transient: Transient,
        *,
        decision: Decision | None,
        association: Association | None,
        candidate: Candidate | None = None,
        remote: Remote | None = None,
        local: Local | None = None,
        policy: PolicyContext | None = None,
        framer: Callable[[], Framer] | None = None,
        opener: Callable[[Carrier], Any] | None = None,
        attempts: tuple[Attempt, ...] = (),
    ) -> None:
        self._transient = transient
        transient.carrier = self
        self._decision = decision
        self._association = association
        self._candidate = candidate
        self._remote = remote
        self._local = local
        self._policy = policy
        self._framer = framer
        self._opener = opener
        self.attempts = attempts
        """How each racing attempt of the establishment went (won, failed, cancelled)."""
        self._streamed = False
        self._accept: Callable[[Carrier], Any] | None = None
        self._closing = False

    # ---- what chose it --------------------------------------------------------------------

    @property
    def explanation(self) -> Decision | None:
        """The Decision that chose this carrier (what `taps-post policy explain` prints)."""
        return self._decision

    @property
    def association(self) -> Association | None:
        return self._association

    @property
    def transients(self) -> tuple[Transient, ...]:
        return (self._transient,)

    @property
    def candidate(self) -> Candidate | None:
        return self._candidate

    @property
    def stack(self) -> str:
        return self._transient.stack

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self._transient.remote_address

    @property
    def local_address(self) -> tuple[str, int] | None:
        return self._transient.local_address

    @property
    def is_active(self) -> bool:
        return self._transient.is_open and not self._streamed

    def __repr__(self) -> str:
        state = "active" if self.is_active else ("stream" if self._streamed else "dormant")
        return (f"<Carrier {self.stack} {self.local_address} -> {self.remote_address} {state}>")

    # ---- sending --------------------------------------------------------------------------

    def _check_messages(self) -> Transient:
        if self._streamed:
            raise RuntimeError("this carrier became a stream (as_stream()); use its writer")
        return self._transient

    async def send(self, data: bytes) -> None:
        """Queue `data` as one message with default properties (waits under backpressure)."""
        t = self._transient
        if (t.accepts_plain and isinstance(data, bytes) and not self._streamed
                and t._queue.queued_bytes <= _SEND_HIGH):
            # The common case: no OutMessage, no coroutine below this one.
            t.submit_data(data if type(data) is bytes else bytes(data))
            return
        await self.send_msg(OutMessage(data))

    async def send_msg(self, message: OutMessage, *, on_sent: MessageCallback | None = None,
                       on_acked: MessageCallback | None = None,
                       on_expired: MessageCallback | None = None) -> None:
        """Queue a message; callbacks report what became of it (exactly one of sent/expired)."""
        transient = self._check_messages()
        if not transient.is_open:
            raise ConnectionClosedError(
                "the carrier is dormant or closed; `await carrier.activate()` re-establishes it")
        queued_at = transient.loop.time()
        await transient.wait_writable()
        transient.submit(message, on_sent, on_acked, on_expired, queued_at=queued_at)

    # ---- receiving ------------------------------------------------------------------------

    async def receive(self) -> InMessage:
        """The next message; ConnectionClosedError once the peer closed and all were read."""
        t = self._transient
        if t._inbox and not self._streamed:
            return t.pop_message()  # no coroutine hop when a message is waiting
        return await self._check_messages().receive()

    def __aiter__(self) -> AsyncIterator[InMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[InMessage]:
        transient = self._check_messages()
        while True:
            try:
                msg = await transient.receive()
            except ConnectionClosedError:
                if transient._error is not None and not self._closing:
                    raise
                return
            yield msg

    def ready(self, callback: Callable[[InMessage], Any]) -> None:
        """Draft style: `callback(msg)` for every message until it returns False."""
        self._check_messages().set_callback(callback)

    # ---- morphing, forking ----------------------------------------------------------------

    async def as_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Turn this carrier into an asyncio reader/writer pair (irreversible)."""
        t = self._check_messages()
        if t.stack not in _STREAM_CAPABLE:
            raise RuntimeError(f"as_stream() needs a reliable ordered stack, not {t.stack}")
        if t.sent_any or t.received_any or len(t._queue):
            raise RuntimeError("as_stream() is only allowed before the first message")
        if not t.is_open:
            raise ConnectionClosedError("the carrier is closed")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        leftover = t.framer.buffered()
        t.transport.set_protocol(protocol)
        protocol.connection_made(t.transport)
        if leftover:
            reader.feed_data(leftover)
        if t._eof:
            reader.feed_eof()
        self._streamed = True
        return reader, asyncio.StreamWriter(t.transport, protocol, reader, loop)

    async def fork(self) -> Carrier:
        """A new carrier to the same Remote on the same Association. QUIC: a new stream on the
        same connection, which the peer's `accept()` callback receives; TCP, TLS and UDP: a
        new connection, which the peer's Listener receives."""
        session = getattr(self._transient, "session", None)
        if session is not None:
            if not session.is_open:
                raise ConnectionClosedError("the QUIC connection of this carrier is closed")
            return self._sibling(session.new_stream())
        if self._opener is None:
            raise RuntimeError("this carrier was accepted by a Listener; fork from the "
                               "initiating side")
        child: Carrier = await self._opener(self)
        return child

    def accept(self, callback: Callable[[Carrier], Any]) -> None:
        """Receive carriers the peer forks onto this connection. On TCP, TLS and UDP forks are
        new connections and arrive at the Listener instead; QUIC delivers them here."""
        self._accept = callback
        session = getattr(self._transient, "session", None)
        if session is not None:
            session.accept_callback = lambda t: callback(self._sibling(t))

    def _sibling(self, transient: Transient) -> Carrier:
        return Carrier(transient, decision=self._decision, association=self._association,
                       candidate=self._candidate, remote=self._remote, local=self._local,
                       policy=self._policy, framer=self._framer, opener=self._opener)

    async def activate(self) -> None:
        """Re-establish a dormant carrier: a new race, ranked with the Association's history."""
        if self.is_active:
            return
        if self._opener is None:
            raise ConnectionClosedError("an accepted carrier cannot be re-activated; the "
                                        "peer must initiate again")
        fresh: Carrier = await self._opener(self)
        self._transient = fresh._transient
        self._transient.carrier = self
        self._decision = fresh._decision
        self._candidate = fresh._candidate
        self.attempts = fresh.attempts
        self._closing = False

    # ---- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Send what is queued, then close gracefully."""
        self._closing = True
        if self._streamed:
            self._transient.transport.close()
            return
        await self._transient.aclose()

    def abort(self) -> None:
        self._closing = True
        self._transient.abort()

    async def __aenter__(self) -> Carrier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
