"""Interoperability with peers that are not ours: openssl s_server and socat, on loopback.

Each peer is a real subprocess, bounded in time and killed in `finally`. Tests skip when the
tool is missing (CI installs both: see .ci/run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="the openssl command line tool is not installed")
needs_socat = pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed (CI installs it)")

DATAGRAM = {"version": 1, "layer": "app",
            "rules": [{"id": "dgram", "use": ["unreliable-datagram"]}]}


def run(coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def policy(app: dict[str, Any] | None = None) -> tp.PolicyContext:
    return tp.PolicyContext(system=[], app=app, app_name="interop")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP `port` (IPv4 or IPv6), from /proc/net/udp*."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                    return True
    return False


def wait_ready(proc: subprocess.Popen[bytes], port: int, *, udp: bool = False,
               timeout: float = 10.0) -> None:
    """Until `port` on 127.0.0.1 accepts (TCP) or is bound (UDP); fail if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"{proc.args} exited with {proc.returncode}: {out}")
        if udp:
            if _udp_bound(port):
                return
        else:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        # Pacing between checks of another process's state, not a guessed wait: the loop
        # ends as soon as the port is open (and this thread has no event loop to yield to).
        time.sleep(0.02)
    raise AssertionError(f"{proc.args} did not open port {port} within {timeout} s")


@contextlib.contextmanager
def peer(argv: Sequence[str], port: int, *, udp: bool = False,
         stderr: int = subprocess.STDOUT) -> Iterator[subprocess.Popen[bytes]]:
    """Start a peer process, wait until it listens, and always kill it afterwards."""
    # A session of its own, so that socat's forked children (and their EXEC'd commands)
    # end with it: they are all in the process group whose id is proc.pid.
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr, start_new_session=True)
    try:
        wait_ready(proc, port, udp=udp)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def read_until(proc: subprocess.Popen[bytes], done: Callable[[bytes], bool],
               timeout: float = 5.0) -> bytes:
    """What `proc` writes to stdout, until `done(output)`, EOF or the timeout."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while not done(got) and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
    return got


# ---- openssl s_server ---------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("version", ["tls1_3", "tls1_2"])
def test_openssl_s_server_status_page_and_session_resumption(tmp_path: Path,
                                                             version: str) -> None:
    cert = tp.certs.self_signed(["localhost", "127.0.0.1"])
    assert cert.key_pem is not None
    (tmp_path / "cert.pem").write_text(cert.cert_pem)
    (tmp_path / "key.pem").write_text(cert.key_pem)
    port = free_port()
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-www", f"-{version}",
            "-cert", str(tmp_path / "cert.pem"), "-key", str(tmp_path / "key.pem")]
    label = {"tls1_3": "TLSv1.3", "tls1_2": "TLSv1.2"}[version]

    async def fetch(store: tp.AssociationStore) -> tuple[bool, str, str]:
        remote = tp.Remote.parse(f"tls://127.0.0.1:{port}", certificates=[cert])
        carrier = await tp.initiate(remote, policy=policy(), framer=tp.RawFramer(),
                                    store=store)
        try:
            reused = carrier.transients[0].session_reused
            await carrier.send(b"GET / HTTP/1.0\r\n\r\n")
            page = b"".join([bytes(m) async for m in carrier])  # until s_server closes
        finally:
            await carrier.close()
        return reused, carrier.stack, page.decode(errors="replace")

    async def main() -> list[tuple[bool, str, str]]:
        store = tp.AssociationStore()
        return [await fetch(store), await fetch(store)]

    with peer(argv, port):
        (reused1, stack1, page1), (reused2, stack2, page2) = run(main())
    assert stack1 == stack2 == "tls"
    for page in (page1, page2):
        assert page.startswith("HTTP/1.0 200 ok\r\n"), page[:200]
        assert "</pre></BODY></HTML>" in page, "the page was cut short"
    assert reused1 is False
    assert f"\nNew, {label}, Cipher is " in page1
    assert reused2 is True, "our side did not resume the session"
    assert f"\nReused, {label}, Cipher is " in page2, "s_server did not see a resumption"


# ---- socat, TCP with LineFramer -----------------------------------------------------------


@needs_socat
def test_socat_line_server_uppercases_each_message() -> None:
    if shutil.which("stdbuf") is None:
        pytest.skip("stdbuf (coreutils) is needed to keep tr line-buffered")
    port = free_port()
    argv = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            "EXEC:stdbuf -oL tr a-z A-Z"]

    async def main() -> tuple[list[bytes], list[bytes]]:
        tcp_only = policy({"version": 1, "layer": "app",
                           "rules": [{"id": "tcp", "set": {"stack": {"tcp": "require"}}}]})
        carrier = await tp.initiate(f"tcp://127.0.0.1:{port}", policy=tcp_only,
                                    framer=tp.LineFramer())
        try:
            one_by_one = []
            for word in (b"hello", b"line framing", b"x" * 3000):
                await carrier.send(word)
                one_by_one.append(bytes(await carrier.receive()))
            for word in (b"a1", b"b2", b"c3"):  # queued together: likely one write
                await carrier.send(word)
            batch = [bytes(await carrier.receive()) for _ in range(3)]
        finally:
            await carrier.close()
        return one_by_one, batch

    with peer(argv, port):
        one_by_one, batch = run(main())
    assert one_by_one == [b"HELLO", b"LINE FRAMING", b"X" * 3000]
    assert batch == [b"A1", b"B2", b"C3"]


async def _line_listener(received: list[bytes], errors: list[str], *,
                         summary: bool = False) -> tp.Listener:
    """A LineFramer Listener on 127.0.0.1 answering each line with `re:` + LINE and, with
    `summary`, one last `total:N` line once the client has closed its sending side."""
    listener = await tp.listen(tp.Local(address="127.0.0.1", port=0), policy=policy(),
                               framer=tp.LineFramer())
    tasks: set[asyncio.Task[None]] = set()

    async def serve(carrier: tp.Carrier) -> None:
        count = 0
        try:
            async for msg in carrier:
                received.append(bytes(msg))
                count += 1
                await carrier.send(b"re:" + bytes(msg).upper())
            if summary:
                await carrier.send(b"total:%d" % count)
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            await carrier.close()

    def accept(carrier: tp.Carrier) -> None:
        task = asyncio.ensure_future(serve(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    listener.accept(accept)
    return listener


@needs_socat
def test_socat_client_line_by_line_to_our_listener() -> None:
    """socat stays connected; each line it sends is answered before the next is written."""

    async def main() -> tuple[list[bytes], list[str], list[bytes]]:
        received: list[bytes] = []
        errors: list[str] = []
        listener = await _line_listener(received, errors)
        proc = await asyncio.create_subprocess_exec(
            "socat", "-t", "2", "-", f"TCP:127.0.0.1:{listener.port}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        replies = []
        try:
            for line in (b"alpha\n", b"beta\r\n", b"gamma delta\n"):
                proc.stdin.write(line)
                await proc.stdin.drain()
                replies.append(await asyncio.wait_for(proc.stdout.readline(), 5))
            proc.stdin.close()
            assert await asyncio.wait_for(proc.stdout.read(), 5) == b""
            await asyncio.wait_for(proc.wait(), 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await listener.close()
        return received, errors, replies

    received, errors, replies = run(main())
    assert received == [b"alpha", b"beta", b"gamma delta"]  # CR stripped, one line each
    assert errors == []
    assert replies == [b"re:ALPHA\n", b"re:BETA\n", b"re:GAMMA DELTA\n"]


@needs_socat
def test_socat_client_half_closes_after_its_lines() -> None:
    """socat sends its lines and shuts down its side (end of stdin); our server answers each
    line and then sends a total. Everything must reach socat, which waits (-t 2) for it."""

    async def main() -> tuple[list[bytes], list[str], bytes]:
        received: list[bytes] = []
        errors: list[str] = []
        listener = await _line_listener(received, errors, summary=True)
        proc = await asyncio.create_subprocess_exec(
            "socat", "-t", "2", "-", f"TCP:127.0.0.1:{listener.port}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(b"one\ntwo\nthree\n"), 8)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await listener.close()
        return received, errors, out

    received, errors, out = run(main())
    assert received == [b"one", b"two", b"three"]
    assert errors == []
    assert out == b"re:ONE\nre:TWO\nre:THREE\ntotal:3\n"


# ---- socat, UDP ---------------------------------------------------------------------------


@needs_socat
def test_our_source_to_socat_udp_recv() -> None:
    port = free_port(socket.SOCK_DGRAM)
    argv = ["socat", "-u", f"UDP-RECV:{port},bind=127.0.0.1", "STDOUT"]

    async def main() -> str:
        source = await tp.new_source(None, f"udp://127.0.0.1:{port}", policy=policy())
        try:
            for word in (b"one\n", b"two\n", b"three\n"):
                await source.send(word)
        finally:
            await source.close()
        return source.stack

    with peer(argv, port, udp=True, stderr=subprocess.DEVNULL) as proc:
        stack = run(main())
        got = read_until(proc, lambda out: out.count(b"\n") >= 3)
    assert stack == "udp"
    assert got == b"one\ntwo\nthree\n"


@needs_socat
def test_our_udp_carrier_with_a_socat_echo() -> None:
    port = free_port(socket.SOCK_DGRAM)
    argv = ["socat", f"UDP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "PIPE"]

    async def main() -> tuple[str, list[bytes]]:
        carrier = await tp.initiate(f"udp://127.0.0.1:{port}", policy=policy(DATAGRAM))
        try:
            got = []
            for data in (b"first", b"second datagram", bytes(range(256)) * 4):
                await carrier.send(data)
                got.append(bytes(await asyncio.wait_for(carrier.receive(), 5)))
        finally:
            await carrier.close()
        return carrier.stack, got

    with peer(argv, port, udp=True):
        stack, got = run(main())
    assert stack == "udp"
    assert got == [b"first", b"second datagram", bytes(range(256)) * 4]
