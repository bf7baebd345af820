"""Datagram listeners under load and on multi-address hosts (issue 10, docs/reliability.md).

- A wildcard UDP or QUIC Listener answers each peer from the address the peer wrote to
  (stacks/dgram.py: IP_PKTINFO / IPV6_RECVPKTINFO): in the two-host topology of
  tests/netns.py, host A sends from 198.18.1.1 (veth-a1) to B's *second* address
  198.18.2.2 (A's cross route), so B's kernel, left alone, would answer from 198.18.1.2 (the
  route back leaves by veth-b1) and a connected client drops the reply. IPv4 on 0.0.0.0,
  IPv6 on ::, and IPv4 (v4-mapped) on ::.
- No SO_REUSEADDR on UDP: another user cannot bind a Listener's, a Sink's or a QUIC
  Listener's port, with SO_REUSEADDR or SO_REUSEPORT (EADDRINUSE).
- Per-peer UDP carriers expire: N source ports send one datagram each to a Listener with
  carrier.idleTimeout 300 ms; every carrier is accepted, then every one ends with
  IdleTimeoutError, the listener's per-peer table empties, fds and tasks are back where
  they started.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sizing import sized

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import taps_post as tp
from helpers import sock_recvfrom
from netns import A1_V4, A1_V6, B1_V4, B2_V4, B2_V6, DROP_PRIVILEGES, NsProcess, Topology
from netns import topology as make_topology

LO4 = "127.0.0.1"

# ---- wildcard listeners answer from the address they were written to ----------------------

SERVER = r"""
import asyncio, json, sys
import taps_post as tp

def policy(stack):
    use = {"udp": {"use": ["unreliable-datagram"]},
           "quic": {"set": {"stack": {"quic": "require"}}}}[stack]
    app = {"version": 1, "layer": "app", "rules": [{"id": "x", **use}]}
    return tp.PolicyContext(system=[], app=app, app_name="srv")

async def serve(carrier):
    try:
        async for msg in carrier:
            await carrier.send(b"echo:" + bytes(msg))
    except Exception:
        pass

async def main():
    cert = tp.certs.self_signed(["svc"])
    loop = asyncio.get_running_loop()
    listeners, tasks = [], set()

    def accept(carrier):
        task = asyncio.ensure_future(serve(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        certs = [cert] if cmd["stack"] == "quic" else []  # with one, a datagram profile is QUIC
        local = tp.Local(address=cmd["bind"], port=0, certificates=certs)
        listener = await tp.listen(local, policy=policy(cmd["stack"]))
        listener.accept(accept)
        listeners.append(listener)
        print(json.dumps({"port": listener.ports[cmd["stack"]]}), flush=True)
    for listener in listeners:
        await listener.close()

asyncio.run(main())
"""

UDP_CLIENT = r"""
import json, select, socket, sys
local, remote, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in remote else socket.AF_INET
# Unconnected, so a reply from the wrong address is seen (and named) rather than dropped.
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((local, 0))
s.sendto(b"ping", (remote, port))
ready, _, _ = select.select([s], [], [], 3)
if not ready:
    print(json.dumps({"reply": None, "source": None}))
else:
    data, addr = s.recvfrom(2048)
    print(json.dumps({"reply": data.decode(errors="replace"), "source": addr[0]}))
"""

QUIC_CLIENT = r"""
import asyncio, json, socket, ssl, sys
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

local, remote, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    # A connected socket, as aioquic's and most QUIC clients' are: the kernel drops a
    # datagram from any other source, so a reply from the wrong address never arrives.
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((local, 0))
    sock.connect((remote, port))
    config = QuicConfiguration(is_client=True, server_name="svc", verify_mode=ssl.CERT_NONE)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: QuicConnectionProtocol(QuicConnection(configuration=config)), sock=sock)
    proto.connect(sock.getpeername())
    try:
        await asyncio.wait_for(proto.wait_connected(), 4)
        ok = True
    except (asyncio.TimeoutError, ConnectionError):
        ok = False
    proto.close()
    print(json.dumps({"connected": ok}))

asyncio.run(main())
"""

CASES = [  # (listener bind address, client source, the server's second address)
    pytest.param("0.0.0.0", A1_V4, B2_V4, id="v4-on-0.0.0.0"),
    pytest.param("::", A1_V6, B2_V6, id="v6-on-::"),
    pytest.param("::", A1_V4, B2_V4, id="v4-mapped-on-::"),
]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with make_topology("tpdg") as t:
        yield t


@pytest.fixture(scope="module")
def server(topo: Topology) -> Iterator[NsProcess]:
    with topo.spawn(topo.b, SERVER) as proc:
        yield proc


def _listen(server: NsProcess, stack: str, bind: str) -> int:
    port: int = server.request({"stack": stack, "bind": bind}, 15)["port"]
    return port


@pytest.mark.parametrize(("bind", "source", "target"), CASES)
def test_wildcard_udp_listener_answers_from_the_address_it_was_sent_to(
        topo: Topology, server: NsProcess, bind: str, source: str, target: str) -> None:
    port = _listen(server, "udp", bind)
    out = topo.run_python(topo.a, UDP_CLIENT, source, target, str(port), timeout=15)
    assert out == {"reply": "echo:ping", "source": target}, (
        f"sent to {target}; the reply came from {out['source']} (without IP_PKTINFO the "
        f"kernel answers from the route's address, {B1_V4} or its v6 twin)")


@pytest.mark.parametrize(("bind", "source", "target"), CASES)
def test_wildcard_quic_listener_completes_a_handshake_to_its_second_address(
        topo: Topology, server: NsProcess, bind: str, source: str, target: str) -> None:
    port = _listen(server, "quic", bind)
    out = topo.run_python(topo.a, QUIC_CLIENT, source, target, str(port), timeout=20)
    assert out == {"connected": True}, (
        "aioquic's client on a connected socket got no handshake reply: the listener "
        "answered from another address than the one it was sent to")


class _Echo(asyncio.DatagramProtocol):
    """A bare protocol on open_datagram_endpoint: echoes, records what the transport said."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.got: list[tuple[bytes, Any]] = []
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))
        self.transport.sendto(b"echo:" + data, addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def _client(source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.setblocking(False)
    return s


def test_wildcard_endpoint_answers_from_the_loopback_address_it_was_sent_to(run) -> None:
    """The same on one host without namespaces: 127.0.0.2 is ours too (all of 127/8 is),
    but the kernel would answer a peer on 127.0.0.1 from 127.0.0.1."""
    from taps_post.stacks.dgram import open_datagram_endpoint

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
        transport, proto = await open_datagram_endpoint(_Echo, sock)
        try:
            for target in ("127.0.0.2", LO4, "127.0.0.3"):
                with _client(LO4) as c:
                    c.sendto(b"ping", (target, port))
                    data, addr = await asyncio.wait_for(sock_recvfrom(c, 100), 3)
                    assert (data, addr[0]) == (b"echo:ping", target)
        finally:
            transport.close()
        await asyncio.sleep(0)
        assert proto.lost == [None] and sock.fileno() == -1

    run(main(), timeout=20)


def test_wildcard_endpoint_forgets_the_least_recently_heard_peer_first(run) -> None:
    """Rule 3 of stacks/dgram.py: the peer -> local address table is bounded; a peer past
    it is answered with the kernel's choice. Reading pauses and resumes; close ends it."""
    from taps_post.stacks.dgram import PktinfoTransport, open_datagram_endpoint

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
        transport, proto = await open_datagram_endpoint(_Echo, sock)
        assert isinstance(transport, PktinfoTransport)
        transport.max_peers = 3
        clients = [_client(LO4) for _ in range(5)]
        try:
            for c in clients:
                c.sendto(b"hi", ("127.0.0.2", port))
                data, addr = await asyncio.wait_for(sock_recvfrom(c, 100), 3)
                assert addr[0] == "127.0.0.2"
            assert transport.peers_known == 3
            names = [c.getsockname() for c in clients]
            assert [transport.local_address(n) for n in names] == [None, None] + [
                "127.0.0.2"] * 3
            # The first client is forgotten: a reply sent to it now (not prompted by a
            # datagram) leaves from the kernel's choice, 127.0.0.1.
            transport.sendto(b"late", names[0])
            data, addr = await asyncio.wait_for(sock_recvfrom(clients[0], 100), 3)
            assert (data, addr[0]) == (b"late", LO4)
            transport.pause_reading()
            assert not transport.is_reading()
            clients[1].sendto(b"held", ("127.0.0.2", port))
            await asyncio.sleep(0.05)  # would have been read by now; nothing may arrive
            assert proto.got[-1][0] == b"hi"
            transport.resume_reading()
            data, _ = await asyncio.wait_for(sock_recvfrom(clients[1], 100), 3)
            assert data == b"echo:held"
            assert transport.get_extra_info("sockname") == ("0.0.0.0", port)
            assert transport.get_extra_info("socket").fileno() == sock.fileno()
            assert transport.get_write_buffer_size() == 0 and transport.get_protocol() is proto
        finally:
            for c in clients:
                c.close()
            transport.abort()
        await asyncio.sleep(0)
        assert transport.is_closing() and proto.lost == [None]

    run(main(), timeout=20)


def test_udp_listener_bounds_its_per_peer_table(run, until, make_policy) -> None:
    """Rule 7 of stacks/udp.py: past max_peers, datagrams of new peers are dropped (counted
    in `refused`); once entries expire, new peers are served again."""
    policy = make_policy(use=["unreliable-datagram"], carrier={"carrier.idleTimeout": 200})

    async def main() -> None:
        from taps_post.stacks.udp import UdpListening

        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=policy)
        port = listener.ports["udp"]
        accepted: list[tp.Carrier] = []
        tasks: set[asyncio.Task[Any]] = set()

        def accept(carrier: tp.Carrier) -> None:
            accepted.append(carrier)  # and take its message: an unread one keeps it alive
            task = asyncio.ensure_future(carrier.receive())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        listener.accept(accept)
        udp = next(e for e in listener._endpoints if isinstance(e, UdpListening))
        udp.max_peers = 20
        clients = [_client(LO4) for _ in range(50)]
        try:
            for c in clients:
                c.sendto(b"x", (LO4, port))
            await until(lambda: len(accepted) + udp.refused >= 50, timeout=5,
                        what=lambda: f"{len(accepted)} accepted, {udp.refused} refused")
            assert (len(accepted), udp.refused, len(udp.peers)) == (20, 30, 20)
            await until(lambda: not udp.peers, timeout=5,
                        what=lambda: f"{len(udp.peers)} peers left after the idle timeout")
            clients[-1].sendto(b"again", (LO4, port))
            await until(lambda: len(accepted) == 21, timeout=5, what="a new peer after expiry")
        finally:
            for c in clients:
                c.close()
            await listener.close()

    run(main(), timeout=30)


SLOW_LINK = r"""
import asyncio, json, socket
from taps_post.stacks.dgram import PktinfoTransport, open_datagram_endpoint

class Proto(asyncio.DatagramProtocol):
    paused = resumed = 0
    def pause_writing(self): Proto.paused += 1
    def resume_writing(self): Proto.resumed += 1

async def main():
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
    rx.bind(("198.18.9.2", 0))
    rx.setblocking(False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", 0))
    transport, _ = await open_datagram_endpoint(Proto, sock)
    assert isinstance(transport, PktinfoTransport)
    transport.max_buffer = 256 * 1024
    n, size, peak = 3000, 1000, 0
    for i in range(n):
        transport.sendto(i.to_bytes(4, "big") * (size // 4), rx.getsockname())
        peak = max(peak, transport.get_write_buffer_size())
    # The queue is full now (nothing drained: no await since): a message's datagram dropped
    # there is refused to its sender, never reported as taken.
    late = [transport.send_now(b"\xff" * size, rx.getsockname()) for _ in range(20)]
    refused = sum(1 for e in late if isinstance(e, OSError))
    transport.dropped -= refused
    got = set()
    while len(got) < n - transport.dropped:
        try:
            data = await asyncio.wait_for(loop.sock_recv(rx, 2048), 5)
        except TimeoutError:
            break
        if data[:4] != b"\xff\xff\xff\xff":
            got.add(int.from_bytes(data[:4], "big"))
    print(json.dumps({"dropped": transport.dropped, "refused": refused,
                      "received": len(got), "n": n,
                      "peak": peak, "left": transport.get_write_buffer_size(),
                      "paused": Proto.paused, "resumed": Proto.resumed,
                      "in_order_prefix": sorted(got)[:3]}))
    transport.close()

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"), reason="needs root and tc")
def test_a_full_send_buffer_queues_up_to_its_bound_then_drops() -> None:
    """Rule 4 of stacks/dgram.py on a 8 Mbit/s link (tbf): the kernel's send buffer fills
    (EAGAIN), the transport queues up to max_buffer bytes, drops and counts the rest, pauses
    and resumes its protocol's writing, and every datagram it kept arrives."""
    name = f"tpdgq-{os.getpid()}"
    sh = partial(subprocess.run, check=True, capture_output=True, timeout=30)
    sh(["ip", "netns", "add", name])
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "q0", "type", "veth", "peer", "name", "q1"],
                    ["addr", "add", "198.18.9.1/24", "dev", "q0"],
                    ["addr", "add", "198.18.9.2/24", "dev", "q1"],
                    ["link", "set", "q0", "up"], ["link", "set", "q1", "up"]):
            sh(["ip", "-n", name, *cmd])
        # Both addresses are this namespace's own, so the datagrams pass through lo: the
        # slow qdisc sits there (the veth only holds the addresses).
        sh(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
            "rate", "8mbit", "burst", "16kb", "limit", "4mb"])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-P", "-c",
                               SLOW_LINK], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=False)
    assert out["dropped"] > 0, out  # the link is slower than the loop: the bound was hit
    assert out["refused"] == 20, out  # send_now says so for a message's datagram
    assert out["peak"] <= 256 * 1024, out
    assert out["received"] == out["n"] - out["dropped"], out
    assert out["left"] == 0 and out["paused"] >= 1 and out["resumed"] >= 1, out
    print(f"\n{out['n']} x 1000 B at 8 Mbit/s: {out['dropped']} dropped at the bound, "
          f"queue peak {out['peak']} B, {out['received']} received")


# ---- no SO_REUSEADDR on UDP: another user cannot share the port ---------------------------

INTRUDER = DROP_PRIVILEGES + r"""
import errno, json, socket, sys
port, family = int(sys.argv[1]), int(sys.argv[2])
who = drop_privileges()
out = {"uid": who["uid"]}
for name, option in (("reuseaddr", socket.SO_REUSEADDR), ("reuseport", socket.SO_REUSEPORT)):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        out[name] = "bound"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    s.close()
print(json.dumps(out))
"""


def _intrude(port: int, family: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(INTRUDER), str(port),
                           str(int(family))], capture_output=True, text=True, env=env,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
@pytest.mark.parametrize("what", ["udp-listener", "sink", "quic-listener"])
def test_another_user_cannot_bind_a_listening_udp_port(run, make_policy, what: str) -> None:
    async def main() -> None:
        if what == "sink":
            sink = await tp.new_sink(tp.Local(address="0.0.0.0", port=0), policy=make_policy())
            try:
                out = _intrude(sink.port, socket.AF_INET)
            finally:
                await sink.close()
        else:
            stack = what.split("-")[0]
            policy = (make_policy(use=["unreliable-datagram"]) if stack == "udp"
                      else make_policy({"stack": {"quic": "require"}}))
            certs = [tp.certs.self_signed(["x"])] if stack == "quic" else []
            local = tp.Local(address="::", port=0, certificates=certs)
            listener = await tp.listen(local, policy=policy)
            try:
                out = _intrude(listener.ports[stack], socket.AF_INET6)
            finally:
                await listener.close()
        assert out == {"uid": 65534, "reuseaddr": "EADDRINUSE", "reuseport": "EADDRINUSE"}, (
            f"another user shared the {what}'s port: {out}")

    run(main(), timeout=40)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux SO_REUSEPORT rules")
def test_two_sinks_of_one_user_share_a_multicast_group_port(run, make_policy) -> None:
    """SO_REUSEPORT where we mean it: a group's port is shared by the same user's Sinks.
    (Joining needs a multicast route; loopback has none, so only the bind is tried.)"""
    async def main() -> None:
        one = await tp.new_sink(tp.Local(address="239.7.7.7", port=0), policy=make_policy())
        try:
            two = await tp.new_sink(tp.Local(address="239.7.7.7", port=one.port),
                                    policy=make_policy())
            assert two.port == one.port
            await two.close()
        finally:
            await one.close()

    try:
        run(main(), timeout=20)
    except OSError as exc:  # no multicast-capable interface here: joining fails first
        pytest.skip(f"cannot join a multicast group here: {exc}")


# ---- per-peer UDP carriers expire when idle -----------------------------------------------

def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_per_peer_udp_carriers_expire_when_idle(run, until, make_policy) -> None:
    n = sized(2_000, 20_000)
    policy = make_policy(use=["unreliable-datagram"], carrier={"carrier.idleTimeout": 300})

    async def main() -> None:
        from taps_post.stacks.udp import UdpListening

        fds_before = _fds()
        tasks_before = len(asyncio.all_tasks())
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=policy)
        port = listener.ports["udp"]
        accepted: list[tp.Carrier] = []
        received = 0
        ended: dict[str, int] = {}

        async def serve(carrier: tp.Carrier) -> None:
            nonlocal received
            transient = carrier.transients[0]
            try:
                await carrier.receive()
                received += 1
                await carrier.receive()  # nothing more comes: the idle timeout ends it
            except tp.ConnectionClosedError:
                why = type(transient.failure).__name__
                ended[why] = ended.get(why, 0) + 1

        tasks: set[asyncio.Task[None]] = set()

        def accept(carrier: tp.Carrier) -> None:
            accepted.append(carrier)
            task = asyncio.ensure_future(serve(carrier))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        listener.accept(accept)
        udp = [e for e in listener._endpoints if isinstance(e, UdpListening)]
        assert len(udp) == 1
        table = udp[0].peers
        sent = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        # One datagram from each of n source ports, in rounds the listener's receive
        # buffer holds; each socket is closed as soon as its datagram left.
        source = 10_000  # distinct ports (an ephemeral bind may hand the same one out again)
        while sent < n:
            for _ in range(min(100, n - sent)):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    while True:
                        source += 1
                        try:
                            s.bind((LO4, source))
                            break
                        except OSError:
                            continue  # in use by someone else: the next one
                    s.sendto(b"x%d" % sent, (LO4, port))
                sent += 1
            await until(lambda s=sent: received >= s, timeout=10,
                        what=lambda s=sent: f"{received} of {s} datagrams reached a carrier")
        sent_s = loop.time() - start
        assert len(accepted) == n
        peak = len(table)
        await until(lambda: not tasks, timeout=30,
                    what=lambda: f"{len(tasks)} of {n} carriers still open; ended {ended}")
        assert ended == {"IdleTimeoutError": n}, ended
        await until(lambda: not table, timeout=5,
                    what=lambda: f"{len(table)} per-peer entries left")
        await listener.close()
        await until(lambda: len(asyncio.all_tasks()) <= tasks_before and _fds() <= fds_before,
                    timeout=5, what=lambda: f"tasks {len(asyncio.all_tasks())} (started "
                    f"{tasks_before}), fds {_fds()} (started {fds_before})")
        print(f"\n{n} peers: sent in {sent_s:.2f} s, peak table {peak}, all expired "
              f"{loop.time() - start:.2f} s after the first")

    run(main(), timeout=120)
