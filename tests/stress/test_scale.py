"""Many concurrent carriers through one Listener, client and server in separate processes.

Rule 1: the load is bench/scale.py, run as it is run by hand: the test only reads its JSON
verdict, so a number in docs/reliability.md and a failure here come from the same code.
Rule 2: every carrier sends numbered messages and gets numbered replies; each (carrier, n)
must arrive exactly once on both sides (nothing lost, nothing duplicated), every carrier the
client opened must have been accepted, and after close neither process keeps an fd or an
asyncio task beyond what it had before the first carrier.
Rule 3: TCP runs at the issue's 10,000 in `make test` (about 20 s here); TLS and QUIC at a
smaller count, their issue-size runs under `make stress`.
Rule 4: memory is measured in fresh child processes (RSS from /proc/self/statm), and only
compared with a same-run baseline, with a wide margin.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sizing import sized

SCALE = Path(__file__).resolve().parents[2] / "bench" / "scale.py"
HANDSHAKES = 256
"""TLS and QUIC clients keep at most this many handshakes in flight (the carriers all stay
open together): on 2 CPUs a burst of 5,000 TLS handshakes at once takes longer than the
Listener's handshakeTimeout (10 s) for the last few percent, which the Listener then resets,
as it should (docs/reliability.md)."""
QUIC_HANDSHAKES = 128
"""QUIC the same, tighter: at 256 in flight, 20 of 1,000 QUIC carriers completed their
handshake at the client but were never accepted, and the client learnt it only from its idle
timeout (30 s) (a report for the QUIC listener; docs/reliability.md)."""


def scale(stack: str, n: int, timeout: float = 240, handshakes: int = 0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-P", str(SCALE), "--json", "--stack", stack,
                           "-n", str(n), "--settle", "30", "--handshakes", str(handshakes)],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"bench/scale.py printed no verdict (exit {proc.returncode}): " \
                  f"{proc.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def check(report: dict[str, Any], n: int) -> None:
    c, s = report["client"], report["server"]
    summary = json.dumps(report, indent=1)
    for side in (c, s):
        assert side["error_count"] == 0, summary
        assert (side["lost"], side["extra"], side["dups"]) == (0, 0, 0), summary
        assert (side["fds_left"], side["tasks_left"]) == (0, 0), summary
    assert s["accepted"] == n and not s["timed_out"], summary
    if report["stack"] != "quic":  # a socket per stream carrier (QUIC clients may share)
        assert c["peak_fds"] >= n, summary  # they were open at once, not one after another
    assert report["ok"], summary


def _need_fds(n: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {n} carriers")


def test_10000_tcp_carriers_through_one_listener() -> None:
    n = 10_000
    _need_fds(n)
    check(scale("tcp", n), n)


def test_tls_carriers_through_one_listener() -> None:
    n = sized(500, 5_000)
    _need_fds(n)
    check(scale("tls", n, handshakes=HANDSHAKES), n)


def test_quic_carriers_through_one_listener() -> None:
    n = sized(200, 1_000)
    _need_fds(n)
    check(scale("quic", n, handshakes=QUIC_HANDSHAKES), n)


TLS_MEMORY = r"""
import asyncio, gc, json, socket, ssl, sys
import taps_post as tp
from taps_post.stacks.tls import open_tls

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

async def main():
    lean, n = sys.argv[1] == "lean", int(sys.argv[2])
    cert = tp.certs.self_signed(["localhost"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.load_into(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=cert.cert_pem)
    loop = asyncio.get_running_loop()
    held = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            held.append(transport)

        def data_received(self, data):
            self.transport.write(data)

    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def accept_loop():
        while True:
            conn, _ = await loop.sock_accept(listener)
            if lean:
                await open_tls(Echo, conn, server_ctx, server_side=True)
            else:
                await loop.connect_accepted_socket(Echo, conn, ssl=server_ctx)

    async def one():
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        got = loop.create_future()

        class Client(asyncio.Protocol):
            def data_received(self, data):
                got.set_result(data)

        if lean:
            tr, _ = await open_tls(Client, sock, client_ctx, server_side=False,
                                   server_hostname="localhost")
        else:
            tr, _ = await loop.create_connection(Client, sock=sock, ssl=client_ctx,
                                                 server_hostname="localhost")
        tr.write(b"ping")
        assert await got == b"ping"
        held.append(tr)

    acceptor = asyncio.ensure_future(accept_loop())
    for _ in range(20):
        await one()
    before = rss()
    for _ in range(n):
        await one()
    per = (rss() - before) / n  # both ends of every connection live here: per pair
    print(json.dumps({"per_pair": per}))
    acceptor.cancel()
    for tr in held:
        tr.abort()

asyncio.run(main())
"""


def test_tls_connections_read_through_a_small_buffer() -> None:
    """open_tls (stacks/tls.py Rule 4) against asyncio's own TLS, in two fresh processes,
    both ends of each connection in the process: the 256 KiB read buffer asyncio allocates
    per connection is most of an idle TLS connection's memory; ours must be well under."""
    n = sized(200, 2000)

    def per_pair(kind: str) -> float:
        out = subprocess.run([sys.executable, "-P", "-c", TLS_MEMORY, kind, str(n)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return float(json.loads(out.stdout.splitlines()[-1])["per_pair"])

    default, lean = per_pair("asyncio"), per_pair("lean")
    print(f"TLS connection pair: asyncio {default / 1024:.0f} KB, open_tls {lean / 1024:.0f} KB")
    assert default > 400 * 1024, "asyncio's TLS no longer costs 2 x 256 KiB: recheck Rule 4"
    assert lean < 0.5 * default, (lean, default)
