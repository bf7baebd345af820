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
