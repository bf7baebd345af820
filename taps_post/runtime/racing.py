"""Staggered racing of a plan's candidates (RFC 9623 section 4.3, RFC 8305 timing).

Rule 1: every attempt is a task owned by `race()`; whatever happens (a winner, every attempt
failing, the connTimeout, the caller cancelling us), every other task is cancelled and
awaited, and any Transient a late attempt produced is aborted. No socket or task outlives it.
Rule 2: candidate n starts `attemptDelay` after candidate n-1, or at once when an attempt fails
before that; earlier attempts keep running (staggered, not sequential).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..decision.decision import Candidate
from ..errors import Attempt
from .transient import Transient

__all__ = ["RaceResult", "race"]


@dataclass(frozen=True, slots=True)
class RaceResult:
    transient: Transient
    candidate: Candidate
    attempts: tuple[Attempt, ...]


def _remote(c: Candidate) -> str:
    host = f"[{c.remote_address}]" if ":" in c.remote_address else c.remote_address
    return f"{host}:{c.remote_port}"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


async def race(
    candidates: Sequence[Candidate],
    attempt: Callable[[Candidate], Awaitable[Transient]],
    *,
    attempt_delay: float,
    timeout: float,
    on_outcome: Callable[[Candidate, Transient | None, float], None] | None = None,
) -> RaceResult | tuple[Attempt, ...]:
    """The first candidate to become ready, or the record of every attempt when none did."""
    loop = asyncio.get_running_loop()
    if len(candidates) == 1:
        return await _race_one(candidates[0], attempt, timeout, on_outcome, loop)
    records: dict[int, Attempt] = {
        c.rank: Attempt(c.rank, c.interface, c.stack, _remote(c), "not_started")
        for c in candidates}
    running: dict[asyncio.Task[Transient], tuple[Candidate, float]] = {}
    queue = list(candidates)
    winner: tuple[Transient, Candidate] | None = None
    next_start = loop.time()

    def settle(task: asyncio.Task[Transient], c: Candidate, started: float) -> None:
        nonlocal winner, next_start
        elapsed = (loop.time() - started) * 1000.0
        if task.cancelled():
            records[c.rank] = Attempt(c.rank, c.interface, c.stack, _remote(c), "cancelled",
                                      "a sibling won or the race ended", elapsed)
            return
        exc = task.exception()
        if exc is not None:
            records[c.rank] = Attempt(c.rank, c.interface, c.stack, _remote(c), "failed",
                                      _describe(exc), elapsed)
            next_start = loop.time()  # a failure starts the next attempt at once
            if on_outcome is not None:
                on_outcome(c, None, elapsed)
            return
        transient = task.result()
        if winner is None:
            winner = (transient, c)
            records[c.rank] = Attempt(c.rank, c.interface, c.stack, _remote(c), "won", "",
                                      elapsed)
            if on_outcome is not None:
                on_outcome(c, transient, elapsed)
        else:
            transient.abort()
            records[c.rank] = Attempt(c.rank, c.interface, c.stack, _remote(c), "cancelled",
                                      "ready after another attempt won", elapsed)

    try:
        async with asyncio.timeout(timeout):
            while winner is None:
                now = loop.time()
                if queue and now >= next_start:
                    c = queue.pop(0)
                    task = asyncio.ensure_future(attempt(c))
                    running[task] = (c, now)
                    next_start = now + attempt_delay
                    continue
                if not running:
                    if not queue:
                        break
                    next_start = now
                    continue
                wait_for = max(0.0, next_start - now) if queue else None
                done, _ = await asyncio.wait(running, timeout=wait_for,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    c, started = running.pop(task)
                    settle(task, c, started)
    except TimeoutError:
        for c, started in running.values():
            records[c.rank] = Attempt(c.rank, c.interface, c.stack, _remote(c), "failed",
                                      f"connTimeout ({timeout * 1000:.0f} ms) passed",
                                      (loop.time() - started) * 1000.0)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for task, (c, started) in running.items():
            if not task.cancelled() and task.exception() is None:
                task.result().abort()  # finished while being cancelled: not a winner
            if records[c.rank].outcome == "not_started":
                records[c.rank] = Attempt(c.rank, c.interface, c.stack, _remote(c), "cancelled",
                                          "a sibling won or the race ended",
                                          (loop.time() - started) * 1000.0)
    if winner is not None:
        transient, c = winner
        return RaceResult(transient, c, tuple(records[x.rank] for x in candidates))
    return tuple(records[x.rank] for x in candidates)


class _ConnTimeout(Exception):
    """Our connTimeout fired (an attempt's own TimeoutError is just a failed attempt)."""


async def _race_one(
    c: Candidate,
    attempt: Callable[[Candidate], Awaitable[Transient]],
    timeout: float,
    on_outcome: Callable[[Candidate, Transient | None, float], None] | None,
    loop: asyncio.AbstractEventLoop,
) -> RaceResult | tuple[Attempt, ...]:
    """One candidate: run the attempt in the caller's task (no task hop, no asyncio.wait),
    with the same records, outcome callback and connTimeout as a full race."""
    started = loop.time()
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:  # asyncio.timeout() costs ~4 us per use; this is one TimerHandle
        nonlocal fired
        fired = True
        task.cancel()

    timer = loop.call_at(started + timeout, expire)
    try:
        try:
            transient = await attempt(c)
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise _ConnTimeout from None
            raise
        finally:
            timer.cancel()
    except _ConnTimeout:
        elapsed = (loop.time() - started) * 1000.0
        if on_outcome is not None:
            on_outcome(c, None, elapsed)
        return (Attempt(c.rank, c.interface, c.stack, _remote(c), "failed",
                        f"connTimeout ({timeout * 1000:.0f} ms) passed", elapsed),)
    except Exception as exc:
        elapsed = (loop.time() - started) * 1000.0
        if on_outcome is not None:
            on_outcome(c, None, elapsed)
        return (Attempt(c.rank, c.interface, c.stack, _remote(c), "failed", _describe(exc),
                        elapsed),)
    elapsed = (loop.time() - started) * 1000.0
    if on_outcome is not None:
        on_outcome(c, transient, elapsed)
    return RaceResult(transient, c, (Attempt(c.rank, c.interface, c.stack, _remote(c), "won",
                                             "", elapsed),))
