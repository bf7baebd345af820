"""Multipath benchmark: MPTCP carriers on one and two rate-limited paths beside plain TCP on
one, and the stall when a path goes away (MPTCP, TCP re-race, QUIC migration).

Run from the repository root, as root (it builds the two-host, two-path namespace topology of
tests/netns.py; everything it sends stays inside 198.18.0.0/15):

    .venv/bin/python -P bench/multipath.py             # 5 rounds: about 2 minutes
    .venv/bin/python -P bench/multipath.py --quick     # smoke run: about 40 s
    .venv/bin/python -P bench/multipath.py --only throughput --cc bbr

The topology: host A (client) and host B (server: one `tp.listen` Listener with a
self-signed certificate, serving mptcp, tcp, tls-mptcp, tls and quic on one port) joined by
veth-a1/veth-b1 (198.18.1.x) and veth-a2/veth-b2 (198.18.2.x); every veth end has a `tbf`
qdisc of --rate (20 mbit; netem is not available here). The in-kernel MPTCP path manager
runs in both (limits `subflows 4 add_addr_accepted 4`); A has a `subflow` endpoint on
198.18.2.1 dev veth-a2, so an MPTCP connection from veth-a1 to 198.18.1.2 gets a second
subflow over path 2 (A's cross route). Both namespaces use --cc (reno) as TCP congestion
control: see tests/runtime/test_mptcp_netns.py Rule 3 for why not this host's bbr.

Figures:

- throughput (mbit/s, higher is better): one carrier sends --count (96) messages of 64 KiB
  after a 1 MiB warm-up on the same carrier (the second subflow joins once the connection is
  fully established, after the first data); the clock runs from the first timed send to the
  server's report of the last byte. Per round, in rotating order: a plain TCP carrier on
  path 1 (the baseline, "raw" in the rows), an MPTCP carrier with no subflow endpoint (one
  path), and an MPTCP carrier with `multipathPolicy: aggregate` and the endpoint (two paths).
  Rows: MPTCP one path / TCP (target >= 0.9) and MPTCP two paths / TCP (target >= 1.7).
- failover stall (ms, lower is better): one carrier streams 1 KiB numbered messages every
  --interval (5 ms), each carrying its send time; after 0.5 s the script takes veth-a1 down
  in A (path 1: the carrier's first path) and notes the time t0. The stall is the time from
  t0 until the first message *sent after t0* is delivered to the server's application (every
  namespace shares CLOCK_MONOTONIC). Then the link comes back and A's cross route over it is
  restored, for the next sample. Kinds:
    - mptcp: an MPTCP carrier (kernel PM, two subflows): the kernel moves the data;
      beside a raw IPPROTO_MPTCP asyncio stream speaking the same framing to the same
      Listener (the same kernel, none of our runtime: "raw" in the row).
    - tcp re-race: a TCP carrier to `svc` (B's two addresses) whose path goes down: the path
      monitor notices, the connection fails with PathLostError and the carrier re-activates
      on path 2 (runtime/mobility.py); messages in flight end with on_send_error, so the row
      also notes how many were lost.
    - quic migration: a QUIC carrier from veth-a1: its connection moves to 198.18.2.1
      (new UDP socket, new connection ID, path validation).
    - mptcp userspace PM: the MPTCP carrier with `net.mptcp.pm_type=1` in A, so the
      library's path control (runtime/multipath.py) opens the veth-a2 subflow (a backup one
      under the default handover) and withdraws the veth-a1 one when its link goes.
  A kind whose piece has not landed prints "n/a: not landed"; one that never delivers after
  the link went down prints "n/a" with what happened.
- path monitor idle cost: runs bench/monitor.py (the monitor's own benchmark: CPU per second
  of an idle loop with a netlink-mode PathMonitor beside none) with short rounds, if present.

Nothing is asserted about speed: the script prints figures and exits 0 (also when not root
or without MPTCP: it says why). It exits 2 on an internal error (a wrong byte count, a
message duplicated, a figure that could not be taken at all).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import Row, banner, num, pct, run_main

HERE = Path(__file__).resolve().parent

PORT = 5001
"""The plain Listener (mptcp, tcp); PORT + 1 is the one with a certificate (tls-mptcp, tls,
quic): a Listener given certificates serves only secure stacks."""
MSG = 64 * 1024
WARMUP = 16
LIVE_TTL = 2.1
"""Seconds after path 1 comes back before the next sample (see restore_path1)."""

SERVER = r"""
# tests/netns.py SERVE_CARRIERS comes before this (Bench.__init__)
import asyncio, json, struct, sys, time
import taps_post as tp

PORT, CERT, KEY = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ARRIVALS = []

def say(obj):
    print(json.dumps(obj), flush=True)

async def serve(carrier):
    size, first = 0, None
    try:
        async for msg in carrier:
            data = bytes(msg)
            tag = data[:1]
            if tag == b"S":  # stream message: seq, send time
                seq, sent = struct.unpack("!Qd", data[1:17])
                ARRIVALS.append((seq, sent, time.monotonic()))
            elif tag == b"B":
                if first is None:
                    first = time.monotonic()
                size += len(data)
            elif tag == b"D":
                await carrier.send(json.dumps({"bytes": size, "stack": carrier.stack,
                                               "last": time.monotonic()}).encode())
                size, first = 0, None
            elif tag == b"R":
                out = list(ARRIVALS)
                ARRIVALS.clear()
                await carrier.send(json.dumps({"arrivals": out}).encode())
    except tp.ConnectionClosedError:
        pass
    finally:
        await carrier.close()

async def main():
    cert = tp.certs.Certificate.from_files(CERT, KEY)
    policy = tp.PolicyContext(system=[], app_name="srv")
    listeners = [await tp.listen(tp.Local(port=PORT), policy=policy),
                 await tp.listen(tp.Local(port=PORT + 1, certificates=[cert]), policy=policy)]
    for listener in listeners:
        serve_carriers(listener, serve, streams=True)
    say({"ports": {**listeners[0].ports, **listeners[1].ports}})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    for listener in listeners:
        await listener.close()

asyncio.run(main())
"""

CLIENT = r"""
# tests/netns.py COMMAND_LOOP comes before this (Bench.__init__)
import asyncio, json, socket, struct, sys, time
import taps_post as tp
from taps_post.runtime import api  # import cost stays outside the timings

CERT = tp.certs.Certificate.from_files(sys.argv[1])
STORE = tp.AssociationStore()
SCHEME = {"tcp": "tcp", "mptcp": "tcp", "tls": "tls", "tls-mptcp": "tls", "quic": "quic"}

def policy(stack, aggregate, prefer=None):
    values = {f"stack.{stack}": "require", "racing.attemptDelay": 100, "connTimeout": 3000}
    if prefer:  # starts there, may move elsewhere (Local(interface=) would pin it)
        values[f"interface.{prefer}"] = "prefer"
    if "mptcp" in stack:
        values["multipath"] = "active"
        if aggregate:
            values["multipathPolicy"] = "aggregate"
    app = {"version": 1, "layer": "app", "rules": [{"id": "b", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="bench")

async def open_carrier(cmd):
    scheme = SCHEME[cmd["stack"]]
    port = cmd["port"] + (scheme != "tcp")
    extra = {"certificates": [CERT]} if scheme != "tcp" else {}  # pinned: secure required
    remote = tp.Remote.parse(f"{scheme}://{cmd['target']}:{port}", **extra)
    local = tp.Local(interface=cmd["interface"]) if cmd.get("interface") else None
    return await tp.initiate(remote, local=local, store=STORE,
                             policy=policy(cmd["stack"], cmd.get("aggregate", False),
                                           cmd.get("prefer")))

def subflows(carrier):
    t = carrier.transient
    return [[s.interface, s.local_address[0] if s.local_address else None]
            for s in (t.subflows() if t is not None else ())]

async def op_bulk(cmd):
    carrier = await open_carrier(cmd)
    msg = b"B" * cmd["size"]
    try:
        for _ in range(cmd["warmup"]):
            await carrier.send(msg)
        await carrier.send(b"D")
        await asyncio.wait_for(carrier.receive(), 30)
        started = time.monotonic()
        for _ in range(cmd["count"]):
            await carrier.send(msg)
        await carrier.send(b"D")
        report = json.loads(bytes(await asyncio.wait_for(carrier.receive(), 60)))
        seconds = report["last"] - started
        return {"mbit": report["bytes"] * 8 / seconds / 1e6, "bytes": report["bytes"],
                "stack": carrier.stack, "subflows": subflows(carrier)}
    finally:
        await carrier.close()

def stream_message(seq, size):
    return b"S" + struct.pack("!Qd", seq, time.monotonic()) + b"s" * (size - 17)

async def op_stream(cmd):
    # ours: a carrier; raw: an IPPROTO_MPTCP (or TCP) asyncio stream with the same framing
    loop = asyncio.get_running_loop()
    events, errors, sent = [], [], 0
    if cmd["kind"] == "raw":
        proto = socket.IPPROTO_MPTCP if "mptcp" in cmd["stack"] else 0
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cmd["interface"].encode())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5)  # loop.sock_connect's getaddrinfo refuses IPPROTO_MPTCP
        await loop.run_in_executor(None, sock.connect, (cmd["target"], cmd["port"]))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)

        async def send(data):
            writer.write(struct.pack("!I", len(data)) + data)
            await writer.drain()

        async def receive():
            n = struct.unpack("!I", await reader.readexactly(4))[0]
            return await reader.readexactly(n)

        async def close():
            writer.close()
    else:
        carrier = await open_carrier(cmd)
        carrier.on_event(lambda e: events.append([type(e).__name__, time.monotonic()]))
        events.append(["start:" + str(carrier.transient.interface), time.monotonic()])
        if cmd.get("debug"):
            events.append([str([(c["interface"], c["stack"], c["remote_address"]) for c in
                                carrier.explanation.to_dict()["candidates"]]), 0])
            events.append([str([str(a) for a in carrier.attempts]), 0])

        async def send(data):
            await carrier.send_msg(tp.OutMessage(data),
                                   on_send_error=lambda m: errors.append(time.monotonic()))

        async def receive():
            return bytes(await carrier.receive())

        async def close():
            await carrier.close()
    try:
        started = time.monotonic()
        said = False
        while time.monotonic() - started < cmd["duration"]:
            if not said and time.monotonic() - started >= cmd["lead"]:
                print(json.dumps({"streaming": True}), flush=True)
                said = True
            try:
                await asyncio.wait_for(send(stream_message(sent, cmd["size"])), 5)
            except (asyncio.TimeoutError, tp.TapsError, OSError) as exc:
                errors.append(repr(exc))
            sent += 1
            await asyncio.sleep(cmd["interval"])
        await asyncio.sleep(0.3)  # the last messages land
        await send(b"R")
        report = json.loads(await asyncio.wait_for(receive(), 10))
        if cmd["kind"] != "raw":
            t = carrier.transient
            events.append(["end:" + str(t.interface if t else None), time.monotonic()])
        return {"sent": sent, "arrivals": report["arrivals"], "events": events,
                "errors": len(errors)}
    finally:
        await close()

OPS = {"bulk": op_bulk, "stream": op_stream}

asyncio.run(command_loop(lambda cmd: OPS[cmd["op"]](cmd)))
"""


class InternalError(Exception):
    """A figure could not be taken (lost bytes, a duplicate, a failed carrier)."""


def unavailable() -> str | None:
    """Why this script cannot measure here, or None."""
    import os

    if os.geteuid() != 0:
        return "needs root (it builds network namespaces); run it as root, e.g. in CI"
    try:
        import netns
    except ImportError as exc:  # tests/netns.py needs pytest (a dev dependency)
        return f"cannot import tests/netns.py: {exc}"
    reason = netns.unavailable()
    if reason is not None:
        return reason
    enabled = Path("/proc/sys/net/mptcp/enabled")
    if not enabled.exists() or enabled.read_text().strip() != "1":
        return "this kernel has no MPTCP enabled (net.mptcp.enabled)"
    return None


def landed() -> dict[str, bool]:
    """Which of the other issue-11 pieces this installed package has."""
    from taps_post.stacks.transient import Transient

    have = {"tcp re-race": False, "quic migration": False, "mptcp userspace PM": False}
    managers = Path("/proc/sys/net/mptcp/available_path_managers")
    try:
        import taps_post.runtime.multipath

        have["mptcp userspace PM"] = managers.exists() and "userspace" in managers.read_text()
    except ImportError:
        pass
    try:
        import taps_post.runtime.mobility  # noqa: F401

        have["tcp re-race"] = True
    except ImportError:
        pass
    try:
        from taps_post.stacks.quic.stream import QuicStreamTransient

        have["quic migration"] = QuicStreamTransient.migrate is not Transient.migrate
    except ImportError:
        pass
    return have


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import netns
        import taps_post as tp

        self.args = args
        self.netns = netns
        self.topo = netns.Topology("tpb")
        self.topo.build()
        topo = self.topo
        for ns in (topo.a, topo.b):
            topo.sysctl(ns, "net.ipv4.tcp_congestion_control", args.cc)
            topo.mptcp(ns, "limits", "set", "subflows", "4", "add_addr_accepted", "4")
        self.endpoint(True)
        for ns, devs in ((topo.a, (netns.A1, netns.A2)), (topo.b, (netns.B1, netns.B2))):
            for dev in devs:
                topo.rate_limit(ns, dev, args.rate)
        topo.hosts(topo.a, {"svc": [netns.B1_V4, netns.B2_V4]})
        cert = tp.certs.self_signed(["svc", netns.B1_V4, netns.B2_V4])
        assert cert.key_pem is not None
        (topo.tmp / "cert.pem").write_text(cert.cert_pem)
        (topo.tmp / "key.pem").write_text(cert.key_pem)
        self.server = topo.spawn(topo.b, netns.SERVE_CARRIERS + SERVER, str(PORT),
                                 str(topo.tmp / "cert.pem"), str(topo.tmp / "key.pem"))
        self.ports = self.server.read_json(15)["ports"]
        self.client = topo.spawn(topo.a, netns.COMMAND_LOOP + CLIENT,
                                 str(topo.tmp / "cert.pem"))
        self.table: list[str] = []
        """Markdown rows of figures with no raw twin (failover of TCP and QUIC)."""

    def close(self) -> None:
        self.topo.teardown()

    def endpoint(self, present: bool) -> None:
        """A's `subflow` endpoint on path 2: with it an MPTCP connection gets two paths."""
        self.topo.mptcp(self.topo.a, "endpoint", "flush")
        if present:
            self.topo.mptcp(self.topo.a, "endpoint", "add", self.netns.A2_V4, "dev",
                            self.netns.A2, "subflow")

    def ask(self, timeout: float, **cmd: Any) -> dict[str, Any]:
        try:
            return self.client.ask(cmd, timeout)
        except self.netns.UnexpectedReply as exc:  # the client's command raised
            raise InternalError(f"{cmd['op']} {cmd.get('stack')}: {exc}") from None

    # ---- throughput -----------------------------------------------------------------------

    def bulk(self, which: str) -> float:
        stack, aggregate = {"tcp": ("tcp", False), "mptcp-1": ("mptcp", False),
                            "mptcp-2": ("mptcp", True)}[which]
        self.endpoint(which == "mptcp-2")
        out = self.ask(120, op="bulk", stack=stack, aggregate=aggregate, port=PORT,
                       interface=self.netns.A1, target=self.netns.B1_V4, size=MSG,
                       count=self.args.count, warmup=WARMUP)
        if out["bytes"] != self.args.count * MSG:
            raise InternalError(f"{which}: the server counted {out['bytes']} bytes")
        if out["stack"] != stack:
            raise InternalError(f"{which}: the carrier is {out['stack']}, not {stack}")
        if which == "mptcp-2":
            self.listed = out["subflows"]
        return float(out["mbit"])

    def throughput(self) -> list[Row]:
        one = Row("mptcp-1", "MPTCP, one path, beside TCP on one path", "mbit/s", True, 0.9)
        two = Row("mptcp-2", "MPTCP aggregate, two paths, beside TCP on one path", "mbit/s",
                  True, 1.7)
        self.listed: list[Any] = []
        kinds = ["tcp", "mptcp-1", "mptcp-2"]
        for rnd in range(self.args.rounds):
            got: dict[str, float] = {}
            for which in kinds[rnd % 3:] + kinds[:rnd % 3]:
                got[which] = self.bulk(which)
            one.ours.append(got["mptcp-1"])
            one.raw.append(got["tcp"])
            two.ours.append(got["mptcp-2"])
            two.raw.append(got["tcp"])
        for row in (one, two):
            row.notes.append(f"raw = a plain TCP carrier on path 1, same round; {self.args.rate} "
                             f"tbf per path, congestion control {self.args.cc}, "
                             f"{self.args.count} x 64 KiB per sample")
        two.notes.append(f"library's subflow listing (last sample): {self.listed or 'none'}")
        self.endpoint(True)
        return [one, two]

    # ---- failover stall -------------------------------------------------------------------

    def restore_path1(self) -> None:
        """Bring veth-a1 back, and A's cross route over it that the link going down took."""
        topo, nn = self.topo, self.netns
        topo.link(topo.a, nn.A1, up=True)
        topo.exec(topo.a, "ip", "route", "replace", "198.18.2.0/24", "via", nn.B1_V4, "dev",
                  nn.A1, "metric", "1000")
        topo.exec(topo.a, "ip", "-6", "route", "replace", "fd00:2::/64", "via", nn.B1_V6,
                  "dev", nn.A1, "metric", "1000", check=False)  # unused here (IPv4 only)
        # With no carrier open the client has no path monitor subscribed (runtime/mobility.py
        # Rule 1), so its live interface snapshot (system/live.py, 2 s TTL) may still say
        # veth-a1 is down: the next decision would not offer it. Wait the TTL out.
        time.sleep(LIVE_TTL)

    def stall(self, kind: str, stack: str, target: str, *, pin: bool = False) -> dict[str, Any]:
        """One sample: stream, take path 1 down, measure; path 1 restored afterwards. `pin`:
        the carrier is opened with Local(interface=veth-a1) (else veth-a1 is preferred)."""
        args, nn = self.args, self.netns
        cmd = {"op": "stream", "kind": kind, "stack": stack, "target": target, "port": PORT,
               "interface": nn.A1 if pin or kind == "raw" else None, "size": 1024,
               "interval": args.interval, "lead": 0.5, "duration": args.stall_seconds,
               "prefer": nn.A1, "debug": self.args.debug}
        self.ask(20, **cmd)  # the first answer: streaming, past the lead
        t0 = time.monotonic()
        self.topo.link(self.topo.a, nn.A1, up=False)
        try:
            out = self.client.answer(args.stall_seconds + 30)
        except nn.UnexpectedReply as exc:
            raise InternalError(f"stream {kind} {stack}: {exc}") from None
        finally:
            self.restore_path1()
        seqs = [a[0] for a in out["arrivals"]]
        if len(seqs) != len(set(seqs)):
            raise InternalError(f"stream {kind} {stack}: a message arrived twice")
        after = [arrival for _, sent, arrival in out["arrivals"] if sent >= t0]
        return {"stall": (min(after) - t0) * 1000 if after else None,
                "lost": out["sent"] - len(seqs), "errors": out["errors"],
                "events": [e[0] for e in out["events"]]}

    def failover(self) -> tuple[list[Row], list[str]]:
        have = landed()
        nn = self.netns
        row = Row("stall-mptcp", "failover stall, MPTCP (kernel PM), link down -> next "
                  "message", "ms", False, None)
        singles: dict[str, list[dict[str, Any]]] = {"tcp re-race": [], "quic migration": [],
                                                    "mptcp userspace PM": []}
        for rnd in range(self.args.rounds):
            sides = ("ours", "raw") if rnd % 2 == 0 else ("raw", "ours")
            for side in sides:
                got = self.stall(side, "mptcp", nn.B1_V4, pin=True)
                if got["stall"] is None:
                    raise InternalError(f"MPTCP {side}: nothing delivered after the link "
                                        f"went down ({got})")
                (row.ours if side == "ours" else row.raw).append(got["stall"])
            if have["tcp re-race"]:
                singles["tcp re-race"].append(self.stall("ours", "tcp", "svc"))
            if have["quic migration"] and "quic" in self.ports:
                singles["quic migration"].append(self.stall("ours", "quic", nn.B1_V4))
        if have["mptcp userspace PM"]:
            # The library's path control (runtime/multipath.py): veth-a2 is a backup
            # subflow under handover; on the link going down the controller withdraws the
            # veth-a1 subflow. pm_type is per namespace; the decision reads it live (TTL).
            self.topo.sysctl(self.topo.a, "net.mptcp.pm_type", 1)
            time.sleep(LIVE_TTL)
            try:
                for _ in range(self.args.rounds):
                    singles["mptcp userspace PM"].append(self.stall("ours", "mptcp", nn.B1_V4))
            finally:
                self.topo.sysctl(self.topo.a, "net.mptcp.pm_type", 0)
                time.sleep(LIVE_TTL)
        row.notes.append("raw = an IPPROTO_MPTCP asyncio stream, same framing, same Listener")
        row.notes.append("samples (ms): ours " + ", ".join(num(x) for x in sorted(row.ours))
                         + "; raw " + ", ".join(num(x) for x in sorted(row.raw)))
        row.notes.append("bimodal: ~0 when nothing was in flight on path 1 at the link-down "
                         "(new data goes to path 2 at once); about 2 RTOs (200-450 ms) when "
                         "something was, since MPTCP delivers in order and reinjects it on "
                         "path 2 only after path 1's retransmission timer")
        lines = []
        for name, samples in singles.items():
            if not have[name]:
                lines.append(f"failover stall, {name}: n/a: not landed")
                continue
            if not samples:
                lines.append(f"failover stall, {name}: n/a: the listener serves no "
                             f"{name.split()[0]}")
                continue
            ok = [s["stall"] for s in samples if s["stall"] is not None]
            lost = [s["lost"] for s in samples]
            events = samples[-1]["events"]
            if not ok:
                lines.append(f"failover stall, {name}: n/a: nothing sent after the link went "
                             f"down was delivered ({len(samples)} samples; events "
                             f"{events})")
                continue
            lines.append(f"failover stall, {name}: median {num(statistics.median(ok))} ms, "
                         f"p10 {num(pct(ok, 10))}, p90 {num(pct(ok, 90))} ({len(ok)} of "
                         f"{len(samples)} samples: {', '.join(num(x) for x in sorted(ok))}); "
                         f"messages lost per sample {lost}; events (last) {events}")
            self.table.append(f"| failover stall, {name}, link down -> next message | ms | "
                              f"{num(statistics.median(ok))} ({num(pct(ok, 10))}–"
                              f"{num(pct(ok, 90))}) | n/a | n/a | none | (info) |")
        return [row], lines


def monitor_cost(args: argparse.Namespace) -> list[str]:
    """bench/monitor.py's idle figures with short rounds (it is the monitor's own script)."""
    script = HERE / "monitor.py"
    if not script.exists():
        return ["path monitor idle cost: n/a: bench/monitor.py not landed"]
    argv = [sys.executable, "-P", str(script), "--rounds", str(max(2, args.rounds // 2)),
            "--seconds", "2" if not args.quick else "1", "--toggles", "3"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        return [f"path monitor idle cost: n/a: bench/monitor.py exited {out.returncode}: "
                f"{out.stderr.strip()[-500:]}"]
    keep = [ln for ln in out.stdout.splitlines() if ln.startswith("|")]
    return ["path monitor idle cost (bench/monitor.py " + " ".join(argv[3:]) + "):", *keep]


@contextlib.contextmanager
def bench(args: argparse.Namespace) -> Iterator[Bench]:
    b = Bench(args)
    try:
        yield b
    finally:
        b.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    ap.add_argument("--count", type=int, default=96,
                    help="64 KiB messages per throughput sample (default 96: 6 MiB)")
    ap.add_argument("--rate", default="20mbit", help="tbf rate of every path (default 20mbit)")
    ap.add_argument("--cc", default="reno", help="TCP congestion control (default reno)")
    ap.add_argument("--interval", type=float, default=0.005,
                    help="seconds between stream messages in the stall figures")
    ap.add_argument("--stall-seconds", type=float, default=2.5,
                    help="length of one stall sample's stream (link down at 0.5 s)")
    ap.add_argument("--only", default="throughput,failover,monitor",
                    help="comma-separated: throughput, failover, monitor")
    ap.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="2 rounds, small counts")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.count, args.stall_seconds = 2, 48, 2.0
    only = set(args.only.split(","))
    print(banner("multipath benchmark"))
    reason = unavailable()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    rows: list[Row] = []
    lines: list[str] = []
    table: list[str] = []
    if only & {"throughput", "failover"}:
        with bench(args) as b:
            if "mptcp" not in b.ports:
                print(f"skipped: the listener serves no MPTCP here ({b.ports})")
                return 0
            if "throughput" in only:
                rows += b.throughput()
                for row in rows[-2:]:
                    row.print()
            if "failover" in only:
                stall_rows, lines = b.failover()
                for row in stall_rows:
                    row.print()
                rows += stall_rows
                table = b.table
                print()
                for line in lines:
                    print(line)
    if "monitor" in only:
        print()
        for line in monitor_cost(args):
            print(line)
    if rows:
        print("\n| figure | unit | ours median (p10–p90) | raw median (p10–p90) | ratio "
              "(per-round p10–p90) | target | verdict |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(row.markdown())
        for line in table:
            print(line)
    return 0


if __name__ == "__main__":
    run_main(main)
