"""N concurrent carriers through one Listener, client and server in separate processes.

    .venv/bin/python -P bench/scale.py                    # tcp, 10,000 carriers
    .venv/bin/python -P bench/scale.py --stack tls -n 1000
    .venv/bin/python -P bench/scale.py --stack quic -n 1000 --json

The parent starts two children, `--role server` and `--role client`, and only relays: the
server prints its port, the client opens N carriers to it *at once* (one `tp.initiate` and a
first send each, all started before any has finished; `--handshakes K` lets only K handshakes
be in flight, the carriers still all open together), every carrier sends `--messages` (3)
numbered messages and the server's carrier answers each with a numbered reply, so every
(carrier, n) is checked exactly once on both sides: nothing lost, nothing duplicated. Then the
client closes every carrier, the server sees each end, closes its Listener, and both children
count what is left: open fds (/proc/self/fd) and asyncio tasks, against the counts taken
before the first carrier. Each child raises RLIMIT_NOFILE to its hard limit first.

Printed: time to all N connected and exchanged, time to all closed, the peak RSS of each
child, lost / duplicated counts and fds / tasks left. With `--json` the last line is the
parent's verdict as JSON (tests/stress/test_scale.py reads it). Exit 0 when nothing was lost,
duplicated or left behind, 1 otherwise, 2 on an internal error.

There is no raw baseline here: the figure is "holds N", not a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
HOLD = {"carrier.idleTimeout": 300_000}
"""Accepted carriers default to a 30 s idle timeout; a carrier done with its exchange early
must stay open until all N are, or they would not be N at once."""
ONLY = {"tcp": {"stack.tcp": "require", **HOLD}, "tls": {"stack.tls": "require", **HOLD},
        "quic": {"stack.quic": "require", **HOLD}}


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def policy(tp: Any, stack: str) -> Any:
    app = {"version": 1, "layer": "app", "rules": [{"id": "only", "set": ONLY[stack]}]}
    return tp.PolicyContext(system=[], app=app, app_name="scale")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def leftovers(before_fds: int, settle: float = 10.0) -> tuple[int, int]:
    """fds and tasks beyond the starting counts, once they stop falling (closing transports
    release their sockets a loop iteration or two after close() returned)."""
    me = asyncio.current_task()
    deadline = time.monotonic() + settle
    while True:
        gc.collect()
        fds = fd_count() - before_fds
        tasks = len([t for t in asyncio.all_tasks() if t is not me])
        if (fds <= 0 and tasks == 0) or time.monotonic() > deadline:
            return fds, tasks
        await asyncio.sleep(0.05)


# ---- server ----------------------------------------------------------------------------------


async def server(args: argparse.Namespace) -> None:
    import taps_post as tp

    raise_nofile()
    cert = tp.certs.self_signed(["localhost", HOST])
    ctx = policy(tp, args.stack)
    local = tp.Local(address=HOST, port=0, certificates=[cert])
    before_fds = fd_count()
    listener = await tp.listen(local, policy=ctx)
    emit({"port": listener.ports[args.stack], "pem": cert.cert_pem})
    seen: dict[str, int] = {}
    dups: list[str] = []
    errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    ended = [0]
    all_ended = asyncio.Event()

    async def serve(c: Any) -> None:
        try:
            for _ in range(args.messages):
                msg = bytes(await c.receive()).decode()
                cid, n = msg.split(":")
                if msg in seen:
                    dups.append(msg)
                seen[msg] = seen.get(msg, 0) + 1
                await c.send(f"{cid}:{n}:r".encode())
            with contextlib.suppress(tp.ConnectionClosedError):
                extra = await c.receive()  # the client's close: nothing more arrives
                errors.append(f"unexpected message {bytes(extra)!r}")
        except Exception as exc:  # counted, reported: the parent fails the run
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await c.close()
            ended[0] += 1
            if ended[0] >= args.n:
                all_ended.set()

    def on_carrier(c: Any) -> bool:
        t = asyncio.ensure_future(serve(c))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        return True

    listener.accept(on_carrier)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.ensure_future(reader.readline())  # the parent says stop (or dies)
    waiter = asyncio.ensure_future(all_ended.wait())
    await asyncio.wait({stop, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for f in (stop, waiter):
        f.cancel()
    await asyncio.gather(stop, waiter, return_exceptions=True)
    if tasks:  # the client is done; its last closes may still be on their way here
        await asyncio.wait(set(tasks), timeout=args.settle)
    timed_out = ended[0] < args.n
    await listener.close()
    fds, left_tasks = await leftovers(before_fds, args.settle)
    want = {f"{i}:{n}" for i in range(args.n) for n in range(args.messages)}
    emit({"role": "server", "accepted": ended[0], "lost": len(want - seen.keys()),
          "extra": len(seen.keys() - want), "dups": len(dups), "errors": errors[:5],
          "error_count": len(errors), "timed_out": timed_out, "fds_left": fds,
          "tasks_left": left_tasks, "peak_rss_mb": round(peak_rss_mb(), 1)})


# ---- client ----------------------------------------------------------------------------------


async def client(args: argparse.Namespace, port: int, pem: str) -> None:
    import taps_post as tp

    raise_nofile()
    ctx = policy(tp, args.stack)
    pin = tp.certs.Certificate(pem)
    pins = [] if args.stack == "tcp" else [pin]  # a pin on tcp:// asks for security
    remote = tp.Remote.parse(f"{args.stack}://{HOST}:{port}", certificates=pins)
    store = tp.AssociationStore()
    await asyncio.sleep(0)
    before_fds = fd_count()
    seen: dict[str, int] = {}
    dups: list[str] = []
    errors: list[str] = []
    carriers: list[Any] = []

    gate = asyncio.Semaphore(args.handshakes) if args.handshakes else contextlib.nullcontext()

    async def one(i: int) -> None:
        try:
            async with gate:  # handshakes in flight, when bounded; carriers stay open
                c = await tp.initiate(remote, policy=ctx, store=store)
            carriers.append(c)
            for n in range(args.messages):
                await c.send(f"{i}:{n}".encode())
            for _ in range(args.messages):
                msg = bytes(await c.receive()).decode()
                if msg in seen:
                    dups.append(msg)
                seen[msg] = seen.get(msg, 0) + 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.n)))
    exchanged = time.perf_counter() - t0
    peak_fds = fd_count() - before_fds
    t1 = time.perf_counter()
    await asyncio.gather(*(c.close() for c in carriers), return_exceptions=True)
    closed = time.perf_counter() - t1
    del carriers[:]
    fds, left_tasks = await leftovers(before_fds, args.settle)
    want = {f"{i}:{n}:r" for i in range(args.n) for n in range(args.messages)}
    emit({"role": "client", "lost": len(want - seen.keys()), "extra": len(seen.keys() - want),
          "dups": len(dups), "errors": errors[:5], "error_count": len(errors),
          "exchanged_s": round(exchanged, 2), "closed_s": round(closed, 2),
          "peak_fds": peak_fds, "fds_left": fds, "tasks_left": left_tasks,
          "peak_rss_mb": round(peak_rss_mb(), 1)})


# ---- parent ----------------------------------------------------------------------------------


def child(args: argparse.Namespace, role: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--role", role,
           "--stack", args.stack, "-n", str(args.n), "--messages", str(args.messages),
           "--settle", str(args.settle), "--handshakes", str(args.handshakes), *extra]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"no JSON line in {text[-2000:]!r}")


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    srv = child(args, "server")
    try:
        assert srv.stdout is not None and srv.stdin is not None
        hello = json.loads(srv.stdout.readline())
        cli = child(args, "client", "--port", str(hello["port"]))
        out, _ = cli.communicate(hello["pem"], timeout=args.timeout)
        client_report = last_json(out)
        with contextlib.suppress(BrokenPipeError):  # it may have finished already
            srv.stdin.write("stop\n")
            srv.stdin.flush()
        sout, _ = srv.communicate(timeout=args.timeout)
        server_report = last_json(sout)
    finally:
        for p in (srv,):
            if p.poll() is None:
                p.kill()
                p.wait()
    ok = all(r[k] == 0 for r in (client_report, server_report)
             for k in ("lost", "extra", "dups", "error_count", "fds_left", "tasks_left"))
    ok = ok and server_report["accepted"] == args.n and not server_report["timed_out"]
    return {"stack": args.stack, "n": args.n, "messages": args.messages, "ok": ok,
            "client": client_report, "server": server_report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stack", choices=sorted(ONLY), default="tcp")
    ap.add_argument("-n", type=int, default=10_000, help="concurrent carriers (10,000)")
    ap.add_argument("--messages", type=int, default=3, help="numbered messages each way (3)")
    ap.add_argument("--handshakes", type=int, default=0,
                    help="bound on the client's handshakes in flight (0: all N at once)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait for fds and tasks to go after close (10)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per child (300 s)")
    ap.add_argument("--json", action="store_true", help="last line: the verdict as JSON")
    ap.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "server":
        asyncio.run(server(args))
        return 0
    if args.role == "client":
        pem = sys.stdin.read()
        asyncio.run(client(args, args.port, pem))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import banner

    if not args.json:
        print(banner(f"scale, {args.n:,} {args.stack} carriers"), flush=True)
    report = orchestrate(args)
    c, s = report["client"], report["server"]
    if args.json:
        print(json.dumps(report))
    else:
        print(f"  connected and exchanged {args.messages} each way: {c['exchanged_s']} s; "
              f"all closed: {c['closed_s']} s; client fds at peak +{c['peak_fds']}")
        print(f"  client: lost {c['lost']}, extra {c['extra']}, duplicated {c['dups']}, "
              f"errors {c['error_count']} {c['errors'][:2]}, fds left {c['fds_left']}, "
              f"tasks left {c['tasks_left']}, peak RSS {c['peak_rss_mb']} MB")
        print(f"  server: accepted {s['accepted']}, lost {s['lost']}, extra {s['extra']}, "
              f"duplicated {s['dups']}, errors {s['error_count']} {s['errors'][:2]}, "
              f"fds left {s['fds_left']}, tasks left {s['tasks_left']}, "
              f"peak RSS {s['peak_rss_mb']} MB")
        print("  OK" if report["ok"] else "  FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import run_main

    run_main(main)
