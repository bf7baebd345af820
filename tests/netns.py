"""A reusable two-host, two-path network-namespace topology for runtime tests.

    host A (client)                               host B (server)
    veth-a1 198.18.1.1/24 fd00:1::1/64  <-- path 1 -->  veth-b1 198.18.1.2/24 fd00:1::2/64
    veth-a2 198.18.2.1/24 fd00:2::1/64  <-- path 2 -->  veth-b2 198.18.2.2/24 fd00:2::2/64

Addresses come only from 198.18.0.0/15 (benchmarking) and fd00::/8 (ULA); IPv6 addresses are
added `nodad` so they are usable at once. With `cross_routes` (the default), A also has a
higher-metric route to each of B's subnets over the *other* path, so a socket bound to either
interface (SO_BINDTODEVICE, as the stacks do) reaches either of B's addresses: every
(interface, remote address) candidate of a decision is then a real, working path, and black
holes are made with nftables rules in B, not by missing routes.

Usage:

    with topology() as topo:                       # or: topo = topology_fixture()
        topo.hosts(topo.a, {"svc": [B1_V6, B2_V4]})
        topo.resolv_conf(topo.a, [B1_V4])          # A's /etc/resolv.conf (tests/dnslab.py)
        topo.blackhole(topo.b, daddr=B1_V6)        # nft drop: SYNs time out
        with topo.spawn(topo.b, SERVER, "5001") as server:   # JSON lines in and out
            assert server.read_json(5) == {"port": 5001}
            out = topo.run_python(topo.a, CLIENT, "svc", timeout=10)  # last line, as JSON

Scripts that take commands prepend COMMAND_LOOP (`command_loop(handle)`: a JSON line in,
one out, `{"unexpected": ...}` when the handler raised) and are driven with
`NsProcess.ask(cmd, timeout)`, which raises UnexpectedReply (an AssertionError, with the
script's stderr) on such a reply; SERVE_CARRIERS gives a listener script `serve_carriers()`,
and ECHO_LISTENER is a whole echo server (`echo:` + each message) on port `argv[1]`.

Everything is torn down (processes killed, namespaces and their /etc/netns files deleted)
even when a test fails. Without root or without `ip netns`, the fixture skips with the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

A1_V4, A1_V6, B1_V4, B1_V6 = "198.18.1.1", "fd00:1::1", "198.18.1.2", "fd00:1::2"
A2_V4, A2_V6, B2_V4, B2_V6 = "198.18.2.1", "fd00:2::1", "198.18.2.2", "fd00:2::2"
A1, A2, B1, B2 = "veth-a1", "veth-a2", "veth-b1", "veth-b2"
"""Interface names; they live inside the namespaces, so they need not be unique per run."""

PATHS: dict[int, dict[str, str]] = {
    1: {"a_if": A1, "b_if": B1, "a4": A1_V4, "a6": A1_V6, "b4": B1_V4, "b6": B1_V6},
    2: {"a_if": A2, "b_if": B2, "a4": A2_V4, "a6": A2_V6, "b4": B2_V4, "b6": B2_V6},
}

_counter = itertools.count(1)

NOBODY = 65534
"""The unprivileged user and group a namespace script can become (`drop_privileges`)."""

DROP_PRIVILEGES = r'''
def drop_privileges(uid=65534, gid=65534):
    """Become `uid`/`gid` with no supplementary group and no capability left: the calls
    `setpriv --reuid --regid --clear-groups` makes, made from inside, because the venv's
    interpreter may live where that user cannot read (a pyenv under /root). Import what
    you need first: afterwards, files only root may read stay closed."""
    import os
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    with open("/proc/self/status") as fh:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    if int(status["CapEff"], 16) or int(status["CapPrm"], 16) or os.geteuid() != uid:
        raise SystemExit(f"still privileged: {status['CapEff']} uid {os.geteuid()}")
    return {"uid": os.geteuid(), "gid": os.getegid(), "cap_eff": status["CapEff"]}
'''
"""Python source defining `drop_privileges()`, to paste into a namespace script (`exec` it or
prepend it): run as root, import, then drop, and the kernel judges the rest as `nobody`."""


COMMAND_LOOP = r'''
import asyncio, json, sys

async def command_loop(handle):
    """Answer JSON commands read from stdin, one a line, until EOF: each with the JSON
    object `await handle(command)` returns, or {"unexpected": repr(exc)} when it raised
    (NsProcess.ask() turns that into a failure naming it, with this process's stderr)."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        try:
            out = await handle(json.loads(line))
        except Exception as exc:
            out = {"unexpected": repr(exc)}
        print(json.dumps(out), flush=True)
'''
"""Python source defining `command_loop(handle)`, the stdin/stdout driver of a namespace
script that takes commands: prepend it (`CLIENT = COMMAND_LOOP + r\"\"\"...\"\"\"`)."""

SERVE_CARRIERS = r'''
import asyncio

_SERVING = set()

def serve_carriers(listener, serve, *, streams=False):
    """Run `serve(carrier)` as a task for every carrier `listener` accepts, and with
    `streams` for every further stream a peer opens on one (QUIC); the tasks are kept
    referenced until done (the loop holds only weak references)."""
    def accept(carrier):
        if streams:
            carrier.accept(accept)
        task = asyncio.ensure_future(serve(carrier))
        _SERVING.add(task)
        task.add_done_callback(_SERVING.discard)

    listener.accept(accept)
'''
"""Python source defining `serve_carriers(listener, serve, streams=False)`; prepend it."""

ECHO_LISTENER = SERVE_CARRIERS + r'''
import asyncio, json, sys
import taps_post as tp

args = sys.argv[1:]
CERT = None
if "--certificate" in args:
    i = args.index("--certificate")
    CERT = tp.certs.Certificate.from_files(args[i + 1], args[i + 2])
    del args[i:i + 3]
PORTS = [int(p) for p in args]

async def echo(carrier):
    try:
        async for msg in carrier:
            await carrier.send(b"echo:" + bytes(msg))
    except tp.ConnectionClosedError:
        pass
    finally:
        await carrier.close()

async def main():
    policy = tp.PolicyContext(system=[], app_name="srv")
    local = {"certificates": [CERT]} if CERT is not None else {}
    listeners = [await tp.listen(tp.Local(port=p, **local), policy=policy) for p in PORTS]
    for listener in listeners:
        serve_carriers(listener, echo)
    print(json.dumps({"ports": listeners[0].ports}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    for listener in listeners:
        await listener.close()

asyncio.run(main())
'''
"""A whole namespace script: taps_post Listeners (default policy) on the ports `argv[1:]`
(`--certificate CERT KEY` anywhere among them: with that identity, so the secure stacks are
served too) that answer each message with `echo:` + the message; prints the first
listener's `{"ports": ...}` once all accept, stops at stdin's EOF (NsProcess.close())."""


class UnexpectedReply(AssertionError):
    """A namespace script answered a command with {"unexpected": ...} (COMMAND_LOOP)."""


def python_env() -> dict[str, str]:
    """The environment a namespace subprocess gets: the installed package, unbuffered output
    (no PYTHONPATH: a child must import what `pip install` put in the venv)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 10.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                         input=input, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): "
                           f"{out.stderr.strip() or out.stdout.strip()}")
    return out


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    try:
        listed = _run(["ip", "netns", "list"], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable: {exc}"
    if listed.returncode != 0:
        return f"`ip netns` is unavailable: {listed.stderr.strip()}"
    return None


class NsProcess:
    """A subprocess running inside a namespace, speaking JSON lines on stdin/stdout.

    stderr goes to a temporary file (never a pipe nobody drains), and is quoted in errors.
    """

    def __init__(self, argv: Sequence[str], *, label: str) -> None:
        self.label = label
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=python_env())
        self._buf = b""

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def read_line(self, timeout: float) -> str:
        """The next stdout line, waiting at most `timeout` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.label}: no output line within {timeout} s; "
                                   f"stderr:\n{self.stderr}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"{self.label} exited ({self.proc.poll()}) before writing a "
                               f"line; stdout so far {self._buf!r}; stderr:\n{self.stderr}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def read_json(self, timeout: float) -> Any:
        line = self.read_line(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise AssertionError(f"{self.label} printed a non-JSON line {line!r}; "
                                 f"stderr:\n{self.stderr}") from None

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, obj: Any, timeout: float) -> Any:
        """Send one command line, return the JSON line it answers with."""
        self.send(obj)
        return self.read_json(timeout)

    def answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON object line; UnexpectedReply (with the end of stderr) if it is a
        COMMAND_LOOP error reply."""
        out: dict[str, Any] = self.read_json(timeout)
        if "unexpected" in out:
            raise UnexpectedReply(f"{self.label}: {out['unexpected']}; "
                                  f"stderr:\n{self.stderr[-4000:]}")
        return out

    def ask(self, obj: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Send one command, return its answer; UnexpectedReply if the command raised."""
        self.send(obj)
        return self.answer(timeout)

    def close(self, timeout: float = 3.0) -> None:
        """Close stdin (the scripts here exit on EOF), then kill whatever is left."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> NsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Topology:
    """Two namespaces joined by two veth pairs; see the module docstring for the addresses."""

    def __init__(self, prefix: str = "tp", *, cross_routes: bool = True) -> None:
        tag = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.a = f"{tag}-a"
        self.b = f"{tag}-b"
        self.cross_routes = cross_routes
        self._made: list[str] = []
        self._procs: list[NsProcess] = []
        self._egress: dict[str, list[str]] = {}
        """Per namespace, the interfaces count_egress() counts, in counter order."""
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{tag}-")
        self.tmp = Path(self._tmp.name)

    # ---- lifecycle ------------------------------------------------------------------------

    def build(self) -> None:
        for ns in (self.a, self.b):
            _run(["ip", "netns", "del", ns], check=False)  # leftover from a crash, same pid
            made = _run(["ip", "netns", "add", ns], check=False)
            if made.returncode != 0:
                raise _Unavailable(f"cannot create a network namespace: {made.stderr.strip()}")
            self._made.append(ns)
            # No duplicate address detection for the kernel's link-local addresses either
            # (`nodad` covers only ours): no tentative addresses, no DAD traffic in tests.
            self.exec(ns, "sh", "-c", "for k in all default; do "
                      "echo 0 > /proc/sys/net/ipv6/conf/$k/accept_dad; done", check=False)
        for n, p in PATHS.items():
            self._veth(n, p)
        for ns in (self.a, self.b):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._wait_carrier()
        if self.cross_routes:
            # A reaches each of B's subnets over the other path too (higher metric, so
            # unbound sockets still take the direct path).
            for here, there in ((1, 2), (2, 1)):
                ph = PATHS[here]
                _run(["ip", "-n", self.a, "route", "add", f"198.18.{there}.0/24", "via",
                      ph["b4"], "dev", ph["a_if"], "metric", "1000"])
                _run(["ip", "-n", self.a, "-6", "route", "add", f"fd00:{there}::/64", "via",
                      ph["b6"], "dev", ph["a_if"], "metric", "1000"])

    def _veth(self, n: int, p: dict[str, str]) -> None:
        """Path `n`: the veth pair named and addressed as `p` says, up on both ends."""
        # Distinct ifindexes on the two ends (A: 1n, B: 2n): a veth whose ifindex equals its
        # peer's is not an "urgent" linkwatch event, and its carrier shows up ~1 s late.
        veth = _run(["ip", "-n", self.a, "link", "add", p["a_if"], "index", f"1{n}",
                     "type", "veth", "peer", "name", p["b_if"], "index", f"2{n}",
                     "netns", self.b], check=False)
        if veth.returncode != 0:
            raise _Unavailable(f"kernel cannot create veth pairs: {veth.stderr.strip()}")
        for ns, side in ((self.a, "a"), (self.b, "b")):
            dev = p[f"{side}_if"]
            _run(["ip", "-n", ns, "addr", "add", f"{p[side + '4']}/24", "dev", dev])
            _run(["ip", "-n", ns, "-6", "addr", "add", f"{p[side + '6']}/64", "dev", dev,
                  "nodad"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def _wait_carrier(self, timeout: float = 5.0) -> None:
        """Wait until every veth end is operationally UP: until then the device drops what
        it is given, and the first SYN of a test would be retransmitted a second later."""
        deadline = time.monotonic() + timeout
        while True:
            down = []
            for ns in (self.a, self.b):
                links = json.loads(_run(["ip", "-n", ns, "-j", "link", "show"]).stdout)
                down += [f"{ns}/{link['ifname']}" for link in links
                         if link["ifname"].startswith("veth") and link.get("operstate") != "UP"]
            if not down:
                return
            if time.monotonic() > deadline:
                raise _Unavailable(f"veth links never came up: {', '.join(down)}")
            # Pacing between checks of the kernel's link state, not a guessed wait: the
            # loop returns as soon as every link is UP.
            time.sleep(0.02)

    def teardown(self) -> None:
        """Kill our processes, delete our namespaces and /etc/netns entries; never raises,
        so one failing step does not leave the rest behind."""
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.close(timeout=1.0)
        self._procs.clear()
        for ns in self._made:
            with contextlib.suppress(Exception):
                # Only processes we started run in our namespaces; end them one by one.
                for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self._made.clear()
        self._tmp.cleanup()

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # ---- running things inside ------------------------------------------------------------

    def exec(self, ns: str, *argv: str, check: bool = True, timeout: float = 10.0,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout,
                    input=input)

    def _script(self, code: str) -> str:
        path = self.tmp / f"script-{next(_counter)}.py"
        path.write_text(code)
        return str(path)

    def run_python(self, ns: str, code: str, *args: str, timeout: float = 20.0) -> Any:
        """Run `code` with the venv's python inside `ns`; return its stdout parsed as JSON
        (the last non-empty line), or raise with its stderr."""
        argv = ["ip", "netns", "exec", ns, sys.executable, "-P", self._script(code), *args]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 env=python_env(), check=False)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"python in {ns} did not finish within {timeout} s; "
                                 f"stderr:\n{exc.stderr!r}") from None
        if out.returncode != 0:
            raise AssertionError(f"python in {ns} failed ({out.returncode}):\n{out.stderr}")
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        if not lines:
            raise AssertionError(f"python in {ns} printed nothing; stderr:\n{out.stderr}")
        return json.loads(lines[-1])

    def spawn(self, ns: str, code: str, *args: str) -> NsProcess:
        """Start `code` inside `ns` (killed at teardown at the latest)."""
        proc = NsProcess(["ip", "netns", "exec", ns, sys.executable, "-P", self._script(code),
                          *args],
                         label=f"python in {ns}")
        self._procs.append(proc)
        return proc

    # ---- names and black holes ------------------------------------------------------------

    def hosts(self, ns: str, names: dict[str, Sequence[str]]) -> None:
        """Give `ns` its own /etc/hosts (`ip netns exec` bind-mounts /etc/netns/NS/hosts)."""
        directory = Path("/etc/netns") / ns
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{addr} {name}" for name, addrs in names.items() for addr in addrs]
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    def resolv_conf(self, ns: str, nameservers: Sequence[str],
                    options: Sequence[str] = ()) -> Path:
        """Give `ns` its own /etc/resolv.conf (`ip netns exec` bind-mounts
        /etc/netns/NS/resolv.conf over it): `nameserver` lines in order, one `options` line
        (e.g. "timeout:1", "trust-ad"); removed at teardown like the hosts file. Used with the
        DNS lab (tests/dnslab.py)."""
        directory = Path("/etc/netns") / ns
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"nameserver {addr}" for addr in nameservers]
        if options:
            lines.append("options " + " ".join(options))
        path = directory / "resolv.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def nft(self, ns: str, ruleset: str) -> None:
        """Load an nftables ruleset (text, as for `nft -f`) inside `ns`."""
        if shutil.which("nft") is None:
            pytest.skip("`nft` (nftables) is not installed; CI installs it")
        self.exec(ns, "nft", "-f", "-", input=ruleset)

    def blackhole(self, ns: str, *, daddr: str | None = None, saddr: str | None = None,
                  action: str = "drop", tcp_only: bool = True) -> None:
        """Drop (default: SYNs time out) or `reject with tcp reset` packets entering `ns`
        that go to `daddr` and/or come from `saddr`."""
        match: list[str] = []
        for word, addr in (("daddr", daddr), ("saddr", saddr)):
            if addr is not None:
                match += ["ip6" if ":" in addr else "ip", word, addr]
        if tcp_only:
            match += ["meta", "l4proto", "tcp"]
        verdict = {"drop": "drop", "reject": "reject with tcp reset"}[action]
        self.nft(ns, "\n".join([
            "table inet bh {",
            "  chain in { type filter hook input priority 0; policy accept; }",
            "}",
            f"add rule inet bh in {' '.join(match)} {verdict}",
        ]) + "\n")

    def clear_blackholes(self, ns: str) -> None:
        self.exec(ns, "nft", "delete", "table", "inet", "bh", check=False)

    # ---- egress counters ------------------------------------------------------------------

    def count_egress(self, ns: str, interfaces: Sequence[str], *, ports: Sequence[int]) -> None:
        """nftables counters in `ns`, one per interface, of the TCP and UDP packets to
        `ports` that leave by it. They count in postrouting, after the kernel chose the
        interface, so they see where a flow really went, whatever the socket asked for."""
        dports = ", ".join(str(p) for p in ports)
        lines = ["table inet egress {"]
        lines += [f"  counter c{n} {{ }}" for n in range(len(interfaces))]
        lines += ["  chain post {", "    type filter hook postrouting priority 0; policy accept;"]
        lines += [f'    oifname "{name}" meta l4proto {{ tcp, udp }} th dport {{ {dports} }} '
                  f'counter name "c{n}"' for n, name in enumerate(interfaces)]
        lines += ["  }", "}"]
        self.exec(ns, "nft", "delete", "table", "inet", "egress", check=False)
        self.nft(ns, "\n".join(lines) + "\n")
        self._egress[ns] = list(interfaces)

    def egress_packets(self, ns: str) -> dict[str, int]:
        """Packets counted per interface since count_egress() or reset_egress()."""
        listed = json.loads(self.exec(ns, "nft", "-j", "list", "counters", "table", "inet",
                                      "egress").stdout)
        by_name = {item["counter"]["name"]: item["counter"]["packets"]
                   for item in listed["nftables"] if "counter" in item}
        return {name: by_name[f"c{n}"] for n, name in enumerate(self._egress[ns])}

    def reset_egress(self, ns: str) -> None:
        self.exec(ns, "nft", "reset", "counters", "table", "inet", "egress")


    # ---- links, rates and MPTCP (multipath tests) ----------------------------------------

    def link(self, ns: str, dev: str, *, up: bool) -> None:
        """Take an interface down or bring it back (`ip link set DEV down|up`); bringing it
        up waits until it is operationally UP again."""
        _run(["ip", "-n", ns, "link", "set", dev, "up" if up else "down"])
        if up:
            self._wait_carrier()

    def address(self, ns: str, dev: str, address: str, *, present: bool) -> None:
        """Add (`present=True`) or remove an address (/24 for IPv4, /64 for IPv6)."""
        prefix = "64" if ":" in address else "24"
        argv = ["ip", "-n", ns, *(["-6"] if ":" in address else []), "addr",
                "add" if present else "del", f"{address}/{prefix}", "dev", dev]
        if present and ":" in address:
            argv.append("nodad")
        _run(argv)

    def rate_limit(self, ns: str, dev: str, rate: str = "20mbit", *, burst: str = "32kb",
                   latency: str = "50ms") -> None:
        """A token bucket (`tc qdisc ... tbf`) on `dev`'s egress in `ns`: netem is not
        available here, tbf is."""
        _run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
              "rate", rate, "burst", burst, "latency", latency])

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """Set a per-namespace sysctl (e.g. net.mptcp.pm_type) inside `ns`."""
        self.exec(ns, "sysctl", "-q", "-w", f"{key}={value}")

    def mptcp(self, ns: str, *argv: str) -> str:
        """`ip mptcp ARGV...` inside `ns` (endpoint add/flush, limits set); its output."""
        return _run(["ip", "-n", ns, "mptcp", *argv]).stdout

    def add_path(self, n: int = 3) -> dict[str, str]:
        """A further veth pair `veth-aN`/`veth-bN` (198.18.N.0/24, fd00:N::/64), made after
        the topology: for tests of interfaces that appear while a program runs. Returns its
        names and addresses like `PATHS[n]`."""
        p = {"a_if": f"veth-a{n}", "b_if": f"veth-b{n}", "a4": f"198.18.{n}.1",
             "a6": f"fd00:{n}::1", "b4": f"198.18.{n}.2", "b6": f"fd00:{n}::2"}
        self._veth(n, p)
        self._wait_carrier()
        return p


class _Unavailable(Exception):
    """The kernel or tools cannot build the topology: the test skips."""


@contextlib.contextmanager
def topology(prefix: str = "tp", *, cross_routes: bool = True) -> Iterator[Topology]:
    """Build the topology, yield it, and always tear it down; skip when impossible."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    topo = Topology(prefix, cross_routes=cross_routes)
    try:
        topo.__enter__()
    except _Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield topo
    finally:
        topo.teardown()


def topology_fixture(name: str = "topo", *, scope: str = "function", prefix: str = "tp",
                     cross_routes: bool = True) -> Callable[..., Iterator[Topology]]:
    """A pytest fixture named `name` yielding a fresh Topology (assign it at module level:
    `topo = topology_fixture()`)."""

    def fixture() -> Iterator[Topology]:
        with topology(prefix, cross_routes=cross_routes) as topo:
            yield topo

    return pytest.fixture(scope=scope, name=name)(fixture)  # type: ignore[call-overload,no-any-return]
