"""A user-space delay relay on 127.0.0.1: UDP datagrams and TCP bytes, fixed one-way delay.

There is no netem on this machine, so the QUIC benchmark (bench/quic.py) emulates a WAN round
trip with this relay instead. It forwards between 127.0.0.1 ports only and adds a fixed delay
per direction. It never reorders: each direction is one FIFO delay line with a single timer,
and a packet or chunk goes out at max(its due time, the previous one's), in arrival order.

Run it as a process (bench/quic.py does that by default, so the relay has its own core and
its timers do not compete with the client's and server's crypto in one event loop):

    .venv/bin/python -P bench/relay.py --one-way-ms 25 --udp 4433 --tcp 8443

It prints one JSON line, {"udp": {"4433": 51234}, "tcp": {"8443": 51235}, "pid": ...}, mapping
each target port to the relay port that forwards to it, and runs until its stdin closes (so it
dies with the parent) or it gets SIGTERM. It can also run in-process: `await Relay.start(...)`.

UDP: one upstream socket per client address (like a NAT), so replies find their way back.

TCP: the kernel completes a loopback TCP handshake at once, before the relay can delay
anything, so the relay *emulates* the handshake timing instead (unless --no-syn-emulation):
the upstream connection is opened one one-way delay after the client's connect (the SYN
reaching the server), and bytes the client writes count as sent no earlier than one full
round trip after its connect (when the SYN-ACK would have reached it). With a one-way delay
d, a client that connects at 0 and writes at once has its first byte delivered at 3d, as on
a real path: SYN (d) + SYN-ACK (d) + data (d). What differs from a real path is only that the
client's own connect() returns at once; anything the client waits for downstream of the
server is timed faithfully. Server to client bytes are delayed by d. EOF follows the bytes
(it rides the same delay line). Every relay socket has TCP_NODELAY.

Timing: epoll waits in whole milliseconds, rounded up, so a plain asyncio timer fires up to
~1 ms late on each hop (a 50 ms round trip measured ~51.2 ms). The relay therefore wakes 1.5 ms
early and sleeps the rest off with time.sleep (blocking, fine in its own process; --coarse
turns it off, and the in-process mode of bench/quic.py does not use it). What is left is the
relay's own forwarding cost, about 0.2 ms per round trip; bench/quic.py measures and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

HOST = "127.0.0.1"
_EARLY = 0.0015
"""Seconds before an item's due time at which its timer wakes the relay (see DelayLine)."""
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
"""The monotonic clock's resolution: asyncio's timer tolerance (see DelayLine._fire)."""

__all__ = ["DelayLine", "Relay"]


class DelayLine:
    """A FIFO that calls `emit(item)` for each item at its due time, in order, one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emit: Callable[[Any], None],
                 precise: bool = True) -> None:
        self._loop = loop
        self._early = _EARLY if precise else 0.0
        self._emit = emit
        self._items: collections.deque[tuple[float, Any]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_due = 0.0
        self.closed = False

    def put(self, due: float, item: Any) -> None:
        if self.closed:
            return
        due = max(due, self._last_due)  # FIFO: never overtake what is already queued
        self._last_due = due
        self._items.append((due, item))
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        # epoll waits in whole milliseconds, rounded up, so an asyncio timer fires up to ~1 ms
        # late. Wake up to _EARLY before the due time and sleep the rest off precisely (the
        # relay runs in its own process; blocking it for under a millisecond is harmless).
        self._timer = self._loop.call_at(self._items[0][0] - self._early, self._fire)

    def _fire(self) -> None:
        self._timer = None
        items = self._items
        # Without precise timing, asyncio's own tolerance applies: a timer may run up to one
        # clock resolution early, so everything due by then goes (what asyncio's loop takes
        # as its resolution; on another loop, an item a timer woke for too early re-arms it).
        slack = self._early or _CLOCK_RESOLUTION
        while items and not self.closed:
            due = items[0][0]
            wait = due - time.monotonic()  # the loop's clock (asyncio uses time.monotonic)
            if wait > slack:
                break  # not yet: re-arm
            if wait > 0 and self._early:
                time.sleep(wait)
            self._emit(items.popleft()[1])
        if items and not self.closed:
            self._arm()

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# ---- UDP ----------------------------------------------------------------------------------


class _UdpUpstream(asyncio.DatagramProtocol):
    """The relay's socket towards the target for one client address."""

    def __init__(self, front: _UdpFront, client: tuple[str, int]) -> None:
        self.front = front
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.down: DelayLine | None = None
        self.up: DelayLine | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.up = DelayLine(loop, self._send_up, self.front.precise)
        self.down = DelayLine(loop, self._send_down, self.front.precise)

    def _send_up(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    def _send_down(self, data: bytes) -> None:
        front = self.front.transport
        if front is not None and not front.is_closing():
            front.sendto(data, self.client)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.down is not None
        self.down.put(self.front.loop.time() + self.front.delay, data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a closed target: drop, as a network would

    def close(self) -> None:
        for line in (self.up, self.down):
            if line is not None:
                line.close()
        if self.transport is not None:
            self.transport.close()


class _UdpFront(asyncio.DatagramProtocol):
    """The relay's listening UDP socket; one _UdpUpstream per client address."""

    def __init__(self, target: tuple[str, int], delay: float, precise: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.delay = delay
        self.precise = precise
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _UdpUpstream] = {}
        self._pending: dict[tuple[str, int], list[tuple[float, bytes]]] = {}
        self.datagrams = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        due = self.loop.time() + self.delay
        flow = self.flows.get(addr)
        if flow is not None and flow.up is not None:
            flow.up.put(due, data)
            return
        pending = self._pending.get(addr)
        if pending is not None:  # the upstream socket is being created
            pending.append((due, data))
            return
        self._pending[addr] = [(due, data)]
        self.loop.create_task(self._open(addr))

    async def _open(self, addr: tuple[str, int]) -> None:
        _, flow = await self.loop.create_datagram_endpoint(
            lambda: _UdpUpstream(self, addr), local_addr=(HOST, 0), remote_addr=self.target)
        self.flows[addr] = flow
        assert flow.up is not None
        for due, data in self._pending.pop(addr):
            flow.up.put(due, data)

    def error_received(self, exc: Exception) -> None:
        pass

    def close(self) -> None:
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()


# ---- TCP ----------------------------------------------------------------------------------

_EOF = object()


class _TcpSide(asyncio.Protocol):
    """One of the two TCP connections of a relayed flow; what it reads goes to the peer."""

    def __init__(self, flow: _TcpFlow, name: str) -> None:
        self.flow = flow
        self.name = name
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.flow.received(self.name, data)

    def eof_received(self) -> bool:
        self.flow.received(self.name, _EOF)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.flow.lost(self.name)

    def write(self, item: Any) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if item is _EOF:
            if t.can_write_eof():
                t.write_eof()
            else:
                t.close()
        else:
            t.write(item)


class _TcpFlow:
    def __init__(self, relay: _TcpFront, client: _TcpSide) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.client = client
        self.server: _TcpSide | None = None
        self.accepted = self.loop.time()
        d = relay.delay
        # Client bytes count as sent no earlier than the emulated SYN-ACK's arrival (+2d).
        self.not_before = self.accepted + (2 * d if relay.emulate_syn else 0.0)
        self.up = DelayLine(self.loop, self._to_server, relay.precise)
        self.down = DelayLine(self.loop, client.write, relay.precise)
        self._up_early: list[Any] = []
        self._lost: set[str] = set()
        self.closed = False
        self._task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        if self.relay.emulate_syn:
            await asyncio.sleep(self.relay.delay)  # the SYN travels to the server
        try:
            _, side = await self.loop.create_connection(
                lambda: _TcpSide(self, "server"), *self.relay.target)
        except OSError:
            self.close()
            return
        self.server = side
        for item in self._up_early:
            side.write(item)
        self._up_early.clear()

    def _to_server(self, item: Any) -> None:
        if self.server is None:
            self._up_early.append(item)
        else:
            self.server.write(item)

    def received(self, name: str, item: Any) -> None:
        now = self.loop.time()
        if name == "client":
            self.up.put(max(now, self.not_before) + self.relay.delay, item)
        else:
            self.down.put(now + self.relay.delay, item)

    def lost(self, name: str) -> None:
        # A reset or close on one side: let what is in flight arrive, then close the other.
        self._lost.add(name)
        if len(self._lost) == 2:
            self.close()
            return
        line, other = (self.up, self.server) if name == "client" else (self.down, self.client)
        if other is not None and other.transport is not None:
            line.put(self.loop.time() + self.relay.delay, _EOF)
            self.loop.call_later(self.relay.delay * 2 + 0.05, self._close_side, other)

    def _close_side(self, side: _TcpSide) -> None:
        if side.transport is not None:
            side.transport.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError):
            self.relay.flows.remove(self)
        self.up.close()
        self.down.close()
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.close()
        self._task.cancel()


class _TcpClientSide(_TcpSide):
    """The accepted connection from the client: it creates the flow when it is made."""

    def __init__(self, front: _TcpFront) -> None:
        super().__init__(None, "client")  # type: ignore[arg-type]
        self.front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.flow = _TcpFlow(self.front, self)
        self.front.flows.append(self.flow)


class _TcpFront:
    def __init__(self, target: tuple[str, int], delay: float, emulate_syn: bool,
                 precise: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.delay = delay
        self.precise = precise
        self.emulate_syn = emulate_syn
        self.flows: list[_TcpFlow] = []
        self.server: asyncio.Server | None = None

    def protocol(self) -> _TcpSide:
        return _TcpClientSide(self)

    def close(self) -> None:
        for flow in self.flows:
            flow.close()
        self.flows.clear()
        if self.server is not None:
            self.server.close()


# ---- the relay ----------------------------------------------------------------------------


class Relay:
    """UDP and TCP forwarders from 127.0.0.1 relay ports to 127.0.0.1 target ports."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.udp: dict[int, int] = {}
        """target port -> relay port"""
        self.tcp: dict[int, int] = {}
        self._fronts: list[Any] = []

    @classmethod
    async def start(cls, *, one_way_ms: float, udp: Sequence[int] = (),
                    tcp: Sequence[int] = (), emulate_syn: bool = True,
                    precise: bool = True) -> Relay:
        """Start forwarders. `precise` sleeps off the last ~1.5 ms before each due time
        (blocking): right for a relay process, wrong for a relay sharing the measured loop."""
        loop = asyncio.get_running_loop()
        relay = cls(one_way_ms / 1000.0)
        for port in udp:
            udp_front = _UdpFront((HOST, port), relay.delay, precise)
            transport, _ = await loop.create_datagram_endpoint(
                lambda f=udp_front: f, local_addr=(HOST, 0))  # type: ignore[misc]
            relay._fronts.append(udp_front)
            relay.udp[port] = transport.get_extra_info("sockname")[1]
        for port in tcp:
            tcp_front = _TcpFront((HOST, port), relay.delay, emulate_syn, precise)
            tcp_front.server = await loop.create_server(tcp_front.protocol, HOST, 0)
            relay._fronts.append(tcp_front)
            relay.tcp[port] = tcp_front.server.sockets[0].getsockname()[1]
        return relay

    def close(self) -> None:
        for front in self._fronts:
            front.close()
        self._fronts.clear()


async def _main(args: argparse.Namespace) -> None:
    relay = await Relay.start(one_way_ms=args.one_way_ms, udp=args.udp, tcp=args.tcp,
                              emulate_syn=not args.no_syn_emulation,
                              precise=not args.coarse)
    print(json.dumps({"udp": {str(k): v for k, v in relay.udp.items()},
                      "tcp": {str(k): v for k, v in relay.tcp.items()},
                      "one_way_ms": args.one_way_ms, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    def watch_stdin() -> None:  # a thread: stdin may be a file, which epoll refuses
        with contextlib.suppress(OSError, ValueError):
            while os.read(sys.stdin.fileno(), 65536):
                pass
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(finish)  # EOF: the parent is gone

    loop.add_signal_handler(signal.SIGTERM, finish)
    threading.Thread(target=watch_stdin, name="relay-stdin", daemon=True).start()
    try:
        await stop
    finally:
        relay.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one-way-ms", type=float, default=25.0,
                    help="delay added in each direction (default 25: a 50 ms round trip)")
    ap.add_argument("--udp", type=int, action="append", default=[],
                    help="a 127.0.0.1 UDP target port to relay (repeatable)")
    ap.add_argument("--tcp", type=int, action="append", default=[],
                    help="a 127.0.0.1 TCP target port to relay (repeatable)")
    ap.add_argument("--no-syn-emulation", action="store_true",
                    help="TCP: do not emulate the handshake's round trip (see the docstring)")
    ap.add_argument("--coarse", action="store_true",
                    help="plain asyncio timers (up to ~1 ms late per hop) instead of sleeping "
                         "off the last 1.5 ms before each due time")
    args = ap.parse_args(argv)
    if not args.udp and not args.tcp:
        ap.error("give at least one --udp or --tcp target port")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
