"""Peers that misbehave at the edges of a connection's life, on real sockets.

Rule 1: every fault is made by a real peer: a raw asyncio or socket peer for half-close and
close-after-accept, a server *process* killed and started again on the same port for the
restart, nftables in a network namespace (tests/netns.py) for the black hole.
Rule 2: each test checks what the application sees (every message once, EOF, a clear
ConnectionClosedError) and what the process keeps afterwards: open fds (/proc/self/fd) and
asyncio tasks back to their count before the fault.
Rule 3: tests needing root (the namespace) skip with the reason when not root; the file runs
in well under 60 s at the small size.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sizing import sized

import taps_post as tp

LO4 = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
LEN = struct.Struct(">I")


def frame(data: bytes) -> bytes:
    return LEN.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = LEN.unpack(await reader.readexactly(4))
    return await reader.readexactly(n)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(before_fds: int, until: Any, what: str) -> None:
    """fds and tasks back to where they were: closing transports let go of their sockets a
    loop iteration or two after close() returned."""
    me = asyncio.current_task()

    def clean() -> bool:
        gc.collect()
        return fds() <= before_fds and not [t for t in asyncio.all_tasks() if t is not me]

    await until(clean, timeout=10.0,
                what=lambda: f"{what}: fds {fds()} (before {before_fds}), tasks "
                             f"{[t for t in asyncio.all_tasks() if t is not me]}")


async def next_carrier(listener: tp.Listener) -> tp.Carrier:
    async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
        return await anext(it)


# ---- half-close ------------------------------------------------------------------------------


def test_peer_half_closes_after_sending_we_get_all_then_eof_and_can_reply(
        run, until, warm_loop, tcp_policy) -> None:
    """A client sends three messages and shuts its sending side (FIN): the accepted carrier
    delivers all three, then ConnectionClosedError (EOF), and its reply still reaches the
    client, whose receiving side is open."""

    async def main() -> None:
        await warm_loop()  # the loop's own one-time descriptors are not a leak
        before = fds()
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        reader, writer = await asyncio.open_connection(LO4, listener.port)
        for i in range(3):
            writer.write(frame(f"m{i}".encode()))
        writer.write_eof()  # shutdown(SHUT_WR)
        carrier = await next_carrier(listener)
        got = [bytes(await carrier.receive()) for _ in range(3)]
        assert got == [b"m0", b"m1", b"m2"]
        with pytest.raises(tp.ConnectionClosedError):
            await asyncio.wait_for(carrier.receive(), 5)
        await carrier.send(b"reply after your FIN")
        assert await asyncio.wait_for(read_frame(reader), 5) == b"reply after your FIN"
        await carrier.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then our FIN
        writer.close()
        await writer.wait_closed()
        await listener.close()
        await settled(before, until, "after a half-closed peer")

    run(main(), timeout=30)


def test_server_half_closes_after_sending_our_reply_rides_the_same_connection(
        run, until, warm_loop, tcp_policy, store) -> None:
    """A server sends three messages and shuts its sending side: our initiated carrier
    delivers all three, sees the end, and a send afterwards reaches that server on the
    *same* connection (its receiving side is open), not on a new one."""

    async def main() -> None:
        await warm_loop()  # the loop's own one-time descriptors are not a leak
        before = fds()
        connections: list[bytes] = []
        done = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(b"")
            for i in range(3):
                writer.write(frame(f"s{i}".encode()))
            writer.write_eof()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                data = await asyncio.wait_for(read_frame(reader), 5)
                if not done.done():
                    done.set_result((len(connections), data))
            writer.close()

        server = await asyncio.start_server(handle, LO4, 0)
        port = server.sockets[0].getsockname()[1]
        carrier = await tp.initiate(f"tcp://{LO4}:{port}", policy=tcp_policy, store=store)
        got = [bytes(await carrier.receive()) for _ in range(3)]
        assert got == [b"s0", b"s1", b"s2"]
        with pytest.raises(tp.ConnectionClosedError):
            await asyncio.wait_for(carrier.receive(), 5)
        await carrier.send(b"back")
        which, data = await asyncio.wait_for(done, 5)
        assert (which, data) == (1, b"back"), "the reply went on a new connection"
        await carrier.close()
        server.close()
        await server.wait_closed()
        await settled(before, until, "after a half-closing server")

    run(main(), timeout=30)


# ---- closed right after accept ---------------------------------------------------------------


def test_clients_that_close_right_after_connect_leave_nothing_behind(
        run, until, warm_loop, tcp_policy) -> None:
    """Clients that connect and close at once (FIN, or RST with SO_LINGER 0), many of them:
    any carrier the Listener yields for them fails with ConnectionClosedError, none leaks an
    fd or a task, and a well-behaved client is served afterwards."""
    n = sized(100, 2000)

    async def main() -> None:
        await warm_loop()  # the loop's own one-time descriptors are not a leak
        before = fds()
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        outcomes: list[str] = []
        tasks: set[asyncio.Task[None]] = set()

        async def serve(c: tp.Carrier) -> None:
            try:
                msg = await asyncio.wait_for(c.receive(), 10)
                await c.send(b"re:" + bytes(msg))
                outcomes.append("served")
            except tp.ConnectionClosedError:
                outcomes.append("closed")
            finally:
                await c.close()

        def on_carrier(c: tp.Carrier) -> bool:
            t = asyncio.ensure_future(serve(c))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            return True

        listener.accept(on_carrier)
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(BlockingIOError):
                s.connect((LO4, listener.port))
            await asyncio.get_running_loop().sock_connect(s, (LO4, listener.port))
            s.close()
        await until(lambda: len(outcomes) >= n and not tasks, timeout=20,
                    what=lambda: f"{len(outcomes)} of {n} carriers ended")
        assert set(outcomes) == {"closed"}, outcomes
        reader, writer = await asyncio.open_connection(LO4, listener.port)
        writer.write(frame(b"hello"))
        assert await asyncio.wait_for(read_frame(reader), 5) == b"re:hello"
        writer.close()
        await writer.wait_closed()
        await until(lambda: not tasks, timeout=10)
        await listener.close()
        await settled(before, until, "after clients closed at once")

    run(main(), timeout=50)


def test_server_that_closes_right_after_accept_fails_the_carrier_clearly(
        run, until, warm_loop, tcp_policy, store) -> None:
    """A server that accepts and closes at once, by FIN or by RST: the carrier's receive
    ends with ConnectionClosedError saying which (after a RST the carrier is dormant, so the
    next send re-establishes it), and after close() nothing is left."""

    async def main() -> None:
        await warm_loop()  # the loop's own one-time descriptors are not a leak
        before = fds()
        accepted = [0]

        async def handle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted[0] += 1
            sock = writer.get_extra_info("socket")
            if accepted[0] % 2 == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

        server = await asyncio.start_server(handle, LO4, 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(4):  # FIN, RST, FIN, RST
            carrier = await tp.initiate(f"tcp://{LO4}:{port}", policy=tcp_policy, store=store)
            with pytest.raises(tp.ConnectionClosedError) as err:
                await asyncio.wait_for(carrier.receive(), 5)
            if accepted[0] % 2:  # FIN: our side may still send (half-closed), still active
                assert "the peer closed" in str(err.value), str(err.value)
            else:  # RST: the Transient is gone, the carrier dormant and says why
                assert "reset" in str(err.value), str(err.value)
                assert carrier.is_dormant and not carrier.is_active, carrier
            await carrier.close()
        server.close()
        await server.wait_closed()
        await settled(before, until, "after a server that closed at once")

    run(main(), timeout=30)


# ---- server restarted while carriers are dormant ---------------------------------------------

SERVER = r"""
import asyncio, json, sys
import taps_post as tp

async def main() -> None:
    port = int(sys.argv[1])
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "t", "set": {"stack.tcp": "require"}}]}, app_name="srv")
    listener = await tp.listen(tp.Local(address="127.0.0.1", port=port), policy=policy)
    tasks = set()

    async def serve(c):
        try:
            async for msg in c:
                print(json.dumps({"got": bytes(msg).decode()}), flush=True)
                await c.send(b"re:" + bytes(msg))
        except tp.ConnectionClosedError:
            pass
        finally:
            await c.close()

    def accept(c):
        t = asyncio.ensure_future(serve(c))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    listener.accept(accept)
    print(json.dumps({"port": listener.port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@contextlib.contextmanager
def server_process(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-P", "-c", SERVER, str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())
        assert hello["port"] == port, hello
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def received(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    return [json.loads(line)["got"] for line in proc.stdout if line.startswith('{"got"')]


def test_server_restarted_while_carriers_are_dormant_they_reactivate_exactly_once(
        run, until, warm_loop, make_policy, store) -> None:
    """N carriers exchange message 0 with a server process, then go dormant (their idle
    timeout, 1 s, closes each connection); the server process is killed and a new one starts
    on the same port; each carrier's next send re-activates it against the new process.
    Every message reaches a server exactly once, every reply comes back once, and nothing is
    left after close."""
    n = sized(50, 1000)
    policy = make_policy({"stack": {"tcp": "require"}, "carrier.idleTimeout": 1000})
    with socket.socket() as s:
        s.bind((LO4, 0))
        port = s.getsockname()[1]
    first = server_process(port)
    proc1 = first.__enter__()
    replies: dict[str, int] = {}

    async def phase(carriers: list[tp.Carrier], k: int) -> None:
        async def one(i: int, c: tp.Carrier) -> None:
            await c.send(f"{i}:{k}".encode())
            reply = bytes(await asyncio.wait_for(c.receive(), 20)).decode()
            replies[reply] = replies.get(reply, 0) + 1
        await asyncio.gather(*(one(i, c) for i, c in enumerate(carriers)))

    async def main() -> list[str]:
        await warm_loop()  # the loop's own one-time descriptors are not a leak
        before = fds()
        remote = tp.Remote.parse(f"tcp://{LO4}:{port}")
        carriers = [tp.initiate(remote, policy=policy, store=store) for _ in range(n)]
        await phase(carriers, 0)
        def states() -> str:
            return f"every carrier dormant: {collections.Counter(repr(c)[-8:] for c in carriers)}"

        await until(lambda: all(c.is_dormant and not c.is_active for c in carriers),
                    timeout=10, what=states)
        proc1.send_signal(signal.SIGKILL)
        proc1.wait()
        t0 = time.monotonic()
        with server_process(port) as proc2:
            await phase(carriers, 1)
            reactivated = time.monotonic() - t0
            await phase(carriers, 2)
            await asyncio.gather(*(c.close() for c in carriers))
            assert proc2.stdin is not None and proc2.stdout is not None
            proc2.stdin.close()
            proc2.terminate()
            second = received(proc2)
            proc2.stdout.close()  # the pipes count among our fds too
        await settled(before, until, "after the restart")
        print(f"{n} carriers re-activated in {reactivated:.2f} s")
        return second

    try:
        second = run(main(), timeout=50)
        first_got = received(proc1)
    finally:
        first.__exit__(None, None, None)
    want1 = sorted(f"{i}:0" for i in range(n))
    want2 = sorted(f"{i}:{k}" for i in range(n) for k in (1, 2))
    assert sorted(first_got) == want1, "first server: lost or duplicated"
    assert sorted(second) == want2, "second server: lost or duplicated"
    assert replies == {f"re:{i}:{k}": 1 for i in range(n) for k in range(3)}


# ---- a black-holed path during a race --------------------------------------------------------

RACE_SERVER = r"""
import asyncio, json, sys
import taps_post as tp

async def main() -> None:
    cert = tp.certs.self_signed(["svc", "localhost"])
    stack = sys.argv[1]
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "t", "set": {f"stack.{stack}": "require"}}]}, app_name="srv")
    listener = await tp.listen(tp.Local(port=5002, certificates=[cert]), policy=policy)
    tasks = set()

    async def serve(c):
        try:
            async for msg in c:
                await c.send(b"re:" + bytes(msg))
        except tp.ConnectionClosedError:
            pass
        finally:
            await c.close()

    def accept(c):
        t = asyncio.ensure_future(serve(c))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    listener.accept(accept)
    print(json.dumps({"ports": listener.ports, "pem": cert.cert_pem}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""

RACE_CLIENT = r"""
import asyncio, gc, json, os, sys, time
import taps_post as tp

def fds():
    return len(os.listdir("/proc/self/fd"))

async def main() -> None:
    stack, pem, delay = sys.argv[1], sys.argv[2], int(sys.argv[3])
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "t", "set": {f"stack.{stack}": "require", "racing.attemptDelay": delay}}]},
        app_name="cli")
    remote = tp.Remote.parse(f"{stack}://svc:5002", certificates=[tp.certs.Certificate(pem)])
    store = tp.AssociationStore()
    # The path monitor's rtnetlink socket is the process's for its lifetime (opened by the
    # first watched carrier): open it first, so only what the race opened is counted.
    await tp.path_monitor().prepare()
    before = fds()
    t0 = time.monotonic()
    carrier = await tp.initiate(remote, policy=policy, store=store)
    ready = (time.monotonic() - t0) * 1000
    await carrier.send(b"ping")
    echo = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
    during = fds() - before
    winner = carrier.candidate.to_dict()
    await carrier.close()
    me = asyncio.current_task()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gc.collect()
        left = fds() - before
        tasks = [repr(t) for t in asyncio.all_tasks() if t is not me]
        if left <= 0 and not tasks:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"ready_ms": ready, "echo": echo, "winner": winner, "fds_during": during,
                      "fds_left": left, "tasks_left": tasks}))

asyncio.run(main())
"""


@pytest.mark.parametrize("stack", ["tls", "quic"])
def test_blackholed_path_during_a_race_wins_on_the_other_and_leaves_no_fd(stack: str) -> None:
    """`svc` resolves to B's path-1 and path-2 addresses; nftables in B drops everything to
    the path-1 address (SYNs or QUIC Initials vanish). The race starts path 1, then path 2
    after attemptDelay; path 2 wins within attemptDelay plus a handshake, the black-holed
    attempt is cancelled (no half-open socket, no fd in the client once the carrier is
    closed). TCP's plain race is covered by tests/runtime/test_racing_netns.py."""
    sys.path.insert(0, str(ROOT / "tests"))
    from netns import B1_V4, B2_V4, topology

    delay = 150
    with topology("tpf") as topo:
        topo.hosts(topo.a, {"svc": [B1_V4, B2_V4]})
        topo.blackhole(topo.b, daddr=B1_V4, tcp_only=False)
        with topo.spawn(topo.b, RACE_SERVER, stack) as server:
            hello = server.read_json(15)
            out = topo.run_python(topo.a, RACE_CLIENT, stack, hello["pem"], str(delay),
                                  timeout=30)
        syn_sent = topo.exec(topo.a, "ss", "-Htn", "state", "syn-sent").stdout.strip()
    assert out["echo"] == "re:ping", out
    assert out["winner"]["remote_address"] == B2_V4, out
    assert delay * 0.9 <= out["ready_ms"] < delay + 600, out
    assert out["fds_left"] <= 0 and out["tasks_left"] == [], out
    assert syn_sent == "", syn_sent
