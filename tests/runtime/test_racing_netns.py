"""Racing, binding and history on a real two-path topology (tests/netns.py).

Host A runs a client process that takes commands (JSON lines) and answers each with what
happened (JSON lines); host B runs an echo server that reports every connection's peer and
local address. `svc` resolves in A to fd00:1::2 (path 1) and 198.18.2.2 (path 2); thanks to
the topology's cross routes every (interface, address) candidate is a working path until an
nftables rule in B black-holes it. With `racing.attemptDelay: 100` the decision is:

    #1 veth-a1 tcp [fd00:1::2]   start 0 ms      (direct)
    #2 veth-a1 tcp 198.18.2.2    start 100 ms    (cross: path 1 to B's path-2 address)
    #3 veth-a2 tcp [fd00:1::2]   start 200 ms    (cross)
    #4 veth-a2 tcp 198.18.2.2    start 300 ms    (direct)

(interface name before endpoint order, endpoints interleaved IPv6 first; docs/explain.md,
"The ranking key").
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import (
    A1,
    A1_V4,
    A1_V6,
    A2,
    A2_V4,
    A2_V6,
    B1_V4,
    B1_V6,
    B2_V4,
    B2_V6,
    NsProcess,
    Topology,
    topology,
)

PORT = 5001
DELAY = 100
"""racing.attemptDelay (ms) of every client command unless it says otherwise."""

ECHO_SERVER = r"""
import asyncio, json, socket, sys

PORT = int(sys.argv[1])

async def handle(reader, writer):
    peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
    print(json.dumps({"peer": peer[0], "local": local[0]}), flush=True)
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()

async def main():
    sock = socket.create_server(("::", PORT), family=socket.AF_INET6, dualstack_ipv6=True)
    server = await asyncio.start_server(handle, sock=sock)
    print(json.dumps({"port": PORT}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    server.close()

asyncio.run(main())
"""

TAPS_SERVER = r"""
import asyncio, json, sys
import taps_post as tp

PORT = int(sys.argv[1])

async def serve(carrier):
    print(json.dumps({"peer": carrier.remote_address[0], "local": carrier.local_address[0],
                      "stack": carrier.stack}), flush=True)
    try:
        async for msg in carrier:
            await carrier.send(b"echo:" + bytes(msg))
    finally:
        await carrier.close()

async def main():
    policy = tp.PolicyContext(system=[], app_name="srv")
    listener = await tp.listen(tp.Local(port=PORT), policy=policy)
    print(json.dumps({"ports": listener.ports}), flush=True)
    tasks = set()

    def accept(carrier):
        task = asyncio.ensure_future(serve(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    listener.accept(accept)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await listener.close()

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, dataclasses, json, sys, time
import taps_post as tp
from taps_post.runtime import api  # import cost stays outside the timings

STORE = tp.AssociationStore()

def policy(cmd):
    values = {"racing.attemptDelay": cmd.get("attempt_delay", 100)}
    if "conn_timeout" in cmd:
        values["connTimeout"] = cmd["conn_timeout"]
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="t")

async def initiate(cmd):
    local = tp.Local(interface=cmd["interface"]) if cmd.get("interface") else None
    remote = tp.Remote.parse(cmd["target"])
    started = time.monotonic()
    try:
        carrier = await tp.initiate(remote, local=local, policy=policy(cmd), store=STORE)
    except tp.EstablishmentError as exc:
        return {"ok": False, "elapsed_ms": (time.monotonic() - started) * 1000,
                "error": str(exc), "attempts": [a.to_dict() for a in exc.attempts],
                "candidates": exc.decision.to_dict()["candidates"]}
    out = {"ok": True, "elapsed_ms": (time.monotonic() - started) * 1000,
           "winner": carrier.candidate.to_dict(), "local": carrier.local_address,
           "remote": carrier.remote_address,
           "candidates": carrier.explanation.to_dict()["candidates"]}
    try:
        await carrier.send(cmd.get("send", "ping").encode())
        out["echo"] = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
    finally:
        await carrier.close()
    out["history"] = [dataclasses.asdict(e) for e in STORE.get(remote.hostport).history]
    return out

async def main():
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        try:
            out = await initiate(json.loads(line))
        except Exception as exc:
            out = {"ok": False, "unexpected": repr(exc)}
        print(json.dumps(out), flush=True)

asyncio.run(main())
"""


@dataclass
class Scene:
    topo: Topology
    server: NsProcess
    client: NsProcess

    def initiate(self, timeout: float = 10.0, **cmd: Any) -> dict[str, Any]:
        cmd.setdefault("target", f"tcp://svc:{PORT}")
        cmd.setdefault("attempt_delay", DELAY)
        out: dict[str, Any] = self.client.request(cmd, timeout)
        assert "unexpected" not in out, out["unexpected"]
        return out

    def half_open(self) -> list[str]:
        """TCP sockets of host A still trying to connect (a loser the race did not close)."""
        out = self.topo.exec(self.topo.a, "ss", "-Htn", "state", "syn-sent").stdout
        return [line for line in out.splitlines() if line.strip()]

    def peer(self, timeout: float = 3.0) -> dict[str, str]:
        """The next connection the server saw: {"peer": ..., "local": ...}."""
        seen: dict[str, str] = self.server.read_json(timeout)
        return {k: unmap(v) for k, v in seen.items()}


def unmap(address: str) -> str:
    """A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d."""
    return address.removeprefix("::ffff:")


@pytest.fixture
def scene() -> Iterator[Scene]:
    with topology("tpr") as topo:
        topo.hosts(topo.a, {"svc": [B1_V6, B2_V4]})
        server = topo.spawn(topo.b, ECHO_SERVER, str(PORT))
        assert server.read_json(10) == {"port": PORT}
        client = topo.spawn(topo.a, CLIENT)
        yield Scene(topo, server, client)


def where(c: dict[str, Any]) -> tuple[str, str]:
    return c["interface"], c["remote_address"]


EXPECTED_ORDER = [(A1, B1_V6), (A1, B2_V4), (A2, B1_V6), (A2, B2_V4)]


def test_plan_in_the_namespace(scene: Scene) -> None:
    """No black hole: the decision is the one the module docstring shows, #1 wins at once,
    and the server sees it come from veth-a1's address."""
    out = scene.initiate()
    assert out["ok"], out
    assert [where(c) for c in out["candidates"]] == EXPECTED_ORDER
    assert [c["start_ms"] for c in out["candidates"]] == [0, 100, 200, 300]
    assert out["winner"]["rank"] == 1
    assert out["echo"] == "ping"
    assert out["elapsed_ms"] < DELAY, "an unobstructed first candidate must not wait"
    assert scene.peer() == {"peer": A1_V6, "local": B1_V6}


def test_blackholed_first_candidate_loses_to_the_second_after_attempt_delay(
        scene: Scene) -> None:
    scene.topo.blackhole(scene.topo.b, daddr=B1_V6)  # drop: #1's SYNs vanish
    out = scene.initiate()
    assert out["ok"], out
    assert where(out["candidates"][0]) == (A1, B1_V6)
    assert out["winner"]["rank"] == 2
    assert where(out["winner"]) == where(out["candidates"][1]) == (A1, B2_V4)
    # #2 starts at attemptDelay, not after #1 times out (SYN retry 1 s, connTimeout 30 s).
    assert DELAY * 0.9 <= out["elapsed_ms"] < DELAY + 150, out["elapsed_ms"]
    assert out["echo"] == "ping"
    assert scene.half_open() == [], "the losing attempt #1 was not closed"


def test_every_candidate_blackholed_reports_every_attempt_after_conn_timeout(
        scene: Scene) -> None:
    scene.topo.blackhole(scene.topo.b)  # every TCP packet into B
    out = scene.initiate(conn_timeout=1500)
    assert not out["ok"], out
    assert 1500 * 0.95 <= out["elapsed_ms"] < 1500 + 400, out["elapsed_ms"]
    assert len(out["candidates"]) == 4
    assert [a["rank"] for a in out["attempts"]] == [1, 2, 3, 4]
    for cand, attempt in zip(out["candidates"], out["attempts"], strict=True):
        host = f"[{cand['remote_address']}]" if ":" in cand["remote_address"] \
            else cand["remote_address"]
        named = f"#{cand['rank']} {cand['interface']} tcp {host}:{PORT}"
        assert named in out["error"], (named, out["error"])
        assert attempt["outcome"] == "failed", attempt
        assert "connTimeout" in attempt["error"], attempt
        # each attempt ran from its staggered start until the deadline
        assert attempt["elapsed_ms"] == pytest.approx(1500 - cand["start_ms"], abs=120)
    assert scene.half_open() == [], "attempts outlived the race"


@pytest.mark.parametrize(
    ("rules", "rank", "source", "destination"),
    [
        pytest.param([], 1, A1_V6, B1_V6, id="no-blackhole"),
        # #2 is path 1 to B's path-2 address: the kernel alone would pick 198.18.2.1 (veth-a2)
        # as the source; bound to veth-a1 it must be veth-a1's address.
        pytest.param([{"daddr": B1_V6}], 2, A1_V4, B2_V4, id="first-address-blackholed"),
        pytest.param([{"saddr": A1_V6}, {"saddr": A1_V4}], 3, A2_V6, B1_V6,
                     id="path1-blackholed"),
    ],
)
def test_candidates_bind_their_interface_address(
        scene: Scene, rules: list[dict[str, str]], rank: int, source: str,
        destination: str) -> None:
    for rule in rules:
        scene.topo.blackhole(scene.topo.b, **rule)
    out = scene.initiate()
    assert out["ok"], out
    assert out["winner"]["rank"] == rank
    assert out["winner"]["local_address"] == source
    assert unmap(out["local"][0]) == source, "the carrier's socket is bound elsewhere"
    assert scene.peer() == {"peer": source, "local": destination}


def ranked(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(interface, remote address, key.history) of each candidate, in rank order."""
    return [(*where(c), c["key"]["history"]) for c in out["candidates"]]


def test_failed_path_is_ranked_last_next_time(scene: Scene) -> None:
    """Path 1 refuses (TCP reset) from A's path-1 addresses: both veth-a1 candidates fail at
    once and #3 (veth-a2) wins. Then path 1 becomes a black hole: had the history not moved
    veth-a1 down, the second connection would wait attemptDelay (or more) behind it."""
    b = scene.topo.b
    for addr in (A1_V6, A1_V4):
        scene.topo.blackhole(b, saddr=addr, action="reject")
    first = scene.initiate(attempt_delay=300)
    assert first["ok"], first
    assert first["winner"]["rank"] == 3 and first["winner"]["interface"] == A2
    assert first["elapsed_ms"] < 100, "refusals start the next attempt at once"
    history = {(e["stack"], e["interface"], e["address"]): e["outcome"]
               for e in first["history"]}
    assert history == {("tcp", A1, B1_V6): "failure", ("tcp", A1, B2_V4): "failure",
                       ("tcp", A2, B1_V6): "success"}

    scene.topo.clear_blackholes(b)
    for addr in (A1_V6, A1_V4):
        scene.topo.blackhole(b, saddr=addr)
    second = scene.initiate(attempt_delay=300)
    assert second["ok"], second
    assert ranked(second) == [(A2, B1_V6, "success"), (A2, B2_V4, "none"),
                              (A1, B1_V6, "failure"), (A1, B2_V4, "failure")]
    assert second["winner"]["rank"] == 1
    assert second["elapsed_ms"] < 100, "the history should let #1 (veth-a2) win at once"
    assert [scene.peer()["peer"], scene.peer()["peer"]] == [A2_V6, A2_V6]


def test_blackholed_path_won_by_sibling_is_ranked_first_next_time(scene: Scene) -> None:
    """Path 1 black-holed: #1 and #2 hang, #3 (veth-a2) wins after 2 x attemptDelay. The
    losers were outrun (pending for attemptDelay while a later attempt won: racing Rule 4),
    so they are remembered as failures and rank last; veth-a2's success ranks it first, and
    the second connection does not wait."""
    for addr in (A1_V6, A1_V4):
        scene.topo.blackhole(scene.topo.b, saddr=addr)
    first = scene.initiate()
    assert first["ok"], first
    assert first["winner"]["rank"] == 3
    assert 2 * DELAY * 0.9 <= first["elapsed_ms"] < 2 * DELAY + 150, first["elapsed_ms"]
    second = scene.initiate()
    assert second["ok"], second
    assert ranked(second) == [(A2, B1_V6, "success"), (A2, B2_V4, "none"),
                              (A1, B1_V6, "failure"), (A1, B2_V4, "failure")]
    assert second["winner"]["rank"] == 1
    assert second["elapsed_ms"] < DELAY, second["elapsed_ms"]


def test_blackholed_address_on_a_working_interface_is_not_waited_for_twice(
        scene: Scene) -> None:
    """#1 (veth-a1 -> fd00:1::2) is black-holed and loses to #2 (veth-a1 -> 198.18.2.2), on
    the same interface: history per remote address ranks #2's pair first next time, so the
    second connection does not wait attemptDelay behind the black hole again."""
    scene.topo.blackhole(scene.topo.b, daddr=B1_V6)
    first = scene.initiate()
    assert first["ok"] and first["winner"]["rank"] == 2, first
    second = scene.initiate()
    assert second["ok"], second
    assert ranked(second)[0] == (A1, B2_V4, "success")
    assert where(second["winner"]) == (A1, B2_V4)
    assert second["elapsed_ms"] < DELAY, (
        f"waited {second['elapsed_ms']:.0f} ms; order {ranked(second)}")


def test_listener_accepts_over_both_paths_and_families() -> None:
    """tp.listen on `::` in B; A connects to each of B's four addresses, each from the
    interface of that path (tp.Local(interface=...)); B sees the right peer and local
    address on every carrier, and echoes."""
    with topology("tpl") as topo:
        server = topo.spawn(topo.b, TAPS_SERVER, str(PORT))
        ports = server.read_json(10)["ports"]
        assert ports.get("tcp") == PORT, ports
        client = topo.spawn(topo.a, CLIENT)
        for interface, source, target in [(A1, A1_V6, B1_V6), (A1, A1_V4, B1_V4),
                                          (A2, A2_V6, B2_V6), (A2, A2_V4, B2_V4)]:
            host = f"[{target}]" if ":" in target else target
            out = client.request({"target": f"tcp://{host}:{PORT}", "interface": interface,
                                  "send": f"hello {target}"}, 10)
            assert out["ok"], out
            assert out["winner"]["interface"] == interface
            assert out["echo"] == f"echo:hello {target}"
            seen = server.read_json(5)
            assert (unmap(seen["peer"]), unmap(seen["local"])) == (source, target), seen
            assert seen["stack"] in ("tcp", "mptcp"), seen
