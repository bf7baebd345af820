"""Idle timeout (issue 10): a carrier closes after carrier.idleTimeout without a whole
message either way, so peers that trickle bytes of a message they never finish (slowloris),
or that park most of a maximal message, are cut off and their memory goes back.

The abusive peers are raw sockets; the Listener and the well-behaved client are ours. A
peer's end is seen as its next send failing (we reset the connection) or its read ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from sizing import sized

import taps_post as tp

LO4 = "127.0.0.1"
MiB = 1 << 20
IDLE_MS = 1000


def tcp_policy(**carrier: Any) -> tp.PolicyContext:
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "x", "set": {"stack": {"tcp": "require"}}}]}
    doc = ({"version": 1, "layer": "carrier", "rules": [{"id": "c", "set": carrier}]}
           if carrier else None)
    return tp.PolicyContext(system=[], app=app, carrier=doc, app_name="t")


@contextlib.asynccontextmanager
async def echo_server(policy: tp.PolicyContext) -> AsyncIterator[tuple[tp.Listener,
                                                                       list[tp.Carrier]]]:
    """A Listener echoing every message on every carrier it accepts (kept in the list)."""
    listener = await tp.listen(tp.Local(address=LO4, port=0), policy=policy)
    accepted: list[tp.Carrier] = []
    tasks: set[asyncio.Task[None]] = set()

    async def echo(carrier: tp.Carrier) -> None:
        with contextlib.suppress(tp.ConnectionClosedError):
            async for m in carrier:
                await carrier.send(bytes(m))

    async def accept() -> None:
        async for carrier in listener:
            accepted.append(carrier)
            task = asyncio.create_task(echo(carrier))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.create_task(accept())
    try:
        yield listener, accepted
    finally:
        acceptor.cancel()
        for task in list(tasks):
            task.cancel()
        for c in accepted:
            c.abort()
        await listener.close()


def idle_error(carrier: tp.Carrier) -> BaseException | None:
    t = carrier.transient
    return None if t is None else t.failure


def test_slowloris_peers_are_cut_at_the_idle_timeout_while_a_client_is_served(run) -> None:
    """200 peers each trickle one byte of a never-finished length-prefixed message every
    100 ms to a Listener with carrier.idleTimeout 1000 ms: all are closed about 1 s after
    they connected (IdleTimeoutError), while a well-behaved client's echo keeps going."""
    n = sized(200, 1000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with echo_server(tcp_policy(**{"carrier.idleTimeout": IDLE_MS})) as (
                listener, accepted):
            port = listener.port
            socks: list[socket.socket] = []
            opened: dict[int, float] = {}
            ended: dict[int, float] = {}
            for i in range(n):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, (LO4, port))
                socks.append(s)
                opened[i] = loop.time()
            stream = (4096).to_bytes(4, "big") + b"x" * 4096  # never finished below

            async def trickle() -> None:
                pos = 0
                while len(ended) < n and pos < len(stream):
                    for i, s in enumerate(socks):
                        if i in ended:
                            continue
                        try:
                            s.send(stream[pos:pos + 1])
                        except OSError:
                            ended[i] = loop.time()
                    pos += 1
                    await asyncio.sleep(0.1)  # the abuse itself: one byte per 100 ms

            client = await tp.initiate(f"tcp://{LO4}:{port}", policy=tcp_policy(),
                                       store=tp.AssociationStore())
            served = 0

            async def well_behaved() -> None:
                nonlocal served
                while len(ended) < n:
                    await client.send(b"ping %d" % served)
                    assert await client.receive() == b"ping %d" % served
                    served += 1
                    await asyncio.sleep(0.05)  # a request every 50 ms

            abuse = asyncio.create_task(trickle())
            await asyncio.wait_for(asyncio.gather(abuse, well_behaved()), 20)
            lasted = sorted(ended[i] - opened[i] for i in range(n))
            assert len(ended) == n
            assert lasted[-1] <= IDLE_MS / 1000 + 1.0, (
                f"slowest slowloris peer lasted {lasted[-1]:.2f} s")
            assert lasted[0] >= IDLE_MS / 1000 - 0.05, f"one was cut after {lasted[0]:.2f} s"
            cut = [c for c in accepted if isinstance(idle_error(c), tp.errors.IdleTimeoutError)]
            assert len(cut) == n, f"{len(cut)} of {n} carriers ended by the idle timeout"
            assert served >= 10 and client.is_active
            print(f"slowloris x{n}: cut after {lasted[0]:.2f}..{lasted[-1]:.2f} s; "
                  f"{served} requests served meanwhile")
            await client.close()
            for s in socks:
                s.close()

    run(main(), timeout=40)


def test_peers_parking_most_of_a_maximal_message_are_cut_and_released(run) -> None:
    """30 peers each send 16 MiB - 1 bytes of a 16 MiB message and stall (the issue: 480 MB
    pinned indefinitely): the idle timeout cuts each, and the bytes it held go back (the
    carrier's framer and inbox hold 0 afterwards)."""
    n = sized(30, 100)
    size = 16 * MiB

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with echo_server(tcp_policy(**{"carrier.idleTimeout": IDLE_MS})) as (
                listener, accepted):
            port = listener.port
            stream = size.to_bytes(4, "big") + bytes(size - 1)
            peak = 0

            async def park() -> None:
                s = socket.socket()
                s.setblocking(False)
                try:
                    await loop.sock_connect(s, (LO4, port))
                    with contextlib.suppress(OSError):
                        await loop.sock_sendall(s, stream)
                        await loop.sock_recv(s, 1)  # stalls here until we are cut off
                finally:
                    s.close()

            def held() -> list[int]:
                out = []
                for c in accepted:
                    t = c.transient
                    if t is not None:
                        out.append(len(getattr(t.framer, "_buf", b"")) + sum(map(len, t._inbox)))
                return out

            peers = [asyncio.create_task(park()) for _ in range(n)]
            started = loop.time()
            pending = set(peers)
            while pending:
                peak = max([peak, *held()])
                _, pending = await asyncio.wait(pending, timeout=0.05)
                assert loop.time() - started < 15, (
                    f"{len(pending)} peers still connected; held {sorted(held())[-3:]}")
            assert len(accepted) == n
            cut = [c for c in accepted if isinstance(idle_error(c), tp.errors.IdleTimeoutError)]
            assert len(cut) == n, f"{len(cut)} of {n} carriers ended by the idle timeout"
            assert held() == [0] * n, "bytes of cut-off messages are still held"
            assert peak <= size + MiB
            print(f"parking x{n}: all cut after {loop.time() - started:.2f} s; peak held "
                  f"{peak} bytes per carrier, 0 after")

    run(main(), timeout=40)


def test_accepted_carriers_default_to_30_s_initiated_ones_to_never(run) -> None:
    """carrier.idleTimeout's defaults: 30 s on accepted carriers (the listen Decision's
    default), off on initiated ones."""

    async def main() -> None:
        async with echo_server(tcp_policy()) as (listener, accepted):
            client = await tp.initiate(f"tcp://{LO4}:{listener.port}", policy=tcp_policy(),
                                       store=tp.AssociationStore())
            await client.send(b"x")
            assert await client.receive() == b"x"
            server = accepted[0]
            assert getattr(server.transient, "idle_timeout", None) == 30.0
            assert getattr(client.transient, "idle_timeout", None) == 0.0
            await client.close()

    run(main(), timeout=15)


def test_a_stream_made_with_as_stream_is_not_cut_by_the_idle_timeout(run) -> None:
    """An accepted carrier turned into a stream (as_stream()) is the application's byte
    stream: the carrier's idle timer stops, a quiet stream stays open."""

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4, port=0),
                                   policy=tcp_policy(**{"carrier.idleTimeout": 200}))
        try:
            client = await tp.initiate(f"tcp://{LO4}:{listener.port}", policy=tcp_policy(),
                                       store=tp.AssociationStore())
            await client.activate()
            async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
                server = await anext(it)
            reader, writer = await server.as_stream()
            await asyncio.sleep(0.5)  # window: longer than the idle timeout
            _creader, cwriter = await client.as_stream()
            cwriter.write(b"still there\n")
            assert await asyncio.wait_for(reader.readline(), 2) == b"still there\n"
            writer.close()
            cwriter.close()
        finally:
            await listener.close()

    run(main(), timeout=15)


def test_a_large_reply_to_a_slow_steady_reader_is_not_cut_by_the_idle_timeout(run) -> None:
    """A Listener with carrier.idleTimeout 1000 ms sends one 4 MiB reply to a raw client
    that reads it steadily at about 1.3 MB/s (64 KiB every 50 ms, a 64 KiB receive buffer):
    no whole message goes either way for ~3 s, but our bytes keep going out, so the
    carrier is not idle; the client gets the whole reply and the carrier did not fail."""
    size = sized(4, 8) * MiB

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = await tp.listen(tp.Local(address=LO4, port=0),
                                   policy=tcp_policy(**{"carrier.idleTimeout": IDLE_MS}))
        accepted: list[tp.Carrier] = []

        async def serve() -> None:
            async for c in listener:
                accepted.append(c)
                await c.receive()
                await c.send(b"B" * size)

        server = asyncio.create_task(serve())
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.setblocking(False)
            await loop.sock_connect(s, (LO4, listener.port))
            await loop.sock_sendall(s, (3).to_bytes(4, "big") + b"req")
            got = 0
            started = loop.time()
            while got < size + 4:
                data = await asyncio.wait_for(loop.sock_recv(s, 65536), 5)
                assert data, (f"the server ended the connection after {got} of {size + 4} "
                              f"bytes ({loop.time() - started:.1f} s): "
                              f"{idle_error(accepted[0])!r}")
                got += len(data)
                await asyncio.sleep(0.05)  # a slow but steady reader
            took = loop.time() - started
            assert took > 2 * IDLE_MS / 1000, f"the reader was not slow ({took:.1f} s)"
            assert idle_error(accepted[0]) is None
            print(f"{size} bytes read in {took:.1f} s with idleTimeout {IDLE_MS} ms: not cut")
        finally:
            server.cancel()
            s.close()
            await listener.close()

    run(main(), timeout=40)


def test_idle_time_counts_from_the_message_the_application_took(run) -> None:
    """Three requests arrive at once at a Listener with carrier.idleTimeout 1000 ms whose
    application takes 0.7 s per request and replies once after the last: the third is taken
    at ~1.4 s, so the carrier is not idle before ~2.4 s, and the reply (at ~2.1 s) gets out.
    (Counted from the messages' arrival it was cut at ~2.0 s, mid-work.)"""

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4, port=0),
                                   policy=tcp_policy(**{"carrier.idleTimeout": IDLE_MS}))
        accepted: list[tp.Carrier] = []
        tasks: list[asyncio.Task[None]] = []

        async def work(c: tp.Carrier) -> None:
            for _ in range(3):
                await c.receive()
                await asyncio.sleep(0.7)  # the application computes
            await c.send(b"done")

        async def serve() -> None:
            async for c in listener:
                accepted.append(c)
                tasks.append(asyncio.create_task(work(c)))

        server = asyncio.create_task(serve())
        try:
            client = await tp.initiate(f"tcp://{LO4}:{listener.port}", policy=tcp_policy(),
                                       store=tp.AssociationStore())
            for i in range(3):
                await client.send(b"req%d" % i)
            try:
                reply = await asyncio.wait_for(client.receive(), 5)
            except tp.ConnectionClosedError as exc:
                raise AssertionError(f"cut while the application worked: "
                                     f"{idle_error(accepted[0])!r}") from exc
            assert reply == b"done"
            assert idle_error(accepted[0]) is None
            await client.close()
        finally:
            server.cancel()
            for task in tasks:
                task.cancel()
            for c in accepted:
                c.abort()
            await listener.close()

    run(main(), timeout=20)


def test_idle_timeout_error_pickles_with_its_timeout() -> None:
    """IdleTimeoutError crosses process boundaries (a worker pool reporting a carrier's end):
    pickled and back, it keeps its message and `timeout`."""
    import pickle

    err = tp.IdleTimeoutError("no message either way for carrier.idleTimeout (1 s)", 1.0)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is tp.IdleTimeoutError
    assert str(back) == str(err) and back.timeout == 1.0
    assert isinstance(back, tp.ConnectionClosedError)
