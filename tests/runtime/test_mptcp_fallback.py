"""MPTCP stacks that say what they are: fallback to TCP, a kernel that refuses MPTCP, and
the kernel's own view of the subflows, against peers that are not ours.

    loopback (this namespace, MPTCP enabled):
      socat TCP-LISTEN                 plain TCP: an `mptcp` carrier falls back to `tcp`
      mptcpize run socat TCP-LISTEN    a plain TCP server forced onto MPTCP: stays `mptcp`
      openssl s_server [-www]          the same two for `tls-mptcp` / `tls`
    netns (tests/netns.py, host A client, host B servers):
      A: net.mptcp.enabled=0           the mptcp attempt fails `unsupported`, the carrier is tcp
      A: endpoint 198.18.2.1 subflow   two subflows, one Path each, on veth-a1 and veth-a2

Rule 1: the kernel is the judge: TCP_IS_MPTCP on our socket (the Transient's `stack` and
`mptcp_fallback`) and, for the subflows, `ss -tni` in the client's namespace (established
TCP subflows carrying the `tcp-ulp-mptcp` ULP), which the carrier's paths must match.
Rule 2: the peers are real programs that know nothing of taps_post (socat, openssl,
mptcpize from Debian's mptcpd); a missing one skips its test with the reason.
Rule 3: history is checked where decide() reads it: the Association's entries, the cache
file written and read back, and the next carrier's first candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp
from dnslab import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import A1, A1_V4, A2, A2_V4, B1_V4, Topology, topology_fixture

MPTCP_OFF = "MPTCP is disabled in this network namespace (net.mptcp.enabled=0 or absent)"


def _mptcp_enabled() -> bool:
    try:
        with open("/proc/sys/net/mptcp/enabled", encoding="ascii") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


needs_mptcp = pytest.mark.skipif(not _mptcp_enabled(), reason=MPTCP_OFF)
needs_socat = pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed (CI installs it)")
needs_mptcpize = pytest.mark.skipif(shutil.which("mptcpize") is None,
                                    reason="mptcpize (Debian mptcpd) is not installed "
                                           "(CI installs it)")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="the openssl command line tool is not installed")


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def peer(argv: Sequence[str], port: int, *, ready: Any = None) -> Iterator[None]:
    """A peer process in a session of its own (socat's forked children die with it),
    killed afterwards; `ready()` (default: the port accepts) says it listens."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 5.0
        check = ready or (lambda: _listening(port))
        while not check():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"{argv[0]} did not listen on {port}: {err}")
            time.sleep(0.02)  # polling a child process's readiness, not the code under test
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def socat_echo(port: int, host: str = "127.0.0.1") -> list[str]:
    return ["socat", f"TCP-LISTEN:{port},bind={host},reuseaddr,fork", "EXEC:cat"]


def s_server(port: int, cert: Path, key: Path, host: str = "127.0.0.1") -> list[str]:
    return ["openssl", "s_server", "-accept", f"{host}:{port}", "-www", "-tls1_3",
            "-cert", str(cert), "-key", str(key)]


def policy(**values: Any) -> tp.PolicyContext:
    app = {"version": 1, "layer": "app", "rules": [{"id": "mp", "set": values}]}
    return tp.PolicyContext(system=[], app=app, app_name="t")


PLAIN_OR_MPTCP = {"multipath": "active", "stack.quic": "prohibit", "stack.tls": "prohibit",
                  "stack.tls-mptcp": "prohibit"}
"""Candidates mptcp and tcp only (multipath: active selects mptcp)."""


def summary(carrier: tp.Carrier) -> dict[str, Any]:
    """What a carrier says about itself, as plain values."""
    t = carrier.transient
    assert t is not None and carrier.candidate is not None
    return {
        "stack": carrier.stack, "candidate": carrier.candidate.stack,
        "fallback": getattr(t, "mptcp_fallback", None),
        "token": getattr(t, "mptcp_token", None),
        "transients": [x.stack for x in carrier.transients],
        "attempts": [(a.stack, a.outcome, None if a.kind is None else str(a.kind), a.error)
                     for a in carrier.attempts],
        "paths": [p.to_dict() for p in carrier.paths],
        "subflows": [(s.interface, s.local_address, s.remote_address, s.stats.rtt_ms)
                     for s in t.subflows()],
        "history": [(e.stack, e.outcome, e.interface, e.address)
                    for e in carrier.association.history],
    }


async def echo(carrier: tp.Carrier, data: bytes = b"ping") -> bytes:
    await carrier.send(data)
    return bytes(await carrier.receive())


# ---- loopback: fallback against a plain TCP server ----------------------------------------


@needs_mptcp
@needs_socat
def test_mptcp_to_plain_tcp_server_reports_tcp_fallback_and_history_ranks_tcp_first(
        run: Any, tmp_path: Path) -> None:
    port = free_port()
    cache = tmp_path / "cache.json"

    async def main() -> tuple[dict[str, Any], bytes, dict[str, Any], list[str]]:
        store = tp.AssociationStore(cache)
        carrier = await tp.initiate(f"127.0.0.1:{port}", policy=policy(**PLAIN_OR_MPTCP),
                                    store=store)
        try:
            first = summary(carrier)
            answer = await echo(carrier)
        finally:
            await carrier.close()
        store.save()
        again = tp.AssociationStore(cache)  # the file, validated, is what decides next
        second = await tp.initiate(f"127.0.0.1:{port}", policy=policy(**PLAIN_OR_MPTCP),
                                   store=again)
        try:
            assert second.explanation is not None
            ranked = [c.stack for c in second.explanation.candidates]
            later = summary(second)
            assert await echo(second, b"again") == b"again"
        finally:
            await second.close()
        return first, answer, later, ranked

    with peer(socat_echo(port), port):
        first, answer, later, ranked = run(main())
    assert answer == b"ping"
    assert first["candidate"] == "mptcp", first  # multipath: active ranked it first
    assert first["stack"] == "tcp" and first["fallback"] is True, first
    assert first["transients"] == ["tcp"] and first["token"] is None and not first["subflows"]
    won = [a for a in first["attempts"] if a[1] == "won"]
    assert won == [("mptcp", "won", None, "won as tcp: the peer fell back to plain TCP")], won
    assert len(first["paths"]) == 1 and first["paths"][0]["interface"] == "lo"
    assert "subflow" not in first["paths"][0]  # one path: the connection's own
    assert ("mptcp", "fallback", "lo", "127.0.0.1") in first["history"], first["history"]
    on_disk = json.loads(cache.read_text())["associations"][f"127.0.0.1:{port}"]
    assert {"stack": "mptcp", "outcome": "fallback"}.items() <= on_disk[0].items()
    # The next decision (from the file read back) puts plain TCP first, and it is used.
    assert ranked.index("tcp") < ranked.index("mptcp"), ranked
    assert later["candidate"] == "tcp" and later["stack"] == "tcp", later
    assert later["fallback"] is False  # a plain TCP socket: no MPTCP was asked for


# ---- loopback: a non-ours server forced onto MPTCP (mptcpize) ----------------------------


@needs_mptcp
@needs_socat
@needs_mptcpize
def test_mptcp_to_mptcpize_socat_stays_mptcp_and_lists_its_subflow(run: Any) -> None:
    port = free_port()

    async def main() -> tuple[dict[str, Any], bytes, list[Any]]:
        carrier = await tp.initiate(f"127.0.0.1:{port}", policy=policy(**PLAIN_OR_MPTCP),
                                    store=tp.AssociationStore())
        try:
            answer = await echo(carrier)
            info = summary(carrier)
            paths = carrier.paths
            rtts = [p.rtt_ms for p in paths]  # read afresh from the kernel on each access
        finally:
            await carrier.close()
        return info, answer, rtts

    with peer(["mptcpize", "run", *socat_echo(port)], port):
        info, answer, rtts = run(main())
    assert answer == b"ping"
    assert info["stack"] == info["candidate"] == "mptcp" and info["fallback"] is False, info
    assert isinstance(info["token"], int), info  # MPTCP_INFO: what the path manager names
    assert len(info["subflows"]) == 1, info["subflows"]  # no endpoint on lo: one subflow
    interface, local, remote, rtt = info["subflows"][0]
    assert interface == "lo" and local[0] == "127.0.0.1" and tuple(remote) == ("127.0.0.1",
                                                                             port)
    assert rtt is not None and rtt >= 0
    (path,) = info["paths"]
    assert path["interface"] == "lo" and path["remote_address"] == ["127.0.0.1", port]
    assert path["subflow"]["listed"] is True and path["rtt_ms"] is not None, path
    assert all(r is not None for r in rtts)
    assert ("mptcp", "success", "lo", "127.0.0.1") in info["history"]


# ---- loopback: TLS, openssl s_server plain and mptcpized ---------------------------------


@needs_mptcp
@needs_openssl
@pytest.mark.parametrize("forced", [False, True], ids=["plain-tcp", "mptcpize"])
def test_tls_mptcp_to_openssl_s_server(run: Any, tmp_path: Path, forced: bool) -> None:
    if forced and shutil.which("mptcpize") is None:
        pytest.skip("mptcpize (Debian mptcpd) is not installed (CI installs it)")
    cert = tp.certs.self_signed(["localhost", "127.0.0.1"])
    assert cert.key_pem is not None
    (tmp_path / "cert.pem").write_text(cert.cert_pem)
    (tmp_path / "key.pem").write_text(cert.key_pem)
    port = free_port()
    argv = s_server(port, tmp_path / "cert.pem", tmp_path / "key.pem")

    async def main() -> tuple[dict[str, Any], str]:
        remote = tp.Remote.parse(f"tls://127.0.0.1:{port}", certificates=[cert])
        carrier = await tp.initiate(remote, policy=policy(multipath="active",
                                                          **{"stack.quic": "prohibit"}),
                                    framer=tp.RawFramer(), store=tp.AssociationStore())
        try:
            info = summary(carrier)
            await carrier.send(b"GET / HTTP/1.0\r\n\r\n")
            page = b"".join([bytes(m) async for m in carrier])  # until s_server closes
        finally:
            await carrier.close()
        return info, page.decode(errors="replace")

    with peer(["mptcpize", "run", *argv] if forced else argv, port):
        info, page = run(main())
    assert page.startswith("HTTP/1.0 200 ok\r\n"), page[:200]
    assert info["candidate"] == "tls-mptcp", info
    if forced:
        assert info["stack"] == "tls-mptcp" and info["fallback"] is False, info
        assert len(info["subflows"]) == 1 and info["paths"][0]["subflow"]["listed"]
        assert ("tls-mptcp", "success", "lo", "127.0.0.1") in info["history"]
    else:
        assert info["stack"] == "tls" and info["fallback"] is True, info
        assert not info["subflows"] and len(info["paths"]) == 1
        assert ("tls-mptcp", "fallback", "lo", "127.0.0.1") in info["history"]


# ---- loopback: our MPTCP listener, clients that are not ours ------------------------------


@needs_mptcp
@needs_socat
@needs_mptcpize
def test_our_mptcp_listener_reports_what_each_client_speaks(run: Any) -> None:
    """The accepting side (Rule 7 of stacks/tcp.py): a plain socat client arrives as tcp
    with mptcp_fallback, an mptcpized one as mptcp with its subflow."""
    async def accept_from(listener: tp.Listener, argv: list[str]) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is not None
        proc.stdin.write(b"hello")
        await proc.stdin.drain()
        try:
            async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
                carrier = await anext(it)
            data = bytes(await carrier.receive())
            t = carrier.transient
            assert t is not None
            out = {"data": data, "stack": carrier.stack, "fallback": t.mptcp_fallback,
                   "subflows": [(s.interface, s.local_address[0]) for s in t.subflows()],
                   "paths": [(p.interface, p.subflow is not None) for p in carrier.paths]}
            await carrier.close()
        finally:
            proc.stdin.close()
            await proc.wait()
        return out

    async def main() -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
        listener = await tp.listen(tp.Local(address="127.0.0.1", port=0),
                                   policy=tp.PolicyContext(system=[], app_name="srv"),
                                   framer=tp.RawFramer())
        try:
            client = ["socat", "-t", "5", "-", f"TCP:127.0.0.1:{listener.port}"]
            plain = await accept_from(listener, client)
            forced = await accept_from(listener, ["mptcpize", "run", *client])
            return listener.ports, plain, forced
        finally:
            await listener.close()

    ports, plain, forced = run(main())
    assert "mptcp" in ports, ports  # multipath: passive, the listen default
    # The fallen-back connection is its own one Path (a listener bound to an address, not
    # an interface, does not name one); the MPTCP one is its subflow, named by the kernel.
    assert plain == {"data": b"hello", "stack": "tcp", "fallback": True, "subflows": [],
                     "paths": [(None, False)]}, plain
    assert forced == {"data": b"hello", "stack": "mptcp", "fallback": False,
                      "subflows": [("lo", "127.0.0.1")], "paths": [("lo", True)]}, forced


# ---- policy and history store, no network ------------------------------------------------


def test_multipath_active_selects_the_mptcp_stacks() -> None:
    env = {"interfaces": [{"name": "lo", "type": "loopback", "addresses": ["127.0.0.1"]}],
           "dns": {}, "cache": []}
    active = tp.explain("127.0.0.1:4433", app=policy_doc(multipath="active"), system=[],
                        app_name="t", env=env)
    stacks = [c.stack for c in active.candidates]
    assert stacks.index("mptcp") < stacks.index("tcp"), stacks
    assert stacks.index("tls-mptcp") < stacks.index("tls"), stacks
    default = tp.explain("127.0.0.1:4433", system=[], app_name="t", env=env)
    assert not {"mptcp", "tls-mptcp"} & {c.stack for c in default.candidates}


def policy_doc(**values: Any) -> dict[str, Any]:
    return {"version": 1, "layer": "app", "rules": [{"id": "mp", "set": values}]}


def test_fallback_history_is_validated_in_the_cache_file(tmp_path: Path,
                                                         caplog: Any) -> None:
    cache = tmp_path / "cache.json"
    store = tp.AssociationStore(cache)
    assoc = store.get("svc.example:443")
    assoc.record("tls-mptcp", "fallback", rtt_ms=1.5, interface="lo", address="127.0.0.1")
    assoc.record("tls", "fallback", interface="lo", address="127.0.0.1")  # cannot fall back
    with pytest.raises(ValueError):
        assoc.record("tls", "maybe")
    assert [(e.stack, e.outcome) for e in assoc.history] == [("tls-mptcp", "fallback"),
                                                             ("tls", "success")]
    store.save()
    doc = json.loads(cache.read_text())
    doc["associations"]["svc.example:443"].append(
        {"stack": "udp", "outcome": "fallback"})  # a hand-edited (or hostile) entry
    cache.write_text(json.dumps(doc))
    os.chmod(cache, 0o600)
    with caplog.at_level("WARNING", logger="taps_post.store"):
        loaded = tp.AssociationStore(cache).get("svc.example:443").history
    assert [(e.stack, e.outcome) for e in loaded] == [("tls-mptcp", "fallback"),
                                                      ("tls", "success")]
    assert "not a multipath stack" in caplog.text


# ---- netns: a namespace that refuses MPTCP, and two subflows -----------------------------

topo = topology_fixture(scope="module", prefix="tpmf")

CLIENT = r"""
import asyncio, json, subprocess, sys, time
import taps_post as tp

target, values, interface, cert, wait_paths, warm = (sys.argv[1], json.loads(sys.argv[2]),
                                                     sys.argv[3] or None, sys.argv[4] or None,
                                                     int(sys.argv[5]), sys.argv[6] == "1")

async def main():
    app = {"version": 1, "layer": "app", "rules": [{"id": "t", "set": values}]}
    policy = tp.PolicyContext(system=[], app=app, app_name="t")
    certs = [tp.certs.Certificate.from_files(cert)] if cert else []
    remote = tp.Remote.parse(target, certificates=certs)
    local = tp.Local(interface=interface) if interface else None
    framer = tp.RawFramer() if cert else None
    loop = asyncio.get_running_loop()
    if warm:  # a fresh process's first race pays cold imports and caches: not the timing
        spare = await tp.initiate(remote, local=local, policy=policy, framer=framer,
                                  store=tp.AssociationStore())
        await spare.close()
    started = loop.time()
    started_at = []  # (stack, at_ms since the race started)

    def trace(name, info):
        if name == "attempt.started":
            started_at.append([info["stack"], info["at_ms"]])

    carrier = await tp.initiate(remote, local=local, policy=policy, framer=framer,
                                store=tp.AssociationStore(), trace=trace)
    took = (loop.time() - started) * 1000.0
    try:
        echoed = None
        if not cert:  # data first: MPTCP is fully established (subflows may join) after it
            await carrier.send(b"ping")
            echoed = bytes(await carrier.receive()).decode()
        deadline = loop.time() + 3.0
        while len(carrier.paths) < wait_paths and loop.time() < deadline:
            await asyncio.sleep(0.01)  # the path manager adds the subflow when it will
        t = carrier.transient
        out = {"stack": carrier.stack, "candidate": carrier.candidate.stack,
               "fallback": getattr(t, "mptcp_fallback", None), "took_ms": took,
               "started_at": started_at,
               "attempt_delay_ms": carrier.settings.attempt_delay * 1000.0,
               "attempts": [[a.stack, a.interface, a.outcome,
                             None if a.kind is None else str(a.kind), a.elapsed_ms, a.error]
                            for a in carrier.attempts],
               "paths": [p.to_dict() for p in carrier.paths],
               "reprs": [repr(p) for p in carrier.paths],
               "history": [[e.stack, e.outcome, e.interface] for e in
                           carrier.association.history]}
        if wait_paths:  # Rule 1: the kernel's own listing, while the connection is up
            out["ss"] = subprocess.run(["ss", "-Htni", "state", "established",
                                        f"dport = :{remote.port}"], capture_output=True,
                                       text=True, check=True).stdout
        out["echo"] = echoed
        print(json.dumps(out))
    finally:
        await carrier.close()

asyncio.run(main())
"""


@contextlib.contextmanager
def ns_peer(topo: Topology, ns: str, argv: Sequence[str], host: str,
            port: int) -> Iterator[None]:
    """A non-ours server inside `ns`; ready when `ss` in `ns` lists the listening port."""
    def ready() -> bool:
        out = topo.exec(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    with peer(["ip", "netns", "exec", ns, *argv], port, ready=ready):
        yield


def client(topo: Topology, target: str, values: dict[str, Any], *, interface: str = "",
           cert: str = "", wait_paths: int = 0, warm: bool = False) -> Any:
    """Run CLIENT in host A; with `warm`, one untimed carrier to the same target first."""
    return topo.run_python(topo.a, CLIENT, target, json.dumps(values), interface, cert,
                           str(wait_paths), "1" if warm else "0", timeout=20)


def ss_subflows(out: str) -> set[tuple[str, str]]:
    """Rule 1: the MPTCP subflows `ss -Htni` listed: (local ip, remote ip). Each socket is
    a line `Recv-Q Send-Q local%dev:port peer:port` and an indented detail line naming the
    `tcp-ulp-mptcp` ULP on a subflow."""
    flows: set[tuple[str, str]] = set()
    lines = out.splitlines()
    for i, line in enumerate(lines):
        fields = line.split()
        if line[:1].isspace() or len(fields) < 4:
            continue
        detail = lines[i + 1] if i + 1 < len(lines) and lines[i + 1][:1].isspace() else ""
        if "tcp-ulp-mptcp" in detail:
            local, peer_ = (f.rsplit(":", 1)[0].split("%")[0] for f in fields[2:4])
            flows.add((local, peer_))
    return flows


@needs_socat
@pytest.mark.parametrize("secure", [False, True], ids=["mptcp", "tls-mptcp"])
def test_namespace_refusing_mptcp_fails_unsupported_fast_and_lands_on_plain(
        topo: Topology, tmp_path: Path, secure: bool) -> None:
    port = 5101 if secure else 5100
    if secure:
        cert = tp.certs.self_signed([B1_V4])
        assert cert.key_pem is not None
        (tmp_path / "cert.pem").write_text(cert.cert_pem)
        (tmp_path / "key.pem").write_text(cert.key_pem)
        argv = s_server(port, tmp_path / "cert.pem", tmp_path / "key.pem", host=B1_V4)
        target, values = f"tls://{B1_V4}:{port}", {"multipath": "active",
                                                    "stack.quic": "prohibit"}
    else:
        argv = socat_echo(port, B1_V4)
        target, values = f"{B1_V4}:{port}", PLAIN_OR_MPTCP
    plain, multi = ("tls", "tls-mptcp") if secure else ("tcp", "mptcp")
    topo.sysctl(topo.a, "net.mptcp.enabled", 0)
    try:
        with ns_peer(topo, topo.b, argv, B1_V4, port):
            out = client(topo, target, values, interface=A1,
                         cert=str(tmp_path / "cert.pem") if secure else "", warm=True)
    finally:
        topo.sysctl(topo.a, "net.mptcp.enabled", 1)
    assert out["stack"] == out["candidate"] == plain, out
    refused = [a for a in out["attempts"] if a[0] == multi]
    assert refused and all(a[2] == "failed" and a[3] == "unsupported" for a in refused), out
    delay = out["attempt_delay_ms"]
    # No packet, no timer: the refusal is at once (well under one attemptDelay, even on a
    # loaded machine: the warm-up paid the imports).
    assert all(a[4] < delay for a in refused), (refused, delay)
    assert "refuses MPTCP" in refused[0][5], refused[0]
    # The failure started the plain attempt at once, not one attemptDelay later: within a
    # few ms of the refused attempt's end, and before the delay's timer would have.
    refused_at = min(at for stack, at in out["started_at"] if stack == multi)
    refused_end = refused_at + refused[0][4]
    plain_start = min(at for stack, at in out["started_at"] if stack == plain)
    assert plain_start - refused_end < 10.0, (out["started_at"], refused)
    assert plain_start < delay, (out["started_at"], delay)
    assert [multi, "failure", A1] in out["history"], out["history"]
    if not secure:
        assert out["echo"] == "ping"


@needs_socat
@needs_mptcpize
def test_two_subflows_one_path_each_as_the_kernel_lists_them(topo: Topology) -> None:
    port = 5102
    for ns in (topo.a, topo.b):
        topo.mptcp(ns, "limits", "set", "subflows", "4", "add_addr_accepted", "4")
    topo.mptcp(topo.a, "endpoint", "add", A2_V4, "dev", A2, "subflow")
    try:
        with ns_peer(topo, topo.b, ["mptcpize", "run", *socat_echo(port, B1_V4)], B1_V4,
                     port):
            out = client(topo, f"{B1_V4}:{port}", PLAIN_OR_MPTCP, interface=A1,
                         wait_paths=2)
    finally:
        topo.mptcp(topo.a, "endpoint", "flush")
    assert out["stack"] == "mptcp" and out["fallback"] is False, out
    assert out["echo"] == "ping"
    paths = {(p["interface"], p["local_address"][0], p["remote_address"][0]): p
             for p in out["paths"]}
    assert set(paths) == {(A1, A1_V4, B1_V4), (A2, A2_V4, B1_V4)}, out["reprs"]
    for p in paths.values():
        assert p["rtt_ms"] is not None and p["subflow"]["listed"] is True, p
    assert ss_subflows(out["ss"]) == {(A1_V4, B1_V4), (A2_V4, B1_V4)}, out["ss"]
