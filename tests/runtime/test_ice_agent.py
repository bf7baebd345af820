"""taps_post.ice.agent against itself on loopback: real sockets, real aioice, no mocks.

Two IceAgents in one event loop gather host candidates on 127.0.0.1 (and ::1), exchange
their offer parts directly and connect; the path they get carries datagrams in order. The
relay policy is checked with a crafted relay candidate of the peer, failures with a
candidate nobody answers. With coturn installed (`turnserver`, as CI installs it), a
TURN server on loopback checks relayed paths (`require`, `prefer`), TURN over TCP, bad
credentials, and that no TURN password reaches a log record, a repr or a message. The NAT
cases (server-reflexive and peer-reflexive pairs) run in the NAT lab (tests/natlab.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import select
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioice import turn as aioice_turn
from aioice.ice import CandidatePair, StunProtocol

from dnslab import Daemon
from taps_post.errors import ArgumentError, UsageError
from taps_post.ice import agent as ice_agent
from taps_post.ice.agent import (
    IceAgent,
    IceError,
    IcePath,
    TurnServer,
    parse_stun,
    parse_turn_url,
    redact_turn_url,
)

LO4 = ("lo", "127.0.0.1")
LO6 = ("lo", "::1")
SECRET = "pa55-Wrd:with@signs"
"""A TURN password with the characters a URL parser could trip on."""
PLAIN = "pa55-Wrd-plain"
"""One without `@`, where a URL without a host part cannot be told from one with it."""


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def connected(a: IceAgent, b: IceAgent, timeout: float = 5.0) -> tuple[IcePath, IcePath]:
    await asyncio.gather(a.gather(), b.gather())
    pa, pb = await asyncio.gather(a.connect(*b.offer_parts(), timeout=timeout),
                                  b.connect(*a.offer_parts(), timeout=timeout))
    return pa, pb


async def exchange(pa: IcePath, pb: IcePath, until: Any, count: int, window: int) -> None:
    """`count` numbered datagrams each way, `window` at a time (a burst larger than the
    receiving socket's buffer would lose datagrams to the kernel, not to the path); every
    one must arrive once, in order."""
    at_a: list[bytes] = []
    at_b: list[bytes] = []
    pa.receive(at_a.append)
    pb.receive(at_b.append)
    padding = bytes(range(256)) * 4
    for start in range(0, count, window):
        end = min(count, start + window)
        for i in range(start, end):
            pa.send(b"a%06d" % i + padding[: i % 1000])
            pb.send(b"b%06d" % i)
        await until(lambda end=end: len(at_a) >= end and len(at_b) >= end, timeout=5,
                    what=lambda end=end: f"{len(at_a)} and {len(at_b)} of {end} datagrams")
    assert at_b == [b"a%06d" % i + padding[: i % 1000] for i in range(count)]
    assert at_a == [b"b%06d" % i for i in range(count)]


def _udp_port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


# ---- host candidates on loopback ------------------------------------------------------------


def test_host_pair_on_loopback(run: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        try:
            assert (pa.kind, pb.kind) == ("host", "host")
            assert pa.local == pb.remote and pb.local == pa.remote
            assert pa.interface == "lo" and pa.base == pa.local
            assert not pa.closed
            for path in (pa, pb):  # stacks.base.DatagramPath, structurally
                for name in ("local", "remote", "interface", "send", "receive", "close"):
                    assert hasattr(path, name)
            local, remote, pairs, dropped = a.report_parts()
            assert [(c.kind, c.address, c.interface) for c in local] == \
                [("host", "127.0.0.1", "lo")]
            assert [(c.kind, c.address, c.port) for c in remote] == \
                [("host", "127.0.0.1", pa.remote[1])]
            assert [(p.state, p.nominated) for p in pairs] == [("succeeded", True)]
            assert pairs[0].local == local[0] and dropped == ()
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()
            await a.aclose()
            await b.aclose()

    run(main())


def test_two_thousand_datagrams_each_way_in_order(run: Any, until: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        try:
            await exchange(pa, pb, until, 2000, 100)
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()

    run(main(), timeout=20)


def test_only_the_given_host_addresses_are_offered(run: Any) -> None:
    async def main() -> None:
        only = IceAgent(controlling=True, host_addresses=[LO4])
        await only.gather()
        lines = only.offer_parts()[2]
        assert len(lines) == 1 and lines[0].split()[4] == "127.0.0.1"
        assert [c.address for c in only.report_parts()[0]] == ["127.0.0.1"]
        await only.aclose()
        if not _has_ipv6_loopback():
            return
        both = IceAgent(controlling=True, host_addresses=[LO6, LO4, LO6])
        await both.gather()
        lines = both.offer_parts()[2]
        # the caller's order is the local preference: ::1 first, each address once
        assert [line.split()[4] for line in lines] == ["::1", "127.0.0.1"]
        assert int(lines[0].split()[3]) > int(lines[1].split()[3])
        await both.aclose()
        none = IceAgent(controlling=True, host_addresses=[])
        await none.gather()
        assert none.offer_parts()[2] == ()
        await none.aclose()

    run(main())


def test_a_socket_is_held_to_its_interface(run: Any) -> None:
    """SO_BINDTODEVICE is applied: an interface that does not exist gives no candidate."""

    async def main() -> None:
        agent = IceAgent(controlling=True, host_addresses=[("nosuch0", "127.0.0.1"), LO4])
        await agent.gather()
        assert [c.interface for c in agent.report_parts()[0]] == ["lo"]
        assert len(agent.problems) == 1
        assert "127.0.0.1 on nosuch0: No such device" in agent.problems[0]
        await agent.aclose()

    run(main())


def test_relay_prohibit_drops_the_peers_relay_candidate(run: Any) -> None:
    relay_line = ("4b3cd1e0f 1 udp 16777215 198.18.0.99 3478 typ relay raddr 198.18.0.98 "
                  "rport 5000")

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4], relay="prohibit")
        b = IceAgent(controlling=False, host_addresses=[LO4])
        await asyncio.gather(a.gather(), b.gather())
        ufrag, pwd, lines = b.offer_parts()
        pa, pb = await asyncio.gather(a.connect(ufrag, pwd, (*lines, relay_line), timeout=5),
                                      b.connect(*a.offer_parts(), timeout=5))
        try:
            _, remote, pairs, dropped = a.report_parts()
            assert [c.kind for c in remote] == ["host"]
            assert dropped == ("the peer's relay candidate 198.18.0.99:3478 "
                               "(rendezvous.relay: prohibit)",)
            assert all(p.remote.kind != "relay" for p in pairs)
            assert pa.kind == "host"
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()

    run(main())


def test_peer_candidates_that_cannot_be_used_are_dropped_with_why(run: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        await a.gather()
        lines = ["1 1 udp 1 host.local 4000 typ host",
                 "1 2 udp 1 127.0.0.2 4000 typ host",
                 "1 1 tcp 1 127.0.0.2 4000 typ host tcptype active",
                 "1 1 udp 1 127.0.0.2 4000 typ prflx",
                 "1 1 udp 1 0.0.0.0 4000 typ host",
                 "1 1 udp 1 ::1 4000 typ host",
                 "not a candidate"]
        with pytest.raises(IceError) as caught:
            await a.connect("abcd", "A" * 22, lines, timeout=1)
        dropped = a.report_parts()[3]
        assert len(dropped) == len(lines)
        for fragment in ("mDNS names are not resolved", "component 2", "UDP only",
                         "type 'prflx'", "not a unicast address", "no IPv6 candidate",
                         "not a candidate line"):
            assert any(fragment in d for d in dropped), fragment
        assert "the peer offered no candidate we can use" in str(caught.value)
        await a.aclose()

    run(main())


def test_ice_error_when_no_pair_answers(run: Any) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            silent = s.getsockname()[1]
            a = IceAgent(controlling=True, host_addresses=[LO4])
            await a.gather()
            port = a.report_parts()[0][0].port
            started = time.monotonic()
            with pytest.raises(IceError) as caught:
                await a.connect("abcd", "A" * 22, [f"1 1 udp 2130706431 127.0.0.1 {silent} "
                                                   "typ host"], timeout=0.5)
            assert time.monotonic() - started < 2
        error = caught.value
        assert isinstance(error, ConnectionError)
        assert error.pairs_checked == 1 and error.timed_out and error.relay_dropped == 0
        message = str(error)
        assert "1 of 1 candidate pairs checked (1 in-progress), none worked within 0.5 s" \
            in message
        assert "our candidates: host 127.0.0.1:" in message
        assert f"the peer's: host 127.0.0.1:{silent}" in message
        assert [p.state for p in a.report_parts()[2]] == ["in-progress"]
        assert _udp_port_free("127.0.0.1", port)  # a failed connect released its sockets
        await a.aclose()
        await a.aclose()

    run(main())


def test_ice_error_names_the_relay_policy(run: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=False, host_addresses=[LO4], relay="prohibit")
        await a.gather()
        with pytest.raises(IceError) as caught:
            await a.connect("abcd", "A" * 22,
                            ["1 1 udp 16777215 198.18.0.9 50000 typ relay raddr 0.0.0.0 "
                             "rport 9"], timeout=5)
        assert caught.value.relay_dropped == 1 and caught.value.pairs_checked == 0
        assert "1 of the peer's candidates dropped, 1 of them relay candidates under " \
            "rendezvous.relay: prohibit" in str(caught.value)
        assert caught.value.dropped == ("the peer's relay candidate 198.18.0.9:50000 "
                                        "(rendezvous.relay: prohibit)",)
        await a.aclose()

    run(main())


def test_malformed_peer_credentials_fail_cleanly(run: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        await a.gather()
        with pytest.raises(IceError, match="ICE password is malformed"):
            await a.connect("abcd", "short", [], timeout=1)
        await a.aclose()

    run(main())


def test_close_releases_and_never_raises(run: Any, until: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        got: list[bytes] = []
        pb.receive(got.append)
        await a.aclose()  # the path owns the sockets now: it keeps working
        pa.send(b"still here")
        await until(lambda: got == [b"still here"])
        pa.close()
        pa.close()
        await pa.wait_closed()
        assert pa.closed
        pa.send(b"dropped")  # a closed path drops, never raises
        pa.receive(None)
        assert _udp_port_free(*pa.local)
        pb.close()
        await pb.wait_closed()
        await b.aclose()
        assert _udp_port_free(*pb.local)

    run(main())


def test_datagrams_before_the_first_receive_are_kept(run: Any, until: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        try:
            for i in range(3):
                pa.send(b"early %d" % i)
            early = pb._conn.early  # what the path keeps for its first receive()
            await until(lambda: len(early) == 3)
            got: list[bytes] = []
            pb.receive(got.append)
            assert got == [b"early 0", b"early 1", b"early 2"]
            pb.receive(None)
            pa.send(b"dropped")  # on loopback it is in pb's socket queue once send returns
            sock = pb._transport.get_extra_info("socket")
            await until(lambda: not select.select([sock], [], [], 0)[0])  # pb has read it
            assert len(early) == 0
            pb.receive(got.append)
            pa.send(b"late")
            await until(lambda: got[-1:] == [b"late"])
            assert b"dropped" not in got
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()

    run(main())


def test_receiver_exception_drops_only_that_datagram(run: Any, until: Any,
                                                     caplog: Any) -> None:
    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        b = IceAgent(controlling=False, host_addresses=[LO4])
        pa, pb = await connected(a, b)
        got: list[bytes] = []

        def receiver(data: bytes) -> None:
            if data == b"boom":
                raise RuntimeError("receiver bug")
            got.append(data)

        pb.receive(receiver)
        pa.send(b"boom")
        pa.send(b"after")
        await until(lambda: got == [b"after"])
        assert "receiver of an ICE path raised" in caplog.text
        pa.close()
        pb.close()
        await pa.wait_closed()
        await pb.wait_closed()

    run(main())


def test_usage_errors(run: Any) -> None:
    with pytest.raises(ArgumentError, match="relay"):
        IceAgent(controlling=True, host_addresses=[LO4], relay="sometimes")
    with pytest.raises(ArgumentError, match="not an IP address"):
        IceAgent(controlling=True, host_addresses=[("lo", "localhost")])
    with pytest.raises(ArgumentError, match="pairs"):
        IceAgent(controlling=True, host_addresses=["127.0.0.1"])  # type: ignore[list-item]
    with pytest.raises(ArgumentError, match="stun"):
        IceAgent(controlling=True, host_addresses=[LO4], stun=[("x", 0)])

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4])
        with pytest.raises(UsageError):
            a.offer_parts()
        with pytest.raises(UsageError):
            await a.connect("abcd", "A" * 22, [], timeout=1)
        await a.gather()
        with pytest.raises(UsageError):
            await a.gather()
        with pytest.raises(UsageError):  # never aioice's own gathering
            await a._conn.gather_candidates()
        await a.aclose()

    run(main())


def test_stun_servers_out_of_scope_or_silent(run: Any) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            silent = s.getsockname()[1]
            a = IceAgent(controlling=True, host_addresses=[LO4], gather_timeout=0.3,
                         stun=[("198.18.0.1", 3478), ("127.0.0.1", silent)])
            started = time.monotonic()
            await a.gather()
            assert time.monotonic() - started < 1.5
        assert a.problems == (
            "STUN server 198.18.0.1:3478: none of our host addresses is of its family and "
            "scope",
            f"STUN server 127.0.0.1:{silent} from 127.0.0.1: no answer within 0.3 s")
        assert [c.kind for c in a.report_parts()[0]] == ["host"]
        await a.aclose()

    run(main())


# ---- TURN servers and URLs (no sockets) -----------------------------------------------------


def test_turn_server_repr_has_no_password() -> None:
    server = TurnServer("198.18.0.1", 3478, "alice", SECRET)
    for text in (repr(server), str(server), server.url, server.address, f"{server}"):
        assert SECRET not in text
    assert server.url == "turn:alice:***@198.18.0.1:3478?transport=udp"
    assert TurnServer("fd00::1", 5349, "u", "p", "tcp").address == "[fd00::1]:5349"
    with pytest.raises(ArgumentError, match="transport"):
        TurnServer("198.18.0.1", 3478, "alice", SECRET, "tls")
    with pytest.raises(ArgumentError, match="port"):
        TurnServer("198.18.0.1", 0, "alice", SECRET)


def test_parse_turn_url() -> None:
    server = parse_turn_url(f"turn:alice:{SECRET}@turn.example:3479?transport=tcp")
    assert (server.host, server.port, server.username, server.password, server.transport) \
        == ("turn.example", 3479, "alice", SECRET, "tcp")
    assert parse_turn_url("turn:u:p@[fd00::1]:3478").host == "fd00::1"
    assert parse_turn_url("turn:u:p@198.18.0.1:1").transport == "udp"


@pytest.mark.parametrize(("url", "fragment"), [
    (f"turns:alice:{SECRET}@h:1", "turns:) is not supported"),
    (f"TURN:alice:{SECRET}@h:1", "starts with 'turn:'"),
    (f"turn:alice{PLAIN}", "no USER:PASS@"),
    (f"turn:alice:{PLAIN}", "no USER:PASS@"),
    (f"turn:alice_{PLAIN}@h:1", "must be USER:PASS"),
    (f"turn:alice:{SECRET}@h", "no port"),
    (f"turn:alice:{SECRET}@h:1?transport=sctp", "?transport=udp or ?transport=tcp"),
    (f"turn:alice:{SECRET}@h:99999", "from 1 to 65535"),
    (f"turn:alice:{SECRET}@h:", "from 1 to 65535"),
    (f"turn:alice:{SECRET}@fd00::1:3478", "in brackets"),
    (f"turn:alice:{SECRET}@bad..host:1", "neither an IP address nor a DNS name"),
    (f"turn::{SECRET}@h:1", "must be USER:PASS"),
])
def test_parse_turn_url_errors_never_echo_the_password(url: str, fragment: str) -> None:
    """The TURN client parses with the policy's own check (one grammar for both)."""
    with pytest.raises(ValueError) as caught:
        parse_turn_url(url)
    message = str(caught.value)
    assert fragment in message
    assert SECRET not in message and "pa55" not in message


def test_redact_turn_url() -> None:
    assert redact_turn_url(f"turn:alice:{SECRET}@h:1?transport=udp") == \
        "turn:alice:***@h:1?transport=udp"
    assert redact_turn_url("turn:h:3478") == "turn:***"
    assert redact_turn_url(f"turn:alice:{PLAIN}") == "turn:***"
    assert redact_turn_url(f"turn:alice_{PLAIN}@h:1") == "turn:***@h:1"
    assert redact_turn_url("stun") == "***"  # not of the TURN form: hidden whole


def test_parse_stun() -> None:
    assert parse_stun("stun.example:3479") == ("stun.example", 3479)
    assert parse_stun("stun:198.18.0.1:3478") == ("198.18.0.1", 3478)
    assert parse_stun("[fd00::1]:19302") == ("fd00::1", 19302)
    for bad in ("", "h", "h:0", "h:x", "[198.18.0.1]:1", "fd00::1", "[fd00::1]", "a b:1"):
        with pytest.raises(ValueError):
            parse_stun(bad)


# ---- the aioice details agent.py relies on (its Rule 1) -------------------------------------


def test_aioice_internals(run: Any) -> None:
    """Each private aioice name agent.py touches, on a real Connection: an aioice upgrade
    that renames one fails here, not in some distant test."""

    async def main() -> None:
        conn = ice_agent._Connection(controlling=True)
        for name, kind in (("_protocols", list), ("_local_candidates", list),
                           ("_check_list", list), ("_nominated", dict)):
            assert isinstance(getattr(conn, name), kind), name
        for name in ("_local_candidates_start", "_local_candidates_end", "_check_list_done"):
            assert getattr(conn, name) is False, name
        assert len(conn.local_username) == 8 and len(conn.local_password) == 32
        assert list(inspect.signature(StunProtocol.request).parameters) == \
            ["self", "request", "addr", "integrity_key", "retransmissions"]
        assert list(inspect.signature(ice_agent.Connection.data_received).parameters) == \
            ["self", "data", "component"]
        # the hooks the source filter and the prohibit refusal override (Rules 3 and 5)
        assert list(inspect.signature(ice_agent.Connection.request_received).parameters) == \
            ["self", "message", "addr", "protocol"]
        assert list(inspect.signature(StunProtocol.datagram_received).parameters) == \
            ["self", "data", "addr"]
        assert {s.name for s in CandidatePair.State} == \
            {"FROZEN", "WAITING", "IN_PROGRESS", "SUCCEEDED", "FAILED"}
        client = aioice_turn.TurnClientUdpProtocol(("198.18.0.1", 3478), username="u",
                                                   password="p", lifetime=600,
                                                   channel_refresh_time=500)
        for name in ("receiver", "mapped_address", "refresh_task"):
            assert hasattr(client, name), name
        for name in ("connect", "delete", "send_data"):
            assert inspect.iscoroutinefunction(getattr(client, name)), name
        await conn.close()

    run(main())


# ---- TURN on loopback (coturn) --------------------------------------------------------------


@dataclass(frozen=True)
class Coturn:
    port: int
    log: str

    def server(self, transport: str = "udp", password: str = SECRET) -> TurnServer:
        return TurnServer("127.0.0.1", self.port, "alice", password, transport)


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            with contextlib.suppress(OSError):
                t.bind(("127.0.0.1", port))
                return port


def _stun_answers(port: int) -> bool:
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            answer = s.recv(2048)
        except OSError:
            return False
    return answer[:2] == b"\x01\x01"


@pytest.fixture(scope="module")
def coturn() -> Iterator[Coturn]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn (turnserver) is not installed; .ci/run installs it")
    port = _free_port()
    low = random.randrange(20000, 30000, 200)
    with tempfile.TemporaryDirectory(prefix="taps-ice-coturn-") as tmp:
        log = os.path.join(tmp, "log")
        daemon = Daemon(
            [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
             "--relay-ip=127.0.0.1", f"--min-port={low}", f"--max-port={low + 199}",
             "--lt-cred-mech", f"--user=alice:{SECRET}", "--realm=taps.test",
             "--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli",
             "--log-file=stdout", "--simple-log", f"--pidfile={tmp}/pid",
             f"--userdb={tmp}/db"], netns=None, log=Path(log), label="turnserver")
        try:
            deadline = time.monotonic() + 10
            while not _stun_answers(port):
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"turnserver did not start: {daemon.log()[-2000:]}")
            yield Coturn(port, log)
        finally:
            daemon.stop()


def test_relay_require_runs_through_turn(run: Any, until: Any, coturn: Coturn,
                                         caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        servers = [coturn.server()]
        a = IceAgent(controlling=True, host_addresses=[LO4], turn=servers, relay="require",
                     stun=[("127.0.0.1", coturn.port)])
        b = IceAgent(controlling=False, host_addresses=[LO4], turn=servers, relay="require")
        pa, pb = await connected(a, b)
        try:
            assert (pa.kind, pb.kind) == ("relay", "relay")
            lines = a.offer_parts()[2]
            assert len(lines) == 1 and " typ relay raddr 0.0.0.0 rport 9" in lines[0]
            local, remote, pairs, dropped = a.report_parts()
            assert [c.kind for c in local] == ["relay"] and local[0].base is not None
            assert remote[0].base is None  # the peer hid its related address too
            assert pairs[0].nominated and pairs[0].local.kind == "relay"
            assert any("rendezvous.relay: require" in d for d in dropped)
            assert a.turn_servers == (f"127.0.0.1:{coturn.port}",)
            await exchange(pa, pb, until, 500, 25)
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()
        for agent in (a, b):
            for text in (repr(agent), str(agent.report_parts()), str(agent.problems)):
                assert SECRET not in text

    run(main(), timeout=20)
    assert "TURN allocation deleted" in caplog.text
    assert SECRET not in caplog.text


def test_relay_prefer_checks_relay_pairs_first(run: Any, until: Any, coturn: Coturn) -> None:
    """Relay pairs rank first, so their checks start first; which check succeeds first is
    the network's to say (aggressive nomination), only `require` guarantees a relay."""

    async def main() -> None:
        servers = [coturn.server("tcp")]
        a = IceAgent(controlling=True, host_addresses=[LO4], turn=servers, relay="prefer")
        b = IceAgent(controlling=False, host_addresses=[LO4], turn=servers, relay="prefer")
        pa, pb = await connected(a, b)
        try:
            kinds = [line.split()[7] for line in a.offer_parts()[2]]
            assert kinds == ["relay", "host"]
            pairs = a.report_parts()[2]
            assert pairs[0].local.kind == "relay" and pairs[0].remote.kind == "relay"
            assert pa.interface == "lo"
            got: list[bytes] = []
            pb.receive(got.append)
            pa.send(b"hello")
            await until(lambda: got == [b"hello"], timeout=5)
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()

    run(main())


def test_relay_avoid_keeps_relay_last_and_prohibit_allocates_nothing(
        run: Any, coturn: Coturn) -> None:
    async def main() -> None:
        servers = [coturn.server()]
        a = IceAgent(controlling=True, host_addresses=[LO4], turn=servers)
        b = IceAgent(controlling=False, host_addresses=[LO4], turn=servers,
                     relay="prohibit")
        pa, pb = await connected(a, b)
        try:
            assert [line.split()[7] for line in a.offer_parts()[2]] == ["host", "relay"]
            assert [line.split()[7] for line in b.offer_parts()[2]] == ["host"]
            assert b.report_parts()[3] == (f"TURN server 127.0.0.1:{coturn.port}: not used "
                                           "(rendezvous.relay: prohibit)",
                                           f"the peer's relay candidate "
                                           f"{a.report_parts()[0][1].address}:"
                                           f"{a.report_parts()[0][1].port} "
                                           "(rendezvous.relay: prohibit)")
            assert (pa.kind, pb.kind) == ("host", "host")
        finally:
            pa.close()
            pb.close()
            await pa.wait_closed()
            await pb.wait_closed()

    run(main())


def test_turn_with_a_wrong_password(run: Any, coturn: Coturn, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-secret-value"

    async def main() -> None:
        a = IceAgent(controlling=True, host_addresses=[LO4], turn=[coturn.server(password=wrong)])
        await a.gather()
        assert [c.kind for c in a.report_parts()[0]] == ["host"]
        assert len(a.problems) == 1 and "401" in a.problems[0]
        assert a.problems[0].startswith(f"TURN server 127.0.0.1:{coturn.port} from 127.0.0.1")
        await a.aclose()

    run(main())
    assert wrong not in caplog.text
