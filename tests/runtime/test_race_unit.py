"""race() and classify() on fake attempts under virtual time (tests/fakeclock.py).

No sockets and no sleeping: each attempt is a coroutine that follows a script (win, fail or
hang after a virtual delay) and records when it started and how it ended. Times are binary
fractions of a second, so every assertion compares exact virtual times.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fakeclock import run
from taps_post.decision.decision import Candidate, RankKey
from taps_post.errors import Attempt, EstablishmentError, FailureKind, RemoteProtocolError
from taps_post.runtime.racing import RaceResult, Replan, classify, race

DELAY = 0.25
TIMEOUT = 2.0


def candidates(n: int) -> list[Candidate]:
    key = RankKey(0, 0, 0, 0, 0, 0, 1, 0.0, 0, "eth0", 0, 0)
    return [Candidate(r, "eth0", "192.0.2.100", "tcp", f"192.0.2.{r}", 443, "ipv4",
                      int((r - 1) * DELAY * 1000), key) for r in range(1, n + 1)]


@dataclass
class FakeTransient:
    rank: int
    aborted: int = 0

    def abort(self) -> None:
        self.aborted += 1


@dataclass(frozen=True)
class Win:
    after: float = 0.0


@dataclass(frozen=True)
class Fail:
    after: float
    exc: BaseException


@dataclass(frozen=True)
class Hang:
    pass


@dataclass(frozen=True)
class Stubborn:
    """Hangs, and when cancelled returns a transient anyway (finished while being
    cancelled): race() must abort what it returns."""


Step = Win | Fail | Hang | Stubborn


@dataclass
class Script:
    steps: dict[int, Step]
    starts: dict[int, float] = field(default_factory=dict)
    ends: dict[int, tuple[str, float]] = field(default_factory=dict)
    transients: dict[int, FakeTransient] = field(default_factory=dict)
    tasks: dict[int, asyncio.Task[object] | None] = field(default_factory=dict)

    async def __call__(self, c: Candidate) -> FakeTransient:
        loop = asyncio.get_running_loop()
        self.starts[c.rank] = loop.time()
        self.tasks[c.rank] = asyncio.current_task()
        step = self.steps[c.rank]
        try:
            if isinstance(step, Win):
                await asyncio.sleep(step.after)
            elif isinstance(step, Fail):
                await asyncio.sleep(step.after)
                self.ends[c.rank] = ("raised", loop.time())
                raise step.exc
            elif isinstance(step, Hang):
                await asyncio.Event().wait()
            else:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.ends[c.rank] = ("cancelled", loop.time())
            raise
        self.ends[c.rank] = ("returned", loop.time())
        t = self.transients[c.rank] = FakeTransient(c.rank)
        return t


Outcomes = list[tuple[int, int | None, float]]


def recorder() -> tuple[Outcomes, Callable[[Candidate, FakeTransient | None, float], None]]:
    calls: Outcomes = []

    def on_outcome(c: Candidate, t: FakeTransient | None, elapsed_ms: float) -> None:
        calls.append((c.rank, None if t is None else t.rank, elapsed_ms))

    return calls, on_outcome


async def racing(script: Script, n: int, *, delay: float = DELAY, timeout: float = TIMEOUT,
                 on_outcome: Callable[[Candidate, FakeTransient | None, float], None]
                 | None = None) -> tuple[RaceResult[FakeTransient] | tuple[Attempt, ...], float]:
    """race() over n candidates; returns its result and the virtual time it returned at."""
    result = await race(candidates(n), script, attempt_delay=delay, timeout=timeout,
                        on_outcome=on_outcome)
    return result, asyncio.get_running_loop().time()


def outcomes(attempts: tuple[Attempt, ...]) -> list[str]:
    return [a.outcome for a in attempts]


# -- stagger, fail-fast ---------------------------------------------------------------------


def test_candidate_n_starts_attempt_delay_after_candidate_n_minus_1() -> None:
    script = Script({1: Hang(), 2: Hang(), 3: Hang(), 4: Win(0.125)})
    result, at = run(racing(script, 4))
    assert script.starts == {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75}
    assert isinstance(result, RaceResult)
    assert result.candidate.rank == 4 and result.transient is script.transients[4]
    assert at == 0.875
    assert outcomes(result.attempts) == ["cancelled", "cancelled", "cancelled", "won"]
    assert result.attempts[3].elapsed_ms == 125.0
    assert [a.elapsed_ms for a in result.attempts[:3]] == [875.0, 625.0, 375.0]
    # the losers were cancelled and had finished before race() returned
    assert script.ends == {1: ("cancelled", 0.875), 2: ("cancelled", 0.875),
                           3: ("cancelled", 0.875), 4: ("returned", 0.875)}
    assert result.transient.aborted == 0


def test_a_failure_starts_the_next_attempt_at_once_and_keeps_earlier_ones_running() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    unreachable = OSError(errno.ENETUNREACH, "Network is unreachable")
    script = Script({1: Fail(0.125, refused), 2: Hang(), 3: Fail(0.0625, unreachable),
                     4: Win(0.0625)})
    result, at = run(racing(script, 4))
    # #2 at #1's failure, #3 attemptDelay after #2, #4 at #3's failure although #2 still runs
    assert script.starts == {1: 0.0, 2: 0.125, 3: 0.375, 4: 0.4375}
    assert isinstance(result, RaceResult) and result.candidate.rank == 4
    assert at == 0.5
    a1, a2, a3, a4 = result.attempts
    assert (a1.outcome, a1.kind, a1.elapsed_ms) == ("failed", FailureKind.REFUSED, 125.0)
    assert (a3.outcome, a3.kind, a3.elapsed_ms) == ("failed", FailureKind.UNREACHABLE, 62.5)
    assert a1.exception is refused and a3.exception is unreachable
    assert "ConnectionRefusedError" in a1.error and "unreachable" in a3.error
    assert script.ends[2] == ("cancelled", 0.5), "#2 must keep running until the win"
    assert (a2.outcome, a2.kind, a2.exception) == ("cancelled", None, None)
    assert (a4.outcome, a4.kind) == ("won", None)


def test_every_attempt_failing_returns_every_record_without_waiting() -> None:
    excs = [ConnectionResetError(errno.ECONNRESET, "reset"),
            ssl.SSLCertVerificationError("certificate verify failed"),
            OSError(errno.EPROTONOSUPPORT, "the mptcp stack is not available")]
    script = Script({r: Fail(0.0, e) for r, e in enumerate(excs, 1)})
    result, at = run(racing(script, 3))
    assert at == 0.0, "fail-fast: no attemptDelay between failures"
    assert script.starts == {1: 0.0, 2: 0.0, 3: 0.0}
    assert isinstance(result, tuple)
    assert outcomes(result) == ["failed"] * 3
    assert [a.kind for a in result] == [FailureKind.RESET, FailureKind.TLS_VERIFY,
                                        FailureKind.UNSUPPORTED]
    assert [a.exception for a in result] == excs


def test_an_attempts_own_timeout_is_a_failure_and_the_race_goes_on() -> None:
    own = TimeoutError("handshake took too long")
    script = Script({1: Fail(0.125, own), 2: Win(0.125)})
    result, at = run(racing(script, 2))
    assert script.starts == {1: 0.0, 2: 0.125}
    assert isinstance(result, RaceResult) and result.candidate.rank == 2 and at == 0.25
    first = result.attempts[0]
    assert (first.outcome, first.kind, first.exception) == ("failed", FailureKind.TIMEOUT, own)
    assert "connTimeout" not in first.error


# -- connTimeout ----------------------------------------------------------------------------


def test_conn_timeout_fails_every_running_attempt_at_exactly_the_timeout() -> None:
    script = Script({1: Hang(), 2: Hang(), 3: Win()})
    calls, on_outcome = recorder()
    result, at = run(racing(script, 3, delay=0.75, timeout=1.0, on_outcome=on_outcome))
    assert at == 1.0
    assert script.starts == {1: 0.0, 2: 0.75}, "#3 (due at 1.5 s) must never start"
    assert script.ends == {1: ("cancelled", 1.0), 2: ("cancelled", 1.0)}
    assert isinstance(result, tuple)
    a1, a2, a3 = result
    for a, elapsed in ((a1, 1000.0), (a2, 250.0)):
        assert (a.outcome, a.kind, a.elapsed_ms) == ("failed", FailureKind.TIMEOUT, elapsed)
        assert isinstance(a.exception, TimeoutError)
        assert a.error == "connTimeout (1000 ms) passed"
    assert (a3.outcome, a3.kind, a3.elapsed_ms) == ("not_started", None, None)
    assert calls == [(1, None, 1000.0), (2, None, 250.0)]
    text = str(EstablishmentError("could not reach x", None, result))
    for r in (1, 2, 3):
        assert f"#{r} eth0 tcp 192.0.2.{r}:443" in text
    assert text.count("[timeout]") == 2


def test_a_long_conn_timeout_takes_no_real_time() -> None:
    script = Script({1: Hang(), 2: Hang()})
    wall = time.perf_counter()
    result, at = run(racing(script, 2, delay=600.0, timeout=3600.0))
    assert time.perf_counter() - wall < 2.0
    assert at == 3600.0 and isinstance(result, tuple)
    assert [a.kind for a in result] == [FailureKind.TIMEOUT, FailureKind.TIMEOUT]


# -- cancellation and late winners ----------------------------------------------------------


def test_cancelling_the_caller_cancels_and_awaits_every_attempt() -> None:
    script = Script({1: Hang(), 2: Stubborn(), 3: Win()})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(racing(script, 3))
        loop.call_at(0.375, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() == 0.375
        assert asyncio.all_tasks() == {asyncio.current_task()}, "an attempt outlived race()"

    run(main())
    assert script.starts == {1: 0.0, 2: 0.25}
    assert script.ends == {1: ("cancelled", 0.375), 2: ("returned", 0.375)}
    assert script.transients[2].aborted == 1, "a transient made while cancelling leaked"
    assert all(t is not None and t.done() for t in script.tasks.values())


def test_simultaneous_finishers_the_better_rank_wins_and_the_others_are_aborted() -> None:
    for _ in range(20):  # many rounds: asyncio.wait's done set has no order to rely on
        script = Script({r: Win(1.0 - (r - 1) * DELAY) for r in range(1, 5)})  # all at 1.0
        result, at = run(racing(script, 4))
        assert at == 1.0 and isinstance(result, RaceResult)
        assert result.candidate.rank == 1 and result.transient is script.transients[1]
        assert [script.transients[r].aborted for r in range(1, 5)] == [0, 1, 1, 1]
        assert [(a.outcome, a.error, a.kind) for a in result.attempts[1:]] == [
            ("cancelled", "ready after another attempt won", None)] * 3


def test_an_attempt_finishing_while_cancelled_after_a_win_is_aborted() -> None:
    script = Script({1: Stubborn(), 2: Win(0.125)})
    calls, on_outcome = recorder()
    result, at = run(racing(script, 2, on_outcome=on_outcome))
    assert at == 0.375 and isinstance(result, RaceResult) and result.candidate.rank == 2
    assert script.ends[1] == ("returned", 0.375)
    assert script.transients[1].aborted == 1 and script.transients[2].aborted == 0
    assert outcomes(result.attempts) == ["cancelled", "won"]
    assert calls == [(2, 2, 125.0)], "a cancelled attempt is no history entry"


def test_on_outcome_is_called_once_per_won_or_failed_attempt_in_order() -> None:
    script = Script({1: Fail(0.125, ConnectionRefusedError()), 2: Hang(), 3: Win(0.0625)})
    calls, on_outcome = recorder()
    result, _ = run(racing(script, 3, on_outcome=on_outcome))
    assert isinstance(result, RaceResult) and result.candidate.rank == 3
    assert script.starts == {1: 0.0, 2: 0.125, 3: 0.375}
    assert calls == [(1, None, 125.0), (3, 3, 62.5)]


# -- one candidate (_race_one) --------------------------------------------------------------


def test_one_candidate_runs_in_the_callers_task_and_wins() -> None:
    script = Script({1: Win(0.125)})
    calls, on_outcome = recorder()

    async def main() -> tuple[object, float, asyncio.Task[object] | None]:
        result, at = await racing(script, 1, on_outcome=on_outcome)
        return result, at, asyncio.current_task()

    result, at, caller = run(main())
    assert script.tasks[1] is caller, "the single-candidate path must not hop to a task"
    assert isinstance(result, RaceResult) and at == 0.125
    assert result.transient is script.transients[1] and result.transient.aborted == 0
    assert [(a.outcome, a.elapsed_ms, a.kind) for a in result.attempts] == [
        ("won", 125.0, None)]
    assert calls == [(1, 1, 125.0)]


def test_one_candidate_failure_keeps_the_exception_and_its_kind() -> None:
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    script = Script({1: Fail(0.25, exc)})
    calls, on_outcome = recorder()
    result, at = run(racing(script, 1, on_outcome=on_outcome))
    assert at == 0.25 and isinstance(result, tuple)
    (a,) = result
    assert (a.outcome, a.kind, a.elapsed_ms) == ("failed", FailureKind.TLS_HANDSHAKE, 250.0)
    assert a.exception is exc and "WRONG_VERSION_NUMBER" in a.error
    assert calls == [(1, None, 250.0)]


def test_one_candidate_conn_timeout_at_exactly_the_timeout() -> None:
    script = Script({1: Hang()})
    calls, on_outcome = recorder()

    async def main() -> tuple[object, float]:
        out = await racing(script, 1, timeout=1.0, on_outcome=on_outcome)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # our timer's cancellation was taken back: no stray cancel
        return out

    result, at = run(main())
    assert at == 1.0 and script.ends == {1: ("cancelled", 1.0)}
    assert isinstance(result, tuple)
    (a,) = result
    assert (a.outcome, a.kind, a.elapsed_ms) == ("failed", FailureKind.TIMEOUT, 1000.0)
    assert isinstance(a.exception, TimeoutError) and a.error == "connTimeout (1000 ms) passed"
    assert calls == [(1, None, 1000.0)]


def test_one_candidate_own_timeout_is_not_the_conn_timeout() -> None:
    script = Script({1: Fail(0.5, TimeoutError("slow"))})
    result, at = run(racing(script, 1, timeout=1.0))
    assert at == 0.5 and isinstance(result, tuple)
    assert result[0].kind is FailureKind.TIMEOUT and "connTimeout" not in result[0].error


def test_one_candidate_caller_cancellation_propagates() -> None:
    script = Script({1: Hang()})
    calls, on_outcome = recorder()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(racing(script, 1, timeout=1.0, on_outcome=on_outcome))
        loop.call_at(0.375, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() == 0.375

    run(main())
    assert script.ends == {1: ("cancelled", 0.375)}
    assert calls == [], "a cancelled attempt is no failure"


@pytest.mark.parametrize("cancel_at", [None, 0.375], ids=["conn-timeout", "caller-cancel"])
def test_one_candidate_transient_made_while_cancelled_is_aborted(
        cancel_at: float | None) -> None:
    script = Script({1: Stubborn()})

    async def main() -> object:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(racing(script, 1, timeout=1.0))
        if cancel_at is not None:
            loop.call_at(cancel_at, task.cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
            return None
        result, at = await task
        assert at == 1.0 and task.cancelling() == 0
        return result

    result = run(main())
    assert script.transients[1].aborted == 1
    if cancel_at is None:
        assert isinstance(result, tuple)
        assert (result[0].outcome, result[0].kind) == ("failed", FailureKind.TIMEOUT)


def test_an_attempt_outrun_by_a_later_one_is_reported_once_and_recorded_cancelled() -> None:
    # #1 hangs (a black hole), #2 started attemptDelay later hangs too, #3 wins at 0.5625:
    # #1 ran 0.5625 >= attemptDelay and #2 ran 0.3125 >= attemptDelay: both were outrun.
    # A loser that started after the winner, or ran less than attemptDelay, was not.
    script = Script({1: Hang(), 2: Hang(), 3: Win(0.0625), 4: Hang()})
    outrun: list[tuple[int, float]] = []
    calls, on_outcome = recorder()

    async def main() -> tuple[object, float]:
        result = await race(candidates(4), script, attempt_delay=DELAY, timeout=TIMEOUT,
                            on_outcome=on_outcome,
                            on_outrun=lambda c, ms: outrun.append((c.rank, ms)))
        return result, asyncio.get_running_loop().time()

    result, at = run(main())
    assert isinstance(result, RaceResult) and result.candidate.rank == 3 and at == 0.5625
    assert outrun == [(1, 562.5), (2, 312.5)]
    assert calls == [(3, 3, 62.5)], "an outrun attempt is not an on_outcome failure"
    a1, a2, a3, a4 = result.attempts
    assert (a1.outcome, a2.outcome, a3.outcome, a4.outcome) == (
        "cancelled", "cancelled", "won", "not_started")
    assert "outrun" in a1.error and "outrun" in a2.error


def test_a_slower_attempt_is_not_outrun_by_one_a_failure_started_early() -> None:
    # #1 works but is slow (ready at 1.0). #2 fails at 0.375, so #3 starts then, early, not
    # by the delay timer, and wins at 0.4375. #1 had run 0.4375 >= attemptDelay, but #3 did
    # not start because #1 stayed silent for attemptDelay: no failure for #1 (racing Rule 4).
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    script = Script({1: Win(1.0), 2: Fail(0.125, refused), 3: Win(0.0625)})
    outrun: list[int] = []
    calls, on_outcome = recorder()
    result = run(race(candidates(3), script, attempt_delay=DELAY, timeout=TIMEOUT,
                      on_outcome=on_outcome, on_outrun=lambda c, ms: outrun.append(c.rank)))
    assert isinstance(result, RaceResult) and result.candidate.rank == 3
    assert script.starts == {1: 0.0, 2: 0.25, 3: 0.375}
    assert outrun == []
    assert result.attempts[0].outcome == "cancelled"
    assert result.attempts[0].error == "a sibling won or the race ended"
    assert calls == [(2, None, 125.0), (3, 3, 62.5)]


def test_a_start_that_a_failure_and_the_timer_agree_on_is_by_the_timer() -> None:
    # #2 fails at 0.5, exactly when the timer starts #3 anyway: #1, silent since 0, is outrun.
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    script = Script({1: Hang(), 2: Fail(0.25, refused), 3: Win(0.0625)})
    outrun: list[int] = []
    result = run(race(candidates(3), script, attempt_delay=DELAY, timeout=TIMEOUT,
                      on_outrun=lambda c, ms: outrun.append(c.rank)))
    assert isinstance(result, RaceResult) and result.candidate.rank == 3
    assert script.starts == {1: 0.0, 2: 0.25, 3: 0.5} and outrun == [1]


def test_a_loser_that_ran_less_than_attempt_delay_was_not_outrun() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    # #2 starts at 0.25 and hangs; #1 fails at 0.3125, so #3 starts then and wins at 0.375:
    # #2 had run 0.125 only, less than attemptDelay: it was not given its chance.
    script = Script({1: Fail(0.3125, refused), 2: Hang(), 3: Win(0.0625)})
    outrun: list[int] = []
    result = run(race(candidates(3), script, attempt_delay=DELAY, timeout=TIMEOUT,
                      on_outrun=lambda c, ms: outrun.append(c.rank)))
    assert isinstance(result, RaceResult) and result.candidate.rank == 3
    assert script.starts == {1: 0.0, 2: 0.25, 3: 0.3125}
    assert outrun == []
    assert result.attempts[1].error == "a sibling won or the race ended"


# -- late candidates (`more`, racing Rule 7) ------------------------------------------------


def batch(ranks: range, *, port: int = 443) -> list[Candidate]:
    """Candidates of a later resolution pass: ranks after the first pass's."""
    key = RankKey(0, 0, 0, 0, 0, 0, 1, 0.0, 0, "eth0", 0, 0)
    return [Candidate(r, "eth0", "192.0.2.100", "tcp", f"192.0.2.{r}", port, "ipv4", 0, key,
                      2) for r in ranks]


@dataclass
class Passes:
    """An async generator of candidate batches, each yielded at a virtual time; records
    whether it was closed (its `finally` ran) and when."""

    plan: list[tuple[float, list[Candidate] | Replan]]
    closed: float | None = None
    yielded: list[float] = field(default_factory=list)

    async def __call__(self):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        try:
            for at, cs in self.plan:
                await asyncio.sleep(max(0.0, at - loop.time()))
                self.yielded.append(loop.time())
                yield cs
        finally:
            self.closed = loop.time()


async def racing_more(script: Script, n: int, passes: Passes, *, delay: float = DELAY,
                      timeout: float = TIMEOUT,
                      on_outcome: Callable[[Candidate, FakeTransient | None, float], None]
                      | None = None) -> tuple[RaceResult[FakeTransient] | tuple[Attempt, ...],
                                              float]:
    result = await race(candidates(n), script, attempt_delay=delay, timeout=timeout,
                        on_outcome=on_outcome, more=passes())
    return result, asyncio.get_running_loop().time()


def test_late_candidates_are_appended_after_the_pending_ones_and_keep_the_stagger() -> None:
    # #1 hangs; #2 is pending (due at 0.25) when the second pass (#3, #4) arrives at 0.125.
    script = Script({1: Hang(), 2: Hang(), 3: Hang(), 4: Win(0.125)})
    passes = Passes([(0.125, batch(range(3, 5)))])
    calls, on_outcome = recorder()
    result, at = run(racing_more(script, 2, passes, on_outcome=on_outcome))
    assert script.starts == {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75}
    assert isinstance(result, RaceResult) and result.candidate.rank == 4 and at == 0.875
    assert [a.rank for a in result.attempts] == [1, 2, 3, 4]
    assert outcomes(result.attempts) == ["cancelled", "cancelled", "cancelled", "won"]
    assert calls == [(4, 4, 125.0)]
    assert passes.closed == 0.125, "the pull after the last batch found it exhausted"


def test_a_late_candidate_starts_attempt_delay_after_the_previous_start() -> None:
    # #1 started at 0; the pass at 0.0625 brings #2, which waits for 0.25, not 0.0625 + 0.25.
    script = Script({1: Hang(), 2: Win(0.0625)})
    passes = Passes([(0.0625, batch(range(2, 3)))])
    result, at = run(racing_more(script, 1, passes))
    assert script.starts == {1: 0.0, 2: 0.25}
    assert isinstance(result, RaceResult) and result.candidate.rank == 2 and at == 0.3125


def test_the_race_is_not_lost_while_more_can_still_yield() -> None:
    # Every first-pass attempt fails at 0.125; the second pass arrives at 0.5 and starts at
    # once (nothing is running), and wins.
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    script = Script({1: Fail(0.125, refused), 2: Fail(0.0, refused), 3: Win(0.0625)})
    passes = Passes([(0.5, batch(range(3, 4)))])
    calls, on_outcome = recorder()
    result, at = run(racing_more(script, 2, passes, on_outcome=on_outcome))
    assert script.starts == {1: 0.0, 2: 0.125, 3: 0.5}
    assert isinstance(result, RaceResult) and result.candidate.rank == 3 and at == 0.5625
    assert outcomes(result.attempts) == ["failed", "failed", "won"]
    assert calls == [(1, None, 125.0), (2, None, 0.0), (3, 3, 62.5)]


def test_every_attempt_of_every_pass_failing_is_lost_when_more_is_exhausted() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    script = Script({1: Fail(0.0, refused), 2: Fail(0.0625, refused),
                     3: Fail(0.0625, refused)})
    passes = Passes([(0.25, batch(range(2, 3))), (0.375, []), (0.5, batch(range(3, 4)))])
    result, at = run(racing_more(script, 1, passes))
    assert script.starts == {1: 0.0, 2: 0.25, 3: 0.5}
    assert isinstance(result, tuple) and at == 0.5625
    assert [(a.rank, a.outcome) for a in result] == [(1, "failed"), (2, "failed"),
                                                     (3, "failed")]
    assert passes.yielded == [0.25, 0.375, 0.5] and passes.closed == 0.5


def test_a_race_with_no_first_candidates_waits_for_the_first_batch() -> None:
    script = Script({1: Win(0.0625)})
    passes = Passes([(0.25, batch(range(1, 2)))])
    result, at = run(racing_more(script, 0, passes))
    assert script.starts == {1: 0.25}
    assert isinstance(result, RaceResult) and result.candidate.rank == 1 and at == 0.3125


def test_a_winner_closes_more_while_it_still_waits() -> None:
    script = Script({1: Win(0.125)})
    passes = Passes([(5.0, batch(range(2, 3)))])

    async def main() -> tuple[object, float]:
        out = await racing_more(script, 1, passes)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "the pull outlived race()"
        return out

    result, at = run(main())
    assert isinstance(result, RaceResult) and at == 0.125
    assert [a.rank for a in result.attempts] == [1], "an unyielded batch is no attempt"
    assert passes.closed == 0.125 and passes.yielded == []


def test_conn_timeout_while_waiting_for_more_fails_the_running_and_closes_more() -> None:
    script = Script({1: Hang(), 2: Hang()})
    passes = Passes([(0.5, batch(range(2, 3))), (9.0, batch(range(3, 4)))])
    calls, on_outcome = recorder()
    result, at = run(racing_more(script, 1, passes, timeout=1.0, on_outcome=on_outcome))
    assert at == 1.0 and isinstance(result, tuple)
    assert [(a.rank, a.outcome, a.kind) for a in result] == [
        (1, "failed", FailureKind.TIMEOUT), (2, "failed", FailureKind.TIMEOUT)]
    assert calls == [(1, None, 1000.0), (2, None, 500.0)]
    assert passes.closed == 1.0


def test_cancelling_the_caller_cancels_the_attempts_and_the_pull() -> None:
    script = Script({1: Hang(), 2: Stubborn()})
    passes = Passes([(0.125, batch(range(2, 3))), (5.0, batch(range(3, 4)))])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(racing_more(script, 1, passes))
        loop.call_at(0.375, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}, "a task outlived race()"

    run(main())
    assert script.starts == {1: 0.0, 2: 0.25}
    assert script.transients[2].aborted == 1
    assert passes.closed == 0.375


def test_a_repeated_rank_from_more_is_not_raced_twice() -> None:
    script = Script({1: Hang(), 2: Win(0.0625)})
    passes = Passes([(0.0625, candidates(1) + batch(range(2, 3)))])
    result, _ = run(racing_more(script, 1, passes))
    assert isinstance(result, RaceResult)
    assert [a.rank for a in result.attempts] == [1, 2] and script.starts == {1: 0.0, 2: 0.25}



# -- a later pass's plan replaces the pending one (`Replan`, racing Rule 7) ------------------

WITHDRAWN = "withdrawn: resolution pass 2's decision no longer has it"


def test_a_replan_withdraws_a_pending_candidate_it_no_longer_has() -> None:
    # Pass 1 planned #1..#3; pass 2 (at 0.125) keeps #3 and adds #4, but not #2: #2 is
    # never started (the script has no step for it), recorded not_started with the reason,
    # and never reported to on_outcome.
    script = Script({1: Hang(), 3: Hang(), 4: Win(0.0625)})
    passes = Passes([(0.125, Replan((*candidates(3)[2:], *batch(range(4, 5))), WITHDRAWN))])
    calls, on_outcome = recorder()
    result, at = run(racing_more(script, 3, passes, on_outcome=on_outcome))
    assert script.starts == {1: 0.0, 3: 0.25, 4: 0.5}
    assert isinstance(result, RaceResult) and result.candidate.rank == 4 and at == 0.5625
    assert [(a.rank, a.outcome) for a in result.attempts] == [
        (1, "cancelled"), (2, "not_started"), (3, "cancelled"), (4, "won")]
    assert result.attempts[1].error == WITHDRAWN and result.attempts[1].elapsed_ms is None
    assert calls == [(4, 4, 62.5)]


def test_a_replan_reorders_the_pending_ones_and_ignores_what_started() -> None:
    script = Script({1: Hang(), 2: Win(0.0625), 3: Hang()})
    first = candidates(3)
    passes = Passes([(0.125, Replan((first[0], first[2], first[1])))])
    result, at = run(racing_more(script, 3, passes))
    assert script.starts == {1: 0.0, 3: 0.25, 2: 0.5}, "#1 had started: not raced twice"
    assert isinstance(result, RaceResult) and result.candidate.rank == 2 and at == 0.5625
    assert [a.rank for a in result.attempts] == [1, 2, 3]


def test_an_empty_replan_withdraws_everything_pending_and_the_running_one_can_still_win(
) -> None:
    script = Script({1: Win(0.5)})
    passes = Passes([(0.125, Replan((), WITHDRAWN))])
    calls, on_outcome = recorder()
    result, at = run(racing_more(script, 3, passes, on_outcome=on_outcome))
    assert script.starts == {1: 0.0}
    assert isinstance(result, RaceResult) and at == 0.5
    assert [(a.outcome, a.error) for a in result.attempts] == [
        ("won", ""), ("not_started", WITHDRAWN), ("not_started", WITHDRAWN)]
    assert calls == [(1, 1, 500.0)]


def test_a_withdrawn_candidate_planned_again_is_raced() -> None:
    # #2 is withdrawn at 0.125 and planned again at 0.375: it starts then (its turn, 0.25,
    # has passed), and its record no longer says withdrawn.
    script = Script({1: Hang(), 2: Win(0.0625)})
    passes = Passes([(0.125, Replan((), WITHDRAWN)), (0.375, Replan(tuple(candidates(2))))])
    result, at = run(racing_more(script, 2, passes))
    assert script.starts == {1: 0.0, 2: 0.375}
    assert isinstance(result, RaceResult) and result.candidate.rank == 2 and at == 0.4375
    assert [(a.outcome, a.error) for a in result.attempts][1] == ("won", "")


def test_every_attempt_failing_after_a_replan_withdrew_the_rest_is_lost() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    script = Script({1: Fail(0.25, refused)})
    passes = Passes([(0.125, Replan((), WITHDRAWN))])
    result, at = run(racing_more(script, 2, passes))
    assert isinstance(result, tuple) and at == 0.25
    assert [(a.outcome, a.error) for a in result][1] == ("not_started", WITHDRAWN)


# -- classify -------------------------------------------------------------------------------


class QuicClose(ConnectionError):
    """The shape classify() reads a QUIC close from (aioquic's QuicConnectionError)."""

    def __init__(self, error_code: int, reason_phrase: str = "") -> None:
        super().__init__(f"QUIC connection closed: {reason_phrase} (error {error_code})")
        self.error_code = error_code
        self.reason_phrase = reason_phrase


class PinMismatch(ssl.SSLCertVerificationError):
    """What the stacks raise for a certificate outside the pinned set."""


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(("exc", "kind"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), FailureKind.REFUSED),
    (OSError(errno.ECONNREFUSED, "refused"), FailureKind.REFUSED),
    (TimeoutError(), FailureKind.TIMEOUT),
    (OSError(errno.ETIMEDOUT, "timed out"), FailureKind.TIMEOUT),
    (TimeoutError(), FailureKind.TIMEOUT),
    (OSError(errno.ENETUNREACH, "x"), FailureKind.UNREACHABLE),
    (OSError(errno.EHOSTUNREACH, "x"), FailureKind.UNREACHABLE),
    (OSError(errno.EADDRNOTAVAIL, "x"), FailureKind.UNREACHABLE),
    (OSError(errno.ENETDOWN, "x"), FailureKind.UNREACHABLE),
    (ssl.SSLCertVerificationError("certificate verify failed"), FailureKind.TLS_VERIFY),
    (PinMismatch("not one of the pinned ones"), FailureKind.TLS_VERIFY),
    (ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION]"), FailureKind.TLS_HANDSHAKE),
    (ssl.SSLError(errno.ECONNREFUSED, "errno-like number"), FailureKind.TLS_HANDSHAKE),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), FailureKind.RESET),
    (ConnectionResetError(), FailureKind.RESET),
    (ConnectionAbortedError(), FailureKind.RESET),
    (BrokenPipeError(), FailureKind.RESET),
    (asyncio.IncompleteReadError(b"", 5), FailureKind.RESET),
    (OSError(errno.EPROTONOSUPPORT, "x"), FailureKind.UNSUPPORTED),
    (OSError(errno.EAFNOSUPPORT, "x"), FailureKind.UNSUPPORTED),
    (OSError(errno.ENOPROTOOPT, "x"), FailureKind.UNSUPPORTED),
    (RemoteProtocolError("garbage"), FailureKind.PROTOCOL),
    (QuicClose(0x2, "refused"), FailureKind.REFUSED),
    (QuicClose(0x100 + 42, "bad_certificate"), FailureKind.TLS_VERIFY),
    (QuicClose(0x100 + 48, "unknown_ca"), FailureKind.TLS_VERIFY),
    (QuicClose(0x100 + 120, "no_application_protocol"), FailureKind.TLS_HANDSHAKE),
    (QuicClose(0xA, "protocol violation"), FailureKind.PROTOCOL),
    (QuicClose(0x0, ""), FailureKind.RESET),
    (ConnectionError(), FailureKind.OTHER),  # aioquic's bare handshake failure says nothing
    (ConnectionError("QUIC connection closed: refused (error 2)"), FailureKind.OTHER),
    (ValueError("x"), FailureKind.OTHER),
    (_caused(RuntimeError("wrapped"), ConnectionRefusedError()), FailureKind.REFUSED),
], ids=repr)
def test_classify(exc: BaseException, kind: FailureKind) -> None:
    assert classify(exc) is kind


def test_classify_survives_a_cause_cycle() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a) is FailureKind.OTHER


def test_classify_reads_no_text() -> None:
    """Rule: kinds come from types and errno; a message that reads like one changes nothing."""
    assert classify(RuntimeError("Connection refused")) is FailureKind.OTHER
    assert classify(OSError("timed out")) is FailureKind.OTHER


def test_classify_an_unenforceable_interface_as_policy_not_as_a_firewall_eperm() -> None:
    from taps_post.stacks.base import InterfaceNotEnforcedError

    exc = InterfaceNotEnforcedError("a2", "the route leaves by a1", egress="a1")
    assert classify(exc) is FailureKind.POLICY
    assert classify(PermissionError(errno.EPERM, "firewall")) is not FailureKind.POLICY
