"""Fork is a fork request at the peer (issue 9, item 8; draft 2.1), and the control frames it
rides on (core/framing.py, Rule 4).

The framer part is sans-I/O (any split of a stream mixing messages and control frames). The
protocol part runs on real loopback sockets: two taps_post endpoints over tcp and tls, and
plain asyncio / socat peers that do not speak the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taps_post as tp
from taps_post.core.framing import (
    CONTROL_MAX,
    Control,
    DeframingError,
    FrameTooLargeError,
    LengthPrefixFramer,
    LineFramer,
    RawFramer,
)
from taps_post.errors import ArgumentError, UsageError
from taps_post.runtime.fork import CHALLENGE, FORK, HELLO, LATE, OK, REFUSE
from taps_post.runtime.listener import HOLD_CAP, hold_delay

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# ---- control frames on the length-prefix framer --------------------------------------------

def test_control_frame_wire_format() -> None:
    f = LengthPrefixFramer()
    assert f.encode_control(b"HELLO") == b"\xff\xff\xff\xff\x00\x05HELLO"
    assert f.encode_control(b"") == b"\xff\xff\xff\xff\x00\x00"
    with pytest.raises(ArgumentError):
        f.encode_control(b"x" * (CONTROL_MAX + 1))


def test_control_items_come_back_in_order_and_flag_the_framer() -> None:
    enc = LengthPrefixFramer()
    f = LengthPrefixFramer(max_size=100)
    assert f.control_seen is False
    data = enc.encode(b"a") + enc.encode_control(b"HELLO") + enc.encode(b"b")
    items = f.feed(data)
    assert items == [b"a", b"HELLO", b"b"]
    assert [type(i) for i in items] == [bytes, Control, bytes]
    assert f.control_seen is True
    # feed_with builds messages with `make`, control frames stay Control
    g = LengthPrefixFramer()
    items = g.feed_with(data, lambda mv: ("msg", bytes(mv)))
    assert items == [("msg", b"a"), Control(b"HELLO"), ("msg", b"b")]
    assert type(items[1]) is Control


def test_oversize_still_refused_beside_the_marker() -> None:
    f = LengthPrefixFramer(max_size=10)
    with pytest.raises(FrameTooLargeError):
        f.feed((11).to_bytes(4, "big"))
    huge = LengthPrefixFramer(max_size=0xFFFFFFFF)  # a max_size at the marker still sees it
    assert huge.feed(huge.encode_control(b"X")) == [b"X"]
    assert huge.control_seen
    bad = LengthPrefixFramer()
    with pytest.raises(DeframingError):
        bad.feed(b"\xff\xff\xff\xff" + (CONTROL_MAX + 1).to_bytes(2, "big"))


def test_other_framers_refuse_control_frames() -> None:
    for framer in (LineFramer(), RawFramer()):
        assert framer.control_seen is False
        with pytest.raises(UsageError, match="length-prefix framer"):
            framer.encode_control(b"HELLO")


@FAST
@given(items=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_messages_and_controls_round_trip_whatever_the_split(
        items: list[tuple[bool, bytes]], cuts: list[int]) -> None:
    enc = LengthPrefixFramer()
    data = b"".join(enc.encode_control(p) if ctl else enc.encode(p) for ctl, p in items)
    f = LengthPrefixFramer(max_size=64)
    got: list[bytes] = []
    for piece in _split(data, cuts):
        got += f.feed_with(piece, bytes)
    assert [(type(g) is Control, bytes(g)) for g in got] == items
    assert f.buffered() == b""
    assert f.control_seen == any(ctl for ctl, _ in items)


# ---- the fork protocol between two taps_post endpoints -----------------------------------------

LO4 = "127.0.0.1"


@pytest.fixture(scope="module")
def cert() -> Any:
    return tp.certs.self_signed(["localhost", LO4])


class Served:
    """A Listener whose accepted carriers are queued, and whose carriers' forks are queued
    separately (what the parent carrier's accept() receives)."""

    def __init__(self, listener: tp.Listener) -> None:
        self.listener = listener
        self.carriers: asyncio.Queue[tp.Carrier] = asyncio.Queue()
        self.forks: asyncio.Queue[tuple[tp.Carrier, tp.Carrier]] = asyncio.Queue()
        listener.accept(self.on_carrier)

    def on_carrier(self, carrier: tp.Carrier) -> bool:
        self.watch(carrier)
        self.carriers.put_nowait(carrier)
        return True

    def watch(self, parent: tp.Carrier) -> None:
        def on_fork(child: tp.Carrier) -> bool:
            self.watch(child)
            self.forks.put_nowait((parent, child))
            return True

        parent.accept(on_fork)


@contextlib.asynccontextmanager
async def served(policy: tp.PolicyContext, local: tp.Local | None = None
                 ) -> AsyncIterator[Served]:
    listener = await tp.listen(local or tp.Local(address=LO4), policy=policy)
    try:
        yield Served(listener)
    finally:
        await listener.close()


async def connected(kind: str, srv: Served, policy: tp.PolicyContext, cert: Any,
                    store: tp.AssociationStore) -> tuple[tp.Carrier, tp.Carrier]:
    """A client carrier and the server's carrier for it (after one message each way)."""
    if kind == "tls":
        target: Any = tp.Remote.parse(f"tls://{LO4}:{srv.listener.port}", certificates=[cert])
    else:
        target = f"{LO4}:{srv.listener.port}"
    client = await tp.initiate(target, policy=policy, store=store)
    await client.send(b"hello")
    server = await srv.carriers.get()
    assert await server.receive() == b"hello"
    return client, server


def _policy_for(kind: str, make_policy: Any, **carrier: Any) -> tp.PolicyContext:
    stack = {"tcp": "require"} if kind == "tcp" else {"tls": "require"}
    return make_policy({"stack": stack}, carrier=carrier or None)


def _local_for(kind: str, cert: Any) -> tp.Local:
    return tp.Local(address=LO4, certificates=[cert] if kind == "tls" else [])


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_fork_arrives_at_the_parents_accept_not_the_listener(run, make_policy, store, cert,
                                                              kind) -> None:
    policy = _policy_for(kind, make_policy)

    async def main() -> None:
        async with served(policy, _local_for(kind, cert)) as srv:
            client, server = await connected(kind, srv, policy, cert, store)
            child = await client.fork()
            parent, schild = await asyncio.wait_for(srv.forks.get(), 2)
            assert parent is server
            assert srv.carriers.empty()  # the Listener never saw the fork connection
            assert child.is_active and child.stack == client.stack
            assert child.association is client.association
            assert schild.association is server.association
            assert schild.remote_address == child.local_address
            # parent and child carry their own messages, both ways
            await child.send(b"to child")
            await client.send(b"to parent")
            assert await schild.receive() == b"to child"
            assert await server.receive() == b"to parent"
            await schild.send(b"from child")
            await server.send(b"from parent")
            assert await child.receive() == b"from child"
            assert await client.receive() == b"from parent"
            # a child forks too, and its fork arrives at the child
            grandchild = await child.fork()
            p2, sgrand = await asyncio.wait_for(srv.forks.get(), 2)
            assert p2 is schild and sgrand.association is server.association
            for c in (grandchild, child, client):
                await c.close()

    run(main())


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_an_accepted_carrier_forks_once_the_client_showed_the_protocol(
        run, make_policy, store, cert, kind) -> None:
    policy = _policy_for(kind, make_policy)

    async def main() -> None:
        async with served(policy, _local_for(kind, cert)) as srv:
            client, server = await connected(kind, srv, policy, cert, store)
            with pytest.raises(tp.UsageError, match="has not shown that it speaks"):
                await server.fork()  # the client may not be taps_post at all
            pushed: asyncio.Queue[tp.Carrier] = asyncio.Queue()
            client.accept(lambda c: pushed.put_nowait(c) and None)
            child = await client.fork()
            await srv.forks.get()
            push = await server.fork()  # now it has: a fork request to the client
            cpush = await asyncio.wait_for(pushed.get(), 2)
            assert cpush.association is client.association
            assert push.association is server.association
            assert push.accepted and not cpush.accepted
            assert cpush.local_address == push.remote_address
            await push.send(b"pushed")
            assert await cpush.receive() == b"pushed"
            await cpush.send(b"back")
            assert await push.receive() == b"back"
            assert srv.carriers.empty()
            for c in (cpush, child, client):
                await c.close()

    run(main())


def test_a_refusing_parent_refuses_the_fork(run, make_policy, store, cert) -> None:
    policy = _policy_for("tcp", make_policy)

    async def main() -> None:
        async with served(policy) as srv:
            client, server = await connected("tcp", srv, policy, cert, store)
            server.accept(lambda c: False)  # takes the first fork, then refuses the rest
            first = await client.fork()
            with pytest.raises(tp.ForkRefusedError, match="refused the fork"):
                await client.fork()
            assert srv.carriers.empty()
            await first.close()
            await client.close()

    run(main())


# ---- peers that are not taps_post -----------------------------------------------------------

@contextlib.asynccontextmanager
async def raw_server(mode: str) -> AsyncIterator[tuple[int, list[bytearray]]]:
    """A plain asyncio TCP server: `echo` sends back what it gets, `silent` reads and says
    nothing. Yields its port and, per connection, the bytes it received."""
    seen: list[bytearray] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        seen.append(got)
        writers.append(writer)
        while data := await reader.read(65536):
            got += data
            if mode == "echo":
                writer.write(data)
        writer.close()

    server = await asyncio.start_server(serve, LO4, 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("mode", ["echo", "silent"])
def test_fork_against_a_raw_tcp_peer_is_refused(run, make_policy, store, mode) -> None:
    policy = _policy_for("tcp", make_policy)

    async def main() -> None:
        async with raw_server(mode) as (port, _seen):
            client = await tp.initiate(f"{LO4}:{port}", policy=policy, store=store)
            started = asyncio.get_running_loop().time()
            with pytest.raises(tp.ForkRefusedError, match="not a taps_post endpoint") as info:
                await client.fork()
            assert "forkParallel" in str(info.value)
            assert asyncio.get_running_loop().time() - started < 1.5
            if mode == "silent":
                assert "no answer within" in str(info.value)
            # the parent is untouched and still carries messages
            await client.send(b"still here")
            if mode == "echo":
                assert await client.receive() == b"still here"
            await client.close()

    run(main())


def test_fork_against_socat_is_refused(run, make_policy, store) -> None:
    policy = _policy_for("tcp", make_policy)
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")

    async def main() -> None:
        with socket.socket() as s:
            s.bind((LO4, 0))
            port = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "socat", f"TCP-LISTEN:{port},bind={LO4},reuseaddr,fork", "EXEC:cat")
        try:
            for _ in range(200):  # socat binds in its own time: wait for the port
                try:
                    client = await tp.initiate(f"{LO4}:{port}", policy=policy, store=store)
                    break
                except tp.EstablishmentError:
                    await asyncio.sleep(0.01)
            with pytest.raises(tp.ForkRefusedError):
                await client.fork()
            await client.close()
        finally:
            proc.terminate()
            await proc.wait()

    run(main())


def test_fork_parallel_opens_a_plain_connection(run, make_policy, store) -> None:
    policy = _policy_for("tcp", make_policy, **{"carrier.forkParallel": True})

    async def main() -> None:
        async with raw_server("echo") as (port, seen):
            client = await tp.initiate(f"{LO4}:{port}", policy=policy, store=store)
            child = await client.fork()
            assert child.is_active and child.association is client.association
            await child.send(b"child")
            await client.send(b"parent")
            assert await child.receive() == b"child"
            assert await client.receive() == b"parent"
            # the connection the child uses never carried a control frame
            plain = [s for s in seen if bytes(s).endswith(b"\x00\x00\x00\x05child")]
            assert plain and plain[0] == b"\x00\x00\x00\x05child"
            # and the next fork goes plain at once: no HELLO sent any more
            before = len(seen)
            second = await client.fork()
            await second.send(b"two")
            assert await second.receive() == b"two"
            assert len(seen) == before + 1 and b"HELLO" not in bytes(seen[-1])
            for c in (second, child, client):
                await c.close()

    run(main())


# ---- the server half on the wire --------------------------------------------------------------

async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LO4, port)


async def _read_control(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    assert head == b"\xff\xff\xff\xff", head
    size = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(size)


async def _hello(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A new connection that said HELLO, and the CHALLENGE nonce it got (a LATE answer, our
    HELLO slower than the Listener's hold on a loaded machine, means: a new connection)."""
    enc = LengthPrefixFramer()
    for _ in range(3):
        reader, writer = await _raw(port)
        writer.write(enc.encode_control(HELLO))
        verb, _, nonce = (await _read_control(reader)).partition(b" ")
        if verb != LATE:
            assert verb == CHALLENGE and len(nonce) == 16
            return reader, writer, nonce
        writer.close()
    raise AssertionError("LATE three times")


def test_nonces_are_single_use_and_bound_to_their_listener(run, tcp_policy) -> None:
    """Speak the protocol by hand: a CHALLENGE nonce works once, and only on a carrier the
    same Listener accepted."""
    enc = LengthPrefixFramer()

    async def main() -> None:
        async with served(tcp_policy) as a, served(tcp_policy) as b:
            # a parent connection at Listener A, announced by a first message
            pr, pw = await _raw(a.listener.port)
            pw.write(enc.encode(b"parent"))
            parent = await a.carriers.get()
            # a fork connection to Listener B: HELLO -> CHALLENGE
            _, nw, nonce = await _hello(b.listener.port)
            # B's nonce on A's carrier: refused, nothing delivered
            pw.write(enc.encode_control(FORK + b" " + nonce))
            assert await _read_control(pr) == REFUSE + b" " + nonce
            assert parent.transient is not None and b.carriers.empty() and a.forks.empty()
            # at A itself: HELLO, CHALLENGE, FORK on the parent -> OK, child at the parent
            mr, mw, nonce = await _hello(a.listener.port)
            pw.write(enc.encode_control(FORK + b" " + nonce))
            assert await _read_control(mr) == OK
            p, child = await asyncio.wait_for(a.forks.get(), 2)
            assert p is parent and a.carriers.empty()
            mw.write(enc.encode(b"on the child"))
            assert await child.receive() == b"on the child"
            # the same nonce again: refused
            pw.write(enc.encode_control(FORK + b" " + nonce))
            assert await _read_control(pr) == REFUSE + b" " + nonce
            for w in (pw, nw, mw):
                w.close()

    run(main())


def test_a_hello_after_the_hold_is_answered_late(run, tcp_policy) -> None:
    """The connection went to the application when the hold ended: a HELLO after that is
    not a fork (the client retries on a new connection)."""
    async def main() -> None:
        async with served(tcp_policy) as srv:
            reader, writer = await _raw(srv.listener.port)
            carrier = await asyncio.wait_for(srv.carriers.get(), 1)  # the hold ran out
            writer.write(LengthPrefixFramer().encode_control(HELLO))
            assert await _read_control(reader) == LATE
            assert carrier.transient is not None and carrier.transient.is_open
            assert srv.forks.empty()
            writer.close()

    run(main())


def test_a_silent_client_reaches_the_listener_after_the_short_hold(run, tcp_policy) -> None:
    """Rule 6's cost: a client that sends nothing (a server-first protocol) is handed over
    after the hold, at most HOLD_CAP; one that speaks first is handed over at its first
    byte."""

    async def main() -> None:
        async with served(tcp_policy) as srv:
            loop = asyncio.get_running_loop()
            started = loop.time()
            _, w = await _raw(srv.listener.port)
            carrier = await asyncio.wait_for(srv.carriers.get(), 1)
            waited = loop.time() - started
            assert waited < HOLD_CAP + 0.05
            assert carrier.transient is not None
            assert hold_delay(carrier.transient) <= HOLD_CAP
            w.close()

    run(main())


def test_accepted_carriers_have_an_association(run, tcp_policy, store) -> None:
    async def main() -> None:
        local = tp.Local(address=LO4)
        async with served(tcp_policy, local) as srv:
            client = await tp.initiate(f"{LO4}:{srv.listener.port}", policy=tcp_policy,
                                       store=store)
            await client.send(b"x")
            server = await srv.carriers.get()
            assoc = server.association
            assert isinstance(assoc, tp.Association)
            assert assoc.remote is not None and client.local_address is not None
            assert (assoc.remote.host, assoc.remote.port) == client.local_address
            assert assoc.local == local
            assert server in assoc.carriers
            assert [p.remote_address for p in assoc.paths] == [client.local_address]
            assert srv.listener.store.get(assoc.key) is assoc
            await client.close()

    run(main())


def test_accepted_carriers_report_the_stack_that_carried_them(run, make_policy, tcp_policy,
                                                              store) -> None:
    """Issue 9 item 11: a plain TCP client of the default MPTCP listener is `tcp` on the
    server side, in the carrier and in the Listener's trace, not `mptcp`."""
    events: list[tuple[str, dict[str, Any]]] = []

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4), policy=make_policy(),
                                   trace=lambda name, info: events.append((name, info)))
        try:
            if "mptcp" not in listener.ports:
                pytest.skip("this kernel serves no MPTCP listener")
            srv = Served(listener)
            client = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                       store=store)
            await client.send(b"x")
            server = await srv.carriers.get()
            assert client.stack == "tcp" and server.stack == "tcp"
            assert [i["stack"] for n, i in events if n == "listener.accepted"] == ["tcp"]
            await client.close()
        finally:
            await listener.close()

    run(main())


@pytest.mark.parametrize("parallel", [False, True])
def test_a_line_framed_carrier_cannot_announce_a_fork(run, make_policy, store,
                                                      parallel) -> None:
    """Only the length-prefix framer has control frames: another framer's fork is a usage
    error naming carrier.forkParallel, or with it a plain parallel connection."""
    policy = _policy_for("tcp", make_policy,
                         **({"carrier.forkParallel": True} if parallel else {}))

    async def main() -> None:
        async with raw_server("echo") as (port, seen):
            client = await tp.initiate(f"{LO4}:{port}", policy=policy, store=store,
                                       framer=tp.LineFramer())
            await client.send(b"parent")
            assert await client.receive() == b"parent"
            if not parallel:
                with pytest.raises(tp.UsageError, match="forkParallel"):
                    await client.fork()
                assert len(seen) == 1
            else:
                child = await client.fork()
                await child.send(b"child")
                assert await child.receive() == b"child"
                assert len(seen) == 2 and bytes(seen[1]) == b"child\n"
                await child.close()
            await client.close()

    run(main())
