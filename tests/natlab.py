"""A NAT lab of network namespaces for the rendezvous tests (issue 13): a public network with
coturn (Debian's STUN/TURN server, not ours) and two homes behind NAT routers.

      home1 (eth0 198.19.1.2)                          home2 (eth0 198.19.2.2)
        |  default via 198.19.1.1                        |  default via 198.19.2.1
      router1  lan0 198.19.1.1                         router2  lan0 198.19.2.1
               wan0 198.18.0.11 --+               +-- wan0 198.18.0.12
                                  |               |
                public: bridge br0 198.18.0.1 (coturn on 3478 udp+tcp, relay ports 49152-49183;
                        the rendezvous point runs here too)

Variants (`variant=`):
- "eim": each router masquerades on wan0 (Linux keeps the source port where it can: an
  endpoint-independent mapping) and silently drops unsolicited inbound UDP on wan0, as home
  routers do. The drop matters: without it Linux answers a peer's early connectivity check
  with ICMP port unreachable and keeps a conntrack entry for it, and that entry forces a new
  mapping for the home's own outgoing check to that peer, so hole punching fails.
- "apdm": the same with `masquerade fully-random`: a new random port per destination
  (address-and-port-dependent mapping), so only a TURN relay connects the homes.
- "lan": both homes on one LAN behind router1 (home1 198.19.1.2, home2 198.19.1.3 on the
  router's bridge lan0), router1 masquerading as in "eim"; no router2.

Rule 1: addresses only in 198.18.0.0/15 (public 198.18.0.0/24, LANs 198.19.1.0/24 and
198.19.2.0/24); IPv6 is disabled in every lab namespace, so no candidate or packet uses it.
Rule 2: namespace names are unique per run (`nl<pid>-<n>-<role>`), and `NatLab.teardown()`
(the context manager's exit, also after a failed build) kills what the lab started, then
every process left in its namespaces, deletes the namespaces and the temporary directory;
it never raises.
Rule 3: coturn is the distribution's unmodified `turnserver`, started in the foreground from
the lab's temporary directory with everything on its command line (`-n`: no config file;
its user database and pid file are in the temporary directory), logging to `turn.log`
there (`lab.turn_log()`, quoted on failure). The lab is ready only after coturn answered a
STUN Binding request from the public namespace.
Rule 4: the lab itself touches nothing outside its namespaces; under pytest, no root, no
`ip netns`, no nft or no turnserver skips with the reason; elsewhere (bench/) it raises.
Rule 5: code runs in a lab namespace as a subprocess (`lab.spawn`, `lab.run_python`: the
repository's .venv python, JSON lines on stdout; `tree=True` imports this working tree, not
the installed package), or, for sockets only, in-process: `lab.socket(ns, ...)` makes the
socket in a short-lived thread that entered the namespace (setns affects only that thread),
and the socket stays in that namespace wherever it is used; `lab.capture()` is an
AF_PACKET socket made that way on the public network.

Rule 6: the rendezvous point (`lab.start_point(trust=[...])`) is `taps-post rendezvous
serve` from this working tree in the public namespace on PUBLIC:POINT_PORT, with a fresh
certificate for PUBLIC and exactly the named identities' certificates trusted;
RENDEZVOUS_PEER is the command-driven peer script (meet, exchange, echo, rtt, plain QUIC)
the e2e tests and bench/rendezvous.py run in the homes.

Usage:

    with nat_lab("eim") as lab:                      # or natlab_fixture("lab", "eim")
        peer = lab.spawn(lab.home1, CODE, "arg")     # netns.NsProcess: JSON lines
        point = lab.start_point(["alice.test", "bob.test"])
        cert, key = lab.identity("alice.test")       # files, made on first use
        with lab.capture() as cap:                   # every frame on the public network
            ...
        assert cap.count(b"marker") == 0
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dnslab import Daemon
from netns import COMMAND_LOOP, NsProcess, python_env, unavailable

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

PUBLIC = "198.18.0.1"
"""The public network's own address (bridge br0): coturn and the rendezvous point."""
WAN1, WAN2 = "198.18.0.11", "198.18.0.12"
"""The routers' WAN addresses: what the homes' traffic leaves the NAT with."""
SINK = "198.18.255.1"
"""The public network's default gateway, which does not exist (see NatLab.build)."""
LAN1_GW, LAN2_GW = "198.19.1.1", "198.19.2.1"
HOME1 = "198.19.1.2"
HOME2 = "198.19.2.2"
HOME2_SAME_LAN = "198.19.1.3"
"""home2's address in the "lan" variant (beside home1 on router1's LAN)."""

TURN_PORT = 3478
RELAY_PORTS = range(49152, 49184)
"""coturn's relay ports (its --min-port/--max-port): TURN-relayed traffic uses these."""
REALM = "natlab.test"
TURN_USER = "natlab"
POINT_PORT = 4433
"""The rendezvous point's TCP port on the public address (`NatLab.start_point`)."""
START_TIMEOUT = 10.0
POINT_START_TIMEOUT = 20.0
"""The point is a Python process importing taps_post: slower to start than coturn."""
VARIANTS = ("eim", "apdm", "lan")

_counter = itertools.count(1)
_index = itertools.count(10)
"""Interface indexes, unique across the lab: a veth whose ifindex equals its peer's is not an
"urgent" linkwatch event and its carrier comes up about a second late (see tests/netns.py)."""

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6

T = TypeVar("T")


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 10.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                         input=input, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): "
                           f"{out.stderr.strip() or out.stdout.strip()}")
    return out


def turnserver_path() -> str | None:
    found = shutil.which("turnserver")
    if found is None and Path("/usr/bin/turnserver").exists():
        found = "/usr/bin/turnserver"
    return found


def skip_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    reason = unavailable()
    if reason is not None:
        return reason
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        return "`nft` (nftables) is not installed (apt-get install nftables; CI does)"
    if turnserver_path() is None:
        return "coturn's `turnserver` is not installed (apt-get install coturn; CI does)"
    return None


def python() -> str:
    """The interpreter lab subprocesses run: the repository's .venv python (the one with
    aioice, aioquic and taps_post's other dependencies), else this one."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def in_namespace(ns: str, fn: Callable[[], T]) -> T:
    """`fn()` called in a thread that entered network namespace `ns` (setns(2) changes only
    the calling thread, so this process stays where it is); its result or its exception.
    What `fn` creates there (a socket) belongs to `ns` for its whole life."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def stun_binding(sock: socket.socket, server: tuple[str, int], timeout: float) -> bool:
    """Send one STUN Binding request (RFC 8489, no attributes) on `sock`; True when a
    Binding success response with our transaction id comes back within `timeout`."""
    txid = secrets.token_bytes(12)
    sock.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid, server)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(2048)
        except (TimeoutError, ConnectionRefusedError):
            return False
        # A late answer to an earlier request is skipped, not taken for this one's.
        if len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid:
            return True
    return False


class Capture:
    """Every frame seen in one namespace (all its interfaces: an AF_PACKET socket bound to
    none), read by a thread from start to `stop()`; for asserting what never crossed the
    wire. A frame forwarded by a bridge is seen on both ports and on the bridge."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.frames: list[bytes] = []
        self.drops = 0
        """Frames the kernel dropped for want of buffer (PACKET_STATISTICS): non-zero means
        the capture is incomplete and proves nothing."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="natlab-capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames.append(frame)

    def stop(self) -> None:
        """Stop reading (after draining what the socket holds) and close the socket."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        self._sock.setblocking(False)
        with contextlib.suppress(OSError):
            while True:
                self.frames.append(self._sock.recv(65536))
        with contextlib.suppress(OSError):
            stats = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            self.drops += struct.unpack("II", stats)[1]
        self._sock.close()

    def count(self, needle: bytes) -> int:
        """How many captured frames contain `needle`."""
        return sum(1 for frame in self.frames if needle in frame)

    def udp_frames(self, ports: Container[int]) -> int:
        """Captured IPv4 UDP frames from or to any of `ports` (Ethernet, no VLAN tag)."""
        found = 0
        for frame in self.frames:
            if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            ihl = (frame[14] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", frame[14 + ihl:18 + ihl])
            found += sport in ports or dport in ports
        return found

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


RENDEZVOUS_PEER = COMMAND_LOOP + r"""
import time
import taps_post as tp
from taps_post.certs import Certificate

STATE = {}


def elapsed_ms(since):
    return (time.monotonic() - since) * 1000


async def meet(cmd):
    local = tp.Local(identity=cmd["me"],
                     certificates=[Certificate.from_files(cmd["cert"], cmd["key"])])
    point = tp.Remote.parse(cmd["point"],
                            certificates=[Certificate.from_files(cmd["point_cert"])])
    remote = tp.Remote.rendezvous(cmd["peer"], via=point)
    policy = tp.PolicyContext(system=[], app=cmd["policy"], app_name="natlab-peer")
    events = []

    def trace(name, info):
        events.append([name, round(elapsed_ms(t0), 1)])

    t0 = time.monotonic()
    carrier = tp.initiate(remote, local=local, policy=policy, trace=trace)
    try:
        await carrier.activate()
    except Exception as exc:
        return {"event": "error", "type": type(exc).__name__, "message": str(exc),
                "ms": elapsed_ms(t0), "trace": events}
    STATE["carrier"] = carrier
    report = carrier.explanation.rendezvous
    return {"event": "ready", "t_go": t0, "t_ready": time.monotonic(), "ms": elapsed_ms(t0),
            "stack": carrier.stack, "report": None if report is None else report.to_dict(),
            "trace": events}


async def exchange(carrier, marker, count):
    got = []

    async def send():
        for i in range(count):
            await carrier.send(b"%s %d" % (marker, i))

    async def receive():
        while len(got) < count:
            data = bytes(await carrier.receive())
            head, _, number = data.rpartition(b" ")
            got.append(int(number) if head == marker else -1)

    await asyncio.gather(send(), receive())
    return got


async def echo(carrier):
    try:
        async for msg in carrier:
            await carrier.send(bytes(msg))
    except tp.ConnectionClosedError:
        pass


async def round_trips(carrier, n):
    samples = []
    for i in range(n):
        t = time.monotonic()
        await carrier.send(b"rtt %d" % i)
        assert bytes(await carrier.receive()).endswith(b"rtt %d" % i)
        samples.append(elapsed_ms(t))
    return samples


async def handle(cmd):
    op = cmd["cmd"]
    if op == "meet":
        return await meet(cmd)
    carrier = STATE.get("carrier")
    if op == "exchange":
        t = time.monotonic()
        got = await asyncio.wait_for(exchange(carrier, cmd["marker"].encode(), cmd["count"]),
                                     cmd.get("timeout", 60))
        return {"event": "received", "numbers": got, "ms": elapsed_ms(t)}
    if op == "echo":
        STATE["echo"] = asyncio.ensure_future(echo(carrier))
        return {"event": "echoing"}
    if op == "rtt":
        return {"event": "rtt", "samples": await round_trips(carrier, cmd["n"])}
    if op == "quic":
        t0 = time.monotonic()
        pin = Certificate.from_files(cmd["cert"])
        quic = tp.initiate(tp.Remote.parse(cmd["target"], certificates=[pin]),
                           policy=tp.PolicyContext(system=[], app_name="natlab-quic"))
        await quic.activate()
        ready = elapsed_ms(t0)
        samples = await round_trips(quic, cmd["n"])
        await quic.close()
        return {"event": "quic", "ms": ready, "stack": quic.stack, "samples": samples}
    if op == "close":
        if carrier is not None:
            await carrier.close()
            STATE.pop("carrier")
        task = STATE.pop("echo", None)
        if task is not None:
            await asyncio.wait([task], timeout=5)
        return {"event": "closed"}
    raise ValueError(f"unknown command {op!r}")


asyncio.run(command_loop(handle))
"""
"""A command-driven rendezvous peer for `NatLab.spawn(home, RENDEZVOUS_PEER, tree=True)`
(tests/netns.py COMMAND_LOOP: one JSON command a line, one JSON answer):
- {"cmd": "meet", "me", "peer", "cert", "key", "point", "point_cert", "policy"}:
  `tp.initiate(Remote.rendezvous(peer, via=point pinned), local=Local(identity=me, ...),
  policy=app policy file)` and activate; answers {"event": "ready", "t_go", "t_ready"
  (time.monotonic(), one clock for every process), "ms", "stack", "report" (the
  explanation's rendezvous report as a dict), "trace" ([event name, ms after initiate()]
  of every trace event)} or {"event": "error", "type", "message", "ms", "trace"}.
- {"cmd": "exchange", "marker", "count"}: send `count` messages b"MARKER N" while receiving
  as many; {"event": "received", "numbers" (in arrival order; -1 for a message without the
  marker), "ms"}. Both peers must be told at once.
- {"cmd": "echo"}: echo every message from now on (background); {"cmd": "rtt", "n"}: `n`
  sequential round trips, {"event": "rtt", "samples": [ms, ...]}.
- {"cmd": "quic", "target", "cert", "n"}: plain taps_post QUIC (no ICE) to `target` with
  `cert` pinned: {"event": "quic", "ms" (initiate to ready), "stack", "samples"}.
- {"cmd": "close"}: close the carrier."""


def write_identity(directory: Path, name: str, names: Sequence[str] | None = None
                   ) -> tuple[Path, Path]:
    """A fresh self-signed certificate for `names` (default: [name]) and its key, written
    to DIRECTORY/NAME.pem and NAME.key (0600)."""
    from taps_post.certs import self_signed

    cert = self_signed(list(names or [name]))
    pem, key = directory / f"{name}.pem", directory / f"{name}.key"
    pem.write_text(cert.cert_pem)
    assert cert.key_pem is not None
    key.touch(0o600)
    key.write_text(cert.key_pem)
    return pem, key


class Point:
    """A running `taps-post rendezvous serve` (NatLab.start_point)."""

    def __init__(self, daemon: Daemon, cert: Path) -> None:
        self.daemon = daemon
        self.cert = cert
        """Its certificate (PEM): peers pin it (`Remote.parse(url, certificates=[...])`)."""
        self.url = f"tls://{PUBLIC}:{POINT_PORT}"

    def log(self) -> str:
        return self.daemon.log()


class NatLab:
    """The lab of the module docstring; build with `nat_lab()` / `natlab_fixture()`."""

    def __init__(self, variant: str = "eim", *, prefix: str = "nl") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        self.variant = variant
        tag = f"{prefix}{os.getpid()}-{next(_counter)}"
        self.public = f"{tag}-pub"
        self.router1 = f"{tag}-r1"
        self.router2: str | None = None if variant == "lan" else f"{tag}-r2"
        self.home1 = f"{tag}-h1"
        self.home2 = f"{tag}-h2"
        self.addresses = {self.home1: HOME1,
                          self.home2: HOME2_SAME_LAN if variant == "lan" else HOME2}
        """Each home's own (LAN) address."""
        self.wan = {self.home1: WAN1, self.home2: WAN1 if variant == "lan" else WAN2}
        """The address each home's traffic leaves its NAT with."""
        self.turn_password = secrets.token_hex(8)
        self.stun = (PUBLIC, TURN_PORT)
        self.turn = (PUBLIC, TURN_PORT)
        self._made: list[str] = []
        self._daemons: list[Daemon] = []
        self._procs: list[NsProcess] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{tag}-")
        self.tmp = Path(self._tmp.name)
        self.coturn: Daemon | None = None

    @property
    def namespaces(self) -> list[str]:
        return [ns for ns in (self.public, self.router1, self.router2, self.home1, self.home2)
                if ns is not None]

    @property
    def turn_url(self) -> str:
        """The TURN server as the `rendezvous.turn` policy key spells it."""
        return f"turn:{TURN_USER}:{self.turn_password}@{PUBLIC}:{TURN_PORT}?transport=udp"

    # ---- lifecycle ------------------------------------------------------------------------

    def build(self) -> None:
        for ns in self.namespaces:
            _run(["ip", "netns", "del", ns], check=False)  # leftover of a crash, same pid
            made = _run(["ip", "netns", "add", ns], check=False)
            if made.returncode != 0:
                raise LabUnavailable(f"cannot create a network namespace: "
                                     f"{made.stderr.strip()}")
            self._made.append(ns)
            self._sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
            self._sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The rest of the Internet, as a sink: the default route leads out of veth inet0 to
        # a gateway MAC nobody has (its peer inet1 discards the frames), so what is sent to
        # an address no lab network has (a home's private address: TURN clients ask coturn
        # to reach those too) vanishes silently. Without any route coturn's send fails with
        # ENETUNREACH and coturn drops the whole allocation (no dummy module here).
        _run(["ip", "-n", self.public, "link", "add", "inet0", "index", str(next(_index)),
              "type", "veth", "peer", "name", "inet1", "index", str(next(_index))])
        for dev in ("inet0", "inet1"):
            _run(["ip", "-n", self.public, "link", "set", dev, "up"])
        _run(["ip", "-n", self.public, "neigh", "add", SINK, "lladdr", "02:00:00:00:00:01",
              "dev", "inet0", "nud", "permanent"])
        routers = [(self.router1, WAN1)]
        if self.router2 is not None:
            routers.append((self.router2, WAN2))
        for n, (router, wan) in enumerate(routers, 1):
            self._veth(router, "wan0", self.public, f"wan{n}", f"{wan}/24")
            self._sysctl(router, "net.ipv4.ip_forward", 1)
            self._nat(router)
        self._bridge(self.public, "br0", f"{PUBLIC}/24", [f"wan{n}" for n in (1, 2)][
            :len(routers)])
        _run(["ip", "-n", self.public, "route", "add", "default", "via", SINK, "dev", "inet0",
              "onlink"])
        if self.variant == "lan":
            for n, home in enumerate((self.home1, self.home2), 1):
                self._veth(home, "eth0", self.router1, f"home{n}",
                           f"{self.addresses[home]}/24")
            self._bridge(self.router1, "lan0", f"{LAN1_GW}/24", ["home1", "home2"])
        else:
            assert self.router2 is not None
            for home, router, gw in ((self.home1, self.router1, LAN1_GW),
                                     (self.home2, self.router2, LAN2_GW)):
                self._veth(home, "eth0", router, "lan0", f"{self.addresses[home]}/24")
                _run(["ip", "-n", router, "addr", "add", f"{gw}/24", "dev", "lan0"])
        self._wait_carrier()
        for home in (self.home1, self.home2):
            gw = LAN2_GW if home == self.home2 and self.variant != "lan" else LAN1_GW
            _run(["ip", "-n", home, "route", "add", "default", "via", gw])
        self._start_coturn()

    def _sysctl(self, ns: str, key: str, value: int) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def _bridge(self, ns: str, name: str, address: str, ports: Sequence[str]) -> None:
        """A bridge over `ports` (veth ends already up), brought up last: it opens with a
        carrier, so its queue is live at once. Brought up empty, it would get its carrier
        from a port later, and the kernel would activate its queue (until then every frame
        it sends is dropped) only at the next non-urgent link event, up to a second on."""
        _run(["ip", "-n", ns, "link", "add", name, "index", str(next(_index)), "type",
              "bridge", "forward_delay", "0", "stp_state", "0"])
        _run(["ip", "-n", ns, "addr", "add", address, "dev", name])
        for port in ports:
            _run(["ip", "-n", ns, "link", "set", port, "master", name])
        _run(["ip", "-n", ns, "link", "set", name, "up"])

    def _veth(self, ns: str, name: str, peer_ns: str, peer: str, address: str) -> None:
        """A veth pair: `name` (with `address`) in `ns`, `peer` (no address) in `peer_ns`,
        both up."""
        made = _run(["ip", "-n", ns, "link", "add", name, "index", str(next(_index)), "type",
                     "veth", "peer", "name", peer, "index", str(next(_index)), "netns",
                     peer_ns], check=False)
        if made.returncode != 0:
            raise LabUnavailable(f"kernel cannot create veth pairs: {made.stderr.strip()}")
        _run(["ip", "-n", ns, "addr", "add", address, "dev", name])
        _run(["ip", "-n", ns, "link", "set", name, "up"])
        _run(["ip", "-n", peer_ns, "link", "set", peer, "up"])

    def _nat(self, router: str) -> None:
        """Masquerade on wan0 (fully-random for "apdm"), and drop unsolicited inbound UDP
        on wan0 (to the router itself or through it, unless a forward() made it expected)
        without an ICMP answer."""
        mode = " fully-random" if self.variant == "apdm" else ""
        ruleset = "\n".join([
            "table ip natlab {",
            "  chain post {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    oifname "wan0" masquerade{mode}',
            "  }",
            "  chain input {",
            "    type filter hook input priority filter; policy accept;",
            '    iifname "wan0" meta l4proto udp ct state new drop',
            "  }",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            '    iifname "wan0" ct status dnat accept',  # forward(): a forwarded port
            '    iifname "wan0" ct state new drop',
            "  }",
            "}",
        ]) + "\n"
        _run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=ruleset)

    def _wait_carrier(self, timeout: float = 5.0) -> None:
        """Wait until every veth end is operationally UP (until then it drops what it is
        given) and every bridge has its carrier and a live queue (a bridge's operstate is
        updated only at the kernel's next non-urgent link event, up to a second later, but
        it forwards and sends from the moment its queue is live: see _bridge)."""
        deadline = time.monotonic() + timeout
        while True:
            down = []
            for ns in self.namespaces:
                links = json.loads(_run(["ip", "-n", ns, "-j", "-d", "link", "show"]).stdout)
                for link in links:
                    if link["ifname"] == "lo":
                        continue
                    if link.get("linkinfo", {}).get("info_kind") == "bridge":
                        ready = "LOWER_UP" in link["flags"] and link.get("qdisc") != "noop"
                    else:
                        ready = link.get("operstate") == "UP"
                    if not ready:
                        down.append(f"{ns}/{link['ifname']}")
            if not down:
                return
            if time.monotonic() > deadline:
                raise LabUnavailable(f"links never came up: {', '.join(down)}")
            time.sleep(0.02)  # pacing between polls of the link state, not a guessed wait

    def _start_coturn(self) -> None:
        turnserver = turnserver_path()
        assert turnserver is not None
        argv = [turnserver, "-n", "--listening-ip", PUBLIC, "--relay-ip", PUBLIC,
                "--listening-port", str(TURN_PORT), "--min-port", str(RELAY_PORTS.start),
                "--max-port", str(RELAY_PORTS.stop - 1), "--lt-cred-mech", "--realm", REALM,
                "--user", f"{TURN_USER}:{self.turn_password}", "--fingerprint",
                "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log", "--simple-log",
                "--log-file", str(self.tmp / "turn.log"), "--userdb",
                str(self.tmp / "turndb"), "--pidfile", str(self.tmp / "turn.pid"),
                "--verbose"]
        self.coturn = Daemon(argv, netns=self.public, log=self.tmp / "turn.out",
                             label="coturn")
        self._daemons.append(self.coturn)
        deadline = time.monotonic() + START_TIMEOUT
        sock = self.socket(self.public, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            while not stun_binding(sock, self.stun, 0.1):
                self.coturn.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"coturn did not answer STUN at {self.stun} within "
                                       f"{START_TIMEOUT} s; log:\n{self.turn_log()[-4000:]}")

    def turn_log(self) -> str:
        """coturn's log (its --log-file, and whatever it wrote to stdout/stderr)."""
        text = ""
        for name in ("turn.out", "turn.log"):
            with contextlib.suppress(OSError):
                text += (self.tmp / name).read_text(errors="replace")
        return text

    def teardown(self) -> None:
        """Stop what the lab started, then end every process left in its namespaces one by
        one, delete the namespaces and the temporary directory; never raises."""
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.close(timeout=1.0)
        self._procs.clear()
        for daemon in self._daemons:
            daemon.stop()
        self._daemons.clear()
        for ns in self._made:
            with contextlib.suppress(Exception):
                for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "del", ns], check=False)
        self._made.clear()
        with contextlib.suppress(Exception):
            self._tmp.cleanup()

    def __enter__(self) -> NatLab:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # ---- running things inside ------------------------------------------------------------

    def script(self, code: str, name: str = "script") -> Path:
        """`code` written to a fresh file in the lab's temporary directory."""
        path = self.tmp / f"{name}-{next(_counter)}.py"
        path.write_text(code)
        return path

    def _python_argv(self, ns: str, code: str, args: Sequence[str], tree: bool) -> list[str]:
        env = [f"PYTHONPATH={ROOT}"] if tree else []
        return ["ip", "netns", "exec", ns, "env", *env, python(), "-P",
                str(self.script(code)), *args]

    def spawn(self, ns: str, code: str, *args: str, tree: bool = False,
              label: str | None = None) -> NsProcess:
        """Start `code` with the .venv python in `ns` (JSON lines on stdin/stdout, stderr
        kept; see tests/netns.py NsProcess); closed at teardown at the latest. `tree`: the
        child imports taps_post from this working tree (PYTHONPATH), not the installed
        copy."""
        proc = NsProcess(self._python_argv(ns, code, args, tree),
                         label=label or f"python in {ns}")
        self._procs.append(proc)
        return proc

    def run_python(self, ns: str, code: str, *args: str, timeout: float = 20.0,
                   tree: bool = False) -> list[Any]:
        """Run `code` in `ns` to its end; every non-empty stdout line parsed as JSON, or an
        AssertionError with its stderr."""
        argv = self._python_argv(ns, code, args, tree)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 env=python_env(), check=False)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"python in {ns} did not finish within {timeout} s; "
                                 f"stderr:\n{exc.stderr!r}") from None
        if out.returncode != 0:
            raise AssertionError(f"python in {ns} failed ({out.returncode}):\n{out.stderr}")
        try:
            return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        except ValueError:
            raise AssertionError(f"python in {ns} printed a non-JSON line:\n{out.stdout}\n"
                                 f"stderr:\n{out.stderr}") from None

    def daemon(self, ns: str, argv: Sequence[str], *, label: str, tree: bool = False) -> Daemon:
        """Start a server process in `ns` (stopped at teardown at the latest); its output
        goes to a log file in the lab's directory (`daemon.log()`). `tree`: python children
        import this working tree."""
        env = python_env()
        if tree:
            env["PYTHONPATH"] = str(ROOT)
        log = self.tmp / f"{label.replace(' ', '-')}-{next(_counter)}.log"
        proc = Daemon(argv, netns=ns, log=log, label=label, env=env, cwd=self.tmp)
        self._daemons.append(proc)
        return proc

    def identity(self, name: str) -> tuple[Path, Path]:
        """The lab's certificate and key files for identity `name` (made on first use)."""
        pem, key = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        if not pem.exists():
            write_identity(self.tmp, name)
        return pem, key

    def start_point(self, trust: Sequence[str]) -> Point:
        """`taps-post rendezvous serve` (python -m taps_post.cli, this working tree) in the
        public namespace on PUBLIC:POINT_PORT, with a fresh certificate for PUBLIC,
        trusting the certificates of the identities `trust` (self.identity()); returns
        once it printed `listening on`; stopped at teardown."""
        cert, key = write_identity(self.tmp, "point", [PUBLIC])
        argv = [python(), "-P", "-m", "taps_post.cli", "rendezvous", "serve", "--listen",
                f"{PUBLIC}:{POINT_PORT}", "--certificate", str(cert), str(key)]
        for name in trust:
            argv += ["--trust", str(self.identity(name)[0])]
        daemon = self.daemon(self.public, argv, label="rendezvous point", tree=True)
        deadline = time.monotonic() + POINT_START_TIMEOUT
        while "listening on" not in daemon.log():
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rendezvous point did not listen within "
                                   f"{POINT_START_TIMEOUT} s; log:\n{daemon.log()[-4000:]}")
            time.sleep(0.02)  # pacing between reads of its log, not a guessed wait
        return Point(daemon, cert)

    def socket(self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        """A socket made inside `ns` (Rule 5), usable from this process."""
        return in_namespace(ns, lambda: socket.socket(family, type, proto))

    def forward(self, home: str, port: int) -> tuple[str, int]:
        """Forward UDP `port` on `home`'s router WAN address to the same port of `home`
        (a home router's port forwarding, DNAT), so a peer reaches it without ICE: for the
        benchmark's plain-QUIC baseline. The address:port to use from outside."""
        router = self.router1 if home == self.home1 or self.router2 is None else self.router2
        ruleset = "\n".join([
            "table ip natlab_fwd {",
            "  chain pre {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f'    iifname "wan0" udp dport {port} dnat to {self.addresses[home]}:{port}',
            "  }",
            "}",
        ]) + "\n"
        _run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=ruleset)
        return self.wan[home], port

    def capture(self, ns: str | None = None) -> Capture:
        """Start capturing every frame in `ns` (default: the public network, where coturn
        and the rendezvous point live and every packet between the homes passes)."""
        sock = self.socket(ns or self.public, socket.AF_PACKET, socket.SOCK_RAW,
                           socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        return Capture(sock)


class PeerPair:
    """Two RENDEZVOUS_PEER processes: `who[0]` in home1, `who[1]` in home2 (closed with
    the pair, or at the lab's teardown at the latest)."""

    def __init__(self, lab: NatLab, who: tuple[str, str]) -> None:
        self.lab = lab
        self.who = who
        self.procs: list[NsProcess] = [
            lab.spawn(home, RENDEZVOUS_PEER, tree=True, label=f"{me} in {home}")
            for home, me in ((lab.home1, who[0]), (lab.home2, who[1]))]

    def both(self, cmds: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Send each peer its command at once, then read both answers (UnexpectedReply,
        with the peer's stderr, when a command raised)."""
        for proc, cmd in zip(self.procs, cmds, strict=True):
            proc.send(cmd)
        return [proc.answer(timeout) for proc in self.procs]

    def meet(self, point: Point, policy: Path, timeout: float = 30.0
             ) -> list[dict[str, Any]]:
        """Both initiate at once with app policy file `policy`; their `ready`/`error`
        answers, each with the end of its process's stderr under "stderr"."""
        cmds = []
        for me, peer in ((self.who[0], self.who[1]), (self.who[1], self.who[0])):
            cert, key = self.lab.identity(me)
            cmds.append({"cmd": "meet", "me": me, "peer": peer, "cert": str(cert),
                         "key": str(key), "point": point.url, "point_cert": str(point.cert),
                         "policy": str(policy)})
        results = self.both(cmds, timeout)
        for proc, res in zip(self.procs, results, strict=True):
            res["stderr"] = proc.stderr[-3000:]
        return results

    def exchange(self, marker: str, count: int, timeout: float = 60.0
                 ) -> list[dict[str, Any]]:
        cmd = {"cmd": "exchange", "marker": marker, "count": count, "timeout": timeout}
        return self.both([cmd, cmd], timeout + 10)

    def hang_up(self) -> None:
        """Close both carriers (the processes stay, for the next meet)."""
        self.both([{"cmd": "close"}, {"cmd": "close"}], 10)

    def close(self) -> None:
        for proc in self.procs:
            proc.close()

    def __enter__(self) -> PeerPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def both_ready_ms(a: dict[str, Any], b: dict[str, Any]) -> float:
    """From the first of the two initiate() calls to the later carrier ready (ms): two
    `ready` answers of PeerPair.meet (time.monotonic() is one clock for all processes)."""
    return float(max(a["t_ready"], b["t_ready"]) - min(a["t_go"], b["t_go"])) * 1000


class LabUnavailable(Exception):
    """The kernel or tools cannot build the lab: the test skips."""


def _skip_or_raise(reason: str) -> None:
    if "pytest" in sys.modules:
        import pytest
        pytest.skip(reason)
    raise RuntimeError(reason)


@contextlib.contextmanager
def nat_lab(variant: str = "eim", *, prefix: str = "nl") -> Iterator[NatLab]:
    """Build the lab, yield it, always tear it down; under pytest skip when impossible."""
    reason = skip_reason()
    if reason is not None:
        _skip_or_raise(reason)
    lab = NatLab(variant, prefix=prefix)
    try:
        lab.__enter__()
    except LabUnavailable as exc:
        _skip_or_raise(str(exc))
    try:
        yield lab
    finally:
        lab.teardown()


def natlab_fixture(name: str, variant: str = "eim", *,
                   scope: str = "module") -> Callable[..., Iterator[NatLab]]:
    """A pytest fixture named `name` yielding a NatLab of `variant` (module-scoped by
    default: building one costs about half a second; assign it at module level)."""
    import pytest

    def fixture() -> Iterator[NatLab]:
        with nat_lab(variant) as lab:
            yield lab

    return pytest.fixture(scope=scope, name=name)(fixture)  # type: ignore[call-overload,no-any-return]
