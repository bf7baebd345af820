"""QUIC memory limits (docs/quic.md, "Memory limits"): real sockets, aioquic's own client as
the hostile peer where the peer must break our protocol's manners, our Listener as the server.

Each test is one failure the issue measured on issue10-base, and fails there:
- an unread carrier took everything its peer sent (457 MB): now credit stops at the carrier's
  receive budget plus one window;
- send() never waited on QUIC (99 MiB in aioquic's buffer): now it waits at the send budget;
- a unidirectional stream without FIN buffered 300 MiB against a 1 MiB maxSize: now it is
  stopped (STOP_SENDING, TOO_LARGE);
- DATAGRAM frames for a carrier that does not read were all held: now they are dropped over
  the budget and counted;
- unreliable sends were queued in aioquic without bound: now they wait too;
- the listener kept every session ticket: now an LRU bounded by maxHandshakes.

Waiting is on conditions (`until`); where the condition is "the peer stopped making progress",
progress is sampled every 50 ms and the test waits until it stalled for STALL seconds or
reached its end (that stall is the behaviour under test, not a guess at timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from sizing import sized

import taps_post as tp
from helpers import frame, quic_policy
from taps_post.stacks.quic.compat import (
    pending_datagram_bytes,
    pending_datagram_frames,
    stream_receive_buffered,
    stream_send_offsets,
)

LOCAL = "127.0.0.1"
TIMEOUT = sized(90, 300)
"""Seconds one test may take (the whole coroutine, `run`)."""
MiB = 1 << 20
STALL = 1.0
"""Seconds without progress after which a peer counts as held back."""
GOAL = 16 * MiB
"""The issue's bound: what a peer that sends without end may cost one carrier by default."""


@pytest.fixture(scope="module")
def cert() -> tp.certs.Certificate:
    return tp.certs.self_signed(["localhost", "127.0.0.1"])


def policy(**values: Any) -> tp.PolicyContext:
    return quic_policy("quic-limits", **values)


class Capture(QuicConnectionProtocol):
    """aioquic's client protocol, keeping its connection and the events tests look for."""

    def __init__(self, quic: QuicConnection, *args: Any, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.connection = quic
        self.stops: list[tuple[int, int]] = []
        self.sent_at_stop: dict[int, int] = {}
        """How far each stopped stream had been sent when STOP_SENDING came."""

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StopSendingReceived):
            self.stops.append((event.stream_id, event.error_code))
            offsets = stream_send_offsets(self.connection, event.stream_id)
            self.sent_at_stop[event.stream_id] = 0 if offsets is None else offsets[0]
        super().quic_event_received(event)


def client_config(cert: tp.certs.Certificate, datagrams: bool = False) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True,
                               max_datagram_frame_size=65536 if datagrams else None)
    config.load_verify_locations(cadata=cert.cert_pem.encode())
    return config


@contextlib.asynccontextmanager
async def listening(cert: tp.certs.Certificate, pol: tp.PolicyContext,
                    on_carrier: Callable[[tp.Carrier], Any]) -> AsyncIterator[tp.Listener]:
    listener = await tp.listen(tp.Local(address=LOCAL, port=0, certificates=[cert]),
                               policy=pol)
    listener.accept(on_carrier)
    try:
        yield listener
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def raw_peer(cert: tp.certs.Certificate, pol: tp.PolicyContext,
                   on_carrier: Callable[[tp.Carrier], Any], datagrams: bool = False,
                   ) -> AsyncIterator[tuple[tp.Listener, Capture]]:
    """Our Listener and aioquic's own client connected to it."""
    async with contextlib.AsyncExitStack() as stack:
        listener = await stack.enter_async_context(listening(cert, pol, on_carrier))
        client = await stack.enter_async_context(connect(
            LOCAL, listener.ports["quic"], configuration=client_config(cert, datagrams),
            create_protocol=Capture))
        assert isinstance(client, Capture)
        yield listener, client


async def until_stalled(progress: Callable[[], int], end: int, timeout: float) -> int:
    """Sample `progress()` until it reaches `end` or did not move for STALL seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = progress(), loop.time()
    while last < end:
        await asyncio.sleep(0.05)
        now_value = progress()
        if now_value != last:
            last, since = now_value, loop.time()
        elif loop.time() - since >= STALL:
            break
        if loop.time() > deadline:
            raise AssertionError(f"neither done nor stalled within {timeout} s ({last})")
    return last


def sent_offset(quic: QuicConnection, sid: int, written: int) -> int:
    offsets = stream_send_offsets(quic, sid)
    return written if offsets is None else offsets[0]


def acked_offset(quic: QuicConnection, sid: int, written: int) -> int:
    offsets = stream_send_offsets(quic, sid)
    return written if offsets is None else offsets[1]


def drain(carrier: tp.Carrier) -> tuple[int, int]:
    """(messages, bytes) waiting in an accepted carrier, taken without awaiting."""
    t = carrier.transient
    assert t is not None
    count = size = 0
    while (msg := t.try_receive()) is not None:
        count += 1
        size += len(msg)
    return count, size


# ---- receive side ---------------------------------------------------------------------------


def test_an_unread_carrier_stops_granting_credit(run: Any, until: Any, cert: Any) -> None:
    """aioquic's client writes 32 MiB (more under make stress) of 64 KiB messages to a
    carrier that never reads: the client gets stuck once our credit runs out, under 16 MiB
    (our counters plus aioquic's out-of-order buffer agree), and everything arrives once the
    carrier reads. On issue10-base the whole of it was taken."""
    total = sized(32, 128) * MiB

    async def main() -> None:
        accepted: list[tp.Carrier] = []
        async with raw_peer(cert, policy(), accepted.append) as (_, client):
            quic = client.connection
            sid = quic.get_next_available_stream_id()
            chunk = frame(b"x" * (64 * 1024 - 4))
            count = total // len(chunk)
            for _ in range(count):
                quic.send_stream_data(sid, chunk)
            client.transmit()
            written = count * len(chunk)
            taken = await until_stalled(lambda: acked_offset(quic, sid, written), written,
                                        30)
            print(f"unread carrier: peer got {taken / MiB:.1f} MiB of {total / MiB:.0f}")
            assert taken < GOAL, f"{taken / MiB:.1f} MiB taken by a carrier that reads none"
            await until(lambda: bool(accepted), 2, "the carrier")
            carrier = accepted[0]
            t = carrier.transient
            assert t is not None
            session = t.session  # type: ignore[attr-defined]
            held = getattr(t, "buffered_bytes", 0) + stream_receive_buffered(
                session.connection)
            assert held < GOAL, held
            got = 0
            while got < count:  # reading returns the credit: nothing is lost
                await asyncio.wait_for(carrier.receive(), 10)
                got += 1
            await until(lambda: acked_offset(quic, sid, written) >= written, 10,
                        "the rest acknowledged")

    run(main(), TIMEOUT)


def test_a_unidirectional_stream_without_fin_is_stopped(run: Any, until: Any,
                                                         cert: Any) -> None:
    """A peer writes 32 MiB on one unidirectional stream with no FIN against a 1 MiB
    maxSize: the listener sends STOP_SENDING (TOO_LARGE) once it holds more than maxSize,
    and the peer never gets far beyond it. On issue10-base it buffered all of it."""
    total = 32 * MiB

    async def main() -> None:
        async with raw_peer(cert, policy(**{"message.maxSize": MiB}), lambda c: None) \
                as (_, client):
            quic = client.connection
            uni = quic.get_next_available_stream_id(is_unidirectional=True)
            quic.send_stream_data(uni, struct.pack("!Q", 0) + struct.pack("!I", total)
                                  + b"u" * total)
            client.transmit()
            written = total + 12

            def moved() -> int:
                return written if client.stops else acked_offset(quic, uni, written)

            await until_stalled(moved, written, 30)
            assert client.stops == [(uni, 0x3)], client.stops
            taken = client.sent_at_stop[uni]
            print(f"uni stream without FIN: stops {client.stops}, {taken / MiB:.1f} MiB taken "
                  f"of {total / MiB:.0f}")
            assert taken < 6 * MiB, taken

    run(main(), TIMEOUT)


def test_datagrams_for_an_unread_carrier_are_dropped_over_the_budget(
        run: Any, until: Any, cert: Any) -> None:
    """aioquic's client sends 30,000 DATAGRAM frames of 1,000 bytes (more under make stress)
    to a carrier that never reads: it holds at most its receive budget (1 MiB here) plus one
    window of stream data; the rest are dropped and counted. On issue10-base all of them
    that reached the listener were held."""
    frames = sized(30_000, 100_000)
    budget = MiB

    async def main() -> None:
        accepted: list[tp.Carrier] = []
        async with raw_peer(cert, policy(**{"carrier.recvBudget": budget}), accepted.append,
                        datagrams=True) as (_, client):
            quic = client.connection
            sid = quic.get_next_available_stream_id()
            quic.send_stream_data(sid, frame(b"hello"))
            client.transmit()
            await until(lambda: bool(accepted), 5, "the carrier")
            payload = b"\x00" + b"z" * 1000  # stream 0's carrier (wire.py: varint id)
            for i in range(frames):
                quic.send_datagram_frame(payload)
                if i % 50 == 49:  # aioquic's congestion window paces them
                    client.transmit()
                    await until(lambda: pending_datagram_frames(quic) < 100, 10,
                                "aioquic sending the frames")
            client.transmit()
            await until(lambda: pending_datagram_frames(quic) == 0, 10, "the last frames")
            quic.send_stream_data(sid, frame(b"marker"))
            client.transmit()
            written = len(frame(b"hello")) + len(frame(b"marker"))
            await until(lambda: acked_offset(quic, sid, written) >= written, 30,
                        "the marker after the frames")
            carrier = accepted[0]
            t = carrier.transient
            assert t is not None
            count, size = drain(carrier)
            dropped = t.session.datagrams_dropped  # type: ignore[attr-defined]
            print(f"{frames} frames: {count} messages ({size} bytes) held, "
                  f"{dropped} dropped")
            assert size <= 2 * budget + 64 * 1024, size
            assert dropped > 0

    run(main(), TIMEOUT)


def test_the_listener_keeps_a_bounded_ticket_store(run: Any, cert: Any) -> None:
    """Every connection gets a session ticket; the listener keeps at most 8 per
    listener.maxHandshakes (4 here: 32), least recent dropped, each usable once. On
    issue10-base it kept one per connection forever."""
    connections = 48

    async def main() -> None:
        pol = policy(**{"listener.maxHandshakes": 4})
        async with listening(cert, pol, lambda c: None) as listener:
            endpoint = next(e for e in listener._endpoints if e.stack == "quic")
            received: list[Any] = []
            for _ in range(connections):  # a client with a ticket handler is issued one
                async with connect(LOCAL, listener.ports["quic"],
                                   configuration=client_config(cert),
                                   session_ticket_handler=received.append) as client:
                    await client.ping()
            assert len(received) == connections
            assert len(endpoint.tickets) == 32, len(endpoint.tickets)

    run(main(), TIMEOUT)


CHILD = r"""
import asyncio, gc, sys
import psutil
import taps_post as tp

async def main():
    cert = tp.certs.self_signed(["localhost", "127.0.0.1"])
    rule = {"id": "q", "set": {"stack.quic": "require"}}
    pol = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [rule]},
                           app_name="rss")
    accepted = []
    listener = await tp.listen(tp.Local(address="127.0.0.1", port=0, certificates=[cert]),
                               policy=pol)
    listener.accept(accepted.append)  # never read
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(listener.ports["quic"], flush=True)
    while line := await reader.readline():
        gc.collect()
        print(psutil.Process().memory_info().rss, flush=True)
    await listener.close()

asyncio.run(main())
"""


def test_an_unread_carrier_costs_a_child_process_little_memory(run: Any) -> None:
    """The receiving side in its own process: our Listener, whose carrier never reads, and
    aioquic's client pushing 96 MiB (more under make stress) at it. The child's RSS grows by
    less than 32 MiB (the 16 MiB goal with a 2x margin for the allocator); on issue10-base it
    grew by about what was sent."""
    total = sized(96, 512) * MiB

    async def main() -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-c", CHILD, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout

        async def rss() -> int:
            stdin.write(b"rss\n")
            return int(await asyncio.wait_for(stdout.readline(), 10))

        try:
            port = int(await asyncio.wait_for(stdout.readline(), 20))
            config = QuicConfiguration(is_client=True, server_name="localhost")
            config.verify_mode = ssl.CERT_NONE
            async with connect(LOCAL, port, configuration=config,
                               create_protocol=Capture) as client:
                assert isinstance(client, Capture)
                before = await rss()
                quic = client.connection
                sid = quic.get_next_available_stream_id()
                chunk = frame(b"r" * (256 * 1024 - 4))
                count = total // len(chunk)
                for _ in range(count):
                    quic.send_stream_data(sid, chunk)
                client.transmit()
                written = count * len(chunk)
                taken = await until_stalled(lambda: acked_offset(quic, sid, written), written,
                                            60)
                after = await rss()
            grew = after - before
            print(f"child RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB (+{grew / MiB:.1f}) "
                  f"with {taken / MiB:.1f} MiB taken of {total / MiB:.0f}")
            assert grew < 2 * GOAL, f"+{grew / MiB:.1f} MiB"
        finally:
            stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 5)
            if child.returncode is None:
                child.kill()
                await child.wait()

    run(main(), TIMEOUT)


# ---- send side ------------------------------------------------------------------------------


def test_send_waits_while_the_peer_withholds_credit(run: Any, cert: Any) -> None:
    """Our carrier sends 64 MiB of 256 KiB messages to a carrier that never reads: send()
    blocks once the peer's credit ran out, with at most the send budget plus one message
    waiting in aioquic; when the peer reads, everything arrives. On issue10-base send()
    never waited and all 64 MiB sat in aioquic's buffer."""
    size = 256 * 1024
    count = sized(256, 1024)

    async def main() -> None:
        accepted: list[tp.Carrier] = []
        async with listening(cert, policy(), accepted.append) as listener:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            c = await tp.initiate(remote, policy=policy(), store=tp.AssociationStore())
            try:
                t = c.transient
                assert t is not None
                quic = t.session.connection  # type: ignore[attr-defined]
                sid = t.stream_id  # type: ignore[attr-defined]
                done = 0
                worst = 0

                async def sender() -> None:
                    nonlocal done, worst
                    for _ in range(count):
                        await c.send(b"s" * size)
                        done += 1
                        unsent = done * (size + 4) - sent_offset(quic, sid, 0)
                        worst = max(worst, unsent)

                task = asyncio.ensure_future(sender())
                await until_stalled(lambda: done, count, 30)
                print(f"send blocked after {done} of {count} messages; at most "
                      f"{worst / MiB:.2f} MiB waited in aioquic")
                assert not task.done(), "send() never waited"
                assert worst <= MiB + 2 * (size + 4), worst
                carrier = accepted[0]
                got = 0
                while got < count:
                    await asyncio.wait_for(carrier.receive(), 10)
                    got += 1
                await asyncio.wait_for(task, 10)
            finally:
                c.abort()

    run(main(), TIMEOUT)


def test_unreliable_sends_wait_for_aioquic_to_take_them(run: Any, cert: Any) -> None:
    """20,000 unreliable 1,000-byte messages sent as fast as send_msg() returns: DATAGRAM
    frames aioquic has not put in a packet yet count against the send budget, so at most
    the budget (plus one frame) waits there. On issue10-base all of them were queued."""
    count = sized(20_000, 100_000)

    async def main() -> None:
        async with listening(cert, policy(), lambda c: None) as listener:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            c = await tp.initiate(remote, policy=policy(), store=tp.AssociationStore())
            try:
                t = c.transient
                assert t is not None
                quic = t.session.connection  # type: ignore[attr-defined]
                worst = 0
                for _ in range(count):
                    await c.send_msg(tp.OutMessage(b"d" * 1000, reliable=False))
                    worst = max(worst, pending_datagram_bytes(quic))
                print(f"{count} unreliable sends: at most {worst} bytes waited in aioquic")
                assert worst <= MiB + 2 * 1100, worst
            finally:
                c.abort()

    run(main(), TIMEOUT)


def test_close_against_a_withholding_peer_is_bounded_by_linger(run: Any, cert: Any) -> None:
    """Our carrier (carrier.linger 1 s) fills what a carrier that never reads will take,
    then closes: close() returns within the linger time (plus scheduling slack), and by
    then every message has ended exactly once: on_acked for what the peer acknowledged,
    on_send_error for the rest. On issue10-base close() returned at once and the messages
    still in aioquic's buffer had not ended (they failed later, when the idle connection
    closed)."""
    size = 256 * 1024

    async def main() -> None:
        async with listening(cert, policy(), lambda c: None) as listener:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            c = await tp.initiate(remote, policy=policy(**{"carrier.linger": 1000}),
                                  store=tp.AssociationStore())
            ends: dict[int, list[str]] = {}
            sent = 0

            def ended(n: int, how: str) -> Callable[[tp.OutMessage], None]:
                return lambda m: ends.setdefault(n, []).append(how)

            async def sender() -> None:
                nonlocal sent
                for n in range(256):
                    await c.send_msg(tp.OutMessage(b"c" * size), on_acked=ended(n, "acked"),
                                     on_send_error=ended(n, "error"))
                    sent += 1

            task = asyncio.ensure_future(sender())
            await until_stalled(lambda: sent, 256, 30)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(c.close(), 5)
            took = loop.time() - started
            kinds = [how for hows in ends.values() for how in hows]
            print(f"close after {sent} messages took {took:.2f} s; ends: "
                  f"{kinds.count('acked')} acked, {kinds.count('error')} send errors")
            assert took < 1.0 + 0.5, took
            assert len(ends) == sent, (len(ends), sent)
            assert all(len(hows) == 1 for hows in ends.values()), ends
            assert kinds.count("error") > 0

    run(main(), TIMEOUT)


# ---- stopped streams: no message reported acknowledged that did not arrive ------------------


def test_expiring_messages_over_the_uni_bound_all_arrive(run: Any, cert: Any) -> None:
    """Two concurrent expiring messages of 700 KB to a listener with a 1 MiB maxSize and a
    64 KiB receive budget: together they pass the bound for all unidirectional streams.
    Both arrive, and each is acknowledged only because it did. On issue10-base the receiver
    stopped one (STOP_SENDING, TOO_LARGE) and the sender still reported it acknowledged
    (aioquic's discarded stream read as "all acknowledged")."""
    size = 700_000

    async def main() -> None:
        got: list[int] = []

        async def serve(c: tp.Carrier) -> None:
            with contextlib.suppress(Exception):
                while True:
                    got.append(len(await c.receive()))

        tasks: list[asyncio.Future[None]] = []
        pol = policy(**{"message.maxSize": MiB, "carrier.recvBudget": 65536})
        async with listening(cert, pol, lambda c: tasks.append(
                asyncio.ensure_future(serve(c)))) as listener:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            c = await tp.initiate(remote, policy=policy(perMsgReliability="require"),
                                  store=tp.AssociationStore())
            try:
                await c.send(b"hello")
                loop = asyncio.get_running_loop()
                fates: list[asyncio.Future[str]] = [loop.create_future() for _ in range(2)]

                def end(i: int, how: str) -> Callable[[Any], None]:
                    return lambda _m: fates[i].done() or fates[i].set_result(how)

                for i in range(2):
                    await c.send_msg(tp.OutMessage(bytes([65 + i]) * size, lifetime=20.0),
                                     on_acked=end(i, "acked"), on_expired=end(i, "expired"),
                                     on_send_error=end(i, "send_error"))
                result = await asyncio.wait_for(asyncio.gather(*fates), 30)
                print(f"fates {result}; received {got}")
                for how in result:
                    assert how in ("acked", "send_error"), result
                    if how == "acked":
                        assert got.count(size) >= result.count("acked"), (result, got)
                assert got.count(size) == 2, got  # nothing stopped for its sibling
            finally:
                c.abort()
                for task in tasks:
                    task.cancel()

    run(main(), TIMEOUT)


class Stopper(QuicConnectionProtocol):
    """aioquic's server protocol that STOP_SENDINGs each stream at its first bytes."""

    received = 0

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            Stopper.received += len(event.data)
            if not getattr(self, "stopped", False):
                self.stopped = True
                self._quic.stop_stream(event.stream_id, 5)
                self._quic.send_stream_data(event.stream_id, b"", end_stream=True)
                self.transmit()


def test_a_stream_the_peer_stopped_fails_its_messages(run: Any, cert: Any,
                                                      tmp_path: Any) -> None:
    """aioquic's own server STOP_SENDINGs our carrier's stream: the messages it did not take
    end with on_send_error (none acknowledged, none left pending) and a later send fails or
    ends with on_send_error, without an exception in the event loop. On issue10-base
    send_stream_data raised inside the pump (into the loop's exception handler) and the
    message never ended."""
    from aioquic.asyncio import serve

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: list[Any] = []
        loop.set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        (tmp_path / "c.pem").write_text(cert.cert_pem)
        (tmp_path / "k.pem").write_text(cert.key_pem)
        config = QuicConfiguration(is_client=False, max_datagram_frame_size=65536)
        config.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
        server = await serve(LOCAL, 0, configuration=config, create_protocol=Stopper)
        port = server._transport.get_extra_info("sockname")[1]
        c = await tp.initiate(tp.Remote.parse(f"quic://{LOCAL}:{port}", certificates=[cert]),
                              policy=policy(), store=tp.AssociationStore())
        try:
            fates: list[asyncio.Future[str]] = [loop.create_future() for _ in range(2)]

            def end(i: int, how: str) -> Callable[[Any], None]:
                return lambda _m: fates[i].done() or fates[i].set_result(how)

            await c.send_msg(tp.OutMessage(b"a" * 100), on_acked=end(0, "acked"),
                             on_send_error=end(0, "send_error"))
            t = c.transient
            assert t is not None
            for _ in range(200):  # the STOP_SENDING reaches us within a round trip
                if getattr(t, "send_stopped", None) is not None or fates[0].done():
                    break
                await asyncio.sleep(0.01)
            try:
                await c.send_msg(tp.OutMessage(b"b" * 100_000), on_acked=end(1, "acked"),
                                 on_send_error=end(1, "send_error"))
            except tp.errors.ConnectionClosedError:
                fates[1].set_result("raised")
            result = await asyncio.wait_for(asyncio.gather(*fates), 10)
            print(f"fates {result}; server received {Stopper.received} bytes")
            assert result[1] in ("send_error", "raised"), result
            assert "acked" not in result[1:], result
            assert not loop_errors, loop_errors
        finally:
            c.abort()
            server.close()

    run(main(), TIMEOUT)


def test_closing_a_carrier_with_data_unread_releases_the_peers_sender(run: Any,
                                                                      cert: Any) -> None:
    """A server carrier with a 64 KiB receive budget stops reading, then closes while the
    client still sends (a sibling stream keeps the connection up): the client's blocked
    send() returns or fails, and every message on that stream ends. On issue10-base credit
    stayed withheld and the client's send() waited forever."""

    async def main() -> None:
        carriers: list[tp.Carrier] = []

        def on(c: tp.Carrier) -> None:
            carriers.append(c)
            c.accept(on)

        pol = policy(**{"carrier.recvBudget": 65536})
        async with listening(cert, pol, on) as listener:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            c = await tp.initiate(remote, policy=policy(**{"carrier.sendBudget": 65536}),
                                  store=tp.AssociationStore())
            sib = await c.fork()
            try:
                await c.send(b"hello")
                await sib.send(b"sibling")
                for _ in range(500):
                    if len(carriers) >= 2:
                        break
                    await asyncio.sleep(0.01)
                t = c.transient
                assert t is not None
                ended = 0
                written = 0

                def done(_m: Any) -> None:
                    nonlocal ended
                    ended += 1

                async def pump() -> None:
                    nonlocal written
                    with contextlib.suppress(tp.errors.ConnectionClosedError):
                        while c.transient is t:
                            await c.send_msg(tp.OutMessage(b"x" * 16000), on_acked=done,
                                             on_send_error=done)
                            written += 1

                task = asyncio.ensure_future(pump())
                await until_stalled(lambda: written, 10**6, 20)
                assert not task.done()
                await carriers[0].close()
                await asyncio.wait_for(task, 10)  # released, not waiting forever
                for _ in range(500):
                    if ended >= written:
                        break
                    await asyncio.sleep(0.01)
                print(f"{written} messages written, {ended} ended after the close")
                assert ended == written
            finally:
                c.abort()
                sib.abort()

    run(main(), TIMEOUT)


def test_a_long_lived_connection_forgets_its_ended_streams(run: Any, cert: Any) -> None:
    """100 forks of one carrier, each sending a message and closing, on one connection: once
    aioquic discarded their streams, neither side's session still holds them (on
    issue10-base `QuicSession.streams` only grew: one Transient per stream ever opened)."""
    count = sized(100, 2000)

    async def main() -> None:
        got = 0
        accepted: list[tp.Carrier] = []
        tasks: list[asyncio.Future[None]] = []

        async def serve(c: tp.Carrier) -> None:
            nonlocal got
            with contextlib.suppress(Exception):
                async for _m in c:
                    got += 1
                await c.close()  # the peer's FIN came: this side is done too

        def on(c: tp.Carrier) -> None:
            accepted.append(c)
            c.accept(on)
            tasks.append(asyncio.ensure_future(serve(c)))

        async with listening(cert, policy(), on) as listener:
            remote = tp.Remote.parse(f"quic://{LOCAL}:{listener.ports['quic']}",
                                     certificates=[cert])
            c = await tp.initiate(remote, policy=policy(), store=tp.AssociationStore())
            try:
                await c.send(b"first")
                t = c.transient
                assert t is not None
                session = t.session  # type: ignore[attr-defined]
                for _ in range(count):
                    f = await c.fork()
                    await f.send(b"x" * 100)
                    await f.close()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while not accepted and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                server = accepted[0].transient.session  # type: ignore[union-attr]
                while loop.time() < deadline and (
                        got < count + 1 or len(session.streams) > 4
                        or len(server.streams) > 4):
                    await c.send(b"ping")  # a round trip: acknowledgements come back
                    await asyncio.sleep(0.02)
                print(f"{count} forks closed: client holds {len(session.streams)} streams, "
                      f"server {len(server.streams)}")
                assert len(session.streams) <= 4, len(session.streams)
                assert len(server.streams) <= 4, len(server.streams)
            finally:
                c.abort()

    run(main(), TIMEOUT)


def test_many_unread_streams_share_the_connections_credit(run: Any, cert: Any) -> None:
    """aioquic's client writes 4 MiB on each of 32 streams of one connection to carriers that
    never read (carrier.recvBudget 256 KiB): the connection's credit follows consumption, so
    the client gets about two windows in all (plus each stream's partial message), not a
    budget per stream. On issue10-base MAX_DATA followed arrivals: 384 KiB per stream, 12 MiB
    for 32 streams (24 MiB for 64) against the stated 512 KiB."""
    budget = 256 * 1024
    streams = 32
    per = 4 * MiB

    async def main() -> None:
        accepted: list[tp.Carrier] = []
        async with raw_peer(cert, policy(**{"carrier.recvBudget": budget}),
                            accepted.append) as (_listener, client):
            quic = client.connection
            chunk = frame(b"x" * (16 * 1024 - 4))
            sids = []
            for _ in range(streams):
                sid = quic.get_next_available_stream_id()
                for _ in range(per // len(chunk)):
                    quic.send_stream_data(sid, chunk)
                sids.append(sid)
            client.transmit()
            total = await until_stalled(
                lambda: sum(acked_offset(quic, sid, per) for sid in sids), streams * per, 30)
            print(f"{streams} unread streams, recvBudget {budget // 1024} KiB: the peer got "
                  f"{total / MiB:.2f} MiB acknowledged in all")
            assert total <= 2 * budget + streams * len(chunk) + 2 * budget, total

    run(main(), TIMEOUT)
