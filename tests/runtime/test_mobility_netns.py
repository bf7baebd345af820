"""Carriers that survive a path going away (runtime/mobility.py, carrier Rule 10), on the
two-path topology of tests/netns.py.

Host B runs a taps_post listener that records every numbered message it receives, with the
time it arrived (CLOCK_MONOTONIC is one clock for every namespace). Host A runs a client
that takes commands on stdin: a TCP carrier to `svc` (B's two IPv4 addresses; path 1 ranks
first), numbered messages each ending with on_acked or on_send_error, the carrier's events.
Then path 1 goes away under it (`ip link set veth-a1 down`, or its address removed): the
carrier must notice through the path monitor (not a TCP timeout), fail the connection with
PathLostError (PathChange(path 1, None), then Dormant), re-activate by itself on path 2
(Ready(reactivated=True), PathChange(path 1, path 2)) and
carry new messages; the server sees no message twice, every message acknowledged before the
loss and every message sent after it exactly once. With one path only, the carrier goes
dormant and comes back by itself when the link returns, with what was held kept. A QUIC
carrier migrates instead (same connection), and hands back over when its address returns.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import (
    A1,
    A1_V4,
    A2,
    A2_V4,
    B1_V4,
    B2_V4,
    COMMAND_LOOP,
    SERVE_CARRIERS,
    NsProcess,
    Topology,
    topology,
)

PORT = 5001

SERVER = SERVE_CARRIERS + COMMAND_LOOP + r"""
import asyncio, json, sys, time
import taps_post as tp

PORT = int(sys.argv[1])
SEEN = {}
PEERS = []

async def serve(carrier):
    PEERS.append(carrier.remote_address[0])
    try:
        async for msg in carrier:
            SEEN.setdefault(int(bytes(msg)), []).append(time.monotonic())
    except tp.ConnectionClosedError:
        pass
    finally:
        await carrier.close()

async def report(cmd):
    return {"seen": SEEN, "peers": PEERS}

async def main():
    policy = tp.PolicyContext(system=[], app_name="srv")
    listener = await tp.listen(tp.Local(port=PORT), policy=policy)
    serve_carriers(listener, serve)
    print(json.dumps({"ports": listener.ports}), flush=True)
    await command_loop(report)  # every command: what arrived so far
    await listener.close()

asyncio.run(main())
"""

CLIENT = COMMAND_LOOP + r"""
import asyncio, json, sys, time
import taps_post as tp

EVENTS = []
ENDS = {}
SENT_AT = {}
state = {"carrier": None, "stream": None}

def on_event(event):
    info = {"type": type(event).__name__, "t": time.monotonic()}
    if isinstance(event, tp.Ready):
        info.update(interface=event.interface, reactivated=event.reactivated)
    elif isinstance(event, tp.PathChange):
        info.update(old=getattr(event.old, "interface", None),
                    new=getattr(event.new, "interface", None))
    elif isinstance(event, (tp.Dormant, tp.Closed)):
        info.update(error=type(event.error).__name__ if event.error else None)
    EVENTS.append(info)

def ended(n, how):
    def cb(message):
        ENDS.setdefault(n, []).append(how)
    return cb

async def send(carrier, n):
    SENT_AT[n] = time.monotonic()
    await carrier.send_msg(tp.OutMessage(b"%d" % n), on_acked=ended(n, "acked"),
                           on_send_error=ended(n, "error"), on_expired=ended(n, "expired"))

def report(carrier):
    t = carrier.transient
    return {"events": EVENTS, "ends": ENDS, "sent_at": SENT_AT,
            "interface": t.interface if t else None, "active": carrier.is_active,
            "dormant": carrier.is_dormant, "attempts": [str(a) for a in carrier.attempts]}

async def stream(carrier, first, interval):
    n = first
    while True:
        await send(carrier, n)
        n += 1
        await asyncio.sleep(interval)

async def command(cmd):
    op = cmd["op"]
    carrier = state["carrier"]
    if op == "start":
        app = {"version": 1, "layer": "app", "rules": [
            {"id": "t", "set": {"racing.attemptDelay": 100, "connTimeout": 3000}}]}
        policy = tp.PolicyContext(system=[], app=app, app_name="t")
        carrier = state["carrier"] = tp.initiate(f"tcp://svc:{cmd['port']}", policy=policy)
        carrier.on_event(on_event)
        tp.path_monitor().subscribe(lambda changes, _interfaces: EVENTS.append(
            {"type": "NetChange", "t": time.monotonic(),
             "changes": [[c.kind, c.action, c.interface] for c in changes]}))
        await carrier.activate()
        return report(carrier)
    if op == "send":
        for n in range(cmd["first"], cmd["last"]):
            await send(carrier, n)
        return report(carrier)
    if op == "hold":
        for n in range(cmd["first"], cmd["last"]):
            SENT_AT[n] = time.monotonic()
            carrier.hold(tp.OutMessage(b"%d" % n), on_acked=ended(n, "acked"),
                         on_send_error=ended(n, "error"), on_expired=ended(n, "expired"))
        return report(carrier)
    if op == "stream":
        state["stream"] = asyncio.ensure_future(stream(carrier, cmd["first"], cmd["interval"]))
        return report(carrier)
    if op == "stop":
        task = state["stream"]
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return report(carrier)
    if op == "report":
        return report(carrier)
    if op == "close":
        await carrier.close()
        return report(carrier)
    raise ValueError(op)

asyncio.run(command_loop(command))
"""


@dataclass
class Scene:
    topo: Topology
    server: NsProcess
    client: NsProcess

    def ask(self, timeout: float = 10.0, **cmd: Any) -> dict[str, Any]:
        return self.client.ask(cmd, timeout)

    def seen(self) -> dict[int, list[float]]:
        out = self.server.ask({"op": "report"}, 5.0)
        return {int(k): v for k, v in out["seen"].items()}

    def wait_for(self, what: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the client's report until `what(report)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.ask(op="report")
            if what(out):
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout} s: {out}")
            time.sleep(0.05)  # pacing between polls of the client's state, not a guess


@pytest.fixture
def scene() -> Iterator[Scene]:
    with topology("tpm") as topo:
        topo.hosts(topo.a, {"svc": [B1_V4, B2_V4]})
        server = topo.spawn(topo.b, SERVER, str(PORT))
        assert server.read_json(10)["ports"]
        client = topo.spawn(topo.a, CLIENT)
        yield Scene(topo, server, client)


def kinds(report: dict[str, Any]) -> list[str]:
    return [e["type"] for e in report["events"]]


def reactivated(report: dict[str, Any]) -> bool:
    return any(e["type"] == "Ready" and e["reactivated"] for e in report["events"])


def check_once(scene: Scene, report: dict[str, Any], lost_at: float) -> dict[int, list[float]]:
    """No message twice at the server; every acknowledged one there once; every message
    sent after the loss acknowledged."""
    ends = {int(k): v for k, v in report["ends"].items()}
    acked = {n for n, how in ends.items() if how == ["acked"]}
    deadline = time.monotonic() + 5
    while not acked <= set(seen := scene.seen()) and time.monotonic() < deadline:
        time.sleep(0.05)  # acknowledged by the kernel, not read by the server yet
    assert all(len(times) == 1 for times in seen.values()), \
        {n: t for n, t in seen.items() if len(t) > 1}
    assert all(len(v) == 1 for v in ends.values()), ends  # each message ends once
    for n, (how,) in ends.items():
        if how == "acked":
            assert n in seen, f"message {n} acknowledged but never received"
        else:
            assert how == "error", (n, how)
    sent_at = {int(k): v for k, v in report["sent_at"].items()}
    after = [n for n, t in sent_at.items() if t > lost_at]
    assert after, "nothing was sent after the loss"
    assert all(ends.get(n) == ["acked"] for n in after), \
        {n: ends.get(n) for n in after if ends.get(n) != ["acked"]}
    return seen


def test_tcp_carrier_moves_to_the_other_path_when_its_link_goes_down(scene: Scene) -> None:
    started = scene.ask(op="start", port=PORT)
    assert started["interface"] == A1, started
    scene.ask(op="send", first=0, last=50)
    scene.wait_for(lambda r: len(r["ends"]) == 50)
    scene.ask(op="stream", first=1000, interval=0.005)
    time.sleep(0.2)
    down_at = time.monotonic()
    scene.topo.link(scene.topo.a, A1, up=False)
    moved = scene.wait_for(reactivated, timeout=10)
    time.sleep(0.3)  # new messages flow on path 2
    report = scene.ask(op="stop")
    report = scene.wait_for(lambda r: len(r["ends"]) == len(r["sent_at"]), timeout=10)
    assert report["interface"] == A2 and report["active"], report
    events = kinds(moved)
    assert "Dormant" in events and "PathChange" in events, events
    dormant = next(e for e in moved["events"] if e["type"] == "Dormant")
    assert dormant["error"] == "PathLostError", dormant
    assert path_changes(moved) == [(A1, None), (A1, A2)], moved["events"]
    assert lost_before_dormant(moved), moved["events"]
    seen = check_once(scene, report, dormant["t"])
    assert all(n in seen for n in range(50))  # acknowledged before the loss: there, once
    # The failover stall: the longest gap between arrivals at the server around the loss.
    arrivals = sorted(t[0] for n, t in seen.items() if n >= 1000)
    gaps = [b - a for a, b in itertools.pairwise(arrivals) if b > down_at - 0.05]
    stall = max(gaps)
    heard = next(e["t"] for e in moved["events"] if e["type"] == "NetChange"
                 and ["link", "down", A1] in e["changes"])
    ready = next(e["t"] for e in moved["events"] if e["type"] == "Ready" and e["reactivated"])
    print(f"\nTCP re-race failover stall: {stall * 1000:.0f} ms (longest gap between "
          f"arrivals); after `ip link set down` was started: monitor told "
          f"{(heard - down_at) * 1000:.1f} ms, PathLostError {(dormant['t'] - down_at) * 1000:.1f}"
          f" ms, Ready on veth-a2 {(ready - down_at) * 1000:.1f} ms")
    assert stall < 3.0, stall


def path_changes(report: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    return [(e["old"], e["new"]) for e in report["events"] if e["type"] == "PathChange"]


def lost_before_dormant(report: dict[str, Any]) -> bool:
    """PathChange(old, None) came right before Dormant (the path went, nothing carries on)."""
    types = [(e["type"], e.get("new")) for e in report["events"] if e["type"] != "NetChange"]
    at = types.index(("Dormant", None)) if ("Dormant", None) in types else -1
    return at > 0 and types[at - 1] == ("PathChange", None)


def test_tcp_carrier_moves_when_its_local_address_is_removed(scene: Scene) -> None:
    started = scene.ask(op="start", port=PORT)
    assert started["interface"] == A1, started
    scene.ask(op="send", first=0, last=20)
    scene.wait_for(lambda r: len(r["ends"]) == 20)
    scene.topo.address(scene.topo.a, A1, A1_V4, present=False)
    moved = scene.wait_for(reactivated, timeout=10)
    dormant = next(e for e in moved["events"] if e["type"] == "Dormant")
    assert dormant["error"] == "PathLostError", moved["events"]
    assert lost_before_dormant(moved), moved["events"]
    scene.ask(op="send", first=20, last=40)
    report = scene.wait_for(lambda r: len(r["ends"]) == 40, timeout=10)
    assert report["interface"] == A2, report
    check_once(scene, report, dormant["t"])


def test_tcp_carrier_with_one_path_waits_dormant_until_the_link_returns(scene: Scene) -> None:
    scene.topo.address(scene.topo.a, A2, A2_V4, present=False)  # one IPv4 path only
    started = scene.ask(op="start", port=PORT)
    assert started["interface"] == A1, started
    scene.ask(op="send", first=0, last=20)
    scene.wait_for(lambda r: len(r["ends"]) == 20)
    scene.topo.link(scene.topo.a, A1, up=False)
    report = scene.wait_for(lambda r: "Dormant" in kinds(r), timeout=5)
    lost_at = next(e for e in report["events"] if e["type"] == "Dormant")["t"]
    time.sleep(0.5)
    report = scene.ask(op="hold", first=20, last=30)  # kept while dormant
    assert report["dormant"] and not report["active"] and not reactivated(report), report
    up_at = time.monotonic()
    scene.topo.link(scene.topo.a, A1, up=True)
    report = scene.wait_for(reactivated, timeout=10)
    ready = next(e["t"] for e in report["events"] if e["type"] == "Ready" and e["reactivated"])
    print(f"\nTCP dormant carrier: Ready {(ready - up_at) * 1000:.1f} ms after `ip link set up` "
          "was started (the topology waits for carrier UP too)")
    report = scene.wait_for(lambda r: len(r["ends"]) == 30, timeout=10)
    assert report["interface"] == A1 and report["active"], report
    # the path went (old, None); the same route again is no new path: no second one
    assert path_changes(report) == [(A1, None)], report["events"]
    assert lost_before_dormant(report), report["events"]
    check_once(scene, report, lost_at)



def test_a_dormant_carrier_comes_back_on_an_interface_created_after_it_lost_its_path(
        scene: Scene) -> None:
    """No restart, no application call: the monitor reports the new veth-a3 and its
    address, the carrier decides afresh on the new interface list and re-races onto it."""
    topo = scene.topo
    topo.address(topo.a, A2, A2_V4, present=False)  # one IPv4 path only
    scene.ask(op="start", port=PORT)
    scene.ask(op="send", first=0, last=10)
    scene.wait_for(lambda r: len(r["ends"]) == 10)
    topo.address(topo.a, A1, A1_V4, present=False)  # no IPv4 path left (links stay up)
    report = scene.wait_for(lambda r: "Dormant" in kinds(r), timeout=5)
    lost_at = next(e for e in report["events"] if e["type"] == "Dormant")["t"]
    scene.ask(op="hold", first=10, last=20)
    p = topo.add_path(3)
    topo.exec(topo.a, "ip", "route", "add", "198.18.1.0/24", "via", p["b4"], "dev", p["a_if"],
              "metric", "2000")
    report = scene.wait_for(reactivated, timeout=10)
    report = scene.wait_for(lambda r: len(r["ends"]) == 20, timeout=10)
    assert report["interface"] == p["a_if"] and report["active"], report
    assert path_changes(report) == [(A1, None), (A1, p["a_if"])], report["events"]
    check_once(scene, report, lost_at)


QUIC_SERVER = r"""
import asyncio, json, sys
import taps_post as tp

PORT, CERT, KEY = int(sys.argv[1]), sys.argv[2], sys.argv[3]

async def main():
    cert = tp.certs.Certificate.from_files(CERT, KEY)
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "q", "set": {"stack.quic": "require"}}]}, app_name="srv")
    listener = await tp.listen(tp.Local(port=PORT, certificates=[cert]), policy=policy)
    carriers = []

    def accept(carrier):
        carriers.append(carrier)
        async def serve():
            async for msg in carrier:
                await carrier.send(b"echo:" + bytes(msg))
        asyncio.ensure_future(serve())

    listener.accept(accept)
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        s = carriers[0].transient.session
        print(json.dumps({"carriers": len(carriers), "handshakes": s.handshakes}), flush=True)

asyncio.run(main())
"""

QUIC_CLIENT = COMMAND_LOOP + r"""
import asyncio, json, sys, time
import taps_post as tp

CERT, TARGET = sys.argv[1], sys.argv[2]
EVENTS = []

async def main():
    loop = asyncio.get_running_loop()
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "q", "set": {"stack.quic": "require"}}]}, app_name="cli")
    remote = tp.Remote.parse(TARGET, certificates=[tp.certs.Certificate.from_files(CERT)])
    carrier = tp.initiate(remote, policy=policy)
    carrier.on_event(lambda e: EVENTS.append(
        [type(e).__name__, getattr(getattr(e, "old", None), "interface", None),
         getattr(getattr(e, "new", None), "interface", None)]))
    await carrier.activate()
    first = carrier.transient
    n = 0
    while await loop.run_in_executor(None, sys.stdin.readline):
        echoes = []
        for _ in range(5):
            await carrier.send(b"m%d" % n)
            echoes.append(bytes(await asyncio.wait_for(carrier.receive(), 10)).decode())
            n += 1
        t = carrier.transient
        print(json.dumps({"events": EVENTS, "echoes": echoes, "interface": t.interface,
                          "same": t is first, "local": list(t.local_address)}), flush=True)

asyncio.run(main())
"""


def test_quic_carrier_migrates_by_itself_and_hands_back_over_when_the_address_returns(
        ) -> None:
    """No Dormant, no second handshake, the same Transient throughout: the path monitor's
    address removal makes the carrier migrate to veth-a2, and under multipathPolicy
    handover (the default) the address coming back moves it home to veth-a1."""
    with topology("tpq") as topo:
        cert = tp.certs.self_signed(["svc", B1_V4])
        assert cert.key_pem is not None
        cert_path, key_path = topo.tmp / "cert.pem", topo.tmp / "key.pem"
        cert_path.write_text(cert.cert_pem)
        key_path.write_text(cert.key_pem)
        with topo.spawn(topo.b, QUIC_SERVER, str(PORT), str(cert_path), str(key_path)) as srv:
            assert srv.read_json(10) == {"ready": True}
            with topo.spawn(topo.a, QUIC_CLIENT, str(cert_path),
                            f"quic://{B1_V4}:{PORT}") as cli:
                out = cli.request({}, 10)
                assert out["interface"] == A1 and out["local"][0] == A1_V4, out
                topo.address(topo.a, A1, A1_V4, present=False)
                out = cli.request({}, 10)  # the monitor told the carrier; it migrated
                assert out["same"] and out["interface"] == A2, out
                assert ["PathChange", A1, A2] in out["events"], out["events"]
                topo.address(topo.a, A1, A1_V4, present=True)
                deadline = time.monotonic() + 5
                while ["PathChange", A2, A1] not in out["events"]:  # handover: back to path 1
                    assert time.monotonic() < deadline, out
                    out = cli.request({}, 10)
                assert out["same"] and out["interface"] == A1, out
                kinds_seen = [e[0] for e in out["events"]]
                assert "Dormant" not in kinds_seen and kinds_seen.count("Ready") == 1
                first = int(out["echoes"][0].removeprefix("echo:m"))
                assert out["echoes"] == [f"echo:m{n}" for n in range(first, first + 5)]
            server = srv.request({}, 5)
        assert server == {"carriers": 1, "handshakes": 1}, server
