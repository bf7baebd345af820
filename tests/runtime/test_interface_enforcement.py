"""Interface policy enforced by the kernel, for root and for an unprivileged user.

On the two-path topology of tests/netns.py, host A gets host routes that send B's path-2
addresses (198.18.2.2, fd00:2::2) via veth-a1 (path 1, B accepts them on veth-b1); the
connected route on veth-a2 is still there. An enforced system rule `interface.veth-a1:
prohibit` leaves the decision only veth-a2's candidates, each the direct path to B's
veth-b2. The kernel routes by destination unless the socket is pinned, so an unpinned
socket's packets would leave by veth-a1 anyway: nftables counters in A (postrouting, after
the kernel chose the interface) count what leaves by each interface towards the service
ports, and veth-a1 must count zero. (The candidates are direct paths because a QUIC server
on a wildcard socket answers from the address its route to the client prefers: over a
cross path that is not the address the client sent to, and the client drops the answer.)

Each client runs twice: as root and as `nobody` (uid 65534, no capability). The venv's
interpreter lives under /root (pyenv), which `nobody` cannot read, so `setpriv` cannot start
it as nobody; the unprivileged client starts as root, runs every kind of command once to
import what it needs, then drops to 65534 with the calls setpriv makes and checks that its
effective and permitted capabilities are empty (`netns.DROP_PRIVILEGES`). The kernel then
judges each socket option and bind as it would for any unprivileged process.

Host B serves plain TCP on 5001 and TLS plus QUIC on 5443 (taps_post listeners, no policy);
the wildcard-listener test adds a listener and a Sink in B whose own system policy
prohibits veth-b1.
"""

from __future__ import annotations

import json
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
    A2,
    A2_V4,
    A2_V6,
    B1,
    B1_V4,
    B1_V6,
    B2,
    B2_V4,
    B2_V6,
    DROP_PRIVILEGES,
    NOBODY,
    NsProcess,
    Topology,
    topology,
)

PLAIN, SECURE = 5001, 5443
GUARDED, GUARDED_SINK = 5002, 5003
"""Ports of the B listener (and Sink) whose own system policy prohibits veth-b1."""


def prohibit(interface: str, rule: str) -> dict[str, Any]:
    """An enforced system-layer document prohibiting one interface."""
    return {"version": 1, "layer": "system", "name": "corp",
            "rules": [{"id": rule, "enforce": True, "set": {f"interface.{interface}": "prohibit"}}]}


SERVER = r"""
import asyncio, json, sys
import taps_post as tp

CERT, KEY, PLAIN, SECURE = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def serve(carrier):
    try:
        async for msg in carrier:
            await carrier.send(b"echo:" + bytes(msg))
    except tp.ConnectionClosedError:
        pass
    finally:
        await carrier.close()

async def main():
    cert = tp.certs.Certificate.from_files(CERT, KEY)
    policy = tp.PolicyContext(system=[], app_name="srv")
    tasks = set()

    def accept(carrier):
        carrier.accept(accept)  # QUIC: a peer's further streams
        task = asyncio.ensure_future(serve(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    plain = await tp.listen(tp.Local(port=PLAIN), policy=policy)
    secure = await tp.listen(tp.Local(port=SECURE, certificates=[cert]), policy=policy)
    plain.accept(accept)
    secure.accept(accept)
    print(json.dumps({"plain": plain.ports, "secure": secure.ports}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await plain.close()
    await secure.close()

asyncio.run(main())
"""

GUARDED_SERVER = r"""
import asyncio, json, sys
import taps_post as tp

SYSTEM, PORT, SINK_PORT = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
B1_V4, B1_V6, B2, B2_V4 = sys.argv[4:8]
policy = tp.PolicyContext(system=[SYSTEM], app_name="srv")

def show(x):
    return x if not isinstance(x, tuple) else x[0].removeprefix("::ffff:")

async def attempt(make):
    try:
        endpoint = await make()
    except tp.PolicyError as exc:
        return {"error": "PolicyError", "message": str(exc),
                "excluded": [[e.interface, e.rule] for e in exc.decision.excluded
                             if e.interface and e.rule]}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    await endpoint.close()
    return {"error": None}

async def serve(carrier):
    print(json.dumps({"accepted": show(carrier.remote_address), "local":
                      show(carrier.local_address),
                      "interface": carrier.transients[0].interface}), flush=True)
    try:
        async for msg in carrier:
            await carrier.send(b"echo:" + bytes(msg))
    except tp.ConnectionClosedError:
        pass
    finally:
        await carrier.close()

async def main():
    handler = lambda msg, reply: reply.send(bytes(msg))
    refusals = {
        "listen interface": lambda: tp.listen(tp.Local(interface="veth-b1"), policy=policy),
        "listen v4 address": lambda: tp.listen(tp.Local(address=B1_V4), policy=policy),
        "listen v6 address": lambda: tp.listen(tp.Local(address=B1_V6), policy=policy),
        "respond interface": lambda: tp.respond(tp.Local(interface="veth-b1"), handler,
                                                policy=policy),
        "sink interface": lambda: tp.new_sink(tp.Local(interface="veth-b1"), policy=policy),
        "sink v6 address": lambda: tp.new_sink(tp.Local(address=B1_V6), policy=policy),
    }
    allowed = {
        "listen interface": lambda: tp.listen(tp.Local(interface=B2), policy=policy),
        "listen v4 address": lambda: tp.listen(tp.Local(address=B2_V4), policy=policy),
        "sink interface": lambda: tp.new_sink(tp.Local(interface=B2), policy=policy),
    }
    report = {"refused": {k: await attempt(v) for k, v in refusals.items()},
              "allowed": {k: await attempt(v) for k, v in allowed.items()}}
    listener = await tp.listen(tp.Local(port=PORT), policy=policy)
    sink = await tp.new_sink(tp.Local(port=SINK_PORT), policy=policy)
    tasks = set()

    def accept(carrier):
        task = asyncio.ensure_future(serve(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    listener.accept(accept)
    sink.ready(lambda m: print(json.dumps({"datagram": bytes(m).decode(),
                                           "peer": show(m.remote)}), flush=True))
    report.update(ports=listener.ports, sink_port=sink.port,
                  sink_interfaces=sorted(i or "" for i in getattr(sink, "interfaces", [None])))
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await listener.close()
    await sink.close()

asyncio.run(main())
"""

CLIENT = DROP_PRIVILEGES + r"""
import asyncio, json, socket, sys
import taps_post as tp

CERT = tp.certs.Certificate.from_files(sys.argv[1])
GUARD = json.loads(sys.argv[2])

def policy(cmd):
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": {
        "racing.attemptDelay": 50, "connTimeout": cmd.get("conn_timeout", 3000)}}]}
    return tp.PolicyContext(system=[GUARD] if cmd.get("guard", True) else [], app=app,
                            app_name="t")

async def initiate(cmd):
    secure = cmd["target"].split(":")[0] in ("tls", "quic")  # a pin on tcp:// would be refused
    remote = tp.Remote.parse(cmd["target"], certificates=[CERT] if secure else ())
    local = tp.Local(interface=cmd["interface"]) if cmd.get("interface") else None
    try:
        carrier = await tp.initiate(remote, local=local, policy=policy(cmd),
                                    store=tp.AssociationStore())
    except tp.EstablishmentError as exc:
        return {"ok": False, "error": str(exc),
                "attempts": [{"interface": a.interface, "stack": a.stack, "kind": str(a.kind),
                              "error": a.error} for a in exc.attempts]}
    try:
        await carrier.send(cmd.get("send", "ping").encode())
        echo = bytes(await asyncio.wait_for(carrier.receive(), 5)).decode()
        decision = carrier.explanation
        return {"ok": True, "stack": carrier.stack, "echo": echo,
                "interface": carrier.candidate.interface,
                "transient_interface": carrier.transients[0].interface,
                "local": carrier.local_address[0].removeprefix("::ffff:"),
                "candidates": sorted({c.interface for c in decision.candidates}),
                "excluded": [[e.interface, e.rule] for e in decision.excluded
                             if e.interface and e.rule]}
    finally:
        await carrier.close()

async def datagrams(cmd):
    local = tp.Local(interface=cmd["interface"])
    source = await tp.new_source(local, cmd["target"], policy=policy({"guard": False}))
    for text in cmd["send"]:
        await source.send(text.encode())
    await source.close()
    return {"ok": True}

def kernel_pins():
    # Whether the kernel lets this process pin a socket (unprivileged: Linux 5.7 and later).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo\0")
        except OSError:
            return False
    return True

async def run(cmd):
    if cmd.get("pin", True):
        return await initiate(cmd)
    # A kernel that will not pin sockets to an interface, as far as taps_post can tell.
    saved = socket.SO_BINDTODEVICE
    del socket.SO_BINDTODEVICE
    try:
        return await initiate(cmd)
    finally:
        socket.SO_BINDTODEVICE = saved

async def main():
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        try:
            if cmd.get("op") == "drop":
                out = {**drop_privileges(cmd["uid"], cmd["uid"]), "pins": kernel_pins()}
            elif cmd.get("op") == "datagrams":
                out = await datagrams(cmd)
            else:
                out = await run(cmd)
        except Exception as exc:
            out = {"ok": False, "unexpected": repr(exc)}
        print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def url(scheme: str, address: str, port: int) -> str:
    return f"{scheme}://[{address}]:{port}" if ":" in address else f"{scheme}://{address}:{port}"


CASES = {
    "tcp-ipv4": url("tcp", B2_V4, PLAIN),
    "tcp-ipv6": url("tcp", B2_V6, PLAIN),
    "tls-ipv4": url("tls", B2_V4, SECURE),
    "tls-ipv6": url("tls", B2_V6, SECURE),
    "quic-ipv4": url("quic", B2_V4, SECURE),
    "quic-ipv6": url("quic", B2_V6, SECURE),
}
"""Targets on B's path-2 addresses: A's kernel routes each via veth-a1 (`HOST_ROUTES`)."""

HOST_ROUTES = [("-4", f"{B2_V4}/32", B1_V4), ("-6", f"{B2_V6}/128", B1_V6)]
"""A's routes that send B's path-2 addresses via veth-a1: (family, destination, gateway)."""

ROUTE_CHECKED = {
    "quic-ipv4": url("quic", B2_V4, SECURE),
    "quic-ipv6": url("quic", B2_V6, SECURE),
    "tcp-ipv4": url("tcp", B2_V4, PLAIN),
}
"""For the unprivileged client that cannot pin: with the host routes, the kernel would send
via veth-a1, so the veth-a2 candidate must be given up; without them its route is veth-a2's
own, and the route check lets it go."""


@dataclass
class Scene:
    topo: Topology
    clients: dict[str, NsProcess]
    nobody_pins: bool = True
    """Whether the kernel lets the unprivileged client pin sockets (Linux 5.7 and later)."""

    def initiate(self, user: str, target: str, **cmd: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.clients[user].request({"target": target, **cmd}, 15)
        assert "unexpected" not in out, out["unexpected"]
        return out

    def host_routes(self, op: str) -> None:
        """`add` or `del` the HOST_ROUTES in A."""
        for family, destination, gateway in HOST_ROUTES:
            self.topo.exec(self.topo.a, "ip", family, "route", op, destination, "via", gateway,
                           "dev", A1)

    def packets(self, user: str, target: str, **cmd: Any) -> tuple[dict[str, Any],
                                                                    dict[str, int]]:
        """Run one connection from a zeroed counter; what happened and what left where."""
        self.quiet()
        out = self.initiate(user, target, **cmd)
        return out, self.topo.egress_packets(self.topo.a)


    def quiet(self, settle: float = 0.7, timeout: float = 5.0) -> None:
        """Zero the counters once nothing of an earlier connection still leaves: a QUIC
        connection lingers 0.5 s after its last carrier, then sends CONNECTION_CLOSE, which
        would otherwise count against the next case. Waits for `settle` seconds without a
        packet (checked every 50 ms), at most `timeout`."""
        a = self.topo.a
        self.topo.reset_egress(a)
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)  # spaces the checks of another namespace's counters
            if any(self.topo.egress_packets(a).values()):
                self.topo.reset_egress(a)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return
        raise AssertionError(f"packets kept leaving host A for {timeout} s before the case")


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    with topology("tpi") as topo:
        scene = Scene(topo, {})
        scene.host_routes("add")
        cert = tp.certs.self_signed([B1_V4, B1_V6, B2_V4, B2_V6])
        cert_path, key_path = topo.tmp / "cert.pem", topo.tmp / "key.pem"
        cert_path.write_text(cert.cert_pem)
        assert cert.key_pem is not None
        key_path.write_text(cert.key_pem)
        server = topo.spawn(topo.b, SERVER, str(cert_path), str(key_path), str(PLAIN),
                            str(SECURE))
        ports = server.read_json(10)
        assert ports["plain"].get("tcp") == PLAIN and ports["secure"].get("quic") == SECURE, ports
        topo.count_egress(topo.a, [A1, A2], ports=[PLAIN, SECURE, GUARDED, GUARDED_SINK])
        guard = json.dumps(prohibit(A1, "no-a1"))
        clients = scene.clients = {user: topo.spawn(topo.a, CLIENT, str(cert_path), guard)
                                   for user in ("root", "nobody")}
        # Everything the unprivileged client will do, once as root (imports happen now),
        # then it becomes nobody for good.
        nobody = clients["nobody"]
        for target in CASES.values():
            out = nobody.request({"target": target}, 15)
            assert out["ok"], out
        for target in ROUTE_CHECKED.values():  # the routes are in place: these fail
            nobody.request({"target": target, "pin": False}, 15)
        nobody.request({"target": url("tcp", B2_V4, 1), "guard": False}, 15)  # refused
        nobody.request({"op": "datagrams", "target": f"udp://{B2_V4}:9", "interface": A2,
                        "send": ["warm"]}, 15)
        dropped = nobody.request({"op": "drop", "uid": NOBODY}, 5)
        assert dropped.get("uid") == NOBODY and int(dropped["cap_eff"], 16) == 0, dropped
        scene.nobody_pins = dropped["pins"]
        yield scene


@pytest.mark.parametrize("target", list(CASES.values()), ids=list(CASES))
def test_prohibited_interface_carries_no_packet_for_root_or_nobody(
        scene: Scene, target: str) -> None:
    """The route to the target leaves by veth-a1, which the system prohibits: as root and as
    nobody the carrier is on veth-a2, explain says so, and veth-a1 carries nothing. (On a
    kernel that does not let nobody pin a socket, nobody's attempt is refused instead.)"""
    for user in ("root", "nobody"):
        out, packets = scene.packets(user, target)
        assert packets[A1] == 0, f"{user}: {packets[A1]} packets left by prohibited {A1}"
        if user == "nobody" and not scene.nobody_pins:
            assert not out["ok"] and packets[A2] == 0, out
            assert all("cannot hold the socket" in a["error"] for a in out["attempts"]), out
            continue
        assert out["ok"], (user, out)
        assert out["echo"] == "echo:ping", (user, out)
        assert out["candidates"] == [A2], (user, out)
        assert [A1, "no-a1"] in out["excluded"], (user, out)
        assert out["interface"] == out["transient_interface"] == A2, (user, out)
        assert out["local"] in (A2_V4, A2_V6), (user, out)
        assert packets[A2] > 0, (user, packets)


@pytest.mark.parametrize("target", list(ROUTE_CHECKED.values()), ids=list(ROUTE_CHECKED))
def test_unpinnable_socket_is_sent_only_where_the_route_agrees(
        scene: Scene, target: str) -> None:
    """As nobody, with SO_BINDTODEVICE unavailable (as on a kernel older than 5.7): the
    route decides. Routed via veth-a1, the veth-a2 candidate fails before it sends, saying
    why; routed via veth-a2 itself, the route check lets it go. Either way veth-a1 carries
    nothing."""
    out, packets = scene.packets("nobody", target, pin=False)
    assert packets == {A1: 0, A2: 0}, f"sent although the route leaves by {A1}: {out}"
    assert not out["ok"], out
    for attempt in out["attempts"]:
        assert attempt["interface"] == A2, attempt
        assert f"cannot hold the socket to interface {A2}" in attempt["error"], attempt
    assert all(f"leaves by {A1}" in a["error"] for a in out["attempts"]), out
    scene.host_routes("del")
    try:
        out, packets = scene.packets("nobody", target, pin=False)
    finally:
        scene.host_routes("add")
    assert out["ok"] and out["interface"] == A2, out
    assert packets[A1] == 0 and packets[A2] > 0, packets


def test_wildcard_listener_and_sink_serve_no_peer_on_a_prohibited_interface(
        scene: Scene) -> None:
    """B's own system policy prohibits veth-b1. Listeners, Responders and Sinks on veth-b1
    or on its addresses are PolicyErrors naming the rule; a wildcard Listener and Sink are
    pinned to B's other interfaces, so a peer arriving on veth-b1 is not served, whichever
    of B's addresses it asks for, while one arriving on veth-b2 is."""
    topo = scene.topo
    server = topo.spawn(topo.b, GUARDED_SERVER, json.dumps(prohibit(B1, "no-b1")),
                        str(GUARDED), str(GUARDED_SINK), B1_V4, B1_V6, B2, B2_V4)
    report = server.read_json(10)
    for what, result in report["refused"].items():
        assert result["error"] == "PolicyError", (what, result)
        assert "no-b1" in result["message"], (what, result)
        assert [B1, "no-b1"] in result["excluded"], (what, result)
    assert all(r["error"] is None for r in report["allowed"].values()), report["allowed"]
    assert report["sink_interfaces"] == ["lo", B2], report
    assert report["ports"]["tcp"] == GUARDED, report

    def tcp(address: str, via: str) -> dict[str, Any]:
        return scene.initiate("root", url("tcp", address, GUARDED), interface=via,
                              guard=False, send=f"from {via} to {address}")

    for address, via in [(B1_V4, A1), (B1_V6, A1), (B2_V4, A1)]:
        out = tcp(address, via)
        assert not out["ok"], f"served {via} -> {address}: {out}"
        assert {a["kind"] for a in out["attempts"]} == {"refused"}, out
    for address, via, peer in [(B2_V4, A2, A2_V4), (B2_V6, A2, A2_V6), (B1_V4, A2, A2_V4)]:
        out = tcp(address, via)
        assert out["ok"] and out["echo"] == f"echo:from {via} to {address}", out
        seen = server.read_json(5)
        assert (seen["accepted"], seen["interface"]) == (peer, B2), seen

    def send(address: str, via: str, *texts: str) -> None:
        out = scene.clients["root"].request(
            {"op": "datagrams", "target": url("udp", address, GUARDED_SINK), "interface": via,
             "send": list(texts)}, 10)
        assert out["ok"], out

    send(B1_V4, A1, "a1 to b1")
    send(B2_V4, A1, "a1 to b2")
    send(B2_V4, A2, "a2 marker")
    send(B2_V6, A2, "a2 marker v6")
    got = [server.read_json(5), server.read_json(5)]
    assert [g["datagram"] for g in got] == ["a2 marker", "a2 marker v6"], got
    assert [g["peer"] for g in got] == [A2_V4, A2_V6], got


SNAPSHOT = {"interfaces": [
    {"name": "eth0", "type": "ethernet", "addresses": ["192.0.2.10", "2001:db8::10"]},
    {"name": "wwan0", "type": "cellular", "addresses": ["198.51.100.7", "2001:db8:1::7"]},
]}


@pytest.mark.parametrize("local", [{"interface": "wwan0"}, {"address": "198.51.100.7"},
                                   {"address": "2001:db8:1::7"}],
                         ids=["interface", "v4-address", "v6-address"])
@pytest.mark.parametrize("kind", ["listen", "respond", "sink"])
def test_serving_on_a_prohibited_interface_or_its_address_names_the_rule(
        run: Any, kind: str, local: dict[str, str]) -> None:
    """Needs no root: the refusal comes from the decision, before any socket."""
    system = {"version": 1, "layer": "system", "name": "corp",
              "rules": [{"id": "no-cell", "enforce": True,
                         "set": {"interface.cellular": "prohibit"}}]}
    policy = tp.PolicyContext(system=[system], app_name="t")
    where = tp.Local(port=0, **local)

    async def open_it() -> Any:
        if kind == "listen":
            return await tp.listen(where, policy=policy, env=SNAPSHOT)
        if kind == "respond":
            return await tp.respond(where, lambda m, r: None, policy=policy, env=SNAPSHOT)
        return await tp.new_sink(where, policy=policy, env=SNAPSHOT)

    async def main() -> None:
        with pytest.raises(tp.PolicyError) as caught:
            endpoint = await open_it()
            await endpoint.close()
        assert "no-cell" in str(caught.value) and "wwan0" in str(caught.value)
        named = [e for e in caught.value.decision.excluded if e.interface == "wwan0"]
        assert [(e.rule, e.outcome) for e in named] == [("no-cell", "prohibited")]

    run(main())
