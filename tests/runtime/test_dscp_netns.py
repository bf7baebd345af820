"""Stream and datagram stacks against the kernel in network namespaces (issue 9, items 2, 6,
9, 10): DSCP marks captured on the wire, TCP Fast Open carrying the early flight, path
statistics over a rate-limited link, and a multicast Sink that hears only its group.

Root only (namespaces, nftables, tc, per-namespace sysctls); each test skips with the reason
otherwise. The peers are real: plain kernel sockets or taps_post's own listener, and what is
checked is what the receiving namespace counted (nftables) or received.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from netns import A1, A1_V4, B1_V4, Topology, python_env, topology_fixture

topo = topology_fixture(prefix="tpq")

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                               reason="needs root and iproute2 to build network namespaces")

STACK_HELPERS = '''
import asyncio, json, sys
import taps_post as tp
from taps_post.core.framing import LengthPrefixFramer
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate, RankKey
from taps_post.stacks.base import AttemptSpec, ListenSpec

def settings(**kw):
    base = dict(conn_timeout=5.0, attempt_delay=0.05, max_size=1 << 24, min_tls="1.2",
                verify_peer=True, session_cache=True, alpn=(), zero_rtt=True)
    base.update(kw)
    return Settings(**base)

def spec(remote, port, stack="tcp", local="127.0.0.1", s=None, interface="lo", **kw):
    s = s or settings()
    c = Candidate(0, interface, local, stack, remote, port, "ipv4", 0,
                  RankKey(0, 0, 0, 0, 0, 0, 1, 0.0, 0, interface, 0, 0))
    assoc = kw.pop("assoc", None) or tp.AssociationStore().get(f"{remote}:{port}")
    return AttemptSpec(candidate=c, host=remote, settings=s, association=assoc,
                       framer=lambda: LengthPrefixFramer(s.max_size), **kw)

def listen_spec(address, on_transient, s=None):
    s = s or settings()
    return ListenSpec(address=address, port=0, interface=None, settings=s,
                      framer=lambda: LengthPrefixFramer(s.max_size), identity=(),
                      on_transient=on_transient)
'''


# ---- item 9: DSCP marks on the wire --------------------------------------------------------

SINK_SERVER = '''
import json, select, socket, sys
port = int(sys.argv[1])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
print(json.dumps({"port": port}), flush=True)
conns = []
while True:
    r, _, _ = select.select([t, u] + conns, [], [])
    for s in r:
        if s is t:
            conns.append(t.accept()[0])
        elif s is u:
            u.recv(65536)
        elif not s.recv(1 << 16):
            conns.remove(s); s.close()
'''

DSCP_CLIENT = '''
import asyncio, json, sys
import taps_post as tp

async def main():
    host, port, system = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    pol = tp.PolicyContext(system=system, app_name="dscp")
    store = tp.AssociationStore()
    loop = asyncio.get_running_loop()
    c = await tp.initiate(f"tcp://{host}:{port}", policy=pol, store=store)
    for niceness, count in ((0, 3), (2, 3)):   # one batch per class, each acknowledged
        acked = [loop.create_future() for _ in range(count)]
        for f in acked:
            await c.send_msg(tp.OutMessage(b"x" * 20000, niceness=niceness),
                             on_acked=lambda m, f=f: f.set_result(None))
        await asyncio.gather(*acked)
    await c.close()
    dgram = tp.PolicyContext(system=system, app_name="dscp", app={
        "version": 1, "layer": "app",
        "rules": [{"id": "d", "use": ["unreliable-datagram"]}]})
    u = await tp.initiate(f"udp://{host}:{port}", policy=dgram, store=store)
    sent = []
    for niceness in (0, 2, 0, 2, 2, 1):
        await u.send_msg(tp.OutMessage(b"d%d" % niceness, niceness=niceness),
                         on_sent=sent.append)
    while len(sent) < 6:
        await asyncio.sleep(0.001)
    await u.close()
    print(json.dumps({"tcp": c.stack if hasattr(c, "stack") else None, "udp": len(sent)}))

asyncio.run(main())
'''

MARKS = ("ef", "af41", "cs1", "cs0")


def count_marks(t: Topology, port: int) -> None:
    """nftables counters in B of what arrives from A for `port`, by protocol and mark."""
    lines = ["table inet marks {"]
    lines += [f"  counter {p}_{m} {{ }}" for p in ("tcp", "udp") for m in MARKS]
    lines += ["  chain in {", "    type filter hook input priority 0; policy accept;"]
    lines += [f"    ip saddr {A1_V4} {p} dport {port} ip dscp {m} counter name {p}_{m}"
              for p in ("tcp", "udp") for m in MARKS]
    lines += ["  }", "}"]
    t.exec(t.b, "nft", "delete", "table", "inet", "marks", check=False)
    t.nft(t.b, "\n".join(lines) + "\n")


def marks(t: Topology) -> dict[str, int]:
    listed = json.loads(t.exec(t.b, "nft", "-j", "list", "counters", "table", "inet",
                               "marks").stdout)
    return {item["counter"]["name"]: item["counter"]["packets"]
            for item in listed["nftables"] if "counter" in item}


@ROOT_ONLY
def test_dscp_marks_follow_niceness_on_the_wire(topo: Topology) -> None:
    port = 5301
    server = topo.spawn(topo.b, SINK_SERVER, str(port))
    assert server.read_json(5) == {"port": port}
    policy = topo.tmp / "dscp.yaml"
    policy.write_text(textwrap.dedent("""\
        version: 1
        layer: system
        rules:
          - id: marks
            set:
              message:
                dscp: [EF, AF41, CS1]
        """))
    count_marks(topo, port)
    out = topo.run_python(topo.a, DSCP_CLIENT, B1_V4, str(port), str(policy))
    assert out["udp"] == 6
    got = marks(topo)
    # TCP: per socket, set before each batch to its most urgent niceness (SYN: niceness 0).
    # (nftables counts GSO packets before segmentation: a few per 60 kB batch.)
    assert got["tcp_ef"] >= 3 and got["tcp_cs1"] >= 2, got
    assert got["tcp_af41"] == 0, got
    # UDP: per datagram.
    assert (got["udp_ef"], got["udp_af41"], got["udp_cs1"], got["udp_cs0"]) == (2, 1, 3, 0)
    # Without the table nothing is marked.
    count_marks(topo, port)
    topo.run_python(topo.a, DSCP_CLIENT, B1_V4, str(port))
    plain = marks(topo)
    assert plain["tcp_cs0"] >= 5 and plain["udp_cs0"] == 6, plain
    assert sum(v for k, v in plain.items() if not k.endswith("cs0")) == 0, plain


# ---- item 6: path statistics over a rate-limited link -------------------------------------

PATH_STATS = STACK_HELPERS + '''
from taps_post.stacks.tcp import StreamStack

async def main():
    host, port, local, interface = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    stack = StreamStack("tcp", secure=False, mptcp=False)
    t = await stack.connect(spec(host, port, local=local, interface=interface))
    loop = asyncio.get_running_loop()
    half, acked = loop.create_future(), loop.create_future()
    from taps_post.core.messages import OutMessage
    for i in range(40):
        t.submit(OutMessage(b"r" * 50000),
                 on_acked=(lambda m: half.set_result(None)) if i == 19 else
                 (lambda m: acked.set_result(None)) if i == 39 else None)
    await half
    middle = t.path_stats()  # the queue is still full: the rate sample is the shaper's
    await acked
    s = t.path_stats()
    print(json.dumps({"rtt_ms": s.rtt_ms, "rttvar_ms": s.rttvar_ms, "loss": s.loss,
                      "rate_bps": middle.rate_bps, "tail_rate_bps": s.rate_bps,
                      "mtu": s.mtu, "sent": s.sent}))
    await t.aclose()

asyncio.run(main())
'''


@ROOT_ONLY
def test_path_stats_on_a_rate_limited_veth(topo: Topology) -> None:
    rate = 20_000_000
    topo.exec(topo.a, "tc", "qdisc", "add", "dev", A1, "root", "tbf", "rate", "20mbit",
              "burst", "16kb", "latency", "400ms")  # a queue deep enough not to drop
    port = 5302
    server = topo.spawn(topo.b, SINK_SERVER, str(port))
    assert server.read_json(5) == {"port": port}
    out = topo.run_python(topo.a, PATH_STATS, B1_V4, str(port), A1_V4, A1, timeout=30)
    # The shaper is the bound (an unshaped veth delivers Gbit/s). The rate is read halfway,
    # with 1 MB still queued: the last delivery-rate sample of a transfer may be
    # application-limited (its tail: 1.7 Mbit/s once in CI), so only that one is not checked
    # against the floor, which stays loose for a loaded machine.
    assert 0.2 * rate < out["rate_bps"] < 1.3 * rate, out
    assert 0.0 < out["tail_rate_bps"] < 1.3 * rate, out
    assert 0.0 < out["rtt_ms"] < 500.0, out  # the link and tbf's queue (up to 400 ms)
    assert out["rttvar_ms"] >= 0 and 0.0 <= out["loss"] <= 1.0, out
    assert out["mtu"] == 1500 and out["sent"] > 1000, out


# ---- item 2: TCP Fast Open carries the first early message ---------------------------------

FAST_OPEN = STACK_HELPERS + '''
from taps_post.core.early import EarlyFlight, Held
from taps_post.core.messages import OutMessage
from taps_post.stacks.tcp import StreamStack

async def main():
    stack = StreamStack("tcp", secure=False, mptcp=False)
    q = asyncio.Queue()
    ep = await stack.listen(listen_spec("127.0.0.1", q.put_nowait))
    assoc = tp.AssociationStore().get("tfo")
    loop = asyncio.get_running_loop()
    runs = []
    for i in range(3):
        flight = EarlyFlight()
        events = []
        done = loop.create_future()
        # The third is larger than a SYN can carry: the rest follows, and it is not early.
        hello = OutMessage(b"hello %d" % i + (b"." * 300_000 if i == 2 else b""),
                           idempotent=True)
        flight.hold(Held(hello, on_sent=lambda m: events.append("sent"),
                         on_acked=lambda m: (events.append("acked"), done.set_result(m)),
                         queued_at=loop.time()))
        flight.hold(Held(OutMessage(b"second", idempotent=True), queued_at=loop.time()))
        attempt = flight.attempt()
        t = await stack.connect(spec("127.0.0.1", ep.port, assoc=assoc, early=attempt))
        server = await q.get()  # accepted (and its SYN measured) before more data comes
        rest = flight.settle(t.early_attempt)
        for h in rest:
            t.submit(h.message, h.on_sent, h.on_acked, h.on_expired, h.on_send_error)
        got = [await server.receive() for _ in range(2)]
        await done
        runs.append({"carried": t.early_attempt is attempt, "in_syn": t.early_in_syn,
                     "rest": [h.message.data.decode() for h in rest],
                     "got": [[bytes(m)[:7].decode(), len(m), m.early] for m in got],
                     "events": events, "state": hello.state})
        await t.aclose()
        await server.aclose()
    await ep.aclose()
    print(json.dumps(runs))

asyncio.run(main())
'''


@pytest.fixture
def netns() -> Iterator[str]:
    """One namespace of our own (Fast Open and multicast are per-namespace settings)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to build network namespaces")
    name = f"tpstream-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        ip = ["ip", "-n", name]
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "mc0", "type", "veth", "peer", "name", "mc1"],
                    ["addr", "add", "198.18.9.1/24", "dev", "mc0"],
                    ["addr", "add", "198.18.9.2/24", "dev", "mc1"],
                    ["link", "set", "mc0", "up"], ["link", "set", "mc1", "up"],
                    ["route", "add", "239.0.0.0/8", "dev", "mc0"]):
            subprocess.run(ip + cmd, check=True, capture_output=True)
        for key in ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.mc1.rp_filter=0",
                    "net.ipv4.conf.mc1.accept_local=1", "net.ipv4.tcp_fastopen=3"):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", key],
                           check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def run_in(ns: str, code: str, *args: str) -> object:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-P", "-c", code,
                           *args], capture_output=True, text=True, env=python_env(),
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fast_open_carries_the_first_early_message_and_the_server_marks_it(netns: str) -> None:
    first, second, third = run_in(netns, FAST_OPEN)  # type: ignore[misc]
    # First connection: no cookie yet, the copy goes right after the handshake.
    assert first == {"carried": True, "in_syn": False, "rest": ["second"],
                     "got": [["hello 0", 7, False], ["second", 6, False]],
                     "events": ["sent", "acked"], "state": "sent"}
    # With the cookie: the copy rides in the SYN; only it is early at the server.
    assert second == {"carried": True, "in_syn": True, "rest": ["second"],
                      "got": [["hello 1", 7, True], ["second", 6, False]],
                      "events": ["sent", "acked"], "state": "sent"}
    # Larger than the SYN: its start rides there, the rest follows; not wholly early.
    assert third == {"carried": True, "in_syn": True, "rest": ["second"],
                     "got": [["hello 2", 300_007, False], ["second", 6, False]],
                     "events": ["sent", "acked"], "state": "sent"}


# ---- item 10: a multicast Sink hears only its group ----------------------------------------

MULTICAST = STACK_HELPERS + '''
import socket, struct
from taps_post.stacks.udp import bind_sink

async def main():
    sink = await bind_sink("239.1.2.3", 0, "mc1", settings())
    port = sink.local_address[1]
    # Another socket on the same port joins another group: its traffic is not ours.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("0.0.0.0", port))
    other.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("4s4si", socket.inet_aton("239.9.9.9"), b"\\0" * 4,
                                 socket.if_nametoindex("mc1")))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("198.18.9.1"))
    tx.bind(("198.18.9.1", 0))
    tx.sendto(b"unicast", ("198.18.9.2", port))
    tx.sendto(b"other group", ("239.9.9.9", port))
    tx.sendto(b"group", ("239.1.2.3", port))
    tx.sendto(b"group again", ("239.1.2.3", port))
    got = []
    async with asyncio.timeout(5):
        while len(got) < 2:
            got.append(bytes(await sink.receive()).decode())
    # `other` (the wildcard) received the later datagrams: they were all delivered by now.
    other.settimeout(2)
    seen_by_other = []
    while len(seen_by_other) < 2:
        seen_by_other.append(other.recv(100).decode())
    print(json.dumps({"sink": got, "left": sink.try_receive() is None,
                      "other": seen_by_other}))

asyncio.run(main())
'''


def test_a_multicast_sink_receives_only_its_group(netns: str) -> None:
    out = run_in(netns, MULTICAST)
    assert out == {"sink": ["group", "group again"], "left": True,
                   "other": ["unicast", "other group"]}
