"""Datagram endpoints: Source (send-only carrier) and Sink (receive from anyone).

Rule 1: both add the `unreliable-datagram` profile as a carrier-layer policy, so the system
and app layers still decide (a system that prohibits udp gets a PolicyError, not a socket).
Rule 2: a Source is a Carrier whose receive() is refused, born dormant like any initiated
carrier (`new_source()` does no I/O); a Sink is not a Carrier at all (it has no Remote), only
an inbox on a local port or multicast group. Neither forks nor accepts forks (draft 2.1.2,
2.1.3): both refuse with UsageError.
Rule 3: a Sink serves only interfaces no rule excludes, as a Listener does
(`listener.serving_interfaces`): with such a rule in force it is one socket per allowed
interface, each pinned to it, and one inbox that merges them in arrival order.
Rule 4: a Sink's sockets take the receive and send budgets of the listen Decision
(carrier.recvBudget: reading pauses when its inbox holds that many bytes) but never its idle
timeout: a Sink is the listening socket itself, there is no peer to wait for. A wildcard Sink
is attached through stacks/dgram.py like every listening UDP socket.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from ..core.inbox import Inbox
from ..core.messages import InMessage
from ..core.settings import Settings
from ..decision.decision import Decision
from ..errors import ArgumentError, ConnectionClosedError, PolicyError, UsageError
from ..policy.context import PolicyContext
from ..stacks.udp import DatagramTransient, bind_sink
from .association import Association, AssociationStore, default_store
from .carrier import Carrier
from .endpoints import Local, Remote, hostport
from .establish import EnvSpec, policy_for, prepare, tracer_for
from .listener import listen_decision, serving_interfaces
from .path import Path
from .trace import TraceCallback

__all__ = ["Sink", "Source", "new_sink", "new_source"]

_DATAGRAM = {"version": 1, "layer": "carrier", "name": "source-sink",
             "rules": [{"id": "datagram", "use": ["unreliable-datagram"]}]}


class Source(Carrier):
    """A send-only carrier (UDP), born dormant like every initiated carrier: `receive()`,
    `ready()`, `fork()` and `accept()` are refused (draft 2.1.2: Sources cannot be forked and
    need not accept forks)."""

    async def receive(self) -> InMessage:
        raise UsageError("a Source only sends")

    def ready(self, callback: Callable[[InMessage], Any], *,
              max_concurrent: int | None = None) -> None:
        raise UsageError("a Source only sends")

    async def fork(self) -> Carrier:
        raise UsageError("a Source cannot be forked (draft 2.1.2)")

    def accept(self, callback: Callable[[Carrier], Any], *,
               max_concurrent: int | None = None) -> None:
        raise UsageError("a Source does not accept forks (draft 2.1.2)")


def new_source(local: Local | None, remote: Remote | str, *,
               policy: PolicyContext | None = None, app_name: str | None = None,
               env: EnvSpec = None, trace: TraceCallback | None = None,
               store: AssociationStore | None = None) -> Source:
    """A UDP Source, dormant until its first send (or `await`, `activate()`): the carrier
    layer adds the unreliable-datagram profile. `local.port` is the source port it binds."""
    if isinstance(remote, str):
        remote = Remote.parse(remote if "://" in remote else f"udp://{remote}")
    elif remote.is_rendezvous:
        raise ArgumentError(f"new_source: {remote.target} is a rendezvous peer; a Source "
                            "sends datagrams to an address, a peer is met with initiate()")
    elif remote.scheme != "udp":
        remote = replace(remote, scheme="udp")
    ctx = policy_for(policy, app_name).with_carrier(_DATAGRAM)
    association = (store or default_store).get(remote.hostport, remote=remote, local=local)
    carrier = prepare(remote, local, ctx, None, association, env, kind="source",
                      tracer=tracer_for(trace), carrier_class=Source)
    assert isinstance(carrier, Source)
    return carrier


class Sink:
    """Receives datagrams from anyone on a local port (or a multicast group)."""

    def __init__(self, transients: DatagramTransient | Sequence[DatagramTransient],
                 decision: Decision, local: Local | None = None,
                 settings: Settings | None = None) -> None:
        self._transients = ((transients,) if isinstance(transients, DatagramTransient)
                            else tuple(transients))
        self._transient = self._transients[0]
        self.explanation = decision
        bound = self._transient.local_address
        self.association = Association(
            key=hostport((bound[0], bound[1])) if bound else "sink", local=local)
        """The draft's Sink.Association(): a Local with no Remote (a Sink hears anyone); its
        `paths` are those of the sockets it receives on."""
        self._inbox = Inbox()
        """Only with several sockets (Rule 3): what they received, merged."""
        self._waiters: list[asyncio.Future[None]] = []
        self._callback: Callable[[InMessage], Any] | None = None
        self._closed = False
        for t in self._transients:
            t.bind(self)
            if settings is not None:  # Rule 4: the budgets, never an idle timeout
                t.apply_settings(replace(settings, idle_timeout=0.0))
            t.path = Path(t, None)
            if len(self._transients) > 1:
                t.set_callback(self._arrived)
        self.association.attach(self)

    @property
    def transients(self) -> tuple[DatagramTransient, ...]:
        """The sockets this Sink receives on (one per interface it serves), while open."""
        return tuple(t for t in self._transients if t.is_open)

    @property
    def port(self) -> int:
        assert self._transient.local_address is not None
        return self._transient.local_address[1]

    @property
    def interfaces(self) -> tuple[str | None, ...]:
        """The interfaces the Sink's sockets are pinned to (None: not pinned)."""
        return tuple(t.interface for t in self._transients)

    def _arrived(self, message: InMessage) -> None:
        if self._callback is not None:
            if self._callback(message) is False:
                self._callback = None
            return
        self._inbox.append(message)
        if self._inbox.over_high():
            self._inbox.paused = True
            for t in self._transients:
                if t.transport is not None:
                    t.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def receive(self) -> InMessage:
        if len(self._transients) == 1:
            return await self._transient.receive()
        while not self._inbox:
            if self._closed:
                raise ConnectionClosedError("the sink is closed")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        message = self._inbox.popleft()
        if self._inbox.under_low():
            self._inbox.paused = False
            for t in self._transients:
                if t.transport is not None:
                    t.transport.resume_reading()
        return message

    def __aiter__(self) -> AsyncIterator[InMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[InMessage]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosedError:
                return

    def ready(self, callback: Callable[[InMessage], Any]) -> None:
        if len(self._transients) == 1:
            self._transient.set_callback(callback)
            return
        self._callback = callback
        while self._callback is not None and self._inbox:
            if self._callback(self._inbox.popleft()) is False:
                self._callback = None

    async def fork(self) -> Carrier:
        raise UsageError("a Sink cannot be forked (draft 2.1.3)")

    def accept(self, callback: Callable[[Carrier], Any]) -> None:
        raise UsageError("a Sink does not accept forks (draft 2.1.3)")

    async def close(self) -> None:
        self._closed = True
        for t in self._transients:
            await t.aclose()
        self._wake()

    async def __aenter__(self) -> Sink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def new_sink(local: Local, *, policy: PolicyContext | None = None,
                   app_name: str | None = None, env: EnvSpec = None) -> Sink:
    """A UDP Sink on `local`; a multicast `local.address` joins that group. A Local on an
    interface a rule excludes, or on its address, is a PolicyError naming the rule."""
    ctx = policy_for(policy, app_name).with_carrier(_DATAGRAM)
    decision, settings = listen_decision(local, ctx, "sink", env)
    if any(e.stack == "udp" and not e.interface for e in decision.excluded):
        raise PolicyError("the policy does not allow udp for this sink", decision)
    interfaces = serving_interfaces(decision, local)
    address = local.address or "::"
    for tries in range(8):
        transients: list[DatagramTransient] = []
        port = local.port
        try:
            for interface in interfaces:
                transient = await bind_sink(address, port, interface, settings)
                transients.append(transient)
                assert transient.local_address is not None
                port = transient.local_address[1]
        except OSError as exc:
            for t in transients:
                await t.aclose()
            if exc.errno != errno.EADDRINUSE or local.port != 0 or tries == 7:
                raise
            continue
        except BaseException:
            for t in transients:
                t.abort()
            raise
        return Sink(transients, decision, local, settings)
    raise AssertionError("unreachable: the last try raises")  # pragma: no cover
