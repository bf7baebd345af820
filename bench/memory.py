"""Memory per idle carrier, TCP, TLS and QUIC, beside raw asyncio / ssl / aioquic connections.

    .venv/bin/python -P bench/memory.py                       # 3 runs, all six rows
    .venv/bin/python -P bench/memory.py --quick               # 1 run, small counts
    .venv/bin/python -P bench/memory.py --only tls -n 5000 --runs 1 --retention
    .venv/bin/python -P bench/memory.py --only tls --tracemalloc --runs 1

Each figure is measured in two fresh child processes, a server and a client, so neither
inherits the heap of another figure. The client opens `--warm` (50) connections and exchanges
one message on each, then both sides take their RSS (/proc/self/statm, after gc.collect());
the client opens N more (2,000; QUIC `--quic-n` 500, its handshakes cost ~10 ms of CPU each
here) and exchanges one message on each; both sides take their RSS again. The figure is the
RSS delta / N of each process: what one more *idle* connection costs, the warm-up having paid
the one-time costs (imports, contexts, caches).

- ours: `tp.initiate` + `send` + `receive` to a `tp.listen` Listener whose accept callback
  answers the message and then waits for the end (carrier.idleTimeout 0 on both sides, so
  nothing ends while the figure is taken).
- raw tcp / tls: `loop.create_connection` with an asyncio Protocol (ssl=ctx for tls) to
  `loop.create_server` with an echo Protocol: the least asyncio can hold per connection.
- raw quic: aioquic's `connect()` held open, one stream, to `serve()` with an echo handler.

Rows are medians of `--runs` (3) runs, with p10/p90, and the ratio ours/raw (target <= 1.5),
printed like the other scripts (bench/_report.py). The script asserts nothing; it exits 2 on an
internal error (a connection that failed, a wrong echo).

`--retention` also closes every connection and prints each process's RSS after the close
settled, and again after `malloc_trim(0)` (glibc), with the Python heap (tracemalloc, when
`--tracemalloc` is on) beside it: what a process still holds after its connections are gone,
and whether it is Python objects or allocator arenas. `--tracemalloc` prints the top
allocations per connection of the server and the client (it slows the run and inflates RSS:
read its per-connection bytes, not the RSS figures, when it is on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Row, banner, run_main

HOST = "127.0.0.1"
STACKS = ("tcp", "tls", "quic")
PAGE = os.sysconf("SC_PAGE_SIZE")
NO_IDLE = {"carrier.idleTimeout": 0}
ONLY = {"tcp": {"stack.tcp": "require", **NO_IDLE}, "tls": {"stack.tls": "require", **NO_IDLE},
        "quic": {"stack.quic": "require", **NO_IDLE}}


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def trim() -> int:
    """glibc's malloc_trim(0): give free heap pages back; RSS after it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss()


def py_heap() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else -1


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def top_allocations(before: tracemalloc.Snapshot, n: int, count: int = 12) -> list[str]:
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    return [f"{s.size_diff / n:8.0f} B/conn  {s.count_diff / n:5.1f} blocks  "
            f"{s.traceback[0].filename.split('site-packages/')[-1]}:{s.traceback[0].lineno}"
            for s in stats[:count]]


class Commands:
    """Line commands from the parent on stdin."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.reader),
                                     sys.stdin)

    async def next(self) -> str:
        return (await self.reader.readline()).decode().strip()


def tls_contexts(cert_dir: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(f"{cert_dir}/cert.pem")
    return server, client


def quic_configs(cert_dir: str) -> tuple[Any, Any]:
    from aioquic.quic.configuration import QuicConfiguration

    server = QuicConfiguration(is_client=False, max_datagram_frame_size=65536)
    server.load_cert_chain(f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem")
    client = QuicConfiguration(is_client=True, max_datagram_frame_size=65536,
                               idle_timeout=30.0, server_name="localhost")
    client.load_verify_locations(f"{cert_dir}/cert.pem")
    return server, client


def policy(tp: Any, stack: str) -> Any:
    return tp.PolicyContext(system=[], app={"version": 1, "layer": "app",
                                            "rules": [{"id": "only", "set": ONLY[stack]}]},
                            app_name="memory")


def certificate(tp: Any, cert_dir: str, with_key: bool) -> Any:
    pem = Path(f"{cert_dir}/cert.pem").read_text()
    key = Path(f"{cert_dir}/key.pem").read_text() if with_key else None
    return tp.certs.Certificate(pem, key)


# ---- servers ---------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    live = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        Echo.live += 1

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        Echo.live -= 1


async def server(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    commands = Commands()
    await commands.start()
    live = [0]
    tasks: set[asyncio.Task[None]] = set()
    closer: Any
    if args.kind == "raw" and args.stack in ("tcp", "tls"):
        ssl_ctx = tls_contexts(args.certs)[0] if args.stack == "tls" else None
        srv = await loop.create_server(Echo, HOST, 0, ssl=ssl_ctx)
        port = srv.sockets[0].getsockname()[1]
        closer = srv.close

        def count() -> int:
            return Echo.live
    elif args.kind == "raw":
        from aioquic.asyncio.server import serve

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            writer.write(data)

        def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            t = asyncio.ensure_future(handle(reader, writer))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        qsrv = await serve(HOST, 0, configuration=quic_configs(args.certs)[0],
                           stream_handler=on_stream)
        port = qsrv._transport.get_extra_info("sockname")[1]  # aioquic: no public accessor
        closer = qsrv.close

        def count() -> int:
            return len(qsrv._protocols)
    else:
        import taps_post as tp

        local = tp.Local(address=HOST, port=0,
                         certificates=[certificate(tp, args.certs, with_key=True)])
        listener = await tp.listen(local, policy=policy(tp, args.stack))
        port = listener.ports[args.stack]

        async def serve_one(c: Any) -> None:
            live[0] += 1
            try:
                msg = await c.receive()
                await c.send(bytes(msg))
                with contextlib.suppress(tp.ConnectionClosedError):
                    await c.receive()
            except Exception:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await c.close()
                live[0] -= 1

        def on_carrier(c: Any) -> bool:
            t = asyncio.ensure_future(serve_one(c))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            return True

        listener.accept(on_carrier)

        async def close_listener() -> None:
            await listener.close()
        closer = close_listener

        def count() -> int:
            return live[0]
    emit({"port": port})
    snap: tracemalloc.Snapshot | None = None
    while True:
        cmd = await commands.next()
        if cmd in ("", "exit"):
            break
        if cmd == "rss":
            if args.tracemalloc and snap is None:
                snap = tracemalloc.take_snapshot()
            emit({"rss": rss(), "py": py_heap(), "live": count()})
        elif cmd == "top":
            emit({"top": top_allocations(snap, args.n) if snap is not None else []})
        elif cmd == "closed":
            deadline = time.monotonic() + 60
            while count() > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            emit({"rss": rss(), "py": py_heap(), "live": count(), "trimmed": trim()})
    res = closer()
    if asyncio.iscoroutine(res):
        await res


# ---- clients ---------------------------------------------------------------------------------


async def client(args: argparse.Namespace) -> None:
    commands = Commands()
    await commands.start()
    loop = asyncio.get_running_loop()
    held: list[Any] = []
    stack = contextlib.AsyncExitStack()
    if args.kind == "raw" and args.stack in ("tcp", "tls"):
        ssl_ctx = tls_contexts(args.certs)[1] if args.stack == "tls" else None

        class Client(asyncio.Protocol):
            def __init__(self) -> None:
                self.got: asyncio.Future[bytes] = loop.create_future()

            def data_received(self, data: bytes) -> None:
                if not self.got.done():
                    self.got.set_result(data)

        async def one() -> None:
            tr, pr = await loop.create_connection(
                Client, HOST, args.port, ssl=ssl_ctx,
                server_hostname="localhost" if ssl_ctx else None)
            tr.write(b"hello")
            if await pr.got != b"hello":
                raise RuntimeError("wrong echo")
            held.append(tr)

        def close_all() -> Any:
            for tr in held:
                tr.close()
            return None
    elif args.kind == "raw":
        from aioquic.asyncio.client import connect

        config = quic_configs(args.certs)[1]

        async def one() -> None:
            conn = await stack.enter_async_context(connect(HOST, args.port,
                                                           configuration=config))
            reader, writer = await conn.create_stream()
            writer.write(b"hello")
            if await reader.read(100) != b"hello":
                raise RuntimeError("wrong echo")
            held.append((conn, reader, writer))

        def close_all() -> Any:
            return stack.aclose()
    else:
        import taps_post as tp

        ctx = policy(tp, args.stack)
        pins = [] if args.stack == "tcp" else [certificate(tp, args.certs, with_key=False)]
        remote = tp.Remote.parse(f"{args.stack}://{HOST}:{args.port}", certificates=pins)
        store = tp.AssociationStore()

        async def one() -> None:
            c = await tp.initiate(remote, policy=ctx, store=store)
            await c.send(b"hello")
            if bytes(await c.receive()) != b"hello":
                raise RuntimeError("wrong echo")
            held.append(c)

        async def close_carriers() -> None:
            await asyncio.gather(*(c.close() for c in held), return_exceptions=True)

        def close_all() -> Any:
            return close_carriers()

    async def open_many(n: int) -> None:
        sem = asyncio.Semaphore(args.concurrency)

        async def bounded() -> None:
            async with sem:
                await one()
        await asyncio.gather(*(bounded() for _ in range(n)))

    await open_many(args.warm)
    if args.tracemalloc:
        tracemalloc.start(1)
        snap = tracemalloc.take_snapshot()
    emit({"rss": rss(), "py": py_heap()})
    await commands.next()
    await open_many(args.n)
    emit({"rss": rss(), "py": py_heap(), "held": len(held)})
    await commands.next()
    if args.tracemalloc:
        emit({"top": top_allocations(snap, args.n)})
        await commands.next()
    res = close_all()
    if res is not None:
        await res
    held.clear()
    await asyncio.sleep(1.0)
    emit({"rss": rss(), "py": py_heap(), "trimmed": trim()})
    await commands.next()


# ---- parent ----------------------------------------------------------------------------------


class Child:
    def __init__(self, args: argparse.Namespace, role: str, kind: str, stack: str, n: int,
                 *extra: str) -> None:
        cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--role", role,
               "--kind", kind, "--stack", stack, "-n", str(n), "--warm", str(args.warm),
               "--certs", args.certs, "--concurrency", str(args.concurrency), *extra]
        if args.tracemalloc:
            cmd.append("--tracemalloc")
        if args.ssl_read_buffer:
            cmd += ["--ssl-read-buffer", str(args.ssl_read_buffer)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a child died (exit {self.proc.wait()})")
        return dict(json.loads(line))

    def say(self, cmd: str) -> dict[str, Any] | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return None

    def ask(self, cmd: str) -> dict[str, Any]:
        self.say(cmd)
        return self.read()

    def finish(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.say("exit")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(args: argparse.Namespace, kind: str, stack: str) -> dict[str, Any]:
    n = args.quic_n if stack == "quic" else args.n
    srv = Child(args, "server", kind, stack, n)
    cli = None
    try:
        port = srv.read()["port"]
        cli = Child(args, "client", kind, stack, n, "--port", str(port))
        c0 = cli.read()
        s0 = srv.ask("rss")
        cli.say("go")
        c1 = cli.read()
        s1 = srv.ask("rss")
        out: dict[str, Any] = {"n": n, "client": (c1["rss"] - c0["rss"]) / n,
                               "server": (s1["rss"] - s0["rss"]) / n,
                               "client_py": (c1["py"] - c0["py"]) / n,
                               "server_py": (s1["py"] - s0["py"]) / n}
        if args.tracemalloc:
            out["server_top"] = srv.ask("top")["top"]
            cli.say("next")
            out["client_top"] = cli.read()["top"]
        cli.say("close")
        c2 = cli.read()
        s2 = srv.ask("closed")
        out["retention"] = {"client": [c0["rss"], c1["rss"], c2["rss"], c2["trimmed"],
                                       c1["py"], c2["py"]],
                            "server": [s0["rss"], s1["rss"], s2["rss"], s2["trimmed"],
                                       s1["py"], s2["py"]]}
        return out
    finally:
        if cli is not None:
            cli.finish()
        srv.finish()


def mb(x: int) -> str:
    return f"{x / 1e6:.1f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="idle connections measured (2,000)")
    ap.add_argument("--quic-n", type=int, default=500, help="the same for QUIC (500)")
    ap.add_argument("--warm", type=int, default=50, help="connections before the baseline")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(STACKS))
    ap.add_argument("--concurrency", type=int, default=64, help="connects in flight (64)")
    ap.add_argument("--retention", action="store_true",
                    help="print RSS after close and after malloc_trim(0)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="top Python allocations per connection (slower, inflates RSS)")
    ap.add_argument("--ssl-read-buffer", type=int, default=0,
                    help="experiment: set asyncio's SSLProtocol.max_size (256 KiB) to this "
                         "many bytes in the children, ours and raw alike")
    ap.add_argument("--quick", action="store_true", help="1 run, 300 connections")
    ap.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=("ours", "raw"), help=argparse.SUPPRESS)
    ap.add_argument("--stack", choices=STACKS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role is not None:
        if args.ssl_read_buffer:
            from asyncio import sslproto

            sslproto.SSLProtocol.max_size = args.ssl_read_buffer
        if args.role == "server" and args.tracemalloc:
            tracemalloc.start(1)
        asyncio.run(server(args) if args.role == "server" else client(args))
        return 0
    if args.quick:
        args.runs, args.n, args.quic_n = 1, 300, 100
    import taps_post as tp

    print(banner(f"memory per idle connection (N = {args.n:,}, QUIC {args.quic_n:,}; "
                 f"{args.runs} runs)"), flush=True)
    Row.ratio_label = "ratio "
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="taps-memory-") as tmp:
        cert = tp.certs.self_signed(["localhost", HOST])
        Path(f"{tmp}/cert.pem").write_text(cert.cert_pem)
        Path(f"{tmp}/key.pem").write_text(cert.key_pem or "")
        args.certs = tmp
        for stack in args.only.split(","):
            per_side: dict[str, Row] = {
                side: Row(f"{stack}-{side}", f"memory per idle {stack} connection, {side}",
                          "KB", higher_is_better=False, target=1.5)
                for side in ("client", "server")}
            for rnd in range(args.runs):
                for kind in (("ours", "raw") if rnd % 2 == 0 else ("raw", "ours")):
                    m = measure(args, kind, stack)
                    for side, row in per_side.items():
                        (row.ours if kind == "ours" else row.raw).append(m[side] / 1024)
                        if kind == "ours" and rnd == 0:
                            row.notes.append(f"python heap (tracemalloc) "
                                             f"{m[side + '_py'] / 1024:.1f} KB/conn"
                                             if args.tracemalloc else "")
                    if args.retention:
                        for side in ("client", "server"):
                            b, full, closed, trimmed, _py_full, py_closed = \
                                m["retention"][side]
                            heap = f", python heap {mb(py_closed)}" if py_closed >= 0 else ""
                            print(f"  {stack} {kind} {side}: RSS {mb(b)} warm, {mb(full)} with "
                                  f"{m['n']:,} more, {mb(closed)} after close, {mb(trimmed)} "
                                  f"after malloc_trim(0){heap}", flush=True)
                    for key in ("server_top", "client_top"):
                        if key in m:
                            print(f"  {stack} {kind} {key.split('_')[0]} top allocations:")
                            for line in m[key]:
                                print(f"    {line}")
            for row in per_side.values():
                row.notes = [n for n in row.notes if n]
                row.print()
                rows.append(row)
    print("\n| figure | unit | ours (p10–p90) | raw (p10–p90) | ratio (per-round) | target "
          "| verdict |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    _ = statistics  # medians come from Row
    return 0


if __name__ == "__main__":
    run_main(main)
