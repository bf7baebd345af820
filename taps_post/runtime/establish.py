"""Establishment: from a Remote to a Carrier, and how that Carrier gets its Transients.

Rule 1: activating an initiated carrier resolves the name in passes (runtime/resolution.py,
HEv3), and at pass 1 runs the same `decide()` the explain tool runs, on the live Environment
(with the snapshot's addresses, SVCB/HTTPS and TLSA records and arrival times, `now` the wall
clock) plus the Association's history, then races the plan. Each later pass decides again on
everything known by then and replaces the race's pending plan with its candidates not
started yet (by interface, stack, address and port; racing Rule 7, `Replan`): new ones join,
and pending ones it no longer has (QUIC planned on :443 before an HTTPS record saying h2
only, a set `security.dane: require` now refuses) are withdrawn, never started. The
carrier's explanation is the last decision, with every pass: a dry run and a real connection
cannot disagree about the choice.
Rule 2: a plan is reused only for exactly the same inputs: equal policy (by the context's
fingerprint, so a fresh `PolicyContext` built from the same files hits too), the same stack
catalogue (a registered stack changes every plan), kind, target and the resolution
snapshot's contents (addresses, SVCB/HTTPS, TLSA), the very same live interface snapshot and
the same Association history; and only when the snapshot was known at once, in one pass,
without the network (hosts file, DNS cache, given addresses: resolution Rule 7).
Rule 3: every attempt's outcome is written to the Association's history, under its stack,
interface, address and remote port (an SVCB port that fails says nothing of another port),
so the next decision ranks by what the network taught us; an attempt outrun by a later one
(racing Rule 4: pending attemptDelay or more when one the delay timer started after it won)
is written as a failure; a failed race drops the interface cache and the DNS cache's
answers for the names it raced to. A plan that demoted a candidate for a recent failure is
reused only until that failure's memory ends.
Rule 4: no downgrade (RFC 9623 section 12). A pinned certificate on the Remote, or a client
identity (a certificate with its key) on the Local, can only be honoured by a secure stack, so
it adds an enforced carrier-layer rule `secure: require` (the explanation names it as the
reason insecure stacks were excluded, and the plan cache keys on it through the context's
fingerprint). Whatever the other layers say, no insecure candidate is then raced: one that a
higher layer let through is excluded from the Decision by the same rule, and a policy that
leaves only insecure stacks is a PolicyError, never a plaintext connection.
Rule 5: messages name endpoints by target and Local.describe(), never by a repr holding
certificates.
Rule 6: `initiate()` does no I/O: it checks what can be checked without any (the target's
syntax, the system policy) and returns a dormant Carrier whose `opener` (`opener_for()`)
resolves, decides and races each time the carrier activates, so a re-activation after a loss
ranks with everything the Association learnt since. Each racing attempt gets its own
`EarlyAttempt` (AttemptSpec.early) and the Local's port (AttemptSpec.local_port).
Rule 7: each attempt gets the TLSA set of its endpoint (`tlsa_name(host, port, the stack's
IP protocol)`) as the latest snapshot knows it (AttemptSpec.tlsa); under `security.dane:
require` a secure attempt whose TLSA answer is still outstanding waits for it (or for the
resolution to end) before connecting, since the stack would refuse a peer it cannot check.
TLSA sets from an `env=` snapshot reach a real attempt as not validated, whatever the file
says: a snapshot is text the caller loaded (a fixture, another machine's capture), not a
DNSSEC validation, so it never turns PKIX off; explain still shows the snapshot as written.
Rule 8: a rendezvous Remote (draft 3.1.3) has no name to resolve and nothing to race: its
opener is `rendezvous.rendezvous_opener()` (ICE, then QUIC between the peers), checked at
`initiate()` like any other (a Local without an identity or a key is an ArgumentError
there), and decided with the same context and carrier layers as any initiate.
Rule 9: `open_socket` (runtime/opensocket.py) resolves, decides and races like `initiate`
(`dialler()`, with the stack's bare `connect_socket` instead of its Transient), under one
more enforced carrier rule, `open-socket` (`secure: prohibit`, `preserveMsgBoundaries:
prohibit`): only TCP and MPTCP are candidates, and a stack a higher layer let through is
excluded from the Decision by that rule, as Rule 4 does. No early data rides (nothing is
held), and the winner's outcome is history like any other attempt's.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from logging import DEBUG
from typing import Any

from .. import stacks
from ..core.early import EarlyAttempt
from ..core.framing import Framer, LengthPrefixFramer
from ..core.messages import OutMessage
from ..core.settings import Settings
from ..decision.decide import decide
from ..decision.decision import Candidate, Decision, Exclusion
from ..decision.environment import Environment
from ..decision.names import TlsaSet, tlsa_name
from ..decision.request import Request
from ..diagnostics import SystemPolicyError
from ..errors import EstablishmentError, PolicyError
from ..policy import catalog
from ..policy.context import PolicyContext
from ..stacks.base import AttemptSpec
from ..stacks.transient import Transient
from ..system import live
from .association import Association, AssociationStore, default_store
from .carrier import Carrier, D, Established, Opener
from .endpoints import Local, Remote, has_identity
from .fork import fork_stream, speaks_fork
from .racing import Replan, race
from .rendezvous import rendezvous_opener
from .resolution import Snapshot, forget, resolve_passes, wanted_for
from .trace import LOGGERS, TraceCallback, Tracer, decision_complete

__all__ = ["RESTRICTIONS", "Dial", "EnvSpec", "FramerSpec", "Restriction", "dialler",
           "fork_carrier", "framer_factory", "initiate", "opener_for", "parallel_fork",
           "policy_for", "prepare", "restricted", "secured", "snapshot", "tracer_for"]

FramerSpec = Framer | Callable[[], Framer] | None
EnvSpec = Environment | str | Mapping[str, Any] | None


def framer_factory(framer: FramerSpec, max_size: int) -> Callable[[], Framer]:
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


def snapshot(env: EnvSpec) -> Environment | None:
    """The caller's environment snapshot as an Environment (None: the live machine)."""
    if env is None or isinstance(env, Environment):
        return env
    from ..decision.envfile import load_environment  # the snapshot format, only when given

    return load_environment(env)


def policy_for(policy: PolicyContext | None, app_name: str | None) -> PolicyContext:
    """The caller's context, or the discovered system layer for `app_name`. A system layer
    that cannot be loaded stops everything (fail closed): PolicyError, nothing decided."""
    if policy is not None:
        return policy
    try:
        return PolicyContext(app_name=app_name)
    except SystemPolicyError as exc:
        raise PolicyError(f"the system policy cannot be loaded; nothing is decided:\n{exc}",
                          None) from exc


def _carrier_rule(name: str, rule: str, values: Mapping[str, str]) -> dict[str, Any]:
    return {"version": 1, "layer": "carrier", "name": name,
            "rules": [{"id": rule, "enforce": True, "set": dict(values)}]}


def _is_secure(stack: str) -> bool:
    try:
        return catalog.info(stack).secure
    except KeyError:  # unregistered since the decision: not known to be secure
        return False


def _is_bare(stack: str) -> bool:
    """A stack whose connection is a plain TCP or MPTCP socket (no TLS, no datagrams)."""
    try:
        info = catalog.info(stack)
    except KeyError:
        return False
    return (info.ip_protocol == "tcp" and not info.secure
            and "preserveMsgBoundaries" not in info.features)


@dataclass(frozen=True)
class Restriction:
    """An enforced carrier-layer rule the runtime adds (Rules 4 and 9), and the filter that
    keeps it even where a layer above the carrier let another stack through."""

    rule: str
    document: Mapping[str, Any]
    admits: Callable[[str], bool]
    outcome: str
    """The Exclusion outcome of a stack it drops (decision.Exclusion)."""
    property: Callable[[str], str]
    """The property a dropped stack is excluded by."""
    why: str
    """Why a dropped stack is excluded, with `{stack}` for its name."""


def _secure_key(stack: str) -> str:
    return "secure"


def _bare_key(stack: str) -> str:
    return "secure" if _is_secure(stack) else "preserveMsgBoundaries"


_SECURE = {"secure": "require"}
RESTRICTIONS: Mapping[str, Restriction] = {
    "pinned-certificate": Restriction(
        "pinned-certificate", _carrier_rule("no-downgrade", "pinned-certificate", _SECURE),
        _is_secure, "required_missing", _secure_key,
        "{stack} lacks secure; a pinned certificate can only be honoured by a secure stack"),
    "client-certificate": Restriction(
        "client-certificate", _carrier_rule("no-downgrade", "client-certificate", _SECURE),
        _is_secure, "required_missing", _secure_key,
        "{stack} lacks secure; a client certificate can only be honoured by a secure stack"),
    "open-socket": Restriction(
        "open-socket", _carrier_rule("open-socket", "open-socket",
                                     {"secure": "prohibit", "preserveMsgBoundaries": "prohibit"}),
        _is_bare, "prohibited", _bare_key,
        "{stack} is not a bare TCP or MPTCP socket; open_socket leaves TLS to the caller"),
}
"""The carrier layers the runtime adds, by rule id: Rule 4's no-downgrade for a Remote with
pinned certificates or a Local with a client identity (the pin wins when both are present),
and Rule 9's bare-socket rule of `open_socket`. Read-only: nobody may edit the documents
`restricted()` loads."""

_RESTRICTED: dict[tuple[Any, ...], PolicyContext] = {}
_RESTRICTED_LIMIT = 64


def restricted(ctx: PolicyContext, rule: str) -> PolicyContext:
    """`ctx` with the carrier layer of RESTRICTIONS[rule]. The copy is kept by the context's
    fingerprint, so a connect with a pin costs a dict lookup, not a layer load (equal
    fingerprints are equal inputs: the copy is the same)."""
    key = (ctx.fingerprint, rule)
    found = _RESTRICTED.get(key)
    if found is None:
        found = ctx.with_carrier(RESTRICTIONS[rule].document)
        if len(_RESTRICTED) >= _RESTRICTED_LIMIT:
            _RESTRICTED.clear()
        _RESTRICTED[key] = found
    return found


def secured(ctx: PolicyContext, remote: Remote,
            local: Local | None) -> tuple[PolicyContext, str | None]:
    """The context to decide with, and the no-downgrade rule it added (None: none needed)."""
    if remote.certificates:
        rule = "pinned-certificate"
    elif has_identity(local):
        rule = "client-certificate"
    else:
        return ctx, None
    return restricted(ctx, rule), rule


def _restrict(decision: Decision, r: Restriction, source: str) -> Decision:
    """The Decision without the candidates `r` does not admit: each stack a layer above the
    carrier let through is reported as excluded by `r.rule`, and the survivors are ranked
    and scheduled again as decide() would have."""
    keep = [c for c in decision.candidates if r.admits(c.stack)]
    if len(keep) == len(decision.candidates):
        return decision
    delay = int(decision.value("racing.attemptDelay"))
    dropped = dict.fromkeys(c.stack for c in decision.candidates if not r.admits(c.stack))
    return replace(
        decision,
        candidates=tuple(c._replace(rank=i + 1, start_ms=i * delay) for i, c in enumerate(keep)),
        excluded=decision.excluded + tuple(
            Exclusion(None, s, None, None, r.outcome, r.property(s), r.rule, source, "carrier",
                      r.why.format(stack=s)) for s in dropped),
        outcome="ok" if keep else "no_candidates")


def tracer_for(trace: TraceCallback | None) -> Tracer | None:
    """A Tracer when anyone listens (a callback, or a `taps_post` logger at DEBUG), else
    None: the silent common case costs four cached level checks per establishment."""
    if trace is None and not (_DECISION(DEBUG) or _RACE(DEBUG) or _CARRIER(DEBUG)
                              or _LISTENER(DEBUG) or _RESOLUTION(DEBUG)
                              or _RENDEZVOUS(DEBUG)):
        return None
    return Tracer(trace)


_DECISION, _RACE, _CARRIER, _LISTENER, _RESOLUTION, _RENDEZVOUS = (
    LOGGERS[a].isEnabledFor for a in ("decision", "race", "carrier", "listener", "resolution",
                                      "rendezvous"))


def _environment(base: Environment | None, remote: Remote, association: Association,
                 snap: Snapshot | None = None) -> Environment:
    history = tuple(association.history)
    if base is None:
        if snap is None:
            return live.live_environment(remote.host, remote.port, history,
                                         addresses=remote.addresses)
        return replace(snap.environment(live.live_environment(None, 0, history)),
                       now=time.time())
    env = replace(base, cache=tuple(base.cache) + history)
    if remote.addresses is not None and remote.host not in env.dns:
        env = env.with_dns(remote.host, remote.addresses)
    return env


def initiate(
    target: str | Remote,
    *,
    local: Local | None = None,
    policy: PolicyContext | None = None,
    framer: FramerSpec = None,
    app_name: str | None = None,
    store: AssociationStore | None = None,
    env: EnvSpec = None,
    send: OutMessage | bytes | None = None,
    trace: TraceCallback | None = None,
) -> Carrier:
    """A Carrier to `target`, dormant (draft Initiate(): "the initiated Carrier is not yet
    active"): nothing is resolved, decided or opened until it is activated by `send`,
    `send_msg`, `receive`, `activate()`, `await carrier` or `async with` (Rule 6).

    What needs no I/O is checked here and raises at once: the target's syntax, a system
    policy that cannot be loaded. PolicyError and EstablishmentError come from the
    activation. `send` is the first message (RFC 9622 InitiateWithSend): it is held in the
    carrier's early flight, so when it is idempotent it rides in the first flight where the
    stack can (TCP Fast Open, QUIC 0-RTT); either way it is sent exactly once on the winning
    Transient. `trace(name, info)` receives the establishment's events (docs/architecture.md,
    "Observability"); the `taps_post` loggers receive them too.
    """
    remote = target if isinstance(target, Remote) else Remote.parse(target)
    ctx = policy_for(policy, app_name)
    association = (store or default_store).get(remote.hostport, remote=remote, local=local)
    carrier = prepare(remote, local, ctx, framer, association, env, kind="initiate",
                      tracer=tracer_for(trace))
    if send is not None:
        carrier.hold(OutMessage(send) if isinstance(send, (bytes, bytearray, memoryview))
                     else send)
    return carrier


def prepare(remote: Remote, local: Local | None, ctx: PolicyContext, framer: FramerSpec,
            association: Association, env: EnvSpec, *, kind: str, tracer: Tracer | None,
            carrier_class: type[Carrier] = Carrier) -> Carrier:
    """A dormant `carrier_class` (Carrier or Source) whose activations run `opener_for()`
    with these inputs: the shared path of initiate() and new_source()."""
    carrier = carrier_class(None, decision=None, association=association, remote=remote,
                            local=local, policy=ctx,
                            opener=opener_for(remote, local, ctx, framer, association, env,
                                              kind=kind, tracer=tracer),
                            forker=fork_carrier, tracer=tracer)
    return carrier


async def parallel_fork(parent: Carrier) -> Carrier:
    """A plain parallel connection on the same Association (the peer's Listener receives
    it as a new carrier): a dormant sibling, activated with the parent's opener."""
    child = parent.sibling()
    await child.activate()
    return child


async def fork_carrier(parent: Carrier) -> Carrier:
    """The forker of initiated carriers whose stack has no siblings (QUIC forks are streams,
    fork() asks the Transient first): on TCP and TLS with the length-prefix framer, a fork
    request the peer's parent carrier accepts (runtime/fork.py); on UDP, which has no
    control frames, or with policy carrier.forkParallel on another framer, a plain parallel
    connection; otherwise fork_stream's UsageError says why it cannot."""
    t = parent.transient
    if not speaks_fork(t):
        settings = parent.settings
        udp = t is not None and _ip_protocol(t.stack) == "udp"
        if udp or (settings is not None and settings.fork_parallel):
            return await parallel_fork(parent)
    return await fork_stream(parent)


def _ip_protocol(stack: str) -> str | None:
    try:
        return stacks.info(stack).ip_protocol
    except KeyError:
        return None


Dial = Callable[[Any, AttemptSpec], Awaitable[D]]
"""How one racing attempt connects, given its stack's implementation and its spec."""


async def _transient(impl: Any, spec: AttemptSpec) -> Transient:
    result: Transient = await impl.connect(spec)
    return result


def opener_for(remote: Remote, local: Local | None, ctx: PolicyContext, framer: FramerSpec,
               association: Association, env: EnvSpec, *, kind: str,
               tracer: Tracer | None) -> Opener:
    """How a carrier with these inputs gets a Transient: decide (plan cache, Rule 2), then
    race, each attempt offered its view of the carrier's early flight (AttemptSpec.early)
    and the Local's port; every outcome goes into the Association's history (Rule 3).
    A rendezvous Remote is met instead (Rule 8, runtime/rendezvous.py)."""
    if remote.is_rendezvous:
        return rendezvous_opener(
            remote, local, ctx, association, kind=kind, tracer=tracer,
            deciding=lambda: secured(ctx.current(), remote, local)[0],
            framers=functools.partial(framer_factory, framer),
            environment=functools.partial(snapshot, env), initiate=initiate)
    return dialler(remote, local, ctx, framer, association, env, kind=kind, tracer=tracer,
                   dial=_transient)


def dialler(remote: Remote, local: Local | None, ctx: PolicyContext, framer: FramerSpec,
            association: Association, env: EnvSpec, *, kind: str, tracer: Tracer | None,
            dial: Dial[D], restriction: str | None = None,
            ) -> Callable[[Callable[[], EarlyAttempt | None]], Awaitable[Established[D]]]:
    """opener_for()'s resolve, decide and race, each attempt connected by `dial` (a stack's
    Transient, or open_socket's bare socket: Rule 9), under the enforced carrier rule
    `restriction` (RESTRICTIONS) when one is named."""

    async def open_transient(early: Callable[[], EarlyAttempt | None]) -> Established[D]:
        base = snapshot(env)
        target = remote
        if target.addresses is None and base is not None:
            # A snapshot that knows the name answers for it: a dry-run environment must not
            # depend on the machine's resolver.
            known = base.dns.get(target.host.lower())
            if known:
                target = replace(target, addresses=tuple(known))
        passes: AsyncGenerator[Snapshot, None] | None = None
        snap: Snapshot | None = None
        if target.is_resolved or base is not None:
            resolved = target if target.is_resolved else await target.lookup()
        else:
            request = target.request(app=ctx.app_name, kind=kind)
            passes = resolve_passes(wanted_for(request, ctx.current()), tracer=tracer)
            try:
                snap = await anext(passes)
            except BaseException:
                await passes.aclose()
                raise
            resolved = replace(target, addresses=snap.addresses())
            if snap.complete:
                await passes.aclose()
                passes = None
        try:
            return await opened(early, base, resolved, snap, passes)
        finally:
            if passes is not None:
                await passes.aclose()

    async def opened(early: Callable[[], EarlyAttempt | None], base: Environment | None,
                     resolved: Remote, snap: Snapshot | None,
                     passes: AsyncIterator[Snapshot] | None) -> Established[D]:
        # One snapshot of a live system layer for the whole decision: the plan cache key,
        # the decision and the plan stored under it all agree on one policy.
        current = ctx.current()
        if restriction is not None:
            current = restricted(current, restriction)
        deciding, secure_rule = secured(current, resolved, local)
        rules = [RESTRICTIONS[r] for r in (restriction, secure_rule) if r is not None]
        reuse = env is None and (snap is None or snap.reusable)
        plan = _plan(resolved, deciding, association, kind, snap) if reuse else None
        requests: list[Request] = []  # parsed once, and only when a decision is made

        def decided(now: Snapshot | None) -> Decision:
            if not requests:
                requests.append(resolved.request(app=ctx.app_name, kind=kind))
            decision = decide(requests[0], deciding,
                              _environment(base, resolved, association, now))
            for r in rules:
                if decision.outcome == "ok":
                    decision = _restrict(decision, r, deciding.files[-1].source)
            return decision

        if plan is None:
            decision = decided(snap)
            if decision.outcome != "ok":
                decision_complete(tracer, decision, from_cache=False)
                why = ("; ".join(c.reason for c in decision.conflicts) if decision.conflicts
                       else "every candidate was excluded")
                raise PolicyError(f"{decision.outcome} for {remote.target}: {why}", decision)
            settings = Settings.from_decision(decision)
            if reuse:
                _remember_plan(resolved, deciding, association, kind, decision, settings, snap)
        else:
            decision, settings = plan
        decision_complete(tracer, decision, from_cache=plan is not None)
        association.session_cache = settings.session_cache
        factory = framer_factory(framer, settings.max_size)
        candidates = _local_filter(decision.candidates, local)
        if not candidates:
            raise PolicyError("no candidate uses the requested local endpoint "
                              f"({local.describe() if local else 'any'})", decision)
        if snap is not None and tracer is not None:
            _emit_pass(tracer, decision, snap, len(candidates))
        pinned = tuple(resolved.certificates)
        identity = tuple(local.certificates) if local else ()
        port = local.port if local else 0
        raced = {_raced_key(c): c.rank for c in candidates}  # every candidate given the race
        last = [decision, snap]  # the latest decision and snapshot (later passes update them)
        resolving = [passes is not None]  # later snapshots may still come
        waiting: list[asyncio.Future[None]] = []  # attempts waiting for a TLSA answer

        def wake() -> None:
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
            waiting.clear()

        async def later(source: AsyncIterator[Snapshot]) -> AsyncIterator[Replan]:
            """Each later pass: decide again; its candidates not started yet are the race's
            new pending plan (Rule 1). A candidate keeps its rank from pass to pass."""
            rank = max(c.rank for c in candidates)
            shown = [1]  # the last pass number a resolution.pass event named
            try:
                async for now in source:
                    again = decided(now)
                    last[1] = now
                    wake()
                    number = again.passes[-1].number if again.passes else 1
                    why = f"withdrawn: resolution pass {number}'s decision no longer has it"
                    if again.outcome == "no_candidates":  # a later answer excludes them all
                        yield Replan((), why)
                        continue
                    if again.outcome != "ok":
                        continue
                    last[0] = again
                    plan, fresh = [], 0
                    for c in _local_filter(again.candidates, local):
                        if (old := raced.get(k := _raced_key(c))) is None:
                            rank += 1
                            old = raced[k] = rank
                            fresh += 1
                        plan.append(c._replace(rank=old))
                    if tracer is not None and (fresh or number > shown[0]):
                        shown[0] = number  # a TLSA or negative answer starts no pass
                        _emit_pass(tracer, again, now, fresh)
                    yield Replan(tuple(plan), why)
            finally:
                resolving[0] = False
                wake()

        # TLSA of an env= snapshot: not validated on a real connection (Rule 7).
        given = {name: replace(t, validated=False) for name, t in base.tlsa.items()} \
            if base is not None and base.tlsa else {}

        def tlsa_of(c: Candidate) -> TlsaSet | None:
            """The one TLSA lookup: the candidate's set as the latest snapshot knows it."""
            known = last[1]
            sets = known.tlsa if isinstance(known, Snapshot) else given
            if not sets or (protocol := _ip_protocol(c.stack)) is None:
                return None
            return sets.get(tlsa_name(resolved.host, c.remote_port, protocol))

        async def tlsa_awaited(c: Candidate) -> TlsaSet | None:
            """While the resolution runs: under security.dane require, a secure candidate
            whose TLSA answer is outstanding waits for it (Rule 7)."""
            while (found := tlsa_of(c)) is None and resolving[0] \
                    and settings.dane == "require" and _is_secure(c.stack):
                fut = asyncio.get_running_loop().create_future()
                waiting.append(fut)
                await fut
            return found

        async def attempt(c: Candidate) -> D:
            impl = stacks.get(c.stack)
            if impl is None:
                raise OSError(errno.EPROTONOSUPPORT, f"the {c.stack} stack is not available")
            if resolving[0]:  # a coroutine only while the resolution runs (fast IP literal)
                tlsa = await tlsa_awaited(c)
            else:
                tlsa = tlsa_of(c)
            return await dial(impl, AttemptSpec(
                candidate=c, host=resolved.host, settings=settings, association=association,
                framer=factory, pinned=pinned, identity=identity, early=early(),
                local_port=port, tlsa=tlsa))

        def outcome(c: Candidate, t: D | None, elapsed_ms: float) -> None:
            if t is None:
                association.record(c.stack, "failure", interface=c.interface,
                                   address=c.remote_address, port=c.remote_port)
            else:
                # A connection reporting another stack than the one asked for fell back (MPTCP
                # to plain TCP, stacks/tcp.py Rule 7): history says so (association Rule 8).
                fell_back = t.stack != c.stack
                association.record(c.stack, "fallback" if fell_back else "success",
                                   interface=c.interface, address=c.remote_address,
                                   port=c.remote_port,
                                   rtt_ms=t.rtt_ms if t.rtt_ms is not None else elapsed_ms)
                if fell_back and tracer is not None:
                    tracer.emit("attempt.fallback", rank=c.rank, interface=c.interface,
                                stack=c.stack, now=t.stack, remote=c.remote_address)

        def outrun(c: Candidate, _elapsed_ms: float) -> None:
            # Pending when a later candidate won, after attemptDelay: a black hole never
            # fails by itself, so it is remembered as the failure it is (racing Rule 4).
            association.record(c.stack, "failure", interface=c.interface,
                               address=c.remote_address, port=c.remote_port)

        result = await race(candidates, attempt, attempt_delay=settings.attempt_delay,
                            timeout=settings.conn_timeout, on_outcome=outcome, tracer=tracer,
                            more=None if passes is None else later(passes),
                            on_outrun=outrun)
        decision = last[0] if isinstance(last[0], Decision) else decision
        if isinstance(result, tuple):
            live.invalidate()
            known = last[1]
            if isinstance(known, Snapshot) and known.source == "dns":
                forget((resolved.host, *known.dns))
            raise EstablishmentError(f"could not reach {remote.target}: every attempt failed",
                                     decision, result)
        attempts = result.attempts
        if result.transient.stack != result.candidate.stack:  # fell back: the attempt says so
            attempts = tuple(replace(a, error=f"won as {result.transient.stack}: the peer "
                                     "fell back to plain TCP") if a.outcome == "won" else a
                             for a in attempts)
        return Established(result.transient, decision, result.candidate, attempts,
                           settings, resolved, deciding, factory)

    return open_transient


def _emit_pass(tracer: Tracer, decision: Decision, snap: Snapshot, count: int) -> None:
    latest = decision.passes[-1] if decision.passes else None
    tracer.emit("resolution.pass", number=latest.number if latest else 1,
                at_ms=snap.at_ms, trigger=snap.trigger, candidates=count)


def _raced_key(c: Candidate) -> tuple[str, str, str, int]:
    return c.interface, c.stack, c.remote_address, c.remote_port


_PLAN_LIMIT = 64


def _plan_key(resolved: Remote, ctx: PolicyContext, kind: str,
              snap: Snapshot | None) -> tuple[Any, ...]:
    return (ctx.fingerprint, catalog.version(), kind, resolved.target, resolved.addresses,
            None if snap is None else snap.key())


def _plan(resolved: Remote, ctx: PolicyContext, association: Association,
          kind: str, snap: Snapshot | None) -> tuple[Decision, Settings] | None:
    """The Decision decide() gave for exactly these inputs, if none changed since (Rule 2)."""
    hit = association.plans.get(_plan_key(resolved, ctx, kind, snap))
    if hit is None:
        return None
    interfaces, history, decision, settings, until = hit
    if interfaces is not live.cached_interfaces() or history != tuple(association.history):
        return None
    if until is not None and time.time() >= until:
        return None  # a failure it counted as recent has been forgotten since
    return decision, settings


def _remember_plan(resolved: Remote, ctx: PolicyContext, association: Association, kind: str,
                   decision: Decision, settings: Settings, snap: Snapshot | None) -> None:
    if len(association.plans) >= _PLAN_LIMIT:
        association.plans.clear()
    association.plans[_plan_key(resolved, ctx, kind, snap)] = (
        live.cached_interfaces(), tuple(association.history), decision, settings,
        _valid_until(decision, association))


def _valid_until(decision: Decision, association: Association) -> float | None:
    """When a plan stops being right although nothing else changed (Rule 2): the earliest
    moment a failure it demoted a candidate for leaves racing.failureMemory (None: never)."""
    if not any(c.key.recent_failure for c in decision.candidates):
        return None
    memory = int(decision.value("racing.failureMemory")) / 1000.0
    ats = [e.at for e in association.history if e.outcome == "failure" and e.at is not None]
    return min(ats) + memory if ats else None


def _local_filter(candidates: tuple[Candidate, ...], local: Local | None) -> list[Candidate]:
    if local is None:
        return list(candidates)
    return [c for c in candidates
            if (local.interface is None or c.interface == local.interface)
            and (local.address is None or c.local_address == local.address)]
