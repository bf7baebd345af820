"""Resolution benchmark: how soon taps_post's own DNS client (HEv3 resolution racing) starts
connecting, beside the event loop's getaddrinfo, and what racing saves when AAAA is late.

Run from the repository root, as root (it builds the two-host namespace topology of
tests/netns.py and runs a DNS server inside it; every packet stays inside 198.18.0.0/15,
fd00::/8 and the namespaces' loopback):

    .venv/bin/python -P bench/resolution.py            # 5 rounds: about 40 s
    .venv/bin/python -P bench/resolution.py --quick    # smoke run: about 15 s
    .venv/bin/python -P bench/resolution.py --only first-attempt --rounds 9

The lab (tests/dnslab.py): host A (the client) runs Knot DNS (knotd, Debian's
authoritative server) on 127.0.0.1:53, authoritative for `bench.test.` (`svc.bench.test` A
198.18.1.2 and AAAA fd00:1::2, TTL 300), and the lab's delaying relay on 127.0.0.2:53, which
forwards every query to knot and answers AAAA --aaaa-delay (400) ms after the query came.
A's resolv.conf (/etc/netns/A/resolv.conf, which glibc's getaddrinfo and taps_post's
resolver both read) names knot or the relay, per figure. Host B runs a plain asyncio TCP
server on port 5001 on both addresses. The name is in no hosts file, so both sides ask the
DNS server.

Figures (wall time, time.perf_counter and the trace's t_ms, one client process per figure
group, ours and raw alternated sample by sample, the order flipped every round):

- first-attempt (ms, lower is better): ours is the time from `tp.initiate("tcp://svc.bench.
  test:5001")` to its first `attempt.started` trace event (t_ms: the decision, A and AAAA
  sent together to knot, the first pass, the race's first start), with the DNS cache
  flushed before each sample (resolver.default_client().flush(): every sample asks knot),
  and the connection then completed and closed outside the figure. Raw: `await
  loop.getaddrinfo("svc.bench.test", 5001, type=SOCK_STREAM)` through the same knot
  (glibc: A and AAAA in parallel on one socket). No target (information): ours includes the
  whole decision as well as resolution.
- first-attempt, cached (information): ours with its DNS cache warm (the TTL-true cache
  answers; nothing is sent), beside the same uncached getaddrinfo (glibc has no cache here).
- delayed-AAAA ready (ms): resolv.conf names the relay; AAAA answers --aaaa-delay ms after A.
  Ours: `tp.initiate()` to ready (resolution racing: the IPv4 attempt starts
  racing.resolutionDelay, 50 ms, after the A answer; the late AAAA would join a race still
  running). Raw: `asyncio.open_connection("svc.bench.test", 5001)`, i.e. getaddrinfo (which
  waits for both answers) then connect. Target: ratio <= 0.5 (racing must not wait for
  AAAA).
- the same without delay (information): both through the relay with the delay 0, so the
  relay's own cost is in both sides and the delayed row's saving is read against it.
- delayed-AAAA ready, no resolver (information): taps_post itself without resolution
  racing: the client's $TAPS_POST_RESOLV_CONF names no nameserver, so initiate() falls back
  to getaddrinfo (what it did before issue 12) and waits for AAAA like the raw side.

Each row also notes ours' median timeline (the A and AAAA resolution.answer events, the
resolution passes, the first attempt.started, ready, in ms after initiate()) and whether
ours used its DNS client (a resolution.answer from a nameserver) or getaddrinfo.

Printed per figure: p10 / median / p90 over the rounds (each round's figure is the median
of its --samples samples) for ours and raw, the ratio of the medians and the per-round paired
ratios (bench/_report.py). Nothing is asserted about speed: the script exits 0 (also when not
root, or without knotd: it says why), and 2 on an internal error (a failed connection, a
wrong answer).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import Row, banner, run_main

NAME = "svc.bench.test"
PORT = 5001
KNOT = "127.0.0.1"
RELAY = "127.0.0.2"

SERVER = r"""
import asyncio, json, socket, sys

async def handle(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    writer.close()

async def main():
    sock = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6,
                                dualstack_ipv6=True)
    server = await asyncio.start_server(handle, sock=sock)
    print(json.dumps({"port": int(sys.argv[1])}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    server.close()

asyncio.run(main())
"""

CLIENT = r"""
# tests/netns.py COMMAND_LOOP comes before this
import asyncio, gc, socket, statistics, time
import taps_post as tp
from taps_post.runtime import api  # import cost stays outside the timings
from taps_post import resolver as _resolver_package  # noqa: F401 (loaded before timing)
from taps_post.resolver.client import default_client
from taps_post.runtime.association import default_store

NAME, PORT = sys.argv[1], int(sys.argv[2])
CTX = tp.PolicyContext(system=[], app_name="bench")
clock = time.perf_counter

def flush():
    client = default_client()
    if client is not None:  # None: no nameserver configured, initiate() uses getaddrinfo
        client.flush()

async def ours(cached):
    if not cached:
        flush()
    first, answers, marks = [], [], {}

    def trace(name, info):
        if name == "attempt.started" and not first:
            first.append(info["t_ms"])
            marks.setdefault("first attempt.started", info["t_ms"])
        elif name == "resolution.answer":
            answers.append(info["status"])
            marks.setdefault(f"{info['rtype']} answer", info["t_ms"])
        elif name == "resolution.pass":
            marks.setdefault(f"pass {info['number']}", info["t_ms"])

    t0 = clock()
    carrier = await tp.initiate(f"tcp://{NAME}:{PORT}", policy=CTX, trace=trace)
    ready = (clock() - t0) * 1000
    where = (carrier.stack, carrier.remote_address[0], sorted(set(answers)))
    await carrier.close()
    if not first:
        raise RuntimeError("no attempt.started event")
    marks["ready"] = ready
    return first[0], ready, where, marks

async def gai():
    loop = asyncio.get_running_loop()
    t0 = clock()
    infos = await loop.getaddrinfo(NAME, PORT, type=socket.SOCK_STREAM)
    took = (clock() - t0) * 1000
    return took, sorted({i[4][0] for i in infos})

async def open_connection():
    t0 = clock()
    _reader, writer = await asyncio.open_connection(NAME, PORT)
    ready = (clock() - t0) * 1000
    peer = writer.get_extra_info("peername")[0]
    writer.close()
    await writer.wait_closed()
    return ready, peer

try:
    import aiohappyeyeballs
except ImportError:  # the column says so; pip install '.[test]' brings it
    aiohappyeyeballs = None

POLICIES = {}

def policy(attempt_ms):
    # taps_post's defaults (None), or racing.attemptDelay set to the peers' delay
    if attempt_ms not in POLICIES:
        app = None if attempt_ms is None else {"version": 1, "layer": "app", "rules": [
            {"id": "equal", "set": {"racing": {"attemptDelay": attempt_ms}}}]}
        POLICIES[attempt_ms] = tp.PolicyContext(system=[], app=app, app_name="bench")
    return POLICIES[attempt_ms]

async def peer(side, delay_s, attempt_ms, fresh):
    # Time to a ready connection for one client: ours (fresh: no history, DNS cache
    # flushed), asyncio.open_connection(happy_eyeballs_delay=), or aiohappyeyeballs as
    # aiohttp drives it (loop.getaddrinfo with AI_ADDRCONFIG, then start_connection).
    loop = asyncio.get_running_loop()
    if side == "ours":
        if fresh:
            flush()
            default_store.clear()
        t0 = clock()
        carrier = await tp.initiate(f"tcp://{NAME}:{PORT}", policy=policy(attempt_ms))
        ready = (clock() - t0) * 1000
        peer_address = carrier.remote_address[0]
        await carrier.close()
        return ready, peer_address
    t0 = clock()
    if side == "asyncio":
        _reader, writer = await asyncio.open_connection(NAME, PORT,
                                                        happy_eyeballs_delay=delay_s)
    else:
        infos = await loop.getaddrinfo(NAME, PORT, type=socket.SOCK_STREAM,
                                       flags=socket.AI_ADDRCONFIG)
        sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=delay_s,
                                                       interleave=1)
        _reader, writer = await asyncio.open_connection(sock=sock)
    ready = (clock() - t0) * 1000
    peer_address = writer.get_extra_info("peername")[0]
    writer.close()
    await writer.wait_closed()
    return ready, peer_address

async def peers(cmd):
    sides = ["ours", "asyncio"] + (["aiohappyeyeballs"] if aiohappyeyeballs else [])
    out = {side: [] for side in sides}
    where = {side: [] for side in sides}
    gc.collect()
    for i in range(cmd["samples"]):
        turn = (i + cmd["round"]) % len(sides)
        for side in sides[turn:] + sides[:turn]:
            ready, address = await peer(side, cmd["delay_s"], cmd["attempt_ms"],
                                        cmd["fresh"])
            out[side].append(ready)
            where[side].append(address)
    return {"ready": out, "where": where}

async def handle(cmd):
    if "peers" in cmd:
        return await peers(cmd)
    out = {"ours_first": [], "ours_ready": [], "raw": [], "ours_where": [], "raw_where": [],
           "ours_marks": []}
    gc.collect()
    for i in range(cmd["samples"]):
        order = ("ours", "raw") if (i + cmd["round"]) % 2 == 0 else ("raw", "ours")
        for side in order:
            if side == "ours":
                first, ready, where, marks = await ours(cmd["cached"])
                out["ours_marks"].append(marks)
                out["ours_first"].append(first)
                out["ours_ready"].append(ready)
                out["ours_where"].append(list(where))
            elif cmd["raw"] == "getaddrinfo":
                took, addresses = await gai()
                out["raw"].append(took)
                out["raw_where"].append(addresses)
            else:
                ready, peer = await open_connection()
                out["raw"].append(ready)
                out["raw_where"].append(peer)
    return out

asyncio.run(command_loop(handle))
"""


class InternalError(Exception):
    """A figure could not be taken (a failed connection, a wrong answer)."""


def unavailable() -> str | None:
    """Why this script cannot measure here, or None."""
    import os

    if os.geteuid() != 0:
        return "needs root (it builds network namespaces); run it as root, e.g. in CI"
    try:
        import dnslab
        import netns
    except ImportError as exc:  # tests/netns.py needs pytest (a dev dependency)
        return f"cannot import tests/netns.py and tests/dnslab.py: {exc}"
    missing = dnslab.missing_tools()
    if missing is not None:
        return missing
    reason = netns.unavailable()
    if reason is not None:
        return reason
    try:
        import taps_post.resolver.client  # noqa: F401
    except ImportError as exc:
        return f"taps_post has no DNS client here: {exc}"
    return None


class Lab:
    def __init__(self, args: argparse.Namespace) -> None:
        import dnslab
        import netns

        self.args = args
        self.netns = netns
        self.topo = netns.Topology("tpn")
        self._stack = contextlib.ExitStack()
        try:
            self.topo.build()
            topo = self.topo
            topo.hosts(topo.a, {})  # the name is in no hosts file: both sides ask DNS
            self.nameserver(KNOT)
            zone = dnslab.Zone("bench.test.")
            zone.add("svc", 300, "A", netns.B1_V4)
            zone.add("svc", 300, "AAAA", netns.B1_V6)
            self._stack.enter_context(dnslab.knot(zone, (KNOT, 53), netns=topo.a))
            self.relay = self._stack.enter_context(dnslab.delay_relay(
                (KNOT, 53), {"AAAA": args.aaaa_delay / 1000}, (RELAY, 53), netns=topo.a))
            self.server = topo.spawn(topo.b, SERVER, str(PORT))
            self.server.read_json(10)
        except BaseException:
            self.close()
            raise
        self.resolved_by: set[str] = set()
        """How ours resolved (resolution.answer trace events seen, or none: getaddrinfo)."""

    def nameserver(self, address: str) -> None:
        """A's resolv.conf names `address` only (rewritten in place: the bind mount of
        `ip netns exec` and both resolvers see it)."""
        self.topo.resolv_conf(self.topo.a, [address], ["timeout:2", "attempts:2"])

    def delay(self, ms: float) -> None:
        self.relay.set({"AAAA": ms / 1000})

    def client(self, resolv_conf: str | None = None) -> Any:
        """A client process; `resolv_conf` is its $TAPS_POST_RESOLV_CONF (taps_post's
        resolver only: glibc reads /etc/resolv.conf whatever it says)."""
        old = os.environ.get("TAPS_POST_RESOLV_CONF")
        if resolv_conf is not None:
            os.environ["TAPS_POST_RESOLV_CONF"] = resolv_conf
        try:
            return self.topo.spawn(self.topo.a, self.netns.COMMAND_LOOP + CLIENT, NAME,
                                   str(PORT))
        finally:
            if resolv_conf is not None:
                if old is None:
                    del os.environ["TAPS_POST_RESOLV_CONF"]
                else:
                    os.environ["TAPS_POST_RESOLV_CONF"] = old

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        self.topo.teardown()

    # ---- figures ----------------------------------------------------------------------------

    def rounds(self, row: Row, *, ours: str, raw: str, cached: bool,
               resolv_conf: str | None = None) -> None:
        """One client process; per round one command of --samples samples a side, the
        round's figure the median of them. `ours`: "first" (to the first attempt.started)
        or "ready"; `raw`: "getaddrinfo" or "open_connection"."""
        timeline: dict[str, list[float]] = {}
        self.resolved_by.clear()
        with self.client(resolv_conf) as client:
            cmd = {"samples": 1, "round": 0, "raw": raw, "cached": cached}
            client.ask(cmd, 30)  # warm-up: imports, first decision, knot's first answer
            for rnd in range(self.args.rounds):
                out = client.ask({**cmd, "samples": self.args.samples, "round": rnd}, 60)
                self.check(out, raw)
                row.ours.append(median(out[f"ours_{ours}"]))
                for marks in out["ours_marks"]:
                    for mark, t_ms in marks.items():
                        timeline.setdefault(mark, []).append(t_ms)
                row.raw.append(median(out["raw"]))
        if timeline:
            steps = sorted(timeline.items(), key=lambda kv: median(kv[1]))
            row.notes.append("ours, median ms after initiate(): " + ", ".join(
                f"{mark} {median(ts):.1f}" for mark, ts in steps))
        row.notes.append("ours resolved through " + ", ".join(sorted(self.resolved_by)))
        if self.resolved_by != {"taps_post's DNS client"} and resolv_conf is None:
            row.notes.append("taps_post did not use its DNS client here (no resolution.answer "
                             "from a nameserver): this figure is not resolution racing")

    def check(self, out: dict[str, Any], raw: str) -> None:
        netns = self.netns
        for stack, address, answers in out["ours_where"]:
            if stack != "tcp" or address not in (netns.B1_V4, netns.B1_V6):
                raise InternalError(f"ours connected {stack} to {address}")
            via = {"getaddrinfo", "hosts"} & set(answers)
            self.resolved_by.add(", ".join(sorted(via)) if via else
                                 "taps_post's DNS client" if answers else "getaddrinfo")
        for seen in out["raw_where"]:
            want = [netns.B1_V4, netns.B1_V6] if raw == "getaddrinfo" else None
            if want is not None and sorted(seen) != sorted(want):
                raise InternalError(f"getaddrinfo answered {seen}")

    def first_attempt(self) -> list[Row]:
        self.nameserver(KNOT)
        cold = Row("first-attempt", "initiate() to first attempt.started (knot, cache "
                   "flushed) vs getaddrinfo", "ms", False, None)
        self.rounds(cold, ours="first", raw="getaddrinfo", cached=False)
        warm = Row("first-attempt-cached", "initiate() to first attempt.started, DNS cache "
                   "warm, vs getaddrinfo", "ms", False, None)
        self.rounds(warm, ours="first", raw="getaddrinfo", cached=True)
        return [cold, warm]

    def delayed_aaaa(self) -> list[Row]:
        self.nameserver(RELAY)
        rows = []
        for ms, target in ((self.args.aaaa_delay, 0.5), (0.0, None)):
            self.delay(ms)
            what = f"AAAA {ms:g} ms late" if ms else "AAAA not delayed (relay only)"
            ready = Row(f"ready-aaaa-{ms:g}", f"time to ready, {what}: initiate() vs "
                        "getaddrinfo + open_connection", "ms", False, target)
            self.rounds(ready, ours="ready", raw="open_connection", cached=False)
            rows.append(ready)
        self.delay(self.args.aaaa_delay)
        # taps_post itself without resolution racing: no nameserver in its resolv.conf, so
        # initiate() falls back to getaddrinfo (as before issue 12) and waits for both.
        empty = self.topo.tmp / "no-nameserver.conf"
        empty.write_text("# no nameserver: taps_post resolves with getaddrinfo\n")
        ms = self.args.aaaa_delay
        gai = Row(f"ready-aaaa-{ms:g}-gai", f"time to ready, AAAA {ms:g} ms late: initiate() "
                  "without a resolver (getaddrinfo fallback) vs getaddrinfo + open_connection",
                  "ms", False, None)
        self.rounds(gai, ours="ready", raw="open_connection", cached=False,
                    resolv_conf=str(empty))
        rows.append(gai)
        return rows


    def peers(self) -> list[Row]:
        """taps_post beside the clients a user would pick instead, one client process, the
        three alternated sample by sample: a dual-stack name whose IPv6 path is black-holed
        (nft drops SYNs to B's IPv6 address; both answers prompt), and one whose AAAA answer
        is --aaaa-delay ms late. Each with every side's default delays (ours: attemptDelay
        250, resolutionDelay 50 ms; the peers' happy_eyeballs_delay 0.25 s, aiohttp's
        default), then with an equal --equal-delay for every side; and each for a first
        connection (ours: no history, DNS cache flushed) and a later one (ours remembers)."""
        rows: list[Row] = []
        topo = self.topo
        equal = self.args.equal_delay
        scenarios = (("v6-blackholed", "IPv6 black-holed"),
                     (f"aaaa-{self.args.aaaa_delay:g}", f"AAAA {self.args.aaaa_delay:g} ms late"))
        for key, what in scenarios:
            if key == "v6-blackholed":
                self.nameserver(KNOT)
                topo.blackhole(topo.b, daddr=self.netns.B1_V6)
            else:
                topo.clear_blackholes(topo.b)
                self.nameserver(RELAY)
                self.delay(self.args.aaaa_delay)
            try:
                for delays, delay_s, attempt_ms in (("default delays", 0.25, None),
                                                    (f"all delays {equal:g} ms", equal / 1000,
                                                     equal)):
                    for fresh in (True, False):
                        rows += self.peer_rows(key, what, delays, delay_s, attempt_ms, fresh)
            finally:
                topo.clear_blackholes(topo.b)
        return rows

    def peer_rows(self, key: str, what: str, delays: str, delay_s: float,
                  attempt_ms: int | None, fresh: bool) -> list[Row]:
        which = "first connection" if fresh else "later connection"
        slug = f"peers-{key}-{'default' if attempt_ms is None else 'equal'}-" \
               f"{'first' if fresh else 'later'}"
        rows = {side: Row(f"{slug}-vs-{side}", f"{what}, {delays}, {which}: taps_post vs "
                          f"{label}", "ms", False, 1.0)
                for side, label in (("asyncio", "asyncio.open_connection(happy_eyeballs_"
                                     f"delay={delay_s:g})"),
                                    ("aiohappyeyeballs", "aiohappyeyeballs.start_connection"
                                     f"(happy_eyeballs_delay={delay_s:g}) as aiohttp"))}
        peers_seen: dict[str, set[str]] = {}
        with self.client() as client:
            cmd = {"peers": True, "samples": 1, "round": 0, "delay_s": delay_s,
                   "attempt_ms": attempt_ms, "fresh": fresh}
            client.ask(cmd, 60)  # warm-up; a later-connection row starts with history
            for rnd in range(self.args.rounds):
                out = client.ask({**cmd, "samples": self.args.samples, "round": rnd}, 120)
                for side, addresses in out["where"].items():
                    peers_seen.setdefault(side, set()).update(addresses)
                for side, row in rows.items():
                    if side in out["ready"]:
                        row.ours.append(median(out["ready"]["ours"]))
                        row.raw.append(median(out["ready"][side]))
        for side, row in list(rows.items()):
            if not row.raw:
                del rows[side]
                continue
            row.notes.append("connected to: " + "; ".join(
                f"{s} {', '.join(sorted(a))}" for s, a in sorted(peers_seen.items())))
        if "aiohappyeyeballs" not in rows:
            print("  (aiohappyeyeballs is not installed: its column is left out; "
                  "pip install '.[test]' brings it)")
        return list(rows.values())


def median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


@contextlib.contextmanager
def lab(args: argparse.Namespace) -> Iterator[Lab]:
    b = Lab(args)
    try:
        yield b
    finally:
        b.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    ap.add_argument("--samples", type=int, default=5,
                    help="samples a side per round (default 5)")
    ap.add_argument("--aaaa-delay", type=float, default=400.0,
                    help="how late the relay passes AAAA answers on (ms, default 400)")
    ap.add_argument("--equal-delay", type=int, default=100,
                    help="peers figures: the attempt delay every side gets in the equal "
                         "rows (ms, default 100)")
    ap.add_argument("--only", default="first-attempt,delayed-aaaa,peers",
                    help="comma-separated: first-attempt, delayed-aaaa, peers")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.samples = 2, 3
    only = set(args.only.split(","))
    print(banner("resolution benchmark"))
    reason = unavailable()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    rows: list[Row] = []
    with lab(args) as b:
        if "first-attempt" in only:
            rows += b.first_attempt()
        if "delayed-aaaa" in only:
            rows += b.delayed_aaaa()
        if "peers" in only:
            rows += b.peers()
    for row in rows:
        row.print()
    print("\n| figure | unit | ours median (p10–p90) | raw median (p10–p90) | ratio "
          "(per-round p10–p90) | target | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    print(textwrap.dedent(f"""
        raw: getaddrinfo through the same knot (first-attempt rows); getaddrinfo +
        open_connection, which waits for both answers (delayed-AAAA rows). AAAA delay
        {args.aaaa_delay:g} ms; {args.rounds} rounds of {args.samples} samples a side."""))
    return 0


if __name__ == "__main__":
    run_main(main)
