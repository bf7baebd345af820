"""The public asyncio API: initiate, listen, respond, new_source, new_sink.

Rule 1: `initiate()` runs the same `decide()` the explain tool runs, on the live Environment
plus the Association's history, then races the plan; a dry run and a real connection cannot
disagree about the choice.
Rule 2: every object here that starts tasks owns them (Listener, Responder) and cancels and
awaits them on close.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .. import stacks
from ..decision.decide import decide
from ..decision.decision import Candidate, Decision
from ..decision.envfile import load_environment
from ..decision.environment import Environment
from ..errors import ConnectionClosedError, EstablishmentError, PolicyError
from ..policy.context import PolicyContext
from ..policy.registry import STACKS
from ..stacks.base import AttemptSpec, Listening, ListenSpec
from ..system import live
from .association import Association, AssociationStore, default_store
from .carrier import Carrier
from .endpoints import Local, Remote
from .framing import Framer, LengthPrefixFramer
from .messages import InMessage, OutMessage
from .racing import race
from .settings import Settings
from .transient import DatagramTransient, Transient

__all__ = ["Listener", "Reply", "Responder", "Sink", "Source", "initiate", "listen",
           "new_sink", "new_source", "respond"]

FramerSpec = Framer | Callable[[], Framer] | None
EnvSpec = Environment | str | Mapping[str, Any] | None


def _framer_factory(framer: FramerSpec, max_size: int) -> Callable[[], Framer]:
    """Framers keep per-connection state, so each Transient gets a fresh one, and the
    decision's message.maxSize caps whatever the framer was configured with."""
    if framer is None:
        return lambda: LengthPrefixFramer(max_size)
    if isinstance(framer, Framer):
        template = framer

        def fresh() -> Framer:
            clone = template.fresh()
            clone.max_size = min(clone.max_size, max_size)
            return clone

        return fresh
    return framer


def _snapshot(env: EnvSpec) -> Environment | None:
    """The caller's environment snapshot as an Environment (None: the live machine)."""
    if env is None or isinstance(env, Environment):
        return env
    return load_environment(env)


def _environment(snapshot: Environment | None, remote: Remote,
                 association: Association) -> Environment:
    history = tuple(association.history)
    if snapshot is None:
        return live.live_environment(remote.host, remote.port, history,
                                     addresses=remote.addresses)
    base = snapshot
    from dataclasses import replace

    base = replace(base, cache=tuple(base.cache) + history)
    if remote.addresses is not None and remote.host not in base.dns:
        base = base.with_dns(remote.host, remote.addresses)
    return base


def _policy(policy: PolicyContext | None, app_name: str | None) -> PolicyContext:
    if policy is not None:
        return policy
    return PolicyContext(app_name=app_name)


async def initiate(
    target: str | Remote,
    *,
    local: Local | None = None,
    policy: PolicyContext | None = None,
    framer: FramerSpec = None,
    app_name: str | None = None,
    store: AssociationStore | None = None,
    env: EnvSpec = None,
    send: OutMessage | bytes | None = None,
) -> Carrier:
    """Decide, race and return the winning Carrier (losers closed, every task awaited).

    `send` is the first message (RFC 9622 InitiateWithSend): when it is idempotent it rides in
    the first flight where the stack can (TCP Fast Open); otherwise it is sent right after
    establishment. Either way it is sent exactly once on the winning carrier.
    """
    remote = target if isinstance(target, Remote) else Remote.parse(target)
    ctx = _policy(policy, app_name)
    association = (store or default_store).get(remote.hostport)
    first = OutMessage(send) if isinstance(send, (bytes, bytearray)) else send
    return await _establish(remote, local, ctx, framer, association, env, kind="initiate",
                            first=first)


async def _establish(remote: Remote, local: Local | None, ctx: PolicyContext,
                     framer: FramerSpec, association: Association, env: EnvSpec, *,
                     kind: str, first: OutMessage | None = None) -> Carrier:
    snapshot = _snapshot(env)
    if remote.addresses is None and snapshot is not None:
        # A snapshot that knows the name answers for it: a dry-run environment must not
        # depend on the machine's resolver.
        known = snapshot.dns.get(remote.host.lower())
        if known:
            from dataclasses import replace

            remote = replace(remote, addresses=tuple(known))
    resolved = remote if remote.is_resolved else await remote.resolve()
    plan = _plan(resolved, ctx, association, env, kind)
    if plan is None:
        request = resolved.request(app=ctx.app_name, kind=kind)
        decision = decide(request, ctx, _environment(snapshot, resolved, association))
        if decision.outcome != "ok":
            why = ("; ".join(c.reason for c in decision.conflicts) if decision.conflicts
                   else "every candidate was excluded")
            raise PolicyError(f"{decision.outcome} for {remote.target}: {why}", decision)
        settings = Settings.from_decision(decision)
        if env is None:
            _remember_plan(resolved, ctx, association, kind, decision, settings)
    else:
        decision, settings = plan
    association.session_cache = settings.session_cache
    factory = _framer_factory(framer, settings.max_size)
    candidates = _local_filter(decision.candidates, local)
    if not candidates:
        raise PolicyError(f"no candidate uses the requested local endpoint {local}", decision)

    async def attempt(c: Candidate) -> Transient:
        impl = stacks.get(c.stack)
        if impl is None:
            raise OSError(errno.EPROTONOSUPPORT, f"the {c.stack} stack is not available")
        return await impl.connect(AttemptSpec(
            candidate=c, host=resolved.host, settings=settings, association=association,
            framer=factory, pinned=tuple(resolved.certificates),
            identity=tuple(local.certificates) if local else (), early=first))

    def outcome(c: Candidate, t: Transient | None, elapsed_ms: float) -> None:
        if t is None:
            association.record(c.stack, "failure", interface=c.interface,
                               address=c.remote_address)
        else:
            association.record(c.stack, "success", interface=c.interface,
                               address=c.remote_address,
                               rtt_ms=t.rtt_ms if t.rtt_ms is not None else elapsed_ms)

    result = await race(candidates, attempt, attempt_delay=settings.attempt_delay,
                        timeout=settings.conn_timeout, on_outcome=outcome)
    if isinstance(result, tuple):
        live.invalidate()
        raise EstablishmentError(f"could not reach {remote.target}: every attempt failed",
                                 decision, result)

    async def reopen(parent: Carrier) -> Carrier:
        return await _establish(remote, local, ctx, framer, association, env, kind=kind)

    carrier = Carrier(result.transient, decision=decision, association=association,
                      candidate=result.candidate, remote=resolved, local=local, policy=ctx,
                      framer=factory, opener=reopen, attempts=result.attempts)
    if first is not None:
        if result.transient.early_sent:
            first.state = "sent"
        else:
            await carrier.send_msg(first)
    return carrier


_PLAN_LIMIT = 64


def _plan(resolved: Remote, ctx: PolicyContext, association: Association, env: EnvSpec,
          kind: str) -> tuple[Decision, Settings] | None:
    """The Decision decide() gave for exactly these inputs, if none changed since: the same
    context (its files are immutable), target and addresses, the same live interface
    snapshot (the very tuple object) and the same Association history entries."""
    if env is not None:
        return None
    hit = association.plans.get((ctx, kind, resolved.target, resolved.addresses))
    if hit is None:
        return None
    interfaces, history, decision, settings = hit
    if interfaces is not live.cached_interfaces() or history != tuple(association.history):
        return None
    return decision, settings


def _remember_plan(resolved: Remote, ctx: PolicyContext, association: Association, kind: str,
                   decision: Decision, settings: Settings) -> None:
    if len(association.plans) >= _PLAN_LIMIT:
        association.plans.clear()
    association.plans[(ctx, kind, resolved.target, resolved.addresses)] = (
        live.cached_interfaces(), tuple(association.history), decision, settings)


def _local_filter(candidates: tuple[Candidate, ...], local: Local | None) -> list[Candidate]:
    if local is None:
        return list(candidates)
    return [c for c in candidates
            if (local.interface is None or c.interface == local.interface)
            and (local.address is None or c.local_address == local.address)]


# ---- listening ----------------------------------------------------------------------------


def _listen_decision(local: Local, ctx: PolicyContext, kind: str,
                     env: EnvSpec) -> tuple[Decision, Settings]:
    host = local.address or "::"
    target = f"[{host}]:{local.port}" if ":" in host else f"{host}:{local.port}"
    from ..decision.request import parse_target

    request = parse_target(target, app=ctx.app_name, kind=kind)
    decision = decide(request, ctx, _snapshot(env) or live.live_environment())
    if decision.outcome == "policy_prohibited":
        raise PolicyError(f"policy_prohibited for {kind} on {target}", decision)
    return decision, Settings.from_decision(decision)


def _listen_stacks(decision: Decision, secure_ok: bool) -> list[str]:
    """Per IP protocol, the stack the listener serves (one TCP-family stack per port)."""
    excluded = {e.stack for e in decision.excluded if e.stack and not e.interface}
    allowed = [s for s in STACKS if s not in excluded and stacks.get(s) is not None]
    multipath = decision.value("multipath") != "disabled"
    order = (["tls-mptcp", "tls"] if secure_ok else []) + (
        ["mptcp", "tcp"] if not secure_ok or "tcp" in allowed or "mptcp" in allowed else [])
    if not multipath:
        order = [s for s in order if "mptcp" not in s]
    chosen = [s for s in order if s in allowed and (secure_ok or s not in ("tls", "tls-mptcp"))]
    out = chosen[:1]
    # UDP port: QUIC when we have a certificate for it, else plain UDP.
    if secure_ok and "quic" in allowed:
        out.append("quic")
    elif "udp" in allowed:
        out.append("udp")
    return out


class Listener:
    """Accepts carriers on every stack the policy allows, all on one port number."""

    def __init__(self, decision: Decision, settings: Settings) -> None:
        self.explanation = decision
        self.settings = settings
        self._endpoints: list[Listening] = []
        self._queue: asyncio.Queue[Carrier | None] = asyncio.Queue()
        self._callback: Callable[[Carrier], Any] | None = None
        self._closed = False

    @property
    def ports(self) -> dict[str, int]:
        """What is bound, by stack: {"tcp": 40123, "udp": 40123}. An MPTCP socket also
        accepts plain TCP clients, so it is listed under both names."""
        out: dict[str, int] = {}
        for e in self._endpoints:
            out[e.stack] = e.port
            fallback = {"mptcp": "tcp", "tls-mptcp": "tls"}.get(e.stack)
            if fallback is not None:
                out.setdefault(fallback, e.port)
        return out

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def _on_transient(self, transient: Transient) -> None:
        carrier = Carrier(transient, decision=self.explanation, association=None)
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

    async def close(self) -> None:
        """Stop accepting; carriers accepted but never taken are closed too."""
        if self._closed:
            return
        self._closed = True
        for endpoint in self._endpoints:
            await endpoint.aclose()
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
                 _kind: str = "listen") -> Listener:
    ctx = _policy(policy, app_name)
    decision, settings = _listen_decision(local, ctx, _kind, env)
    chosen = _listen_stacks(decision, secure_ok=any(c.key_pem for c in local.certificates))
    if not chosen:
        raise PolicyError("the policy allows no stack this listener can serve", decision)
    listener = Listener(decision, settings)
    factory = _framer_factory(framer, settings.max_size)
    address = local.address or "::"
    for tries in range(8):
        port = local.port
        try:
            for name in chosen:
                impl = stacks.get(name)
                assert impl is not None
                endpoint = await impl.listen(ListenSpec(
                    address, port, local.interface, settings, factory,
                    tuple(local.certificates), listener._on_transient))
                listener._endpoints.append(endpoint)
                port = endpoint.port
            return listener
        except OSError as exc:
            for endpoint in listener._endpoints:
                await endpoint.aclose()
            listener._endpoints.clear()
            if exc.errno != errno.EADDRINUSE or local.port != 0 or tries == 7:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# ---- responder, source, sink --------------------------------------------------------------


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
            if carrier.stack != "udp":
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
                  env: EnvSpec = None) -> Responder:
    listener = await listen(local, policy=policy, framer=framer, app_name=app_name, env=env,
                            _kind="respond")
    return Responder(listener, handler)


_DATAGRAM = {"version": 1, "layer": "carrier", "name": "source-sink",
             "rules": [{"id": "datagram", "use": ["unreliable-datagram"]}]}


class Source(Carrier):
    """A send-only carrier (UDP): `receive()` is refused."""

    async def receive(self) -> InMessage:
        raise RuntimeError("a Source only sends")


async def new_source(local: Local | None, remote: Remote | str, *,
                     policy: PolicyContext | None = None, app_name: str | None = None,
                     env: EnvSpec = None) -> Source:
    """A UDP Source: the carrier layer adds the unreliable-datagram profile."""
    if isinstance(remote, str):
        remote = Remote.parse(remote if "://" in remote else f"udp://{remote}")
    elif remote.scheme != "udp":
        from dataclasses import replace

        remote = replace(remote, scheme="udp")
    ctx = _policy(policy, app_name).with_carrier(_DATAGRAM)
    carrier = await _establish(remote, local, ctx, None, default_store.get(remote.hostport),
                               env, kind="source")
    carrier.__class__ = Source
    return carrier  # type: ignore[return-value]


class Sink:
    """Receives datagrams from anyone on a local port (or a multicast group)."""

    def __init__(self, transient: DatagramTransient, decision: Decision) -> None:
        self._transient = transient
        self.explanation = decision
        transient.carrier = self

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
    ctx = _policy(policy, app_name).with_carrier(_DATAGRAM)
    decision, settings = _listen_decision(local, ctx, "sink", env)
    if any(e.stack == "udp" and not e.interface for e in decision.excluded):
        raise PolicyError("the policy does not allow udp for this sink", decision)
    from ..stacks.udp import bind_sink

    transient = await bind_sink(local, settings)
    return Sink(transient, decision)
