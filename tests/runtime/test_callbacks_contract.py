"""Callbacks keep their contract (issue 9, item 7; draft Appendix A Accept and Respond), on
real loopback sockets.

A Listener's accept callback is called per new carrier until it returns False; then the
Listener stops accepting and later connections are refused by the kernel, not queued.
`async def` callbacks are awaited as tasks the Listener owns, at most carrier.maxHandlers at
once. A Responder stops serving when its handler returns False; per carrier at most
carrier.maxHandlers async handlers run at once. Also: listen() refuses a clientAuth it could
not honour (item 10).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from typing import Any

import pytest

import taps_post as tp

LO4 = "127.0.0.1"


def _refused(port: int) -> bool:
    """A plain connect to `port` is refused (RST): nobody listens any more."""
    with socket.socket() as s:
        try:
            s.connect((LO4, port))
        except ConnectionRefusedError:
            return True
    return False


def _limit(make_policy: Any, n: int) -> tp.PolicyContext:
    return make_policy({"stack": {"tcp": "require"}}, carrier={"carrier.maxHandlers": n})


# ---- Listener.accept ----------------------------------------------------------------------------

def test_accept_false_stops_accepting_and_later_connections_are_refused(
        run, until, tcp_policy, store) -> None:
    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4), policy=tcp_policy)
        port = listener.port
        got: list[tp.Carrier] = []

        def on_carrier(c: tp.Carrier) -> bool:
            got.append(c)
            return len(got) < 2

        listener.accept(on_carrier)
        clients = [await tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=store)
                   for _ in range(2)]
        for c in clients:
            await c.send(b"hi")  # ends the fork hold at once
        await until(lambda: len(got) == 2)
        await until(lambda: not listener.accepting)
        await until(lambda: _refused(port), what="the listening socket to close")
        with pytest.raises(tp.EstablishmentError):
            await tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=tp.AssociationStore())
        assert len(got) == 2
        with pytest.raises(tp.UsageError, match="stopped accepting"):
            listener.accept(on_carrier)
        # what was accepted keeps working
        assert await got[0].receive() == b"hi"
        await got[0].send(b"still served")
        assert b"still served" in {bytes(await c.receive()) for c in clients[:1]}
        for c in [*clients, *got]:
            await c.close()
        await listener.close()

    run(main())


def test_async_accept_callbacks_are_awaited_and_bounded(run, until, make_policy,
                                                         store) -> None:
    policy = _limit(make_policy, 2)

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4), policy=policy)
        release = asyncio.Event()
        running = 0
        peak = 0
        done: list[bytes] = []

        async def on_carrier(c: tp.Carrier) -> bool:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                msg = await c.receive()
                await release.wait()
                done.append(bytes(msg))
                await c.send(b"ok " + msg)
                return True
            finally:
                running -= 1

        listener.accept(on_carrier)
        clients = []
        for i in range(4):
            c = await tp.initiate(f"{LO4}:{listener.port}", policy=policy, store=store)
            await c.send(b"%d" % i)
            clients.append(c)
        await until(lambda: running == 2)
        await asyncio.sleep(0.05)  # observation window: a third handler would start now
        assert running == 2 and peak == 2
        release.set()
        await until(lambda: len(done) == 4)
        assert peak == 2 and sorted(done) == [b"0", b"1", b"2", b"3"]
        for i, c in enumerate(clients):
            assert await c.receive() == b"ok %d" % i
            await c.close()
        await listener.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... never awaited"
        run(main())
        gc.collect()


def test_an_async_accept_callback_returning_false_stops_accepting(run, until, tcp_policy,
                                                                   store) -> None:
    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4), policy=tcp_policy)
        port = listener.port
        seen: list[tp.Carrier] = []

        async def once(c: tp.Carrier) -> bool:
            seen.append(c)
            await asyncio.sleep(0)
            return False

        listener.accept(once)
        client = await tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=store)
        await client.send(b"x")
        await until(lambda: not listener.accepting)
        await until(lambda: _refused(port))
        assert len(seen) == 1
        await client.close()
        await listener.close()

    run(main())


def test_listener_close_cancels_and_awaits_its_callback_tasks(run, until, tcp_policy,
                                                               store) -> None:
    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4), policy=tcp_policy)
        started = asyncio.Event()
        ended: list[str] = []

        async def forever(c: tp.Carrier) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

        listener.accept(forever)
        client = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=store)
        await client.send(b"x")
        await started.wait()
        await listener.close()
        assert ended == ["cancelled"]  # awaited by close(), not left running
        await client.close()

    run(main())


# ---- Responder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["sync", "async"])
def test_a_responder_stops_serving_when_its_handler_returns_false(run, tcp_policy, store,
                                                                  style) -> None:
    async def main() -> None:
        def plain(msg: tp.InMessage, reply: tp.Reply) -> Any:
            if msg == b"stop":
                return False  # a plain function cannot await a reply: it just stops
            return reply.send(bytes(msg).upper())

        async def coro(msg: tp.InMessage, reply: tp.Reply) -> bool:
            await reply.send(b"bye" if msg == b"stop" else bytes(msg).upper())
            return msg != b"stop"

        handler = plain if style == "sync" else coro
        responder = await tp.respond(tp.Local(address=LO4), handler, policy=tcp_policy)
        port = responder.ports["tcp"]
        idle = await tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=store)
        await idle.send(b"a")
        assert await idle.receive() == b"A"
        client = await tp.initiate(f"{LO4}:{port}", policy=tcp_policy, store=store)
        await client.send(b"b")
        assert await client.receive() == b"B"
        await client.send(b"stop")
        if style == "async":
            assert await client.receive() == b"bye"  # the last reply still goes out
        await asyncio.wait_for(responder.wait_closed(), 2)
        assert not responder.serving
        assert _refused(port)
        with pytest.raises(tp.ConnectionClosedError):
            await asyncio.wait_for(idle.receive(), 2)  # idle carriers closed too
        await responder.close()
        await idle.close()
        await client.close()

    run(main())


def test_responder_runs_at_most_max_handlers_per_carrier(run, until, make_policy,
                                                          store) -> None:
    policy = _limit(make_policy, 2)

    async def main() -> None:
        release = asyncio.Event()
        running = 0
        peak = 0

        async def slow(msg: tp.InMessage, reply: tp.Reply) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await release.wait()
                await reply.send(b"re " + msg)
            finally:
                running -= 1

        async with await tp.respond(tp.Local(address=LO4), slow, policy=policy) as responder:
            client = await tp.initiate(f"{LO4}:{responder.ports['tcp']}", policy=policy,
                                       store=store)
            for i in range(5):
                await client.send(b"%d" % i)
            await until(lambda: running == 2)
            await asyncio.sleep(0.05)  # observation window: a third handler would start now
            assert running == 2
            release.set()
            replies = {bytes(await client.receive()) for _ in range(5)}
            assert replies == {b"re %d" % i for i in range(5)} and peak == 2
            await client.close()

    run(main())


def test_responder_close_cancels_and_awaits_running_handlers(run, until, tcp_policy,
                                                             store) -> None:
    async def main() -> None:
        started: list[bytes] = []
        ended: list[str] = []

        async def stuck(msg: tp.InMessage, reply: tp.Reply) -> None:
            started.append(bytes(msg))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

        responder = await tp.respond(tp.Local(address=LO4), stuck, policy=tcp_policy)
        client = await tp.initiate(f"{LO4}:{responder.ports['tcp']}", policy=tcp_policy,
                                   store=store)
        await client.send(b"x")
        await client.send(b"y")
        await until(lambda: len(started) == 2)  # two handlers at once on one carrier
        await responder.close()
        assert ended == ["cancelled", "cancelled"]
        await client.close()

    run(main())


# ---- clientAuth at listen() (item 10) -----------------------------------------------------------

@pytest.fixture(scope="module")
def cert() -> Any:
    return tp.certs.self_signed(["localhost", LO4])


@pytest.mark.parametrize("mode", ["request", "require"])
def test_client_auth_without_anything_to_verify_with_is_refused_at_listen(
        run, make_policy, cert, mode) -> None:
    policy = make_policy({"security.clientAuth": mode})

    async def main() -> None:
        with pytest.raises(tp.ArgumentError, match="trusts no CA"):
            await tp.listen(tp.Local(address=LO4, certificates=[cert]), policy=policy)
        with pytest.raises(tp.ArgumentError, match="needs a TLS listener"):
            await tp.listen(tp.Local(address=LO4, trusted=[cert]), policy=policy)

    run(main())
