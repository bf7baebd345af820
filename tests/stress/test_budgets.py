"""Byte budgets (issue 10): a peer that never reads, or that sends without end, costs a
bounded number of bytes per carrier, on TCP and TLS.

What is measured: our own counters (the inbox's bytes plus the framer's partial message, the
send queue's bytes) and, for the unread client, the resident memory of the client process,
which runs in a child interpreter so nothing else in the test moves it. The counters are read
through the private inbox and framer buffer as well as `Transient.buffered_bytes`, so the
same test measures the tree it runs against (and fails on one without budgets rather than
erroring out). Observation windows (a sender that made no progress for STALL seconds is
blocked) are the behaviour under test and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sizing import sized

import taps_post as tp
from helpers import sock_recvfrom

LO4 = "127.0.0.1"
MiB = 1 << 20
CHUNK = 256 * 1024
"""What one read may add past the budget (asyncio reads at most 256 KiB at a time)."""
STALL = 0.3
"""Seconds without progress after which a sender counts as blocked (observation window)."""


def held_bytes(t: Any) -> int:
    """Received bytes a Transient holds: inbox payloads plus the partial message."""
    inbox = sum(map(len, t._inbox))
    partial = len(getattr(t.framer, "_buf", b""))
    counted = getattr(t, "buffered_bytes", None)
    if counted is not None:
        assert counted == inbox + partial, (counted, inbox, partial)
    return inbox + partial


def stack_policy(stack: str, **carrier: Any) -> tp.PolicyContext:
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "x", "set": {"stack": {stack: "require"}}}]}
    doc = ({"version": 1, "layer": "carrier", "rules": [{"id": "c", "set": carrier}]}
           if carrier else None)
    return tp.PolicyContext(system=[], app=app, carrier=doc, app_name="t")


@pytest.fixture(scope="module")
def cert() -> Any:
    return tp.certs.self_signed(["127.0.0.1"])


@contextlib.asynccontextmanager
async def listening(stack: str, cert: Any) -> AsyncIterator[tp.Listener]:
    certs = [cert] if stack == "tls" else []
    listener = await tp.listen(tp.Local(address=LO4, port=0, certificates=certs),
                               policy=stack_policy(stack))
    try:
        yield listener
    finally:
        await listener.close()


async def next_carrier(listener: tp.Listener) -> tp.Carrier:
    async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
        return await anext(it)


# ---- framers accumulate, never preallocate ---------------------------------------------------


def test_framers_count_what_arrived_of_a_message_not_what_was_announced() -> None:
    """A peer announcing a 16 MiB message costs what it sent so far: `pending_size` is the
    bytes held, and `discard()` gives them back."""
    from taps_post.core.framing import LengthPrefixFramer, LineFramer, RawFramer

    f = LengthPrefixFramer(16 * MiB)
    assert f.feed((16 * MiB).to_bytes(4, "big") + b"x" * 10) == []
    assert f.pending_size == 14
    f.feed(b"y" * 1000)
    assert f.pending_size == 1014
    f.discard()
    assert f.pending_size == 0 and f.feed(b"\x00\x00\x00\x01z") == [b"z"]
    line = LineFramer(b"\n", 100)
    assert line.feed(b"abc\nde") == [b"abc"] and line.pending_size == 2
    assert RawFramer(100).pending_size == 0


# ---- a client that does not read (child process) --------------------------------------------

CLIENT = r'''
import asyncio, json, os, sys
import taps_post as tp
from taps_post.certs import Certificate

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def held(t):
    inbox = sum(map(len, t._inbox))
    partial = len(getattr(t.framer, "_buf", b""))
    return inbox, partial, getattr(t, "buffered_bytes", None)


async def main():
    stack, port, pem = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "x", "set": {"stack": {stack: "require"}}}]}
    policy = tp.PolicyContext(system=[], app=app, app_name="t")
    certs = [Certificate(cert_pem=open(pem).read())] if pem else []
    remote = tp.Remote.parse(f"{stack}://127.0.0.1:{port}", certificates=certs)
    carrier = await tp.initiate(remote, policy=policy, store=tp.AssociationStore())
    await carrier.send(b"hello")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    base = rss()
    print(json.dumps({"rss": base}), flush=True)
    while line := await reader.readline():
        cmd, _, arg = line.decode().strip().partition(" ")
        t = carrier.transients[0]
        if cmd == "stats":
            inbox, partial, counted = held(t)
            print(json.dumps({"rss": rss() - base, "inbox": inbox, "partial": partial,
                              "counted": counted, "messages": len(t._inbox),
                              "paused": not t.transport.is_reading(),
                              "budget": getattr(t, "recv_budget", None)}), flush=True)
        elif cmd == "drain":
            ok = 0
            for i in range(int(arg)):
                m = await carrier.receive()
                ok += int(len(m) == 1 << 20 and int.from_bytes(m[:4], "big") == i)
            print(json.dumps({"drained": ok}), flush=True)
    await carrier.close()


asyncio.run(main())
'''


@pytest.mark.parametrize("stack", ["tcp", "tls"])
def test_a_client_that_does_not_read_holds_at_most_its_receive_budget(
        run, stack, cert, tmp_path: Path) -> None:
    """The issue's 1,500 x 1 MiB to a client that does not read (it grew from 37 MB to
    1,555 MB): its buffered bytes stay within recvBudget + one message + one read, its
    resident memory grows < 64 MiB, and the sender is held back by TCP's window."""
    n = sized(1500, 1500)
    pem = ""
    if stack == "tls":
        pem = str(tmp_path / "cert.pem")
        Path(pem).write_text(cert.cert_pem)

    async def main() -> None:
        async with listening(stack, cert) as listener:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-c", CLIENT, stack, str(listener.port), pem,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            stdin, stdout = proc.stdin, proc.stdout

            async def ask(cmd: str) -> dict[str, Any]:
                stdin.write(cmd.encode() + b"\n")
                await stdin.drain()
                reply: dict[str, Any] = json.loads(await stdout.readline())
                return reply

            try:
                json.loads(await stdout.readline())  # connected, baseline RSS taken
                server = await next_carrier(listener)
                assert await server.receive() == b"hello"
                body = bytes(MiB - 4)
                sent = 0

                async def sender() -> None:
                    nonlocal sent
                    for i in range(n):
                        await server.send(i.to_bytes(4, "big") + body)
                        sent += 1

                task = asyncio.create_task(sender())
                st = server.transients[0]
                loop = asyncio.get_running_loop()
                last, since = -1, loop.time()
                while True:  # until the sender is blocked (or the client took too much)
                    stats = await ask("stats")
                    if stats["inbox"] + stats["partial"] > 64 * MiB or task.done():
                        break
                    if sent != last:
                        last, since = sent, loop.time()
                    elif loop.time() - since > STALL and stats["paused"]:
                        break
                    await asyncio.sleep(0.05)  # polling another process: the window
                held = stats["inbox"] + stats["partial"]
                budget = stats["budget"] or 4 * MiB
                assert held <= budget + MiB + CHUNK, (
                    f"the client buffered {held} bytes ({stats['messages']} messages) with "
                    f"a {budget}-byte receive budget; {sent} of {n} sent")
                assert stats["paused"], "the client kept reading"
                assert stats["counted"] == held
                assert stats["rss"] < 64 * MiB, f"client RSS grew {stats['rss'] >> 20} MiB"
                assert not task.done() and sent < n, "the sender was never held back"
                assert st.queued_bytes <= 1 * MiB + MiB  # send budget + one message
                print(f"{stack}: unread client held {held} bytes ({stats['messages']} "
                      f"messages), RSS +{stats['rss'] >> 20} MiB; {sent} of {n} sent; "
                      f"server queue {st.queued_bytes}")
                # Then it reads: everything arrives, in order, and the sender finishes.
                reply = await ask(f"drain {n}")
                assert reply["drained"] == n
                await task
                await server.close()
            finally:
                if proc.returncode is None:
                    stdin.close()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()

    run(main(), timeout=60)


# ---- a peer that never reads ----------------------------------------------------------------


def test_a_peer_that_never_reads_blocks_send_within_the_send_budget(run) -> None:
    """carrier.sendBudget 256 KiB: send() waits once that much is queued (the kernel's and
    asyncio's buffers being full), so the queue never holds more than budget + 1 message."""
    budget = 256 * 1024
    msg = 64 * 1024

    async def main() -> None:
        lsock = socket.socket()
        lsock.bind((LO4, 0))
        lsock.listen(1)
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        loop = asyncio.get_running_loop()
        policy = stack_policy("tcp", **{"carrier.sendBudget": budget})
        carrier = tp.initiate(f"tcp://{LO4}:{port}", policy=policy, store=tp.AssociationStore())
        accept = asyncio.ensure_future(loop.sock_accept(lsock))
        await carrier.activate()
        peer, _ = await accept  # never reads
        try:
            t = carrier.transients[0]
            sent = 0

            async def sender() -> None:
                nonlocal sent
                while True:
                    await carrier.send(bytes(msg))
                    sent += 1

            task = asyncio.create_task(sender())
            last, since, most = -1, loop.time(), 0
            while loop.time() - since < STALL:  # observation window: no progress
                most = max(most, t.queued_bytes)
                if sent != last:
                    last, since = sent, loop.time()
                await asyncio.sleep(0.01)
            assert not task.done()
            assert most <= budget + msg, f"{most} bytes queued over a {budget}-byte budget"
            assert t.queued_bytes > budget - msg  # it is the budget that holds send()
            print(f"never-reading peer: at most {most} bytes queued (budget {budget})")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            carrier.abort()
            peer.close()
            lsock.close()

    run(main(), timeout=30)


# ---- a partial message counts ---------------------------------------------------------------


def test_a_partial_message_counts_against_the_receive_budget(run) -> None:
    """Ten messages wait unread while the peer streams an 8 MiB message: reading pauses once
    inbox + partial pass the 4 MiB budget (the partial is not left to grow to 8 MiB); once the
    application takes the ten, the big message completes although it is over the budget
    (one message up to message.maxSize always may when nothing else is buffered)."""
    big = 8 * MiB

    async def main() -> None:
        lsock = socket.socket()
        lsock.bind((LO4, 0))
        lsock.listen(1)
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        loop = asyncio.get_running_loop()
        carrier = tp.initiate(f"tcp://{LO4}:{port}", policy=stack_policy("tcp"),
                              store=tp.AssociationStore())
        accept = asyncio.ensure_future(loop.sock_accept(lsock))
        await carrier.activate()
        peer, _ = await accept
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        try:
            t = carrier.transients[0]
            small = b"".join(len(p).to_bytes(4, "big") + p
                             for p in (b"m%d" % i for i in range(10)))
            stream = small + big.to_bytes(4, "big") + bytes(big)
            writer = asyncio.ensure_future(loop.sock_sendall(peer, stream))
            last, since = -1, loop.time()
            while loop.time() - since < STALL:  # observation window: no progress
                h = held_bytes(t)
                if h != last:
                    last, since = h, loop.time()
                await asyncio.sleep(0.01)
            h = held_bytes(t)
            assert h <= 4 * MiB + CHUNK, f"{h} bytes held over a 4 MiB budget"
            assert len(t._inbox) == 10 and not writer.done()
            assert not t.transport.is_reading()
            print(f"partial: {h} bytes held when reading paused (budget {4 * MiB})")
            for i in range(10):
                assert await carrier.receive() == b"m%d" % i
            got = await carrier.receive()  # over the budget, alone: it completes
            assert len(got) == big
            await writer
            assert held_bytes(t) == 0
        finally:
            carrier.abort()
            peer.close()
            lsock.close()

    run(main(), timeout=30)


# ---- datagrams: dropped, not queued ---------------------------------------------------------


def test_datagrams_over_the_receive_budget_are_dropped_and_counted(run) -> None:
    """A UDP socket cannot pause: what would go over carrier.recvBudget is dropped (and
    counted in `Transient.dropped`) instead of queued."""
    budget = 64 * 1024

    async def main() -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind((LO4, 0))
        raw.setblocking(False)
        port = raw.getsockname()[1]
        policy = tp.PolicyContext(
            system=[], app={"version": 1, "layer": "app",
                            "rules": [{"id": "d", "use": ["unreliable-datagram"]}]},
            carrier={"version": 1, "layer": "carrier",
                     "rules": [{"id": "c", "set": {"carrier.recvBudget": budget}}]},
            app_name="t")
        carrier = await tp.initiate(f"udp://{LO4}:{port}", policy=policy,
                                    store=tp.AssociationStore())
        try:
            await carrier.send(b"hi")
            _, addr = await sock_recvfrom(raw, 100)
            t = carrier.transients[0]
            n = 200
            for i in range(n):
                raw.sendto(i.to_bytes(4, "big") + bytes(996), addr)
                await asyncio.sleep(0)  # let the carrier read (loopback keeps them)
            await asyncio.sleep(0.1)  # window: whatever is in flight arrives
            dropped = getattr(t, "dropped", 0)
            held = sum(map(len, t._inbox))
            assert held <= budget + 1000, f"{held} bytes queued over a {budget}-byte budget"
            assert dropped > 0 and dropped + len(t._inbox) <= n
            print(f"udp: {held} bytes held, {len(t._inbox)} kept, {dropped} dropped")
            first = await carrier.receive()
            assert int.from_bytes(first[:4], "big") == 0  # the first ones were kept
        finally:
            carrier.abort()
            raw.close()

    run(main(), timeout=15)
