"""Carrier: the message-oriented connection an application holds.

Rule 1: a Carrier is a thin facade over its current Transient plus what outlives one: the
Decision that chose it, the Association, the policy and the Remote. It uses only the public
Transient interface (docs/architecture.md, "The Transient interface"); `activate()` swaps in a
new Transient and nothing else in the Carrier depends on which one it is.
Rule 2: `as_stream()` is a one-way door: allowed before the first message only, on a
stream-capable stack only (the stack catalogue says which), and afterwards the message API
refuses with a clear error.
Rule 3: how to open another Transient (fork, activate) is the `opener` given by whoever
established the carrier; an accepted carrier has none and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import stacks
from ..core.messages import InMessage, OutMessage
from ..decision.decision import Candidate, Decision
from ..errors import Attempt, ConnectionClosedError, UsageError
from ..stacks.transient import Transient
from .association import Association
from .trace import Tracer

if TYPE_CHECKING:
    from ..core.framing import Framer
    from ..policy.context import PolicyContext
    from .endpoints import Local, Remote

__all__ = ["Carrier", "Opener"]

MessageCallback = Callable[[OutMessage], Any]
Opener = Callable[["Carrier"], Awaitable["Carrier"]]


class Carrier:
    """A message-oriented connection chosen by policy (docs/runtime.md has the API tour).

    `send`/`send_msg`/`receive` carry whole messages with their properties; `explanation`
    is the Decision that chose it, `attempts` how the race went; `fork()` opens a sibling to
    the same Remote and `activate()` re-establishes a dormant carrier.
    """

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
        opener: Opener | None = None,
        attempts: tuple[Attempt, ...] = (),
        tracer: Tracer | None = None,
    ) -> None:
        self._transient = transient
        transient.bind(self)
        self._decision = decision
        self._association = association
        self._candidate = candidate
        self._remote = remote
        self._local = local
        self._policy = policy
        self._framer = framer
        self._opener = opener
        self._tracer = tracer
        self.attempts = attempts
        """How each racing attempt of the establishment went (won, failed, cancelled)."""
        self._streamed = False
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
        return f"<{type(self).__name__} {self.stack} {self.local_address} -> " \
               f"{self.remote_address} {state}>"

    # ---- sending --------------------------------------------------------------------------

    def _messages(self) -> Transient:
        if self._streamed:
            raise UsageError("this carrier became a stream (as_stream()); use its writer")
        return self._transient

    async def send(self, data: bytes) -> None:
        """Queue `data` as one message with default properties (waits under backpressure)."""
        if (isinstance(data, bytes) and not self._streamed and self._transient.try_send_plain(
                data if type(data) is bytes else bytes(data))):
            return  # the common case: no OutMessage, no coroutine below this one
        await self.send_msg(OutMessage(data))

    async def send_msg(self, message: OutMessage, *, on_sent: MessageCallback | None = None,
                       on_acked: MessageCallback | None = None,
                       on_expired: MessageCallback | None = None) -> None:
        """Queue a message; callbacks report what became of it (exactly one of sent/expired)."""
        transient = self._messages()
        if not transient.is_open:
            raise ConnectionClosedError(
                "the carrier is dormant or closed; `await carrier.activate()` re-establishes it")
        queued_at = transient.loop.time()
        await transient.wait_writable()
        transient.submit(message, on_sent, on_acked, on_expired, queued_at=queued_at)

    # ---- receiving ------------------------------------------------------------------------

    async def receive(self) -> InMessage:
        """The next message; ConnectionClosedError once the peer closed and all were read."""
        if not self._streamed:
            msg = self._transient.try_receive()  # no coroutine hop when a message waits
            if msg is not None:
                return msg
        return await self._messages().receive()

    def __aiter__(self) -> AsyncIterator[InMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[InMessage]:
        transient = self._messages()
        while True:
            try:
                msg = await transient.receive()
            except ConnectionClosedError:
                if transient.failure is not None and not self._closing:
                    raise
                return
            yield msg

    def ready(self, callback: Callable[[InMessage], Any]) -> None:
        """Draft style: `callback(msg)` for every message until it returns False."""
        self._messages().set_callback(callback)

    # ---- morphing, forking ----------------------------------------------------------------

    async def as_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Turn this carrier into an asyncio reader/writer pair (irreversible)."""
        t = self._messages()
        if not _stream_capable(t.stack):
            raise UsageError(f"as_stream() needs a reliable ordered stack, not {t.stack}")
        if not t.untouched:
            raise UsageError("as_stream() is only allowed before the first message")
        if not t.is_open:
            raise ConnectionClosedError("the carrier is closed")
        transport, leftover, eof = t.detach_stream()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if leftover:
            reader.feed_data(leftover)
        if eof:
            reader.feed_eof()
        self._streamed = True
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def fork(self) -> Carrier:
        """A new carrier to the same Remote on the same Association. QUIC: a new stream on the
        same connection, which the peer's `accept()` callback receives; TCP, TLS and UDP: a
        new connection, which the peer's Listener receives."""
        sibling = self._transient.open_sibling()
        if sibling is not None:
            return self._sibling(sibling)
        if self._opener is None:
            raise UsageError("this carrier was accepted by a Listener; fork from the "
                             "initiating side")
        return await self._opener(self)

    def accept(self, callback: Callable[[Carrier], Any]) -> None:
        """Receive carriers the peer forks onto this connection. On TCP, TLS and UDP forks are
        new connections and arrive at the Listener instead; QUIC delivers them here."""
        self._transient.accept_siblings(lambda t: callback(self._sibling(t)))

    def _sibling(self, transient: Transient) -> Carrier:
        return Carrier(transient, decision=self._decision, association=self._association,
                       candidate=self._candidate, remote=self._remote, local=self._local,
                       policy=self._policy, framer=self._framer, opener=self._opener,
                       tracer=self._tracer)

    async def activate(self) -> None:
        """Re-establish a dormant carrier: a new race, ranked with the Association's history."""
        if self.is_active:
            return
        if self._opener is None:
            raise ConnectionClosedError("an accepted carrier cannot be re-activated; the "
                                        "peer must initiate again")
        fresh = await self._opener(self)
        self._adopt(fresh)

    def _adopt(self, fresh: Carrier) -> None:
        """Take over the Transient and the establishment record of a freshly raced carrier."""
        self._transient = fresh._transient
        self._transient.bind(self)
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
            self._emit_closed()
            return
        await self._transient.aclose()
        self._emit_closed()

    def abort(self) -> None:
        self._closing = True
        self._transient.abort()
        self._emit_closed()

    def _emit_closed(self) -> None:
        if self._tracer is not None:
            failure = self._transient.failure
            self._tracer.emit("carrier.closed", stack=self.stack, remote=self.remote_address,
                              error="" if failure is None else str(failure))

    async def __aenter__(self) -> Carrier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _stream_capable(stack: str) -> bool:
    try:
        return bool(stacks.info(stack).stream_capable)
    except KeyError:
        return False
