"""Path monitor benchmark: what watching the network costs when nothing changes, and how soon
a change reaches a subscriber.

Run from the repository root (as root: it makes its own network namespace, so nothing on the
machine changes the figures and the link it toggles is its own):

    .venv/bin/python -P bench/monitor.py              # 7 rounds of 5 s per side, ~2 minutes
    .venv/bin/python -P bench/monitor.py --quick      # smoke run, ~15 s
    .venv/bin/python -P bench/monitor.py --here       # in this namespace (no root needed;
                                                      # the latency figure is skipped)

Figures, all in one process, one event loop, sides interleaved in every round and the order
flipped from round to round (bench/_report.py):

- idle CPU, netlink: CPU time (time.process_time: user + system, all threads) of the
  process over --seconds of an idle event loop with a `PathMonitor` subscribed in netlink
  mode (its rtnetlink socket on `loop.add_reader`), beside the same loop with no monitor at
  all. "ours" is CPU µs per second of wall time. Target: ratio <= 1.5 (the two should be
  equal: no task, no timer, a socket that stays silent).
- idle CPU, polling: the same with the polling fallback (`mode="polling"`, a snapshot every
  POLL_INTERVAL = 2 s), beside no monitor. No target: it shows what the events save.
- link-down latency: `ip link set DEV down` (an RTM_SETLINK sent through pyroute2 from a
  worker thread; the clock starts just before the request) to the subscriber's callback,
  which runs after the monitor parsed the events and refreshed the live interface snapshot.
  The raw twin: a bare rtnetlink socket joined to the same groups on `loop.add_reader`,
  stamped at the first datagram, nothing parsed. Both in ms; the up transition is measured
  too and counts as a sample. No target; the difference is the monitor's own work (parse,
  discovery, delivery).

Nothing is asserted about speed: the script reports and exits 0; non-zero only on an internal
error (a change that never arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Row, banner, order, run_main
from taps_post.runtime.monitor import PathMonitor
from taps_post.system.netevents import GROUPS

DEV, PEER = "bench-m0", "bench-m1"
clock = time.perf_counter


async def idle_cpu(seconds: float, monitor: PathMonitor | None) -> float:
    """CPU µs per wall second of an idle loop, with `monitor` subscribed if given."""
    unsubscribe = None
    if monitor is not None:
        unsubscribe = monitor.subscribe(lambda changes, interfaces: None)
        await monitor.started()
    gc.collect()  # what the last round left for the collector is not this round's cost
    c0, w0 = time.process_time(), clock()
    await asyncio.sleep(seconds)  # the idle period under measurement
    cpu, wall = time.process_time() - c0, clock() - w0
    if unsubscribe is not None:
        unsubscribe()
    return cpu / wall * 1e6


async def bench_idle(args: argparse.Namespace) -> list[Row]:
    netlink = Row("idle-netlink", "idle CPU, netlink monitor vs none", "CPU µs/s", False, 1.5)
    polling = Row("idle-polling", "idle CPU, polling monitor vs none", "CPU µs/s", False, None)
    events = PathMonitor(mode="netlink")
    polls = PathMonitor(mode="polling")
    # Warm-up outside the figures: pyroute2's import, the first discovery.
    await idle_cpu(1.0, events)
    await idle_cpu(1.0, polls)
    for rnd in range(args.rounds):
        for row, monitor in ((netlink, events), (polling, polls)):
            for side in order(rnd):
                value = await idle_cpu(args.seconds, monitor if side == "ours" else None)
                (row.ours if side == "ours" else row.raw).append(value)
    for m in (events, polls):
        if m.mode not in ("stopped",):
            raise RuntimeError(f"monitor left running: {m.mode}")
        m.close()
    netlink.notes.append(f"{args.seconds:g} s per side per round; the process's netlink "
                         "socket stays on the loop on the no-monitor side too (monitor "
                         "Rule 1): silent, it costs nothing there either")
    polling.notes.append("one discovery every 2 s (psutil, sysfs): the cost events avoid")
    return [netlink, polling]


class Toggler:
    """Sets DEV down/up from its own thread with pyroute2 (made in that thread); returns the
    perf_counter stamp taken just before each request."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="toggle")
        self.ipr: Any = None

    def _set(self, up: bool) -> float:
        if self.ipr is None:
            from pyroute2 import IPRoute

            self.ipr = IPRoute()
        index = socket.if_nametoindex(DEV)
        t0 = clock()
        self.ipr.link("set", index=index, state="up" if up else "down")
        return t0

    async def set(self, up: bool) -> float:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._set, up)

    def close(self) -> None:
        def shut() -> None:
            if self.ipr is not None:
                self.ipr.close()
        self.pool.submit(shut).result()
        self.pool.shutdown()


async def one_transition(toggler: Toggler, up: bool, side: str, monitor: PathMonitor) -> float:
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[float] = loop.create_future()
    want = "up" if up else "down"

    def ours(changes: Any, interfaces: Any) -> None:
        if not arrived.done() and any(c.kind == "link" and c.action == want
                                      and c.interface == DEV for c in changes):
            arrived.set_result(clock())

    if side == "ours":
        unsubscribe = monitor.subscribe(ours)
        await monitor.started()
        raw = None
    else:
        raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                            socket.NETLINK_ROUTE)
        raw.bind((0, GROUPS))

        def readable() -> None:
            assert raw is not None
            while True:
                try:
                    raw.recv(1 << 16)
                except BlockingIOError:
                    break
            if not arrived.done():
                arrived.set_result(clock())

        loop.add_reader(raw.fileno(), readable)
    try:
        t0 = await toggler.set(up)
        t1 = await asyncio.wait_for(arrived, 5)
    finally:
        if raw is not None:
            loop.remove_reader(raw.fileno())
            raw.close()
        else:
            unsubscribe()
    # Let the rest of the burst (the peer's carrier, IPv6 addresses) pass before the next.
    await asyncio.sleep(0.05)
    return (t1 - t0) * 1000


async def bench_latency(args: argparse.Namespace) -> list[Row]:
    subprocess.run(["ip", "link", "add", DEV, "type", "veth", "peer", "name", PEER], check=True)
    subprocess.run(["ip", "link", "set", PEER, "up"], check=True)
    subprocess.run(["ip", "link", "set", DEV, "up"], check=True)
    row = Row("latency", "link down/up -> subscriber called", "ms", False, None)
    monitor = PathMonitor(mode="netlink")
    toggler = Toggler()
    try:
        await one_transition(toggler, False, "ours", monitor)  # warm-up
        await one_transition(toggler, True, "ours", monitor)
        for rnd in range(args.rounds):
            for side in order(rnd):
                samples = []
                for _ in range(args.toggles):
                    samples.append(await one_transition(toggler, False, side, monitor))
                    samples.append(await one_transition(toggler, True, side, monitor))
                (row.ours if side == "ours" else row.raw).append(statistics.median(samples))
    finally:
        toggler.close()
        monitor.close()
    row.notes.append("raw: a bare rtnetlink socket on add_reader, stamped at the first "
                     "datagram; ours: parsed, snapshot refreshed, delivered")
    return [row]


async def measure(args: argparse.Namespace) -> list[Row]:
    rows = await bench_idle(args)
    if not args.here:
        rows += await bench_latency(args)
    return rows


def child(args: argparse.Namespace) -> int:
    rows = asyncio.run(measure(args))
    for row in rows:
        row.print()
    print("\n| figure | unit | ours median (p10–p90) | raw median (p10–p90) | ratio (per-round) "
          "| target | verdict |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="idle seconds per side per round (default 5)")
    ap.add_argument("--toggles", type=int, default=10,
                    help="down+up pairs per side per round (default 10)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1 s: a smoke run")
    ap.add_argument("--here", action="store_true",
                    help="run in this network namespace; skips the latency figure")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.toggles = 2, 1.0, 4
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.child or args.here:
        if not args.child:
            print(banner("path monitor benchmark (this namespace)"))
        return child(args)
    if os.geteuid() != 0:
        raise SystemExit("needs root for its own network namespace; or run with --here")
    print(banner("path monitor benchmark"))
    ns = f"tpbench-mon-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        argv_child = [sys.executable, "-P", str(Path(__file__).resolve()), "--child",
                      "--rounds", str(args.rounds), "--seconds", str(args.seconds),
                      "--toggles", str(args.toggles)]
        return subprocess.run(["ip", "netns", "exec", ns, *argv_child], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    run_main(main)
