"""Listeners under abuse, TCP and TLS side (stacks/accept.py, docs/reliability.md).

The issue's failures, each tried as a hostile peer would, with real sockets on loopback:
a burst of 4,000 concurrent connects (reset by a 128-deep backlog), TLS slowloris (pending
handshakes lived for asyncio's 60 s), more handshakes at once than listener.maxHandshakes
(a legitimate client queued behind them waited one handshakeTimeout per maxHandshakes of
them; now a full table sheds the stalest, stacks/accept.py Rule 4), and a server out of
file descriptors (asyncio's accept loop logged every failed accept and spun). Clients that
must not share the server's event loop run in a child process; so does the server whose
RLIMIT_NOFILE is lowered. The only sleeps are observation windows (the 3 s of exhaustion,
the flood's pace) and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest
from sizing import sized

import taps_post as tp
from taps_post.stacks.accept import evict_age

LO4 = "127.0.0.1"
FRAME = (5).to_bytes(4, "big") + b"hello"
"""One length-prefixed message, as the default framer puts it on the wire."""
PARTIAL_HELLO = bytes.fromhex("16030100f4010000f00303") + b"\x00" * 16
"""The first bytes of a TLS ClientHello (record header announcing 244 bytes, then part of the
handshake header and random): a handshake that never completes."""


def client_hello() -> bytes:
    """A whole TLS ClientHello, as a real client sends it first: a client that then stalls
    looks legitimate until its handshake is overdue."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=LO4)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn", encoding="ascii") as f:
        return int(f.read())


def listen_queue(port: int) -> tuple[int, int]:
    """`ss -ltn` for the listening socket on `port`: (Recv-Q, Send-Q), that is (connections
    waiting in the accept queue, the backlog listen(2) was given)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[1]), int(out[2])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def evicted(listener: tp.Listener) -> int:
    """Connections the Listener's stream Acceptors shed for waiting ones (accept.py Rule 4)."""
    return sum(e.acceptor.evicted for e in listener._endpoints if hasattr(e, "acceptor"))


@contextlib.asynccontextmanager
async def echo_listener(policy: tp.PolicyContext,
                        local: tp.Local | None = None) -> AsyncIterator[tp.Listener]:
    """A Listener that echoes each carrier's first message, then closes that carrier."""
    listener = await tp.listen(local or tp.Local(address=LO4, port=0), policy=policy)
    tasks: set[asyncio.Task[None]] = set()

    async def echo(carrier: tp.Carrier) -> None:
        with contextlib.suppress(Exception):
            message = await carrier.receive()
            await carrier.send(bytes(message))
            await carrier.close()
        carrier.abort()

    def on_carrier(carrier: tp.Carrier) -> bool:
        task = asyncio.ensure_future(echo(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    listener.accept(on_carrier)
    try:
        yield listener
    finally:
        await listener.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Watcher:
    """Raw client sockets, each watched for the server closing it (EOF or RST)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.opened: dict[int, float] = {}
        self.lifetimes: list[float] = []
        self.socks: dict[int, socket.socket] = {}

    async def connect(self, port: int, send: bytes = b"") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        began = self.loop.time()  # before connect: a lifetime is never shorter than it was
        await self.loop.sock_connect(sock, (LO4, port))
        if send:
            sock.send(send)
        fd = sock.fileno()
        self.socks[fd] = sock
        self.opened[fd] = began
        self.loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        sock = self.socks[fd]
        try:
            if sock.recv(4096):
                return  # the server said something (an alert would do): not closed yet
        except BlockingIOError:
            return
        except OSError:
            pass  # reset
        self.loop.remove_reader(fd)
        self.lifetimes.append(self.loop.time() - self.opened[fd])
        del self.socks[fd]
        sock.close()

    @property
    def open(self) -> int:
        return len(self.socks)

    def close(self) -> None:
        for fd, sock in list(self.socks.items()):
            self.loop.remove_reader(fd)
            sock.close()
        self.socks.clear()


async def tls_exchange(port: int, cert: Any, policy: tp.PolicyContext) -> float:
    """A legitimate TLS client: connect, send, get the echo; how long it took, seconds."""
    started = time.monotonic()
    remote = tp.Remote.parse(f"tls://{LO4}:{port}", certificates=[cert])
    client = await tp.initiate(remote, policy=policy, store=tp.AssociationStore())
    try:
        await client.send(b"legit")
        assert await client.receive() == b"legit"
    finally:
        client.abort()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cert() -> Any:
    return tp.certs.self_signed(["localhost", LO4])


# ---- the backlog and a burst of connects ---------------------------------------------------


def test_the_backlog_is_somaxconn_unless_the_policy_sets_it(run, make_policy) -> None:
    """The issue: listen(128) while the system allows 4,096. Now listen(2) gets
    net.core.somaxconn, or listener.backlog when a policy sets it."""

    async def main() -> None:
        async with echo_listener(make_policy({"stack": {"tcp": "require"}})) as lst:
            assert listen_queue(lst.port)[1] == somaxconn()
        policy = make_policy({"stack": {"tcp": "require"}}, carrier={"listener.backlog": 300})
        async with echo_listener(policy) as lst:
            assert listen_queue(lst.port)[1] == 300

    run(main())


BURST_CLIENT = r"""
import json, selectors, socket, struct, sys, time
port, n, frame = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
sel = selectors.DefaultSelector()
counts = {"ok": 0, "reset": 0, "refused": 0, "eof": 0, "timeout": 0, "other": 0,
          "syn_retransmitted": 0, "max_connect_ms": 0}
started = {}
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    started[s] = time.monotonic()
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_WRITE, bytearray())
def done(s, what):
    counts[what] += 1
    sel.unregister(s)
    s.close()
def failed(s, exc):
    done(s, "reset" if isinstance(exc, ConnectionResetError) else
         "refused" if isinstance(exc, ConnectionRefusedError) else "other")
deadline = time.monotonic() + float(sys.argv[4])
while sel.get_map() and time.monotonic() < deadline:
    for key, events in sel.select(timeout=0.5):
        s, got = key.fileobj, key.data
        try:
            if events & selectors.EVENT_WRITE:
                took = time.monotonic() - started.pop(s)
                counts["max_connect_ms"] = max(counts["max_connect_ms"], round(took * 1000))
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                counts["syn_retransmitted"] += struct.unpack_from("I", info, 100)[0] > 0
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect") if err not in (104, 111) else (
                        ConnectionResetError() if err == 104 else ConnectionRefusedError())
                s.send(frame)
                sel.modify(s, selectors.EVENT_READ, got)
                continue
            data = s.recv(4096)
        except OSError as exc:
            failed(s, exc)
            continue
        if not data:
            done(s, "eof")
            continue
        got += data
        if len(got) >= len(frame):
            done(s, "ok" if bytes(got[:len(frame)]) == frame else "other")
counts["timeout"] = len(sel.get_map())
print(json.dumps(counts))
"""


def test_4000_concurrent_connects_to_one_listener_are_all_served(run, make_policy) -> None:
    """The issue: 4,000 concurrent connects gave 490 "connection reset by peer" with a
    128-deep backlog. A client process opens them all at once, each sends one message and
    waits for its echo: every one is served, none reset, and none had to retransmit its SYN
    (TCP_INFO tcpi_total_retrans once connected: the server's kernel dropped the SYN for a
    full accept queue; on issue10-base about 3,400 of 4,000 did, and the burst took 15-29 s
    instead of 2.4 s)."""
    n = 4000

    async def main() -> dict[str, int]:
        async with echo_listener(make_policy({"stack": {"tcp": "require"}})) as lst:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", BURST_CLIENT, str(lst.port), str(n), FRAME.hex(), "40",
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            counts: dict[str, int] = json.loads(out)
            return counts

    counts = run(main(), timeout=60)
    print("burst", counts)  # the numbers for docs/reliability.md (pytest -s)
    assert counts["reset"] == 0, counts
    assert counts["syn_retransmitted"] == 0, counts  # no SYN dropped: the queue had room
    assert counts["ok"] == n, counts


# ---- TLS handshakes --------------------------------------------------------------------------


def test_tls_slowloris_is_cut_off_at_the_handshake_timeout(run, until, make_policy,
                                                           cert) -> None:
    """The issue: pending TLS handshakes lived for asyncio's 60 s. 1,000 connections that send
    nothing, or part of a ClientHello, are all closed by listener.handshakeTimeout at the
    latest; at most listener.maxHandshakes run at once, and those waiting behind a full
    table shed the stalest (accept.py Rule 4), none younger than the eviction age (a quarter
    of the 1 s timeout here). A legitimate TLS client arriving after them is served within
    an eviction age or two, not after the waves of timeouts queued ahead of it."""
    n = sized(1000, 4000)
    timeout = 1.0
    policy = make_policy(carrier={"listener.handshakeTimeout": int(timeout * 1000)})
    client_policy = make_policy({"connTimeout": 10000})

    async def main() -> tuple[list[float], float, int, int]:
        local = tp.Local(address=LO4, port=0, certificates=[cert])
        async with echo_listener(policy, local) as lst:
            watcher = Watcher()
            try:
                for i in range(n):
                    await watcher.connect(lst.port, PARTIAL_HELLO if i % 2 else b"")
                peak = getattr(lst, "handshakes", 0)
                served = await tls_exchange(lst.port, cert, client_policy)
                waves = math.ceil(n / lst.settings.max_handshakes)
                await until(lambda: watcher.open == 0, timeout=waves * timeout + 3,
                            what=lambda: f"{watcher.open} of {n} slowloris still open")
                return watcher.lifetimes, served, peak, evicted(lst)
            finally:
                watcher.close()

    lifetimes, served, peak, shed = run(main(), timeout=60)
    print(f"slowloris n={n} lifetimes {min(lifetimes):.2f}..{max(lifetimes):.2f} s, "
          f"peak handshakes {peak}, {shed} evicted, legitimate client served in "
          f"{served:.2f} s")
    assert len(lifetimes) == n
    age = evict_age(timeout)
    assert min(lifetimes) >= age * 0.9, min(lifetimes)  # nothing younger than the age shed
    assert max(lifetimes) < timeout + 3, max(lifetimes)
    assert peak <= 512
    assert shed >= n - 512, shed  # all those queued behind the full table
    # On issue10-base the client waited for the waves of timeouts queued ahead of it
    # (ceil((n - 512) / 512) handshakeTimeouts); now for an eviction age or two.
    assert served < 4 * age + 1, served


def test_at_most_max_handshakes_at_once_and_close_leaves_nothing(run, until, make_policy,
                                                                 cert, warm_loop) -> None:
    """listener.maxHandshakes 50 against 200 TLS connections that never finish a handshake
    (half silent, half a whole ClientHello and then nothing): while the 50 taken are younger
    than the eviction age (1 s at a 30 s handshakeTimeout), they run and the other 150 wait
    in the kernel's accept queue (ss Recv-Q), not taken. Past the age the full table sheds
    the stalest for the waiting ones (accept.py Rule 4): a silent one is reset as it is
    accepted, one whose hello waits aborts the oldest handshake past the age and takes its
    place; the queue drains, 50 still run, 150 were shed, none before the age. close() then
    closes the listening socket and aborts the handshakes in progress: every client sees its
    connection closed, and no descriptor and no task is left."""
    n, bound = 200, 50
    timeout = 30.0
    age = evict_age(timeout)
    policy = make_policy(carrier={"listener.maxHandshakes": bound,
                                  "listener.handshakeTimeout": int(timeout * 1000)})

    async def main() -> None:
        await warm_loop()  # the loop's own one-time descriptors are not a leak
        fds = open_fds()
        lst = await tp.listen(tp.Local(address=LO4, port=0, certificates=[cert]),
                              policy=policy)
        watcher = Watcher()
        loop = asyncio.get_running_loop()
        try:
            hello = client_hello()
            began = loop.time()
            for i in range(n):
                await watcher.connect(lst.port, hello if i % 2 else b"")
            port = lst.port
            # All of this within the age of the first handshakes taken (well under it here).
            await until(lambda: listen_queue(port)[0] == n - bound, timeout=age * 0.8,
                        what=lambda: f"accept queue {listen_queue(port)[0]}, not {n - bound}")
            await until(lambda: lst.handshakes == bound, timeout=age * 0.8,
                        what=lambda: f"{lst.handshakes} handshakes, not {bound}")
            for _ in range(20):  # the Listener's turns go by; no more is taken
                await asyncio.sleep(0)
                assert lst.handshakes == bound
            assert loop.time() - began < age, "too slow to see the table before the age"
            assert evicted(lst) == 0 and watcher.open == n
            # Past the age: the waiting ones shed the stalest, one for one.
            await until(lambda: evicted(lst) == n - bound, timeout=4 * age + 2,
                        what=lambda: f"{evicted(lst)} evicted, not {n - bound}")
            await until(lambda: watcher.open == bound,
                        what=lambda: f"{watcher.open} clients open, not {bound}")
            assert listen_queue(port)[0] == 0
            assert lst.handshakes == bound
            assert min(watcher.lifetimes) >= age * 0.9, min(watcher.lifetimes)
            print(f"maxHandshakes {bound}, {n} connections: {evicted(lst)} evicted after "
                  f"{min(watcher.lifetimes):.2f}..{max(watcher.lifetimes):.2f} s")
            await lst.close()
            assert lst.handshakes == 0
            await until(lambda: watcher.open == 0,
                        what=lambda: f"{watcher.open} clients not closed")
        finally:
            watcher.close()
            await lst.close()
        assert open_fds() == fds
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main(), timeout=30)


def test_a_full_handshake_table_sheds_the_stalest_for_a_legitimate_client(
        run, until, make_policy, cert) -> None:
    """Stopping at listener.maxHandshakes alone made a legitimate TLS client wait behind every
    slowloris queued ahead of it, one handshakeTimeout per maxHandshakes of them (4,000 silent
    connections, 1 s timeout: served after about 6 s; at the 10 s default about a minute).
    handshakeTimeout 10 s, maxHandshakes 100, 1,000 silent TLS connections: a legitimate TLS
    client connecting after them all is served within 3 s (on issue10-base it waited
    9 x 10 s and its 10 s connTimeout ran out), the table never held more than 100, and
    the slowloris ahead of it were shed (accept.py Rule 4)."""
    n, bound = sized(1000, 4000), 100
    timeout = 10.0
    policy = make_policy(carrier={"listener.maxHandshakes": bound,
                                  "listener.handshakeTimeout": int(timeout * 1000)})
    client_policy = make_policy({"connTimeout": 10000})

    async def main() -> tuple[float, int, int, int]:
        local = tp.Local(address=LO4, port=0, certificates=[cert])
        async with echo_listener(policy, local) as lst:
            watcher = Watcher()
            try:
                peak = 0
                for _ in range(n):
                    await watcher.connect(lst.port)
                    peak = max(peak, lst.handshakes)
                served = await tls_exchange(lst.port, cert, client_policy)
                peak = max(peak, lst.handshakes)
                return served, peak, evicted(lst), n - watcher.open
            finally:
                watcher.close()

    served, peak, shed, closed = run(main(), timeout=60)
    print(f"full table: {n} silent, maxHandshakes {bound}, handshakeTimeout {timeout} s: "
          f"legitimate client served in {served:.2f} s, {shed} evicted, {closed} slowloris "
          f"closed by then, peak handshakes {peak}")
    assert served < 3.0, served
    assert peak <= bound, peak
    assert shed >= n - bound, shed


def test_a_busy_server_does_not_evict_a_client_it_has_not_answered(run, until, make_policy,
                                                                  cert) -> None:
    """Eviction is for peers that stalled, not for a server too busy to read them (accept.py
    Rule 4). maxHandshakes 10 taken by raw TLS clients; 10 more wait in the backlog, each
    with a whole ClientHello sent. The 10 taken then send their ClientHello while the
    server's loop is blocked past the eviction age (a deliberate busy stretch: time.sleep in
    the loop). When the loop runs again those hellos are read and answered, and the peers
    get a whole eviction age to reply: none is evicted before that (on a rule of age alone,
    or of the peer's silence alone, all 10 went at once). They never reply, so then the 10
    waiting take their places."""
    bound = 10
    timeout = 4.0
    age = evict_age(timeout)
    policy = make_policy(carrier={"listener.maxHandshakes": bound,
                                  "listener.handshakeTimeout": int(timeout * 1000)})

    async def main() -> float:
        lst = await tp.listen(tp.Local(address=LO4, port=0, certificates=[cert]),
                              policy=policy)
        taken, waiting = Watcher(), Watcher()
        loop = asyncio.get_running_loop()
        hello = client_hello()
        try:
            for _ in range(bound):
                await taken.connect(lst.port)
            await until(lambda: lst.handshakes == bound)
            for _ in range(bound):
                await waiting.connect(lst.port, hello)
            await until(lambda: listen_queue(lst.port)[0] == bound)
            for sock in taken.socks.values():
                sock.send(hello)
            time.sleep(age * 1.3)  # the server's loop busy past the age; the hellos unread
            resumed = loop.time()
            await until(lambda: evicted(lst) == bound, timeout=age * 2 + 1,
                        what=lambda: f"{evicted(lst)} evicted, not {bound}")
            took = loop.time() - resumed
            await until(lambda: taken.open == 0,
                        what=lambda: f"{taken.open} of the taken still open")
            assert waiting.open == bound and lst.handshakes == bound
            return took
        finally:
            taken.close()
            waiting.close()
            await lst.close()

    took = run(main(), timeout=30)
    print(f"busy server: the unanswered were evicted {took:.2f} s after the loop ran again "
          f"(eviction age {age} s)")
    assert took >= age * 0.9, took


# ---- out of file descriptors -------------------------------------------------------------------


EXHAUSTED_SERVER = r"""
import asyncio, contextlib, logging, resource, sys
import taps_post as tp

class OneLine(logging.Handler):
    def emit(self, record):
        sys.stderr.write(f"LOG {record.levelname} {record.name}: {record.getMessage()}\n")
        sys.stderr.flush()

logging.getLogger().addHandler(OneLine())
logging.getLogger().setLevel(logging.INFO)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))

async def echo(carrier):
    with contextlib.suppress(Exception):
        while True:
            await carrier.send(bytes(await carrier.receive()))
    carrier.abort()

async def main():
    rule = {"id": "x", "set": {"stack": {"tcp": "require"}}}
    app = {"version": 1, "layer": "app", "rules": [rule]}
    policy = tp.PolicyContext(system=[], app=app, app_name="t")
    listener = await tp.listen(tp.Local(address="127.0.0.1", port=0), policy=policy)
    tasks = set()
    def on_carrier(carrier):
        task = asyncio.ensure_future(echo(carrier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True
    listener.accept(on_carrier)
    print("PORT", listener.port, flush=True)
    await asyncio.get_running_loop().connect_read_pipe(asyncio.Protocol, sys.stdin)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _served(port: int, budget: float) -> float | None:
    """A legitimate client: connect, send a message, get its echo; retried (a shed client
    fails at once) until `budget` seconds are up. Seconds it took, or None."""
    started = time.monotonic()
    while time.monotonic() - started < budget:
        left = budget - (time.monotonic() - started)
        try:
            with socket.create_connection((LO4, port), timeout=left) as sock:
                sock.sendall(FRAME)
                got = b""
                while len(got) < len(FRAME):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                if got == FRAME:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)  # the client's own retry pace
    return None


def _shed(port: int) -> float | None:
    """A client arriving while the server is out of descriptors: seconds until its
    connection is reset or closed (shed), None if it was still waiting after 3 s."""
    started = time.monotonic()
    try:
        with socket.create_connection((LO4, port), timeout=3) as sock:
            sock.sendall(FRAME)
            sock.recv(4096)
    except TimeoutError:
        return None  # waiting in a backlog that does not drain, or its SYN dropped
    except OSError:
        pass  # reset: shed
    return time.monotonic() - started


def test_fd_exhaustion_backs_off_logs_little_and_recovers() -> None:
    """The issue: out of descriptors, asyncio's accept loop logged 7,542 "out of system
    resource" lines and spun, and legitimate clients timed out. A server with RLIMIT_NOFILE
    100 is flooded past it and kept there for 3 s: it logs under 20 lines, uses little CPU
    time, a client arriving meanwhile is reset at once (shed, not left waiting), and once
    the flood closes a legitimate client is served within 2 s."""
    limit = 100
    server = subprocess.Popen([sys.executable, "-c", EXHAUSTED_SERVER, str(limit)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    logs: list[str] = []  # the first few log lines
    counted = [0]  # all of them
    first_log = threading.Event()

    def read_logs() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            if line.startswith("LOG "):
                counted[0] += 1
                if len(logs) < 5:
                    logs.append(line.rstrip())
                first_log.set()

    reader = threading.Thread(target=read_logs, daemon=True)
    reader.start()
    flood: list[socket.socket] = []
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        assert line and line[0] == "PORT", line
        port = int(line[1])

        def connect() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(2)
            with contextlib.suppress(OSError):
                sock.connect((LO4, port))  # the kernel's backlog answers, served or not
            flood.append(sock)

        for _ in range(3 * limit):
            connect()
        assert first_log.wait(10), "the server never ran out of descriptors"
        proc = psutil.Process(server.pid)
        before = proc.cpu_times()
        window_end = time.monotonic() + 3.0
        while time.monotonic() < window_end:  # the 3 s observation window, flood going on
            connect()
            time.sleep(0.1)  # the flood's pace
        after = proc.cpu_times()
        cpu = (after.user - before.user) + (after.system - before.system)
        shed = _shed(port)
        for sock in flood:
            sock.close()
        flood.clear()
        served = _served(port, 2.0)
        assert server.poll() is None, "the server died"
    finally:
        for sock in flood:
            sock.close()
        server.terminate()
        server.wait(10)
        reader.join(5)
    print(f"exhaustion: {counted[0]} log lines {logs}, {cpu:.3f} s CPU in 3 s, "
          f"a client during it shed after {shed} s, served {served} s after the flood")
    assert served is not None, "no legitimate client served within 2 s of the flood's end"
    assert counted[0] < 20, f"{counted[0]} log lines, the first: {logs}"
    assert cpu < 0.3, f"{cpu:.2f} s of CPU in 3 s of exhaustion"
    assert shed is not None and shed < 2.0, f"a client during exhaustion waited ({shed})"
