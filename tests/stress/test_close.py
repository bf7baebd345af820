"""close() always returns (issue 10): bounded by carrier.linger, then an abort; a cancelled
close() still leaves the carrier closed; every message ends exactly once by then.

The peer accepts and never reads, so the client's queue cannot drain: today's hang (close
waited for the queue before arming its abort timer, so `async with carrier:` never exited).
On TCP the peer is a raw socket; on TLS an asyncio TLS server whose protocol paused reading
(the TLS layer then stops reading the socket too). Each message carries its index; its end
(on_acked, on_send_error, on_expired, or send_msg raising because the carrier closed before
it was queued) is recorded per index, and each index must end exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sizing import sized

import taps_post as tp

LO4 = "127.0.0.1"
MiB = 1 << 20
STALL = 0.3
"""Seconds without progress after which the sender counts as blocked (observation window)."""


@pytest.fixture(scope="module")
def cert() -> Any:
    return tp.certs.self_signed(["127.0.0.1"])


def policy(stack: str, linger_ms: int) -> tp.PolicyContext:
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "x", "set": {"stack": {stack: "require"}}}]}
    carrier = {"version": 1, "layer": "carrier",
               "rules": [{"id": "c", "set": {"carrier.linger": linger_ms}}]}
    return tp.PolicyContext(system=[], app=app, carrier=carrier, app_name="t")


class _Deaf(asyncio.Protocol):
    """A TLS server side that completes the handshake and then never reads."""

    transports: ClassVar[list[asyncio.BaseTransport]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        self.transports.append(transport)


class _Timer:
    """One timer the loop was asked for: what it calls (and with), its handle, whether it
    fired."""

    def __init__(self, callback: Any, args: tuple[Any, ...]) -> None:
        self.what = repr((callback, *args))
        self.handle: asyncio.TimerHandle | None = None
        self.fired = False

    @property
    def pending(self) -> bool:
        return not self.fired and self.handle is not None and not self.handle.cancelled()


@contextlib.contextmanager
def timers(loop: asyncio.AbstractEventLoop) -> Iterator[list[_Timer]]:
    """Every timer scheduled on `loop` (call_later / call_at, the only public ways to ask
    for one) while inside: the loop-neutral view of what is still scheduled, where asyncio's
    private `loop._scheduled` does not exist on other loops (uvloop)."""
    made: list[_Timer] = []
    inside = False
    originals = {name: getattr(loop, name) for name in ("call_later", "call_at")}

    def recording(name: str) -> Any:
        original = originals[name]

        def schedule(delay_or_when: float, callback: Any, *args: Any,
                     **kwargs: Any) -> asyncio.TimerHandle:
            nonlocal inside
            if inside:  # one loop's call_later is its call_at (or the reverse): one timer
                return original(delay_or_when, callback, *args, **kwargs)
            timer = _Timer(callback, args)

            def fire(*a: Any) -> None:
                timer.fired = True
                callback(*a)

            inside = True
            try:
                timer.handle = original(delay_or_when, fire, *args, **kwargs)
            finally:
                inside = False
            made.append(timer)
            return timer.handle

        return schedule

    for name in originals:
        setattr(loop, name, recording(name))
    try:
        yield made
    finally:
        for name in originals:
            delattr(loop, name)


@contextlib.asynccontextmanager
async def deaf_peer(stack: str, cert: Any, tmp: Path) -> AsyncIterator[tuple[str, Any]]:
    """(remote, cleanup handle) of a peer that accepts and never reads."""
    loop = asyncio.get_running_loop()
    if stack == "tcp":
        lsock = socket.socket()
        lsock.bind((LO4, 0))
        lsock.listen(4)
        lsock.setblocking(False)
        peers: list[socket.socket] = []

        async def accept() -> None:
            while True:
                s, _ = await loop.sock_accept(lsock)
                peers.append(s)  # never read

        task = asyncio.ensure_future(accept())
        try:
            yield f"tcp://{LO4}:{lsock.getsockname()[1]}", None
        finally:
            task.cancel()
            for s in peers:
                s.close()
            lsock.close()
        return
    certfile, keyfile = tmp / "c.pem", tmp / "k.pem"
    certfile.write_text(cert.cert_pem)
    keyfile.write_text(cert.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    server = await loop.create_server(_Deaf, LO4, 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tls://{LO4}:{port}", None
    finally:
        server.close()
        for t in _Deaf.transports:
            t.abort()  # type: ignore[attr-defined]
        _Deaf.transports.clear()


class Ends:
    """What became of each message, by index."""

    def __init__(self) -> None:
        self.ends: dict[int, list[str]] = defaultdict(list)
        self.attempted = 0

    def callbacks(self, i: int) -> dict[str, Any]:
        return {
            "on_acked": lambda m: self.ends[i].append("acked"),
            "on_send_error": lambda m: self.ends[i].append("send_error"),
            "on_expired": lambda m: self.ends[i].append("expired"),
        }

    def check(self) -> dict[str, int]:
        """Each attempted message ended exactly once; returns the counts by outcome."""
        counts: dict[str, int] = defaultdict(int)
        for i in range(self.attempted):
            assert len(self.ends[i]) == 1, f"message {i} ended {self.ends[i]}"
            counts[self.ends[i][0]] += 1
        acked = [i for i in range(self.attempted) if self.ends[i] == ["acked"]]
        assert acked == list(range(len(acked))), "acknowledged out of stream order"
        return dict(counts)


async def blocked_sender(carrier: tp.Carrier, ends: Ends, n: int) -> asyncio.Task[None]:
    """A task sending `n` 1 MiB messages (every fifth with a 0.2 s lifetime), returned once
    it made no progress for STALL seconds: the peer's window and our budget hold it."""
    body = bytes(MiB - 4)

    async def send_all() -> None:
        for i in range(n):
            ends.attempted = i + 1
            msg = tp.OutMessage(i.to_bytes(4, "big") + body,
                                lifetime=0.2 if i % 5 == 4 else None)
            try:
                await carrier.send_msg(msg, **ends.callbacks(i))
            except tp.ConnectionClosedError:
                ends.ends[i].append("raised")  # never queued: the carrier closed first
                return

    task = asyncio.create_task(send_all())
    loop = asyncio.get_running_loop()
    last, since = -1, loop.time()
    while loop.time() - since < STALL:  # observation window: no progress
        if ends.attempted != last:
            last, since = ends.attempted, loop.time()
        await asyncio.sleep(0.01)
    assert not task.done() and ends.attempted < n, "the peer took everything"
    return task


@pytest.mark.parametrize("stack", ["tcp", "tls"])
def test_close_returns_within_linger_when_the_peer_never_reads(
        run, stack, cert, tmp_path: Path) -> None:
    """50 MiB to a peer that never reads; `async with carrier:` exits within linger + 1 s,
    and every message ends exactly once (acknowledged by the peer's TCP, expired while
    queued, send error, or refused at send_msg after the close)."""
    linger = 1.0
    n = sized(50, 200)

    async def main() -> None:
        async with deaf_peer(stack, cert, tmp_path) as (url, _):
            remote = tp.Remote.parse(url, certificates=[cert] if stack == "tls" else [])
            carrier = tp.initiate(remote, policy=policy(stack, int(linger * 1000)),
                                  store=tp.AssociationStore())
            ends = Ends()
            loop = asyncio.get_running_loop()
            async with carrier:
                task = await blocked_sender(carrier, ends, n)
                t = carrier.transients[0]
                assert getattr(t, "linger", linger) == linger
                started = loop.time()
            took = loop.time() - started
            assert took <= linger + 1.0, f"close() took {took:.2f} s"
            await asyncio.wait_for(task, 5)
            assert not carrier.is_active and t.closed.done()
            counts = ends.check()
            assert counts.get("send_error", 0) >= 1, counts  # the queue could not drain
            print(f"{stack}: close() took {took:.2f} s (linger {linger} s); ends {counts}")
            with pytest.raises(tp.ConnectionClosedError):
                await carrier.send(b"after")

    run(main(), timeout=30)


@pytest.mark.parametrize("stack", ["tcp", "tls"])
def test_cancelling_close_leaves_the_carrier_closed(run, stack, cert, tmp_path: Path) -> None:
    """close() cancelled while it waits for a peer that never reads: the CancelledError
    reaches the caller, the carrier is closed all the same (aborted), and every message
    ends exactly once."""

    async def main() -> None:
        async with deaf_peer(stack, cert, tmp_path) as (url, _):
            remote = tp.Remote.parse(url, certificates=[cert] if stack == "tls" else [])
            carrier = tp.initiate(remote, policy=policy(stack, 60_000),
                                  store=tp.AssociationStore())
            ends = Ends()
            await carrier.activate()
            task = await blocked_sender(carrier, ends, 50)
            t = carrier.transients[0]
            closing = asyncio.create_task(carrier.close())
            await asyncio.sleep(0.2)  # window: close() is under way and cannot finish
            assert not closing.done()
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert t.closed.done(), "the Transient is still open"
            assert not carrier.is_active and not carrier.is_dormant
            await asyncio.wait_for(task, 5)
            counts = ends.check()
            assert counts.get("send_error", 0) >= 1, counts
            print(f"{stack}: cancelled close(): ends {counts}")
            with pytest.raises(tp.ConnectionClosedError):
                await carrier.send(b"after")

    run(main(), timeout=30)


@pytest.mark.parametrize("stack", ["tcp", "tls"])
def test_close_of_a_stream_made_with_as_stream_is_bounded_by_linger(
        run, stack, cert, tmp_path: Path) -> None:
    """A carrier turned into a stream (as_stream()) with 32 MiB written to a peer that never
    reads: close() returns within linger + 1 s and the socket is closed by then (aborted),
    not left open indefinitely buffering for the peer; nothing of ours stays scheduled."""
    linger = 0.5

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with timers(loop) as scheduled:
            await stream_close(loop, scheduled)

    async def stream_close(loop: asyncio.AbstractEventLoop, scheduled: list[_Timer]) -> None:
        async with deaf_peer(stack, cert, tmp_path) as (url, _):
            remote = tp.Remote.parse(url, certificates=[cert] if stack == "tls" else [])
            carrier = tp.initiate(remote, policy=policy(stack, int(linger * 1000)),
                                  store=tp.AssociationStore())
            await carrier.activate()
            _reader, writer = await carrier.as_stream()
            sock = writer.transport.get_extra_info("socket")
            writer.write(b"x" * (32 * MiB))
            started = loop.time()
            await asyncio.wait_for(carrier.close(), linger + 5)
            took = loop.time() - started
            assert took <= linger + 1.0, f"close() took {took:.2f} s"
            await asyncio.sleep(0)  # the abort's connection_lost (call_soon) has run
            assert sock.fileno() == -1, (
                f"socket still open after close() (write buffer "
                f"{writer.transport.get_write_buffer_size()} bytes)")
            assert not [t.what for t in scheduled
                        if t.pending and "abort" in t.what], "an abort timer left"
            print(f"{stack}: stream close() took {took:.2f} s (linger {linger} s)")

    run(main(), timeout=30)


def test_waiting_for_acknowledgements_at_close_backs_off(run) -> None:
    """close() with 2 MiB written that a peer never reading cannot acknowledge: the close
    waits (settles) for acknowledgements up to linger 1 s, then aborts. That wait reads the
    kernel's offsets backing off to 50 ms (like the progress check), not every 2 ms: well
    under 150 reads in the whole second (every 2 ms it was ~400)."""
    from taps_post.stacks.tcp import StreamTransient

    linger = 1.0
    reads = 0
    offsets = StreamTransient.offsets

    def counted(self: StreamTransient) -> tuple[int, int | None] | None:
        nonlocal reads
        reads += 1
        return offsets(self)

    async def main() -> None:
        nonlocal reads
        async with deaf_peer("tcp", None, Path()) as (url, _):
            carrier = tp.initiate(url, policy=policy("tcp", int(linger * 1000)),
                                  store=tp.AssociationStore())
            await carrier.activate()
            ends = Ends()
            for i in range(2):  # into the kernel's buffers, not asyncio's (it would
                ends.attempted += 1  # pause writing, and close() would wait in its flush)
                await carrier.send_msg(tp.OutMessage(b"x" * MiB), **ends.callbacks(i))
            loop = asyncio.get_running_loop()
            StreamTransient.offsets = counted  # type: ignore[method-assign]
            try:
                started = loop.time()
                await carrier.close()
                took = loop.time() - started
            finally:
                StreamTransient.offsets = offsets  # type: ignore[method-assign]
            assert took <= linger + 1.0, f"close() took {took:.2f} s"
            counts = ends.check()
            assert counts.get("send_error", 0) >= 1, f"nothing was left to settle: {counts}"
            assert reads < 150, f"{reads} offset reads in a {took:.2f} s close"
            print(f"close() {took:.2f} s, {reads} offset reads, ends {counts}")

    run(main(), timeout=20)
