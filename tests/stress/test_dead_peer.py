"""A server process dies while our TCP carrier is active (issue 10's fault suite).

SIGKILL makes the server's kernel send FIN: our carrier sees EOF and stays active,
half-closed (a half-close ends the peer's messages, not ours). A message sent afterwards is
taken by our kernel (on_sent) and answered with RST by the peer's, which asyncio never
reads: it stopped reading at EOF. Before the fix the message ended only at close(), with
on_send_error, and the carrier never went dormant, so it could not re-activate. Now the
Transient notices the reset within its progress polling (TCP_INFO says CLOSE), the message
ends at once, exactly once, and the carrier is dormant; the next send re-activates it
against a restarted server. The server is a child process (a length-prefix echo server in
plain asyncio), killed for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import taps_post as tp
from dnslab import free_port

LO4 = "127.0.0.1"

ECHO = r"""
import asyncio, sys
async def handle(r, w):
    try:
        while True:
            h = await r.readexactly(4)
            d = await r.readexactly(int.from_bytes(h, "big"))
            w.write(len(d).to_bytes(4, "big") + d)
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print(s.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextlib.contextmanager
def echo_server(port: int = 0) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """(process, port) of an echo server in a child process; killed on exit."""
    proc = subprocess.Popen([sys.executable, "-c", ECHO, str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def see_eof(c: tp.Carrier) -> None:
    """The server's FIN reached the carrier: receive() says the peer closed."""
    try:
        await asyncio.wait_for(c.receive(), 5)
    except tp.ConnectionClosedError:
        return
    raise AssertionError("a message arrived from a killed server")


def test_message_after_the_server_died_ends_at_once_and_the_carrier_reactivates(
        run: Any, until: Any, tcp_policy: tp.PolicyContext, store: tp.AssociationStore
) -> None:
    port = free_port()
    ends: list[str] = []

    async def main() -> None:
        with echo_server(port) as (proc, _):
            c = tp.initiate(f"tcp://{LO4}:{port}", policy=tcp_policy, store=store)
            await c.send(b"0")
            assert bytes(await c.receive()) == b"0"
            kill(proc)
            await see_eof(c)
            assert c.is_active, "a FIN alone leaves the carrier active (half-closed)"
            m = tp.OutMessage(b"1")
            await c.send_msg(m, on_sent=lambda _m: ends.append("sent"),
                             on_acked=lambda _m: ends.append("acked"),
                             on_send_error=lambda _m: ends.append("send_error"),
                             on_expired=lambda _m: ends.append("expired"))
            await until(lambda: "send_error" in ends or "acked" in ends, timeout=2,
                        what=lambda: f"message 1 ended (so far: {ends}, {c!r})")
            assert ends == ["sent", "send_error"]
            await until(lambda: not c.is_active and c.is_dormant, timeout=2,
                        what=lambda: f"the carrier dormant: {c!r}")
        with echo_server(port):
            await c.send(b"2")  # re-activates against the new process
            assert bytes(await asyncio.wait_for(c.receive(), 5)) == b"2"
            assert c.is_active
            await c.close()
        assert ends == ["sent", "send_error"], "message 1 ended more than once"

    run(main(), timeout=20)


def test_plain_send_after_the_server_died_leaves_the_carrier_dormant(
        run: Any, until: Any, tcp_policy: tp.PolicyContext, store: tp.AssociationStore
) -> None:
    """send() without callbacks tracks nothing, yet the reset it provokes is noticed too:
    the carrier goes dormant, so the next send re-activates instead of being written into a
    dead connection."""
    port = free_port()

    async def main() -> None:
        with echo_server(port) as (proc, _):
            c = tp.initiate(f"tcp://{LO4}:{port}", policy=tcp_policy, store=store)
            await c.send(b"0")
            assert bytes(await c.receive()) == b"0"
            kill(proc)
            await see_eof(c)
            await c.send(b"lost")  # the kernel takes it; the dead peer answers RST
            await until(lambda: not c.is_active and c.is_dormant, timeout=2,
                        what=lambda: f"the carrier dormant: {c!r}")
        with echo_server(port):
            await c.send(b"2")
            assert bytes(await asyncio.wait_for(c.receive(), 5)) == b"2"
            await c.close()

    run(main(), timeout=20)


def test_half_closed_live_peer_still_acknowledges(
        run: Any, until: Any, tcp_policy: tp.PolicyContext, store: tp.AssociationStore
) -> None:
    """The watch after EOF must not mistake a peer that only shut down its sending side
    (it still reads and acknowledges) for a dead one."""
    ends: list[str] = []

    async def main() -> None:
        lsock = socket.socket()
        lsock.bind((LO4, 0))
        lsock.listen(1)
        lsock.setblocking(False)
        loop = asyncio.get_running_loop()
        c = tp.initiate(f"tcp://{LO4}:{lsock.getsockname()[1]}", policy=tcp_policy,
                        store=store)
        activating = asyncio.ensure_future(c.activate())
        peer, _ = await loop.sock_accept(lsock)
        await activating
        peer.shutdown(socket.SHUT_WR)
        await see_eof(c)
        m = tp.OutMessage(b"x" * 1000)
        await c.send_msg(m, on_acked=lambda _m: ends.append("acked"),
                         on_send_error=lambda _m: ends.append("send_error"))
        await until(lambda: ends, timeout=2, what="message acknowledged")
        got = b""
        while len(got) < 1004:
            got += await loop.sock_recv(peer, 4096)
        assert ends == ["acked"] and c.is_active
        await c.close()
        peer.close()
        lsock.close()
        assert ends == ["acked"]

    run(main(), timeout=10)
