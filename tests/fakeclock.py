"""A virtual-time asyncio event loop: timers fire in order, at exact times, without sleeping.

Rule 1: the loop's clock (`loop.time()`) starts at 0.0 and moves only when the loop has
nothing ready: the selector then jumps the clock to the next timer instead of waiting for it
(the approach of looptime and aiotools' virtual clock). Real file descriptors still work:
the selector always polls them, without blocking.
Rule 2: a loop with nothing ready and no timer would wait forever on a real clock; here that
is a test bug, reported as RuntimeError instead of a hang.
Rule 3: `run(coro)` is asyncio.run on this loop (asyncio.Runner), so leftover tasks are
cancelled and async generators closed exactly as in production.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualClock", "VirtualTimeLoop", "run"]

T = TypeVar("T")

_Selector: type[selectors.BaseSelector] = selectors.DefaultSelector


class VirtualClock:
    """Seconds since the loop was made; advanced by the selector, never by the wall clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _VirtualSelector(_Selector):  # type: ignore[valid-type,misc]
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual-time loop: nothing is ready and no timer is "
                               "scheduled, so a real loop would wait forever")
        self._clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = VirtualClock()
        super().__init__(selector=_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.now


def run(main: Coroutine[Any, Any, T], *, debug: bool = False) -> T:
    """Run `main` to completion on a fresh VirtualTimeLoop."""
    with asyncio.Runner(debug=debug, loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
