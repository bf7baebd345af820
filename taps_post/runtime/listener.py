"""Listener: accepts carriers on every stack the policy allows, all on one port number.

Rule 1: the Listener's Decision is the same `decide()` a dry run makes for a `listen` request
on the local address; what it excludes, the Listener does not serve.
Rule 2: one stack per IP protocol (two stacks cannot share a TCP or a UDP port): from the
stack catalogue's facts, secure stacks first when the Local has a key, multipath-capable
ones first unless multipath is disabled, then tie-break order. With the built-in stacks that
is tls-mptcp, tls, mptcp, tcp on the TCP port and quic, udp on the UDP port.
Rule 3: the Listener owns its endpoints and the carriers accepted but never taken: close()
closes them all.
Rule 4: what a rule excludes is never served, whatever address the socket binds. A Local on
an interface a rule excludes, or on one of its addresses, is a PolicyError naming the rule.
When a rule excludes any interface, a Listener without an interface of its own opens one
endpoint per interface no rule excludes, each pinned to it (SO_BINDTODEVICE): a wildcard or
an address bind alone would still take peers arriving on the excluded one (Linux accepts a
packet for any of its addresses on any interface). A multicast group is served on the one
interface the kernel would join it on, if no rule excludes that.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .. import stacks
from ..core.settings import Settings
from ..decision.decide import decide
from ..decision.decision import Decision, Exclusion
from ..decision.request import parse_target
from ..errors import PolicyError
from ..policy.context import PolicyContext
from ..stacks.base import Listening, ListenSpec
from ..stacks.transient import Transient
from ..system import live, routes
from .carrier import Carrier
from .endpoints import Local
from .establish import EnvSpec, FramerSpec, framer_factory, policy_for, snapshot, tracer_for
from .trace import TraceCallback, Tracer

__all__ = ["Listener", "barred_interfaces", "listen", "listen_decision",
           "serving_interfaces"]


def listen_decision(local: Local, ctx: PolicyContext, kind: str,
                    env: EnvSpec) -> tuple[Decision, Settings]:
    """What the policy allows for serving on `local` (Listener, Responder, Sink); a Local
    on an interface a rule excludes, or on its address, is refused here (Rule 4)."""
    host = local.address or "::"
    target = f"[{host}]:{local.port}" if ":" in host else f"{host}:{local.port}"
    request = parse_target(target, app=ctx.app_name, kind=kind)
    decision = decide(request, ctx, snapshot(env) or live.live_environment())
    if decision.outcome == "policy_prohibited":
        raise PolicyError(f"policy_prohibited for {kind} on {target}", decision)
    barred = barred_interfaces(decision)
    if local.interface is not None and local.interface in barred:
        raise PolicyError(f"{kind} on interface {local.interface}: "
                          f"{_because(barred[local.interface])}", decision)
    for name in _owners(decision, local.address):
        if name in barred:
            raise PolicyError(f"{kind} on {local.address}, an address of interface {name}: "
                              f"{_because(barred[name])}", decision)
    return decision, Settings.from_decision(decision)


def barred_interfaces(decision: Decision) -> Mapping[str, Exclusion]:
    """Interfaces a rule excluded, each with the exclusion that names the rule. Exclusions
    no rule made (an interface that cannot reach the listening address, such as loopback
    for `::`) say nothing about who may connect, so they do not count."""
    return {e.interface: e for e in decision.excluded
            if e.interface is not None and e.stack is None and e.remote_address is None
            and e.rule is not None}


def serving_interfaces(decision: Decision, local: Local) -> tuple[str | None, ...]:
    """The interfaces to pin one endpoint each to (None: one endpoint, not pinned), Rule 4."""
    if local.interface is not None:
        return (local.interface,)
    barred = barred_interfaces(decision)
    if not barred:
        return (None,)
    if local.address is not None and ipaddress.ip_address(local.address).is_multicast:
        joined = routes.egress_interface(local.address)
        if joined is None:
            raise PolicyError(f"a rule excludes an interface and the interface that would "
                              f"join {local.address} is unknown: name one", decision)
        if joined in barred:
            raise PolicyError(f"{decision.request.kind} on {local.address}, joined on "
                              f"interface {joined}: {_because(barred[joined])}", decision)
        return (joined,)
    allowed = tuple(i.name for i in decision.interfaces if i.name not in barred)
    if not allowed:
        raise PolicyError("rules exclude every interface of this machine", decision)
    return allowed


def _owners(decision: Decision, address: str | None) -> list[str]:
    """The interfaces that hold `address` (none for a wildcard or a group)."""
    if address is None:
        return []
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_unspecified or ip.is_multicast:
        return []
    return [i.name for i in decision.interfaces if any(a.ip == ip for a in i.addresses)]


def _because(e: Exclusion) -> str:
    where = f"{e.layer} layer, {e.source}" if e.source else f"{e.layer} layer"
    return f"{e.outcome} by rule {e.rule} ({where}): {e.property}"


def listen_stacks(decision: Decision, secure_ok: bool) -> list[str]:
    """Per IP protocol, the stack the listener serves (Rule 2)."""
    excluded = {e.stack for e in decision.excluded if e.stack and not e.interface}
    multipath = decision.value("multipath") != "disabled"
    best: dict[str, tuple[tuple[int, int, int], str]] = {}
    for name in stacks.names():
        facts = stacks.info(name)
        if name in excluded or stacks.get(name) is None:
            continue
        if (facts.secure and not secure_ok) or (facts.multipath_capable and not multipath):
            continue
        key = (0 if facts.secure else 1, 0 if facts.multipath_capable else 1, facts.order)
        if facts.ip_protocol not in best or key < best[facts.ip_protocol][0]:
            best[facts.ip_protocol] = (key, name)
    return [best[p][1] for p in ("tcp", "udp") if p in best]


class Listener:
    """Accepts carriers on every stack the policy allows, all on one port number."""

    def __init__(self, decision: Decision, settings: Settings,
                 tracer: Tracer | None = None) -> None:
        self.explanation = decision
        self.settings = settings
        self._tracer = tracer
        self._endpoints: list[Listening] = []
        self._queue: asyncio.Queue[Carrier | None] = asyncio.Queue()
        self._callback: Callable[[Carrier], Any] | None = None
        self._closed = False

    @property
    def ports(self) -> dict[str, int]:
        """What is bound, by stack: {"tcp": 40123, "udp": 40123}. A multipath-capable socket
        also accepts its single-path clients, so it is listed under their names too."""
        out: dict[str, int] = {}
        for e in self._endpoints:
            out[e.stack] = e.port
        for e in self._endpoints:
            fallback = {"mptcp": "tcp", "tls-mptcp": "tls"}.get(e.stack)
            if fallback is not None:
                out.setdefault(fallback, e.port)
        return out

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def on_transient(self, transient: Transient) -> None:
        """Where the endpoints hand each accepted Transient (a ListenSpec callback)."""
        carrier = Carrier(transient, decision=self.explanation, association=None,
                          tracer=self._tracer)
        if self._tracer is not None:
            self._tracer.emit("listener.accepted", stack=transient.stack,
                              interface=transient.interface, local=transient.local_address,
                              remote=transient.remote_address)
        if self._callback is not None:
            if self._callback(carrier) is False:
                self._callback = None
            return
        self._queue.put_nowait(carrier)

    def accept(self, callback: Callable[[Carrier], Any]) -> None:
        """Draft style: `callback(carrier)` for each new carrier until it returns False."""
        self._callback = callback
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and callback(item) is False:
                self._callback = None
                break

    def __aiter__(self) -> AsyncIterator[Carrier]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Carrier]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def bind(self, local: Local, chosen: list[str], factory: Any,
                   interfaces: tuple[str | None, ...] = (None,)) -> None:
        """Open an endpoint per chosen stack and interface (Rule 4) on one port number
        (retrying a random port that one endpoint had free and another not)."""
        address = local.address or "::"
        for tries in range(8):
            port = local.port
            try:
                for name in chosen:
                    impl = stacks.get(name)
                    assert impl is not None  # listen_stacks() only picks available stacks
                    for interface in interfaces:
                        endpoint = await impl.listen(ListenSpec(
                            address, port, interface, self.settings, factory,
                            tuple(local.certificates), self.on_transient))
                        self._endpoints.append(endpoint)
                        port = endpoint.port
                        if self._tracer is not None:
                            self._tracer.emit("listener.ready", stack=name,
                                              interface=interface, local=(address, port))
                return
            except OSError as exc:
                for endpoint in self._endpoints:
                    await endpoint.aclose()
                self._endpoints.clear()
                if exc.errno != errno.EADDRINUSE or local.port != 0 or tries == 7:
                    raise

    async def close(self) -> None:
        """Stop accepting; carriers accepted but never taken are closed too."""
        if self._closed:
            return
        self._closed = True
        for endpoint in self._endpoints:
            await endpoint.aclose()
            if self._tracer is not None:
                self._tracer.emit("listener.closed", stack=endpoint.stack,
                                  local=("", endpoint.port))
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item.abort()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def listen(local: Local, *, policy: PolicyContext | None = None, framer: FramerSpec = None,
                 app_name: str | None = None, env: EnvSpec = None,
                 trace: TraceCallback | None = None, kind: str = "listen") -> Listener:
    """A Listener on `local`: every stack the policy allows for `listen`, one port number.

    A Local with a certificate and key serves TLS (and QUIC) instead of plain TCP (and UDP).
    `kind` is the request kind the policy sees (`respond` for a Responder).
    """
    ctx = policy_for(policy, app_name)
    decision, settings = listen_decision(local, ctx, kind, env)
    chosen = listen_stacks(decision, secure_ok=any(c.key_pem for c in local.certificates))
    if not chosen:
        raise PolicyError("the policy allows no stack this listener can serve", decision)
    interfaces = serving_interfaces(decision, local)
    listener = Listener(decision, settings, tracer_for(trace))
    await listener.bind(local, chosen, framer_factory(framer, settings.max_size), interfaces)
    return listener
