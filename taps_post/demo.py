"""`make demo`: the whole path on loopback, from policy files to resumed TLS.

It starts a TLS Responder on this machine, initiates a carrier to it through the example
policies (the same `decide()` that `taps-post policy explain` prints), races the candidates,
exchanges messages with the Post Sockets message properties, and connects a second time to
show the Association resuming the TLS session. Then the carrier model: a carrier born
dormant, active on the first send, dormant again when the server resets it, and active again
on the next send, with its events and its measured Path. Everything stays on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from pathlib import Path

import taps_post as tp
from taps_post.decision.render import render_text
from taps_post.policy.load import bundled_path

EXAMPLES = Path(bundled_path("policies", "examples"))


def _say(title: str) -> None:
    print(f"\n== {title}")


async def _exchange(carrier: tp.Carrier) -> list[str]:
    """Four messages queued at once: niceness, an antecedent and a lifetime decide their fate."""
    first = tp.OutMessage(b"hello (niceness 5)", niceness=5)
    events: list[str] = []
    await asyncio.gather(
        carrier.send_msg(first, on_sent=lambda m: events.append("sent #1")),
        carrier.send_msg(tp.OutMessage(b"urgent (niceness 0)"),
                         on_acked=lambda m: events.append("acked #2")),
        carrier.send_msg(tp.OutMessage(b"after hello", antecedents=[first], niceness=0)),
        carrier.send_msg(tp.OutMessage(b"too late", lifetime=0.0),
                         on_expired=lambda m: events.append("expired #4")),
    )
    lines = [f"received: {bytes(await carrier.receive())!r}" for _ in range(3)]
    await asyncio.sleep(0.05)
    return [*lines, f"callbacks: {', '.join(events)}"]


async def _quic(port: int, cert: tp.certs.Certificate, policy: tp.PolicyContext) -> None:
    """QUIC on the same port number: a fork onto a second stream, then 0-RTT on resumption."""
    store = tp.AssociationStore()
    remote = tp.Remote.parse(f"quic://127.0.0.1:{port}", certificates=[cert])
    for attempt in (1, 2):
        first = tp.OutMessage(b"GET /status", idempotent=True)
        t0 = time.perf_counter()
        carrier = await tp.initiate(remote, policy=policy, store=store, send=first)
        ready_ms = (time.perf_counter() - t0) * 1000
        reply = bytes(await carrier.receive())
        reply_ms = (time.perf_counter() - t0) * 1000
        t = carrier.transients[0]
        _say(f"QUIC connection {attempt}: ready in {ready_ms:.1f} ms, first reply after "
             f"{reply_ms:.1f} ms")
        print(f"  session resumed: {t.session_reused}, first message in 0-RTT: "
              f"{t.early_in_syn}")
        print(f"  received: {reply!r}")
        child = await carrier.fork()
        await child.send(b"on a forked stream")
        print(f"  fork (stream {getattr(child.transients[0], 'stream_id', '?')}): "
              f"{bytes(await child.receive())!r}")
        await child.close()
        await carrier.close()


async def _dormant() -> None:
    """Draft 2.1: initiate() returns an inactive carrier; sending activates it; a lost
    connection leaves it dormant, and the next send activates it again."""
    server_policy = tp.PolicyContext(system=[], app_name="demo-server")
    accepted: asyncio.Queue[tp.Carrier] = asyncio.Queue()

    def accept(carrier: tp.Carrier) -> bool:
        accepted.put_nowait(carrier)
        return True

    listener = await tp.listen(tp.Local(address="127.0.0.1", port=0), policy=server_policy)
    listener.accept(accept)
    carrier = tp.initiate(f"tcp://127.0.0.1:{listener.port}",
                          policy=tp.PolicyContext(system=[], app_name="demo-client"))
    events: list[str] = []
    dormant = asyncio.Event()

    def on_event(event: tp.CarrierEvent) -> None:
        events.append(type(event).__name__)
        if isinstance(event, tp.Dormant):
            dormant.set()

    carrier.on_event(on_event)
    _say("a carrier born dormant")
    print(f"  after initiate(): active {carrier.is_active}, transients {carrier.transients}")
    try:
        await carrier.send(b"first")                 # activates: decide, race, send
        server = await accepted.get()
        print(f"  after send(): active {carrier.is_active}, server got "
              f"{bytes(await server.receive())!r}")
        await server.send(b"pong")
        await carrier.receive()
        path = carrier.paths[0]
        print(f"  path {path.interface} {path.local_address} -> {path.remote_address}: "
              f"rtt {path.rtt_ms} ms, loss {path.loss}, mtu {path.mtu}")
        sock = server.transients[0].transport.get_extra_info("socket")  # the server resets
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.abort()
        await asyncio.wait_for(dormant.wait(), 5)
        print(f"  after the reset: active {carrier.is_active}, dormant {carrier.is_dormant}")
        await carrier.send(b"second")                # activates again: a new race
        again = await accepted.get()
        print(f"  after send(): active {carrier.is_active}, server got "
              f"{bytes(await again.receive())!r} on a new connection")
        print(f"  events: {', '.join(events)}")
        await again.close()
    finally:
        await carrier.close()
        await listener.close()


async def main() -> int:
    cert = tp.certs.self_signed(["localhost", "127.0.0.1", "::1"])
    server_policy = tp.PolicyContext(system=[], app_name="demo-server")

    async def handler(msg: tp.InMessage, reply: tp.Reply) -> None:
        early = b" (arrived as 0-RTT)" if msg.early else b""
        await reply.send(b"ack " + bytes(msg) + early)

    # IPv4 only, so the client's first (IPv6) candidate is refused and the race moves on.
    responder = await tp.respond(tp.Local(address="127.0.0.1", port=0, certificates=[cert]),
                                 handler, policy=server_policy)
    port = responder.ports["tls"]
    _say(f"responder listening on 127.0.0.1:{port}: {responder.ports}")

    policy = tp.PolicyContext(system=str(EXAMPLES / "system-corp-laptop.yaml"),
                              app=str(EXAMPLES / "app-demo.yaml"), app_name="demo-client")
    store = tp.AssociationStore()
    # A named Remote the application resolved itself: both loopback families, IPv6 first.
    remote = tp.Remote(host="localhost", port=port, scheme="tls", addresses=("::1", "127.0.0.1"),
                       certificates=[cert])
    try:
        for attempt in (1, 2):
            t0 = time.perf_counter()
            carrier = await tp.initiate(remote, policy=policy, store=store)
            ready_ms = (time.perf_counter() - t0) * 1000
            if attempt == 1:
                assert carrier.explanation is not None
                _say("the decision (same as `taps-post policy explain`)")
                sys.stdout.write(render_text(carrier.explanation))
            t = carrier.transients[0]
            _say(f"connection {attempt}: ready in {ready_ms:.1f} ms")
            cand = carrier.candidate
            assert cand is not None
            for a in carrier.attempts:
                print(f"  attempt {a}")
            print(f"  won: #{cand.rank} {cand.interface} {cand.stack} "
                  f"{carrier.local_address} -> {carrier.remote_address}")
            print(f"  TCP connect {t.rtt_ms or 0:.2f} ms, ready (with TLS) "
                  f"{t.established_ms or 0:.2f} ms, TLS session resumed: {t.session_reused}")

            for line in await _exchange(carrier):
                print(f"  {line}")
            await carrier.close()
        assoc = store.get(remote.hostport)
        _say("association after two connections")
        for e in assoc.history:
            print(f"  {e.stack} via {e.interface} to {e.address}: {e.outcome}, rtt {e.rtt_ms} ms")
        if "quic" in responder.ports:
            await _quic(responder.ports["quic"], cert, policy)
        await _dormant()
    finally:
        await responder.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
