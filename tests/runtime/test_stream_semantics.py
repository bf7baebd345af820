"""Message semantics of the stream and datagram stacks (issue 9, items 4, 6, 9, 10, 11).

Stack-level tests: each opens Transients with the stacks' own `connect()`/`listen()` on
loopback against real peers (a taps_post listener, a raw kernel socket, openssl s_client),
so they hold whatever the runtime above does. The sans-I/O ordering rules are tested on the
core's SendQueue directly. No mocks, no sleeps to synchronise (`until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp
from helpers import sock_recvfrom
from taps_post.certs import Certificate, fingerprint_of_der
from taps_post.core.events import Failed
from taps_post.core.framing import LengthPrefixFramer
from taps_post.core.messages import OutMessage, Pending
from taps_post.core.outbox import Ledger, SendQueue
from taps_post.core.settings import Settings
from taps_post.decision.decision import Candidate, RankKey
from taps_post.stacks.base import AttemptSpec, ListenSpec
from taps_post.stacks.tcp import StreamStack, outq
from taps_post.stacks.transient import Transient
from taps_post.stacks.udp import DatagramTransient, UdpStack

LO4 = "127.0.0.1"
LO_MTU = min(int(Path("/sys/class/net/lo/mtu").read_text()), 65535)
"""IP_MTU caps at IP_MAX_MTU (65535) even where lo has 65536."""


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(conn_timeout=5.0, attempt_delay=0.05, max_size=16 << 20,
                                min_tls="1.2", verify_peer=True, session_cache=True, alpn=(),
                                zero_rtt=True)
    base.update(kw)
    return Settings(**base)


def candidate(port: int, stack: str = "tcp", remote: str = LO4,
              local: str = LO4) -> Candidate:
    return Candidate(0, "lo", local, stack, remote, port, "ipv4", 0,
                     RankKey(0, 0, 0, 0, 0, 0, 1, 0.0, 0, "lo", 0, 0))


def spec(port: int, stack: str = "tcp", *, s: Settings | None = None, assoc: Any = None,
         **kw: Any) -> AttemptSpec:
    s = s or settings()
    return AttemptSpec(candidate=candidate(port, stack), host=LO4, settings=s,
                       association=assoc or tp.AssociationStore().get(f"{LO4}:{port}"),
                       framer=lambda: LengthPrefixFramer(s.max_size), **kw)


@contextlib.asynccontextmanager
async def listening(stack: StreamStack, *, s: Settings | None = None,
                    identity: tuple[Certificate, ...] = (),
                    trusted: tuple[Certificate, ...] = (),
                    address: str = LO4) -> AsyncIterator[tuple[Any, asyncio.Queue[Any]]]:
    """A stack's own listener; accepted Transients arrive on the queue."""
    s = s or settings()
    accepted: asyncio.Queue[Any] = asyncio.Queue()
    endpoint = await stack.listen(ListenSpec(
        address=address, port=0, interface=None, settings=s,
        framer=lambda: LengthPrefixFramer(s.max_size), identity=identity,
        on_transient=accepted.put_nowait, trusted=trusted))
    try:
        yield endpoint, accepted
    finally:
        await endpoint.aclose()


def recorder() -> tuple[dict[int, list[str]], Callable[[str], Callable[[OutMessage], None]]]:
    fates: dict[int, list[str]] = {}

    def note(what: str) -> Callable[[OutMessage], None]:
        return lambda m: fates.setdefault(m.seq, []).append(what)

    return fates, note


# ---- item 9: lifetime orders sending within a niceness class (sans-I/O) ---------------------


def pend(m: OutMessage, deadline: float | None = None) -> Pending:
    return Pending(m, deadline)


def test_lifetime_orders_sending_within_a_niceness_class() -> None:
    q = SendQueue()
    late = OutMessage(b"nolife", niceness=1)
    slow = OutMessage(b"life5", niceness=1, lifetime=5)
    fast = OutMessage(b"life1", niceness=1, lifetime=1)
    urgent = OutMessage(b"n0life9", niceness=0, lifetime=9)
    for m in (late, slow, fast, urgent):
        q.push(pend(m, None if m.lifetime is None else m.lifetime))
    ready, expired = q.pop_ready(0.0)
    assert not expired
    assert [p.message.data for p in ready] == [b"n0life9", b"life1", b"life5", b"nolife"]
    # An antecedent still comes first, whatever its dependent's deadline.
    first = OutMessage(b"first", niceness=1)
    q.push(pend(OutMessage(b"dep", niceness=1, lifetime=1, antecedents=(first,)), 1.0))
    q.push(pend(OutMessage(b"other", niceness=1, lifetime=2), 2.0))
    q.push(pend(first, None))
    ready, _ = q.pop_ready(0.0)
    assert [p.message.data for p in ready] == [b"other", b"first", b"dep"]


def test_plain_bytes_merge_with_lifetimes_by_the_same_key() -> None:
    """Plain send() bytes are niceness 0 without lifetime: a later niceness-0 message with
    a lifetime goes before them, one without goes after, a niceness-1 one last."""
    q = SendQueue()
    q.push_data(b"plain1")
    q.push(pend(OutMessage(b"n0"), None))
    q.push(pend(OutMessage(b"n0life", lifetime=3), 3.0))
    q.push_data(b"plain2")
    q.push(pend(OutMessage(b"n1life", niceness=1, lifetime=0.5), 0.5))
    ready, _ = q.pop_ready(0.0)
    got = [p if type(p) is bytes else p.message.data for p in ready]
    assert got == [b"n0life", b"plain1", b"n0", b"plain2", b"n1life"]


def test_lifetime_orders_the_bytes_on_a_real_tcp_connection(run) -> None:
    async def main() -> None:
        stack = StreamStack("tcp", secure=False, mptcp=False)
        async with listening(stack) as (endpoint, accepted):
            client = await stack.connect(spec(endpoint.port))
            server = await accepted.get()
            sent: list[bytes] = []
            # Submitted in one loop iteration: the pump sees them together.
            for data, life in ((b"none", None), (b"30s", 30.0), (b"10s", 10.0),
                               (b"20s", 20.0)):
                client.submit(OutMessage(data, niceness=1, lifetime=life),
                              on_sent=lambda m: sent.append(m.data))
            got = [bytes(await server.receive()) for _ in range(4)]
            assert got == [b"10s", b"20s", b"30s", b"none"]
            await client.aclose()
            await server.aclose()

    run(main())


# ---- item 4: every message ends exactly once ------------------------------------------------


def test_the_ledger_ends_every_tracked_message_once() -> None:
    """Sans-I/O: acknowledged messages end Acked; at the end, what the kernel took ends
    Sent then Failed, what it never took ends Failed only; a message with nothing but
    on_send_error is tracked too (it must not fail once the peer has it)."""
    def cb(_m: OutMessage) -> None:
        return None

    ledger = Ledger()
    a, b, c, d = (Pending(OutMessage(b"x" * 10), None, on_acked=cb) for _ in range(4))
    only_error = Pending(OutMessage(b"e"), None, on_send_error=cb)
    for end, p in ((10, a), (20, b), (30, c), (40, d), (41, only_error)):
        assert ledger.track(end, p)
    assert not ledger.track(50, Pending(OutMessage(b"plain"), None))
    events = ledger.advance(20, 10)
    assert [(type(e).__name__, e.pending) for e in events] == [
        ("Sent", a), ("Sent", b), ("Acked", a)]
    error = ConnectionResetError()
    ended = ledger.fail(error, sent=30)
    assert [(type(e).__name__, e.pending) for e in ended] == [
        ("Failed", b), ("Sent", c), ("Failed", c), ("Failed", d), ("Failed", only_error)]
    assert all(e.error is error for e in ended if isinstance(e, Failed))
    assert not ledger and ledger.fail() == []


@contextlib.asynccontextmanager
async def stalled_peer() -> AsyncIterator[tuple[int, asyncio.Future[socket.socket]]]:
    """A raw kernel peer that accepts and never reads (tiny receive buffer): what the client
    writes stays sent-but-unacknowledged in its kernel."""
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind((LO4, 0))
    lsock.listen(4)
    lsock.setblocking(False)
    conn: asyncio.Future[socket.socket] = loop.create_future()

    async def accept() -> None:
        c, _ = await loop.sock_accept(lsock)
        conn.set_result(c)

    task = asyncio.ensure_future(accept())
    try:
        yield lsock.getsockname()[1], conn
    finally:
        task.cancel()
        lsock.close()
        if conn.done():
            conn.result().close()


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST


def test_messages_unacknowledged_at_a_reset_end_with_on_send_error(run, until) -> None:
    async def main() -> None:
        async with stalled_peer() as (port, conn):
            t = await StreamStack("tcp", secure=False, mptcp=False).connect(spec(port))
            peer = await conn
            fates, note = recorder()
            msgs = [OutMessage(bytes([i % 256]) * 65536) for i in range(64)]
            for m in msgs[:48]:
                t.submit(m, on_sent=note("sent"), on_acked=note("acked"),
                         on_expired=note("expired"), on_send_error=note("send_error"))
            await until(lambda: any("sent" in f for f in fates.values()) and
                        (outq(t.raw_socket) or 0) > 0, what="nothing reached the kernel")
            for m in msgs[48:]:  # the transport is full: these stay in our queue
                t.submit(m, on_sent=note("sent"), on_acked=note("acked"),
                         on_expired=note("expired"), on_send_error=note("send_error"))
            await asyncio.sleep(0)
            # ...or more, until it is (how much the kernel takes first depends on its
            # send-buffer autotuning).
            while t.queued_bytes == 0 and len(msgs) < 1024:
                more = [OutMessage(bytes([i % 256]) * 65536) for i in range(16)]
                msgs.extend(more)
                for m in more:
                    t.submit(m, on_sent=note("sent"), on_acked=note("acked"),
                             on_expired=note("expired"), on_send_error=note("send_error"))
                await asyncio.sleep(0)
            assert t.queued_bytes > 0
            reset(peer)
            await t.closed
            assert isinstance(t.failure, ConnectionResetError)
            for m in msgs:
                ends = [f for f in fates.get(m.seq, []) if f != "sent"]
                assert len(ends) == 1, (m, fates.get(m.seq))
                assert ends[0] in ("acked", "send_error")
                assert fates[m.seq].count("sent") <= 1
                if "sent" in fates[m.seq]:
                    assert fates[m.seq].index("sent") == 0
            outcomes = [fates[m.seq] for m in msgs]
            assert ["sent", "send_error"] in outcomes  # taken by the kernel, then reset
            assert ["send_error"] in outcomes  # never left our queue
            assert not any("expired" in o for o in outcomes)

    run(main())


def test_salvage_takes_the_messages_never_written(run, until) -> None:
    async def main() -> None:
        async with stalled_peer() as (port, conn):
            t = await StreamStack("tcp", secure=False, mptcp=False).connect(spec(port))
            peer = await conn
            salvaged: list[Pending] = []
            t.salvage = lambda ps: salvaged.extend(ps) or True
            fates, note = recorder()
            msgs = [OutMessage(b"m" * 65536, niceness=i % 2) for i in range(64)]
            for m in msgs[:48]:
                t.submit(m, on_sent=note("sent"), on_send_error=note("send_error"))
            await until(lambda: (outq(t.raw_socket) or 0) > 0)
            extra = 0
            while True:  # until the transport is full (the kernel's autotuning decides when)
                for m in msgs[48 + extra:]:
                    t.submit(m, on_sent=note("sent"), on_send_error=note("send_error"))
                await asyncio.sleep(0)
                if t.queued_bytes > 0 or len(msgs) >= 1024:
                    break
                extra = len(msgs) - 48
                msgs.extend(OutMessage(b"m" * 65536, niceness=i % 2) for i in range(16))
            t.submit_data(b"plain tail")
            await asyncio.sleep(0)
            reset(peer)
            await t.closed
            assert salvaged, "nothing was still queued"
            tail = [p for p in salvaged if p.message.data == b"plain tail"]
            assert len(tail) == 1  # plain bytes come back too, as niceness 0
            zero = [p for p in salvaged if p.message.niceness == 0]
            assert zero[-1] is tail[0]
            for p in salvaged:
                assert p.message.state == "new"  # ready for the next Transient's queue
                assert p.message.seq not in fates  # not reported: the owner re-sends them
            # in send order: niceness, then arrival
            keys = [(p.message.niceness, p.arrival) for p in salvaged]
            assert keys == sorted(keys)
            written = [m for m in msgs if m.seq in fates]
            # acknowledged (no on_acked given: on_sent was their last word) or failed
            assert all(fates[m.seq] in (["sent"], ["sent", "send_error"], ["send_error"])
                       for m in written)
            assert any(fates[m.seq][-1] == "send_error" for m in written)

    run(main())


def test_graceful_close_waits_for_the_acknowledgements(run) -> None:
    async def main() -> None:
        stack = StreamStack("tcp", secure=False, mptcp=False)
        async with listening(stack) as (endpoint, accepted):
            t = await stack.connect(spec(endpoint.port))
            server = await accepted.get()
            fates, note = recorder()
            msgs = [OutMessage(b"x" * 100_000) for _ in range(10)]
            for m in msgs:
                t.submit(m, on_acked=note("acked"), on_send_error=note("send_error"))
            await t.aclose()
            assert [fates.get(m.seq) for m in msgs] == [["acked"]] * 10
            await server.aclose()

    run(main())


@contextlib.asynccontextmanager
async def udp_peer() -> AsyncIterator[tuple[int, socket.socket]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LO4, 0))
    sock.setblocking(False)
    try:
        yield sock.getsockname()[1], sock
    finally:
        sock.close()


def test_a_datagram_the_kernel_refuses_gets_on_send_error_not_on_sent(run, until) -> None:
    async def main() -> None:
        async with udp_peer() as (port, peer):
            t = await UdpStack().connect(spec(port, "udp"))
            fates, note = recorder()
            big = OutMessage(b"b" * 70_000)  # over the largest IPv4 datagram: EMSGSIZE
            small = OutMessage(b"small")
            for m in (big, small):
                t.submit(m, on_sent=note("sent"), on_send_error=note("send_error"))
            await until(lambda: len(fates) == 2)
            assert fates == {big.seq: ["send_error"], small.seq: ["sent"]}
            assert isinstance(t, DatagramTransient)
            assert t.last_send_error is not None
            assert t.last_send_error.errno == 90  # EMSGSIZE
            assert peer.recv(100) == b"small"
            await t.aclose()

    run(main())


def test_icmp_errors_on_connected_udp_reach_on_soft_error(run, until) -> None:
    async def main() -> None:
        async with udp_peer() as (port, _peer):
            pass  # closed: nothing listens on `port` any more
        t = await UdpStack().connect(spec(port, "udp"))
        soft: list[BaseException] = []
        t.on_soft_error = soft.append
        t.submit_data(b"anyone?")
        await until(lambda: soft, what="no ICMP port unreachable reported")
        assert isinstance(soft[0], ConnectionRefusedError)
        assert t.soft_error is soft[0] and t.is_open
        await t.aclose()

    run(main())


# ---- Transient contract: control frames, first_data ----------------------------------------


def test_control_frames_go_to_on_control_never_to_the_inbox(run) -> None:
    async def main() -> None:
        stack = StreamStack("tcp", secure=False, mptcp=False)
        async with listening(stack) as (endpoint, accepted):
            client = await stack.connect(spec(endpoint.port))
            server: Transient = await accepted.get()
            assert not server.first_data.done()
            controls: list[bytes] = []
            server.on_control = controls.append
            client.submit_data(b"before")
            client.send_control(b"HELLO")
            client.submit_data(b"after")
            await server.first_data
            assert bytes(await server.receive()) == b"before"
            assert bytes(await server.receive()) == b"after"
            assert controls == [b"HELLO"]
            await client.aclose()
            await server.aclose()

    run(main())


# ---- item 6: path statistics from TCP_INFO -------------------------------------------------


def test_path_stats_on_loopback_are_measured(run) -> None:
    async def main() -> None:
        stack = StreamStack("tcp", secure=False, mptcp=False)
        async with listening(stack) as (endpoint, accepted):
            client = await stack.connect(spec(endpoint.port))
            server = await accepted.get()
            for _ in range(20):
                client.submit_data(b"p" * 50_000)
                await server.receive()
            stats = client.path_stats()
            assert stats.rtt_ms is not None and 0 < stats.rtt_ms < 50
            assert stats.rttvar_ms is not None and stats.rttvar_ms >= 0
            assert stats.loss is not None and 0.0 <= stats.loss <= 1.0
            assert stats.sent is not None and stats.sent > 10
            assert stats.rate_bps is not None and stats.rate_bps > 1e6
            assert stats.mtu == LO_MTU  # loopback's MTU, from IP_MTU
            await client.aclose()
            await server.aclose()
        async with udp_peer() as (port, _peer):
            u = await UdpStack().connect(spec(port, "udp"))
            ustats = u.path_stats()
            assert ustats.mtu == LO_MTU and ustats.rtt_ms is None and ustats.loss is None
            await u.aclose()

    run(main())


# ---- item 10: Local.port ------------------------------------------------------------------


def test_local_port_is_bound_by_racing_attempts_to_two_remotes(run) -> None:
    async def main() -> None:
        stack = StreamStack("tcp", secure=False, mptcp=False)
        probe = socket.socket()
        probe.bind((LO4, 0))
        port = probe.getsockname()[1]
        probe.close()
        async with listening(stack) as (one, got1), listening(stack) as (two, got2):
            a, b = await asyncio.gather(stack.connect(spec(one.port, local_port=port)),
                                        stack.connect(spec(two.port, local_port=port)))
            s1, s2 = await got1.get(), await got2.get()
            assert a.local_address == (LO4, port) == b.local_address
            assert s1.remote_address == (LO4, port) == s2.remote_address
            for t in (a, b, s1, s2):
                await t.aclose()
        async with udp_peer() as (uport, peer):
            u = await UdpStack().connect(spec(uport, "udp", local_port=port))
            u.submit_data(b"from my port")
            data, addr = await sock_recvfrom(peer, 100)
            assert data == b"from my port" and addr == (LO4, port)
            await u.aclose()

    run(main())


# ---- item 11: TLS tickets stay with their SSLContext; MPTCP fallback -------------------------


@pytest.fixture(scope="module")
def server_cert() -> Certificate:
    return tp.certs.self_signed(["localhost", LO4])


def test_a_ticket_is_only_offered_on_the_context_that_made_it(run, server_cert) -> None:
    async def main() -> None:
        stack = StreamStack("tls", secure=True, mptcp=False)
        server_settings = settings(alpn=("x-one", "x-two"))
        assoc = tp.AssociationStore().get("tickets")
        async with listening(stack, s=server_settings,
                             identity=(server_cert,)) as (endpoint, accepted):
            async def exchange(alpn: str, identity: tuple[Certificate, ...] = ()) -> Any:
                t = await stack.connect(spec(endpoint.port, "tls", s=settings(alpn=(alpn,)),
                                             assoc=assoc, pinned=(server_cert,),
                                             identity=identity))
                server = await accepted.get()
                server.submit_data(b"hi")  # a TLS 1.3 ticket arrives with the first data
                assert bytes(await t.receive()) == b"hi"
                reused = t.session_reused
                await t.aclose()
                await server.aclose()
                return reused

            assert await exchange("x-one") is False
            assert assoc.has_ticket("tls")
            # Another ALPN, another SSLContext: the ticket is not offered (it would fail).
            assert await exchange("x-two") is False
            # A client certificate makes yet another context.
            me = tp.certs.self_signed(["client"])
            assert await exchange("x-one", (me,)) is False
            assert await exchange("x-one") is True  # the first context resumes its own

    run(main())


def mptcp_available() -> bool:
    try:
        with open("/proc/sys/net/mptcp/enabled", encoding="ascii") as fh:
            enabled = fh.read().strip() == "1"
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
    except OSError:
        return False
    return enabled


@pytest.mark.skipif(not mptcp_available(), reason="MPTCP is not enabled in this kernel")
def test_an_mptcp_listener_reports_tcp_when_the_peer_fell_back(run) -> None:
    async def main() -> None:
        stack = StreamStack("mptcp", secure=False, mptcp=True)
        async with listening(stack) as (endpoint, accepted):
            plain = await StreamStack("tcp", secure=False, mptcp=False).connect(
                spec(endpoint.port))
            assert (await accepted.get()).stack == "tcp"
            multi = await stack.connect(spec(endpoint.port, "mptcp"))
            assert (await accepted.get()).stack == "mptcp"
            await plain.aclose()
            await multi.aclose()

    run(main())


# ---- item 10: clientAuth on TLS listeners --------------------------------------------------


async def s_client(port: int, ca: Certificate, client: Certificate | None) -> str:
    """openssl s_client as the peer; returns what it printed (stdout and stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "ca.pem").write_text(ca.cert_pem)
        argv = ["openssl", "s_client", "-connect", f"{LO4}:{port}", "-CAfile",
                str(d / "ca.pem"), "-ign_eof", "-quiet", "-verify_return_error"]
        if client is not None:
            assert client.key_pem is not None
            (d / "c.pem").write_text(client.cert_pem)
            (d / "k.pem").write_text(client.key_pem)
            argv += ["-cert", str(d / "c.pem"), "-key", str(d / "k.pem")]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        return out.decode(errors="replace")


def peer_fingerprint(t: Any) -> str | None:
    der = t.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return None if der is None else fingerprint_of_der(der)


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode,
                    reason="openssl is not installed")
def test_client_auth_require_with_openssl_and_taps_post_clients(run, server_cert) -> None:
    good = tp.certs.self_signed(["good-client"])
    wrong = tp.certs.self_signed(["wrong-client"])

    async def main() -> None:
        stack = StreamStack("tls", secure=True, mptcp=False)
        s = settings(client_auth="require")
        trusted = (Certificate(good.cert_pem),)  # the pin: certificate only, no key
        async with listening(stack, s=s, identity=(server_cert,),
                             trusted=trusted) as (endpoint, accepted):
            async def openssl(client: Certificate | None) -> Any:
                task = asyncio.ensure_future(s_client(endpoint.port, server_cert, client))
                got = asyncio.ensure_future(accepted.get())
                done, _ = await asyncio.wait({task, got},
                                             return_when=asyncio.FIRST_COMPLETED)
                if got in done:
                    server = got.result()
                    fp = peer_fingerprint(server)
                    await server.aclose()  # s_client ends when we close
                    await task
                    return fp
                got.cancel()
                return task.result()

            assert await openssl(good) == good.fingerprint
            # Refused in the handshake: the listener never sees a connection, s_client an
            # error (asyncio aborts the socket, so the alert may not get out).
            refused = await openssl(None)
            assert isinstance(refused, str) and "error" in refused
            refused = await openssl(wrong)
            assert isinstance(refused, str) and "error" in refused
            assert accepted.empty()

            async def ours(identity: tuple[Certificate, ...]) -> bool:
                t = await stack.connect(spec(endpoint.port, "tls", pinned=(server_cert,),
                                             identity=identity,
                                             s=settings(session_cache=False)))
                try:
                    # TLS 1.3: the server judges our certificate after our handshake ends;
                    # a refusal arrives as an alert.
                    server = await asyncio.wait_for(accepted.get(), 2) \
                        if identity == (good,) else None
                    if server is not None:
                        server.submit_data(b"welcome")
                    msg = await t.receive()
                    if server is not None:
                        await server.aclose()
                    return bytes(msg) == b"welcome"
                except tp.ConnectionClosedError:
                    return False
                finally:
                    await t.aclose()

            assert await ours((good,)) is True
            assert await ours(()) is False
            assert await ours((wrong,)) is False

    run(main())


def test_client_auth_request_serves_clients_without_a_certificate(run, server_cert) -> None:
    good = tp.certs.self_signed(["good-client"])

    async def main() -> None:
        stack = StreamStack("tls", secure=True, mptcp=False)
        async with listening(stack, s=settings(client_auth="request"),
                             identity=(server_cert,),
                             trusted=(Certificate(good.cert_pem),)) as (endpoint, accepted):
            for identity, expect in (((), None), ((good,), good.fingerprint)):
                t = await stack.connect(spec(endpoint.port, "tls", pinned=(server_cert,),
                                             identity=identity))
                t.submit_data(b"ping")
                server = await accepted.get()
                assert bytes(await server.receive()) == b"ping"
                assert peer_fingerprint(server) == expect
                await t.aclose()
                await server.aclose()

    run(main())
