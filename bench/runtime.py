"""Runtime benchmark: taps_post carriers beside raw asyncio streams, on loopback.

Run from the repository root:

    .venv/bin/python -P bench/runtime.py              # 7 rounds, about 1-2 minutes
    .venv/bin/python -P bench/runtime.py --quick      # smoke run, a few seconds
    .venv/bin/python -P bench/runtime.py --profile    # + cProfile of our side
    .venv/bin/python -P bench/runtime.py --only rtt,small --profile

Every figure has a raw asyncio twin, measured in the same run, on 127.0.0.1, in the same
event loop (the default asyncio loop, or uvloop with `--loop uvloop`), with ours and raw
interleaved in every round and the order flipped from round to round. Figures (wall time,
time.perf_counter, GC on):

- connect: connect-to-ready of `await tp.initiate("tcp://127.0.0.1:PORT", policy=ctx)` (the
  decision included; ctx = PolicyContext(system=[], app_name="bench") built once) beside
  `asyncio.open_connection`, both against the same plain asyncio server, each connection
  closed after use. Samples alternate ours/raw call by call. Target (issue 15): ratio <= 1.1.
  open_socket: the same race through `tp.open_socket(...)` then
  `asyncio.open_connection(sock=...)`, beside the same raw call. No target; for information.
- tls / tls resumed: the same with `tls://` and a self-signed certificate pinned through
  `Remote.parse(..., certificates=[cert])`, beside `open_connection(ssl=ctx)` with that
  certificate as the only CA. "tls" is a full handshake (our association's tickets are
  dropped before each sample, outside the timed region); "tls resumed" offers the previous
  connection's TLS 1.3 ticket on both sides (raw: a one-method SSLContext wrapper that passes
  `session=` to wrap_bio; its ticket read after the close counts, as ours does in close()).
  Target (issue 15) on connect + close: ratio <= 1.2; connect-to-ready for information.
- small: 64-byte messages end to end, messages/s. Raw: writer.write(4-byte big-endian length
  + payload) per message with `await drain()` every --drain-every messages, and
  readexactly(4) + readexactly(n) on the other side. Ours: `await carrier.send(payload)` per
  message, `await carrier.receive()` per message on a carrier accepted by `tp.listen`.
  Target (issue 15): ratio >= 1.2.
- big: the same with 1 MiB messages (drain after every raw message), MB/s (10^6 bytes).
  Target (issue 15): ratio >= 1.0.
- rtt: one 64-byte message in flight, echoed back: round-trip time. Ours: carrier on both
  sides (tp.listen); raw: streams on both sides with the same framing. Target (issue 15): ratio
  <= 1.05.

Each figure group (connect, tls, small, big, rtt) runs in a fresh child interpreter, so the
allocator and GC state one figure leaves cannot tilt the next (the 1 MiB figure moves with
glibc's dynamic mmap threshold); --in-process turns that off.

Per round each side yields one figure (connect and rtt: the median of that round's samples;
small and big: the round's rate). Printed: p10 / median / p90 over the rounds for ours and
raw, the ratio of the two medians (the verdict uses it), and the range of the per-round
paired ratios, which shows how much the machine's noise moved it.

Nothing is asserted about speed: the script reports and exits 0. It exits non-zero only on an
internal error (a message lost, a wrong byte count, a connection that failed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import taps_post as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Row, add_loop_option, banner, loadavg, run_main, use_loop
from taps_post.stacks.tcp import ResumingContext

# ResumingContext: the raw side needs the same adapter we use (asyncio's open_connection has
# no `session=`); it only forwards wrap_bio(), so it adds none of our runtime to the baseline.

HOST = "127.0.0.1"
SRC = str(Path(tp.__file__).resolve().parent)
SMALL = 64
BIG = 1 << 20
clock = time.perf_counter


# ---- servers and helpers -------------------------------------------------------------------


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The simple asyncio server both connect benchmarks talk to: read to EOF, close."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _raw_pair() -> tuple[Any, Any, Any, asyncio.Server]:
    """(client reader, client writer, (server reader, server writer), server)."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(handler, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    cr, cw = await asyncio.open_connection(HOST, port)
    return cr, cw, await accepted.get(), server


async def _our_pair(ctx: tp.PolicyContext) -> tuple[tp.Carrier, tp.Carrier, tp.Listener]:
    listener = await tp.listen(tp.Local(address=HOST, port=0), policy=ctx)
    client = await tp.initiate(f"tcp://{HOST}:{listener.port}", policy=ctx)
    server = await listener.__aiter__().__anext__()
    return client, server, listener


# ---- (1) connect-to-ready ------------------------------------------------------------------


@dataclass
class ConnectSides:
    ours: Callable[[], Awaitable[tuple[float, float, bool]]]
    raw: Callable[[], Awaitable[tuple[float, float, bool]]]
    before_ours: Callable[[], None] | None = None


async def _connect_rounds(sides: ConnectSides, rounds: int, n: int, ready: Row,
                          total: Row) -> tuple[float, float]:
    """Alternate ours/raw call by call; returns the fraction of resumed handshakes."""
    await sides.ours()
    await sides.raw()
    resumed = [0, 0]
    for rnd in range(rounds):
        gc.collect()
        samples: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": []}
        for i in range(n):
            order = ("ours", "raw") if (i + rnd) % 2 == 0 else ("raw", "ours")
            for side in order:
                if side == "ours" and sides.before_ours is not None:
                    sides.before_ours()
                fn = sides.ours if side == "ours" else sides.raw
                t_ready, t_total, was_resumed = await fn()
                samples[side].append((t_ready, t_total))
                resumed[side == "raw"] += was_resumed
        for side, row_list in (("ours", (ready.ours, total.ours)), ("raw", (ready.raw,
                                                                            total.raw))):
            row_list[0].append(statistics.median(s[0] for s in samples[side]) * 1e6)
            row_list[1].append(statistics.median(s[1] for s in samples[side]) * 1e6)
    return resumed[0] / (rounds * n), resumed[1] / (rounds * n)


async def bench_connect(args: argparse.Namespace, ctx: tp.PolicyContext) -> list[Row]:
    server = await asyncio.start_server(_sink, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    target = f"tcp://{HOST}:{port}"

    async def ours() -> tuple[float, float, bool]:
        t0 = clock()
        c = await tp.initiate(target, policy=ctx)
        t1 = clock()
        await c.close()
        return t1 - t0, clock() - t0, False

    async def raw() -> tuple[float, float, bool]:
        t0 = clock()
        _r, w = await asyncio.open_connection(HOST, port)
        t1 = clock()
        w.close()
        await w.wait_closed()
        return t1 - t0, clock() - t0, False

    async def socket_ours() -> tuple[float, float, bool]:
        t0 = clock()
        sock = await tp.open_socket(f"{HOST}:{port}", policy=ctx)
        _r, w = await asyncio.open_connection(sock=sock)
        t1 = clock()
        w.close()
        await w.wait_closed()
        return t1 - t0, clock() - t0, False

    ready = Row("connect", "connect-to-ready, tcp (incl. decide)", "µs", False, 1.1)
    total = Row("connect+close", "connect + close, tcp", "µs", False, None)
    sock_ready = Row("open_socket", "open_socket + open_connection(sock=), tcp (incl. decide)",
                     "µs", False, None)
    sock_total = Row("open_socket+close", "open_socket + close, tcp", "µs", False, None)
    try:
        await _connect_rounds(ConnectSides(ours, raw), args.rounds, args.connects, ready,
                              total)
        await _connect_rounds(ConnectSides(socket_ours, raw), args.rounds, args.connects,
                              sock_ready, sock_total)
    finally:
        server.close()
        await server.wait_closed()
    return [ready, total, sock_ready, sock_total]


async def bench_tls(args: argparse.Namespace, ctx: tp.PolicyContext) -> list[Row]:
    cert = tp.certs.self_signed(["localhost", HOST])
    pin = tp.certs.Certificate(cert.cert_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.load_into(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=cert.cert_pem)
    server = await asyncio.start_server(_sink, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    remote = tp.Remote.parse(f"tls://{HOST}:{port}", certificates=[pin])
    store = tp.AssociationStore()
    association = store.get(remote.hostport)
    raw_session: list[ssl.SSLSession | None] = [None]
    rows: list[Row] = []

    def sides(resume: bool) -> ConnectSides:
        async def ours() -> tuple[float, float, bool]:
            t0 = clock()
            c = await tp.initiate(remote, policy=ctx, store=store)
            t1 = clock()
            reused = bool(c.transients[0].session_reused)
            await c.close()
            return t1 - t0, clock() - t0, reused

        async def raw() -> tuple[float, float, bool]:
            t0 = clock()
            tls: Any = ResumingContext(client_ctx, raw_session[0]) if resume else client_ctx
            _r, w = await asyncio.open_connection(HOST, port, ssl=tls)
            t1 = clock()
            obj = w.get_extra_info("ssl_object")
            reused = bool(obj.session_reused)
            w.close()
            await w.wait_closed()
            if resume:  # keep the newest ticket for the next connect (it has arrived by now);
                # inside the figure: ours reads its ticket in close() too (~0.3 ms: a copy)
                session = obj.session
                raw_session[0] = session if session is not None and session.has_ticket \
                    else None
            t2 = clock()
            return t1 - t0, t2 - t0, reused

        def forget() -> None:
            association.tickets.clear()

        return ConnectSides(ours, raw, None if resume else forget)

    try:
        for resume in (False, True):
            name = "tls resumed" if resume else "tls"
            title = ("connect-to-ready, tls, resumed (pinned cert)" if resume
                     else "connect-to-ready, tls, full handshake (pinned cert)")
            ready = Row(name, title, "µs", False, None)
            total = Row(name + "+close", f"connect + close, {name}", "µs", False, 1.2)
            ours_r, raw_r = await _connect_rounds(sides(resume), args.rounds,
                                                  args.tls_connects, ready, total)
            ready.notes.append(f"handshakes resumed: ours {ours_r:.0%}, raw {raw_r:.0%}")
            rows += [ready, total]
    finally:
        server.close()
        await server.wait_closed()
    return rows


# ---- (2), (3) throughput -------------------------------------------------------------------


async def _ours_stream(client: tp.Carrier, server: tp.Carrier, n: int, size: int) -> float:
    payload = b"m" * size

    async def receive() -> int:
        got = 0
        for _ in range(n):
            got += len(await server.receive())
        return got

    t0 = clock()
    task = asyncio.ensure_future(receive())
    for _ in range(n):
        await client.send(payload)
    got = await task
    elapsed = clock() - t0
    if got != n * size:
        raise RuntimeError(f"ours: received {got} bytes, expected {n * size}")
    return elapsed


async def _raw_stream(cw: asyncio.StreamWriter, sr: asyncio.StreamReader, n: int, size: int,
                      drain_every: int) -> float:
    payload = b"m" * size

    async def receive() -> int:
        got = 0
        readexactly = sr.readexactly
        for _ in range(n):
            hdr = await readexactly(4)
            got += len(await readexactly(int.from_bytes(hdr, "big")))
        return got

    t0 = clock()
    task = asyncio.ensure_future(receive())
    write = cw.write
    for i in range(1, n + 1):
        write(len(payload).to_bytes(4, "big") + payload)
        if i % drain_every == 0:
            await cw.drain()
    await cw.drain()
    got = await task
    elapsed = clock() - t0
    if got != n * size:
        raise RuntimeError(f"raw: received {got} bytes, expected {n * size}")
    return elapsed


async def bench_stream(args: argparse.Namespace, ctx: tp.PolicyContext, key: str) -> Row:
    if key == "small":
        n, size, drain_every = args.messages, SMALL, args.drain_every
        row = Row("small", f"{SMALL}-byte messages, throughput", "msg/s", True, 1.2)
    else:
        n, size, drain_every = args.big_messages, BIG, 1
        row = Row("big", "1 MiB messages, throughput", "MB/s", True, 1.0)
    client, server, listener = await _our_pair(ctx)
    _cr, cw, (sr, sw), raw_server = await _raw_pair()
    warm = max(1, n // 20)
    try:
        await _ours_stream(client, server, warm, size)
        await _raw_stream(cw, sr, warm, size, drain_every)
        for rnd in range(args.rounds):
            for side in (("ours", "raw") if rnd % 2 == 0 else ("raw", "ours")):
                gc.collect()
                if side == "ours":
                    t = await _ours_stream(client, server, n, size)
                else:
                    t = await _raw_stream(cw, sr, n, size, drain_every)
                rate = n / t if key == "small" else n * size / t / 1e6
                (row.ours if side == "ours" else row.raw).append(rate)
    finally:
        await client.close()
        await server.close()
        await listener.close()
        cw.close()
        sw.close()
        raw_server.close()
        await raw_server.wait_closed()
    row.notes.append(f"{n} messages per round and side" + (
        f"; raw drains every {drain_every} messages" if key == "small" else
        "; raw drains after every message"))
    return row


# ---- (4) request/response latency ----------------------------------------------------------


async def _ours_rtt(client: tp.Carrier, n: int) -> list[float]:
    payload = b"q" * SMALL
    out = []
    send, receive = client.send, client.receive
    for _ in range(n):
        t0 = clock()
        await send(payload)
        reply = await receive()
        out.append(clock() - t0)
    if len(reply) != SMALL:
        raise RuntimeError("ours: wrong echo")
    return out


async def _raw_rtt(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> list[float]:
    payload = b"q" * SMALL
    out = []
    for _ in range(n):
        t0 = clock()
        w.write(len(payload).to_bytes(4, "big") + payload)
        await w.drain()
        hdr = await r.readexactly(4)
        reply = await r.readexactly(int.from_bytes(hdr, "big"))
        out.append(clock() - t0)
    if len(reply) != SMALL:
        raise RuntimeError("raw: wrong echo")
    return out


async def _ours_echo(carrier: tp.Carrier) -> None:
    async for msg in carrier:
        await carrier.send(msg)


async def _raw_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while True:
            hdr = await r.readexactly(4)
            data = await r.readexactly(int.from_bytes(hdr, "big"))
            w.write(len(data).to_bytes(4, "big") + data)
            await w.drain()
    except asyncio.IncompleteReadError:
        pass


async def bench_rtt(args: argparse.Namespace, ctx: tp.PolicyContext) -> Row:
    row = Row("rtt", f"request/response, {SMALL} B echo, one in flight", "µs", False, 1.05)
    client, server, listener = await _our_pair(ctx)
    cr, cw, (sr, sw), raw_server = await _raw_pair()
    tasks = [asyncio.ensure_future(_ours_echo(server)),
             asyncio.ensure_future(_raw_echo(sr, sw))]
    try:
        await _ours_rtt(client, 200)
        await _raw_rtt(cr, cw, 200)
        for rnd in range(args.rounds):
            for side in (("ours", "raw") if rnd % 2 == 0 else ("raw", "ours")):
                gc.collect()
                s = await (_ours_rtt(client, args.rtts) if side == "ours"
                           else _raw_rtt(cr, cw, args.rtts))
                (row.ours if side == "ours" else row.raw).append(statistics.median(s) * 1e6)
    finally:
        await client.close()
        cw.close()
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.close()
        await listener.close()
        sw.close()
        raw_server.close()
        await raw_server.wait_closed()
    row.notes.append(f"{args.rtts} round trips per round and side; the round's figure is its "
                     "median round trip")
    return row


# ---- profiling -----------------------------------------------------------------------------


async def profile(args: argparse.Namespace, ctx: tp.PolicyContext, which: Sequence[str],
                  top: int) -> str:
    out = io.StringIO()
    for key in which:
        prof = cProfile.Profile()
        if key == "connect":
            sink = await asyncio.start_server(_sink, HOST, 0)
            target = f"tcp://{HOST}:{sink.sockets[0].getsockname()[1]}"
            n = args.connects * 2
            prof.enable()
            for _ in range(n):
                c = await tp.initiate(target, policy=ctx)
                await c.close()
            prof.disable()
            sink.close()
            await sink.wait_closed()
            what = f"{n} x initiate() + close()"
        elif key in ("small", "rtt"):
            client, server, listener = await _our_pair(ctx)
            echo = asyncio.ensure_future(_ours_echo(server)) if key == "rtt" else None
            n = args.messages if key == "small" else args.rtts
            prof.enable()
            if key == "small":
                await _ours_stream(client, server, n, SMALL)
            else:
                await _ours_rtt(client, n)
            prof.disable()
            await client.close()
            if echo is not None:
                await asyncio.wait([echo], timeout=5)
            await server.close()
            await listener.close()
            what = (f"{n} x {SMALL}-byte send + receive" if key == "small"
                    else f"{n} x {SMALL}-byte echo round trips (both ends ours)")
        else:
            continue
        st = pstats.Stats(prof, stream=out)
        out.write(f"\n==== cProfile [{key}]: {what}; top {top} by own time, any module ====\n")
        st.sort_stats("tottime").print_stats(top)
        out.write(f"---- [{key}] top {top} by cumulative time, taps_post only ----\n")
        st.sort_stats("cumulative").print_stats(SRC.replace("\\", "/"), top)
    return out.getvalue()


# ---- main ----------------------------------------------------------------------------------

ALL = ("connect", "tls", "small", "big", "rtt")


def _figures(args: argparse.Namespace) -> list[str]:
    only = [k.strip() for k in args.only.split(",") if k.strip()] if args.only else list(ALL)
    unknown = set(only) - set(ALL)
    if unknown:
        raise SystemExit(f"--only: unknown figure(s) {sorted(unknown)}; choose from {ALL}")
    return only


async def measure(args: argparse.Namespace, only: list[str]) -> list[Row]:
    """Measure `only` in this process (the figures' rows, printed as they come)."""
    ctx = tp.PolicyContext(system=[], app_name="bench")
    rows: list[Row] = []
    for key in only:
        if key == "connect":
            new = await bench_connect(args, ctx)
        elif key == "tls":
            new = await bench_tls(args, ctx)
        elif key in ("small", "big"):
            new = [await bench_stream(args, ctx, key)]
        else:
            new = [await bench_rtt(args, ctx)]
        if not args.child:
            for row in new:
                row.print()
        rows += new
    return rows


def isolated(args: argparse.Namespace, key: str) -> list[Row]:
    """One figure group in a fresh interpreter: the allocator and GC state one figure leaves
    behind (glibc's mmap threshold moves with what was freed) must not tilt the next one."""
    argv = [sys.executable, __file__, "--child", "--only", key, "--loop", args.loop]
    for name in ("rounds", "connects", "tls_connects", "messages", "big_messages", "rtts",
                 "drain_every"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    marker = [ln for ln in done.stdout.splitlines() if ln.startswith(_CHILD_MARK)]
    if done.returncode != 0 or not marker:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"the child measuring {key!r} failed (exit {done.returncode})")
    rows = [Row(**r) for r in json.loads(marker[-1][len(_CHILD_MARK):])]
    for row in rows:
        row.print()
    return rows


_CHILD_MARK = "ROWS-JSON "


async def probe(ctx: tp.PolicyContext) -> None:
    loop = asyncio.get_running_loop()
    selector = type(getattr(loop, "_selector", None)).__name__
    server = await asyncio.start_server(_sink, HOST, 0)
    c = await tp.initiate(f"tcp://{HOST}:{server.sockets[0].getsockname()[1]}", policy=ctx)
    d = c.explanation
    assert d is not None and c.candidate is not None
    print(f"  loopback {HOST}, {type(loop).__name__} ({selector}), GC on; decision for "
          f"tcp://{HOST}:PORT: {d.outcome}, {len(d.candidates)} candidate(s), winner "
          f"{c.stack} on {c.candidate.interface}")
    await c.close()
    server.close()
    await server.wait_closed()


def run(args: argparse.Namespace) -> int:
    only = _figures(args)
    if args.child:
        rows = asyncio.run(measure(args, only))
        print(_CHILD_MARK + json.dumps([asdict(r) for r in rows]))
        return 0
    asyncio.run(probe(tp.PolicyContext(system=[], app_name="bench")))
    how = ("each figure group in the same process" if args.in_process
           else "each figure group in a fresh child interpreter")
    print(f"  {args.rounds} rounds; {how}")
    started = clock()
    if args.in_process:
        rows = asyncio.run(measure(args, only))
    else:
        rows = [row for key in only for row in isolated(args, key)]
    print(f"\n(measured in {clock() - started:.0f} s; load average now {loadavg()})")
    print("\nsummary (markdown; each cell: median (p10–p90) over rounds; ratio = ours/raw "
          "medians (per-round paired p10–p90)):\n")
    print("| figure | unit | ours | raw asyncio | ratio | target | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    if args.profile:
        which = [k for k in ("connect", "small", "rtt") if k in only] or ["small", "rtt"]
        ctx = tp.PolicyContext(system=[], app_name="bench")
        print("\n" + asyncio.run(profile(args, ctx, which, args.top)))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    ap.add_argument("--connects", type=int, default=200,
                    help="tcp connects per round and side (default 200)")
    ap.add_argument("--tls-connects", type=int, default=60,
                    help="tls connects per round and side, per tls row (default 60)")
    ap.add_argument("--messages", type=int, default=200_000,
                    help="64-byte messages per round and side (default 200000)")
    ap.add_argument("--big-messages", type=int, default=128,
                    help="1 MiB messages per round and side (default 128)")
    ap.add_argument("--rtts", type=int, default=3000,
                    help="round trips per round and side (default 3000)")
    ap.add_argument("--drain-every", type=int, default=64,
                    help="raw 64-byte sender: await drain() every N writes (default 64)")
    ap.add_argument("--only", default="", help=f"comma list out of {','.join(ALL)}")
    ap.add_argument("--quick", action="store_true", help="2 rounds, small counts: a smoke run")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile our side of connect, small and rtt")
    ap.add_argument("--top", type=int, default=25, help="profile rows to print (default 25)")
    ap.add_argument("--in-process", action="store_true",
                    help="measure every figure in this process (default: one child per group)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_loop_option(ap)
    args = ap.parse_args(argv)
    use_loop(args.loop)
    if args.quick:
        args.rounds, args.connects, args.tls_connects = 2, 30, 10
        args.messages, args.big_messages, args.rtts = 20_000, 16, 300
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.child:
        return run(args)
    print(banner(f"runtime benchmark on the {args.loop} loop"))
    return run(args)


if __name__ == "__main__":
    run_main(main)
