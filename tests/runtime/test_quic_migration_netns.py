"""QUIC connection migration on a real two-host topology (tests/netns.py): the client's address
goes away under a flowing connection.

Host A's client connects from veth-a1 (198.18.1.1) to host B (198.18.1.2) and sends numbered
messages every few milliseconds, each echoed back. Mid-stream the test removes 198.18.1.1 from
veth-a1 (`Topology.address(..., present=False)`) while the sender keeps writing; the client
then migrates to 198.18.2.1 on veth-a2 (`transient.migrate()`: what the runtime's mobility
would do on the path monitor's event for a carrier its Local does not pin; this one's
Local names veth-a1, so the runtime leaves it there, and the test checks that nothing
moved before its own call). A's cross route reaches 198.18.1.2 over path 2, so the
remote stays the same; B sees its peer's address change and validates the new path. Checked:
no second handshake (one connection, one carrier at the server, the same session and stream
at the client), every message once and in order at both ends, the server's view of its peer.
The peer is a taps_post Listener, and also a server written with aioquic's API only ("a peer
that is not ours"). The stall (address removal to the next echo, and the longest gap between
echoes) is printed and bounded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import taps_post as tp
from netns import A1, A1_V4, A1_V6, A2, A2_V4, A2_V6, B1_V4, B1_V6, topology

PORT = 5443
COUNT = 120
"""Messages sent; the address goes away after REMOVE_AT of them."""
REMOVE_AT = 40
INTERVAL = 0.005
"""Seconds between messages (the sender does not wait for echoes)."""

SERVER = r"""
import asyncio, json, struct, sys
import taps_post as tp
from taps_post.stacks.quic.compat import active_path_validated

KIND, PORT, CERT, KEY, HOST = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def frame(b):
    return struct.pack("!I", len(b)) + b

async def ours(cert):
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "q", "set": {"stack.quic": "require"}}]}, app_name="srv")
    listener = await tp.listen(tp.Local(port=PORT, certificates=[cert]), policy=policy)
    carriers, received = [], []

    def accept(carrier):
        carriers.append(carrier)
        async def serve():
            async for msg in carrier:
                received.append(bytes(msg).decode())
                await carrier.send(b"echo:" + bytes(msg))
        asyncio.ensure_future(serve())

    listener.accept(accept)

    def report():
        t = carriers[0].transient
        s = t.session
        return {"carriers": len(carriers), "received": received, "handshakes": s.handshakes,
                "migrations": s.migrations, "remote": list(t.remote_address),
                "validated": active_path_validated(s.connection)}
    return report

async def theirs(cert):
    from aioquic.asyncio import serve
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    config = QuicConfiguration(is_client=False)
    config.certificate = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    config.private_key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
    protocols, received = [], []

    class Echo(QuicConnectionProtocol):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.buf = bytearray()
            protocols.append(self)

        def quic_event_received(self, event):
            if isinstance(event, events.StreamDataReceived):
                self.buf += event.data
                while len(self.buf) >= 4:
                    (n,) = struct.unpack("!I", self.buf[:4])
                    if len(self.buf) < 4 + n:
                        break
                    msg = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    received.append(msg.decode())
                    self._quic.send_stream_data(event.stream_id, frame(b"echo:" + msg))
                self.transmit()

    # Bound to its address: on a wildcard bind the kernel would answer the new path from
    # 198.18.2.2 (the route's source), which the client's connected socket drops, so path
    # validation would fail (taps_post's listener sets the source per datagram, stacks/dgram).
    await serve(HOST, PORT, configuration=config, create_protocol=Echo)

    def report():
        quic = protocols[0]._quic
        return {"carriers": len(protocols), "received": received, "handshakes": len(protocols),
                "remote": list(quic.get_peer_address()[:2]),
                "validated": active_path_validated(quic)}
    return report

async def main():
    cert = tp.certs.Certificate.from_files(CERT, KEY)
    report = await (ours(cert) if KIND == "ours" else theirs(cert))
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while (line := await loop.run_in_executor(None, sys.stdin.readline)):
        print(json.dumps(report()), flush=True)

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, sys, time
import taps_post as tp

CERT, TARGET, COUNT, REMOVE_AT, INTERVAL = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5])
OLD_IF, NEW_IF, NEW_ADDR, DELAY = sys.argv[6], sys.argv[7], sys.argv[8], float(sys.argv[9])

async def main():
    loop = asyncio.get_running_loop()
    policy = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [
        {"id": "q", "set": {"stack.quic": "require"}}]}, app_name="cli")
    remote = tp.Remote.parse(TARGET, certificates=[tp.certs.Certificate.from_files(CERT)])
    carrier = await tp.initiate(remote, local=tp.Local(interface=OLD_IF), policy=policy)
    t = carrier.transient
    session, stream_id, before = t.session, t.stream_id, list(t.local_address)
    echoes, arrived, events = [], [], []
    carrier.on_event(lambda e: events.append(type(e).__name__))
    removed = asyncio.Event()
    out = {}

    async def receiver():
        for _ in range(COUNT):
            msg = await asyncio.wait_for(carrier.receive(), 15)
            echoes.append(bytes(msg).decode())
            arrived.append(time.monotonic())

    async def sender():
        for i in range(COUNT):
            if i == REMOVE_AT:
                print(json.dumps({"remove": True}), flush=True)
                line = await loop.run_in_executor(None, sys.stdin.readline)
                out["t_removed"] = time.monotonic()
                removed.set()
            await carrier.send(f"m{i}".encode())
            await asyncio.sleep(INTERVAL)

    async def mover():
        await removed.wait()
        await asyncio.sleep(DELAY)  # the sender goes on writing into a path that is gone
        # The Local names the interface, so the carrier is pinned to it: the runtime moved
        # nothing by itself meanwhile, and what is timed below is this explicit move.
        out["pinned"] = {"migrations": session.migrations, "local": t.local_address[0],
                         "interface": t.interface, "same": carrier.transient is t,
                         "events": list(events)}
        started = time.monotonic()
        out["migrated"] = await t.migrate(NEW_ADDR, NEW_IF)
        out["migrate_ms"] = (time.monotonic() - started) * 1000
        out["t_migrate"] = started

    tasks = [asyncio.ensure_future(c()) for c in (receiver, sender, mover)]
    await asyncio.gather(*tasks)
    t_removed = out.pop("t_removed")
    t_migrate = out.pop("t_migrate")
    after = [a for a in arrived if a > t_removed]
    gaps = [b - a for a, b in zip(arrived, arrived[1:])]
    out.update({
        "echoes": echoes, "before": before, "after": list(t.local_address),
        "same_session": carrier.transient is t and t.session is session,
        "stream_id_kept": t.stream_id == stream_id, "handshakes": session.handshakes,
        "migrations": session.migrations, "interface": t.interface,
        "stall_ms": (after[0] - t_removed) * 1000 if after else None,
        "stall_from_migrate_ms": (min(a for a in arrived if a > t_migrate) - t_migrate) * 1000,
        "max_gap_ms": max(gaps) * 1000, "ping_acked_ms": session.migration_acked_ms,
    })
    await carrier.close()
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize(("peer", "delay", "family"), [
    ("ours", 0.0, 4), ("aioquic", 0.0, 4), ("ours", 0.05, 4), ("ours", 0.0, 6)])
def test_quic_carrier_keeps_its_connection_when_its_address_goes_away(
        peer: str, delay: float, family: int) -> None:
    """`delay`: seconds between the address removal and migrate() (a monitor's latency),
    while the sender keeps writing: what it wrote meanwhile was lost on the gone path and
    is sent again on the new one (aioquic's loss recovery), still once and in order.
    `family` 6: the same over IPv6 (fd00:1::1 to fd00:2::1, server fd00:1::2)."""
    old, new, server_address = ((A1_V4, A2_V4, B1_V4) if family == 4
                                else (A1_V6, A2_V6, B1_V6))
    target = f"quic://{server_address}:{PORT}" if family == 4 else \
        f"quic://[{server_address}]:{PORT}"
    with topology("qm") as topo:
        cert = tp.certs.self_signed(["svc", B1_V4, B1_V6])
        assert cert.key_pem is not None
        cert_path, key_path = topo.tmp / "cert.pem", topo.tmp / "key.pem"
        cert_path.write_text(cert.cert_pem)
        key_path.write_text(cert.key_pem)
        with topo.spawn(topo.b, SERVER, peer, str(PORT), str(cert_path), str(key_path),
                        server_address) as srv:
            assert srv.read_json(10) == {"ready": True}
            with topo.spawn(topo.a, CLIENT, str(cert_path), target,
                            str(COUNT), str(REMOVE_AT), str(INTERVAL), A1, A2, new,
                            str(delay)) as cli:
                assert cli.read_json(10) == {"remove": True}
                topo.address(topo.a, A1, old, present=False)
                cli.send({"removed": True})
                out: dict[str, Any] = cli.read_json(30)
            server = srv.request({"report": True}, 5)
        expected = [f"m{i}" for i in range(COUNT)]
        print(f"\nQUIC migration (IPv{family}, {peer} server, migrate() "
              f"{delay * 1000:.0f} ms after the removal): stall {out['stall_ms']:.1f} ms "
              f"from address removal to the next echo, {out['stall_from_migrate_ms']:.1f} ms "
              f"from migrate(); longest gap between echoes {out['max_gap_ms']:.1f} ms; "
              f"migrate() took {out['migrate_ms']:.1f} ms; PING from the new path acked "
              f"after {out['ping_acked_ms']} ms")
        # No automatic migration before the explicit one (a Local naming an interface pins
        # the carrier), so the stall figures above measure migrate() itself.
        # (SoftError events are fine: the sender's writes into the gone path.)
        pinned = out["pinned"]
        assert {k: pinned[k] for k in ("migrations", "local", "interface", "same")} == \
            {"migrations": 0, "local": old, "interface": A1, "same": True}, pinned
        assert not {"PathChange", "Dormant"} & set(pinned["events"]), pinned
        assert out["migrated"] is True
        assert out["before"][0] == old and out["after"][0] == new
        assert out["interface"] == A2
        assert out["same_session"] and out["stream_id_kept"]
        assert out["handshakes"] == 1 and out["migrations"] == 1
        assert out["echoes"] == [f"echo:{m}" for m in expected]  # once each, in order
        assert server["received"] == expected
        assert server["carriers"] == 1 and server["handshakes"] == 1
        # A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6 addresses.
        assert [server["remote"][0].removeprefix("::ffff:"), server["remote"][1]] == \
            [new, out["after"][1]]
        assert server["validated"] is True
        assert out["stall_ms"] is not None and out["stall_ms"] < 2000 + delay * 1000
