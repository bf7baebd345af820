"""Carrier: the message-oriented connection an application holds (draft 2.1, Appendix A).

Rule 1: a Carrier is a thin facade over its current Transient plus what outlives one: the
Decision that chose it, the Association, the policy and the Remote. It uses only the public
Transient interface (docs/architecture.md, "The Transient interface"); activation swaps in a
new Transient and nothing else in the Carrier depends on which one it is.
Rule 2: a Carrier is born dormant (`initiate()` returns at once, no socket yet) and becomes
active on demand: `send`, `send_msg`, `receive`, `activate()`, `await carrier` and
`async with`. One activation runs at a time and concurrent callers join it. What is sent
while the carrier is not active is held in its `EarlyFlight` (core/early.py) in submission
order, with lifetimes counted from `send_msg()`: each racing attempt gets an `EarlyAttempt`
(0-RTT / TCP Fast Open copies of the idempotent ones), and once the race is decided the
flight is settled on the winner and the rest is submitted to it, in order. Nothing held is
lost silently: a message ends with the winner's callbacks, `on_expired` (its lifetime ran out
while held) or `on_send_error` (the activation failed, or the carrier closed first).
Rule 3: a Transient that dies without us closing it leaves the carrier dormant when it can be
re-activated (it was initiated, so it has an `opener`, and policy `carrier.reactivate` allows
it): what was queued but never written comes back into the flight (`transient.salvage`) and
the next send re-races with the Association's history and tickets. Otherwise (an accepted
carrier, or reactivate off) the carrier is closed. Either way an event says so.
Rule 4: the fast paths stay one attribute check: `_fast` is the active message-mode Transient
or None, and `send()`/`receive()` go to `try_send_plain`/`try_receive` through it.
Rule 5: application callbacks keep the draft's contract: `ready`, `accept` and `on_event`
callbacks are called until they return False; an `async def` one is awaited as a task the
carrier owns (close() cancels and awaits them), at most `max_concurrent` at once for `ready`
and `accept`, and at the bound the carrier stops taking messages (they wait in the
Transient's inbox, whose receive budget pauses reading: backpressure to the peer). The
contract for `ready` and `accept` is runtime/handlers.py's `Handlers`.
Rule 6: `as_stream()` is a one-way door: allowed before the first message only, on a
stream-capable stack only (the stack catalogue says which), and afterwards the message API
refuses with a clear error.
Rule 7: how to open another Transient (activate) is the `opener` given by whoever made the
carrier, how to fork one is the `forker`; an accepted carrier has no opener and says so. This
module imports neither establish nor fork (they import it).
Rule 8: every Transient the carrier takes (initiated, accepted, a fork's) gets the carrier's
Settings through `apply_settings`: byte budgets, linger and idle timeout (an accepted
carrier's come from the listen Decision, so idle timeout is on there by default). close() is
bounded by carrier.linger (a carrier turned into a stream too: its writer is closed, then
aborted) and a cancelled close() still leaves the carrier closed.
Rule 9: an idle carrier is small (thousands are held at once): `__slots__`, and the
collections most carriers never use (tasks, event subscribers and listeners, forks waiting
for a handler, refused messages) start as the shared empty `_NONE` and are made on first use.
Rule 10: an initiated carrier survives its path going away (runtime/mobility.py tells it,
from the PathMonitor): an MPTCP connection with another live subflow keeps going
(`PathChange`); otherwise the Transient is asked to `migrate()` to another local address
its Decision allows (QUIC; `PathChange`); otherwise it is failed with `PathLostError` (what
was in flight ends with on_send_error, what was queued is salvaged), the carrier goes
dormant and re-activates by itself, as a send would (a re-race with history and tickets),
or, with no usable path, waits dormant until the monitor reports one. That task is the
carrier's (`_mover`, cancelled by close()); a re-activation it started that fails keeps the
held messages (nobody waits on it: they stay for the next path) unless a caller joined it,
and when a path became usable while it ran it looks again before waiting (`_recheck`).
Events: `PathChange(old, new)` when it keeps going elsewhere, `PathChange(old, None)` when the
path is lost with nothing to carry on (then `Dormant(PathLostError)`, and `Ready` with
`PathChange(old, new)` at re-activation). A carrier whose Local names an interface or an
address is pinned there (runtime/mobility.py Rule 8): it neither migrates off that path when
it goes nor hands over to a better one; `transient.migrate()` called by the application
still moves it, so a pinned connection whose stack migrates (QUIC) is left open for the
application to move (or for its idle timeout), while a pinned TCP one is failed as above
and re-activates within its Local.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .. import stacks
from ..core.early import EarlyAttempt, EarlyFlight, Held
from ..core.events import CarrierEvent, Closed, Dormant, PathChange, Ready, SoftError
from ..core.messages import InMessage, OutMessage, Pending
from ..core.settings import Settings
from ..decision.decision import Candidate, Decision
from ..decision.environment import Interface
from ..errors import Attempt, ConnectionClosedError, PathLostError, UsageError
from ..stacks.transient import Transient
from . import mobility, multipath
from .association import Association
from .endpoints import hostport
from .handlers import Handlers
from .path import Path, paths_of
from .trace import Tracer

if TYPE_CHECKING:
    from ..core.framing import Framer
    from ..policy.context import PolicyContext
    from .endpoints import Local, Remote

__all__ = ["Carrier", "Dialled", "Established", "Forker", "Opener"]

MessageCallback = Callable[[OutMessage], Any]


class Dialled(Protocol):
    """What establishment reads of an attempt's result: the stack it really is (an MPTCP
    attempt that fell back reports tcp), its handshake RTT, and a way to drop it. A
    Transient is one; so is the bare connected socket of `tp.open_socket`."""

    stack: str
    rtt_ms: float | None

    def abort(self) -> None: ...


D = TypeVar("D", bound=Dialled)


@dataclass(frozen=True, slots=True)
class Established(Generic[D]):
    """What an opener returns: the winning Transient (or socket) and the record of how it
    was chosen."""

    transient: D
    decision: Decision
    candidate: Candidate
    attempts: tuple[Attempt, ...]
    settings: Settings
    remote: Remote
    """The Remote as resolved for this race (addresses known)."""
    policy: PolicyContext
    """The context the decision was taken with (a live system layer's snapshot)."""
    framer: Callable[[], Framer]


Opener = Callable[[Callable[[], EarlyAttempt | None]], Awaitable[Established[Transient]]]
"""Races a new Transient for a carrier; calls its argument once per racing attempt for that
attempt's view of the early flight (AttemptSpec.early; None when nothing held can ride
early)."""
Forker = Callable[["Carrier"], Awaitable["Carrier"]]
"""Opens a fork of a carrier on a stack with one connection per Transient (runtime/fork.py)."""

_DEFAULT_HANDLERS = 16
_NONE: Any = ()
"""Rule 9: the empty collection a carrier starts with (read-only; replaced on first use)."""
_CLOSED = "the carrier is closed"
_CLOSED_ACTIVATING = "the carrier was closed while it was activating"
"""Concurrent async handlers when no decision says (policy carrier.maxHandlers)."""


def _report(message: str, exc: BaseException) -> None:
    """An application callback failed: the event loop's handler hears it, the carrier lives."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - callbacks run on the loop
        return
    loop.call_exception_handler({"message": message, "exception": exc})


class _Salvage:
    """`transient.salvage` for the carrier that adopted it (Rule 9: 64 bytes, where a
    functools.partial of the bound method costs 256)."""

    __slots__ = ("carrier", "transient")

    def __init__(self, carrier: Carrier, transient: Transient) -> None:
        self.carrier = carrier
        self.transient = transient

    def __call__(self, pendings: list[Pending]) -> bool:
        return self.carrier._salvage(self.transient, pendings)


def _fire(callback: Any, message: OutMessage) -> None:
    if callback is None:
        return
    try:
        callback(message)
    except Exception as exc:  # a user callback must not break the carrier
        _report("taps_post message callback failed", exc)


class Carrier:
    """A message-oriented connection chosen by policy (docs/runtime.md has the API tour).

    Born dormant (Rule 2): `send`/`send_msg`/`receive` activate it, as do `activate()`,
    `await carrier` and `async with carrier`. `explanation` is the Decision that chose it,
    `attempts` how the race went, `association` the long-lived state it shares with every
    carrier to the same Remote, `transients` and `paths` what serves it now, `events()` what
    happens to it.
    """

    __slots__ = ("__weakref__", "_accepted", "_acceptor", "_activated", "_activating",
                 "_activations", "_activator", "_association", "_auto", "_candidate",
                 "_closed_event", "_closing", "_controller", "_decision", "_expiry", "_fast",
                 "_flight", "_forks", "_framer", "_joiners", "_listeners", "_live", "_local",
                 "_mover", "_opener", "_owned", "_policy", "_reader", "_recheck", "_refused",
                 "_remote",
                 "_settings", "_state", "_stopping", "_streamed", "_subscribers", "_tasks",
                 "_tracer", "_transient", "_watch", "attempts", "forker")

    def __init__(
        self,
        transient: Transient | None,
        *,
        decision: Decision | None,
        association: Association | None,
        candidate: Candidate | None = None,
        remote: Remote | None = None,
        local: Local | None = None,
        policy: PolicyContext | None = None,
        framer: Callable[[], Framer] | None = None,
        opener: Opener | None = None,
        forker: Forker | None = None,
        attempts: tuple[Attempt, ...] = (),
        tracer: Tracer | None = None,
        settings: Settings | None = None,
        accepted: bool = False,
    ) -> None:
        self._decision = decision
        self._candidate = candidate
        self._remote = remote
        self._local = local
        self._policy = policy
        self._framer = framer
        self._opener = opener
        self._tracer = tracer
        self._settings = settings
        self._accepted = accepted
        self.forker = forker
        """How fork() opens a new connection when the stack cannot open a sibling on this
        one (runtime/fork.py); None: fork() needs a stack with siblings (QUIC)."""
        self.attempts = attempts
        """How each racing attempt of the last activation went (won, failed, cancelled)."""
        self._transient: Transient | None = None
        """The current Transient, or the last one while dormant after a loss (its inbox is
        still read), None before the first activation."""
        self._fast: Transient | None = None
        """Rule 4: the active message-mode Transient, else None."""
        self._state = "dormant"
        """dormant (never active), active, lost (dormant after a loss), closed."""
        self._streamed: asyncio.StreamWriter | None = None
        """as_stream()'s writer (Rule 6): the carrier is a stream now; close() closes it."""
        self._closing = False
        self._activations = 0
        self._flight: EarlyFlight | None = None
        self._live: list[EarlyAttempt] = _NONE
        """The attempts of the running activation (their copies are theirs to end)."""
        self._refused: dict[int, BaseException] = _NONE
        """Held messages the winner refused at settle time, by id(Held): send_msg raises."""
        self._expiry: asyncio.TimerHandle | None = None
        self._activating = False
        """An activation runs (in a caller's task, `_activator`, or in `_owned`)."""
        self._activated: asyncio.Future[None] | None = None
        """Made by the first caller that joins (or waits for) the running activation."""
        self._activator: asyncio.Task[Any] | None = None
        self._owned: asyncio.Task[None] | None = None
        self._stopping = False
        """close()/abort() cancelled the activation (its CancelledError is ours)."""
        self._joiners = 0
        self._tasks: set[asyncio.Task[Any]] = _NONE
        self._subscribers: list[asyncio.Queue[CarrierEvent]] = _NONE
        self._listeners: list[Callable[[CarrierEvent], Any]] = _NONE
        self._closed_event: Closed | None = None
        self._reader: Handlers | None = None
        self._acceptor: Handlers | None = None
        self._forks: deque[Carrier] = _NONE
        self._watch: mobility.Watch | None = None
        """Rule 10: the index that tells this carrier when its path goes (None: unwatched)."""
        self._mover: asyncio.Task[None] | None = None
        """Rule 10: the task surviving a path loss (migrate, or re-activate), if one runs."""
        self._auto = False
        """Rule 10: the running activation was started by the carrier itself."""
        self._recheck = False
        """Rule 10: a path became usable while `_mover` ran: `_come_back` looks again
        before it waits (a wakeup that came mid-activation is not lost)."""
        self._controller: multipath.PathController | None = None
        """The PathController applying Settings.subflows to the MPTCP Transient (None: none
        runs: not MPTCP, or the kernel's path manager is in force)."""
        if association is None:
            association = Association(_key_of(transient, remote), remote, local)
        self._association = association
        association.attach(self)
        if transient is not None:
            self._adopt(transient)

    # ---- what chose it, what serves it ----------------------------------------------------

    @property
    def explanation(self) -> Decision | None:
        """The Decision that chose this carrier (what `taps-post policy explain` prints);
        None before the first activation of an initiated carrier."""
        return self._decision

    @property
    def association(self) -> Association:
        """The Association this carrier is bound to (draft 2.3): history, tickets, paths."""
        return self._association

    @property
    def transients(self) -> tuple[Transient, ...]:
        """The Transients serving this carrier (draft Transients()): the current one while
        active; once it ended (dormant after a loss, or closed), that last one, not open
        (its inbox is still read, its `path` says where it ran), until an activation
        replaces it; empty before the first activation. `paths` lists only open ones."""
        t = self._transient
        return (t,) if t is not None else ()

    @property
    def transient(self) -> Transient | None:
        """The current Transient (the last one while dormant after a loss), or None."""
        return self._transient

    @property
    def paths(self) -> list[Path]:
        """The Paths serving this carrier now: one per open Transient, or one per subflow of
        an MPTCP connection (empty while dormant)."""
        interfaces = self._decision.interfaces if self._decision is not None else ()
        return [p for t in self.transients if t.is_open for p in paths_of(t, interfaces)]

    @property
    def candidate(self) -> Candidate | None:
        return self._candidate

    @property
    def remote(self) -> Remote | None:
        return self._remote

    @property
    def local(self) -> Local | None:
        return self._local

    @property
    def policy(self) -> PolicyContext | None:
        return self._policy

    @property
    def settings(self) -> Settings | None:
        """The effective properties of the Decision (None before the first activation)."""
        return self._settings

    @property
    def framer(self) -> Callable[[], Framer] | None:
        """The framer factory each new Transient of this carrier gets one from."""
        return self._framer

    @property
    def opener(self) -> Opener | None:
        return self._opener

    @property
    def tracer(self) -> Tracer | None:
        return self._tracer

    @property
    def accepted(self) -> bool:
        """Made by a Listener (or for a sibling the peer opened): it cannot re-activate."""
        return self._accepted

    @property
    def stack(self) -> str:
        """The stack of the current (or last) Transient; "" before the first activation."""
        t = self._transient
        return t.stack if t is not None else ""

    @property
    def remote_address(self) -> tuple[str, int] | None:
        t = self._transient
        return t.remote_address if t is not None else None

    @property
    def local_address(self) -> tuple[str, int] | None:
        t = self._transient
        return t.local_address if t is not None else None

    @property
    def is_active(self) -> bool:
        """Backed by an open Transient now (draft IsActive())."""
        t = self._fast
        return t is not None and t.is_open

    @property
    def is_dormant(self) -> bool:
        """Not active but can become so (initiated carriers before activation or after a
        loss; not a closed or streamed one)."""
        return not self.is_active and self._state != "closed" and not self._streamed \
            and self._reactivatable()

    def __repr__(self) -> str:
        state = ("active" if self.is_active else "stream" if self._streamed else
                 "closed" if self._state == "closed" else "dormant")
        return f"<{type(self).__name__} {self.stack or '?'} {self.local_address} -> " \
               f"{self.remote_address} {state}>"

    # ---- activation (Rule 2) --------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Carrier]:
        """`carrier = await tp.initiate(...)`: activate, then the carrier itself."""
        t = self._fast
        if t is None or not t.is_open:
            yield from self._activate().__await__()
        return self

    async def activate(self, on_active: Callable[[], Any] | None = None) -> None:
        """Make the carrier active (draft Activate(isActive)): a no-op when it is, else a race
        ranked with the Association's history (tickets make it cheaper). `on_active()` is
        called once it is active (awaited when it returns an awaitable). Raises PolicyError or
        EstablishmentError when it cannot be activated, UsageError on an accepted carrier
        whose connection ended (only the peer can initiate again)."""
        t = self._fast
        if t is None or not t.is_open:
            if not self._initiates():
                raise UsageError("an accepted carrier cannot be activated: only the peer "
                                 "that initiated it can establish a new connection")
            await self._activate()
        if on_active is not None:
            result = on_active()
            if inspect.isawaitable(result):
                await result

    def _initiates(self) -> bool:
        """This side can open a new connection: an initiated carrier, with its opener."""
        return self._opener is not None and not self._accepted

    def _reactivatable(self) -> bool:
        if not self._initiates():
            return False
        settings = self._settings
        return settings is None or settings.reactivate

    def _check_activatable(self) -> None:
        if self._streamed:
            raise UsageError("this carrier became a stream (as_stream()); use its writer")
        if self._state == "closed" or self._closing:
            raise ConnectionClosedError(self._closed_text())
        if not self._initiates():
            raise UsageError("an accepted carrier cannot be activated again: only the peer "
                             "that initiated it can establish a new one")
        if self._state == "lost" and not self._reactivatable():
            raise ConnectionClosedError(self._closed_text())

    def _closed_text(self) -> str:
        t = self._transient
        failure = t.failure if t is not None else None
        if self._closing or failure is None:
            return _CLOSED
        return f"{_CLOSED}: {t.stack if t else ''} failed: {failure}"

    async def _activate(self) -> Transient:
        """Active now (the Transient), or raise why not (Rule 2)."""
        t = self._fast
        if t is not None:
            if t.is_open:
                return t
            self._lost(t)  # died; its closed callback has not run yet
        self._check_activatable()
        if self._activating:
            return await self._join()
        # Lead: run the activation in the caller's task (no task hop on the common path), so
        # `await tp.initiate(...)` costs what connecting costs; others join through a
        # future made when the first of them comes. If the caller is cancelled while others
        # wait, a task the carrier owns takes over for them; close()/abort() cancel the
        # activation either way.
        self._activating = True
        task = self._activator = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            t = await self._establish()
        except asyncio.CancelledError:
            self._activator = None
            if self._stopping and task is not None and task.uncancel() <= cancelling:
                exc = ConnectionClosedError(_CLOSED_ACTIVATING)
                self._end_activation(exc)
                raise exc from None
            if self._joiners and not self._closing:
                self._owned = asyncio.ensure_future(self._owned_activation())
            else:
                self._end_activation(None, cancelled=True)
            raise
        except BaseException as exc:
            self._activator = None
            if self._stopping and task is not None and task.cancelling() > cancelling:
                task.uncancel()  # our cancel was absorbed below: it must not hit the caller
            self._end_activation(exc)
            raise
        self._activator = None
        if self._activated is None:
            self._activating = False
        else:
            self._end_activation(None)
        return t

    async def _join(self) -> Transient:
        fut = self._activated
        if fut is None:
            fut = self._activated = asyncio.get_running_loop().create_future()
        self._joiners += 1
        try:
            await asyncio.shield(fut)
        finally:
            self._joiners -= 1
        t = self._fast
        if t is None:
            raise ConnectionClosedError(self._closed_text())
        return t

    async def _owned_activation(self) -> None:
        try:
            await self._establish()
        except asyncio.CancelledError:
            self._end_activation(ConnectionClosedError(_CLOSED_ACTIVATING))
        except Exception as exc:
            self._end_activation(exc)
        else:
            self._end_activation(None)
        finally:
            self._owned = None

    def _end_activation(self, exc: BaseException | None, *, cancelled: bool = False) -> None:
        self._activating = False
        self._stopping = False
        fut, self._activated = self._activated, None
        if fut is None or fut.done():
            return
        if cancelled:
            fut.cancel()
        elif exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the callers that joined raise it themselves

    async def _establish(self) -> Transient:
        """One activation: race (each attempt offered the flight), adopt the winner, settle
        the flight on it and submit the rest in order (draft 3.1.2)."""
        opener = self._opener
        assert opener is not None
        live: list[EarlyAttempt] = []
        self._live = live
        if self._flight is not None:
            self._arm_expiry()  # held before the loop ran, or salvaged

        def early() -> EarlyAttempt | None:
            # Only a flight holding an idempotent message has anything to ride early: an
            # attempt without one connects as if nothing were held (no Fast Open probe),
            # and what is held later goes once the winner's handshake is done.
            flight = self._flight
            if flight is None:
                return None
            for h in flight.held:
                if h.message.idempotent:
                    a = flight.attempt()
                    live.append(a)
                    return a
            return None

        try:
            est = await opener(early)
        except asyncio.CancelledError:
            self._live = _NONE
            if self._closing:
                self._drop_held()
            else:
                self._refresh_flight()  # the next activation offers them again
            raise
        except BaseException as exc:
            self._live = _NONE
            if self._auto and not self._joiners and not self._closing:
                self._refresh_flight()  # Rule 10: nobody waits on it; kept for the next path
            else:
                self._fail_held(exc)
            raise
        self._live = _NONE
        t = est.transient
        if self._closing:
            t.abort()
            self._drop_held()
            raise ConnectionClosedError(_CLOSED_ACTIVATING)
        self._decision = est.decision
        self._candidate = est.candidate
        self._remote = est.remote
        self._policy = est.policy
        self._framer = est.framer
        self._settings = est.settings
        self.attempts = est.attempts
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        flight = self._flight
        self._flight = None
        rest: list[Held] = []
        if flight is not None:
            winner = t.early_attempt if t.early_attempt in live else None
            rest = flight.settle(winner)
        old = self._transient
        unread: list[InMessage] = []
        while old is not None and (msg := old.try_receive()) is not None:
            unread.append(msg)  # delivered by the lost Transient, not read yet: first
        self._adopt(t)
        if unread:
            t.deliver(unread)  # type: ignore[arg-type]
        for h in rest:
            try:
                t.submit(h.message, h.on_sent, h.on_acked, h.on_expired, h.on_send_error,
                         queued_at=h.queued_at)
            except Exception as exc:  # refused by this Transient (too large, closed)
                h.message.state = "expired"
                _fire(h.on_send_error, h.message)
                if self._refused is _NONE:
                    self._refused = {}
                self._refused[id(h)] = exc
        return t

    def _adopt(self, t: Transient) -> None:
        """Take `t` as the current Transient: bind it, watch it, give it its Path."""
        previous = self._transient
        old = previous.path if previous is not None else None
        t.bind(self)
        if self._settings is not None:
            t.apply_settings(self._settings)  # budgets, linger, idle timeout (Rule 8)
        t.salvage = _Salvage(self, t)
        t.on_soft_error = self._soft_error
        if hasattr(t, "on_path_change"):  # a stack whose connection can move (QUIC)
            t.on_path_change = self._path_moved
        t.closed.add_done_callback(self._transient_closed)
        decision = self._decision
        path = t.path = Path.of(t, decision.interfaces if decision is not None else ())
        self._transient = t
        self._state = "active"
        self._activations += 1
        self._fast = None if self._streamed else t
        reader = self._reader
        if reader is not None and not reader.stopped and not reader.paused:
            t.set_callback(reader.offer)
        if self._acceptor is not None:
            t.accept_siblings(self._sibling_arrived)
        tracer = self._tracer
        if tracer is not None:
            tracer.emit("carrier.active", stack=t.stack, interface=t.interface,
                        local=t.local_address, remote=t.remote_address, rtt_ms=t.rtt_ms,
                        session_reused=t.session_reused, dane=getattr(t, "dane", None))
        if self._subscribers or self._listeners:
            self._emit(Ready(t.stack, t.local_address, t.remote_address, t.interface, path,
                             self._activations > 1))
            if old is not None and old.route != path.route:  # a new port is no new path
                self._emit(PathChange(old, path))
        if self._initiates():
            self._watch_path(t)

    # ---- loss (Rule 3) --------------------------------------------------------------------

    def _transient_closed(self, fut: asyncio.Future[None]) -> None:
        t = self._transient
        if t is not None and t.closed is fut:
            self._lost(t)

    def _lost(self, t: Transient) -> None:
        """`t` ended. Dormant when we can re-activate, else closed (Rule 3)."""
        if self._transient is not t or self._state != "active":
            return
        self._fast = None
        self._unwatch_path()
        if self._closing or self._streamed:
            return
        error = t.failure
        if self._reactivatable():
            self._state = "lost"
            self._arm_expiry()
            self._emit(Dormant(error))
            if isinstance(error, PathLostError) and self._mover is None:
                self._mover = self.spawn(self._come_back())
        else:
            self._finish(error)

    def _salvage(self, t: Transient, pendings: list[Pending]) -> bool:
        """t.salvage: messages `t` queued but never wrote come back into the flight, in
        their order, with their deadlines, to go on the next Transient (straight onto the
        current one when `t` was already replaced by an open one)."""
        if self._closing or not self._reactivatable():
            return False
        now = _now()
        current = self._fast
        if t is not self._transient and current is not None and current.is_open:
            for p in pendings:
                m = p.message
                m.state = "new"
                try:
                    current.submit(m, p.on_sent, p.on_acked, p.on_expired, p.on_send_error,
                                   queued_at=_queued_at(p, now))
                except Exception:  # refused there (too large, closed): its end is an error
                    m.state = "expired"
                    _fire(p.on_send_error, m)
            return True
        flight = self._flight
        if flight is None:
            flight = self._flight = EarlyFlight()
        for p in pendings:
            m = p.message
            if m.state != "new":
                m.state = "new"
            flight.hold(Held(m, p.on_sent, p.on_acked, p.on_expired, p.on_send_error,
                             _queued_at(p, now)))
        return True

    def _soft_error(self, exc: BaseException) -> None:
        self._emit(SoftError(exc))

    # ---- moving networks (Rule 10) --------------------------------------------------------

    def _watch_path(self, t: Transient) -> None:
        """Be told when `t`'s interface or local address goes (runtime/mobility.py); and
        an MPTCP Transient gets its PathController (runtime/multipath.py)."""
        multi = _multipath(t.stack)
        if multi and self._controller is None and self._settings is not None:
            self._controller = multipath.control(t, self._settings, self._interfaces(),
                                                 self._emit)
        found = mobility.watch(self, t.local_address, t.interface, multipath=multi)
        if found is not self._watch and self._watch is not None:
            self._watch.remove(self)
        self._watch = found

    def _unwatch_path(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.close()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.remove(self)

    def _pinned(self) -> bool:
        """The Local names an interface or an address: no automatic move off it (Rule 10)."""
        local = self._local
        return local is not None and (local.interface is not None or local.address is not None)

    def _interfaces(self) -> tuple[Interface, ...]:
        decision = self._decision
        return tuple(decision.interfaces) if decision is not None else ()

    def path_gone(self, interface: str | None, address: str | None,
                  interfaces: tuple[Interface, ...]) -> None:
        """runtime/mobility.py: `interface` went down or `address` was removed (Rule 10)."""
        t = self._fast
        if t is None or not t.is_open or self._closing or self._state != "active":
            return
        lost = self._lost_paths(t, interface, address)  # before the controller acts on it
        controller = self._controller
        if controller is not None and (lost or interface in controller.plan):
            controller.changed(interfaces)  # (a change to nothing it plans costs nothing)
        if lost and self._mover is None:
            self._mover = self.spawn(self._survive(t, interface, address, interfaces, lost[0]))

    def _lost_paths(self, t: Transient, interface: str | None, address: str | None
                    ) -> list[Path]:
        """The Paths of `t` (its own, or its subflows') the change takes away."""
        own = t.path
        if own is not None and _lost_subflow(own, interface, address):
            return [own]
        if not _multipath(t.stack):
            return []
        interfaces = self._interfaces()
        measure = getattr(t, "measure_subflows", None)  # no sock_diag per subflow
        flows = measure(interfaces) if measure is not None else t.subflows()
        if not any(_lost_subflow(f, interface, address) for f in flows):
            return []  # the common case for a link elsewhere: no Paths built
        return [p for p in paths_of(t, interfaces)
                if p.local_address is not None and _lost_subflow(p, interface, address)]

    def path_usable(self, interfaces: tuple[Interface, ...]) -> None:
        """runtime/mobility.py: an interface came up or an address was added (Rule 10): a
        dormant carrier that lost its path comes back; under multipathPolicy handover an
        active one whose stack migrates (QUIC) moves to a better path its Decision ranks
        above the current one (MPTCP: its PathController opens the plan's subflows; TCP
        stays where it is: moving it would need a new connection while messages are in
        flight, so the better path is taken at its next activation)."""
        if self._controller is not None:
            self._controller.changed(interfaces)
        if self._closing:
            return
        if self._mover is not None:
            self._recheck = True  # _come_back looks again if its activation fails
            return
        if self._state == "lost":
            self._mover = self.spawn(self._come_back(interfaces))
            return
        t = self._fast
        settings = self._settings
        if (t is None or not t.is_open or self._state != "active" or settings is None
                or settings.multipath_policy != "handover" or self._pinned()
                or type(t).migrate is Transient.migrate):  # this stack cannot migrate
            return
        better = self._better_path(t, interfaces)
        if better is not None:
            self._mover = self.spawn(self._hand_over(t, better[0], better[1], interfaces))

    def _better_path(self, t: Transient, interfaces: tuple[Interface, ...]
                     ) -> tuple[str, str] | None:
        """The best usable (local address, interface) of the Decision when it ranks above
        `t`'s interface, else None."""
        remote = t.remote_address
        family = ("ipv6" if ":" in remote[0] else "ipv4") if remote else None
        usable = mobility.usable_addresses(self._decision, t.stack, family, interfaces)
        if not usable or usable[0][1] == t.interface:
            return None
        decision = self._decision
        order = [c.interface for c in decision.candidates] if decision is not None else []
        best = order.index(usable[0][1])
        current = order.index(t.interface) if t.interface in order else len(order)
        return usable[0] if best < current else None

    async def _hand_over(self, t: Transient, ip: str, name: str,
                         interfaces: tuple[Interface, ...]) -> None:
        try:
            await self._migrate(t, ip, name, interfaces)
        finally:
            if self._mover is _current():
                self._mover = None

    async def _migrate(self, t: Transient, ip: str, name: str,
                       interfaces: tuple[Interface, ...]) -> bool:
        """Ask `t` to move to `ip` on `name` (QUIC connection migration); True when it did
        (the PathChange is emitted by `_path_moved`)."""
        try:
            moved = await t.migrate(ip, name)
        except (OSError, ConnectionError) as exc:
            _report("taps_post migrate failed", exc)
            return False
        if not moved or not t.is_open:
            return False
        self._path_moved(t, interfaces)
        return True

    def _path_moved(self, t: Transient, interfaces: tuple[Interface, ...] | None = None
                    ) -> None:
        """`t` runs between other addresses now (it migrated, on our request or a
        sibling's, or the peer moved): a new Path, the index follows, PathChange."""
        if t is not self._transient or self._state != "active":
            return
        old = t.path
        if interfaces is None:
            interfaces = self._interfaces()
        new = Path.of(t, interfaces or None)
        if old is not None and old.route == new.route:
            return
        t.path = new
        if self._initiates():
            self._watch_path(t)
        self._emit(PathChange(old, new))

    async def _survive(self, t: Transient, interface: str | None, address: str | None,
                       interfaces: tuple[Interface, ...], gone: Path) -> None:
        """Rule 10 for an active carrier whose path went: keep going on another subflow,
        migrate, or fail the Transient (the carrier then comes back by itself)."""
        try:
            alive = [s for s in t.subflows() if not _lost_subflow(s, interface, address)
                     and _up(interfaces, s.interface)]
            if alive:
                paths = paths_of(t, interfaces)
                new = next((p for p in paths if p.interface == alive[0].interface
                            and p.local_address is not None
                            and p.local_address[0] == alive[0].local_address[0]),
                           paths[0] if paths else None)
                self._emit(PathChange(gone, new))
                return
            if self._pinned() and type(t).migrate is not Transient.migrate:
                return  # pinned, and its stack migrates: the application's to move (QUIC)
            remote = t.remote_address
            family = ("ipv6" if ":" in remote[0] else "ipv4") if remote else None
            usable = [] if self._pinned() else mobility.usable_addresses(
                self._decision, t.stack, family, interfaces, avoid_interface=interface,
                avoid_address=address)
            for ip, name in usable:
                if await self._migrate(t, ip, name, interfaces):
                    return
                break  # the stack cannot (TCP), or not now: fail it below
            if t.is_open:
                self._emit(PathChange(gone, None))  # before Dormant: nothing carries on
                where = address or interface or "?"
                t.fail(PathLostError(f"the path of this {t.stack} connection went away "
                                     f"({where} is gone)", interface, address))
        finally:
            if self._mover is _current():
                self._mover = None
        if self._state == "active" and self._transient is t and not t.is_open:
            self._lost(t)  # its closed callback has not run yet: dormant now, come back

    async def _come_back(self, interfaces: tuple[Interface, ...] | None = None) -> None:
        """Rule 10: re-activate a carrier whose path went, on another usable path, or wait
        dormant for the monitor to report one (path_usable starts this again; one that
        came while this ran makes it look again, `_recheck`)."""
        try:
            remote = self._remote
            families = None
            if remote is not None and remote.addresses:
                families = {"ipv6" if ":" in a else "ipv4" for a in remote.addresses}
            loopback = remote is not None and bool(remote.addresses) and all(
                mobility.is_loopback(a) for a in remote.addresses or ())
            while True:
                self._recheck = False
                if interfaces is None:
                    interfaces = mobility.current_interfaces()
                if not mobility.has_usable_path(families, interfaces, loopback=loopback):
                    self._watch = mobility.wait_for_path(self, self._watch)
                    return
                mobility.refresh_interfaces()
                self._auto = True
                try:
                    await self._activate()
                    return
                except (Exception, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        if self._state == "lost" and not self._closing:
                            self._watch = mobility.wait_for_path(self, self._watch)
                        raise
                    if self._state != "lost" or self._closing:
                        return
                    if not self._recheck:
                        self._watch = mobility.wait_for_path(self, self._watch)
                        return
                    interfaces = None  # a path came while we tried: look again
                finally:
                    self._auto = False
        finally:
            if self._mover is _current():
                self._mover = None

    # ---- held messages --------------------------------------------------------------------

    def hold(self, message: OutMessage, *, on_sent: MessageCallback | None = None,
             on_acked: MessageCallback | None = None,
             on_expired: MessageCallback | None = None,
             on_send_error: MessageCallback | None = None) -> None:
        """Queue `message` for this carrier's next activation without starting it (what
        `initiate(send=...)` does); on an active carrier it is submitted at once. Its
        lifetime counts from now."""
        t = self._fast
        if t is not None and t.is_open:
            t.submit(message, on_sent, on_acked, on_expired, on_send_error)
            return
        self._check_activatable()
        self._hold(Held(message, on_sent, on_acked, on_expired, on_send_error, _now()))

    def _hold(self, held: Held) -> None:
        flight = self._flight
        if flight is None:
            flight = self._flight = EarlyFlight()
        flight.hold(held)
        if held.message.lifetime is not None:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        """A timer for the earliest deadline among held messages no attempt carries."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        flight = self._flight
        if flight is None or not flight.held:
            return
        taken = self._taken()
        deadlines = [d for h in flight.held
                     if (d := h.deadline) is not None and id(h.message) not in taken]
        if not deadlines:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # held before the loop runs: armed again when activation starts
        self._expiry = loop.call_at(min(deadlines), self._expire_held)

    def _taken(self) -> set[int]:
        return {id(h.message) for a in self._live for h in a.taken}

    def _expire_held(self) -> None:
        self._expiry = None
        flight = self._flight
        if flight is None:
            return
        now = asyncio.get_running_loop().time()
        taken = self._taken()
        if taken:
            everything = flight.held
            flight.held = [h for h in everything if id(h.message) not in taken]
            gone = flight.expire(now)
            left = {id(h.message) for h in flight.held} | taken
            flight.held = [h for h in everything if id(h.message) in left]
        else:
            gone = flight.expire(now)
        for h in gone:
            _fire(h.on_expired, h.message)
        self._arm_expiry()

    def _fail_held(self, exc: BaseException) -> None:
        """The activation failed: messages whose lifetime passed expire, the others get
        on_send_error (and their send_msg raises `exc`)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        flight = self._flight
        self._flight = None
        if flight is None:
            return
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # pragma: no cover
            now = time.monotonic()
        for h in flight.expire(now):
            _fire(h.on_expired, h.message)
        for h in flight.drain():
            _fire(h.on_send_error, h.message)

    def _drop_held(self) -> None:
        self._fail_held(ConnectionClosedError(_CLOSED))

    def _refresh_flight(self) -> None:
        """A fresh flight holding the same messages (the old one's attempts are gone)."""
        old = self._flight
        if old is None:
            return
        fresh = EarlyFlight()
        fresh.held = old.held
        old.held = []
        old.drain()
        self._flight = fresh
        self._arm_expiry()

    # ---- sending --------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send `data` as one message with default properties (waits under backpressure;
        activates a dormant carrier first)."""
        t = self._fast
        if t is not None and isinstance(data, bytes):
            try:
                if t.try_send_plain(data if type(data) is bytes else bytes(data)):
                    return  # the common case: no OutMessage, no coroutine below this one
            except ConnectionClosedError:
                if self._closing or not self._reactivatable():
                    raise
                self._lost(t)
        await self.send_msg(OutMessage(data))

    async def send_msg(self, message: OutMessage, *, on_sent: MessageCallback | None = None,
                       on_acked: MessageCallback | None = None,
                       on_expired: MessageCallback | None = None,
                       on_send_error: MessageCallback | None = None) -> None:
        """Send a message; its callbacks report what became of it, each message ending
        exactly once with on_acked (acknowledging stacks; on_sent before it when the kernel
        took it), on_sent (datagram stacks), on_expired or on_send_error. On a carrier that
        is not active the message is held and the carrier activated (the draft's SendMsg):
        this returns once it is, and raises the establishment error if it cannot be."""
        t = self._fast
        if t is not None and t.is_open:
            queued_at = t.loop.time()
            await t.wait_writable()
            try:
                t.submit(message, on_sent, on_acked, on_expired, on_send_error,
                         queued_at=queued_at)
                return
            except ConnectionClosedError:
                if self._closing or not self._reactivatable():
                    raise
                self._lost(t)
        self._check_activatable()
        held = Held(message, on_sent, on_acked, on_expired, on_send_error,
                    asyncio.get_running_loop().time())
        self._hold(held)
        t = await self._activate()
        refused = self._refused.pop(id(held), None) if self._refused else None
        if refused is not None:
            raise refused
        await t.wait_writable()

    # ---- receiving ------------------------------------------------------------------------

    async def receive(self) -> InMessage:
        """The next message (activates a dormant carrier first); ConnectionClosedError once
        the peer closed and all were read, or, dormant after a loss, once what the old
        Transient delivered is read."""
        t = self._fast
        if t is not None:
            msg = t.try_receive()  # no coroutine hop when a message waits
            if msg is not None:
                return msg
            try:
                return await t.receive()
            except ConnectionClosedError as exc:
                if not t.is_open and not self._closing and self._reactivatable():
                    raise ConnectionClosedError(self._dormant_text(t)) from exc
                raise
        return await self._receive_slow()

    async def _receive_slow(self) -> InMessage:
        if self._streamed:
            raise UsageError("this carrier became a stream (as_stream()); use its reader")
        t = self._transient
        if t is not None and self._state in ("lost", "closed", "active"):
            msg = t.try_receive()
            if msg is not None:
                return msg
            if self._state == "active":  # died, the closed callback has not run yet
                self._lost(t)
            if self._state == "lost":
                raise ConnectionClosedError(self._dormant_text(t))
            if self._state == "closed" or self._closing:
                try:
                    return await t.receive()  # the Transient's own words (peer closed, ...)
                except ConnectionClosedError as exc:
                    raise ConnectionClosedError(self._closed_text()) from exc
        t = await self._activate()
        return await self.receive()

    def _dormant_text(self, t: Transient) -> str:
        why = f"{t.stack} failed: {t.failure}" if t.failure is not None else \
            f"the peer closed the {t.stack} connection"
        return (f"the carrier is dormant ({why}); send() or activate() re-establishes it")

    def __aiter__(self) -> AsyncIterator[InMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[InMessage]:
        while True:
            try:
                msg = await self.receive()
            except ConnectionClosedError:
                t = self._transient
                if t is not None and t.failure is not None and not self._closing:
                    raise
                return
            yield msg

    def ready(self, callback: Callable[[InMessage], Any], *,
              max_concurrent: int | None = None) -> None:
        """Draft Ready(): `callback(msg)` for every message until it returns False (then
        messages wait for receive() again). An `async def` callback is awaited as a task the
        carrier owns, at most `max_concurrent` at once (default: policy
        carrier.maxHandlers); at the bound the carrier stops taking messages until one
        finishes (backpressure). Does not activate the carrier; it follows re-activations."""
        if self._streamed:
            raise UsageError("this carrier became a stream (as_stream()); use its reader")
        handler = self._handlers(callback, max_concurrent, self._resume_reader)
        self._reader = handler
        t = self._transient
        if t is not None:
            t.set_callback(handler.offer)

    def _handlers(self, callback: Callable[[Any], Any], max_concurrent: int | None,
                  resume: Callable[[], None]) -> Handlers:
        """Rule 5: `callback` under the contract, its tasks this carrier's (close() ends
        them), at most `max_concurrent` (default: policy carrier.maxHandlers) at once."""
        s = self._settings
        limit = max_concurrent if max_concurrent is not None else \
            s.max_handlers if s is not None else _DEFAULT_HANDLERS
        if limit < 1:
            raise UsageError("max_concurrent must be at least 1")
        if self._tasks is _NONE:
            self._tasks = set()
        return Handlers(callback, limit, message="taps_post handler failed", owner=self._tasks,
                        resume=resume)

    def _resume_reader(self) -> None:
        handler, t = self._reader, self._transient
        if handler is None or t is None:
            return
        t.set_callback(None if handler.stopped else handler.offer)

    # ---- events (Rule 5) ------------------------------------------------------------------

    def events(self) -> AsyncIterator[CarrierEvent]:
        """`async for event in carrier.events()`: Ready, Dormant, SoftError, PathChange and,
        last, Closed (the iteration ends after it). Each call is a new subscriber that sees
        every event from the call on."""
        queue: asyncio.Queue[CarrierEvent] = asyncio.Queue()
        if self._closed_event is not None:
            queue.put_nowait(self._closed_event)
        else:
            if self._subscribers is _NONE:
                self._subscribers = []
            self._subscribers.append(queue)
        return self._event_stream(queue)

    async def _event_stream(self, queue: asyncio.Queue[CarrierEvent]
                            ) -> AsyncIterator[CarrierEvent]:
        try:
            while True:
                event = await queue.get()
                yield event
                if type(event) is Closed:
                    return
        finally:
            if queue in self._subscribers:
                self._subscribers.remove(queue)

    def on_event(self, callback: Callable[[CarrierEvent], Any]) -> None:
        """`callback(event)` for every carrier event until it returns False (an async one is
        awaited as a task the carrier owns; its False stops later calls)."""
        if self._listeners is _NONE:
            self._listeners = []
        self._listeners.append(callback)

    def _emit(self, event: CarrierEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(event)
        for cb in list(self._listeners):
            try:
                result = cb(event)
            except Exception as exc:
                _report("taps_post event callback failed", exc)
                continue
            if inspect.isawaitable(result):
                self.spawn(self._event_verdict(cb, result), cancel_on_close=False)
            elif result is False and cb in self._listeners:
                self._listeners.remove(cb)

    async def _event_verdict(self, cb: Callable[[CarrierEvent], Any],
                             result: Awaitable[Any]) -> None:
        try:
            verdict = await result
        except Exception as exc:
            _report("taps_post event callback failed", exc)
            return
        if verdict is False and cb in self._listeners:
            self._listeners.remove(cb)

    def spawn(self, coro: Awaitable[Any], *, cancel_on_close: bool = True) -> asyncio.Task[Any]:
        """Run `coro` as a task this carrier owns (close() cancels and awaits it)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        if cancel_on_close:
            if self._tasks is _NONE:
                self._tasks = set()
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            _KEEP.add(task)
            task.add_done_callback(_KEEP.discard)
        return task

    # ---- morphing, forking ----------------------------------------------------------------

    async def as_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Turn this carrier into an asyncio reader/writer pair (irreversible; activates a
        dormant carrier first)."""
        if self._streamed:
            raise UsageError("this carrier became a stream (as_stream()); use its writer")
        t = await self._activate()
        if not _stream_capable(t.stack):
            raise UsageError(f"as_stream() needs a reliable ordered stack, not {t.stack}")
        if not t.untouched:
            raise UsageError("as_stream() is only allowed before the first message")
        if not t.is_open:
            raise ConnectionClosedError(_CLOSED)
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
        self._fast = None
        self._streamed = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, self._streamed

    async def fork(self) -> Carrier:
        """A new carrier on the same Association (draft 2.1: a fork request at the peer).
        QUIC: a new stream on the same connection, which the peer's `accept()` receives;
        stream stacks: what the carrier's forker does (runtime/fork.py: a new connection the
        peer's parent carrier accepts). Activates a dormant carrier first."""
        t = self._fast
        if t is None or not t.is_open:
            t = await self._activate()
        sibling = t.open_sibling()
        if sibling is not None:
            return self.sibling(sibling)
        if self.forker is None:
            raise UsageError(f"fork() is not available on this {t.stack} carrier: its stack "
                             "has no siblings and nobody gave it a forker")
        return await self.forker(self)

    def sibling(self, transient: Transient | None = None, *,
                accepted: bool | None = None) -> Carrier:
        """A new carrier sharing this one's decision, Association, endpoints, policy,
        framer, settings, opener and forker, on `transient` (None: a dormant carrier that
        activates with this one's opener, i.e. a plain parallel connection)."""
        return type(self)(
            transient, decision=self._decision, association=self._association,
            candidate=self._candidate, remote=self._remote, local=self._local,
            policy=self._policy, framer=self._framer, opener=self._opener,
            forker=self.forker, tracer=self._tracer, settings=self._settings,
            accepted=self._accepted if accepted is None else accepted)

    def accept(self, callback: Callable[[Carrier], Any], *,
               max_concurrent: int | None = None) -> None:
        """Draft Accept(): `callback(child)` for each carrier the peer forks from this one,
        until it returns False (later forks are then refused). QUIC delivers its new streams
        here; on stream stacks runtime/fork.py delivers announced forks (`deliver_fork`).
        Async callbacks are awaited as owned tasks, at most `max_concurrent` at once; forks
        arriving at the bound wait in order."""
        self._acceptor = self._handlers(callback, max_concurrent, self._resume_acceptor)
        t = self._transient
        if t is not None and self._state == "active":
            t.accept_siblings(self._sibling_arrived)
        self._resume_acceptor()

    def _sibling_arrived(self, transient: Transient) -> bool:
        """transient.accept_siblings: a stream the peer opened. False (the stack refuses
        every later one) once the accept callback said False."""
        child = self.sibling(transient, accepted=True)
        if not self.deliver_fork(child):
            child.abort()
            return False
        handler = self._acceptor
        return handler is None or not handler.stopped

    def deliver_fork(self, child: Carrier) -> bool:
        """Hand `child`, a fork the peer opened, to the accept() callback (or hold it until
        accept() is called, or while the callback is at its concurrency bound). True when
        taken (also by a callback that returns False for it: it keeps that one and refuses
        later forks); False when refused: the accept callback returned False earlier, or
        this carrier is closed."""
        if self._state == "closed" or self._closing:
            return False
        handler = self._acceptor
        if handler is not None and handler.stopped:
            return False
        if handler is None or handler.paused or self._forks:
            if self._forks is _NONE:
                self._forks = deque()
            self._forks.append(child)
            return True
        handler.offer(child)
        return True

    def _resume_acceptor(self) -> None:
        handler = self._acceptor
        if handler is None:
            return
        while self._forks and not handler.paused and not handler.stopped:
            handler.offer(self._forks.popleft())
        if handler.stopped:
            while self._forks:
                self._forks.popleft().abort()

    # ---- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Send what is queued, then close gracefully, within policy carrier.linger (then
        the connection is aborted, Rule 8). Held messages (never activated) get
        on_send_error; handler tasks are cancelled. The carrier cannot be used again, and
        it is closed even when close() itself is cancelled (that aborts it)."""
        self._closing = True
        try:
            if self._activating:
                await self._stop_activation()
            if self._flight is not None:
                self._drop_held()
            if self._tasks:
                await self._cancel_tasks()
            t = self._transient
            if t is not None:
                t.closed.remove_done_callback(self._transient_closed)  # we know it ends
                if self._streamed is not None:
                    await _close_stream(self._streamed, t.linger)
                else:
                    await t.aclose()
        except asyncio.CancelledError:
            self.abort()
            raise
        self._fast = None
        self._finish(t.failure if t is not None else None)

    def abort(self) -> None:
        """Close at once: the connection is reset, nothing queued is sent."""
        self._closing = True
        self._stop_activation_now()
        self._drop_held()
        current = asyncio.current_task() if _running() else None
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        t = self._transient
        if t is not None:
            t.abort()
        self._fast = None
        self._finish(t.failure if t is not None else None)

    def _stop_activation_now(self) -> bool:
        """Cancel a running activation; True when there is one to wait for."""
        if self._owned is not None:
            self._owned.cancel()
            return True
        activator = self._activator
        if activator is not None and not activator.done():
            if _running() and activator is asyncio.current_task():
                return False
            self._stopping = True
            activator.cancel()
            return True
        return False

    async def _stop_activation(self) -> None:
        fut = self._activated
        if fut is None:
            fut = self._activated = asyncio.get_running_loop().create_future()
        if self._stop_activation_now():
            try:
                await asyncio.shield(fut)
            except (Exception, asyncio.CancelledError):
                if not fut.done():  # we were cancelled ourselves
                    raise

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _finish(self, error: BaseException | None) -> None:
        """Closed for good (by us, or a loss that cannot re-activate)."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._fast = None
        self._unwatch_path()
        mover, self._mover = self._mover, None
        if mover is not None and mover is not _current():
            mover.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while self._forks:
            self._forks.popleft().abort()
        self._association.detach(self)
        if self._tracer is not None:
            self._tracer.emit("carrier.closed", stack=self.stack, remote=self.remote_address,
                              error="" if error is None else str(error))
        event = self._closed_event = Closed(None if self._closing else error)
        if self._subscribers or self._listeners:
            self._emit(event)
        self._subscribers = _NONE
        self._listeners = _NONE

    async def __aenter__(self) -> Carrier:
        t = self._fast
        if t is None or not t.is_open:
            await self._activate()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_KEEP: set[asyncio.Task[Any]] = set()
"""Event-callback tasks that outlive their carrier's close (they were given Closed)."""


async def _close_stream(writer: asyncio.StreamWriter, linger: float) -> None:
    """Rule 8 for a carrier that became a stream: close the writer (what is buffered goes
    first), bounded by `linger`, then abort; a peer that never reads cannot hold the socket.
    Nothing outlives the call (no timer left behind)."""
    writer.close()
    # A task of its own: a timeout cancelling a bare wait on the protocol's close future
    # would cancel that future, and the abort's end could not be awaited any more.
    closed = asyncio.ensure_future(writer.wait_closed())
    closed.add_done_callback(_consume)
    try:
        async with asyncio.timeout(linger):
            await asyncio.shield(closed)
        return
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):  # the connection ended with an error: it is closed
        return
    with contextlib.suppress(ConnectionError, OSError):
        await closed  # the abort's connection_lost runs at the next turn


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: an error ending the stream is the application's


def _current() -> asyncio.Task[Any] | None:
    return asyncio.current_task() if _running() else None


def _multipath(stack: str) -> bool:
    try:
        return bool(stacks.info(stack).multipath_capable)
    except KeyError:
        return False


def _lost_subflow(s: Any, interface: str | None, address: str | None) -> bool:
    """Does the change (an address removed, else an interface gone) take `s` (a Subflow
    or a Path)?"""
    if address is not None:
        local = s.local_address
        return local is not None and mobility.canonical(local[0]) == address
    return interface is not None and s.interface == interface


def _up(interfaces: tuple[Interface, ...], name: str | None) -> bool:
    """Is interface `name` up in `interfaces` (unknown name or no list: assumed so)?"""
    if name is None or not interfaces:
        return True
    return any(i.name == name and i.up for i in interfaces)


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _queued_at(p: Pending, now: float) -> float:
    """When a salvaged message was sent (its deadline minus its lifetime), else now."""
    life = p.message.lifetime
    return p.deadline - life if p.deadline is not None and life is not None else now


def _now() -> float:
    """The loop's clock (time.monotonic() before a loop runs: the default loop's clock)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _key_of(transient: Transient | None, remote: Remote | None) -> str:
    """The Association key of an accepted carrier made without one: its peer's host:port."""
    if remote is not None:
        return remote.hostport
    address = transient.remote_address if transient is not None else None
    if not address:
        return "unknown"
    return hostport((address[0], address[1]))


def _stream_capable(stack: str) -> bool:
    try:
        return bool(stacks.info(stack).stream_capable)
    except KeyError:
        return False
