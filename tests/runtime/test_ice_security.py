"""taps_post.ice.agent against hostile senders on loopback: real sockets, aioice, aioquic.

A host that knows one of our candidate ports must not be able to put datagrams into the
path (agent.py Rule 5): a foreign socket sends before, during and after the checks, and the
path's receiver sees only the peer's data, and a quic-ice handshake over the path still
completes although a foreign QUIC Initial reached its port first. Under `rendezvous.relay:
prohibit` no path may run through the peer's TURN relay (Rule 3), even though its checks
from the relayed address would teach a peer-reflexive candidate (coturn on loopback; those
tests skip without `turnserver`), while a genuine peer-reflexive candidate still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from test_ice_agent import LO4, Coturn, connected, coturn  # noqa: F401 (fixture)
from test_quic_peer_stack import attempt, settings

import taps_post as tp
from taps_post.core.framing import LengthPrefixFramer
from taps_post.ice.agent import IceAgent, IceError, IcePath
from taps_post.stacks.base import ListenSpec
from taps_post.stacks.quic.peer import ALPN, PeerQuicStack


def _foreign() -> socket.socket:
    """Mallory: a socket on the same loopback address as the peers, not one of theirs."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def _close(*paths: IcePath) -> None:
    for path in paths:
        path.close()
    for path in paths:
        await path.wait_closed()


def _ports(agent: IceAgent) -> list[tuple[str, int]]:
    return [(c.address, c.port) for c in agent.report_parts()[0]]


def test_foreign_datagrams_never_reach_the_receiver(run: Any, until: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        await asyncio.gather(a.gather(), b.gather())
        targets = _ports(a) + _ports(b)
        with _foreign() as mallory:
            sent = 0

            def inject(tag: bytes) -> None:
                nonlocal sent
                for target in targets:
                    mallory.sendto(b"\xc0mallory " + tag, target)  # QUIC-shaped
                    sent += 1

            inject(b"before the checks")
            stop = asyncio.Event()

            async def during() -> None:
                while not stop.is_set():
                    inject(b"during the checks")
                    await asyncio.sleep(0.005)

            blaster = asyncio.get_running_loop().create_task(during())
            try:
                pa, pb = await asyncio.gather(a.connect(*b.offer_parts(), timeout=5),
                                              b.connect(*a.offer_parts(), timeout=5))
            finally:
                stop.set()
                await blaster
            try:
                pa.send(b"early from a")
                await until(lambda: len(pb._conn.early) >= 1)  # kept for the first receive
                at_a: list[bytes] = []
                at_b: list[bytes] = []
                pa.receive(at_a.append)
                pb.receive(at_b.append)
                for i in range(20):
                    inject(b"after nomination %d" % i)
                    pa.send(b"a%d" % i)
                    pb.send(b"b%d" % i)
                await until(lambda: len(at_a) >= 20 and len(at_b) >= 21)
                await until(lambda: pa.dropped_foreign + pb.dropped_foreign >= sent,
                            what=lambda: f"{pa.dropped_foreign} + {pb.dropped_foreign} "
                                         f"of {sent} dropped")
                await asyncio.sleep(0.05)
                assert at_b == [b"early from a"] + [b"a%d" % i for i in range(20)]
                assert at_a == [b"b%d" % i for i in range(20)]
                assert pa.dropped_foreign + pb.dropped_foreign == sent
            finally:
                await _close(pa, pb)

    run(main())


def test_quic_handshake_completes_despite_a_foreign_initial(run: Any) -> None:
    """The quic-ice listener builds its one connection from the first QUIC Initial it
    sees: one spoofed Initial from a foreign socket used to take that slot."""

    async def main() -> None:
        alice = tp.certs.self_signed(["alice.example"])
        bob = tp.certs.self_signed(["bob.example"])
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        got: list[Any] = []
        spec = ListenSpec(address=pb.local[0], port=pb.local[1], interface=None,
                          settings=settings(handshake_timeout=3.0), framer=LengthPrefixFramer,
                          identity=(bob,), on_transient=got.append, path=pb,
                          peer_fingerprints=frozenset({alice.fingerprint}))
        listening = await PeerQuicStack().listen(spec)
        transient = None
        try:
            config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
            config.verify_mode = 0
            quic = QuicConnection(configuration=config)
            quic.connect(pb.local, now=0)
            with _foreign() as mallory:
                for data, _ in quic.datagrams_to_send(now=0):
                    mallory.sendto(data, pb.local)
                await asyncio.sleep(0.05)
            assert pb.dropped_foreign >= 1
            transient = await PeerQuicStack().connect(
                attempt(pa, (alice,), {bob.fingerprint}, conn_timeout=3.0,
                        handshake_timeout=3.0))
            await asyncio.wait_for(listening.wait_connected(), 4)
            assert len(got) == 1
        finally:
            if transient is not None:
                with contextlib.suppress(Exception):
                    transient.abort()
            await listening.aclose()
            await _close(pa, pb)
            await a.aclose()
            await b.aclose()

    run(main(), timeout=20)


def test_a_raising_receiver_is_logged_once(run: Any, until: Any, caplog: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)

        def receiver(data: bytes) -> None:
            raise RuntimeError("receiver bug")

        try:
            pb.receive(receiver)
            for _ in range(10):
                pa.send(b"boom")
            await until(lambda: pb.receiver_errors == 10)
        finally:
            await _close(pa, pb)

    with caplog.at_level(logging.DEBUG, logger="taps_post.ice"):
        run(main())
    raised = [r for r in caplog.records if "receiver of an ICE path raised" in r.getMessage()]
    assert len(raised) == 1 and raised[0].exc_info is not None


def test_prohibit_still_accepts_a_peer_reflexive_candidate(run: Any, until: Any) -> None:
    """A prflx is legitimate (a side behind a NAT without STUN): b is offered only an
    address nobody answers on, learns a's real one from its checks, and uses it."""

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4], relay="prohibit")
        await asyncio.gather(a.gather(), b.gather())
        ufrag, pwd, _ = a.offer_parts()
        hidden = ["candidate:1 1 udp 2130706431 198.18.0.1 9 typ host"]
        pa, pb = await asyncio.gather(a.connect(*b.offer_parts(), timeout=5),
                                      b.connect(ufrag, pwd, hidden, timeout=5))
        try:
            assert pb.remote == pa.local
            assert [p.remote.kind for p in b.report_parts()[2] if p.nominated] == ["prflx"]
            got: list[bytes] = []
            pb.receive(got.append)
            pa.send(b"hello")
            await until(lambda: got == [b"hello"])
            assert pb.refused_checks == 0
        finally:
            await _close(pa, pb)

    run(main())


# ---- TURN on loopback (coturn) --------------------------------------------------------------


def test_prohibit_refuses_checks_from_the_peers_relay(run: Any, until: Any,
                                                      coturn: Coturn) -> None:  # noqa: F811
    """a prefers its relay, so its checks from the relayed address come first; b drops the
    relay candidate a announces and must not learn it back as peer-reflexive."""

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4], turn=[coturn.server()],
                     relay="prefer")
        b = IceAgent(controlling=False, host_addresses=[LO4], relay="prohibit")
        pa, pb = await connected(a, b)
        try:
            relayed = [(c.address, c.port) for c in a.report_parts()[0] if c.kind == "relay"]
            assert len(relayed) == 1
            assert (pa.kind, pb.kind) == ("host", "host")
            assert pb.remote not in relayed
            assert all((p.remote.address, p.remote.port) not in relayed
                       for p in b.report_parts()[2])
            got: list[bytes] = []
            pb.receive(got.append)
            pa.send(b"direct")
            await until(lambda: got == [b"direct"])
        finally:
            await _close(pa, pb)

    run(main(), timeout=20)


def test_prohibit_against_a_relay_only_peer_fails(run: Any, coturn: Coturn) -> None:  # noqa: F811
    """a offers nothing but its relay (`require`): every path would run through it, so b
    under `prohibit` finds none, and says it refused the relay's checks (b also gets an
    address nobody answers on, so its checks run long enough for a's to arrive)."""

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4], turn=[coturn.server()],
                     relay="require")
        b = IceAgent(controlling=False, host_addresses=[LO4], relay="prohibit")
        await asyncio.gather(a.gather(), b.gather())
        ufrag, pwd, lines = a.offer_parts()
        silent = "candidate:1 1 udp 2130706431 198.18.0.1 9 typ host"
        results = await asyncio.gather(a.connect(*b.offer_parts(), timeout=3),
                                       b.connect(ufrag, pwd, [*lines, silent], timeout=3),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, IcePath):
                result.close()
                await result.wait_closed()
        assert isinstance(results[1], IceError), results[1]
        assert results[1].relay_dropped == 1
        assert "checks from the peer's relay addresses refused" in str(results[1])
        relayed = {(c.address, c.port) for c in a.report_parts()[0]}
        assert all((p.remote.address, p.remote.port) not in relayed
                   for p in b.report_parts()[2])
        assert isinstance(results[0], IceError)
        await a.aclose()
        await b.aclose()

    run(main(), timeout=20)


@pytest.mark.parametrize("tag", [b"\x00\x01\x00\x00not-stun-really"])
def test_stun_shaped_garbage_from_a_foreign_socket_is_dropped(run: Any, until: Any,
                                                              tag: bytes) -> None:
    """What aioice cannot parse as STUN is data, and data only comes from the peer."""

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        got: list[bytes] = []
        pb.receive(got.append)
        try:
            with _foreign() as mallory:
                mallory.sendto(tag, pb.local)
                await until(lambda: pb.dropped_foreign == 1)
            assert got == []
        finally:
            await _close(pa, pb)

    run(main())
