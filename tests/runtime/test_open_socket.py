"""tp.open_socket: a raced, policy-chosen socket handed to libraries that take `sock=`.

    loopback:  asyncio.open_connection(sock=) to socat speaking first (a banner)
               websockets connect(ws:// and wss://, sock=) to a websockets server
               MPTCP: SO_PROTOCOL 262 against mptcpize'd socat, a fallback against plain socat
    netns (tests/netns.py): veth-a1 black-holed by nft, the socket wins on veth-a2 about one
               attemptDelay later and says so in its Decision and attempts

Rule 1: the peers are programs that know nothing of taps_post (socat, the websockets library's
server, mptcpize); the kernel is the judge of what the socket is (SO_PROTOCOL, TCP_IS_MPTCP).
Rule 2: every test checks that no descriptor outlives it (the race's losers are closed, the
winner is the caller's and only the caller's).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp
from dnslab import free_port
from netns import A1, A1_V4, A2, B2_V4, Topology, topology

IPPROTO_MPTCP = 262
TCP_IS_MPTCP = 43

needs_socat = pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed (CI installs it)")


def fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def policy(*rules: dict[str, Any], system: Any = ()) -> tp.PolicyContext:
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "race", "set": {"racing.attemptDelay": 150, "connTimeout": 3000}},
                     *rules]}
    return tp.PolicyContext(system=list(system), app=app, app_name="open-socket")


@contextlib.contextmanager
def serving(argv: Sequence[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A peer program listening on 127.0.0.1:`port` for the duration (killed after)."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{argv[0]} did not listen on {port}: {err}")
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def socat_banner(port: int) -> list[str]:
    # A server that speaks first, then echoes: the banner must still be there for the caller.
    return ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            "SYSTEM:'echo banner-from-socat; exec cat'"]


@needs_socat
def test_asyncio_open_connection_gets_the_servers_first_bytes(run: Any) -> None:
    port = free_port()
    before = fds()

    async def main() -> None:
        store = tp.AssociationStore()
        sock = await tp.open_socket(f"127.0.0.1:{port}", policy=policy(), store=store)
        assert isinstance(sock, socket.socket) and sock.stack == "tcp"
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
        assert sock.explanation.outcome == "ok"
        assert sock.candidate.stack == "tcp" and sock.candidate.remote_port == port
        assert [a.outcome for a in sock.attempts] == ["won"]
        assert sock.getpeername() == ("127.0.0.1", port)
        # non-blocking, and the object says so as well as the descriptor
        assert sock.getblocking() is False and sock.gettimeout() == 0.0
        assert os.get_blocking(sock.fileno()) is False
        # the open-socket rule took every other stack out of the decision
        assert {c.stack for c in sock.explanation.candidates} <= {"tcp", "mptcp"}
        reader, writer = await asyncio.open_connection(sock=sock)
        assert await asyncio.wait_for(reader.readline(), 5) == b"banner-from-socat\n"
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        writer.close()
        await writer.wait_closed()
        # the winner is history like any carrier's
        entries = store.get(f"127.0.0.1:{port}").history
        assert [(e.stack, e.outcome) for e in entries] == [("tcp", "success")]

    with serving(socat_banner(port), port):
        run(main())
    assert fds() <= before


def test_websockets_client_over_open_socket_ws_and_wss(run: Any, tmp_path: Path) -> None:
    websockets = pytest.importorskip("websockets.asyncio.server")
    client = pytest.importorskip("websockets.asyncio.client")
    cert = tp.certs.self_signed(["localhost", "127.0.0.1"])
    (tmp_path / "cert.pem").write_text(cert.cert_pem)
    (tmp_path / "key.pem").write_text(cert.key_pem or "")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    before = fds()

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(f"echo {message}")

    async def main() -> None:
        async with websockets.serve(echo, "127.0.0.1", 0) as plain, \
                websockets.serve(echo, "127.0.0.1", 0, ssl=server_tls) as secure:
            ports = [next(iter(s.sockets)).getsockname()[1] for s in (plain, secure)]
            for scheme, port, tls in (("ws", ports[0], None), ("wss", ports[1], client_tls)):
                sock = await tp.open_socket(f"127.0.0.1:{port}", policy=policy())
                extra = {"ssl": tls, "server_hostname": "localhost"} if tls else {}
                async with client.connect(f"{scheme}://localhost:{port}/", sock=sock,
                                          **extra) as ws:
                    await ws.send("hello")
                    assert await asyncio.wait_for(ws.recv(), 5) == "echo hello"
                    peer = ws.transport.get_extra_info("peername")
                    assert peer[:2] == ("127.0.0.1", port)
                    if tls:  # TLS was the caller's (websockets'), over our socket
                        assert ws.transport.get_extra_info("ssl_object") is not None

    run(main())
    assert fds() <= before


def test_refused_first_address_races_on_to_the_next(run: Any) -> None:
    """Two addresses: nothing listens on the first (RST at once), so the second starts
    without waiting attemptDelay (racing Rule 2), and the failure is in the attempts."""
    port = free_port()
    before = fds()

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", port)
        async with server:
            remote = tp.Remote(host="svc.test", port=port,
                               addresses=("127.0.0.3", "127.0.0.2"))
            t0 = time.monotonic()
            sock = await tp.open_socket(remote, policy=policy())
            elapsed = time.monotonic() - t0
            with sock:
                assert sock.getpeername() == ("127.0.0.2", port)
                outcomes = [(a.remote, a.outcome) for a in sock.attempts]
                assert outcomes == [(f"127.0.0.3:{port}", "failed"),
                                    (f"127.0.0.2:{port}", "won")], outcomes
                assert elapsed < 0.15, elapsed  # not one attemptDelay (150 ms) behind

    run(main())
    assert fds() <= before


def test_every_attempt_failing_is_an_establishment_error_without_leaks(run: Any) -> None:
    port = free_port()
    before = fds()

    async def main() -> None:
        remote = tp.Remote(host="svc.test", port=port, addresses=("127.0.0.3", "127.0.0.4"))
        with pytest.raises(tp.EstablishmentError) as info:
            await tp.open_socket(remote, policy=policy())
        assert [a.outcome for a in info.value.attempts] == ["failed", "failed"]
        assert info.value.decision is not None

    run(main())
    assert fds() <= before


def test_a_policy_without_tcp_is_a_policy_error_naming_the_rule(run: Any) -> None:
    async def main() -> None:
        with pytest.raises(tp.PolicyError) as info:
            await tp.open_socket("127.0.0.1:9", policy=policy(
                {"id": "no-plain-tcp", "set": {"stack.tcp": "prohibit"}}))
        decision = info.value.decision
        assert decision is not None and not decision.candidates
        rules = {e.rule for e in decision.excluded}
        assert "no-plain-tcp" in rules and "open-socket" in rules, decision.excluded

        # A system layer that enforces TLS everywhere cannot be met by a bare socket: the
        # conflict is the error, never a plaintext connection.
        tls_only = {"version": 1, "layer": "system", "name": "corp",
                    "rules": [{"id": "tls-only", "enforce": True,
                               "set": {"secure": "require"}}]}
        with pytest.raises(tp.PolicyError) as info:
            await tp.open_socket("127.0.0.1:9", policy=policy(system=[tls_only]))
        assert "tls-only" in str(info.value) or any(
            e.rule == "tls-only" for e in info.value.decision.excluded), info.value

    run(main())


@pytest.mark.parametrize("target, words", [
    ("https://127.0.0.1:8443", "TLS is left to the caller"),
    ("udp://127.0.0.1:53", "TCP or MPTCP"),
])
def test_schemes_that_need_tls_or_datagrams_are_argument_errors(target: str, words: str,
                                                                  run: Any) -> None:
    async def main() -> None:
        with pytest.raises(tp.ArgumentError, match=words):
            await tp.open_socket(target, policy=policy())

    run(main())


def test_pinned_certificates_and_client_identities_are_refused(run: Any) -> None:
    cert = tp.certs.self_signed(["localhost"])

    async def main() -> None:
        with pytest.raises(tp.ArgumentError, match="TLS to the caller"):
            await tp.open_socket(tp.Remote.parse("127.0.0.1:1", certificates=[cert]))
        with pytest.raises(tp.ArgumentError, match="TLS to the caller"):
            await tp.open_socket("127.0.0.1:1", local=tp.Local(certificates=[cert]))

    run(main())


def _mptcp_enabled() -> bool:
    try:
        return Path("/proc/sys/net/mptcp/enabled").read_text().strip() == "1"
    except OSError:
        return False


@needs_socat
@pytest.mark.skipif(not _mptcp_enabled(), reason="MPTCP is disabled here (net.mptcp.enabled)")
@pytest.mark.skipif(shutil.which("mptcpize") is None,
                    reason="mptcpize (Debian mptcpd) is not installed (CI installs it)")
def test_multipath_active_gives_an_mptcp_socket_and_a_fallback_says_tcp(run: Any) -> None:
    before = fds()
    mptcp = policy({"id": "mp", "set": {"multipath": "active"}})

    async def main(port: int, expect: str) -> None:
        sock = await tp.open_socket(f"127.0.0.1:{port}", policy=mptcp)
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == IPPROTO_MPTCP
            assert sock.candidate.stack == "mptcp"
            assert sock.stack == expect
            assert bool(sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP)) == (expect == "mptcp")
            reader, writer = await asyncio.open_connection(sock=sock.dup())
            assert await asyncio.wait_for(reader.readline(), 5) == b"banner-from-socat\n"
            writer.close()
            await writer.wait_closed()

    port = free_port()
    with serving(["mptcpize", "run", *socat_banner(port)], port):
        run(main(port, "mptcp"))
    port = free_port()
    with serving(socat_banner(port), port):  # plain TCP: the kernel falls back
        run(main(port, "tcp"))
    assert fds() <= before


# ---- two paths, one black-holed --------------------------------------------------------

PORT = 8765
DELAY = 150

CLIENT = r"""
import asyncio, json, socket, time
import taps_post as tp

async def main():
    app = {"version": 1, "layer": "app",
           "rules": [{"id": "race", "set": {"racing.attemptDelay": DELAY, "connTimeout": 3000}}]}
    policy = tp.PolicyContext(system=[], app=app, app_name="open-socket-netns")
    t0 = time.monotonic()
    sock = await tp.open_socket("svc:PORT", policy=policy)
    elapsed = (time.monotonic() - t0) * 1000
    reader, writer = await asyncio.open_connection(sock=sock)
    banner = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    writer.close()
    await writer.wait_closed()
    print(json.dumps({
        "elapsed_ms": elapsed, "banner": banner, "interface": sock.candidate.interface,
        "peer": sock.candidate.remote_address,
        "candidates": [c.interface for c in sock.explanation.candidates],
        "attempts": [[a.interface, a.outcome] for a in sock.attempts]}))

asyncio.run(main())
""".replace("DELAY", str(DELAY)).replace("PORT", str(PORT))


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (CI installs it)")
    with topology("os", cross_routes=False) as topo:
        topo.hosts(topo.a, {"svc": [B2_V4]})
        topo.blackhole(topo.b, saddr=A1_V4)
        server = subprocess.Popen(
            ["ip", "netns", "exec", topo.b, "socat", f"TCP-LISTEN:{PORT},reuseaddr,fork",
             "SYSTEM:'echo banner-from-b'"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while f":{PORT} " not in topo.exec(topo.b, "ss", "-ltnH").stdout:
                assert time.monotonic() < deadline, "socat did not listen in B"
                time.sleep(0.05)
            yield topo
        finally:
            server.kill()
            server.wait()


def test_black_holed_path_loses_the_race_by_one_attempt_delay(lab: Topology) -> None:
    out = lab.run_python(lab.a, CLIENT, timeout=20)
    print(json.dumps(out))
    assert out["banner"] == "banner-from-b", out
    assert out["candidates"][0] == A1, out  # path 1 was first in the plan ...
    assert [A1, "cancelled"] in out["attempts"], out  # ... was outrun ...
    assert [A2, "won"] in out["attempts"] and out["interface"] == A2, out
    assert out["peer"] == B2_V4, out
    assert DELAY * 0.8 <= out["elapsed_ms"] <= DELAY + 800, out  # ... one delay later
