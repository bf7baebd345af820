"""MPTCP carriers on the real kernel, two rate-limited paths (tests/netns.py): aggregation,
the kernel's view of the subflows, and a path taken down in the middle of a transfer.

    host A (client)                                   host B (server: tp.listen, port 5001)
    veth-a1 198.18.1.1  --- path 1, tbf 20 mbit --->  veth-b1 198.18.1.2   (initial subflow)
    veth-a2 198.18.2.1  --- path 2, tbf 20 mbit --->  veth-b2 198.18.2.2   (second subflow)

The in-kernel path manager runs in both namespaces (`net.mptcp.pm_type=0`, the default):
A has a `subflow` endpoint on 198.18.2.1 dev veth-a2, so every MPTCP connection A opens from
veth-a1 to 198.18.1.2 gets a second subflow from 198.18.2.1 (to 198.18.1.2 over the
topology's cross route: B's path-1 address reached over path 2); limits are
`subflows 4 add_addr_accepted 4` in both. Each veth end in both namespaces has a `tbf` qdisc
(netem is not available here) so that one path is the bottleneck and two paths are twice it.

Host B runs a taps_post Listener (its default policy serves MPTCP and plain TCP on one port)
whose carriers read a JSON header message, then either count bytes (`bulk`) or check numbered
messages (8-byte big-endian sequence number + padding, length-prefixed by the framer):
exactly once each, in order. It reports on its stdout when a numbered transfer passes its
mark, so the test takes the path down while data is provably flowing, and answers the client
with what it saw when the transfer ends. Host A runs a client process driven by JSON lines.

Rule 1: the kernel's view is the judge of the subflows (`ss -tni` in A: established TCP
subflows with the `tcp-ulp-mptcp` ULP, by local address), and the library's own subflow
listing (`Transient.subflows()`, `Carrier.paths`) must name the same ones.
Rule 2: the plain TCP baseline runs in the same test, over the same rate-limited path, so
the 1.7x ratio is between two figures measured minutes apart at most, never against a
remembered number.
Rule 3: both namespaces use `reno` (built into every kernel, so always allowed in a
namespace). This host's default is `bbr`: its bandwidth probing against a shallow tbf queue
makes the default MPTCP scheduler leave each path idle part of the time, and two 20 mbit
paths gave 30-37 mbit/s (1.58-1.93x one path) from run to run, against 36-38 mbit/s (1.87-
1.97x) with reno; the test is about MPTCP's aggregation, not about BBR on a token bucket
(bench/multipath.py --cc bbr measures that case).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import (
    A1,
    A1_V4,
    A2,
    A2_V4,
    B1,
    B1_V4,
    B2,
    B2_V4,
    COMMAND_LOOP,
    SERVE_CARRIERS,
    NsProcess,
    Topology,
    topology,
)
from stress.sizing import sized

PORT = 5001
RATE = "20mbit"
MSG = 64 * 1024
CONGESTION = "reno"
"""TCP congestion control in both namespaces, for the plain TCP baseline and every subflow
alike (Rule 3)."""
WARMUP = 16
"""Messages (1 MiB) sent on a carrier before its timed transfer: the kernel PM opens the
second subflow only once the connection is fully established (after the first data), and
both subflows leave slow start, so the figure is the carrier's steady rate."""

SERVER = SERVE_CARRIERS + r"""
import asyncio, json, sys, time
import taps_post as tp

PORT = int(sys.argv[1])
CERT, KEY = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else (None, None)

def say(obj):
    print(json.dumps(obj), flush=True)

async def transfer(carrier, header):
    mode, first, n, size = header["mode"], None, 0, 0
    expect, dups, gaps, arrivals = 0, 0, 0, []
    async for msg in carrier:
        data = bytes(msg)
        now = time.monotonic()
        if first is None:
            first = now
        if mode == "numbered":
            seq = int.from_bytes(data[:8], "big")
            if seq == header["count"]:  # the end marker
                break
            if seq < expect:
                dups += 1
            elif seq > expect:
                gaps += seq - expect
            arrivals.append(now)
            expect = max(expect, seq + 1)
            if expect == header.get("mark"):
                say({"mark": expect, "at": now})
        elif data == b"done":
            break
        n += 1
        size += len(data)
    return {"messages": n, "bytes": size, "expect": expect, "dups": dups, "gaps": gaps,
            "stack": carrier.stack, "first": first, "last": time.monotonic(),
            "arrivals": arrivals}

async def serve(carrier):
    try:
        async for msg in carrier:  # one JSON header per transfer, until the client closes
            report = await transfer(carrier, json.loads(bytes(msg)))
            say({"report": {k: v for k, v in report.items() if k != "arrivals"}})
            await carrier.send(json.dumps(report).encode())
    finally:
        await carrier.close()

async def main():
    certs = [tp.certs.Certificate.from_files(CERT, KEY)] if CERT else []
    policy = tp.PolicyContext(system=[], app_name="srv")
    listener = await tp.listen(tp.Local(port=PORT, certificates=certs), policy=policy)
    serve_carriers(listener, serve)
    say({"ports": listener.ports})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await listener.close()

asyncio.run(main())
"""

CLIENT = COMMAND_LOOP + r"""
import asyncio, json, sys, time
import taps_post as tp
from taps_post.runtime import api  # import cost stays outside the timings

CERT = tp.certs.Certificate.from_files(sys.argv[1]) if len(sys.argv) > 1 else None
CARRIER = None

def policy(stack):
    values = {f"stack.{stack}": "require"}
    if "mptcp" in stack:
        values.update({"multipath": "active", "multipathPolicy": "aggregate"})
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="t")

def paths(carrier):
    out = {"paths": [[p.interface, p.local_address[0] if p.local_address else None]
                     for p in carrier.paths], "subflows": []}
    t = carrier.transient
    if t is not None:
        out["subflows"] = [[s.interface, s.local_address[0] if s.local_address else None]
                           for s in t.subflows()]
    return out

async def op_open(cmd):
    global CARRIER
    scheme = "tls" if "tls" in cmd["stack"] else "tcp"
    extra = {"certificates": [CERT]} if CERT else {}
    remote = tp.Remote.parse(f"{scheme}://{cmd['target']}:{cmd['port']}", **extra)
    CARRIER = await tp.initiate(remote, local=tp.Local(interface=cmd["interface"]),
                                policy=policy(cmd["stack"]))
    return {"stack": CARRIER.stack, "local": CARRIER.local_address[0], **paths(CARRIER)}

async def op_bulk(cmd):
    msg = b"x" * cmd["size"]
    await CARRIER.send(json.dumps({"mode": "bulk"}).encode())
    started = time.monotonic()
    for _ in range(cmd["count"]):
        await CARRIER.send(msg)
    await CARRIER.send(b"done")
    report = json.loads(bytes(await asyncio.wait_for(CARRIER.receive(), cmd["wait"])))
    seconds = time.monotonic() - started
    return {"seconds": seconds, "mbit": report["bytes"] * 8 / seconds / 1e6, "report": report}

async def op_numbered(cmd):
    count, pad = cmd["count"], b"n" * (cmd["size"] - 8)
    await CARRIER.send(json.dumps({"mode": "numbered", "count": count,
                                   "mark": cmd["mark"]}).encode())
    started = time.monotonic()
    for seq in range(count + 1):  # count is the end marker
        await CARRIER.send(seq.to_bytes(8, "big") + (pad if seq < count else b""))
    report = json.loads(bytes(await asyncio.wait_for(CARRIER.receive(), cmd["wait"])))
    return {"seconds": time.monotonic() - started, "report": report,
            "stack": CARRIER.stack, **paths(CARRIER)}

async def op_paths(cmd):
    return paths(CARRIER)

async def op_close(cmd):
    global CARRIER
    await CARRIER.close()
    CARRIER = None
    return {"closed": True}

OPS = {"open": op_open, "bulk": op_bulk, "numbered": op_numbered, "paths": op_paths,
       "close": op_close}

asyncio.run(command_loop(lambda cmd: OPS[cmd["op"]](cmd)))
"""


def mptcp_unavailable(topo: Topology) -> str | None:
    """Why MPTCP cannot be tested in these namespaces, or None."""
    try:
        enabled = topo.exec(topo.a, "sysctl", "-n", "net.mptcp.enabled", check=False)
    except OSError as exc:
        return f"cannot read net.mptcp.enabled: {exc}"
    if enabled.returncode != 0 or enabled.stdout.strip() != "1":
        return "this kernel has no MPTCP (net.mptcp.enabled is not 1 in a new namespace)"
    probe = topo.exec(topo.a, "ip", "mptcp", "limits", "show", check=False)
    if probe.returncode != 0:
        return f"`ip mptcp` is unavailable: {probe.stderr.strip()}"
    return None


def kernel_subflows(topo: Topology, ns: str, port: int = PORT) -> dict[str, int]:
    """The established MPTCP subflows to or from `port` in `ns`, as the kernel lists them
    (`ss -tni`: TCP sockets whose ULP is mptcp): local address -> bytes_acked (Rule 1)."""
    out = topo.exec(ns, "ss", "-Htni", "state", "established",
                    f"( dport = :{port} or sport = :{port} )").stdout
    found: dict[str, int] = {}
    for entry in re.split(r"\n(?=\S)", out.strip()):
        if "tcp-ulp-mptcp" not in entry:
            continue
        local = next(f for f in entry.split() if re.fullmatch(r"\S+:\d+", f))  # a[%dev]:port
        acked = re.search(r"\bbytes_acked:(\d+)", entry)
        address = local.rsplit(":", 1)[0].split("%", 1)[0].strip("[]")
        found[address] = found.get(address, 0) + (int(acked.group(1)) if acked else 0)
    return found


@dataclass
class Scene:
    topo: Topology
    server: NsProcess
    client: NsProcess

    def ask(self, timeout: float = 30.0, **cmd: Any) -> dict[str, Any]:
        return self.client.ask(cmd, timeout)

    def open(self, stack: str, interface: str = A1, target: str = B1_V4) -> dict[str, Any]:
        return self.ask(op="open", stack=stack, interface=interface, target=target, port=PORT)

    def wait_subflows(self, want: int, timeout: float = 3.0) -> dict[str, int]:
        """The kernel's subflow list once it has `want` entries (the in-kernel PM opens the
        second subflow right after the MPTCP handshake, asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = kernel_subflows(self.topo, self.topo.a)
            if len(seen) >= want or time.monotonic() > deadline:
                return seen
            time.sleep(0.02)  # pacing a kernel poll; returns as soon as the subflow shows


def _setup(topo: Topology) -> None:
    reason = mptcp_unavailable(topo)
    if reason is not None:
        pytest.skip(reason)
    for ns in (topo.a, topo.b):
        topo.sysctl(ns, "net.ipv4.tcp_congestion_control", CONGESTION)
        topo.mptcp(ns, "limits", "set", "subflows", "4", "add_addr_accepted", "4")
    topo.mptcp(topo.a, "endpoint", "add", A2_V4, "dev", A2, "subflow")
    for ns, devs in ((topo.a, (A1, A2)), (topo.b, (B1, B2))):
        for dev in devs:
            topo.rate_limit(ns, dev, RATE)


def _scene(topo: Topology, *, tls: bool = False) -> Scene:
    """The topology set up for MPTCP, a server in B and a client in A; with `tls`, both
    use a self-signed certificate for B's addresses (the client pins it)."""
    _setup(topo)
    args: list[str] = []
    if tls:
        import taps_post as tp

        cert = tp.certs.self_signed([B1_V4, B2_V4])
        assert cert.key_pem is not None
        (topo.tmp / "cert.pem").write_text(cert.cert_pem)
        (topo.tmp / "key.pem").write_text(cert.key_pem)
        args = [str(topo.tmp / "cert.pem"), str(topo.tmp / "key.pem")]
    server = topo.spawn(topo.b, SERVER, str(PORT), *args)
    ports = server.read_json(10)["ports"]
    # MPTCP works in these namespaces (mptcp_unavailable() said so): a listener that does
    # not serve it is a regression, not a reason to skip.
    assert ("tls-mptcp" if tls else "mptcp") in ports, ports
    client = topo.spawn(topo.a, CLIENT, *args[:1])
    return Scene(topo, server, client)


@pytest.fixture
def scene() -> Iterator[Scene]:
    with topology("tpm") as topo:
        yield _scene(topo)


@pytest.fixture
def tls_scene() -> Iterator[Scene]:
    with topology("tpm") as topo:
        yield _scene(topo, tls=True)


def _bulk(scene: Scene, stack: str, count: int) -> tuple[dict[str, Any], dict[str, int],
                                                          dict[str, Any]]:
    """One timed transfer on a fresh carrier after its warm-up: (result, the kernel's
    subflows, the library's listing)."""
    opened = scene.open(stack)
    assert opened["stack"] == stack, opened
    scene.ask(op="bulk", size=MSG, count=WARMUP, wait=30)
    out = scene.ask(op="bulk", size=MSG, count=count, wait=30)
    subflows = scene.wait_subflows(2) if stack == "mptcp" else {}
    listed = scene.ask(op="paths")
    scene.ask(op="close")
    assert out["report"]["bytes"] == count * MSG, out["report"]
    assert out["report"]["stack"] == stack, out["report"]
    return out, subflows, listed


def test_aggregate_doubles_one_path_and_both_subflows_are_listed(scene: Scene) -> None:
    """`multipathPolicy: aggregate` over two 20 mbit paths: at least 1.7x a plain TCP
    carrier on one of them, measured in this run (Rule 2); the kernel lists one subflow per
    path, each carrying a good share (Rule 1), and so does the library."""
    count = sized(96, 256)  # 6 MiB: about 2.6 s over one path, 1.4 s over two
    tcp, _, _ = _bulk(scene, "tcp", count)
    mptcp, subflows, listed = _bulk(scene, "mptcp", count)
    assert sorted(subflows) == [A1_V4, A2_V4], subflows
    # Both carried a good share of the data (aggregation, not one path and a spare).
    assert min(subflows.values()) > count * MSG // 4, subflows
    best = {"tcp": tcp["mbit"], "mptcp": mptcp["mbit"]}
    if best["mptcp"] / best["tcp"] < 1.7:
        # Shared 2-CPU machine: the two-path side needs twice the CPU of the one-path one,
        # so a busy neighbour costs it more. One more pair, the best of each side counts.
        best["tcp"] = max(best["tcp"], _bulk(scene, "tcp", count)[0]["mbit"])
        best["mptcp"] = max(best["mptcp"], _bulk(scene, "mptcp", count)[0]["mbit"])
    ratio = best["mptcp"] / best["tcp"]
    print(f"tcp one path {best['tcp']:.1f} mbit/s, mptcp aggregate {best['mptcp']:.1f} mbit/s "
          f"(ratio {ratio:.2f}); subflows {subflows}")
    assert ratio >= 1.7, (f"aggregate {best['mptcp']:.1f} mbit/s vs one-path tcp "
                          f"{best['tcp']:.1f} mbit/s: ratio {ratio:.2f}")
    # The library's own listing names the same two subflows as the kernel (Rule 1).
    assert sorted(s[0] for s in listed["subflows"]) == [A1, A2], listed
    assert sorted(s[1] for s in listed["subflows"]) == [A1_V4, A2_V4], listed
    assert sorted(p[0] for p in listed["paths"]) == [A1, A2], listed  # carrier.paths


def _failover(scene: Scene, stack: str, how: str) -> None:
    count = sized(96, 320)  # 6 MiB of 64 KiB numbered messages
    mark = count // 4
    opened = scene.open(stack)
    assert opened["stack"] == stack, opened
    scene.client.send({"op": "numbered", "size": MSG, "count": count, "mark": mark,
                       "wait": 40})
    marked = scene.server.read_json(20)
    assert marked.get("mark") == mark, marked
    before = scene.wait_subflows(2)
    assert sorted(before) == [A1_V4, A2_V4], before
    down_at = time.monotonic()
    if how == "link":
        scene.topo.link(scene.topo.a, A1, up=False)
    else:
        scene.topo.address(scene.topo.a, A1, A1_V4, present=False)
    out = scene.client.answer(45)
    report = out["report"]
    assert report["dups"] == 0 and report["gaps"] == 0, report
    assert report["messages"] == count and report["expect"] == count, report
    assert report["stack"] == stack, report
    after = [t for t in report["arrivals"] if t > down_at]
    # Most of the rest (the mark is read, then the kernel asked, before the link goes down).
    assert len(after) >= (count - mark) // 2, "the transfer did not go on after the path went down"
    # Finished on the other subflow: path 2's subflow carried the rest (the kernel's
    # counters), path 1's acknowledged nothing more once its link was down.
    end = kernel_subflows(scene.topo, scene.topo.a)
    rest = len(after) * MSG
    assert end.get(A2_V4, 0) - before[A2_V4] >= rest // 2, (before, end)
    assert end.get(A1_V4, before[A1_V4]) - before[A1_V4] < rest // 4, (before, end)
    stall = max(b - a for a, b in zip([down_at, *after], after, strict=False))
    print(f"{stack} {how} down: first message after {(after[0] - down_at) * 1000:.0f} ms, "
          f"longest gap {stall * 1000:.0f} ms, {out['seconds']:.2f} s in all")


def test_path_down_mid_transfer_every_message_once_in_order(scene: Scene) -> None:
    """`ip link set veth-a1 down` (the initial subflow's path) while numbered messages flow:
    every message arrives exactly once, in order, and the rest goes over path 2."""
    _failover(scene, "mptcp", "link")


def test_address_removed_mid_transfer_every_message_once_in_order(scene: Scene) -> None:
    """The same with 198.18.1.1 removed from veth-a1 instead of the link going down."""
    _failover(scene, "mptcp", "address")


def test_tls_mptcp_path_down_mid_transfer_every_message_once_in_order(
        tls_scene: Scene) -> None:
    """TLS over MPTCP: the TLS record stream rides the MPTCP connection, so a path going
    down under it changes nothing above the kernel: once each, in order, on path 2."""
    _failover(tls_scene, "tls-mptcp", "link")
