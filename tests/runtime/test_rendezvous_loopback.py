"""Two rendezvous peers in one process on loopback (runtime/rendezvous.py, draft 3.1.3).

Real sockets, real aioice and aioquic, no mocks: each peer calls `tp.initiate()` with a
rendezvous Remote at the same time, the offers go through a `MemorySignalling` pair or a
real `RendezvousPoint` over TLS, ICE finds a host pair on loopback and QUIC runs over it.
The policies keep ICE on the loopback interface (`interface.loopback: require`), so no
test depends on the machine's other addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

import taps_post as tp
from taps_post.certs import self_signed

ALICE, BOB = "alice.test", "bob.test"
LOOPBACK = {"interface": {"loopback": "require"}}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def certs() -> dict[str, tp.certs.Certificate]:
    return {ALICE: self_signed([ALICE]), BOB: self_signed([BOB])}


def _local(certs: dict[str, Any], who: str) -> tp.Local:
    return tp.Local(identity=who, certificates=[certs[who]])


class Events:
    """A trace callback keeping (name, info) of every event."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        self.seen.append((name, info))

    def named(self, suffix: str) -> list[dict[str, Any]]:
        return [info for name, info in self.seen if name.endswith(suffix)]


async def _pair(certs: dict[str, Any], via_a: Any, via_b: Any, policy_a: tp.PolicyContext,
                policy_b: tp.PolicyContext | None = None, *, trace_a: Any = None,
                pins_a: tuple[Any, ...] = (), store: tp.AssociationStore | None = None,
                send_a: bytes | None = None) -> tuple[tp.Carrier, tp.Carrier]:
    """Both peers initiate at the same time; both carriers activated."""
    store = store or tp.AssociationStore()
    a = tp.initiate(tp.Remote.rendezvous(BOB, via=via_a, certificates=pins_a),
                    local=_local(certs, ALICE), policy=policy_a, trace=trace_a, store=store,
                    send=send_a)
    b = tp.initiate(tp.Remote.rendezvous(ALICE, via=via_b), local=_local(certs, BOB),
                    policy=policy_b or policy_a, store=store)
    try:
        await asyncio.gather(a.activate(), b.activate())
    except BaseException:
        a.abort()
        b.abort()
        raise
    return a, b


async def _exchange(a: tp.Carrier, b: tp.Carrier, count: int = 50) -> None:
    """`count` numbered messages each way, concurrently; each side gets them in order."""
    async def send(c: tp.Carrier, tag: bytes) -> None:
        for i in range(count):
            await c.send(b"%s %d" % (tag, i))

    async def receive(c: tp.Carrier, tag: bytes) -> None:
        for i in range(count):
            msg = await c.receive()
            assert msg == b"%s %d" % (tag, i)

    await asyncio.gather(send(a, b"a"), send(b, b"b"), receive(a, b"b"), receive(b, b"a"))


async def _fork(parent: tp.Carrier, peer: tp.Carrier, *, accept_first: bool = True) -> None:
    """A fork of `parent` reaches `peer`'s accept() (called before the fork, or once the
    fork's first message is there: it was held for it); messages both ways on it."""
    accepted: asyncio.Future[tp.Carrier] = asyncio.get_running_loop().create_future()

    def took(child: tp.Carrier) -> bool:
        if not accepted.done():
            accepted.set_result(child)
        return True

    if accept_first:
        peer.accept(took)
    child = await parent.fork()
    await child.send(b"fork hello")
    await child.send(b"fork hello")  # a round trip: the first has arrived by then
    if not accept_first:
        await parent.send(b"ping")
        assert await peer.receive() == b"ping"
        await peer.send(b"pong")
        assert await parent.receive() == b"pong"
        peer.accept(took)
    theirs = await accepted
    assert await theirs.receive() == b"fork hello"
    assert await theirs.receive() == b"fork hello"
    await theirs.send(b"fork reply")
    assert await child.receive() == b"fork reply"
    assert theirs.association is peer.association
    await child.close()
    await theirs.close()


@contextlib.asynccontextmanager
async def _settles(until: Any, warm_loop: Any) -> AsyncIterator[None]:
    """Nothing the block opened is left once it closed its carriers (sockets, tasks)."""
    await warm_loop()  # the loop's own one-time descriptors are not the block's
    base_fds, base_tasks = _fds(), len(asyncio.all_tasks())
    yield
    await until(lambda: _fds() <= base_fds and len(asyncio.all_tasks()) <= base_tasks,
                timeout=5.0,
                what=lambda: f"fds {_fds()} (before: {base_fds}), "
                             f"tasks {len(asyncio.all_tasks())} (before: {base_tasks})")


def test_two_peers_meet_through_memory_signalling(run, until, warm_loop,
                                                  make_policy, certs) -> None:
    policy = make_policy(LOOPBACK)
    events = Events()

    async def main() -> None:
        hub = tp.MemorySignalling()
        async with _settles(until, warm_loop):
            a, b = await _pair(certs, hub, hub, policy, trace_a=events)
            assert a.stack == b.stack == "quic-ice"
            await _exchange(a, b)
            # Forks before the peer called accept() wait for it (the controlling side,
            # alice, who sorts first, and the controlled one), then forks into a running
            # accept().
            await _fork(a, b, accept_first=False)
            await _fork(b, a, accept_first=False)
            await _fork(a, b)
            await _fork(b, a)
            await _exchange(a, b, 5)  # the carriers still carry after their forks

            report = a.explanation.rendezvous
            assert report is not None and report.peer == BOB
            assert report.role == "controlling"
            assert b.explanation.rendezvous.role == "controlled"
            selected = report.selected
            assert selected is not None and selected.nominated
            assert selected.local.kind == "host" and selected.remote.kind == "host"
            assert report.peer_fingerprint == certs[BOB].fingerprint
            assert b.explanation.rendezvous.peer_fingerprint == certs[ALICE].fingerprint
            assert report.elapsed_ms is not None and report.elapsed_ms > 0
            assert all(c.kind == "host" for c in report.local)
            assert report.to_dict()["selected"]["nominated"] is True
            assert a.attempts[0].outcome == "won" and a.attempts[0].stack == "quic-ice"
            await a.close()
            await b.close()

    run(main(), timeout=30)
    names = [n for n, _ in events.seen]
    sent = [i for i in events.named("rendezvous.offer") if i["direction"] == "sent"]
    received = [i for i in events.named("rendezvous.offer") if i["direction"] == "received"]
    assert sent and received, names
    for info in events.named("rendezvous.offer"):
        assert not ({"ufrag", "pwd", "password"} & set(info)), info
    counts = events.named("rendezvous.candidates")[0]
    assert counts["local_host"] >= 1 and counts["remote_host"] >= 1
    pair = events.named("rendezvous.pair")[0]
    assert pair["kind"] == "host" and pair["role"] == "controlling"
    assert "carrier.active" in names


def test_two_peers_meet_through_a_rendezvous_point(run, until, warm_loop,
                                                   make_policy, certs) -> None:
    """The offers go through a real RendezvousPoint over TLS (self-signed: the point's
    certificate pinned by the peers, the peers' pinned by the point)."""
    policy = make_policy(LOOPBACK)
    point_cert = self_signed(["point.test", "127.0.0.1"])

    async def main() -> None:
        point = await tp.RendezvousPoint.start(
            tp.Local(address="127.0.0.1", certificates=[point_cert],
                     trusted=[certs[ALICE], certs[BOB]]), system=[])
        try:
            via = tp.Remote.parse(f"tls://127.0.0.1:{point.port}", certificates=[point_cert])
            async with _settles(until, warm_loop):
                a, b = await _pair(certs, via, via, policy,
                                   pins_a=(certs[BOB],), send_a=b"sent with initiate")
                assert await b.receive() == b"sent with initiate"  # held, then first
                await _exchange(a, b, 20)
                await _fork(b, a)
                assert a.explanation.rendezvous.selected.local.kind == "host"
                await a.close()
                await b.close()
            assert point.stats.delivered >= 2  # each peer took the other's offer
        finally:
            await point.close()

    run(main(), timeout=30)


def test_a_pinned_peer_refuses_another_fingerprint(run, until, warm_loop,
                                                   make_policy, certs) -> None:
    """Alice pins a certificate bob's offer does not announce: refused before any check,
    naming the substitution; bob, left waiting in ICE, is closed without leaks."""
    policy = make_policy(LOOPBACK)
    other = self_signed([BOB])  # the same name, another key: what a substitute would hold

    async def main() -> None:
        hub = tp.MemorySignalling()
        async with _settles(until, warm_loop):
            a = tp.initiate(tp.Remote.rendezvous(BOB, via=hub, certificates=[other]),
                            local=_local(certs, ALICE), policy=policy)
            b = tp.initiate(tp.Remote.rendezvous(ALICE, via=hub), local=_local(certs, BOB),
                            policy=policy)
            waiting = asyncio.ensure_future(b.activate())
            with pytest.raises(tp.EstablishmentError) as info:
                await a.activate()
            text = str(info.value)
            assert "none of the pinned certificates" in text
            assert certs[BOB].fingerprint in text
            assert info.value.attempts[0].kind == tp.FailureKind.TLS_VERIFY
            assert not waiting.done()  # bob still checks pairs nobody answers
            await b.close()
            with pytest.raises(tp.ConnectionClosedError):
                await waiting
            await a.close()

    run(main(), timeout=30)


class Substitute:
    """A signalling channel that swaps the fingerprint in alice's offers for another one
    (what a dishonest rendezvous point could try without pins)."""

    def __init__(self, inner: tp.MemorySignalling, fingerprint: str) -> None:
        self.inner = inner
        self.fingerprint = fingerprint

    async def send(self, sender: str, to: str, offer: dict[str, Any]) -> None:
        if sender == ALICE:
            offer = {**offer, "fingerprint": self.fingerprint}
        await self.inner.send(sender, to, offer)

    async def receive(self, me: str, peer: str, timeout: float) -> dict[str, Any]:
        return await self.inner.receive(me, peer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_substituted_fingerprint_fails_the_quic_handshake(run, until, warm_loop, make_policy,
                                                            certs) -> None:
    """Without pins the offer's fingerprint is the peer's identity: when signalling swaps
    it, bob's end refuses alice's real certificate and neither carrier comes up."""
    policy = make_policy(LOOPBACK)
    other = self_signed([ALICE])

    async def main() -> None:
        hub = tp.MemorySignalling()
        via = Substitute(hub, other.fingerprint)
        async with _settles(until, warm_loop):
            a = tp.initiate(tp.Remote.rendezvous(BOB, via=via), local=_local(certs, ALICE),
                            policy=policy)
            b = tp.initiate(tp.Remote.rendezvous(ALICE, via=via), local=_local(certs, BOB),
                            policy=policy)
            got = await asyncio.gather(a.activate(), b.activate(), return_exceptions=True)
            assert all(isinstance(e, tp.EstablishmentError) for e in got), got
            for e in got:
                assert e.attempts[0].kind == tp.FailureKind.TLS_VERIFY, e
                assert "is not the one its offer announced" in str(e)
            assert b.explanation is None and a.explanation is None  # never active
            await a.close()
            await b.close()

    run(main(), timeout=30)


@pytest.mark.parametrize("turn", [True, False], ids=["turn-named", "no-turn"])
def test_relay_prohibited_and_no_pair_is_a_policy_error(run, until, warm_loop, make_policy, certs,
                                                        tmp_path, turn: bool) -> None:
    """Alice gathers on IPv4 only, bob on IPv6 only: no pair can form. With
    `rendezvous.relay: prohibit` and a TURN server the policy names (a relay could have
    carried it), alice's failure is the policy's, naming the statement by file and line;
    with no TURN server at all the relay rule changed nothing, so it is an
    EstablishmentError that does not blame it."""
    app = tmp_path / "app.yaml"
    servers = ('      rendezvous.turn: ["turn:u:secret@127.0.0.1:9"]\n' if turn else "")
    app.write_text("version: 1\nlayer: app\nrules:\n  - id: no-relay\n    set:\n"
                   "      interface.loopback: require\n      addressFamily.ipv4: require\n"
                   "      rendezvous.relay: prohibit\n" + servers)
    policy_a = tp.PolicyContext(system=[], app=str(app), app_name="t")
    policy_b = make_policy({**LOOPBACK, "addressFamily": {"ipv6": "require"}})

    async def main() -> None:
        hub = tp.MemorySignalling()
        async with _settles(until, warm_loop):
            a = tp.initiate(tp.Remote.rendezvous(BOB, via=hub), local=_local(certs, ALICE),
                            policy=policy_a)
            b = tp.initiate(tp.Remote.rendezvous(ALICE, via=hub), local=_local(certs, BOB),
                            policy=policy_b)
            got = await asyncio.gather(a.activate(), b.activate(), return_exceptions=True)
            error, other = got
            if not turn:
                assert isinstance(error, tp.EstablishmentError), got
                assert "no ICE pair connected" in str(error)
                assert "rendezvous.relay" not in str(error)
                await a.close()
                await b.close()
                return
            assert isinstance(error, tp.PolicyError), got
            text = str(error)
            assert "rendezvous.relay: prohibit (app rule no-relay, " in text, text
            assert f"{app}:8" in text, text  # the statement's file:line
            statement = error.decision.properties["rendezvous.relay"].statement
            assert statement.source == f"{app}:8"
            report = error.decision.rendezvous
            assert report is not None and report.selected is None
            assert [c.address for c in report.local] == ["127.0.0.1"]
            assert isinstance(other, tp.EstablishmentError), got  # bob: no relay rule
            assert "no ICE pair connected" in str(other)
            await a.close()
            await b.close()

    run(main(), timeout=30)


def test_a_peer_that_never_comes_times_out_after_peer_wait(run, until, warm_loop, make_policy,
                                                           certs) -> None:
    """Only alice initiates; a stale offer from an old session of bob is skipped."""
    from taps_post.ice.offer import Offer

    policy = make_policy({**LOOPBACK, "rendezvous": {"peerWait": 300}})
    events = Events()

    async def main() -> None:
        hub = tp.MemorySignalling()
        old = Offer("bob.test", "0" * 32, "abcd", "a" * 22, (), certs[BOB].fingerprint,
                    1.0)  # made in 1970: long before peerWait
        await hub.send(BOB, ALICE, old.to_dict())
        async with _settles(until, warm_loop):
            a = tp.initiate(tp.Remote.rendezvous(BOB, via=hub), local=_local(certs, ALICE),
                            policy=policy, trace=events)
            with pytest.raises(tp.EstablishmentError) as info:
                await a.activate()
            assert "rendezvous.peerWait (300 ms)" in str(info.value)
            assert info.value.attempts[0].kind == tp.FailureKind.TIMEOUT
            await a.close()

    run(main(), timeout=30)
    skipped = [i for i in events.named("rendezvous.offer") if i["direction"] == "skipped"]
    assert skipped and "peerWait" in skipped[0]["reason"]


@pytest.mark.parametrize("local, words", [
    (None, "an identity"),
    ("no identity", "an identity"),
    ("no certificate", "a certificate with its private key"),
    ("no key", "has none: it can only be pinned"),
    ("the peer's identity", "a peer cannot meet itself"),
])
def test_initiate_refuses_a_local_that_cannot_meet(certs, local: Any, words: str) -> None:
    """Checked at initiate(), before anything is opened (rendezvous Rule 1)."""
    made = {
        None: None,
        "no identity": tp.Local(certificates=[certs[ALICE]]),
        "no certificate": tp.Local(identity=ALICE),
        "no key": tp.Local(identity=ALICE, certificates=[
            tp.certs.Certificate(certs[ALICE].cert_pem)]),
        "the peer's identity": tp.Local(identity=BOB, certificates=[certs[BOB]]),
    }[local]
    with pytest.raises(tp.ArgumentError, match=r"rendezvous://bob\.test") as info:
        tp.initiate(tp.Remote.rendezvous(BOB, via=tp.MemorySignalling()), local=made,
                    policy=tp.PolicyContext(system=[], app_name="t"))
    assert words in str(info.value)
