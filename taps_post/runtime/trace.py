"""What happened during an establishment, for logs and for the application: one `emit()` feeds
both stdlib logging (under `taps_post.*`) and an optional per-call trace callback, in the
style of httpcore's `trace` extension: `callback(name: str, info: dict) -> None | Awaitable`.

Rule 1: silent by default. `taps_post` carries a NullHandler, so an application that never
configures logging sees nothing on stderr, not even warnings. When no callback is set and no
logger wants the event's level, `emit()` returns before looking at its arguments.
Rule 2: no secrets, by construction. An event's info holds names, addresses, stacks, timings,
kinds and error text only: every value must be a str, int, float, bool or None, or a tuple of
such values (an enum member becomes its value). Anything else (bytes, certificates, keys,
session tickets, messages, arbitrary objects, lists, dicts) is a TypeError at the `emit()`
call, so a payload cannot leak through a trace by accident. Info is therefore always plain
JSON-able data.
Rule 3: a trace callback can never break a connection. What it raises is logged (warning,
with the traceback, on the event's logger) and dropped. An awaitable it returns runs in a
task the Tracer owns, in emit order, one at a time; `await tracer.flush()` waits for them.
Rule 4: names are `area.event`; the area picks the logger: `decision` -> taps_post.decision,
`race` and `attempt` -> taps_post.race, `carrier` -> taps_post.carrier, `listener` ->
taps_post.listener, `resolution` -> taps_post.resolution. An unknown area is a ValueError (a
typo must not create a logger).

Every event's info also carries `trace_id` (one per Tracer, shared by its `bind()`
children: it ties together the events of one initiate or listen call) and `t_ms` (time
since the Tracer was made, on the event loop's clock). EVENTS lists the events taps_post
emits and what each carries; log records carry the same dict as `record.taps`
(`extra={"taps": {"event": name, ...}}`).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from ..decision.decision import Decision

__all__ = ["EVENTS", "LOGGERS", "TraceCallback", "TraceValue", "Tracer", "decision_complete",
           "logger_for"]

TraceValue: TypeAlias = "str | int | float | bool | tuple[TraceValue, ...] | None"
"""What an info value may be (Rule 2)."""

TraceCallback: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[None] | None]
"""`trace(name, info)`: called for every event; may be a coroutine function."""

_ROOT = logging.getLogger("taps_post")
_ROOT.addHandler(logging.NullHandler())

_DECISION = logging.getLogger("taps_post.decision")
_RACE = logging.getLogger("taps_post.race")
_CARRIER = logging.getLogger("taps_post.carrier")
_LISTENER = logging.getLogger("taps_post.listener")
_RESOLUTION = logging.getLogger("taps_post.resolution")
_RENDEZVOUS = logging.getLogger("taps_post.rendezvous")
LOGGERS: Mapping[str, logging.Logger] = {
    "decision": _DECISION, "race": _RACE, "attempt": _RACE, "carrier": _CARRIER,
    "listener": _LISTENER, "resolution": _RESOLUTION, "rendezvous": _RENDEZVOUS,
}
"""Event area -> the logger its events go to."""

EVENTS: Mapping[str, str] = {
    "resolution.answer": "name, rtype, status (ok, nxdomain, nodata, servfail, refused, "
                         "timeout, error, hosts, getaddrinfo), count (addresses or records), "
                         "ttl, at_ms (since resolution started), from_cache",
    "resolution.pass": "number, at_ms (since resolution started), trigger, candidates (new "
                       "ones this pass adds to the race)",
    "decision.complete": "decide() ran: outcome, candidates (count), stacks, from_cache; "
                         "also for a decision the policy refuses (a PolicyError follows)",
    "race.started": "candidates (count), attempt_delay_ms, timeout_ms",
    "race.joined": "candidates (count), at_ms (since the race started): a later resolution "
                   "pass's candidates joined the running race",
    "race.withdrawn": "ranks (of the candidates), reason, at_ms (since the race started): "
                      "pending candidates a later resolution pass's decision no longer has, "
                      "never started",
    "attempt.started": "rank, interface, stack, remote, at_ms (since the race started)",
    "attempt.failed": "rank, interface, stack, remote, elapsed_ms, kind, error",
    "attempt.won": "rank, interface, stack, remote, elapsed_ms",
    "attempt.cancelled": "rank, interface, stack, remote, elapsed_ms, reason",
    "attempt.fallback": "rank, interface, stack, now (the stack in use), remote: an MPTCP "
                        "attempt won as plain TCP (the peer or a middlebox fell back)",
    "race.finished": "outcome (won, failed, timeout, cancelled), elapsed_ms, winner (rank)",
    "carrier.active": "stack, interface, local, remote, rtt_ms, session_reused, dane (how "
                      "the secure stack accepted the peer: 'dane-ee match ...', 'no TLSA ...: "
                      "PKIX', 'dane off'; None for a stack that checks no certificate)",
    "carrier.closed": "stack, remote, error (empty on a clean close)",
    "listener.ready": "stack, interface, local",
    "listener.accepted": "stack, interface, local, remote",
    "listener.failed": "stack, remote, kind, error (a handshake that did not complete)",
    "listener.closed": "stack, local",
    "listener.stopped": "ports (an accept callback returned False: no more connections)",
    "listener.fork": "stack, remote (a fork request joined a carrier of this listener)",
    "rendezvous.offer": "direction (sent, received, skipped), peer, session, candidates "
                        "(count), fingerprint, reason (skipped ones); never the ICE "
                        "credentials",
    "rendezvous.candidates": "local_host, local_srflx, local_prflx, local_relay, remote_host, "
                             "remote_srflx, remote_prflx, remote_relay (counts), dropped "
                             "(count)",
    "rendezvous.pair": "kind (of our candidate), local, remote, interface, role, elapsed_ms: "
                       "the nominated ICE pair",
}
"""The events taps_post emits and their info keys (besides trace_id and t_ms). Other names in
a known area are allowed; these are the ones callers may rely on."""

_LEVELS: Mapping[str, int] = {"listener.failed": logging.INFO}
"""Events logged above DEBUG. Failures the caller is told about by an exception (an
EstablishmentError) stay at DEBUG: logging them louder would report them twice."""

_IDS = itertools.count(1)
_PUMPS: set[asyncio.Task[None]] = set()
"""Strong references to running callback pumps (the loop keeps only weak ones)."""


def logger_for(name: str) -> logging.Logger:
    """The logger an event goes to (Rule 4)."""
    area, dot, event = name.partition(".")
    log = LOGGERS.get(area)
    if log is None or not dot or not event:
        raise ValueError(f"trace event {name!r} is not `area.event` with area in "
                         f"{', '.join(sorted(LOGGERS))}")
    return log


def _clean(key: str, value: object) -> TraceValue:
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value  # type: ignore[return-value]
    if kind is tuple:
        return tuple(_clean(key, v) for v in value)  # type: ignore[attr-defined]
    if isinstance(value, enum.Enum) and type(value.value) in (str, int):
        return value.value  # type: ignore[no-any-return]
    raise TypeError(f"trace info {key}={kind.__name__}: only str, int, float, bool, None and "
                    "tuples of them may leave through a trace (names, numbers, kinds, text)")


class _Sink:
    """What a Tracer and its bind() children share: the callback and its ordered queue."""

    __slots__ = ("callback", "pump", "queue")

    def __init__(self, callback: TraceCallback | None) -> None:
        self.callback = callback
        self.queue: collections.deque[tuple[str, Awaitable[None]]] = collections.deque()
        self.pump: asyncio.Task[None] | None = None

    async def drain(self) -> None:
        try:
            while self.queue:
                name, pending = self.queue.popleft()
                try:
                    await pending
                except Exception:
                    _failed(name)
        finally:
            while self.queue:  # cancelled (loop shutting down): never leave one un-awaited
                _, pending = self.queue.popleft()
                if inspect.iscoroutine(pending):
                    pending.close()


def _failed(name: str) -> None:
    logger_for(name).warning("trace callback failed on %s (ignored)", name, exc_info=True,
                             extra={"taps": {"event": "trace.callback_failed", "name": name}})


class Tracer:
    """The trace of one initiate or listen call: `emit(name, **info)` logs the event and
    passes it to the callback, if any (see the module rules)."""

    __slots__ = ("_clock", "_context", "_origin", "_sink", "trace_id")

    def __init__(self, callback: TraceCallback | None = None, *,
                 clock: Callable[[], float] | None = None, **context: Any) -> None:
        if clock is None:
            try:
                clock = asyncio.get_running_loop().time
            except RuntimeError:
                clock = time.monotonic
        self._clock = clock
        self._origin = clock()
        self._sink = _Sink(callback)
        self._context = {k: _clean(k, v) for k, v in context.items()}
        self.trace_id = next(_IDS)

    def bind(self, **context: Any) -> Tracer:
        """The same trace (callback, queue, trace_id, clock origin) with more context in every
        event, e.g. a carrier's events carry its remote without each emit repeating it."""
        child = Tracer.__new__(Tracer)
        child._clock = self._clock
        child._origin = self._origin
        child._sink = self._sink
        child._context = {**self._context, **{k: _clean(k, v) for k, v in context.items()}}
        child.trace_id = self.trace_id
        return child

    @property
    def active(self) -> bool:
        """Whether an emit would go anywhere: lets a caller skip building costly info."""
        debug = logging.DEBUG  # spelled out, no generator: this runs a few times per connect
        return (self._sink.callback is not None or _DECISION.isEnabledFor(debug)
                or _RACE.isEnabledFor(debug) or _CARRIER.isEnabledFor(debug)
                or _LISTENER.isEnabledFor(debug) or _RESOLUTION.isEnabledFor(debug)
                or _RENDEZVOUS.isEnabledFor(debug))

    def emit(self, name: str, /, **info: Any) -> None:
        """Log the event and hand it to the callback; never raises for the callback's sake."""
        log = logger_for(name)
        level = _LEVELS.get(name, logging.DEBUG)
        callback = self._sink.callback
        logged = log.isEnabledFor(level)
        if callback is None and not logged:
            return
        data: dict[str, Any] = dict(self._context)
        for key, value in info.items():
            data[key] = _clean(key, value)
        data["trace_id"] = self.trace_id
        data["t_ms"] = (self._clock() - self._origin) * 1000.0
        if logged:
            fields = " ".join(f"{k}={v}" for k, v in data.items())
            log.log(level, "%s %s", name, fields, extra={"taps": {"event": name, **data}})
        if callback is not None:
            self._call(callback, name, data)

    def _call(self, callback: TraceCallback, name: str, data: dict[str, Any]) -> None:
        sink = self._sink
        try:
            result = callback(name, data)
        except Exception:
            _failed(name)
            return
        if result is None or not inspect.isawaitable(result):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(result):
                result.close()
            logger_for(name).warning("async trace callback for %s outside an event loop: "
                                     "dropped", name)
            return
        sink.queue.append((name, result))
        if sink.pump is None or sink.pump.done():
            pump = sink.pump = loop.create_task(sink.drain(), name=f"taps_post trace {name}")
            _PUMPS.add(pump)
            pump.add_done_callback(_PUMPS.discard)

    async def flush(self) -> None:
        """Wait until every awaitable the callback returned so far has finished."""
        while (pump := self._sink.pump) is not None and not pump.done():
            await asyncio.wait([pump])  # our cancellation must not cancel the pump


def decision_complete(tracer: Tracer | None, decision: Decision, *, from_cache: bool) -> None:
    """`decision.complete` for a decision made or reused, refused or not, so a trace shows
    why a call failed before anything opened as well as what it raced."""
    if tracer is not None:
        tracer.emit("decision.complete", outcome=decision.outcome,
                    candidates=len(decision.candidates), from_cache=from_cache,
                    stacks=tuple(dict.fromkeys(c.stack for c in decision.candidates)))
