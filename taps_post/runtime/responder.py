"""Responder: a Listener whose carriers are served by one handler, message by message.

Rule 1: the Responder owns one task per accepted carrier and one per running `async`
handler; close() closes the Listener, then cancels and awaits every task, so no handler
outlives it.
Rule 2: a reply goes back on the carrier the request came on (`Reply.send`).
Rule 3 (Appendix A, Respond): the handler is called until it returns False (a plain
function's return value, or what an `async def` handler's coroutine returns): then the
Responder stops serving. Its Listener closes (later connections are refused), carriers
waiting for their next message close, and a carrier whose handlers are still running
closes once they finished, so the replies they send still go out.
Rule 4: per carrier, at most carrier.maxHandlers `async` handlers run at once (the draft's
backpressure idea): at the limit the carrier's next message waits, and so does reading
from it. Handlers that await may then reply in another order than the requests came;
carrier.maxHandlers 1 serves each carrier strictly in order. Rules 3 and 4 are the shared
callback contract of runtime/handlers.py, one `Handlers` per carrier.
Rule 5: a carrier the peer forks from a served one (runtime/fork.py, QUIC streams) is served
the same way: a Responder need not accept forks (draft 2.1.4), but a client that forks
expects its requests on the child answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .. import stacks
from ..core.messages import InMessage, OutMessage
from ..errors import ConnectionClosedError
from ..policy.context import PolicyContext
from .carrier import Carrier
from .endpoints import Local
from .establish import EnvSpec, FramerSpec
from .handlers import Handlers
from .listener import Listener, listen
from .trace import TraceCallback

__all__ = ["Handler", "Reply", "Responder", "respond"]


class Reply:
    """How a Responder's handler answers one message: through the carrier it came on."""

    def __init__(self, carrier: Carrier, request: InMessage) -> None:
        self.carrier = carrier
        self.request = request

    async def send(self, data: bytes | OutMessage) -> None:
        msg = data if isinstance(data, OutMessage) else OutMessage(data)
        await self.carrier.send_msg(msg)


Handler = Callable[[InMessage, Reply], Awaitable[Any] | Any]


class _Serving:
    """One carrier's serving loop: its task, its running handlers, whether it is idle."""

    __slots__ = ("carrier", "handlers", "idle", "task")

    def __init__(self, carrier: Carrier, handlers: Handlers) -> None:
        self.carrier = carrier
        self.handlers = handlers
        """The handler on this carrier's messages, at most carrier.maxHandlers at once."""
        self.idle = True
        """Waiting for the next message (nothing of ours would be cut short by cancelling)."""
        self.task: asyncio.Task[None] | None = None


class Responder:
    """A Listener whose carriers are served by one handler, message by message."""

    def __init__(self, listener: Listener, handler: Handler) -> None:
        self.listener = listener
        self.handler = handler
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: set[_Serving] = set()
        self._stopped = False
        self._closing: asyncio.Task[None] | None = None
        self._stop_event = asyncio.Event()
        listener.accept(self._serve)

    @property
    def ports(self) -> dict[str, int]:
        return self.listener.ports

    @property
    def serving(self) -> bool:
        """False once a handler returned False (Rule 3) or the Responder closed."""
        return not self._stopped

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            asyncio.get_running_loop().call_exception_handler({
                "message": "taps_post Responder handler failed",
                "exception": task.exception(), "task": task})

    def _serve(self, carrier: Carrier) -> bool:
        if self._stopped:
            carrier.abort()
            return False
        serving = _Serving(carrier, Handlers(
            lambda msg: self.handler(msg, Reply(carrier, msg)),
            max(1, self.listener.settings.max_handlers),
            message="taps_post Responder handler failed", owner=self._tasks, stop=self.stop))
        serving.task = asyncio.ensure_future(self._run(serving))
        self._serving.add(serving)
        self._own(serving.task)
        carrier.accept(self._serve)  # the peer's forks of it are served like it (Rule 5)
        return True

    async def _run(self, serving: _Serving) -> None:
        carrier = serving.carrier
        handlers = serving.handlers
        try:
            async for msg in carrier:
                serving.idle = False
                handlers.offer(msg)
                await handlers.wait()  # Rule 4: at the bound the next message waits
                if self._stopped:
                    break
                serving.idle = True
            if handlers.tasks:  # their replies go out before the carrier closes
                await asyncio.gather(*handlers.tasks, return_exceptions=True)
        except ConnectionClosedError:
            pass
        finally:
            serving.idle = False
            self._serving.discard(serving)
            # A connectionless peer's carrier ends with the Listener, not with its messages.
            if "reliability" in stacks.info(carrier.stack).features or self._stopped:
                await carrier.close()

    def stop(self) -> None:
        """Stop serving (what a handler returning False does, Rule 3)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        self._closing = asyncio.ensure_future(self.listener.close())
        for serving in list(self._serving):
            if serving.idle and serving.task is not None:
                serving.task.cancel()  # waiting for a message: nothing in flight

    async def wait_closed(self) -> None:
        """Return once serving stopped (a handler returned False, or close()) and every
        carrier and handler task ended."""
        await self._stop_event.wait()
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self._stopped = True
        self._stop_event.set()
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)
        await self.listener.close()
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Responder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def respond(local: Local, handler: Handler, *, policy: PolicyContext | None = None,
                  framer: FramerSpec = None, app_name: str | None = None,
                  env: EnvSpec = None, trace: TraceCallback | None = None) -> Responder:
    """Serve `handler(message, reply)` for every message on every carrier of a new Listener
    (the draft's Responder): the request/response pattern without managing carriers."""
    listener = await listen(local, policy=policy, framer=framer, app_name=app_name, env=env,
                            trace=trace, kind="respond")
    return Responder(listener, handler)
