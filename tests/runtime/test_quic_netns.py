"""QUIC racing TLS over TCP on a real two-host topology (tests/netns.py), UDP black holes.

Host B runs a taps_post Listener on port 5443 with a certificate: the policy allows both TLS
(over TCP, or MPTCP, which also takes TCP clients) and QUIC, so both share the port number.
Host A runs a client process that takes JSON-line commands and answers each with what
happened. `svc` resolves in A to 198.18.1.2 only, and the client's policy prohibits
veth-a2 (`interface.veth-a2: prohibit`), so `https://svc:5443` has exactly two candidates:

    #1 veth-a1 quic 198.18.1.2   start 0        (multistreaming: prefer is a protocol hit)
    #2 veth-a1 tls  198.18.1.2   start attemptDelay

An nftables rule in B dropping UDP makes QUIC's Initial vanish: TLS must win after
attemptDelay, not after QUIC's connTimeout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import taps_post as tp
from netns import A1, A2, B1_V4, B1_V6, B2_V4, B2_V6, NsProcess, Topology, topology

PORT = 5443
DELAY = 150
"""racing.attemptDelay (ms) of every client command unless it says otherwise."""

SERVER = r"""
import asyncio, json, sys
import taps_post as tp

PORT, CERT, KEY = int(sys.argv[1]), sys.argv[2], sys.argv[3]

async def serve(carrier):
    try:
        async for msg in carrier:
            tag = b" [early]" if msg.early else b""
            await carrier.send(b"echo:" + bytes(msg) + tag)
    finally:
        await carrier.close()

async def main():
    cert = tp.certs.Certificate.from_files(CERT, KEY)
    policy = tp.PolicyContext(system=[], app_name="srv")
    listener = await tp.listen(tp.Local(port=PORT, certificates=[cert]), policy=policy)
    tasks = set()

    def accept(carrier):
        carrier.accept(accept)
        task = asyncio.ensure_future(serve(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    listener.accept(accept)
    print(json.dumps({"ports": listener.ports}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await listener.close()

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, dataclasses, json, sys, time
import taps_post as tp
from taps_post.runtime import api  # import cost stays outside the timings

CERT = tp.certs.Certificate.from_files(sys.argv[1])
STORE = tp.AssociationStore()
KEPT = {}
EVENTS = {}

def policy(cmd):
    values = {"racing.attemptDelay": cmd.get("attempt_delay", 150)}
    values.update(cmd.get("set", {}))
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="t")

def assoc_state(remote):
    assoc = STORE.get(remote.hostport)
    return {"history": [dataclasses.asdict(e) for e in assoc.history],
            "tickets": {k: len(v) for k, v in assoc.tickets.items()}}

async def initiate(cmd):
    local = tp.Local(interface=cmd["interface"]) if cmd.get("interface") else None
    remote = tp.Remote.parse(cmd["target"], certificates=[CERT])
    first = None
    if "first" in cmd:
        first = tp.OutMessage(cmd["first"].encode(), idempotent=cmd.get("idempotent", False))
    started = time.monotonic()
    try:
        carrier = await tp.initiate(remote, local=local, policy=policy(cmd), store=STORE,
                                    send=first)
    except tp.EstablishmentError as exc:
        return {"ok": False, "elapsed_ms": (time.monotonic() - started) * 1000,
                "error": str(exc), "attempts": [dataclasses.asdict(a) for a in exc.attempts]}
    out = {"ok": True, "elapsed_ms": (time.monotonic() - started) * 1000,
           "stack": carrier.stack, "winner": carrier.candidate.to_dict(),
           "attempts": [dataclasses.asdict(a) for a in carrier.attempts],
           "candidates": carrier.explanation.to_dict()["candidates"],
           "resumed": carrier.transients[0].session_reused}
    if first is not None:
        out["first_echo"] = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
    await carrier.send(cmd.get("send", "ping").encode())
    out["echo"] = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
    if carrier.stack == "quic":  # the NewSessionTicket follows the handshake
        assoc = STORE.get(remote.hostport)
        deadline = time.monotonic() + 2
        while not assoc.has_ticket("quic") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    if cmd.get("keep"):
        KEPT[cmd["keep"]] = carrier
    else:
        await carrier.close()
    out.update(assoc_state(remote))
    return out

async def send(cmd):
    carrier = KEPT[cmd["name"]]
    events = EVENTS.setdefault(cmd["name"], [])
    started = time.monotonic()

    def note(kind):
        return lambda m: events.append([kind, (time.monotonic() - started) * 1000])

    await carrier.send_msg(tp.OutMessage(b"m" * cmd["size"]), on_sent=note("sent"),
                           on_acked=note("acked"), on_expired=note("expired"))
    return {"ok": True}

async def wait_event(cmd):
    events = EVENTS.setdefault(cmd["name"], [])
    deadline = time.monotonic() + cmd["within"]
    while time.monotonic() < deadline and not any(e[0] == cmd["kind"] for e in events):
        await asyncio.sleep(0.005)
    return {"ok": True, "events": events}

async def close(cmd):
    carrier = KEPT.pop(cmd["name"])
    await asyncio.wait_for(carrier.close(), 3)
    return {"ok": True}

async def reset(cmd):
    for carrier in KEPT.values():
        carrier.abort()
    KEPT.clear()
    EVENTS.clear()
    STORE.clear()
    return {"ok": True}

OPS = {"initiate": initiate, "send": send, "wait_event": wait_event, "close": close,
       "reset": reset}

async def main():
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        try:
            out = await OPS[cmd.get("op", "initiate")](cmd)
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
    ports: dict[str, int]

    def command(self, timeout: float = 10.0, **cmd: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.client.request(cmd, timeout)
        assert "unexpected" not in out, out["unexpected"]
        return out

    def initiate(self, timeout: float = 10.0, *, both: bool = False,
                 **cmd: Any) -> dict[str, Any]:
        """`https://svc:5443`; unless `both`, the policy prohibits veth-a2 (so the decision
        itself, and the explanation, hold only the two veth-a1 candidates)."""
        cmd.setdefault("target", f"https://svc:{PORT}")
        if not both:
            cmd.setdefault("set", {"interface.veth-a2": "prohibit"})
        cmd.setdefault("attempt_delay", DELAY)
        return self.command(timeout, op="initiate", **cmd)

    def drop_udp(self) -> None:
        """Every UDP datagram entering B vanishes (QUIC Initials time out silently)."""
        self.topo.nft(self.topo.b, "\n".join([
            "table inet bh {",
            "  chain in { type filter hook input priority 0; policy accept; }",
            "}",
            "add rule inet bh in meta l4proto udp drop",
        ]) + "\n")

    def clear(self) -> None:
        self.topo.clear_blackholes(self.topo.b)


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    with topology("tpq") as topo:
        topo.hosts(topo.a, {"svc": [B1_V4]})
        cert = tp.certs.self_signed(["svc", B1_V4, B1_V6, B2_V4, B2_V6])
        assert cert.key_pem is not None
        cert_path, key_path = topo.tmp / "cert.pem", topo.tmp / "key.pem"
        cert_path.write_text(cert.cert_pem)
        key_path.write_text(cert.key_pem)
        server = topo.spawn(topo.b, SERVER, str(PORT), str(cert_path), str(key_path))
        ports = server.read_json(10)["ports"]
        client = topo.spawn(topo.a, CLIENT, str(cert_path))
        yield Scene(topo, server, client, ports)


@pytest.fixture
def fresh(scene: Scene) -> Iterator[Scene]:
    """The module's scene with no black hole and a client that forgot every Association."""
    scene.clear()
    assert scene.command(op="reset")["ok"]
    yield scene
    scene.clear()


def ranked(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(interface, stack, key.history) of each candidate, in rank order."""
    return [(c["interface"], c["stack"], c["key"]["history"]) for c in out["candidates"]]


def history(out: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(e["stack"], e["interface"]): e["outcome"] for e in out["history"]}


def test_listener_serves_quic_and_tls_on_one_port(fresh: Scene) -> None:
    ports = fresh.ports
    tcp_side = [k for k in ports if k in ("tls", "tls-mptcp")]
    assert ports.get("quic") == PORT and tcp_side, ports
    assert {ports[k] for k in tcp_side} == {PORT}, ports



@pytest.mark.parametrize("address", [B1_V6, B1_V4, B2_V6, B2_V4])
def test_quic_to_each_address_of_the_dual_stack_listener(fresh: Scene, address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    out = fresh.initiate(target=f"quic://{host}:{PORT}", both=True, send=f"to {address}",
                         set={"connTimeout": 1000})
    assert out["ok"], out["error"]
    assert out["stack"] == "quic" and out["winner"]["remote_address"] == address
    assert out["echo"] == f"echo:to {address}"


def test_quic_ranks_first_and_wins_at_once_when_nothing_is_blocked(fresh: Scene) -> None:
    out = fresh.initiate()
    assert out["ok"], out
    assert ranked(out) == [(A1, "quic", "none"), (A1, "tls", "none")]
    assert [c["start_ms"] for c in out["candidates"]] == [0, DELAY]
    assert out["stack"] == "quic" and out["winner"]["rank"] == 1
    assert out["elapsed_ms"] < DELAY, out["elapsed_ms"]
    assert out["echo"] == "echo:ping"
    assert history(out) == {("quic", A1): "success"}
    assert out["tickets"] == {"quic": 1}


def test_udp_black_hole_tls_wins_after_attempt_delay_and_history_remembers(
        fresh: Scene) -> None:
    """QUIC's Initials vanish: TLS (#2) starts at attemptDelay and wins right after. The
    QUIC attempt was outrun (pending for attemptDelay while a later attempt won: racing
    Rule 4), so the Association remembers it as a failure beside TLS's success, and the next
    decision ranks QUIC after TLS (failure memory, RankKey.recent_failure before the
    protocol hits): the second connection does not wait behind the black hole again."""
    fresh.drop_udp()
    first = fresh.initiate()
    assert first["ok"], first
    assert first["stack"] == "tls" and first["winner"]["rank"] == 2, first
    assert [a["outcome"] for a in first["attempts"]] == ["cancelled", "won"], first
    assert "outrun" in first["attempts"][0]["error"], first["attempts"][0]
    assert DELAY * 0.9 <= first["elapsed_ms"] < DELAY + 150, first["elapsed_ms"]
    assert first["echo"] == "echo:ping"
    assert history(first) == {("tls", A1): "success", ("quic", A1): "failure"}

    second = fresh.initiate()
    assert second["ok"], second
    assert [(c["interface"], c["stack"]) for c in second["candidates"]] == [
        (A1, "tls"), (A1, "quic")]
    assert [c["key"]["recent_failure"] for c in second["candidates"]] == [False, True]
    assert second["stack"] == "tls" and second["winner"]["rank"] == 1
    assert second["elapsed_ms"] < DELAY, second["elapsed_ms"]
    print(f"UDP black-holed, attemptDelay {DELAY} ms: TLS ready after "
          f"{first['elapsed_ms']:.0f} ms, then {second['elapsed_ms']:.0f} ms")

    # The black hole lifts: TLS, first now, wins at once; QUIC stays demoted for
    # racing.failureMemory (it is not tried, so nothing clears its failure).
    fresh.clear()
    third = fresh.initiate()
    assert third["ok"] and third["stack"] == "tls", third
    assert third["elapsed_ms"] < DELAY, third["elapsed_ms"]
    assert history(third) == {("tls", A1): "success", ("quic", A1): "failure"}


def test_udp_black_hole_both_interfaces_quic_candidates_all_go_first(fresh: Scene) -> None:
    """Without binding an interface, both QUIC candidates (veth-a1, veth-a2) rank before
    both TLS ones (protocol hits before interface name), so TLS wins after 2 x attemptDelay."""
    fresh.drop_udp()
    out = fresh.initiate(both=True)
    assert out["ok"], out
    assert ranked(out) == [(A1, "quic", "none"), (A2, "quic", "none"),
                           (A1, "tls", "none"), (A2, "tls", "none")]
    assert out["stack"] == "tls" and out["winner"]["rank"] == 3
    assert 2 * DELAY * 0.9 <= out["elapsed_ms"] < 2 * DELAY + 150, out["elapsed_ms"]
    print(f"UDP black-holed, both interfaces: TLS ready after {out['elapsed_ms']:.0f} ms")


def test_on_acked_waits_for_the_peers_acknowledgement(fresh: Scene) -> None:
    """Established QUIC carrier; then UDP into B is dropped: a small message is sent (it
    leaves at once) but not acknowledged. When the black hole lifts, QUIC's probe timeout
    retransmits it and on_acked follows."""
    out = fresh.initiate(target=f"quic://svc:{PORT}", keep="c")
    assert out["ok"] and out["stack"] == "quic", out
    fresh.drop_udp()
    assert fresh.command(op="send", name="c", size=500)["ok"]
    seen = fresh.command(op="wait_event", name="c", kind="acked", within=0.5)["events"]
    assert [e[0] for e in seen] == ["sent"], seen
    assert seen[0][1] < 50, seen
    fresh.clear()
    seen = fresh.command(op="wait_event", name="c", kind="acked", within=4)["events"]
    assert [e[0] for e in seen] == ["sent", "acked"], seen
    assert 500 <= seen[1][1] < 4000, seen
    print(f"on_sent after {seen[0][1]:.1f} ms, on_acked after {seen[1][1]:.0f} ms "
          f"(black hole lifted at ~500 ms)")
    assert fresh.command(op="close", name="c")["ok"]


def test_idempotent_first_message_when_the_0rtt_quic_attempt_loses_to_tls(
        fresh: Scene) -> None:
    warm = fresh.initiate()
    assert warm["ok"] and warm["stack"] == "quic" and warm["tickets"] == {"quic": 1}, warm
    fresh.drop_udp()
    client = fresh.client.request(
        {"op": "initiate", "target": f"https://svc:{PORT}", "attempt_delay": DELAY,
         "set": {"interface.veth-a2": "prohibit"}, "first": "hello", "idempotent": True}, 10)
    assert "unexpected" not in client, client["unexpected"]
    out = client
    assert out["ok"], out
    assert out["stack"] == "tls" and out["first_echo"] == "echo:hello", out
