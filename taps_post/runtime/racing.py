"""Staggered racing of a plan's candidates (RFC 9623 section 4.3, RFC 8305 timing).

Rule 1: every attempt is a task owned by `race()`; whatever happens (a winner, every attempt
failing, the connTimeout, the caller cancelling us), every other task is cancelled and
awaited, and any transient a late attempt produced is aborted. No socket or task outlives it.
Rule 2: candidate n starts `attemptDelay` after candidate n-1, or at once when an attempt fails
before that; earlier attempts keep running (staggered, not sequential).
Rule 3: every attempt is recorded as won, failed, cancelled or not_started. A failed record
keeps the exception object and its `FailureKind` (`classify()`), never only its text; when
the connTimeout ends the race, each attempt still running failed with kind `timeout`.
Rule 4: `on_outcome` is called exactly once for each attempt recorded won or failed (the
Association's history), never for a cancelled or unstarted one. An attempt that was outrun
is recorded "cancelled", with the error text saying so, and reported once to `on_outrun`:
the caller remembers it as a failure (docs/resolution.md, "Failure memory"), since a black
hole never fails by itself. Outrun means all of: it was still pending when the winner won;
it had run at least attemptDelay by then; and the winner started after it because the delay
timer ran out (attemptDelay after the start before it), not early because another attempt
failed or nothing was running. An attempt that was merely slower than one a failure started
early was given no fair chance to answer first: it is a plain "cancelled", no failure.
Rule 5: racing knows a transient only as something it can `abort()` (`Abortable`): what a
stack returns is the caller's business, and racing depends on no concrete transient class.
Rule 6: one candidate runs in the caller's task (`_race_one`): no task, no asyncio.wait, one
TimerHandle for the connTimeout; same records, callbacks and trace events as a full race.
Rule 7: late candidates join the running race (RFC 8305 section 3, HEv3 resolution passes):
a batch `more` yields is appended after the pending candidates, and each starts attemptDelay
after the previous start (at once when nothing is running, or everything running failed). A
`Replan` it yields is the new pending plan instead: the full ordered list of candidates not
raced yet (a later resolution pass's decision). The queue becomes that list minus what already
started, and a pending candidate the list no longer has is withdrawn: recorded not_started
with the Replan's reason, never started, never reported to `on_outcome` (a candidate the
service no longer offers must not be tried, nor pollute failure memory). The race is not lost
while `more` may still yield: with no attempt left it waits for the next batch. The task
pulling from `more` is owned like an attempt (Rule 1): cancelled, awaited, and the iterator
closed, whatever ends the race.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..decision.decision import Candidate
from ..errors import Attempt, FailureKind, RemoteProtocolError
from ..stacks.base import InterfaceNotEnforcedError
from .trace import Tracer

__all__ = ["Abortable", "RaceResult", "Replan", "classify", "race"]


class Abortable(Protocol):
    """All racing needs of an attempt's result: a way to drop it when it did not win."""

    def abort(self) -> None: ...


T = TypeVar("T", bound=Abortable)


@dataclass(frozen=True, slots=True)
class Replan:
    """What `more` yields to replace the pending plan (Rule 7): every candidate not raced yet,
    in the order to race them. A candidate keeps its rank across replans (records are kept by
    rank); one already started is ignored here; a pending one missing from `candidates` is
    withdrawn with `reason`."""

    candidates: tuple[Candidate, ...]
    reason: str = "withdrawn: a later resolution pass no longer has it"


Batch = Sequence[Candidate] | Replan
"""One item of `more`: candidates to append, or a Replan."""


@dataclass(frozen=True, slots=True)
class RaceResult(Generic[T]):
    transient: T
    candidate: Candidate
    attempts: tuple[Attempt, ...]


_ERRNO_KINDS: dict[int, FailureKind] = {
    errno.ECONNREFUSED: FailureKind.REFUSED,
    errno.ETIMEDOUT: FailureKind.TIMEOUT,
    errno.ENETUNREACH: FailureKind.UNREACHABLE,
    errno.EHOSTUNREACH: FailureKind.UNREACHABLE,
    errno.EADDRNOTAVAIL: FailureKind.UNREACHABLE,
    errno.ENETDOWN: FailureKind.UNREACHABLE,
    errno.EHOSTDOWN: FailureKind.UNREACHABLE,
    errno.ENODEV: FailureKind.UNREACHABLE,  # the interface went away
    errno.ECONNRESET: FailureKind.RESET,
    errno.ECONNABORTED: FailureKind.RESET,
    errno.EPIPE: FailureKind.RESET,
    errno.EPROTONOSUPPORT: FailureKind.UNSUPPORTED,
    errno.EAFNOSUPPORT: FailureKind.UNSUPPORTED,
    errno.ENOPROTOOPT: FailureKind.UNSUPPORTED,
    errno.ESOCKTNOSUPPORT: FailureKind.UNSUPPORTED,
    errno.EPFNOSUPPORT: FailureKind.UNSUPPORTED,
    errno.EOPNOTSUPP: FailureKind.UNSUPPORTED,
}

_QUIC_CRYPTO_ERROR = 0x100
"""QUIC carries a TLS alert as CRYPTO_ERROR + alert (RFC 9001 section 4.8)."""
_CERTIFICATE_ALERTS = frozenset({42, 43, 44, 45, 46, 48})
"""bad_certificate, unsupported_certificate, certificate_revoked, certificate_expired,
certificate_unknown, unknown_ca (RFC 8446 section 6.2)."""
_QUIC_KINDS: dict[int, FailureKind] = {
    0x0: FailureKind.RESET,  # NO_ERROR: the peer closed before the handshake completed
    0x2: FailureKind.REFUSED,  # CONNECTION_REFUSED
    0xC: FailureKind.RESET,  # APPLICATION_ERROR
    0x10: FailureKind.UNREACHABLE,  # NO_VIABLE_PATH
    **{code: FailureKind.PROTOCOL for code in (*range(0x3, 0xC), 0xD, 0xE, 0xF, 0x11)},
}


def _quic_kind(code: int) -> FailureKind:
    if _QUIC_CRYPTO_ERROR <= code <= 0x1FF:
        alert = code - _QUIC_CRYPTO_ERROR
        return (FailureKind.TLS_VERIFY if alert in _CERTIFICATE_ALERTS
                else FailureKind.TLS_HANDSHAKE)
    return _QUIC_KINDS.get(code, FailureKind.OTHER)


def _kind_of(exc: BaseException) -> FailureKind:
    # By type before errno: connect() also says EPERM when a local firewall drops the packet.
    if isinstance(exc, InterfaceNotEnforcedError):
        return FailureKind.POLICY
    # ssl first: SSLError is an OSError whose errno is an SSL_ERROR_* number, not an errno.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FailureKind.TLS_VERIFY
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return FailureKind.RESET
    if isinstance(exc, ssl.SSLError):
        return FailureKind.TLS_HANDSHAKE
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return FailureKind.REFUSED
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return FailureKind.RESET
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno in _ERRNO_KINDS:
        return _ERRNO_KINDS[exc.errno]
    if isinstance(exc, (asyncio.IncompleteReadError, EOFError)):
        return FailureKind.RESET
    if isinstance(exc, RemoteProtocolError):
        return FailureKind.PROTOCOL
    code = getattr(exc, "error_code", None)
    if type(code) is int and isinstance(getattr(exc, "reason_phrase", None), str):
        return _quic_kind(code)
    return FailureKind.OTHER


def classify(exc: BaseException) -> FailureKind:
    """Why an attempt failed, from the exception's type and errno, never from its text.

    A QUIC close is any exception with an int `error_code` and a str `reason_phrase` (the
    shape of aioquic's ConnectionTerminated event and QuicConnectionError): its transport
    error code decides, TLS alerts inside CRYPTO_ERROR included. A pin mismatch is a
    tls_verify failure when the stack raises it as an ssl.SSLCertVerificationError subclass.
    When the exception itself says nothing, an explicit cause (`raise X from Y`) is asked.
    """
    current: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; a cycle must not hang us
        if current is None:
            break
        kind = _kind_of(current)
        if kind is not FailureKind.OTHER:
            return kind
        current = current.__cause__
    return FailureKind.OTHER


def _remote(c: Candidate) -> str:
    host = f"[{c.remote_address}]" if ":" in c.remote_address else c.remote_address
    return f"{host}:{c.remote_port}"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


def _record(c: Candidate, outcome: str, error: str, elapsed_ms: float | None,
            exc: BaseException | None = None) -> Attempt:
    return Attempt(c.rank, c.interface, c.stack, _remote(c), outcome, error, elapsed_ms,
                   None if exc is None else classify(exc), exc)


def _conn_timeout(timeout: float) -> TimeoutError:
    return TimeoutError(f"connTimeout ({timeout * 1000:.0f} ms) passed")


def _emit(tracer: Tracer, event: str, c: Candidate, **info: object) -> None:
    tracer.emit(event, rank=c.rank, interface=c.interface, stack=c.stack, remote=_remote(c),
                **info)


def _emit_record(tracer: Tracer, a: Attempt) -> None:
    """attempt.won / attempt.failed / attempt.cancelled for a settled record."""
    where = {"rank": a.rank, "interface": a.interface, "stack": a.stack, "remote": a.remote,
             "elapsed_ms": a.elapsed_ms}
    if a.outcome == "failed":
        tracer.emit("attempt.failed", **where, kind=a.kind, error=a.error)
    elif a.outcome == "won":
        tracer.emit("attempt.won", **where)
    else:
        tracer.emit("attempt.cancelled", **where, reason=a.error)


_SIBLING = "a sibling won or the race ended"
_LATE = "ready after another attempt won"
_OUTRUN = "outrun: no answer within attemptDelay while a later attempt won"


async def race(
    candidates: Sequence[Candidate],
    attempt: Callable[[Candidate], Awaitable[T]],
    *,
    attempt_delay: float,
    timeout: float,
    on_outcome: Callable[[Candidate, T | None, float], None] | None = None,
    tracer: Tracer | None = None,
    more: AsyncIterator[Batch] | None = None,
    on_outrun: Callable[[Candidate, float], None] | None = None,
) -> RaceResult[T] | tuple[Attempt, ...]:
    """The first candidate to become ready, or the record of every attempt when none did.

    `more` (Rule 7): later batches of candidates (a later resolution pass) that join the race,
    or Replans; a new candidate's rank must differ from every earlier candidate's (records
    are kept by rank)."""
    loop = asyncio.get_running_loop()
    tr = tracer if tracer is not None and tracer.active else None
    if tr is not None:
        tr.emit("race.started", candidates=len(candidates),
                attempt_delay_ms=attempt_delay * 1000.0, timeout_ms=timeout * 1000.0)
    if len(candidates) == 1 and more is None:
        return await _race_one(candidates[0], attempt, timeout, on_outcome, loop, tr)
    begun = loop.time()
    order: list[Candidate] = list(candidates)
    records: dict[int, Attempt] = {c.rank: _record(c, "not_started", "", None)
                                   for c in candidates}
    running: dict[asyncio.Task[T], tuple[Candidate, float]] = {}
    queue = list(candidates)
    winner: tuple[T, Candidate] | None = None
    next_start = begun
    finish = "cancelled"  # unless the loop below ends by itself or by the connTimeout
    started_at: list[tuple[Candidate, float, bool]] = []  # (candidate, when, by the timer)
    pull: asyncio.Task[Batch] | None = None
    if more is not None:
        pull = asyncio.ensure_future(_next_batch(more))

    def settle(task: asyncio.Task[T], c: Candidate, started: float) -> None:
        nonlocal winner, next_start
        elapsed = (loop.time() - started) * 1000.0
        if task.cancelled():
            records[c.rank] = _record(c, "cancelled", _SIBLING, elapsed)
        elif (exc := task.exception()) is not None:
            records[c.rank] = _record(c, "failed", _describe(exc), elapsed, exc)
            next_start = loop.time()  # a failure starts the next attempt at once
            if on_outcome is not None:
                on_outcome(c, None, elapsed)
        elif winner is None:
            transient = task.result()
            winner = (transient, c)
            records[c.rank] = _record(c, "won", "", elapsed)
            if on_outcome is not None:
                on_outcome(c, transient, elapsed)
        else:
            task.result().abort()
            records[c.rank] = _record(c, "cancelled", _LATE, elapsed)
        if tr is not None:
            _emit_record(tr, records[c.rank])

    def join(task: asyncio.Task[Batch]) -> bool:
        """Take a finished pull's batch into the queue; False when `more` is exhausted."""
        nonlocal next_start
        batch = task.result()  # an exception from `more` ends the race: the caller's bug
        if batch is _EXHAUSTED:
            return False
        if isinstance(batch, Replan):
            fresh = replan(batch)
        else:
            fresh = [c for c in batch if c.rank not in records]
            queue.extend(fresh)
        for c in fresh:
            records[c.rank] = _record(c, "not_started", "", None)
            order.append(c)
        if queue and not running:
            next_start = loop.time()  # nothing running (or all of it failed): start now
        if fresh and tr is not None:
            tr.emit("race.joined", candidates=len(fresh),
                    at_ms=(loop.time() - begun) * 1000.0)
        return True

    def replan(plan: Replan) -> list[Candidate]:
        """The queue becomes `plan` minus what started; pending candidates it lacks are
        withdrawn (Rule 7). Returns the candidates never seen before."""
        started = {c.rank for c, _, _ in started_at}
        keep = {c.rank for c in plan.candidates}
        gone = [c for c in queue if c.rank not in keep]
        for c in gone:
            records[c.rank] = _record(c, "not_started", plan.reason, None)
        queue[:] = [c for c in dict((c.rank, c) for c in plan.candidates).values()
                    if c.rank not in started]
        for c in queue:
            if (old := records.get(c.rank)) is not None and old.error:
                records[c.rank] = _record(c, "not_started", "", None)  # withdrawn, back
        if gone and tr is not None:
            tr.emit("race.withdrawn", ranks=tuple(c.rank for c in gone), reason=plan.reason,
                    at_ms=(loop.time() - begun) * 1000.0)
        return [c for c in queue if c.rank not in records]

    try:
        async with asyncio.timeout(timeout):
            while winner is None:
                now = loop.time()
                if queue and now >= next_start:
                    c = queue.pop(0)
                    task = asyncio.ensure_future(attempt(c))
                    running[task] = (c, now)
                    # By the timer (Rule 4): attemptDelay after the previous start or later,
                    # not early because an attempt failed or nothing was running.
                    started_at.append((c, now, bool(started_at) and
                                       now >= started_at[-1][1] + attempt_delay))
                    next_start = now + attempt_delay
                    if tr is not None:
                        _emit(tr, "attempt.started", c, at_ms=(now - begun) * 1000.0)
                    continue
                if not running and queue:
                    next_start = now
                    continue
                if not running and pull is None:
                    break
                waiting: set[asyncio.Future[Any]] = set(running)
                if pull is not None:
                    waiting.add(pull)
                wait_for = max(0.0, next_start - now) if queue else None
                done, _ = await asyncio.wait(waiting, timeout=wait_for,
                                             return_when=asyncio.FIRST_COMPLETED)
                # Simultaneous finishers settle in rank order: the better candidate wins.
                for task in sorted((t for t in running if t in done),
                                   key=lambda t: running[t][0].rank):
                    c, started = running.pop(task)
                    settle(task, c, started)
                if pull is not None and pull in done and winner is None:
                    pull = (asyncio.ensure_future(_next_batch(more)) if join(pull)
                            and more is not None else None)
        finish = "failed" if winner is None else "won"
        if winner is not None:
            won_at, timed = next((t, by) for c, t, by in started_at if c is winner[1])
            for c, started in running.values() if timed else ():
                elapsed = (loop.time() - started) * 1000.0
                if started < won_at and elapsed >= attempt_delay * 1000.0:
                    records[c.rank] = _record(c, "cancelled", _OUTRUN, elapsed)
                    if on_outrun is not None:
                        on_outrun(c, elapsed)
                    if tr is not None:
                        _emit_record(tr, records[c.rank])
    except TimeoutError:
        finish = "timeout"
        for c, started in running.values():
            elapsed = (loop.time() - started) * 1000.0
            exc = _conn_timeout(timeout)
            records[c.rank] = _record(c, "failed", str(exc), elapsed, exc)
            if on_outcome is not None:
                on_outcome(c, None, elapsed)
            if tr is not None:
                _emit_record(tr, records[c.rank])
    finally:
        for task in running:
            task.cancel()
        if pull is not None:
            pull.cancel()
        if running or pull is not None:
            await asyncio.gather(*running, *([pull] if pull is not None else []),
                                 return_exceptions=True)
        if more is not None:
            await _close(more)
        for task, (c, started) in running.items():
            if not task.cancelled() and task.exception() is None:
                task.result().abort()  # finished while being cancelled: not a winner
            if records[c.rank].outcome == "not_started":
                records[c.rank] = _record(c, "cancelled", _SIBLING,
                                          (loop.time() - started) * 1000.0)
                if tr is not None:
                    _emit_record(tr, records[c.rank])
        if tr is not None:
            tr.emit("race.finished", outcome=finish, elapsed_ms=(loop.time() - begun) * 1000.0,
                    winner=None if winner is None else winner[1].rank)
    if winner is not None:
        transient, c = winner
        return RaceResult(transient, c, tuple(records[x.rank] for x in order))
    return tuple(records[x.rank] for x in order)


_EXHAUSTED: Sequence[Candidate] = ()
"""What `_next_batch` returns when `more` has nothing left (compared by identity)."""


async def _next_batch(more: AsyncIterator[Batch]) -> Batch:
    try:
        batch = await anext(more)
    except StopAsyncIteration:
        return _EXHAUSTED
    # A batch that happens to be the very `()` object must not read as the end.
    return batch if isinstance(batch, Replan) else list(batch)


async def _close(more: AsyncIterator[Batch]) -> None:
    """Close `more` when it can be closed (an async generator): its own cleanup (pending DNS
    queries) runs before race() returns (Rule 7)."""
    aclose = getattr(more, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):  # its cleanup must not hide our outcome
            await aclose()


class _ConnTimeout(Exception):
    """Our connTimeout fired (an attempt's own TimeoutError is just a failed attempt)."""


async def _race_one(
    c: Candidate,
    attempt: Callable[[Candidate], Awaitable[T]],
    timeout: float,
    on_outcome: Callable[[Candidate, T | None, float], None] | None,
    loop: asyncio.AbstractEventLoop,
    tr: Tracer | None,
) -> RaceResult[T] | tuple[Attempt, ...]:
    """One candidate: run the attempt in the caller's task (no task hop, no asyncio.wait),
    with the same records, outcome callback, trace events and connTimeout as a full race."""
    started = loop.time()
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    fired = False

    def expire() -> None:  # asyncio.timeout() costs ~4 us per use; this is one TimerHandle
        nonlocal fired
        fired = True
        task.cancel()

    if tr is not None:
        _emit(tr, "attempt.started", c, at_ms=0.0)
    timer = loop.call_at(started + timeout, expire)
    failure: BaseException
    try:
        try:
            transient = await attempt(c)
        except asyncio.CancelledError:
            if fired and task.uncancel() == cancelling:
                raise _ConnTimeout from None
            raise
        finally:
            timer.cancel()
        if fired:  # the attempt swallowed our cancellation and finished anyway: too late
            task.uncancel()
            transient.abort()
            raise _ConnTimeout
        if task.cancelling() > cancelling:  # the caller is cancelling us: not a winner
            transient.abort()
            raise asyncio.CancelledError
    except _ConnTimeout:
        failure = _conn_timeout(timeout)
        error, finish = str(failure), "timeout"
    except asyncio.CancelledError:
        if tr is not None:
            elapsed = (loop.time() - started) * 1000.0
            _emit_record(tr, _record(c, "cancelled", _SIBLING, elapsed))
            tr.emit("race.finished", outcome="cancelled", elapsed_ms=elapsed, winner=None)
        raise
    except Exception as exc:
        failure = exc
        error, finish = _describe(exc), "failed"
    else:
        elapsed = (loop.time() - started) * 1000.0
        if on_outcome is not None:
            on_outcome(c, transient, elapsed)
        won = _record(c, "won", "", elapsed)
        if tr is not None:
            _emit_record(tr, won)
            tr.emit("race.finished", outcome="won", elapsed_ms=elapsed, winner=c.rank)
        return RaceResult(transient, c, (won,))
    elapsed = (loop.time() - started) * 1000.0
    if on_outcome is not None:
        on_outcome(c, None, elapsed)
    failed = _record(c, "failed", error, elapsed, failure)
    if tr is not None:
        _emit_record(tr, failed)
        tr.emit("race.finished", outcome=finish, elapsed_ms=elapsed, winner=None)
    return (failed,)
