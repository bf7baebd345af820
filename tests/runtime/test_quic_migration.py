"""QUIC connection migration on loopback (no root needed): `transient.migrate()` called directly.

127.0.0.0/8 is all local on Linux, so a client can move from 127.0.0.1 to 127.0.0.2 and 127.0.0.3
while the server stays on 127.0.0.1: the server sees its peer's address change, exactly what a
client moving between networks looks like to it. Each test checks that no handshake happened
again (one connection at the listener, the same session and stream objects and ids on the
client), that numbered messages written before and after the move arrive once and in order,
and what the stack reports (addresses, connection id, the server's validation of the new
path). The netns version (address removed from a real interface) is
test_quic_migration_netns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import taps_post as tp
from helpers import disable_active_migration, frame, quic_policy
from taps_post.runtime.path import Path
from taps_post.stacks.quic.compat import active_path_validated, peer_connection_id

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="needs Linux's 127.0.0.0/8 loopback")

SERVER = "127.0.0.1"


@pytest.fixture(scope="module")
def cert() -> tp.certs.Certificate:
    return tp.certs.self_signed(["localhost", "127.0.0.1"])


def policy() -> tp.PolicyContext:
    return quic_policy("quic-migration")


@dataclass
class Echo:
    """Our Listener echoing `echo:` + message on every carrier (forks included); what each
    carrier received is kept, per carrier, in arrival order."""

    listener: tp.Listener
    carriers: list[tp.Carrier] = field(default_factory=list)
    received: dict[int, list[bytes]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def on_carrier(self, carrier: tp.Carrier) -> None:
        carrier.accept(self.on_carrier)
        self.carriers.append(carrier)
        seen = self.received.setdefault(len(self.carriers) - 1, [])

        async def serve_one() -> None:
            async for msg in carrier:
                seen.append(bytes(msg))
                await carrier.send(b"echo:" + bytes(msg))

        task = asyncio.ensure_future(serve_one())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def port(self) -> int:
        return self.listener.ports["quic"]


@contextlib.asynccontextmanager
async def echo_server(cert: tp.certs.Certificate) -> AsyncIterator[Echo]:
    listener = await tp.listen(tp.Local(address=SERVER, port=0, certificates=[cert]),
                               policy=policy())
    echo = Echo(listener)
    listener.accept(echo.on_carrier)
    try:
        yield echo
    finally:
        await listener.close()
        for task in list(echo.tasks):
            task.cancel()
        await asyncio.gather(*echo.tasks, return_exceptions=True)


async def connect(cert: tp.certs.Certificate, port: int) -> tp.Carrier:
    remote = tp.Remote.parse(f"quic://{SERVER}:{port}", certificates=[cert])
    return await tp.initiate(remote, local=tp.Local(address="127.0.0.1"), policy=policy())


async def echoes(carrier: tp.Carrier, n: int, timeout: float = 5.0) -> list[bytes]:
    return [bytes(await asyncio.wait_for(carrier.receive(), timeout)) for _ in range(n)]


def numbered(tag: str, start: int, stop: int) -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(start, stop)]


# ---- our listener ---------------------------------------------------------------------------


def test_migrate_keeps_the_connection_its_streams_and_message_order(run: Any, until: Any,
                                                                    cert: Any) -> None:
    """Two carriers (a fork) on one connection; messages written before the move are still
    in flight when it happens. Afterwards: the same connection (one at the listener, the
    same session, streams and ids), a new connection id, every message once and in order on
    both carriers, the new addresses on both client streams (each told through
    on_path_change) and on the server's, which validated the new path."""

    async def main() -> None:
        async with echo_server(cert) as server:
            carrier = await connect(cert, server.port)
            fork = await carrier.fork()
            t, ft = carrier.transient, fork.transient
            session = t.session
            ids = (t.stream_id, ft.stream_id)
            told: list[Any] = []
            t.on_path_change = ft.on_path_change = told.append
            for i in range(5):  # warm up: both streams exist at the server
                await carrier.send(b"a%d" % i)
                await fork.send(b"b%d" % i)
            assert await echoes(carrier, 5) == [b"echo:" + m for m in numbered("a", 0, 5)]
            assert await echoes(fork, 5) == [b"echo:" + m for m in numbered("b", 0, 5)]
            cid = peer_connection_id(session.connection)
            for i in range(5, 10):  # in flight during the move
                await carrier.send(b"a%d" % i)
                await fork.send(b"b%d" % i)
            started = time.monotonic()
            assert await t.migrate("127.0.0.2", "lo") is True
            for i in range(10, 20):
                await carrier.send(b"a%d" % i)
                await fork.send(b"b%d" % i)
            assert await echoes(carrier, 15) == [b"echo:" + m for m in numbered("a", 5, 20)]
            assert await echoes(fork, 15) == [b"echo:" + m for m in numbered("b", 5, 20)]
            stall_ms = (time.monotonic() - started) * 1000
            # The same connection: nothing was handshaken again.
            assert carrier.transient is t and fork.transient is ft
            assert t.session is session and ft.session is session
            assert (t.stream_id, ft.stream_id) == ids
            assert len(server.carriers) == 2  # the first carrier and its fork, no more
            server_session = server.carriers[0].transient.session
            assert server.carriers[1].transient.session is server_session
            assert session.handshakes == server_session.handshakes == 1
            assert session.migrations == 1 and session.is_open
            assert peer_connection_id(session.connection) != cid
            assert t.local_address is not None and t.local_address[0] == "127.0.0.2"
            assert ft.local_address == t.local_address == session.local_address
            assert t.interface == ft.interface == "lo"
            assert told == [t, ft] or told == [ft, t]
            # Its Path changes (the runtime caches `t.path` and re-makes it on the hook).
            assert Path.of(t).local_address == t.local_address
            # The server: same carriers, each message once, in order; the peer moved.
            assert server.received[0] == numbered("a", 0, 20)
            assert server.received[1] == numbered("b", 0, 20)
            st = server.carriers[0].transient
            assert st.remote_address == t.local_address
            assert server.carriers[1].transient.remote_address == t.local_address
            await until(lambda: active_path_validated(st.session.connection), 2,
                        "the server validated the new path")
            await until(lambda: session.migration_acked_ms is not None, 2, "PING acked")
            await until(lambda: session.old_sockets == 0, 2, "the old socket closed")
            print(f"\nloopback migration: first echoes back {stall_ms:.1f} ms after migrate(), "
                  f"PING acked after {session.migration_acked_ms:.1f} ms")
            await fork.close()
            await carrier.close()

    run(main(), 15)


def test_migrate_again_and_back(run: Any, cert: Any) -> None:
    """Three moves (127.0.0.2, .3, back to .1): the connection carries on after each."""

    async def main() -> None:
        async with echo_server(cert) as server:
            carrier = await connect(cert, server.port)
            t = carrier.transient
            sent: list[bytes] = []
            for n, address in enumerate(["127.0.0.2", "127.0.0.3", "127.0.0.1"]):
                assert await t.migrate(address, "lo") is True
                batch = numbered(f"m{n}-", 0, 10)
                for m in batch:
                    await carrier.send(m)
                sent += batch
                assert await echoes(carrier, 10) == [b"echo:" + m for m in batch]
                assert t.local_address is not None and t.local_address[0] == address
                assert server.carriers[0].transient.remote_address == t.local_address
            assert t.session.migrations == 3
            assert server.received[0] == sent and len(server.carriers) == 1
            await carrier.close()

    run(main(), 15)


def test_a_large_reply_in_flight_during_the_move_arrives_whole(run: Any, until: Any,
                                                               cert: Any) -> None:
    """A 2 MB echo is on its way back when the client moves: what the server sent to the
    old address before it moved is still taken from the old socket, the rest comes on the
    new path; the message arrives whole, then the old socket closes."""

    async def main() -> None:
        async with echo_server(cert) as server:
            carrier = await connect(cert, server.port)
            t = carrier.transient
            big = bytes(range(256)) * (8 << 10)  # 2 MiB
            await carrier.send(big)
            await until(lambda: t.session.connection.get_peer_address() is not None
                        and bool(server.received.get(0)), 5, "the server has it")
            assert await t.migrate("127.0.0.2", "lo") is True
            reply = bytes(await asyncio.wait_for(carrier.receive(), 10))
            assert reply == b"echo:" + big
            await until(lambda: t.session.old_sockets == 0, 2, "the old socket closed")
            await carrier.close()

    run(main(), 20)


def test_carriers_of_one_connection_asking_at_once_move_it_once(run: Any, cert: Any) -> None:
    """The path monitor tells every carrier; each asks its transient to migrate. The
    connection moves once, and every carrier carries on."""

    async def main() -> None:
        async with echo_server(cert) as server:
            carrier = await connect(cert, server.port)
            fork = await carrier.fork()
            results = await asyncio.gather(carrier.transient.migrate("127.0.0.2", "lo"),
                                           fork.transient.migrate("127.0.0.2", "lo"))
            assert results == [True, True]
            assert carrier.transient.session.migrations == 1
            for c in (carrier, fork):
                await c.send(b"after")
                assert await echoes(c, 1) == [b"echo:after"]
                assert c.transient.local_address[0] == "127.0.0.2"
            await fork.close()
            await carrier.close()

    run(main(), 10)


def test_migrate_returns_false_where_it_cannot(run: Any, cert: Any) -> None:
    """A server's stream, an address of the other family, an address not on this host, a
    closed carrier: False, and the connection is unharmed. The address it is on already:
    True without moving (each carrier of a connection may ask)."""

    async def main() -> None:
        async with echo_server(cert) as server:
            carrier = await connect(cert, server.port)
            t = carrier.transient
            await carrier.send(b"hello")
            assert await echoes(carrier, 1) == [b"echo:hello"]
            st = server.carriers[0].transient
            assert await st.migrate("127.0.0.2", "lo") is False  # only clients migrate
            assert await t.migrate("::1", "lo") is False  # the remote is IPv4
            assert await t.migrate("192.0.2.1", None) is False  # not ours: bind fails
            assert await t.migrate("not an address", None) is False
            assert t.session.migrations == 0
            before = t.local_address
            assert await t.migrate("127.0.0.1", t.interface) is True  # already there
            assert t.local_address == before and t.session.migrations == 0
            await carrier.send(b"still")
            assert await echoes(carrier, 1) == [b"echo:still"]
            await carrier.close()
            assert await t.migrate("127.0.0.2", "lo") is False

    run(main(), 10)


# ---- a peer that is not ours: aioquic's own server ------------------------------------------


@contextlib.asynccontextmanager
async def aioquic_echo(cert: tp.certs.Certificate, *, no_migration: bool = False
                       ) -> AsyncIterator[tuple[int, list[Any]]]:
    """A server written with aioquic's API only: echoes length-prefixed messages (`echo:` +
    payload) on each bidirectional stream. Yields its port and every protocol it created
    (one per connection: a second one would be a second handshake). `no_migration`: it
    sends the disable_active_migration transport parameter (aioquic has no option for it,
    so its serialization is wrapped, with aioquic's public codec)."""
    config = QuicConfiguration(is_client=False, max_datagram_frame_size=65536)
    config.certificate = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    assert cert.key_pem is not None
    config.private_key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
    protocols: list[Any] = []

    class EchoProtocol(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.buffers: dict[int, bytearray] = {}
            self.sources: set[Any] = set()
            protocols.append(self)
            if no_migration:
                disable_active_migration(self._quic)

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            self.sources.add(addr)
            super().datagram_received(data, addr)

        def quic_event_received(self, event: events.QuicEvent) -> None:
            if isinstance(event, events.StreamDataReceived):
                buf = self.buffers.setdefault(event.stream_id, bytearray())
                buf += event.data
                while len(buf) >= 4:
                    (n,) = struct.unpack("!I", buf[:4])
                    if len(buf) < 4 + n:
                        break
                    msg = bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    self._quic.send_stream_data(event.stream_id, frame(b"echo:" + msg))
                self.transmit()

    server = await serve(SERVER, 0, configuration=config, create_protocol=EchoProtocol)
    try:
        yield server._transport.get_extra_info("sockname")[1], protocols
    finally:
        server.close()


def test_migrate_against_aioquics_own_server(run: Any, until: Any, cert: Any) -> None:
    """aioquic's server, which knows nothing of taps_post, follows the move: it answers at
    the new address (after validating it) on the same connection."""

    async def main() -> None:
        async with aioquic_echo(cert) as (port, protocols):
            remote = tp.Remote.parse(f"quic://{SERVER}:{port}", certificates=[cert])
            carrier = await tp.initiate(remote, local=tp.Local(address="127.0.0.1"),
                                        policy=policy())
            t = carrier.transient
            for m in numbered("x", 0, 5):
                await carrier.send(m)
            assert await echoes(carrier, 5) == [b"echo:" + m for m in numbered("x", 0, 5)]
            for m in numbered("x", 5, 10):
                await carrier.send(m)
            assert await t.migrate("127.0.0.2", "lo") is True
            for m in numbered("x", 10, 20):
                await carrier.send(m)
            assert await echoes(carrier, 15) == [b"echo:" + m for m in numbered("x", 5, 20)]
            assert len(protocols) == 1  # one connection, one handshake
            peer = protocols[0]._quic.get_peer_address()
            assert peer is not None and (peer[0], peer[1]) == t.local_address
            assert {a[0] for a in protocols[0].sources} == {"127.0.0.1", "127.0.0.2"}
            await until(lambda: active_path_validated(protocols[0]._quic), 2,
                        "aioquic's server validated the new path")
            await carrier.close()

    run(main(), 15)


def test_no_migration_to_a_server_that_disables_it(run: Any, cert: Any) -> None:
    """A server that sent disable_active_migration (RFC 9000 section 18.2) is never sent to
    from another address: migrate() is False and the connection stays where it is."""

    async def main() -> None:
        async with aioquic_echo(cert, no_migration=True) as (port, protocols):
            remote = tp.Remote.parse(f"quic://{SERVER}:{port}", certificates=[cert])
            carrier = await tp.initiate(remote, local=tp.Local(address="127.0.0.1"),
                                        policy=policy())
            t = carrier.transient
            await carrier.send(b"hello")
            assert await echoes(carrier, 1) == [b"echo:hello"]
            assert await t.migrate("127.0.0.2", "lo") is False
            await carrier.send(b"still")
            assert await echoes(carrier, 1) == [b"echo:still"]
            assert t.local_address[0] == "127.0.0.1" and t.session.migrations == 0
            assert {a[0] for a in protocols[0].sources} == {"127.0.0.1"}
            await carrier.close()

    run(main(), 10)


# ---- a peer that moves without migrate(): our server follows aioquic's path ---------------


class Rebinder:
    """A NAT between the client and the server, on loopback: the client sends to `port`,
    and the server sees the datagrams come from the NAT's outside socket, which `rebind`
    moves to another address (a NAT rebinding: the server's peer moves, the client does
    nothing). The replies go back to the client from whichever outside socket got them."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.client: Any = None
        self.inside: asyncio.DatagramTransport | None = None
        self.outside: list[asyncio.DatagramTransport] = []
        self.active = 0
        """The outside socket the client's datagrams leave from."""

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        nat = self

        class Inside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                nat.client = addr
                nat.outside[nat.active].sendto(data)

        self.inside, _ = await loop.create_datagram_endpoint(
            Inside, local_addr=(SERVER, 0))
        await self.bind("127.0.0.1")
        return int(self.inside.get_extra_info("sockname")[1])

    async def bind(self, address: str) -> tuple[str, int]:
        """A new outside socket on `address` (not used yet: `use`)."""
        loop = asyncio.get_running_loop()
        nat = self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if nat.inside is not None and nat.client is not None:
                    nat.inside.sendto(data, nat.client)

        transport, _ = await loop.create_datagram_endpoint(
            Outside, local_addr=(address, 0), remote_addr=(SERVER, self.server_port))
        self.outside.append(transport)
        name = transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    def use(self, index: int) -> None:
        self.active = index

    def close(self) -> None:
        for transport in [self.inside, *self.outside]:
            if transport is not None:
                transport.close()


def test_the_server_follows_a_peer_whose_first_datagram_from_elsewhere_moved_nothing(
        run: Any, until: Any, cert: Any) -> None:
    """The client's NAT rebinds, and the first datagram the server gets from the new
    address is one aioquic does not move on (here one it cannot decrypt, as a probe or a
    packet reordered behind a lower-numbered one would be): aioquic moves its active path on
    the next, non-probing packet from that same address, and the server's carrier must see
    that move too (review A14: it was only looked for when the source address changed)."""

    async def main() -> None:
        async with echo_server(cert) as server:
            nat = Rebinder(server.port)
            port = await nat.start()
            try:
                remote = tp.Remote.parse(f"quic://{SERVER}:{port}", certificates=[cert])
                carrier = await tp.initiate(remote, local=tp.Local(address="127.0.0.1"),
                                            policy=policy())
                for m in numbered("r", 0, 5):
                    await carrier.send(m)
                assert await echoes(carrier, 5) == [b"echo:" + m for m in numbered("r", 0, 5)]
                st = server.carriers[0].transient
                first = nat.outside[0].get_extra_info("sockname")
                assert st.remote_address == (first[0], first[1])
                moved = await nat.bind("127.0.0.2")
                # A short-header packet for this connection (the server's connection id, so
                # the listener hands it to the connection) that does not decrypt: dropped.
                cid = peer_connection_id(carrier.transient.session.connection)
                # Then, in the same loop iteration (nothing of the client's can come from the
                # old address in between), the rebinding: what it sends comes from `moved`.
                nat.outside[1].sendto(bytes([0x41]) + cid + bytes(range(48)))
                nat.use(1)
                for m in numbered("r", 5, 15):
                    await carrier.send(m)
                assert await echoes(carrier, 10) == [b"echo:" + m for m in numbered("r", 5, 15)]
                aioquic_peer = st.session.connection.get_peer_address()
                assert (aioquic_peer[0], aioquic_peer[1]) == moved  # aioquic moved
                assert st.remote_address == moved  # and so did our server's carrier
                assert st.session.migrations == 1
                assert server.received[0] == numbered("r", 0, 15) and len(server.carriers) == 1
                await until(lambda: active_path_validated(st.session.connection), 2,
                            "the server validated the new path")
                await carrier.close()
            finally:
                nat.close()

    run(main(), 15)
