"""Handlers: one application callback under the draft's contract (Appendix A: Ready, Accept,
Respond), shared by the Carrier (`ready`, `accept`), the Listener (`accept`) and the Responder.

Rule 1: the callback is called once per item its owner offers until it returns False (a plain
function's result, or what the awaitable it returned resolves to). From then on it is
`stopped`: `offer()` refuses every item without calling the callback. Each False calls the
owner's `stop` hook (the owner's own "stop" must be idempotent).
Rule 2: an awaitable result (an `async def` callback's coroutine, or one a plain function
returned) is awaited in a task the owner owns: the task goes into the owner's task set (the
owner's close cancels and awaits it) and into `tasks`, the ones of this callback still running.
Rule 3: at most `limit` tasks run at once (None: no bound). The task that reaches the bound
sets `paused` and its `offer()` answers False: the owner stops offering, its items wait in its
own queue, until one finishes; then `paused` clears and the owner's `resume` hook is called
(also after an awaited False, so the owner can drop what waited). `wait()` is that wait for an
owner that is a coroutine.
Rule 4: an exception raised by the callback itself goes to whoever offered the item; one raised
by an awaited result is reported to the loop (`loop.call_exception_handler` with the owner's
message, the exception and the task), counts as no verdict, and the owner lives on.
Rule 5: this module imports nothing from taps_post: every runtime module may import it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Handlers"]


class Handlers:
    """One application callback, its verdict and its bounded tasks (module Rules 1-4)."""

    __slots__ = ("callback", "limit", "message", "owner", "paused", "resume", "running",
                 "stop", "stopped", "tasks")

    def __init__(self, callback: Callable[[Any], Any], limit: int | None, *, message: str,
                 owner: set[asyncio.Task[Any]], resume: Callable[[], None] | None = None,
                 stop: Callable[[], None] | None = None) -> None:
        self.callback = callback
        self.limit = limit
        self.message = message
        """What the loop's exception handler is told when an awaited result fails."""
        self.owner = owner
        self.resume = resume
        self.stop = stop
        self.running = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.paused = False

    def offer(self, item: Any) -> bool:
        """Call the callback for `item`; False: offer no more (stopped, or paused)."""
        if self.stopped:
            return False
        result = self.callback(item)
        if inspect.isawaitable(result):
            self.running += 1
            task = asyncio.ensure_future(self._finish(result))
            for tasks in (self.owner, self.tasks):
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if self.limit is not None and self.running >= self.limit:
                self.paused = True
                return False
            return True
        if result is False:
            self._stopped()
            return False
        return True

    async def wait(self) -> None:
        """Return once not paused (a task finished, or the callback said False)."""
        while self.paused and self.tasks:
            await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)

    def _stopped(self) -> None:
        self.stopped = True
        if self.stop is not None:
            self.stop()

    async def _finish(self, awaitable: Awaitable[Any]) -> None:
        try:
            verdict = await awaitable
        except Exception as exc:
            asyncio.get_running_loop().call_exception_handler({
                "message": self.message, "exception": exc, "task": asyncio.current_task()})
            verdict = None
        finally:
            self.running -= 1
        if verdict is False:
            self._stopped()
        elif not self.paused:
            return
        self.paused = False
        if self.resume is not None:
            self.resume()
