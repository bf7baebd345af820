"""Remembered failures demote a stack, end to end (issue 12 item 7; docs/explain.md, "The
ranking key"), on the two-host topology of tests/netns.py.

Host B runs one taps_post Listener with a certificate on port 5443: TLS over TCP and QUIC
share the port number. `svc` resolves in A (its hosts file) to 198.18.1.2 only, and the
client's policy prohibits veth-a2 and sets `stack.quic: prefer`, so `https://svc:5443` has
two candidates, QUIC first:

    #1 veth-a1 quic 198.18.1.2   start 0
    #2 veth-a1 tls  198.18.1.2   start attemptDelay

An nftables rule in B makes UDP fail: `reject` answers each QUIC Initial with ICMP port
unreachable (the QUIC attempt fails at once: a failure the Association records, with the
time), `drop` black-holes it (the attempt hangs, so a QUIC ranked first costs one
attemptDelay before TLS starts; TLS, started after it, wins, and QUIC is recorded as an
outrun failure: runtime/racing.py). The client process keeps one AssociationStore across
commands, as an application does, and answers each with the Decision (carrier.explanation),
the attempts, the trace's attempt.started times and the history.

Rule 1: timing bounds are ratios of attemptDelay (300 ms) wide enough for a loaded 2-core
machine: "waited" is >= 0.9 x attemptDelay, "did not wait" is < 0.5 x attemptDelay.
Rule 2: the Decision is asserted first (the key's recent_failure and the order), then the
clock: a wrong order fails with the explanation, not with a timing.
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

import taps_post as tp
from netns import (
    A1,
    B1_V4,
    B1_V6,
    B2_V4,
    B2_V6,
    COMMAND_LOOP,
    ECHO_LISTENER,
    NsProcess,
    Topology,
    topology,
)

PORT = 5443
DELAY = 300
"""racing.attemptDelay (ms)."""
MEMORY = 2000
"""racing.failureMemory (ms) of the commands that do not set their own."""

CLIENT = COMMAND_LOOP + r"""
import dataclasses, time
import taps_post as tp
from taps_post.decision.render import render_text
from taps_post.runtime import api  # import cost stays outside the timings

CERT = tp.certs.Certificate.from_files(sys.argv[1])
STORE = tp.AssociationStore()

def policy(cmd):
    values = {"racing.attemptDelay": cmd["attempt_delay"], "stack.quic": "prefer",
              "interface.veth-a2": "prohibit", "racing.failureMemory": cmd["memory"]}
    values.update(cmd.get("set", {}))
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="t")

def explained(decision):
    return {"candidates": decision.to_dict()["candidates"],
            "attempt_delay": decision.to_dict()["resolution"]["attempt_delay"],
            "text": render_text(decision)}

async def handle(cmd):
    if cmd.get("op") == "reset":
        STORE.clear()
        return {"ok": True}
    remote = tp.Remote.parse(cmd["target"], certificates=[CERT])
    events = []

    def trace(name, info):
        if name.startswith("attempt."):
            events.append({"event": name, "t_ms": info["t_ms"], "rank": info["rank"],
                           "stack": info["stack"]})

    started = time.monotonic()
    try:
        carrier = await tp.initiate(remote, policy=policy(cmd), store=STORE, trace=trace)
    except tp.EstablishmentError as exc:
        out = {"ok": False, "elapsed_ms": (time.monotonic() - started) * 1000,
               "error": str(exc), **explained(exc.decision),
               "attempts": [[a.stack, a.outcome] for a in exc.attempts]}
    else:
        out = {"ok": True, "elapsed_ms": (time.monotonic() - started) * 1000,
               "stack": carrier.stack, "winner": carrier.candidate.rank,
               **explained(carrier.explanation),
               "attempts": [[a.stack, a.outcome] for a in carrier.attempts]}
        await carrier.send(b"ping")
        out["echo"] = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
        await carrier.close()
    out["events"] = events
    out["history"] = [dataclasses.asdict(e) for e in STORE.get(remote.hostport).history]
    out["now"] = time.time()
    return out

asyncio.run(command_loop(handle))
"""


@dataclass
class Scene:
    topo: Topology
    server: NsProcess
    client: NsProcess

    def initiate(self, timeout: float = 10.0, **cmd: Any) -> dict[str, Any]:
        cmd.setdefault("target", f"https://svc:{PORT}")
        cmd.setdefault("attempt_delay", DELAY)
        cmd.setdefault("memory", MEMORY)
        return self.client.ask(cmd, timeout)

    def udp(self, verdict: str | None) -> None:
        """Every UDP datagram entering B is rejected (ICMP port unreachable), dropped, or
        (None) let through."""
        self.topo.clear_blackholes(self.topo.b)
        if verdict is None:
            return
        action = {"reject": "reject with icmpx type port-unreachable", "drop": "drop"}[verdict]
        self.topo.nft(self.topo.b, "\n".join([
            "table inet bh {",
            "  chain in { type filter hook input priority 0; policy accept; }",
            "}",
            f"add rule inet bh in meta l4proto udp {action}",
        ]) + "\n")


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    with topology("tpf") as topo:
        topo.hosts(topo.a, {"svc": [B1_V4]})
        cert = tp.certs.self_signed(["svc", B1_V4, B1_V6, B2_V4, B2_V6])
        assert cert.key_pem is not None
        cert_path, key_path = topo.tmp / "cert.pem", topo.tmp / "key.pem"
        cert_path.write_text(cert.cert_pem)
        key_path.write_text(cert.key_pem)
        server = topo.spawn(topo.b, ECHO_LISTENER, str(PORT), "--certificate",
                            str(cert_path), str(key_path))
        ports = server.read_json(10)["ports"]
        assert ports.get("quic") == PORT and ports.get("tls") == PORT, ports
        client = topo.spawn(topo.a, CLIENT, str(cert_path))
        yield Scene(topo, server, client)


@pytest.fixture
def fresh(scene: Scene) -> Iterator[Scene]:
    """The module's scene, UDP let through, and a client that forgot every Association."""
    scene.udp(None)
    assert scene.client.ask({"op": "reset"})["ok"]
    yield scene
    scene.udp(None)


def ranked(out: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(stack, key.history, key.recent_failure) of each candidate, in rank order."""
    return [(c["stack"], c["key"]["history"], c["key"]["recent_failure"])
            for c in out["candidates"]]


def history(out: dict[str, Any]) -> dict[str, str]:
    return {e["stack"]: e["outcome"] for e in out["history"] if e["interface"] == A1}


def started(out: dict[str, Any]) -> list[tuple[str, float]]:
    """(stack, t_ms) of each attempt.started event, in order."""
    return [(e["stack"], e["t_ms"]) for e in out["events"] if e["event"] == "attempt.started"]


def quic_block(out: dict[str, Any]) -> str:
    """The explain text's quic subtree of veth-a1: its stack line and candidate lines."""
    lines = out["text"].splitlines()
    (start,) = [i for i, ln in enumerate(lines) if ln.strip() == "quic"]
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = [lines[start]]
    for ln in lines[start + 1:]:
        if len(ln) - len(ln.lstrip()) <= indent:
            break
        block.append(ln)
    return "\n".join(block)


def failed_at(out: dict[str, Any], stack: str) -> float:
    """The wall-clock time the Association recorded `stack`'s failure (CacheEntry.at)."""
    (entry,) = [e for e in out["history"] if e["stack"] == stack and e["interface"] == A1]
    assert entry["outcome"] == "failure", entry
    assert entry["at"] is not None, f"the failure was recorded without a time: {entry}"
    return float(entry["at"])


def test_remembered_quic_failure_ranks_tls_first_until_the_memory_ends(fresh: Scene) -> None:
    # 1. QUIC fails (port unreachable): TLS starts at once and wins; the failure is kept.
    fresh.udp("reject")
    first = fresh.initiate()
    assert ranked(first) == [("quic", "none", False), ("tls", "none", False)], first["text"]
    assert first["ok"] and first["stack"] == "tls", first
    assert first["attempts"] == [["quic", "failed"], ["tls", "won"]], first
    assert history(first) == {"quic": "failure", "tls": "success"}
    at = failed_at(first, "quic")
    assert abs(first["now"] - at) < 5, (first["now"], at)

    # 2. Now UDP is black-holed (the costly case). The remembered failure ranks TLS first:
    #    ready without waiting attemptDelay behind QUIC, which never starts.
    fresh.udp("drop")
    second = fresh.initiate()
    assert ranked(second) == [("tls", "success", False), ("quic", "failure", True)], \
        second["text"]
    assert second["ok"] and second["stack"] == "tls" and second["winner"] == 1, second
    assert second["attempts"][0] == ["tls", "won"], second
    assert [s for s, _ in started(second)] == ["tls"], second["events"]
    assert second["elapsed_ms"] < 0.5 * DELAY, second["elapsed_ms"]

    # 3. The same request with the memory off: QUIC first again, and the wait is back.
    off = fresh.initiate(memory=0)
    assert [c["stack"] for c in off["candidates"]] == ["quic", "tls"], off["text"]
    assert not any(c["key"]["recent_failure"] for c in off["candidates"]), off["text"]
    assert off["ok"] and off["stack"] == "tls" and off["winner"] == 2, off
    assert off["elapsed_ms"] >= 0.9 * DELAY, off["elapsed_ms"]
    assert off["elapsed_ms"] > 3 * second["elapsed_ms"], (off["elapsed_ms"],
                                                          second["elapsed_ms"])
    tls_start = dict(started(off))["tls"]
    assert tls_start >= 0.9 * DELAY, off["events"]

    # 4. `stack.quic: require`: QUIC is the only candidate and is not demoted: it is tried
    #    (and, black-holed, runs into the connTimeout).
    required = fresh.initiate(set={"stack.quic": "require", "connTimeout": 400})
    assert [(c["stack"], c["key"]["recent_failure"]) for c in required["candidates"]] == \
        [("quic", False)], required["text"]
    assert not required["ok"], required
    assert [s for s, _ in started(required)] == ["quic"], required["events"]
    assert required["attempts"] == [["quic", "failed"]], required
    assert failed_at(required, "quic") > at, "a repeated failure must restart the memory"

    # 5. Once racing.failureMemory has passed since the last failure, it is forgotten: QUIC
    #    ranks first again (as if it had no entry), and its success clears the failure.
    last = failed_at(required, "quic")
    time.sleep(max(0.0, last + MEMORY / 1000 + 0.2 - time.time()))
    fresh.udp(None)
    later = fresh.initiate()
    assert ranked(later)[0] == ("quic", "none", False), later["text"]
    assert not any(c["key"]["recent_failure"] for c in later["candidates"]), later["text"]
    assert later["ok"] and later["stack"] == "quic" and later["winner"] == 1, later
    assert later["elapsed_ms"] < 0.5 * DELAY, later["elapsed_ms"]
    assert history(later) == {"quic": "success", "tls": "success"}
    print(f"\nfailure memory: TLS ready after {second['elapsed_ms']:.0f} ms with QUIC's "
          f"failure remembered, {off['elapsed_ms']:.0f} ms with the memory off "
          f"(attemptDelay {DELAY} ms)")
    # What explain prints (the text taps-post policy explain shows) names the demotion.
    assert "recent failure" in quic_block(second).lower(), second["text"]


def test_the_memory_ends_for_a_plan_already_made(fresh: Scene) -> None:
    """The demotion depends on the clock, not only on the history: a Decision made (and
    kept as the Association's plan) while QUIC's failure was recent is not reused once
    racing.failureMemory has passed, although neither the policy nor the history changed."""
    fresh.udp("reject")
    first = fresh.initiate(memory=800)
    assert first["ok"] and history(first)["quic"] == "failure", first
    at = failed_at(first, "quic")
    fresh.udp(None)
    demoted = fresh.initiate(memory=800)
    assert ranked(demoted) == [("tls", "success", False), ("quic", "failure", True)], \
        demoted["text"]
    assert demoted["stack"] == "tls", demoted
    time.sleep(max(0.0, at + 0.8 + 0.15 - time.time()))
    forgotten = fresh.initiate(memory=800)
    assert ranked(forgotten)[0] == ("quic", "none", False), forgotten["text"]
    assert forgotten["stack"] == "quic", forgotten


def test_a_repeated_failure_restarts_the_memory(fresh: Scene) -> None:
    """A stack that fails again is remembered from its latest failure, not its first."""
    fresh.udp("reject")
    first = fresh.initiate(set={"stack.quic": "require", "connTimeout": 400})
    at = failed_at(first, "quic")
    time.sleep(0.3)
    again = fresh.initiate(set={"stack.quic": "require", "connTimeout": 400})
    assert failed_at(again, "quic") >= at + 0.25, again["history"]


def test_black_holed_quic_is_remembered(fresh: Scene) -> None:
    """Issue 12 item 7's own example: UDP black-holed from the start. QUIC never fails by
    itself: it hangs, TLS starts one attemptDelay later and wins, and QUIC, outrun, is
    recorded as a failure (the attempt itself stays "cancelled"). The next connection ranks
    TLS first and does not wait behind QUIC again."""
    fresh.udp("drop")
    first = fresh.initiate()
    assert ranked(first) == [("quic", "none", False), ("tls", "none", False)], first["text"]
    assert first["ok"] and first["stack"] == "tls" and first["winner"] == 2, first
    assert first["attempts"] == [["quic", "cancelled"], ["tls", "won"]], first
    assert first["elapsed_ms"] >= 0.9 * DELAY, first["elapsed_ms"]
    assert dict(started(first))["tls"] >= 0.9 * DELAY, first["events"]
    assert history(first) == {"quic": "failure", "tls": "success"}

    second = fresh.initiate()
    assert ranked(second) == [("tls", "success", False), ("quic", "failure", True)], \
        second["text"]
    assert second["ok"] and second["stack"] == "tls" and second["winner"] == 1, second
    assert [s for s, _ in started(second)] == ["tls"], second["events"]
    assert second["elapsed_ms"] < 0.5 * DELAY, second["elapsed_ms"]
    assert second["elapsed_ms"] < first["elapsed_ms"] / 3, (first["elapsed_ms"],
                                                            second["elapsed_ms"])
    assert "recent failure" in quic_block(second).lower(), second["text"]
    print(f"\nUDP black-holed: TLS ready after {first['elapsed_ms']:.0f} ms, then "
          f"{second['elapsed_ms']:.0f} ms with QUIC's outrun attempt remembered")
