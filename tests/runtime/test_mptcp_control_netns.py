"""Explicit MPTCP path control (runtime/multipath.py) under the userspace path manager, on
the two-path topology of tests/netns.py, checked against the kernel's own view.

Host A sets `net.mptcp.pm_type=1`: the kernel opens no subflow by itself, only the
library's PathController does (SUBFLOW_CREATE over genl "mptcp_pm"), from each interface of
the Decision's subflow plan. Host B is a taps_post listener (MPTCP, in-kernel PM, which
accepts joins up to its limits). The client's carrier goes to 198.18.1.2 on veth-a1; a
subflow from veth-a2 (198.18.2.1) reaches it through the topology's cross route.

- `interface.veth-a2: prohibit`, with a third path veth-a3 added: veth-a3 gets a subflow,
  and none ever appears on veth-a2, neither in the socket's MPTCP_FULL_INFO / subflow
  addresses nor in `ss` (any TCP socket from 198.18.2.1).
- `interface.veth-a2: avoid` under aggregate: a subflow on veth-a2, with the backup flag.
- both allowed under aggregate: two subflows, both primary (no backup flag).
- and then veth-a1 goes down: the carrier stays active on its veth-a2 subflow (PathChange,
  no Dormant, no new connection) and echoes go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import A1, A2, A2_V4, B1_V4, COMMAND_LOOP, ECHO_LISTENER, NsProcess, Topology, topology

PORT = 5002

SERVER = ECHO_LISTENER
"""An echo listener (in-kernel PM in B, which accepts joins up to its limits)."""

CLIENT = COMMAND_LOOP + r"""
import asyncio, json, sys, time
import taps_post as tp

state = {}
EVENTS = []

def report(carrier):
    t = carrier.transient
    flows = t.subflows() if t is not None else ()
    return {"stack": carrier.stack, "interface": t.interface if t else None,
            "subflows": [{"interface": s.interface, "local": s.local_address[0],
                          "remote": s.remote_address[0], "backup": s.backup,
                          "sent": s.bytes_sent}
                         for s in flows],
            "paths": [p.interface for p in carrier.paths],
            "events": EVENTS,
            "subflow_plan": [list(s) for s in carrier.settings.subflows],
            "path_manager": carrier.explanation.path_manager}

async def command(cmd):
    if cmd["op"] == "start":
        app = {"version": 1, "layer": "app", "rules": [{"id": "mp", "set": cmd["set"]}]}
        policy = tp.PolicyContext(system=[], app=app, app_name="t")
        carrier = state["carrier"] = tp.initiate(cmd["target"], policy=policy)
        carrier.on_event(lambda e: EVENTS.append(
            [type(e).__name__, getattr(getattr(e, "old", None), "interface", None),
             getattr(getattr(e, "new", None), "interface", None)]))
        await carrier.activate()
        return report(carrier)
    carrier = state["carrier"]
    if cmd["op"] == "echo":
        for n in range(cmd["count"]):
            await carrier.send(b"x" * 1000)
            await asyncio.wait_for(carrier.receive(), 5)
        return report(carrier)
    if cmd["op"] == "report":
        return report(carrier)
    if cmd["op"] == "timed_echo":
        started = time.monotonic()
        await carrier.send(b"y" * 100)
        await asyncio.wait_for(carrier.receive(), 10)
        return {**report(carrier), "echo_ms": (time.monotonic() - started) * 1000}
    raise ValueError(cmd["op"])

asyncio.run(command_loop(command))
"""


@dataclass
class Scene:
    topo: Topology
    client: NsProcess

    def ask(self, timeout: float = 10.0, **cmd: Any) -> dict[str, Any]:
        return self.client.ask(cmd, timeout)

    def start(self, rules: dict[str, Any]) -> dict[str, Any]:
        return self.ask(op="start", target=f"tcp://{B1_V4}:{PORT}",
                        set={"multipath": "active", **rules})

    def kernel_sockets_from(self, address: str) -> list[str]:
        """Every TCP socket of host A with local address `address`, as `ss` lists it."""
        out = self.topo.exec(self.topo.a, "ss", "-tniH", "state", "all", "src",
                             address).stdout
        return [line for line in out.splitlines() if line.strip() and not line[0].isspace()]

    def wait_subflows(self, n: int, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            out = self.ask(op="report")
            if len(out["subflows"]) >= n:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} subflows not seen within {timeout} s: {out}")
            time.sleep(0.05)  # pacing between reads of the kernel's subflows


def sent_by_interface(out: dict[str, Any]) -> dict[str, int]:
    """Bytes sent per interface, over every subflow the kernel lists there."""
    sent: dict[str, int] = {}
    for s in out["subflows"]:
        sent[s["interface"]] = sent.get(s["interface"], 0) + (s["sent"] or 0)
    return sent


def _mptcp_unavailable(topo: Topology) -> str | None:
    probe = topo.exec(topo.a, "sysctl", "-n", "net.mptcp.enabled", check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        return "MPTCP is not enabled in this kernel"
    return None


@pytest.fixture
def scene() -> Iterator[Scene]:
    with topology("tpc") as topo:
        reason = _mptcp_unavailable(topo)
        if reason is not None:
            pytest.skip(reason)
        topo.sysctl(topo.a, "net.mptcp.pm_type", 1)
        topo.mptcp(topo.b, "limits", "set", "subflows", "8", "add_addr_accepted", "8")
        server = topo.spawn(topo.b, SERVER, str(PORT))
        assert server.read_json(10)["ports"]
        client = topo.spawn(topo.a, CLIENT)
        yield Scene(topo, client)


def test_a_prohibited_interface_never_carries_a_subflow(scene: Scene) -> None:
    """A third path, veth-a3 (198.18.3.1, reaching 198.18.1.2 over a route of its own), is
    allowed: the controller must open a subflow there, so the test fails if it does
    nothing, while the prohibited veth-a2 never gets one."""
    topo = scene.topo
    p3 = topo.add_path(3)
    topo.exec(topo.a, "ip", "route", "add", "198.18.1.0/24", "via", p3["b4"], "dev",
              p3["a_if"], "metric", "2000")
    started = scene.start({"interface.veth-a2": "prohibit", "multipathPolicy": "aggregate"})
    assert started["stack"] == "mptcp" and started["interface"] == A1, started
    assert started["path_manager"] == "userspace", started
    assert [name for name, _ in started["subflow_plan"]] == [A1, p3["a_if"]], started
    scene.ask(op="echo", count=5)  # fully established (Rule 5 of runtime/multipath.py)
    scene.wait_subflows(2)
    for _ in range(10):  # traffic for a while, the kernel's view read each time
        out = scene.ask(op="echo", count=20)
        assert {s["interface"] for s in out["subflows"]} == {A1, p3["a_if"]}, out
        assert all(s["local"] != A2_V4 for s in out["subflows"]), out
        assert scene.kernel_sockets_from(A2_V4) == []
        assert scene.kernel_sockets_from(p3["a4"]), "ss lists no subflow from veth-a3"
        time.sleep(0.05)


def test_a_passive_carrier_opens_no_subflow_of_its_own(scene: Scene) -> None:
    """multipath: passive (RFC 9622): an initiated MPTCP carrier accepts the peer's subflows
    and opens none itself; under the userspace PM the kernel opens none either, so only
    the initial subflow on veth-a1 exists, however long the connection runs."""
    started = scene.start({"multipath": "passive", "multipathPolicy": "aggregate"})
    assert started["stack"] == "mptcp" and started["interface"] == A1, started
    scene.ask(op="echo", count=5)  # fully established: a controller could open joins now
    deadline = time.monotonic() + 2.5  # past the controller's last check (CHECKS)
    while time.monotonic() < deadline:
        out = scene.ask(op="echo", count=5)
        assert [s["interface"] for s in out["subflows"]] == [A1], out
        assert scene.kernel_sockets_from(A2_V4) == []
        time.sleep(0.1)


def test_an_avoided_interface_carries_only_a_backup_subflow(scene: Scene) -> None:
    started = scene.start({"interface.veth-a2": "avoid", "multipathPolicy": "aggregate"})
    assert started["stack"] == "mptcp" and started["interface"] == A1, started
    assert dict(map(tuple, started["subflow_plan"])) == {A1: "primary", A2: "backup"}, started
    scene.ask(op="echo", count=5)  # fully established (Rule 5 of runtime/multipath.py)
    scene.wait_subflows(2)
    scene.ask(op="echo", count=20)
    out = scene.ask(op="report")
    by_if = {s["interface"]: s for s in out["subflows"]}
    assert set(by_if) == {A1, A2}, out
    assert by_if[A2]["backup"] is True, out
    assert by_if[A1]["backup"] is not True, out
    assert scene.kernel_sockets_from(A2_V4), "ss lists no socket from veth-a2's address"
    assert ["PathChange", None, A2] in out["events"], out["events"]


def test_two_allowed_interfaces_under_aggregate_are_both_primary(scene: Scene) -> None:
    started = scene.start({"multipathPolicy": "aggregate"})
    assert started["stack"] == "mptcp", started
    assert dict(map(tuple, started["subflow_plan"])) == {A1: "primary", A2: "primary"}, started
    scene.ask(op="echo", count=5)
    scene.wait_subflows(2)
    out = scene.ask(op="echo", count=20)
    by_if = {s["interface"]: s for s in out["subflows"]}
    assert set(by_if) == {A1, A2}, out
    assert all(s["backup"] is not True for s in by_if.values()), out
    assert sorted(out["paths"]) == [A1, A2], out


@pytest.mark.parametrize(("down", "left"), [(A1, A2), (A2, A1)])
def test_an_mptcp_carrier_keeps_going_on_its_other_subflow_when_a_link_goes_down(
        scene: Scene, down: str, left: str) -> None:
    """veth-a1 carries the initial subflow, veth-a2 the one the controller opened."""
    scene.start({"multipathPolicy": "aggregate"})
    scene.ask(op="echo", count=5)
    scene.wait_subflows(2)
    scene.topo.link(scene.topo.a, down, up=False)
    out = scene.ask(op="timed_echo", timeout=15)
    assert out["stack"] == "mptcp", out
    kinds = [e[0] for e in out["events"]]
    assert "Dormant" not in kinds and kinds.count("Ready") == 1, out["events"]
    assert ["PathChange", down, left] in out["events"], out["events"]
    print(f"\nMPTCP: first echo after {down} went down took {out['echo_ms']:.0f} ms")
    out = scene.ask(op="echo", count=20)
    assert left in {s["interface"] for s in out["subflows"]}, out


def test_under_handover_the_preferred_interface_gets_its_primary_subflow_back(
        scene: Scene) -> None:
    """handover: veth-a1 primary, veth-a2 backup. veth-a1 goes down: the backup subflow
    carries on; veth-a1 comes back: a primary subflow from it carries the data again (the
    better path; this kernel goes on listing the withdrawn initial subflow, which carries
    nothing, beside the new one)."""
    started = scene.start({"multipathPolicy": "handover"})
    assert dict(map(tuple, started["subflow_plan"])) == {A1: "primary", A2: "backup"}, started
    scene.ask(op="echo", count=5)
    scene.wait_subflows(2)
    scene.topo.link(scene.topo.a, A1, up=False)
    out = scene.ask(op="timed_echo", timeout=15)
    assert ["PathChange", A1, A2] in out["events"], out["events"]
    scene.topo.link(scene.topo.a, A1, up=True)
    deadline = time.monotonic() + 5
    while True:
        out = scene.ask(op="echo", count=2)
        back = [s for s in out["subflows"] if s["interface"] == A1 and s["backup"] is False]
        if back:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.05)  # pacing between reads of the kernel's subflows
    assert any(s["interface"] == A2 and s["backup"] is True for s in out["subflows"]), out
    before, after = sent_by_interface(out), sent_by_interface(scene.ask(op="echo", count=50))
    assert after[A1] - before[A1] >= 50 * 1000, (before, after)  # the primary carries it
    assert after[A2] - before[A2] < 10 * 1000, (before, after)  # the backup idles
