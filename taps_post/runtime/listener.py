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
Rule 5 (Appendix A, Accept): `accept(cb)` gives `cb` each new carrier until it returns False;
then the Listener stops accepting: its listening endpoints close, so later connections are
refused by the kernel (TCP RST, ICMP port unreachable), never queued, and connections the
kernel had taken but the callback never saw are aborted. Carriers already queued stay for
`async for`. An `async def` callback runs as a task the Listener owns (close() cancels and
awaits it), at most carrier.maxHandlers at once; the others wait their turn in order (the
contract is runtime/handlers.py's `Handlers`).
Rule 6 (fork requests, runtime/fork.py): every new connection of a TCP-based stack with the
length-prefix framer is held from the application until its first byte arrives, or for a
short hold: 2 x the handshake RTT the kernel measured (TCP_INFO) + 10 ms, at most 100 ms. A
fork's HELLO is thus seen before the connection reaches anyone; a fork goes to its parent
carrier's accept(), never to the Listener's queue. The cost: a server-first protocol (the
server speaks before the client sends anything) waits that hold once per connection before
its carrier is handed over; a client that speaks first pays nothing (its first byte ends the
hold). Other framers and stacks are handed over at once. The 10 ms are the client's own
delay between its handshake and the HELLO (its event loop's turns, more under load; 2 ms
lost forks on a loaded test machine); a HELLO later than the hold gets LATE and the client
retries on a new connection (runtime/fork.py), so a late one costs a spurious connection
at the application, never a wrong fork.
Rule 7: every accepted carrier has an Association, from the Listener's own in-memory store,
keyed by the peer's address and port (each connection is its own peer until a fork proves
otherwise: fork children share their parent's Association), with `remote` the peer's
address and `local` the Listener's Local.
Rule 8: the stack a carrier reports is the Transient's (the stack that actually carried it:
an MPTCP listener's single-path client is `tcp`); neither the Listener nor its trace events
relabel it.
Rule 9: a connection to the Listener that has not finished its handshake within
listener.handshakeTimeout is dropped, at most listener.maxHandshakes run at once per
endpoint (more wait in the kernel's backlog, and shed stalled handshakes once those are old
enough: stacks/accept.py Rule 4), and the backlog is listener.backlog or the
system's somaxconn: the stacks do it with the Listener's Settings (stream stacks through
stacks/accept.py); `handshakes` counts those in progress.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .. import stacks
from ..core.framing import Framer
from ..core.settings import Settings
from ..decision.decide import decide
from ..decision.decision import Decision, Exclusion
from ..decision.request import parse_target
from ..errors import ArgumentError, PolicyError, UsageError
from ..policy.context import PolicyContext
from ..stacks.base import Listening, ListenSpec
from ..stacks.transient import Transient
from ..system import live, routes
from .association import Association, AssociationStore
from .carrier import Carrier
from .endpoints import Local, Remote, hostport
from .establish import EnvSpec, FramerSpec, framer_factory, policy_for, snapshot, tracer_for
from .fork import ForkServer, speaks_fork
from .handlers import Handlers
from .trace import TraceCallback, Tracer

__all__ = ["HOLD_CAP", "Listener", "barred_interfaces", "check_client_auth", "hold_delay",
           "listen", "listen_decision", "serving_interfaces"]


def listen_decision(local: Local, ctx: PolicyContext, kind: str,
                    env: EnvSpec) -> tuple[Decision, Settings]:
    """What the policy allows for serving on `local` (Listener, Responder, Sink); a Local
    on an interface a rule excludes, or on its address, is refused here (Rule 4)."""
    host = local.address or "::"
    target = hostport((host, local.port))
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
        # A rendezvous stack listens only over a path the runtime found (stacks/base.py
        # Rule 5), never on a port: the decision never judged it for a listen.
        if facts.rendezvous or name in excluded or stacks.get(name) is None:
            continue
        if (facts.secure and not secure_ok) or (facts.multipath_capable and not multipath):
            continue
        key = (0 if facts.secure else 1, 0 if facts.multipath_capable else 1, facts.order)
        if facts.ip_protocol not in best or key < best[facts.ip_protocol][0]:
            best[facts.ip_protocol] = (key, name)
    return [best[p][1] for p in ("tcp", "udp") if p in best]


HOLD_CAP = 0.1
"""Longest hold of a new connection before its carrier is handed over (Rule 6), seconds."""
HOLD_SLACK = 0.010
"""Added to 2 x the handshake RTT: the client's delay between its handshake and its HELLO
(Rule 6)."""
_STORE_LIMIT = 4096
"""Accepted peers the Listener's store names before it starts afresh (Associations stay
with their carriers; only the lookup table is dropped, so it cannot grow without bound)."""


def hold_delay(transient: Transient) -> float:
    """Rule 6: 2 x the handshake RTT (TCP_INFO, as the kernel measured it on this very
    connection) + HOLD_SLACK, at most HOLD_CAP; HOLD_SLACK alone where the RTT is unknown."""
    rtt_ms = transient.path_stats().rtt_ms
    return min(HOLD_CAP, 2.0 * (rtt_ms or 0.0) / 1000.0 + HOLD_SLACK)


class Listener:
    """Accepts carriers on every stack the policy allows, all on one port number."""

    def __init__(self, decision: Decision, settings: Settings,
                 tracer: Tracer | None = None) -> None:
        self.explanation = decision
        self.settings = settings
        self._tracer = tracer
        self._endpoints: list[Listening] = []
        self._bound: dict[str, int] = {}
        self._queue: asyncio.Queue[Carrier | None] = asyncio.Queue()
        self._callback: Handlers | None = None
        """The accept callback under Rule 5 (None: carriers go to the queue)."""
        self._handlers: set[asyncio.Task[Any]] = set()
        self._backlog: collections.deque[Carrier] = collections.deque()
        self._closed = False
        self._accepting = True
        self._stopping: asyncio.Task[None] | None = None
        self._local = Local()
        self._framer: Callable[[], Framer] | None = None
        self.store = AssociationStore()
        """The Associations of accepted carriers, in memory, this Listener's own (Rule 7)."""
        self._named = 0
        self.forks = ForkServer(tracer)
        """The server half of fork requests (runtime/fork.py) for this Listener's carriers."""

    @property
    def ports(self) -> dict[str, int]:
        """What is bound, by stack: {"tcp": 40123, "udp": 40123}. A multipath-capable socket
        also accepts its single-path clients, so it is listed under their names too."""
        out = dict(self._bound)
        for stack, port in self._bound.items():
            fallback = {"mptcp": "tcp", "tls-mptcp": "tls"}.get(stack)
            if fallback is not None:
                out.setdefault(fallback, port)
        return out

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def handshakes(self) -> int:
        """Connections accepted whose handshake (TLS, QUIC) is still in progress, over all
        endpoints: at most listener.maxHandshakes per endpoint, each bounded by
        listener.handshakeTimeout (Rule 9). Read-only; an endpoint that does not count its
        handshakes counts 0."""
        return sum(int(getattr(e, "handshakes", 0)) for e in self._endpoints)

    @property
    def accepting(self) -> bool:
        """False once an accept callback returned False or the Listener closed (Rule 5)."""
        return self._accepting and not self._closed

    # ---- new connections --------------------------------------------------------------------

    def on_transient(self, transient: Transient) -> None:
        """Where the endpoints hand each accepted Transient (a ListenSpec callback)."""
        if not self.accepting:
            transient.abort()  # taken by the kernel before the endpoint closed: refused
            return
        if speaks_fork(transient):
            self.forks.hold(transient, hold_delay(transient),
                            functools.partial(self._admit, forks=True))
        else:
            self._admit(transient, forks=False)

    def _admit(self, transient: Transient, *, forks: bool) -> None:
        """A new connection that is not a fork: a carrier for the application (`forks`:
        it speaks fork requests, speaks_fork())."""
        if not self.accepting:
            transient.abort()
            return
        carrier = self._carrier_for(transient, forks)
        if self._tracer is not None:
            self._tracer.emit("listener.accepted", stack=transient.stack,
                              interface=transient.interface, local=transient.local_address,
                              remote=transient.remote_address)
        self._offer(carrier)

    def _carrier_for(self, transient: Transient, forks: bool) -> Carrier:
        association = self._association_for(transient)
        carrier = Carrier(transient, decision=self.explanation, association=association,
                          remote=association.remote, local=self._local,
                          settings=self.settings, framer=self._framer,
                          forker=self.forks.fork if forks else None, tracer=self._tracer,
                          accepted=True)
        if forks:
            transient.on_control = functools.partial(self.forks.on_parent_control,
                                                     transient)
        return carrier

    def _association_for(self, transient: Transient) -> Association:
        """Rule 7: the peer's Association (one per peer address and port)."""
        addr = transient.remote_address
        host, port = (addr[0], addr[1]) if addr else ("unknown", 0)
        key = hostport((host, port))
        remote: Remote | None
        try:
            remote = Remote.ip(host, port)
        except ValueError:
            remote = None
        if self._named >= _STORE_LIMIT:
            self.store.clear()
            self._named = 0
        self._named += 1
        return self.store.get(key, remote=remote, local=self._local)

    # ---- handing carriers over (Rule 5) -------------------------------------------------------

    def _offer(self, carrier: Carrier) -> None:
        callback = self._callback
        if callback is None:
            self._queue.put_nowait(carrier)
        elif callback.paused:
            self._backlog.append(carrier)
        else:
            callback.offer(carrier)

    def _resume(self) -> None:
        """An accept task finished: carriers waiting for a slot get it, in order."""
        callback = self._callback
        while self._backlog and callback is not None and self.accepting \
                and not callback.paused:
            callback.offer(self._backlog.popleft())

    def accept(self, callback: Callable[[Carrier], Any]) -> None:
        """Draft style: `callback(carrier)` for each new carrier until it returns False, then
        the Listener stops accepting (Rule 5). An `async def` callback is awaited as a task
        the Listener owns, at most carrier.maxHandlers at once."""
        if not self.accepting:
            raise UsageError("this Listener stopped accepting (an accept callback returned "
                             "False, or it was closed)")
        handlers = self._callback = Handlers(
            callback, self.settings.max_handlers,
            message="taps_post Listener accept callback failed", owner=self._handlers,
            resume=self._resume, stop=self.stop_accepting)
        while not self._queue.empty() and self._callback is handlers:
            item = self._queue.get_nowait()
            if item is not None:
                self._offer(item)

    def stop_accepting(self) -> None:
        """Stop accepting new connections (what an accept callback returning False does):
        the endpoints close, later connections are refused; queued carriers stay."""
        if not self._accepting:
            return
        self._accepting = False
        self._callback = None
        self.forks.accepting = False
        while self._backlog:  # accepted, waiting for a handler slot: left for `async for`
            self._queue.put_nowait(self._backlog.popleft())
        self._queue.put_nowait(None)
        if self._tracer is not None:
            self._tracer.emit("listener.stopped", ports=tuple(sorted(self.ports.items())))
        if not self._closed:
            self._stopping = asyncio.ensure_future(self._close_endpoints())

    def __aiter__(self) -> AsyncIterator[Carrier]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Carrier]:
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # every iterator ends, not just the first
                return
            yield item

    async def bind(self, local: Local, chosen: list[str], factory: Any,
                   interfaces: tuple[str | None, ...] = (None,)) -> None:
        """Open an endpoint per chosen stack and interface (Rule 4) on one port number
        (retrying a random port that one endpoint had free and another not)."""
        self._local = local
        self._framer = factory
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
                            tuple(local.certificates), self.on_transient,
                            trusted=tuple(local.trusted)))
                        self._endpoints.append(endpoint)
                        self._bound[endpoint.stack] = endpoint.port
                        port = endpoint.port
                        if self._tracer is not None:
                            self._tracer.emit("listener.ready", stack=name,
                                              interface=interface, local=(address, port))
                return
            except OSError as exc:
                for endpoint in self._endpoints:
                    await endpoint.aclose()
                self._endpoints.clear()
                self._bound.clear()
                if exc.errno != errno.EADDRINUSE or local.port != 0 or tries == 7:
                    raise

    async def _close_endpoints(self) -> None:
        endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            await endpoint.aclose()
            if self._tracer is not None:
                self._tracer.emit("listener.closed", stack=endpoint.stack,
                                  local=("", endpoint.port))

    async def close(self) -> None:
        """Stop accepting; the endpoints, carriers accepted but never taken, held and
        half-forked connections close; every accept-callback task is cancelled and awaited."""
        if self._closed:
            return
        self.stop_accepting()
        self._closed = True
        if self._stopping is not None:
            await asyncio.gather(self._stopping, return_exceptions=True)
        await self._close_endpoints()
        await self.forks.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item.abort()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

def check_client_auth(settings: Settings, local: Local, secure_ok: bool) -> None:
    """security.clientAuth request/require needs something to verify clients with: a TLS
    listener (a Local certificate with its key) and the Local's `trusted` CAs or pinned
    client certificates. Without them every client with a certificate would be refused (or,
    under require, every client): an ArgumentError at listen(), not a silent lockout."""
    mode = settings.client_auth
    if mode == "none":
        return
    if not secure_ok:
        raise ArgumentError(f"security.clientAuth {mode} needs a TLS listener: give the Local "
                            "a certificate with its private key (Local(certificates=[...]))")
    if not local.trusted:
        raise ArgumentError(f"security.clientAuth {mode}: the Local trusts no CA and pins no "
                            "client certificate (Local(trusted=[...])), so no client "
                            "certificate could be verified")


async def listen(local: Local, *, policy: PolicyContext | None = None, framer: FramerSpec = None,
                 app_name: str | None = None, env: EnvSpec = None,
                 trace: TraceCallback | None = None, kind: str = "listen") -> Listener:
    """A Listener on `local`: every stack the policy allows for `listen`, one port number.

    A Local with a certificate and key serves TLS (and QUIC) instead of plain TCP (and UDP).
    `kind` is the request kind the policy sees (`respond` for a Responder).
    """
    ctx = policy_for(policy, app_name)
    decision, settings = listen_decision(local, ctx, kind, env)
    secure_ok = any(c.key_pem for c in local.certificates)
    check_client_auth(settings, local, secure_ok)
    chosen = listen_stacks(decision, secure_ok=secure_ok)
    if not chosen:
        raise PolicyError("the policy allows no stack this listener can serve", decision)
    interfaces = serving_interfaces(decision, local)
    listener = Listener(decision, settings, tracer_for(trace))
    await listener.bind(local, chosen, framer_factory(framer, settings.max_size), interfaces)
    return listener
