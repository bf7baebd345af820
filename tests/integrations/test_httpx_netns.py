"""httpx over taps_post.httpx.Transport on the two-path namespace topology (tests/netns.py),
without cross routes: veth-a1 reaches only B's path-1 addresses, veth-a2 only path 2.

nginx runs in B on both paths (TLS, HTTP/1.1 and h2). `svc` resolves in A to B2_V4; both of A's
interfaces reach it (a socket bound to veth-a1 reaches it too: B answers ARP for any of its
addresses). An nft rule in B drops everything from A1_V4, so the first candidate (veth-a1)
never completes its TCP, let alone TLS, handshake and the request wins on veth-a2 about one
racing.attemptDelay later. An application pinned to veth-a2 (Local) under a policy that
prohibits veth-a2, the working path, gets httpx.ConnectError with the policy's reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("httpx")

import taps_post as tp
from netns import A1, A1_V4, A2, B1_V4, B2_V4, Topology, topology
from nginxlab import nginx, nginx_conf

PORT = 8443
DELAY = 150

CLIENT = r"""
import asyncio, json, sys, time
import httpx
import taps_post as tp
import taps_post.httpx as tph

cert_path, url, prohibit, pin = sys.argv[1:5]
rules = [{"id": "race", "set": {"racing.attemptDelay": DELAY, "connTimeout": 2000}}]
if prohibit != "-":
    rules.append({"id": "not-" + prohibit, "set": {"interface": {prohibit: "prohibit"}}})
policy = tp.PolicyContext(system=[], app_name="httpx-netns",
                          app={"version": 1, "layer": "app", "rules": rules})

async def main():
    cert = tp.certs.Certificate.from_files(cert_path)
    local = None if pin == "-" else tp.Local(interface=pin)
    transport = tph.Transport(policy=policy, certificates=[cert], local=local)
    async with httpx.AsyncClient(transport=transport, http2=True) as client:
        t0 = time.monotonic()
        try:
            r = await client.get(url)
        except httpx.HTTPError as err:
            print(json.dumps({"error": type(err).__name__, "message": str(err)}))
            return
        elapsed = (time.monotonic() - t0) * 1000
        stream = r.extensions["network_stream"]
        carrier = stream.get_extra_info("taps_post.carrier")
        decision = stream.get_extra_info("taps_post.explanation")
        print(json.dumps({
            "status": r.status_code, "version": r.http_version, "elapsed_ms": elapsed,
            "server": stream.get_extra_info("server_addr")[0],
            "client": stream.get_extra_info("client_addr")[0],
            "interface": carrier.candidate.interface,
            "decision": decision.outcome,
            "candidates": [[c.interface, c.remote_address] for c in decision.candidates],
            "attempts": [[a.interface, a.remote, a.outcome] for a in carrier.attempts],
        }))

asyncio.run(main())
""".replace("DELAY", str(DELAY))


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Topology, str]]:
    with topology("hx", cross_routes=False) as topo:
        cert = tp.certs.self_signed(["svc", B1_V4, B2_V4])
        root = topo.tmp / "nginx"
        root.mkdir()
        conf = nginx_conf(root, cert, [f"{B1_V4}:{PORT}", f"{B2_V4}:{PORT}"], [])
        topo.hosts(topo.a, {"svc": [B2_V4]})
        topo.blackhole(topo.b, saddr=A1_V4)
        with nginx(root, conf, [(B1_V4, PORT)], netns=topo.b):
            yield topo, str(root / "cert.pem")


def client(topo: Topology, cert: str, url: str, prohibit: str = "-",
           pin: str = "-") -> dict[str, Any]:
    out: dict[str, Any] = topo.run_python(topo.a, CLIENT, cert, url, prohibit, pin,
                                          timeout=20)
    return out


def test_blackholed_path_loses_the_race(lab: tuple[Topology, str]) -> None:
    topo, cert = lab
    out = client(topo, cert, f"https://svc:{PORT}/")
    print(json.dumps(out))  # shown with -s: the race as the client saw it
    assert out.get("status") == 200, json.dumps(out)
    assert out["version"] == "HTTP/2"
    assert out["server"] == B2_V4 and out["interface"] == A2, out
    assert out["candidates"][0][0] == A1, out  # path 1 was tried first ...
    assert [A1, f"{B2_V4}:{PORT}", "cancelled"] in out["attempts"], out  # ... and lost
    assert [A2, f"{B2_V4}:{PORT}", "won"] in out["attempts"], out
    # about one attempt delay later (the black hole never answers), well before connTimeout
    assert DELAY * 0.8 <= out["elapsed_ms"] <= DELAY + 800, out


def test_policy_prohibiting_the_working_path(lab: tuple[Topology, str]) -> None:
    topo, cert = lab
    out = client(topo, cert, f"https://svc:{PORT}/", prohibit=A2, pin=A2)
    print(json.dumps(out))
    assert out.get("error") == "ConnectError", json.dumps(out)
    assert "policy" in out["message"] and "not-veth-a2" in out["message"], out
