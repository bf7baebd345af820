"""Datagram endpoints: Source (send-only carrier) and Sink (receive from anyone).

Rule 1: both add the `unreliable-datagram` profile as a carrier-layer policy, so the system
and app layers still decide (a system that prohibits udp gets a PolicyError, not a socket).
Rule 2: a Source is a Carrier whose receive() is refused; a Sink is not a Carrier at all
(it has no Remote), only an inbox on a local port or multicast group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from ..core.messages import InMessage
from ..decision.decision import Decision
from ..errors import ConnectionClosedError, PolicyError, UsageError
from ..policy.context import PolicyContext
from ..stacks.udp import DatagramTransient, bind_sink
from .association import default_store
from .carrier import Carrier
from .endpoints import Local, Remote
from .establish import EnvSpec, establish, policy_for, tracer_for
from .listener import listen_decision
from .trace import TraceCallback

__all__ = ["Sink", "Source", "new_sink", "new_source"]

_DATAGRAM = {"version": 1, "layer": "carrier", "name": "source-sink",
             "rules": [{"id": "datagram", "use": ["unreliable-datagram"]}]}


class Source(Carrier):
    """A send-only carrier (UDP): `receive()` is refused."""

    async def receive(self) -> InMessage:
        raise UsageError("a Source only sends")


async def new_source(local: Local | None, remote: Remote | str, *,
                     policy: PolicyContext | None = None, app_name: str | None = None,
                     env: EnvSpec = None, trace: TraceCallback | None = None) -> Source:
    """A UDP Source: the carrier layer adds the unreliable-datagram profile."""
    if isinstance(remote, str):
        remote = Remote.parse(remote if "://" in remote else f"udp://{remote}")
    elif remote.scheme != "udp":
        remote = replace(remote, scheme="udp")
    ctx = policy_for(policy, app_name).with_carrier(_DATAGRAM)
    carrier = await establish(remote, local, ctx, None, default_store.get(remote.hostport),
                              env, kind="source", tracer=tracer_for(trace), carrier_class=Source)
    assert isinstance(carrier, Source)
    return carrier


class Sink:
    """Receives datagrams from anyone on a local port (or a multicast group)."""

    def __init__(self, transient: DatagramTransient, decision: Decision) -> None:
        self._transient = transient
        self.explanation = decision
        transient.bind(self)

    @property
    def port(self) -> int:
        assert self._transient.local_address is not None
        return self._transient.local_address[1]

    async def receive(self) -> InMessage:
        return await self._transient.receive()

    def __aiter__(self) -> AsyncIterator[InMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[InMessage]:
        while True:
            try:
                yield await self._transient.receive()
            except ConnectionClosedError:
                return

    def ready(self, callback: Callable[[InMessage], Any]) -> None:
        self._transient.set_callback(callback)

    async def close(self) -> None:
        await self._transient.aclose()

    async def __aenter__(self) -> Sink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def new_sink(local: Local, *, policy: PolicyContext | None = None,
                   app_name: str | None = None, env: EnvSpec = None) -> Sink:
    """A UDP Sink on `local`; a multicast `local.address` joins that group."""
    ctx = policy_for(policy, app_name).with_carrier(_DATAGRAM)
    decision, settings = listen_decision(local, ctx, "sink", env)
    if any(e.stack == "udp" and not e.interface for e in decision.excluded):
        raise PolicyError("the policy does not allow udp for this sink", decision)
    transient = await bind_sink(local.address or "::", local.port, local.interface, settings)
    return Sink(transient, decision)
