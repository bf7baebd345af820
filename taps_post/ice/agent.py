"""ICE between two rendezvous peers (RFC 8445), over aioice: gathering, checks, the path.

Rule 1: this is the only module that imports aioice (pinned `aioice>=0.10,<0.14` in
pyproject.toml, tested with 0.13.0). aioice has no public way to gather from given addresses,
to read the nominated pair or the check list, or to feed received data anywhere but an
unbounded queue, so `_Connection` subclasses its `Connection` and `_Protocol` its
`StunProtocol`; every private aioice name is touched only in those two classes, on `self`,
each with a comment saying why. tests/runtime/test_ice_agent.py::test_aioice_internals pins
them, so an aioice upgrade that renames one fails there.
Rule 2: host candidates come only from the (interface, address) pairs the caller gives: the
policy already judged them (decide() for a rendezvous target), and aioice's own address
discovery is never called. Every socket this module opens (host, and those to STUN and TURN
servers) is bound to one of those addresses and held to its interface with SO_BINDTODEVICE;
where the kernel refuses, that address gives no candidate (its socket could route around the
policy) and `problems` says why. STUN and TURN are asked only from addresses of their family
and scope (a loopback address asks a loopback server only), so a query that cannot leave
does not hold the gathering up until its timeout.
Rule 3: the relay policy (`rendezvous.relay`, RELAY_POLICIES): `prohibit` allocates nothing
on a TURN server and drops every relay candidate the peer offers (each listed in `dropped`);
`require` offers relayed candidates only (no host socket is opened, nothing is asked of STUN,
and the relayed candidates' related address is hidden, RFC 9429 section 3.5.3), so every pair
runs through our TURN allocation; `prefer` gives our relayed candidates the highest type
preference, so relay pairs are formed and checked first (with aggressive nomination a
faster non-relay check can still win; `require` is the guarantee); `avoid` and
`no_preference` keep RFC 8445's defaults (relay last) and also hold every check the
controlling side makes on a pair through a relay (ours or the peer's) back for RELAY_HOLD
while a direct pair is still being checked: aioice nominates the first check that
succeeds, so ordering alone lets a relay that answers quickly win over a direct pair whose
first check was lost. The peer's
own policy governs its side: under `prohibit` a pair through the peer's TURN server is
refused by dropping the relay candidates the peer announces (each listed in `dropped`) and
by refusing every check that comes from one of their addresses (ip and port): it gets no
answer and no peer-reflexive candidate is learned from it (counted in
`IcePath.refused_checks`; until `connect()` has the peer's candidates no check is answered
at all, the peer retransmits), so no pair through the peer's relay can form. That is all
`prohibit` can guarantee on the peer's side: a peer that hides its relay candidates or
labels them host or srflx cannot be told from one behind a NAT (its TURN server's address
then looks like any peer-reflexive source), so its own policy governs its side. Other
peer-reflexive candidates stay legitimate (a side behind a NAT without STUN) and are not
refused.
Rule 4: a TURN password appears in no repr, str, exception message or log line:
`TurnServer`'s repr leaves it out, `redact_turn_url` replaces it with `***`, and parse errors
name the problem without echoing the URL.
Rule 5: `IcePath.send` never blocks and keeps datagram order: host, server-reflexive and
peer-reflexive pairs write straight to the pair's socket transport (which buffers in order
when the kernel's buffer is full); a relayed pair writes to `_RelayTransport`, which keeps one
FIFO queue per peer address drained by one task, because aioice's TURN calls are coroutines
and its own transport starts a task per datagram (which reorders while a channel is being
bound or refreshed). Received datagrams go straight from the socket's protocol to the path's
callback (no queue, no task); before the first `receive()` at most EARLY_DATAGRAMS are kept.
Only the peer's data is delivered: `_Protocol` takes each non-STUN datagram with its source
(for a relayed socket, the peer address the TURN server names) and passes on only what
arrives on the path's own pair or from the remote address of one of that socket's pairs
(addresses the peer announced, or its authenticated checks came from: with aggressive
nomination its first flight may come over another pair than the one this side settled on);
everything else is dropped and counted
(`IcePath.dropped_foreign`), so a host that knows one of our ports cannot inject datagrams
into the path. STUN still goes to aioice from any source (checks from unknown addresses
teach peer-reflexive candidates). A receiver that raises loses that datagram; only the
first such error is logged (`IcePath.receiver_errors` counts them).
Rule 6: ownership: the agent owns its sockets and allocations until `connect()` returns an
IcePath; from then on the path owns them (the stack closes it, stacks/base.py Rule 5) and
`IceAgent.aclose()` leaves it alone. A failed or cancelled `connect()` releases everything
itself. Closing never raises; deleting a TURN allocation waits RELAY_CLOSE_TIMEOUT at most,
then the socket is closed anyway (the server frees the allocation when it expires).
Rule 7: `report_parts()` is what explain shows (decision.decision IceCandidate/IcePair):
the local candidate of a pair that succeeded is the valid pair's (RFC 8445 section
7.2.5.3.1): the server-reflexive one when the check's mapped address is ours through a NAT,
a peer-reflexive one when it is an address we did not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import socket
import string
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aioice import stun, turn
from aioice.candidate import Candidate, candidate_foundation
from aioice.ice import CandidatePair, Connection, StunProtocol

from ..decision.decision import IceCandidate, IcePair
from ..decision.environment import host_name_problem, shown
from ..errors import ArgumentError, UsageError
from ..policy.registry import redact_turn_url, turn_parts, turn_url_problem
from .offer import MAX_CANDIDATES, candidate_problem

__all__ = ["EARLY_DATAGRAMS", "RELAY_CLOSE_TIMEOUT", "RELAY_HOLD", "RELAY_POLICIES",
           "IceAgent", "IceError", "IcePath", "TurnServer", "parse_stun", "parse_turn_url",
           "redact_turn_url"]

_log = logging.getLogger("taps_post.ice")

RELAY_POLICIES = ("require", "prefer", "no_preference", "avoid", "prohibit")
"""The values of `rendezvous.relay`, strictest first (Rule 3)."""
RELAY_CLOSE_TIMEOUT = 2.0
"""Seconds a TURN allocation's deletion may take when a path or agent closes (Rule 6)."""
RELAY_HOLD = 1.0
"""Under `avoid`/`no_preference`, seconds a check on a pair through a relay waits while a
direct pair may still succeed (Rule 3): aioice nominates the first check that succeeds, and
a relay path often answers before a direct check's first retransmission (0.5 s)."""
EARLY_DATAGRAMS = 128
"""Datagrams kept for a path's first `receive()` (a QUIC Initial flight is a few)."""
RELAY_QUEUE = 1024
"""Datagrams waiting for one peer behind a TURN channel binding, at most (then dropped)."""
DEFAULT_PORT = 3478
"""STUN and TURN's port (RFC 8489 section 18.6), named in the error for a missing one."""
_RCVBUF = 262144
"""What aioice asks for its sockets (turn.UDP_SOCKET_BUFFER_SIZE): a burst of datagrams."""

_TYPE_PREFERENCE = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}
"""RFC 8445 section 5.1.2.2's recommended type preferences (aioice's too)."""
_PREFER_RELAY = {"relay": 126, "host": 120, "prflx": 110, "srflx": 100}
"""Under `prefer`: relay highest, every type still distinct (section 5.1.2.1)."""
_STATE = {CandidatePair.State.FROZEN: "frozen", CandidatePair.State.WAITING: "waiting",
          CandidatePair.State.IN_PROGRESS: "in-progress",
          CandidatePair.State.SUCCEEDED: "succeeded", CandidatePair.State.FAILED: "failed"}
_ICE_ALPHABET = string.ascii_letters + string.digits
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True, slots=True)
class TurnServer:
    """A TURN server and the long-term credentials to allocate on it (RFC 8656).
    `repr()` and `str()` never show the password (Rule 4)."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    transport: str = "udp"
    """How we reach the server: udp or tcp (the relayed candidates are UDP either way)."""

    def __post_init__(self) -> None:
        if (why := host_name_problem(self.host)) is not None:
            raise ArgumentError(f"TURN server host: {why}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or \
                not 1 <= self.port <= 65535:
            raise ArgumentError(f"TURN server port: {self.port!r} is not 1-65535")
        if not isinstance(self.username, str) or not self.username or \
                not self.username.isprintable():
            raise ArgumentError("TURN server username: a non-empty printable string")
        if not isinstance(self.password, str) or not self.password.isprintable():
            raise ArgumentError("TURN server password: a printable string")
        if self.transport not in ("udp", "tcp"):
            raise ArgumentError(f"TURN server transport: {shown(str(self.transport))} is not "
                                "udp or tcp")

    @property
    def address(self) -> str:
        """host:port, as reports show the server (never with its credentials)."""
        return _hostport(self.host, self.port)

    @property
    def url(self) -> str:
        """The server as a `turn:` URL with the password as `***`."""
        return f"turn:{self.username}:***@{self.address}?transport={self.transport}"

    def __repr__(self) -> str:
        return (f"TurnServer(host={self.host!r}, port={self.port}, username={self.username!r}, "
                f"password='***', transport={self.transport!r})")

    __str__ = __repr__


def parse_turn_url(url: str) -> TurnServer:
    """`turn:USER:PASS@HOST:PORT[?transport=udp|tcp]` as a TurnServer (IPv6 hosts in
    brackets; udp when no transport is given). The policy's own check and split
    (`policy.registry.turn_url_problem`, `turn_parts`: the one TURN URL grammar, so what a
    policy accepts is what the TURN client uses): the password is everything between the
    first `:` after the user and the last `@`, taken literally. ValueError names what is
    wrong and never echoes the password (Rule 4)."""
    if not isinstance(url, str):
        raise ValueError(f"a TURN URL is a string, not {type(url).__name__}")
    problem = turn_url_problem(url)
    parts = turn_parts(url)
    if problem is not None or parts is None:
        raise ValueError(f"TURN URL {problem or 'entry not shown: not of the TURN form'}")
    username, password, hostport, query = parts
    try:
        host, port = _split_hostport(hostport)
        return TurnServer(host, port, username, password,
                          query.removeprefix("?transport=") or "udp")
    except ValueError as exc:
        raise ValueError(f"TURN URL {redact_turn_url(url)}: {exc}") from None


def parse_stun(text: str) -> tuple[str, int]:
    """`host:port` (or `stun:host:port`, `[v6]:port`) of a STUN server as (host, port);
    ValueError names what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a STUN server is a host:port string, not {type(text).__name__}")
    return _split_hostport(text.removeprefix("stun:"))


def _split_hostport(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT; the port is required (as the policy keys check it)."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise ValueError(f"{shown(text)} is not [IPv6]:PORT")
        port_text = after[1:]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{shown(host)} in brackets is not an IPv6 address") from None
    elif text.count(":") > 1:
        raise ValueError(f"{shown(text)}: write an IPv6 address in brackets, [fd00::1]:3478")
    else:
        host, colon, port_text = text.partition(":")
        if (why := host_name_problem(host)) is not None:
            raise ValueError(why)
        if not colon:
            raise ValueError(f"{shown(text)} has no port (HOST:PORT; STUN and TURN use "
                             f"{DEFAULT_PORT})")
    if not port_text:
        raise ValueError(f"{shown(text)} has an empty port")
    if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {shown(port_text)} is not 1-65535")
    return host, int(port_text)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- errors


class IceError(ConnectionError):
    """ICE found no working pair to the peer; the message says what was tried (the pairs
    checked and their states, the candidates each side had, what policy dropped)."""

    def __init__(self, message: str, *, pairs_checked: int = 0, relay_dropped: int = 0,
                 dropped: tuple[str, ...] = (), timed_out: bool = False) -> None:
        super().__init__(message)
        self.pairs_checked = pairs_checked
        """Pairs whose check was sent (succeeded, failed or still in progress)."""
        self.relay_dropped = relay_dropped
        """The peer's relay candidates dropped under `relay="prohibit"`."""
        self.dropped = dropped
        """Every candidate kept out, each with why (as `report_parts()`)."""
        self.timed_out = timed_out
        """The checks were still running when `connect()`'s timeout ran out."""


# --------------------------------------------------------------------------- aioice glue


def _through_relay(pair: CandidatePair) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def _discard(data: bytes) -> None:
    """The sink of a path told `receive(None)`: datagrams are dropped."""


class _Connection(Connection):
    """aioice's Connection with our gathering (Rule 2), direct delivery (Rule 5) and read
    access to its nominated pair and check list (Rule 7). Private aioice names: only here."""

    def __init__(self, controlling: bool) -> None:
        # RFC 8445 section 5.3: ufrag at least 24 bits of randomness, password 128 bits;
        # aioice's own are 4 and 22 characters, so ours are longer.
        super().__init__(ice_controlling=controlling, local_username=_random_ice(8),
                         local_password=_random_ice(32))
        self.sink: Callable[[bytes], None] | None = None
        """Where received data goes; None: into `early` until a path's first receive()."""
        self.early: deque[tuple[bytes, StunProtocol, tuple[str, int]]] = \
            deque(maxlen=EARLY_DATAGRAMS)
        """(data, the socket's protocol, its source) as it arrived before receive()."""
        self.on_closed: list[Callable[[], None]] = []
        self.relay_hold = 0.0
        """RELAY_HOLD under avoid/no_preference, else 0 (Rule 3)."""
        self.path_pair: tuple[StunProtocol, tuple[str, int]] | None = None
        """(protocol, remote address) of the path once made: the only source of data."""
        self.refused: set[tuple[str, int]] = set()
        """Under `prohibit`, the peer's relay addresses: checks from them are dropped."""
        self.refused_checks = 0
        self.hold_checks = False
        """Under `prohibit`, until connect() knows the peer's relay addresses: checks
        get no answer yet (the peer retransmits them), so none from a relay address
        slips in before it is known."""
        self.dropped_foreign = 0
        self.receiver_errors = 0

    def adopt(self, protocol: _Protocol) -> None:
        """Make `protocol` one of the connection's sockets as soon as it is open, so close()
        releases it even if gathering fails later."""
        # aioice private `_protocols`: the sockets it pairs with remote candidates, answers
        # checks on and closes in close(); its own gathering appends to it the same way.
        self._protocols.append(protocol)

    def gathered(self, candidates: list[Candidate]) -> None:
        """Gathering is over: `connect()` may run (aioice checks these flags)."""
        # aioice private `_local_candidates` (+ `_start`/`_end`): what its
        # gather_candidates() sets; connect() refuses to run before `_end` is set.
        self._local_candidates = list(candidates)
        self._local_candidates_start = True
        self._local_candidates_end = True

    def relay_protocols(self) -> list[_Protocol]:
        # aioice private `_protocols` (see adopt): the ones ours allocated on TURN servers.
        return [p for p in self._protocols if isinstance(p, _Protocol) and p.relay]

    def close_now(self) -> None:
        """Close every socket where it stands: the last resort when no event loop runs to
        carry out close() (a path dropped after its loop ended)."""
        # aioice private `_protocols` (see adopt).
        for protocol in self._protocols:
            with contextlib.suppress(Exception):
                protocol.transport.close()

    def selected(self) -> CandidatePair | None:
        """The nominated pair of our one component (None: none, or closed)."""
        # aioice private `_nominated`: component -> nominated pair; no public accessor.
        pair: CandidatePair | None = self._nominated.get(1)
        return pair

    def pairs(self) -> list[CandidatePair]:
        """The check list, best first (pairs removed after nomination are gone from it)."""
        # aioice private `_check_list`: no public view of the pairs and their states.
        return list(self._check_list)

    async def check_start(self, pair: CandidatePair) -> None:
        """aioice's check, held back for RELAY_HOLD on a pair through a relay while a
        direct pair is still alive, on the controlling side (Rule 3). The pair is marked in
        progress while it waits, so aioice's pacing moves on to the next pair instead of
        re-offering this one."""
        # Only the controlling side nominates: holding the controlled side's (triggered)
        # check would only delay its acceptance of the pair the controlling side chose.
        if self.relay_hold > 0 and self.ice_controlling and _through_relay(pair):
            self.check_state(pair, CandidatePair.State.IN_PROGRESS)
            loop = asyncio.get_running_loop()
            until = loop.time() + self.relay_hold
            # aioice private `_check_list_done`: set once ICE completed, failed or closed.
            while loop.time() < until and not self._check_list_done and any(
                    not _through_relay(p) and p.state != CandidatePair.State.FAILED
                    for p in self.pairs()):
                await asyncio.sleep(0.02)
            if self._check_list_done:
                pair.task = None
                return
        await super().check_start(pair)

    async def gather_candidates(self) -> None:
        """Never aioice's own (it would discover the machine's addresses itself)."""
        raise UsageError("IceAgent.gather() gathers; aioice's gather_candidates() is not used")

    def data_received(self, data: bytes, component: int) -> None:
        # aioice's StunProtocol calls this (public) for every non-STUN datagram on any of
        # our sockets, without its source; its own puts it on an unbounded queue for
        # recv(). `_Protocol` delivers with the source through `received()` instead, so
        # anything that still arrives here has no source to vouch for it: dropped.
        self.dropped_foreign += 1

    def accepts(self, protocol: StunProtocol, addr: tuple[str, int]) -> bool:
        """Whether data from `addr` on `protocol` is the peer's (Rule 5): the path's own
        pair, or the remote address of one of this socket's pairs. A pair's remote address
        is one the peer announced through signalling or one its authenticated check came
        from (peer-reflexive), never a stranger's. Other pairs than the path's count too:
        with aggressive nomination the peer may send its first flight on a pair that
        succeeded on its side before this side settled on another (dropping it costs a
        QUIC retransmission, about 0.5 s)."""
        # aioice private `_nominated` (see selected()) and `_check_list` (see pairs()).
        pinned = self.path_pair
        if pinned is None and (nominated := self._nominated.get(1)) is not None:
            pinned = (nominated.protocol, nominated.remote_addr)
        if pinned is not None and pinned[0] is protocol and (
                addr == pinned[1] or _same(addr, pinned[1])):
            return True
        return any(p.protocol is protocol and (addr == p.remote_addr or
                                               _same(addr, p.remote_addr))
                   for p in self._check_list)

    def received(self, data: bytes, protocol: StunProtocol, addr: tuple[str, int]) -> None:
        """One non-STUN datagram from `addr` on `protocol`: to the path if it is the
        peer's (Rule 5: no queue, no task), else dropped and counted."""
        if not self.accepts(protocol, addr):
            self.dropped_foreign += 1
            if self.dropped_foreign == 1:
                _log.debug("ICE: dropping data from %s, not the peer's path (each such "
                           "datagram is counted in IcePath.dropped_foreign)",
                           _hostport(str(addr[0]), int(addr[1])))
            return
        sink = self.sink
        if sink is None:
            self.early.append((data, protocol, addr))
            return
        try:
            sink(data)
        except Exception:
            self.receiver_errors += 1
            if self.receiver_errors == 1:  # once: a receiver that always raises floods no log
                _log.exception("the receiver of an ICE path raised; the datagram is dropped "
                               "(later ones are counted, not logged)")

    def request_received(self, message: stun.Message, addr: tuple[str, int],
                         protocol: StunProtocol) -> None:
        # aioice (public) answers a check here and learns a peer-reflexive candidate from
        # an unknown source. Under `prohibit` a check from the peer's relay address gets
        # no answer and forms no pair (Rule 3); before connect() knows them, no check is
        # answered (aioice would answer it and keep it as an early check).
        if self.hold_checks:
            return
        if self.refused and _address_key(addr) in self.refused:
            self.refused_checks += 1
            return
        super().request_received(message, addr, protocol)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            callbacks, self.on_closed = self.on_closed, []
            for callback in callbacks:
                callback()


class _Protocol(StunProtocol):
    """One of our sockets (host, or relayed through a TURN allocation) as aioice's
    protocol, remembering the address each peer's check answers saw us at (Rule 7)."""

    def __init__(self, receiver: _Connection, interface: str | None, *,
                 relay: bool = False) -> None:
        super().__init__(receiver)
        self.interface = interface
        self.relay = relay
        self.mapped: dict[tuple[str, int], tuple[str, int]] = {}
        """Destination -> the XOR-MAPPED-ADDRESS its last Binding answer carried."""

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        # aioice's own hands non-STUN data to the connection without its source (Rule 5);
        # STUN still goes to it, so checks from unknown addresses are answered as before.
        if not isinstance(data, bytes):  # a datagram socket gives bytes
            return
        source = (str(addr[0]), int(addr[1]))
        try:
            stun.parse_message(data)
        except ValueError:  # what aioice's own takes for data
            receiver = self.receiver
            if isinstance(receiver, _Connection):
                receiver.received(data, self, source)
            return
        super().datagram_received(data, source)

    async def request(self, request: stun.Message, addr: tuple[str, int],
                      integrity_key: bytes | None = None,
                      retransmissions: int | None = None
                      ) -> tuple[stun.Message, tuple[str, int]]:
        response, source = await super().request(request, addr, integrity_key,
                                                 retransmissions)
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
        if isinstance(mapped, tuple) and len(mapped) >= 2:
            self.mapped[(addr[0], addr[1])] = (str(mapped[0]), int(mapped[1]))
        return response, source


_TurnClient = turn.TurnClientUdpProtocol | turn.TurnClientTcpProtocol


class _RelayTransport(asyncio.DatagramTransport):
    """A TURN allocation as the datagram transport of a `_Protocol` (Rule 5): one FIFO queue
    per peer address, drained by one task, so datagrams to a peer leave in order even while
    its channel is bound or refreshed, and a binding that hangs for one peer holds up no
    other. Closing deletes the allocation (bounded, Rule 6)."""

    def __init__(self, inner: _TurnClient, relayed: tuple[str, int],
                 protocol: _Protocol) -> None:
        super().__init__()
        self._inner = inner
        self._relayed = relayed
        self._protocol = protocol
        self._queues: dict[tuple[str, int], deque[bytes]] = {}
        self._senders: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self.dropped = 0
        """Datagrams dropped because a peer's queue was full."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._relayed
        if name == "related_address":
            return getattr(self._inner, "mapped_address", None)
        return default

    def is_closing(self) -> bool:
        return self._closing or self._inner.transport.is_closing()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if addr is None or self.is_closing():
            return
        key = (str(addr[0]), int(addr[1]))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._senders[key] = asyncio.get_running_loop().create_task(
                self._drain(key, queue))
        if len(queue) >= RELAY_QUEUE:
            self.dropped += 1
            return
        queue.append(bytes(data))

    async def _drain(self, key: tuple[str, int], queue: deque[bytes]) -> None:
        try:
            while queue and not self._closing:
                data = queue.popleft()
                try:
                    await self._inner.send_data(data, key)
                except Exception as exc:  # as aioice's TurnTransport reports a failed send
                    self._protocol.error_received(exc)
        finally:
            self._queues.pop(key, None)
            self._senders.pop(key, None)

    def close(self) -> None:
        if self._close_task is not None:
            return
        self._closing = True
        for task in list(self._senders.values()):
            task.cancel()
        try:
            self._close_task = asyncio.get_running_loop().create_task(self._delete())
        except RuntimeError:  # no loop running any more: just let the socket go
            self._close_task = None
            self.abort()

    def abort(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            if self._inner.refresh_task is not None:
                self._inner.refresh_task.cancel()
            self._inner.transport.close()

    async def _delete(self) -> None:
        try:
            async with asyncio.timeout(RELAY_CLOSE_TIMEOUT):
                await self._inner.delete()
        except Exception as exc:
            _log.debug("TURN allocation %s not deleted: %s", _hostport(*self._relayed), exc)
        finally:
            self.abort()


def _random_ice(length: int) -> str:
    return "".join(secrets.choice(_ICE_ALPHABET) for _ in range(length))


def _hold(sock: socket.socket, interface: str | None) -> None:
    """Hold `sock` to `interface` (Rule 2); OSError when the kernel refuses."""
    if interface is None:
        return
    option = getattr(socket, "SO_BINDTODEVICE", None)
    if option is None:
        raise OSError(0, "this system has no SO_BINDTODEVICE")
    sock.setsockopt(socket.SOL_SOCKET, option, interface.encode() + b"\0")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _address_key(addr: tuple[str, int]) -> tuple[str, int]:
    """(ip, port) with the IP in one spelling, for sets of addresses."""
    try:
        return str(ipaddress.ip_address(addr[0])), int(addr[1])
    except ValueError:
        return str(addr[0]), int(addr[1])


def _same(a: tuple[str, int], b: tuple[str, int]) -> bool:
    try:
        return a[1] == b[1] and ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])
    except ValueError:
        return a == b


# --------------------------------------------------------------------------- the agent


@dataclass(slots=True)
class _Local:
    """One candidate we gathered."""

    candidate: Candidate
    interface: str | None
    """The interface its socket is held to."""
    base: tuple[str, int] | None
    """srflx: the host socket's address; relay: the TURN socket's own address."""
    protocol: _Protocol
    """Its socket (a srflx candidate shares its host candidate's)."""

    def report(self) -> IceCandidate:
        c = self.candidate
        base = None if self.base is None else _hostport(*self.base)
        interface = self.interface if c.type == "host" else None
        return IceCandidate(c.type, c.host, c.port, c.priority, interface, base)


@dataclass(frozen=True, slots=True)
class _Server:
    """A STUN or TURN server with its address per IP version (resolved once per gather)."""

    label: str
    addresses: dict[int, str]


class IceAgent:
    """One end of an ICE session with one component (docs/rendezvous.md): `gather()`, then
    the offer (`offer_parts()`) goes to the peer, then `connect()` with the peer's offer
    returns the nominated path. See the module rules for what is gathered and how the relay
    policy applies."""

    def __init__(self, *, controlling: bool,
                 host_addresses: Sequence[tuple[str | None, str]],
                 stun: Sequence[tuple[str, int]] = (), turn: Sequence[TurnServer] = (),
                 relay: str = "avoid", gather_timeout: float = 5.0) -> None:
        if relay not in RELAY_POLICIES:
            raise ArgumentError(f"relay: {shown(str(relay))} is not one of "
                                f"{', '.join(RELAY_POLICIES)}")
        hosts: list[tuple[str | None, str]] = []
        for item in host_addresses:
            if not isinstance(item, tuple) or len(item) != 2 or \
                    not (item[0] is None or isinstance(item[0], str)) or \
                    not isinstance(item[1], str):
                raise ArgumentError("host_addresses: (interface or None, address) pairs")
            interface, address = item
            try:
                ip = ipaddress.ip_address(address.partition("%")[0])
            except ValueError:
                raise ArgumentError(f"host_addresses: {shown(address)} is not an IP "
                                    "address") from None
            if (interface, str(ip)) not in hosts:
                hosts.append((interface, str(ip)))
        for server in stun:
            if not isinstance(server, tuple) or len(server) != 2 or \
                    host_name_problem(server[0]) is not None or \
                    not isinstance(server[1], int) or not 1 <= server[1] <= 65535:
                raise ArgumentError(f"stun: {server!r} is not a (host, port) pair")
        for turn_server in turn:
            if not isinstance(turn_server, TurnServer):
                raise ArgumentError("turn: TurnServer values (see parse_turn_url)")
        self.controlling = controlling
        self.relay = relay
        self._hosts = tuple(hosts)
        self._stun = tuple(stun)
        self._turn = tuple(turn)
        self._gather_timeout = gather_timeout
        self._conn = _Connection(controlling)
        if relay in ("avoid", "no_preference"):
            self._conn.relay_hold = RELAY_HOLD
        self._conn.hold_checks = relay == "prohibit"
        self._state = "new"
        self._locals: list[_Local] = []
        self._remote: tuple[IceCandidate, ...] = ()
        self._pairs: tuple[IcePair, ...] = ()
        self._dropped: list[str] = []
        self._problems: list[str] = []
        self._relay_dropped = 0
        self._path: IcePath | None = None
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        role = "controlling" if self.controlling else "controlled"
        return (f"<IceAgent {role} {self._state}, relay={self.relay}, "
                f"{len(self._locals)} local candidates>")

    @property
    def problems(self) -> tuple[str, ...]:
        """What went wrong while gathering (a socket the kernel would not hold to its
        interface, a STUN or TURN server that did not answer, ...), each a sentence."""
        return tuple(self._problems)

    @property
    def stun_servers(self) -> tuple[str, ...]:
        """The STUN servers, host:port (for the report)."""
        return tuple(_hostport(h, p) for h, p in self._stun)

    @property
    def turn_servers(self) -> tuple[str, ...]:
        """The TURN servers, host:port only (never their credentials)."""
        return tuple(s.address for s in self._turn)

    # ---- gathering

    async def gather(self) -> None:
        """Open the host sockets and ask the STUN and TURN servers (Rules 2 and 3), within
        `gather_timeout` seconds; what failed is in `problems`, what policy kept out in
        `report_parts()`'s dropped. Once per agent."""
        if self._state != "new":
            raise UsageError(f"IceAgent.gather() runs once, on a new agent (this one is "
                             f"{self._state})")
        self._state = "gathering"
        try:
            await self._gather()
        except BaseException:
            self._state = "closed"
            await _shutdown(self._conn)
            raise
        self._state = "gathered"

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._gather_timeout
        usable: list[tuple[int, str | None, str]] = []
        for rank, (interface, address) in enumerate(self._hosts):
            ip = ipaddress.ip_address(address)
            where = f"{address} on {interface}" if interface else address
            if ip.is_unspecified or ip.is_multicast:
                self._problems.append(f"host address {where}: not a unicast address")
            elif ip.version == 6 and ip.is_link_local:
                self._dropped.append(f"our host address {where}: link-local addresses are "
                                     "not offered (the peer could not tell the link)")
            else:
                usable.append((rank, interface, address))
        hosts: list[_Local] = []
        if self.relay == "require":
            for _, interface, address in usable:
                where = f"{address} on {interface}" if interface else address
                self._dropped.append(f"our host address {where}: no host or server-reflexive "
                                     "candidate (rendezvous.relay: require)")
        else:
            for rank, interface, address in usable:
                try:
                    hosts.append(await self._open_host(rank, interface, address))
                except OSError as exc:
                    where = f"{address} on {interface}" if interface else address
                    self._problems.append(f"host address {where}: {_why(exc)}")
        turn_servers = self._turn
        if self.relay == "prohibit":
            for server in turn_servers:
                self._dropped.append(f"TURN server {server.address}: not used "
                                     "(rendezvous.relay: prohibit)")
            turn_servers = ()
        stun_servers = self._stun if self.relay != "require" else ()
        if self.relay == "require":
            for host, port in self._stun:
                self._dropped.append(f"STUN server {_hostport(host, port)}: not asked "
                                     "(rendezvous.relay: require)")
        stun_resolved = await self._resolve([_hostport(h, p) for h, p in stun_servers],
                                            [h for h, _ in stun_servers], deadline)
        turn_resolved = await self._resolve([s.address for s in turn_servers],
                                            [s.host for s in turn_servers], deadline)

        jobs: list[tuple[str, asyncio.Task[_Local]]] = []
        for (_, port), resolved in zip(stun_servers, stun_resolved, strict=True):
            if resolved is None:
                continue
            asked = False
            for local in hosts:
                ip = ipaddress.ip_address(local.candidate.host)
                target = resolved.addresses.get(ip.version)
                if target is None or ipaddress.ip_address(target).is_loopback != ip.is_loopback:
                    continue
                asked = True
                jobs.append((f"STUN server {resolved.label} from {local.candidate.host}",
                             loop.create_task(self._reflexive(local, (target, port)))))
            if not asked:
                self._problems.append(f"STUN server {resolved.label}: none of our host "
                                      "addresses is of its family and scope")
        for turn_server, resolved in zip(turn_servers, turn_resolved, strict=True):
            if resolved is None:
                continue
            asked = False
            for rank, interface, address in usable:
                ip = ipaddress.ip_address(address)
                target = resolved.addresses.get(ip.version)
                if target is None or ipaddress.ip_address(target).is_loopback != ip.is_loopback:
                    continue
                asked = True
                jobs.append((f"TURN server {resolved.label} from {address}",
                             loop.create_task(self._relayed(turn_server, target, rank,
                                                            interface, address))))
            if not asked:
                self._problems.append(f"TURN server {resolved.label}: none of our host "
                                      "addresses is of its family and scope")
        found: list[_Local] = list(hosts)
        if jobs:
            remaining = max(0.0, deadline - loop.time())
            try:
                _, pending = await asyncio.wait([t for _, t in jobs], timeout=remaining)
            finally:  # also when gather() itself is cancelled: no query outlives it
                for _, task in jobs:
                    task.cancel()
            if pending:
                await asyncio.wait(pending)
            for label, task in jobs:
                if task in pending:
                    self._problems.append(f"{label}: no answer within "
                                          f"{self._gather_timeout:g} s")
                elif (error := task.exception()) is not None:
                    self._problems.append(f"{label}: {_why(error)}")
                else:
                    local = task.result()
                    if not any(_same((o.candidate.host, o.candidate.port),
                                     (local.candidate.host, local.candidate.port))
                               and o.protocol is local.protocol for o in found):
                        found.append(local)  # else redundant (RFC 8445 section 5.1.3)
        found.sort(key=lambda item: -item.candidate.priority)
        if len(found) > MAX_CANDIDATES:
            for extra in found[MAX_CANDIDATES:]:
                self._dropped.append(f"our {extra.candidate.type} candidate "
                                     f"{_hostport(extra.candidate.host, extra.candidate.port)}: "
                                     f"over the {MAX_CANDIDATES} an offer holds")
            found = found[:MAX_CANDIDATES]
        self._locals = found
        for problem in self._problems:
            _log.debug("ICE gathering: %s", problem)
        self._conn.gathered([item.candidate for item in found])

    async def _resolve(self, labels: list[str], hosts: list[str],
                       deadline: float) -> list[_Server | None]:
        """Each server's address per IP version (the system's resolver, as getaddrinfo;
        an IP literal is itself), or None with a problem recorded."""
        loop = asyncio.get_running_loop()
        if not hosts:
            return []
        tasks = [loop.create_task(loop.getaddrinfo(h, None, type=socket.SOCK_DGRAM))
                 for h in hosts]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            task.cancel()
        servers: list[_Server | None] = []
        for label, task in zip(labels, tasks, strict=True):
            if task in pending:
                self._problems.append(f"server {label}: its name did not resolve in time")
                servers.append(None)
                continue
            if (error := task.exception()) is not None:
                self._problems.append(f"server {label}: its name did not resolve "
                                      f"({_why(error)})")
                servers.append(None)
                continue
            addresses: dict[int, str] = {}
            for family, *_, sockaddr in task.result():
                version = 6 if family == socket.AF_INET6 else 4
                addresses.setdefault(version, str(sockaddr[0]))
            servers.append(_Server(label, addresses))
        return servers

    def _priority(self, kind: str, rank: int) -> int:
        """RFC 8445 section 5.1.2.1 for component 1: the type preference (Rule 3), then the
        host address's place in the policy's order as the local preference."""
        prefs = _PREFER_RELAY if self.relay == "prefer" else _TYPE_PREFERENCE
        return (1 << 24) * prefs[kind] + (1 << 8) * max(0, 65535 - rank) + 255

    async def _open_host(self, rank: int, interface: str | None, address: str) -> _Local:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 \
            else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _hold(sock, interface)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((address, 0))
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _Protocol(self._conn, interface), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._conn.adopt(protocol)
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host), component=1,
            transport="udp", priority=self._priority("host", rank), host=host, port=port,
            type="host")
        return _Local(protocol.local_candidate, interface, None, protocol)

    async def _reflexive(self, host: _Local, server: tuple[str, int]) -> _Local:
        """Our address as the STUN server sees this host socket (RFC 8489 Binding)."""
        request = stun.Message(message_method=stun.Method.BINDING,
                               message_class=stun.Class.REQUEST)
        response, _ = await host.protocol.request(request, server)
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
        if not isinstance(mapped, tuple):
            raise ConnectionError("the answer has no XOR-MAPPED-ADDRESS")
        base = host.candidate
        rank = 65535 - ((base.priority >> 8) & 0xFFFF)
        candidate = Candidate(
            foundation=candidate_foundation("srflx", "udp", f"{base.host}|{server[0]}"),
            component=1, transport="udp", priority=self._priority("srflx", rank),
            host=str(mapped[0]), port=int(mapped[1]), type="srflx",
            related_address=base.host, related_port=base.port)
        return _Local(candidate, host.interface, (base.host, base.port), host.protocol)

    async def _relayed(self, server: TurnServer, target: str, rank: int,
                       interface: str | None, address: str) -> _Local:
        """An allocation on `server` from a socket bound to `address` on `interface`."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 \
            else socket.AF_INET
        udp = server.transport == "udp"
        sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        server_addr = (target, server.port)
        inner: _TurnClient | None = None
        try:
            sock.setblocking(False)
            _hold(sock, interface)
            sock.bind((address, 0))
            base = sock.getsockname()[:2]
            if udp:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                sock.connect(server_addr)
                _, inner = await loop.create_datagram_endpoint(
                    lambda: turn.TurnClientUdpProtocol(
                        server_addr, username=server.username, password=server.password,
                        lifetime=turn.DEFAULT_ALLOCATION_LIFETIME,
                        channel_refresh_time=turn.DEFAULT_CHANNEL_REFRESH_TIME), sock=sock)
            else:
                await loop.sock_connect(sock, server_addr)
                _, inner = await loop.create_connection(
                    lambda: turn.TurnClientTcpProtocol(
                        server_addr, username=server.username, password=server.password,
                        lifetime=turn.DEFAULT_ALLOCATION_LIFETIME,
                        channel_refresh_time=turn.DEFAULT_CHANNEL_REFRESH_TIME), sock=sock)
            relayed = await inner.connect()
        except BaseException:
            if inner is not None:
                with contextlib.suppress(Exception):
                    inner.transport.close()
            else:
                sock.close()
            raise
        # No await from here on: a cancelled gathering cannot leave the allocation unowned.
        protocol = _Protocol(self._conn, interface, relay=True)
        transport = _RelayTransport(inner, (str(relayed[0]), int(relayed[1])), protocol)
        inner.receiver = protocol  # aioice's TURN client hands received data to `receiver`
        protocol.connection_made(transport)
        self._conn.adopt(protocol)
        related = getattr(inner, "mapped_address", None) or base
        if self.relay == "require":  # hide the address we may not use (RFC 9429 3.5.3)
            related = ("::", 9) if ":" in str(relayed[0]) else ("0.0.0.0", 9)
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("relay", "udp", f"{relayed[0]}|{target}"),
            component=1, transport="udp", priority=self._priority("relay", rank),
            host=str(relayed[0]), port=int(relayed[1]), type="relay",
            related_address=str(related[0]), related_port=int(related[1]))
        return _Local(protocol.local_candidate, interface, (str(base[0]), int(base[1])),
                      protocol)

    def offer_parts(self) -> tuple[str, str, tuple[str, ...]]:
        """(ufrag, pwd, candidate lines best first) for our Offer."""
        if self._state in ("new", "gathering"):
            raise UsageError("IceAgent.offer_parts() after gather()")
        return (self._conn.local_username, self._conn.local_password,
                tuple(item.candidate.to_sdp() for item in self._locals))

    # ---- connecting

    async def connect(self, ufrag: str, pwd: str, candidates: Sequence[str],
                      timeout: float) -> IcePath:
        """Check pairs with the peer's candidates (filtered: Rule 3, and those no local
        candidate can pair with) until one is nominated, within `timeout` seconds: the
        path over it. IceError, with everything released, when none works."""
        if self._state != "gathered":
            raise UsageError(f"IceAgent.connect() once, after gather() (this agent is "
                             f"{self._state})")
        self._state = "connecting"
        try:
            return await self._connect(ufrag, pwd, candidates, timeout)
        except IceError:
            self._state = "failed"
            await _shutdown(self._conn)
            raise
        except BaseException:
            self._state = "failed"
            self._closing = _close_soon(self._conn)
            raise

    async def _connect(self, ufrag: str, pwd: str, candidates: Sequence[str],
                       timeout: float) -> IcePath:
        conn = self._conn
        for name, value, low in (("username fragment", ufrag, 4), ("password", pwd, 22)):
            if not isinstance(value, str) or not low <= len(value) <= 256 or \
                    not _ICE_CHARS.fullmatch(value):
                raise IceError(f"the peer's ICE {name} is malformed "
                               f"({low}-256 ice-chars expected)")
        conn.remote_username = ufrag
        conn.remote_password = pwd
        families: set[int] = {ipaddress.ip_address(item.candidate.host).version
                              for item in self._locals
                              if item.candidate.type in ("host", "relay")}
        for text in candidates:
            verdict = self._judge(text, families)
            if isinstance(verdict, str):
                self._dropped.append(verdict)
            else:
                await conn.add_remote_candidate(verdict)
        conn.hold_checks = False  # the peer's relay addresses are known (Rule 3)
        await conn.add_remote_candidate(None)
        try:
            async with asyncio.timeout(timeout):
                await conn.connect()
        except TimeoutError:
            self._snapshot(None)
            raise self._failure(timeout) from None
        except ConnectionError:
            self._snapshot(None)
            raise self._failure(None) from None
        pair = conn.selected()
        if pair is None:
            self._snapshot(None)
            raise self._failure(None)
        self._snapshot(pair)
        path = self._make_path(pair)
        self._path = path
        self._state = "connected"
        return path

    def _judge(self, text: object, families: set[int]) -> Candidate | str:
        """The peer's candidate line as an aioice Candidate, or why it is dropped."""
        if (why := candidate_problem(text)) is not None or not isinstance(text, str):
            return f"the peer's candidate: {why}"
        try:
            c = Candidate.from_sdp(text.removeprefix("candidate:"))
        except (ValueError, IndexError):
            return f"the peer's candidate {shown(text, 80)}: not understood"
        try:
            ip = ipaddress.ip_address(c.host)
        except ValueError:
            return (f"the peer's {c.type} candidate {shown(c.host)}: not an IP address "
                    "(mDNS names are not resolved)")
        c.host = str(ip)
        where = f"the peer's {c.type} candidate {_hostport(c.host, c.port)}"
        if c.component != 1:
            return f"{where}: component {c.component} (one component is used)"
        if c.transport.lower() != "udp":
            return f"{where}: transport {shown(c.transport)} (UDP only)"
        if c.type not in ("host", "srflx", "relay"):
            return f"{where}: type {shown(c.type)} is not one a peer offers"
        if c.port == 0 or ip.is_unspecified or ip.is_multicast:
            return f"{where}: not a unicast address and port"
        if c.type == "relay" and self.relay == "prohibit":
            self._relay_dropped += 1
            self._conn.refused.add(_address_key((c.host, c.port)))
            return f"{where} (rendezvous.relay: prohibit)"
        if ip.version not in families:
            return f"{where}: we have no IPv{ip.version} candidate to pair it with"
        return c

    def _local_of(self, protocol: StunProtocol) -> _Local | None:
        return next((item for item in self._locals if item.protocol is protocol
                     and item.candidate.type in ("host", "relay")), None)

    def _valid_local(self, pair: CandidatePair) -> IceCandidate:
        """The local candidate of `pair` as explain shows it (Rule 7)."""
        protocol = pair.protocol
        own = self._local_of(protocol)
        if own is None:  # a socket we did not offer (over MAX_CANDIDATES)
            c = pair.local_candidate
            return IceCandidate(c.type, c.host, c.port, c.priority, None, None)
        if own.candidate.type == "relay" or pair.state != CandidatePair.State.SUCCEEDED or \
                not isinstance(protocol, _Protocol):
            return own.report()
        mapped = protocol.mapped.get(pair.remote_addr)
        base = (own.candidate.host, own.candidate.port)
        if mapped is None or _same(mapped, base):
            return own.report()
        for item in self._locals:
            if item.protocol is protocol and item.candidate.type == "srflx" and \
                    _same(mapped, (item.candidate.host, item.candidate.port)):
                return item.report()
        rank = 65535 - ((own.candidate.priority >> 8) & 0xFFFF)
        return IceCandidate("prflx", mapped[0], mapped[1], self._priority("prflx", rank),
                            None, _hostport(*base))

    def _snapshot(self, selected: CandidatePair | None) -> None:
        """Keep what the checks did for `report_parts()` (the connection may close)."""
        self._remote = tuple(_remote_report(c) for c in self._conn.remote_candidates)
        self._pairs = tuple(
            IcePair(self._valid_local(pair), _remote_report(pair.remote_candidate),
                    _STATE.get(pair.state, str(pair.state)), pair is selected)
            for pair in self._conn.pairs())

    def _make_path(self, pair: CandidatePair) -> IcePath:
        local = self._valid_local(pair)
        protocol = pair.protocol
        interface = protocol.interface if isinstance(protocol, _Protocol) else None
        own = self._local_of(protocol)
        base = None if own is None else (own.candidate.host, own.candidate.port)
        if own is not None and own.base is not None:
            base = own.base
        self._conn.path_pair = (protocol, pair.remote_addr)
        return IcePath(self._conn, protocol.transport, local=(local.address, local.port),
                       remote=pair.remote_addr, interface=interface, kind=local.kind,
                       base=base)

    def _failure(self, timeout: float | None) -> IceError:
        pairs = self._pairs
        states = Counter(p.state for p in pairs)
        checked = sum(states[s] for s in ("succeeded", "failed", "in-progress"))
        ours = [f"{c.kind} {_hostport(c.address, c.port)}" for c in
                (item.report() for item in self._locals)]
        theirs = [f"{c.kind} {_hostport(c.address, c.port)}" for c in self._remote]
        peer_dropped = [d for d in self._dropped if d.startswith("the peer's")]
        if not ours:
            what = "we gathered no candidate"
        elif not theirs:
            what = "the peer offered no candidate we can use"
        elif not pairs:
            what = "no local and remote candidate could be paired"
        else:
            detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            what = f"{checked} of {len(pairs)} candidate pairs checked ({detail}), none worked"
            if timeout is not None:
                what += f" within {timeout:g} s"
        parts = [f"ICE found no path to the peer: {what}",
                 f"our candidates: {_listed(ours)}", f"the peer's: {_listed(theirs)}"]
        if peer_dropped:
            relay = (f", {self._relay_dropped} of them relay candidates under "
                     "rendezvous.relay: prohibit" if self._relay_dropped else "")
            parts.append(f"{len(peer_dropped)} of the peer's candidates dropped{relay}")
        if self._conn.refused_checks:
            parts.append(f"{self._conn.refused_checks} checks from the peer's relay "
                         "addresses refused (rendezvous.relay: prohibit)")
        if self._problems:
            parts.append(f"gathering: {'; '.join(self._problems[:4])}")
        return IceError("; ".join(parts), pairs_checked=checked,
                        relay_dropped=self._relay_dropped, dropped=tuple(self._dropped),
                        timed_out=timeout is not None)

    # ---- reporting and closing

    def report_parts(self) -> tuple[tuple[IceCandidate, ...], tuple[IceCandidate, ...],
                                    tuple[IcePair, ...], tuple[str, ...]]:
        """(our candidates, the peer's, the pairs judged best first with the nominated one
        marked, what was dropped and why) for a RendezvousReport (Rule 7). The pairs are
        as `connect()` left them."""
        return (tuple(item.report() for item in self._locals), self._remote, self._pairs,
                tuple(self._dropped))

    async def aclose(self) -> None:
        """Release the sockets and TURN allocations the agent still owns (Rule 6): all of
        them before `connect()` returned a path, none after (the path owns them). Never
        raises; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._closing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._closing)
        elif self._path is None:
            await _shutdown(self._conn)


def _listed(items: list[str], limit: int = 6) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _remote_report(c: Candidate) -> IceCandidate:
    base = None
    if c.related_address is not None and c.related_port is not None:
        try:
            hidden = ipaddress.ip_address(c.related_address).is_unspecified
        except ValueError:
            hidden = True
        if not hidden:
            base = _hostport(c.related_address, c.related_port)
    return IceCandidate(c.type, c.host, c.port, c.priority, None, base)


async def _shutdown(conn: _Connection) -> None:
    """Close `conn` (Rule 6): every TURN deletion starts at once, then aioice's close()
    closes each socket. Never raises."""
    for protocol in conn.relay_protocols():
        with contextlib.suppress(Exception):
            protocol.transport.close()
    try:
        await conn.close()
    except Exception as exc:
        _log.debug("closing an ICE connection: %s", exc)


_CLOSING: set[asyncio.Task[None]] = set()
"""Closes in flight (the loop holds tasks weakly)."""


def _close_soon(conn: _Connection) -> asyncio.Task[None] | None:
    try:
        task = asyncio.get_running_loop().create_task(_shutdown(conn))
    except RuntimeError:  # no loop: close the sockets where they stand
        conn.close_now()
        return None
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
    return task


# --------------------------------------------------------------------------- the path


class IcePath:
    """The nominated pair as a `stacks.base.DatagramPath` (structurally): `send` and
    `receive` as Rule 5 says, `close` as Rule 6 says."""

    def __init__(self, conn: _Connection, transport: asyncio.DatagramTransport, *,
                 local: tuple[str, int], remote: tuple[str, int], interface: str | None,
                 kind: str, base: tuple[str, int] | None) -> None:
        self.local = local
        """Our end as ICE names it: the host address, our NAT's mapping (srflx, prflx) or
        the relayed address allocated to us (relay)."""
        self.remote = remote
        """The peer's candidate we send to."""
        self.interface = interface
        """The interface the pair's socket is held to (None: the caller gave none)."""
        self.kind = kind
        """host, srflx, prflx or relay: the kind of our local candidate of the pair."""
        self.base = base
        """The socket's own address (for relay: the socket to the TURN server)."""
        self._conn = conn
        self._transport = transport
        self._closed = False
        self._released = False
        self._closing: asyncio.Task[None] | None = None
        conn.on_closed.append(self._lost)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (f"<IcePath {self.kind} {_hostport(*self.local)} -> "
                f"{_hostport(*self.remote)}{state}>")

    @property
    def dropped_foreign(self) -> int:
        """Datagrams (not STUN) that arrived on one of the session's sockets from an
        address other than the path's peer (Rule 5), dropped; an injection attempt or
        a stray sender. Counted from the start of the checks."""
        return self._conn.dropped_foreign

    @property
    def refused_checks(self) -> int:
        """Checks from the peer's relay addresses left unanswered under `prohibit`
        (Rule 3)."""
        return self._conn.refused_checks

    @property
    def receiver_errors(self) -> int:
        """Datagrams dropped because the receiver raised (only the first is logged)."""
        return self._conn.receiver_errors

    @property
    def closed(self) -> bool:
        """Closed by `close()`, or by ICE itself (consent to send expired, RFC 7675)."""
        return self._closed

    def send(self, data: bytes) -> None:
        """Send one datagram to the peer, in order, without blocking; dropped once closed."""
        if self._closed or self._transport.is_closing():
            return
        self._transport.sendto(data, self.remote)

    def receive(self, callback: Callable[[bytes], None] | None) -> None:
        """Deliver every datagram from now on to `callback` (None: drop them); the first
        call first delivers what arrived before it (at most EARLY_DATAGRAMS)."""
        if self._closed:
            return
        self._conn.sink = _discard if callback is None else callback
        early = self._conn.early
        while early:  # checked again: only what came over the path's own pair
            self._conn.received(*early.popleft())

    def close(self) -> None:
        """Release the sockets and TURN allocations (Rule 6); idempotent, never raises."""
        if self._released:
            return
        self._closed = self._released = True
        self._conn.sink = _discard
        self._closing = _close_soon(self._conn)

    async def wait_closed(self) -> None:
        """Until what `close()` started is done (TURN deletions included)."""
        if self._closing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._closing)

    def _lost(self) -> None:
        self._closed = self._released = True  # aioice closed the connection itself
