"""Rendezvous: the opener of a rendezvous Remote (draft 3.1.3; docs/rendezvous.md).

Both peers call `initiate(Remote.rendezvous(PEER, via=...), local=Local(identity=ME,
certificates=[cert]))` at about the same time; each gets a dormant Carrier like any other,
and its activation runs `rendezvous_opener()`: decide, gather, exchange offers, find an ICE
pair, then QUIC (`quic-ice`) over it.

Rule 1: what needs no I/O is checked at `initiate()` (`check_rendezvous`): the Local names an
identity (not the peer's) and its first certificate carries its private key, since the
peer authenticates us by that certificate's fingerprint and the rendezvous point by the
certificate itself. Everything else happens at activation, like any opener.
Rule 2: the same `decide()` a dry run makes for `rendezvous://PEER` chooses where ICE may
gather: its candidates' distinct (interface, local address), in candidate order, are the
only host candidates the agent opens sockets on, so an interface or a family the policy
prohibits contributes nothing. STUN, TURN, the relay preference and how long to wait for
the peer come from the same Decision (`rendezvous.stun`, `.turn`, `.relay`, `.peerWait`).
Rule 3: roles need no negotiation: the peer whose identity sorts first is ICE-controlling
(it nominates the pair) and the QUIC client; the other listens over the nominated path for
the one connection, whose first stream is the carrier's. Either side's later streams (the
peer's forks) go to that carrier's accept() (`Carrier.deliver_fork`), held until it is
called, on both sides alike.
Rule 4: the peer is who its offer's certificate fingerprint says, and QUIC refuses any
other certificate (AttemptSpec/ListenSpec.peer_fingerprints). With pinned certificates on
the Remote (learned out of band) the offer's fingerprint must be one of them, or nothing is
even tried: the signalling path offered another peer. Neither the rendezvous point nor a
TURN relay can then read or forge a message.
Rule 5: offers: ours is sent first, then the peer's is awaited for `rendezvous.peerWait`.
An offer that does not parse, names another identity, or was made longer ago than
peerWait (a crashed session's leftover) is skipped, and the wait goes on until the deadline.
Rule 6: ownership. Everything an activation starts is closed if it fails or is cancelled:
the agent with its sockets and relay allocations, a RendezvousClient made for it (always
closed once the offers are exchanged: the point has no part in the connection after that),
the path, the stack's listening end. Once QUIC runs, the stack owns the path (stacks Rule 5)
and the path owns the agent's connection: closing the carrier's connection releases them.
An application's own `Signalling` object is never closed here: it is the application's.
Rule 7: failures are typed as for any carrier. ICE finding no pair while `rendezvous.relay`
is `prohibit` is a PolicyError naming that statement (file:line): the policy ruled out the
only path left. Otherwise no pair, no offer in time, a peer refused, a failed handshake is
an EstablishmentError with one Attempt saying what was tried.
Rule 8: no credential leaves: trace events and the explanation carry counts, kinds,
addresses and fingerprints, never an ICE ufrag/pwd nor a TURN password (servers are shown as
host:port).
Rule 9: aioice and aioquic load on the first activation of a rendezvous carrier, not with
this module: establish imports it, and an application that never meets a peer must not pay
for them at `initiate()` (the offer, being pure data, is imported at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import stacks
from ..certs import Certificate
from ..core.early import EarlyAttempt
from ..core.framing import Framer
from ..core.settings import Settings
from ..decision.decide import decide
from ..decision.decision import Candidate, Decision, RendezvousReport
from ..decision.environment import Environment
from ..errors import (
    ArgumentError,
    Attempt,
    EstablishmentError,
    FailureKind,
    PolicyError,
    UsageError,
)
from ..ice.offer import Offer, OfferError
from ..policy.context import PolicyContext
from ..policy.registry import revealed
from ..stacks.base import AttemptSpec, Listening, ListenSpec, PathListening, Stack
from ..stacks.transient import Transient
from ..system import live
from .association import Association
from .carrier import Carrier, Established, Opener
from .endpoints import Local, Remote, hostport
from .racing import classify
from .rendezvous_client import Initiate, RendezvousClient
from .signalling import Signalling
from .trace import Tracer, decision_complete

if TYPE_CHECKING:
    from ..ice.agent import IceAgent, IcePath, TurnServer

__all__ = ["check_rendezvous", "rendezvous_opener"]



def check_rendezvous(remote: Remote, local: Local | None) -> tuple[str, Certificate]:
    """Our identity and the certificate we present, or an ArgumentError saying what the
    Local lacks (Rule 1): raised by `initiate()` before anything is opened."""
    target = remote.target
    if local is None or local.identity is None:
        raise _missing(target, "an identity")
    if not local.certificates:
        raise _missing(target, "a certificate with its private key")
    cert = local.certificates[0]
    if cert.key_pem is None:
        raise _missing(target, "a certificate with its private key (its first certificate "
                               "has none: it can only be pinned)")
    if local.identity == remote.host:
        raise ArgumentError(f"{target}: the Local's identity is the peer's own "
                             f"({local.identity}); a peer cannot meet itself")
    via = remote.via
    if isinstance(via, Remote):
        if via.scheme not in ("tls", "https"):
            raise ArgumentError(f"{target}: the rendezvous point is reached over TLS: "
                                f"via={via.target!r} should be tls://HOST:PORT")
    elif not isinstance(via, Signalling):
        raise ArgumentError(f"{target}: via is {type(via).__name__}, neither the rendezvous "
                            "point (tls://HOST:PORT or a Remote) nor a Signalling")
    return local.identity, cert


def _missing(target: str, what: str) -> ArgumentError:
    return ArgumentError(
        f"{target}: a rendezvous needs a Local with {what}: "
        "Local(identity='me.example', certificates=[cert]) (the peer authenticates us by "
        "that certificate's fingerprint, the rendezvous point by the certificate itself)")


def _values(decision: Decision) -> tuple[tuple[tuple[str, int], ...], tuple[TurnServer, ...],
                                          str, float]:
    """STUN servers, TURN servers, the relay preference and peerWait (seconds) (Rule 2)."""
    from ..ice.agent import parse_stun, parse_turn_url  # Rule 9

    stun = tuple(parse_stun(s) for s in decision.value("rendezvous.stun") or ())
    # The policy holds each TURN URL as a Secret whose text is the redacted form (registry
    # Rule 4): only the TURN client itself gets the password.
    turn = tuple(parse_turn_url(revealed(u)) for u in decision.value("rendezvous.turn") or ())
    relay = decision.value("rendezvous.relay")
    wait = float(decision.value("rendezvous.peerWait")) / 1000.0
    return stun, turn, str(getattr(relay, "value", relay)), wait


def _relay_rule(decision: Decision) -> str:
    """The statement that made `rendezvous.relay` prohibit, as PolicyErrors name rules:
    its layer, rule and file:line."""
    eff = decision.properties.get("rendezvous.relay")
    if eff is None:
        return "rendezvous.relay: prohibit"
    st = eff.statement
    via = f" via profile {st.via}" if st.via else ""
    where = f", {st.source}" if st.source else ""
    return f"rendezvous.relay: prohibit ({st.layer} rule {st.rule}{via}{where})"


def _hosts(decision: Decision, local: Local) -> list[tuple[str | None, str]]:
    """Distinct (interface, local address) of the candidates, in their order (Rule 2),
    within what the Local names."""
    seen: dict[tuple[str | None, str], None] = {}
    for c in decision.candidates:
        if local.interface is not None and c.interface != local.interface:
            continue
        if local.address is not None and c.local_address != local.address:
            continue
        seen.setdefault((c.interface, c.local_address), None)
    return list(seen)


def _candidate(decision: Decision, path: IcePath) -> Candidate:
    """The decision's candidate the nominated pair runs from (the first one when the pair's
    local end is a relay or a reflexive address), with the pair's remote end."""
    local_address = path.local[0]
    chosen = next((c for c in decision.candidates
                   if c.local_address == local_address and c.interface == path.interface),
                  None)
    if chosen is None:
        chosen = next((c for c in decision.candidates if c.interface == path.interface),
                      decision.candidates[0])
    return chosen._replace(remote_address=path.remote[0], remote_port=path.remote[1])


def _counts(prefix: str, kinds: Sequence[str]) -> dict[str, int]:
    found = Counter(kinds)
    return {f"{prefix}_{k}": found.get(k, 0) for k in ("host", "srflx", "prflx", "relay")}


def _emit(tracer: Tracer | None, name: str, **info: Any) -> None:
    if tracer is not None:
        tracer.emit(name, **info)


def _signalling(via: object, local: Local, ctx: PolicyContext,
                initiate: Initiate) -> tuple[Signalling, bool]:
    """The channel offers go through, and whether it is ours to close (Rule 6)."""
    if isinstance(via, Remote):
        return RendezvousClient(via, local, ctx, initiate=initiate), True
    if isinstance(via, Signalling):
        return via, False
    raise ArgumentError(f"Remote.rendezvous via: {type(via).__name__} is neither the "
                         "rendezvous point's Remote nor a Signalling")


async def _peer_offer(signalling: Signalling, me: str, peer: str, wait: float,
                      tracer: Tracer | None) -> Offer:
    """The peer's offer within `wait` seconds, skipping what Rule 5 skips."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError
        raw = await signalling.receive(me, peer, left)
        try:
            offer = Offer.from_dict(raw)
        except OfferError as exc:
            _emit(tracer, "rendezvous.offer", direction="skipped", peer=peer, reason=str(exc))
            continue
        if offer.identity != peer:
            _emit(tracer, "rendezvous.offer", direction="skipped", peer=peer,
                  reason=f"names {offer.identity}, not the peer")
            continue
        age = time.time() - offer.created
        if age > wait:
            _emit(tracer, "rendezvous.offer", direction="skipped", peer=peer, session=offer.session,
                  reason=f"made {age:.0f} s ago, longer than rendezvous.peerWait")
            continue
        return offer


def _failed(decision: Decision, remote: Remote, why: str, exc: BaseException | None,
            kind: FailureKind, elapsed_ms: float, rank: int = 1,
            interface: str | None = None) -> EstablishmentError:
    """One failed Attempt: on the pair's interface once there is a pair, else on every
    interface ICE gathered on."""
    if interface is None:
        interface = ",".join(dict.fromkeys(c.interface for c in decision.candidates))
    stack = decision.candidates[0].stack if decision.candidates else ""
    attempt = Attempt(rank, interface, stack, remote.target, "failed", why, elapsed_ms,
                      kind, exc)
    return EstablishmentError(f"could not meet {remote.target}: {why}", decision, (attempt,))


class _Activation:
    """What one activation holds until the carrier has its Transient (Rule 6)."""

    def __init__(self) -> None:
        self.agent: IceAgent | None = None
        self.path: IcePath | None = None
        self.listening: Listening | None = None
        self.signalling: Signalling | None = None
        self.first: Transient | None = None

    async def release(self) -> None:
        """Close everything it holds (a failed or cancelled activation)."""
        signalling, self.signalling = self.signalling, None
        listening, self.listening = self.listening, None
        path, self.path = self.path, None
        agent, self.agent = self.agent, None
        first, self.first = self.first, None
        if first is not None:
            first.abort()
        if path is not None:
            path.close()
        for closing in (signalling.aclose() if signalling is not None else None,
                        listening.aclose() if listening is not None else None,
                        agent.aclose() if agent is not None else None):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing


def rendezvous_opener(remote: Remote, local: Local | None, ctx: PolicyContext,
                      association: Association, *, kind: str, tracer: Tracer | None,
                      deciding: Callable[[], PolicyContext],
                      framers: Callable[[int], Callable[[], Framer]],
                      environment: Callable[[], Environment | None],
                      initiate: Initiate) -> Opener:
    """The opener of a rendezvous carrier (runtime/establish.py hands it over for a
    rendezvous Remote): `deciding()` is the context to decide with (the no-downgrade layer
    of establish Rule 4 included), `framers(max_size)` the framer factory, `environment()`
    the caller's snapshot or None for the live machine, `initiate` establish's own, for the
    carrier to the rendezvous point (this module sits below establish: it cannot import
    it)."""
    if kind != "initiate":
        raise ArgumentError(f"{remote.target}: a rendezvous is met by initiate(), not "
                             f"{kind}")
    me, cert = check_rendezvous(remote, local)
    assert local is not None  # check_rendezvous refused a missing Local
    peer = remote.host
    controlling = me < peer
    role = "controlling" if controlling else "controlled"

    async def open_transient(early: Callable[[], EarlyAttempt | None]) -> Established[Transient]:
        del early  # nothing rides before QUIC's handshake over a path found just now
        loop = asyncio.get_running_loop()
        started = loop.time()

        def elapsed() -> float:
            return (loop.time() - started) * 1000.0

        ctx_now = deciding()
        base = environment()
        request = remote.request(app=ctx.app_name, kind=kind)
        decision = decide(request, ctx_now, base if base is not None
                          else live.live_environment(None, 0, tuple(association.history)))
        if decision.outcome != "ok":
            decision_complete(tracer, decision, from_cache=False)
            why = ("; ".join(c.reason for c in decision.conflicts) if decision.conflicts
                   else "no host address is left to gather on: " + "; ".join(
                       f"{e.interface or e.stack or e.remote_address} {e.outcome}"
                       + (f" by {e.property} ({e.layer} rule {e.rule}, {e.source})"
                          if e.property else f" ({e.detail})" if e.detail else "")
                       for e in decision.excluded[:6]))
            raise PolicyError(f"{decision.outcome} for {remote.target}: {why}", decision)
        hosts = _hosts(decision, local)
        if not hosts:
            raise PolicyError(f"{remote.target}: no candidate uses the requested local "
                              f"endpoint ({local.describe()})", decision)
        settings = Settings.from_decision(decision)
        factory = framers(settings.max_size)
        stun, turn, relay, wait = _values(decision)
        decision_complete(tracer, decision, from_cache=False)
        held = _Activation()
        try:
            return await activate(held, decision, settings, factory, hosts, stun, turn,
                                  relay, wait, ctx_now, elapsed)
        except BaseException:
            await held.release()
            raise

    async def activate(held: _Activation, decision: Decision, settings: Settings,
                       factory: Callable[[], Framer], hosts: list[tuple[str | None, str]],
                       stun: tuple[tuple[str, int], ...], turn: tuple[TurnServer, ...],
                       relay: str, wait: float, ctx_now: PolicyContext,
                       elapsed: Callable[[], float]) -> Established[Transient]:
        assert local is not None
        from ..ice.agent import IceAgent, IceError  # Rule 9

        agent = held.agent = IceAgent(controlling=controlling, host_addresses=hosts,
                                      stun=stun, turn=turn, relay=relay)
        await agent.gather()
        ufrag, pwd, candidates = agent.offer_parts()
        ours = Offer.create(identity=me, ufrag=ufrag, pwd=pwd, candidates=candidates,
                            fingerprint=cert.fingerprint)
        signalling, owned = _signalling(remote.via, local, ctx, initiate)
        if owned:
            held.signalling = signalling
        try:
            await signalling.send(me, peer, ours.to_dict())
            _emit(tracer, "rendezvous.offer", direction="sent", peer=peer, session=ours.session,
                  candidates=len(ours.candidates), fingerprint=ours.fingerprint)
            try:
                theirs = await _peer_offer(signalling, me, peer, wait, tracer)
            except TimeoutError:
                raise _failed(decision, remote, f"no offer from the peer within "
                              f"rendezvous.peerWait ({wait * 1000:.0f} ms): it has not "
                              "initiated, or cannot reach the rendezvous", None,
                              FailureKind.TIMEOUT, elapsed()) from None
        except (EstablishmentError, PolicyError, UsageError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _failed(decision, remote, f"signalling failed: {exc}", exc, classify(exc),
                          elapsed()) from exc
        finally:
            if owned:
                held.signalling = None
                with contextlib.suppress(Exception):
                    await signalling.aclose()
        _emit(tracer, "rendezvous.offer", direction="received", peer=peer, session=theirs.session,
              candidates=len(theirs.candidates), fingerprint=theirs.fingerprint)
        pins = {c.fingerprint for c in remote.certificates}
        if pins and theirs.fingerprint not in pins:
            raise _failed(decision, remote, f"the peer's offer announces certificate "
                          f"sha256:{theirs.fingerprint}, which is none of the pinned "
                          "certificates: the rendezvous point or the signalling channel "
                          "offered another peer; refused before any connectivity check",
                          None, FailureKind.TLS_VERIFY, elapsed())
        try:
            path = held.path = await agent.connect(theirs.ufrag, theirs.pwd,
                                                   list(theirs.candidates),
                                                   timeout=settings.conn_timeout)
        except (IceError, TimeoutError) as exc:
            _candidates_event(agent)
            dropped_relays = exc.relay_dropped if isinstance(exc, IceError) else 0
            if relay == "prohibit" and (turn or dropped_relays):
                # Only when a relay could have carried it: a TURN server the policy names,
                # or relay candidates of the peer's that it made us drop.
                raise PolicyError(f"{remote.target}: no ICE pair connected and "
                                  f"{_relay_rule(decision)} rules out the TURN relay: {exc}",
                                  _with_report(decision, agent, role, peer, stun, turn,
                                               theirs.fingerprint, None)) from exc
            raise _failed(decision, remote, f"no ICE pair connected: {exc}", exc,
                          FailureKind.TIMEOUT if isinstance(exc, TimeoutError)
                          else FailureKind.UNREACHABLE, elapsed()) from exc
        nominated_ms = elapsed()
        _candidates_event(agent)
        _emit(tracer, "rendezvous.pair", kind=path.kind, local=path.local, remote=path.remote,
              interface=path.interface, role=role, elapsed_ms=nominated_ms)
        explained = _with_report(decision, agent, role, peer, stun, turn, theirs.fingerprint,
                                 nominated_ms)
        candidate = _candidate(decision, path)
        fingerprints = frozenset({theirs.fingerprint})
        impl = stacks.get(candidate.stack)
        if impl is None:
            raise _failed(explained, remote, f"the {candidate.stack} stack is not available",
                          None,
                          FailureKind.UNSUPPORTED, elapsed())
        try:
            async with asyncio.timeout(settings.conn_timeout):
                if controlling:
                    held.path = None  # the stack's from here (stacks Rule 5)
                    transient = await impl.connect(AttemptSpec(
                        candidate=candidate, host=peer, settings=settings,
                        association=association, framer=factory, identity=(cert,),
                        path=path, peer_fingerprints=fingerprints))
                    # The peer's forks before our carrier's accept() wait for it, as on
                    # the listening side (Rule 3); accept() takes the stream over.
                    transient.accept_siblings(functools.partial(_as_fork, transient))
                else:
                    transient = await accept(held, impl, path, settings, factory,
                                             fingerprints)
        except (EstablishmentError, PolicyError, asyncio.CancelledError):
            path.close()
            raise
        except Exception as exc:
            path.close()
            kind_ = classify(exc)
            why = "QUIC handshake timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise _failed(explained, remote, f"over the {path.kind} pair "
                          f"{hostport(path.local)} -> {hostport(path.remote)}: {why}", exc,
                          kind_, elapsed(), candidate.rank,
                          path.interface or "") from exc
        held.agent = None  # the path holds the agent's connection now (Rule 6)
        held.first = None
        held.listening = None
        attempt = Attempt(candidate.rank, path.interface or "", candidate.stack,
                          hostport(path.remote), "won", "", elapsed())
        return Established(transient, explained, candidate, (attempt,), settings, remote,
                           ctx_now, factory)

    async def accept(held: _Activation, impl: Stack, path: IcePath, settings: Settings,
                     factory: Callable[[], Framer],
                     fingerprints: frozenset[str]) -> Transient:
        """The controlled side (Rule 3): listen over the path; the first stream is ours."""
        assert local is not None
        first: asyncio.Future[Transient] = asyncio.get_running_loop().create_future()

        def on_transient(t: Transient) -> None:
            if not first.done():
                first.set_result(t)
                return
            _as_fork(first.result(), t)

        held.path = None  # the stack's from here (stacks Rule 5)
        listening = await impl.listen(ListenSpec(
            path.local[0], path.local[1], path.interface, settings, factory, (cert,),
            on_transient, path=path, peer_fingerprints=fingerprints))
        if not isinstance(listening, PathListening):  # stacks/base.py Rule 5
            await listening.aclose()
            raise TypeError(f"{impl.name}: listen() over a path must return a PathListening")
        held.listening = listening
        await listening.wait_connected()  # a refused peer raises here, not at a timeout
        transient = await first
        held.first = transient
        return transient

    def _candidates_event(agent: IceAgent) -> None:
        if tracer is None:
            return
        ours, theirs, _pairs, dropped = agent.report_parts()
        _emit(tracer, "rendezvous.candidates", **_counts("local", [c.kind for c in ours]),
              **_counts("remote", [c.kind for c in theirs]), dropped=len(dropped))

    return open_transient


def _with_report(decision: Decision, agent: IceAgent, role: str, peer: str,
                 stun: Sequence[tuple[str, int]], turn: Sequence[TurnServer],
                 fingerprint: str | None, elapsed_ms: float | None) -> Decision:
    """The Decision with what ICE did (Rule 8: servers as host:port only)."""
    ours, theirs, pairs, dropped = agent.report_parts()
    report = RendezvousReport(
        peer=peer, role=role, local=tuple(ours), remote=tuple(theirs), pairs=tuple(pairs),
        dropped=tuple(dropped), stun=tuple(hostport(s) for s in stun),
        turn=tuple(hostport((t.host, t.port)) for t in turn),
        peer_fingerprint=fingerprint, elapsed_ms=elapsed_ms)
    return dataclasses.replace(decision, rendezvous=report)


def _as_fork(primary: Transient, t: Transient) -> None:
    """A later stream the peer opened on our connection: a fork of the carrier that took
    the first one (Rule 3). Until that carrier has adopted it (the same loop turn the
    opener returns in), the stream waits; if the carrier never comes it is dropped."""
    owner = primary.owner
    if isinstance(owner, Carrier):
        child = owner.sibling(t, accepted=True)
        if not owner.deliver_fork(child):
            child.abort()
        return
    if not primary.is_open:
        t.abort()
        return
    asyncio.get_running_loop().call_soon(_as_fork, primary, t)
