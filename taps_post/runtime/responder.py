"""Responder: a Listener whose carriers are served by one handler, message by message.

Rule 1: the Responder owns one task per accepted carrier; close() closes the Listener, then
cancels and awaits every task, so no handler outlives it.
Rule 2: a reply goes back on the carrier the request came on (`Reply.send`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .. import stacks
from ..core.messages import InMessage, OutMessage
from ..errors import ConnectionClosedError
from ..policy.context import PolicyContext
from .carrier import Carrier
from .endpoints import Local
from .establish import EnvSpec, FramerSpec
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


class Responder:
    """A Listener whose carriers are served by one handler, message by message."""

    def __init__(self, listener: Listener, handler: Handler) -> None:
        self.listener = listener
        self.handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        listener.accept(self._serve)

    @property
    def ports(self) -> dict[str, int]:
        return self.listener.ports

    def _serve(self, carrier: Carrier) -> None:
        task = asyncio.ensure_future(self._run(carrier))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, carrier: Carrier) -> None:
        try:
            async for msg in carrier:
                result = self.handler(msg, Reply(carrier, msg))
                if inspect.isawaitable(result):
                    await result
        except ConnectionClosedError:
            pass
        finally:
            # A connectionless peer's carrier ends with the Listener, not with its messages.
            if "reliability" in stacks.info(carrier.stack).features:
                await carrier.close()

    async def close(self) -> None:
        await self.listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
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
