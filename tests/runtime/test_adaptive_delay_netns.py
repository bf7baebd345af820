"""The adaptive attempt delay, end to end (issue 12 item 6; docs/explain.md): with RTT history
for the remote, the Decision's attempt_delay is 2 x the first candidate's RTT clamped to
racing.minAttemptDelay .. racing.maxAttemptDelay (source "history"), and the race really
staggers by it; without history it is racing.attemptDelay (source "policy").

On the two-host topology of tests/netns.py, `svc` resolves in A to fd00:1::2 and
198.18.2.2; the client's policy prohibits veth-a2, so `tcp://svc:5001` has two candidates:

    #1 veth-a1 tcp [fd00:1::2]   start 0
    #2 veth-a1 tcp 198.18.2.2    start attempt_delay

An nftables rule in B black-holes fd00:1::2 (#1's SYNs vanish), so #2's attempt.started
event comes one attempt delay after #1's: that gap is the delay the race used.

The namespaces have no netem, so a slow path is not emulated: the fast path (RTT well under
a millisecond) shows the clamp to the minimum, and history entries loaded from an on-disk
store file (AssociationStore(path)) show 2 x RTT and the clamp to the maximum.

Rule 1: the policy's own racing.attemptDelay is set far from every history-derived value
(1500 ms), so a race that ignored the history would be seen at once; gaps are asserted
within -10 % / +120 ms (a loaded 2-core machine schedules late, never early).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import A1, B1_V6, B2_V4, COMMAND_LOOP, ECHO_LISTENER, NsProcess, Topology, topology

PORT = 5001
POLICY_DELAY = 1500
"""racing.attemptDelay (ms): what a race without history would wait."""

CLIENT = COMMAND_LOOP + r"""
import dataclasses, time
import taps_post as tp
from taps_post.runtime import api  # import cost stays outside the timings

STORE = [tp.AssociationStore()]

def policy(cmd):
    values = {"racing.attemptDelay": cmd["attempt_delay"], "interface.veth-a2": "prohibit"}
    values.update(cmd.get("set", {}))
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="t")

async def handle(cmd):
    if cmd.get("op") == "store":  # a fresh store, from a cache file when given one
        STORE[0] = tp.AssociationStore(cmd.get("path"))
        return {"ok": True}
    store = STORE[0]
    remote = tp.Remote.parse(cmd["target"])
    events = []

    def trace(name, info):
        if name == "race.started":
            events.append({"event": name, "t_ms": info["t_ms"],
                           "delay_ms": info["attempt_delay_ms"]})
        elif name.startswith("attempt."):
            events.append({"event": name, "t_ms": info["t_ms"], "rank": info["rank"]})

    started = time.monotonic()
    carrier = await tp.initiate(remote, policy=policy(cmd), store=store, trace=trace)
    out = {"elapsed_ms": (time.monotonic() - started) * 1000, "winner": carrier.candidate.rank,
           "candidates": carrier.explanation.to_dict()["candidates"],
           "attempt_delay": carrier.explanation.to_dict()["resolution"]["attempt_delay"]}
    await carrier.send(b"ping")
    out["echo"] = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
    await carrier.close()
    out["events"] = events
    out["history"] = [dataclasses.asdict(e) for e in store.get(remote.hostport).history]
    return out

asyncio.run(command_loop(handle))
"""


@dataclass
class Scene:
    topo: Topology
    client: NsProcess

    def initiate(self, **cmd: Any) -> dict[str, Any]:
        cmd.setdefault("target", f"tcp://svc:{PORT}")
        cmd.setdefault("attempt_delay", POLICY_DELAY)
        return self.client.ask(cmd, 10.0)

    def store(self, entries: list[dict[str, Any]] | None = None) -> None:
        """A fresh AssociationStore in the client: empty, or loaded from a cache file holding
        `entries` for svc:5001 (mode 0600, as AssociationStore.save() writes it)."""
        if entries is None:
            self.client.ask({"op": "store"})
            return
        path = self.topo.tmp / "store.json"
        path.write_text(json.dumps({"version": 1, "associations": {f"svc:{PORT}": entries}}))
        os.chmod(path, 0o600)
        self.client.ask({"op": "store", "path": str(path)})


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    with topology("tpd") as topo:
        topo.hosts(topo.a, {"svc": [B1_V6, B2_V4]})
        server = topo.spawn(topo.b, ECHO_LISTENER, str(PORT))
        assert server.read_json(10)["ports"].get("tcp") == PORT
        yield Scene(topo, topo.spawn(topo.a, CLIENT))


@pytest.fixture
def fresh(scene: Scene) -> Iterator[Scene]:
    scene.topo.clear_blackholes(scene.topo.b)
    scene.store()
    yield scene
    scene.topo.clear_blackholes(scene.topo.b)


def gap(out: dict[str, Any]) -> float:
    """Milliseconds from #1's attempt.started to #2's: the stagger the race really used."""
    at = {e["rank"]: e["t_ms"] for e in out["events"] if e["event"] == "attempt.started"}
    assert set(at) >= {1, 2}, out["events"]
    return float(at[2] - at[1])


def raced_by(out: dict[str, Any]) -> float:
    (delay,) = [e["delay_ms"] for e in out["events"] if e["event"] == "race.started"]
    return float(delay)


def assert_staggered(out: dict[str, Any], ms: int) -> None:
    assert [c["start_ms"] for c in out["candidates"]] == [0, ms], out["candidates"]
    assert raced_by(out) == pytest.approx(ms), out["events"]
    assert out["winner"] == 2 and out["echo"] == "echo:ping", out
    assert 0.9 * ms <= gap(out) < ms + 120, (gap(out), ms)


def entry(rtt_ms: float, address: str = B1_V6) -> dict[str, Any]:
    return {"remote": f"svc:{PORT}", "stack": "tcp", "outcome": "success", "rtt_ms": rtt_ms,
            "ticket": False, "interface": A1, "address": address}


def test_no_history_uses_the_policy_delay(fresh: Scene) -> None:
    out = fresh.initiate(attempt_delay=200)
    assert out["attempt_delay"]["source"] == "policy", out["attempt_delay"]
    assert out["attempt_delay"]["ms"] == 200
    assert out["winner"] == 1 and out["elapsed_ms"] < 200, out
    assert [c["start_ms"] for c in out["candidates"]] == [0, 200]


def test_fast_path_history_clamps_to_the_minimum_and_the_race_uses_it(fresh: Scene) -> None:
    """A first connection on the fast path records its RTT (well under 1 ms); the next
    Decision's delay is 2 x RTT clamped up to racing.minAttemptDelay, and with #1
    black-holed, #2 starts that long after it instead of after racing.attemptDelay."""
    warm = fresh.initiate()
    assert warm["winner"] == 1 and warm["attempt_delay"]["source"] == "policy", warm
    (first,) = [e for e in warm["history"] if e["address"] == B1_V6]
    assert first["outcome"] == "success" and first["rtt_ms"] is not None, warm["history"]
    assert first["rtt_ms"] < 25, first

    fresh.topo.blackhole(fresh.topo.b, daddr=B1_V6)
    out = fresh.initiate(set={"racing.minAttemptDelay": 150})
    delay = out["attempt_delay"]
    assert delay["source"] == "history" and delay["ms"] == 150, delay
    assert "150" in delay["reason"], delay
    assert_staggered(out, 150)
    assert out["elapsed_ms"] < POLICY_DELAY / 2, out["elapsed_ms"]
    print(f"\nfast path: attempt delay {delay['ms']} ms ({delay['reason']}); #2 started "
          f"{gap(out):.0f} ms after #1, ready after {out['elapsed_ms']:.0f} ms")


@pytest.mark.parametrize(("rtt", "bounds", "ms"), [
    pytest.param(180.0, {}, 360, id="2x-rtt"),
    pytest.param(900.0, {"racing.maxAttemptDelay": 450}, 450, id="clamped-to-max"),
])
def test_history_from_the_store_file_sets_the_delay(fresh: Scene, rtt: float,
                                                    bounds: dict[str, int], ms: int) -> None:
    """A history entry loaded from an on-disk store (another process measured it): its RTT
    doubled, or clamped down to racing.maxAttemptDelay, is the stagger of the race."""
    fresh.store([entry(rtt)])
    fresh.topo.blackhole(fresh.topo.b, daddr=B1_V6)
    out = fresh.initiate(set=bounds)
    delay = out["attempt_delay"]
    assert delay["source"] == "history" and delay["ms"] == ms, delay
    assert f"{rtt:g}" in delay["reason"] or f"{round(rtt)}" in delay["reason"], delay
    assert out["candidates"][0]["key"]["history"] == "success"
    assert out["candidates"][0]["key"]["rtt_ms"] == pytest.approx(rtt)
    assert_staggered(out, ms)
    print(f"\nstored rtt {rtt:g} ms: attempt delay {delay['ms']} ms ({delay['reason']}); "
          f"#2 started {gap(out):.0f} ms after #1")
