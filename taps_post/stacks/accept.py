"""The accept loop of every stream listener (TCP, TLS, MPTCP and TLS over MPTCP; stacks/tcp.py).

asyncio's `create_server` accepts for us only at a price a Listener facing hostile peers
cannot pay: a fixed backlog, pending TLS handshakes that live 60 s, no bound on how many run
at once, and on EMFILE a retry loop that logs every failed accept() and piles up timers.
So a stream Listener accepts here instead, and hands each connection to asyncio with
`loop.connect_accepted_socket`, which builds the very transport `create_server` would.

Rule 1: the listening backlog is `listener.backlog`, or the system's net.core.somaxconn when
that is 0 (read from /proc/sys/net/core/somaxconn: 4096 on Linux >= 5.4, in this network
namespace); a fixed 128 resets clients in a burst the kernel could have held.
Rule 2: one wakeup of the listening socket accepts at most BATCH connections, so a burst of
connects cannot hold the event loop away from the connections already open.
Rule 3: each accepted connection is set up (its TLS handshake, if any) in a task the Acceptor
owns, bounded by `listener.handshakeTimeout` (asyncio's ssl_handshake_timeout); aclose()
cancels those tasks, which aborts their connections. Plain TCP's handshake is the kernel's,
done before accept(), so such a task ends at once; a plain-TCP peer that then trickles bytes
is the idle timeout's (carrier.idleTimeout, on by default for accepted carriers).
Rule 4: at most `listener.maxHandshakes` set-ups at once; a full table under pressure sheds the
stalest. While the table is full and no set-up is older than the eviction age (evict_age:
EVICT_AGE, at most a quarter of handshakeTimeout), the listening socket is not read: the
kernel's backlog holds the next connections (their SYNs were answered, nothing is lost), so a
burst of legitimate clients, whose handshakes take a few round trips, is never thrashed. Past
that age, each connection waiting in the backlog (the listening socket is readable: poll(2))
aborts the oldest set-up past the age whose peer stalled, and takes its place, one for one
(`evicted` counts them). Stalled: nothing of the peer waits unread (bytes waiting mean it is
our turn, and a loop too busy to read them must not evict the client for it) and the kernel's
TCP_INFO says no data went either way for the age (the peer had that long to answer us). Why:
stopping at the bound alone made a legitimate client wait behind every slowloris queued ahead
of it, one handshakeTimeout per maxHandshakes of them (1,000 silent TLS connections,
maxHandshakes 100, 10 s: about 100 s); now the table turns over every eviction age. And for
TLS, a connection accepted from the backlog while the table is full that has stalled for the
age before its first TLS record was whole (no data for that long, since it was established or
since the part of a record it sent, which MSG_PEEK shows unread) is itself the stalest of all:
a TLS client speaks first, its whole ClientHello in its first round trip, and a lost segment is
resent well within the age. It is reset at once (`evicted` and `stalled` count it) instead of
taking a table slot, so a backlog full of such slowloris drains in one pass instead of one
eviction age per maxHandshakes of them. A connection whose hello is whole waits its turn in the
table, however long it queued. When the oldest past the age are all busy (BATCH of them looked
at), reading stops for RECHECK x the age, or until a set-up ends.
Rule 5: resource exhaustion on accept() (EMFILE, ENFILE, ENOBUFS, ENOMEM) stops reading the
listening socket for a back-off, BACKOFF_FIRST doubling to BACKOFF_MAX, reset by the next
accept() that succeeds. One warning when such an episode starts, one line when it ended (an
accept() succeeded EPISODE_QUIET after the last failure), never one per failure: a server
hovering at its limit fails and succeeds in turn, and that is one episode. Out of file
descriptors (EMFILE, ENFILE), the Acceptor sheds instead
of stalling: it gives up a reserve descriptor it holds for this, accepts one waiting
connection with it, resets that connection at once and retakes the reserve, up to BATCH
times per back-off step. A client that cannot be served then fails at once instead of
waiting out its own timeout in a backlog that does not drain.
Rule 6: an accept() error that concerns one connection only (Linux passes pending network
errors of the new socket: ECONNABORTED, EPROTO, EPERM from a firewall, ...) skips it. Any
other error is handled like exhaustion (Rule 5), so no error can make the loop spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import select
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from .tls import open_tls

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "BATCH", "EPISODE_QUIET", "EVICT_AGE", "Acceptor",
           "backlog_for", "evict_age", "somaxconn"]

_log = logging.getLogger("taps_post.listener")

BATCH = 64
"""Connections accepted per wakeup of the listening socket (Rule 2), and shed per back-off
step (Rule 5)."""
BACKOFF_FIRST = 0.010
"""First pause of accept() after a resource error, seconds (Rule 5)."""
BACKOFF_MAX = 1.0
"""Longest pause of accept() while resources stay exhausted, seconds (Rule 5)."""
EPISODE_QUIET = 10.0
"""Seconds without a resource error after which an episode counts as over (Rule 5)."""
EVICT_AGE = 1.0
"""Seconds a set-up runs before a connection waiting behind a full table may evict it, at
most (Rule 4): legitimate TLS handshakes complete in a few round trips, well under this."""
RECHECK = 0.25
"""With the table full of set-ups past the eviction age that are all busy (their peers not
stalled), look again after this fraction of the age (Rule 4)."""
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"

_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})
_ONE_CONNECTION = frozenset({
    errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
    errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
    errno.ETIMEDOUT, errno.ECONNRESET})
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends RST, so a shed client fails at once (Rule 5)."""


def somaxconn() -> int:
    """The system's bound on a listening backlog (Rule 1); socket.SOMAXCONN where unreadable."""
    try:
        with open(SOMAXCONN_PATH, encoding="ascii") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return socket.SOMAXCONN
    return max(1, value)


def backlog_for(setting: int) -> int:
    """listen(2)'s backlog for `listener.backlog` (0: the system's somaxconn, Rule 1)."""
    return setting if setting > 0 else somaxconn()


def evict_age(handshake_timeout: float) -> float:
    """The eviction age for a handshake timeout (Rule 4): EVICT_AGE, or a quarter of the
    timeout when that is shorter, so eviction always comes well before the timeout would."""
    if not handshake_timeout or handshake_timeout <= 0:
        return EVICT_AGE
    return min(EVICT_AGE, handshake_timeout / 4)


_TCP_INFO = getattr(socket, "TCP_INFO", None)
_LAST_DATA_SENT = 44
"""Offset of tcpi_last_data_sent (u32, ms) in Linux's struct tcp_info: since we last sent
data, or since the connection was established."""
_LAST_DATA_RECV = 52
"""Offset of tcpi_last_data_recv (u32, ms): since the last data received, or since the
connection was established when none was (icsk_ack.lrcvtime)."""


_RECORD = 5 + 16384 + 2048
"""Bytes peeked at an accepted TLS connection (Rule 4): a TLS record header and the largest
record a peer may send (TLSPlaintext, 2^14, plus expansion)."""


def _quiet_for(conn: socket.socket, *, both_ways: bool) -> float | None:
    """Seconds since the peer last sent data (`both_ways`: since data last went either way),
    or since the connection was established (Rule 4); None where the kernel cannot tell."""
    if _TCP_INFO is None:
        return None
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAST_DATA_RECV + 4)
    except OSError:
        return None
    if len(info) < _LAST_DATA_RECV + 4:
        return None
    quiet = int(struct.unpack_from("I", info, _LAST_DATA_RECV)[0])
    if both_ways:
        quiet = min(quiet, int(struct.unpack_from("I", info, _LAST_DATA_SENT)[0]))
    return quiet / 1000


def _peer_stalled(conn: socket.socket, age: float) -> bool:
    """Whether a set-up in progress waits on its peer, quiet for `age` (Rule 4): no bytes of
    it wait unread (else it is our turn: a loop too busy to read them must not evict a
    client for it) and no data went either way for that long (what we sent last, the peer
    has had the age to answer; bytes that sat unread while the loop was busy and were just
    answered do not make it stalled). Where the kernel cannot tell: True (the set-up is past
    the age, as the caller checked)."""
    try:
        # bytes waiting: our turn, not stalled; end of stream: the client gave up
        return not conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        return True  # reset, or closed already
    quiet = _quiet_for(conn, both_ways=True)
    return quiet is None or quiet >= age


def _stalled_for(conn: socket.socket) -> float:
    """Seconds an accepted TLS connection has been stalled (Rule 4): open without sending a
    byte, or without a byte more after part of its first TLS record. 0 when its first record
    is whole (a ClientHello waiting to be answered) or the kernel cannot tell; infinite when
    the peer closed or reset it already."""
    try:
        head = conn.recv(_RECORD, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if not head:
            return math.inf  # end of stream: the client gave up waiting
        if len(head) >= 5 and len(head) >= 5 + int.from_bytes(head[3:5], "big"):
            return 0.0  # it spoke: a whole record waits for us
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        return math.inf  # reset while it waited
    quiet = _quiet_for(conn, both_ways=False)  # we sent nothing yet: not accepted until now
    return 0.0 if quiet is None else quiet


def _open_reserve() -> int | None:
    """A descriptor held only to be given up when the process runs out of them (Rule 5)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Acceptor:
    """Accepts on one listening stream socket (already bound and listening) and sets each
    connection up with `factory` (a Protocol factory), over `tls` when given."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], *,
                 tls: ssl.SSLContext | None, handshake_timeout: float,
                 max_handshakes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = factory
        self._tls = tls
        self._timeout = handshake_timeout
        self._max = max(1, max_handshakes)
        self._age = evict_age(handshake_timeout)
        self._tasks: dict[asyncio.Task[None], tuple[float, socket.socket]] = {}
        """Set-ups in progress, when each began (loop time) and its socket, oldest first."""
        self._evicting: set[asyncio.Task[None]] = set()
        """Set-ups evicted (cancelled) that have not ended yet: no longer counted (Rule 4)."""
        self._aging: asyncio.TimerHandle | None = None
        """While the table is full and connections wait: when the oldest reaches the age."""
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._reading = False
        self._closed = False
        self._backoff = 0.0
        """The current pause after a resource error (0: the last accept() succeeded)."""
        self._episode = False
        self._last_failure = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._reserve = _open_reserve()
        self.shed = 0
        """Connections reset at once because descriptors ran out (Rule 5), in all."""
        self.episodes = 0
        """Resource-exhaustion episodes so far (Rule 5)."""
        self.evicted = 0
        """Connections shed for waiting ones while the table was full (Rule 4), in all: set-ups
        aborted past the eviction age, and stalled TLS connections reset at accept."""
        self.stalled = 0
        """Of those, the stalled TLS connections reset as they were accepted (Rule 4)."""

    @property
    def handshakes(self) -> int:
        """Connections accepted whose set-up (TLS handshake) is still in progress (Rule 4)."""
        return len(self._tasks)

    def start(self) -> None:
        self._want_reading()

    # ---- the listening socket --------------------------------------------------------------

    def _want_reading(self) -> None:
        """Read the listening socket unless closed, backing off (Rule 5) or waiting for the
        oldest of a full table to reach the eviction age while connections wait (Rule 4).
        A full table with an empty backlog keeps reading: the socket is not readable then,
        so it costs nothing, and the first connection to arrive is seen at once."""
        want = not self._closed and self._retry is None and self._aging is None
        if want and not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        elif not want and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        for _ in range(BATCH):
            if self._closed:
                break
            victim = None
            if len(self._tasks) >= self._max:
                victim = self._victim()
                if victim is None:
                    break
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _ONE_CONNECTION:
                    continue
                self._exhausted(exc)
                return
            if self._backoff or self._episode:
                self._recovered()
            if victim is not None:
                if self._tls is not None and _stalled_for(conn) >= self._age:
                    self._reset(conn)  # the stalest of all: stalled before its hello
                    self.evicted += 1
                    self.stalled += 1
                    continue
                self._evict(victim)
            self._begin(conn)
        self._want_reading()

    # ---- a full table (Rule 4) -----------------------------------------------------------

    def _victim(self) -> asyncio.Task[None] | None:
        """With the table full: the set-up a waiting connection takes the place of, the oldest
        past the eviction age whose peer stalled. None when no connection waits, or none is
        such: then reading stops until the oldest reaches the age, or RECHECK (Rule 4)."""
        try:
            if not self._poll.poll(0):
                return None  # nothing waiting (this turn's connections all taken)
        except OSError:
            return None
        now = self._loop.time()
        wait = RECHECK * self._age
        for scanned, (task, (began, conn)) in enumerate(self._tasks.items()):
            if now - began < self._age:
                if not scanned:
                    wait = began + self._age - now
                break  # the rest are younger still
            if _peer_stalled(conn, self._age):
                return task
            if scanned + 1 >= BATCH:
                break  # the oldest are all busy, not stalled: look again later
        if self._aging is None:
            self._aging = self._loop.call_later(max(wait, 0.001), self._aged)
        return None

    def _aged(self) -> None:
        self._aging = None
        self._want_reading()

    def _evict(self, task: asyncio.Task[None]) -> None:
        del self._tasks[task]
        self._evicting.add(task)
        if task.cancel():  # aborts its transport, closes its socket (_set_up)
            self.evicted += 1  # (not if it just ended by itself: its place is free anyway)

    # ---- resource exhaustion (Rule 5) ----------------------------------------------------

    def _exhausted(self, exc: OSError) -> None:
        self._last_failure = self._loop.time()
        self._backoff = min(BACKOFF_MAX, self._backoff * 2) if self._backoff else BACKOFF_FIRST
        if not self._episode:
            self._episode = True
            self.episodes += 1
            _log.warning("listener on port %s: accept() failed (%s); pausing accept, "
                         "connections that cannot be served are reset until it recovers",
                         self._port(), exc.strerror or exc)
        if exc.errno in _OUT_OF_FDS:
            self._shed_waiting()
        self._retry = self._loop.call_later(self._backoff, self._resume)
        self._want_reading()

    def _shed_waiting(self) -> None:
        """Reset up to BATCH waiting connections, each through the reserve descriptor."""
        for _ in range(BATCH):
            if self._reserve is not None:
                os.close(self._reserve)
                self._reserve = None
            try:
                conn, _ = self._sock.accept()
            except OSError:
                self._reserve = _open_reserve()
                break  # none waiting, or still no descriptor (another thread took it)
            self._reset(conn)
            self.shed += 1
            self._reserve = _open_reserve()  # the descriptor conn just gave back

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        """Close with RST, so the client fails at once (Rules 4 and 5)."""
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.close()

    def _resume(self) -> None:
        self._retry = None
        self._want_reading()

    def _recovered(self) -> None:
        self._backoff = 0.0
        if self._reserve is None:
            self._reserve = _open_reserve()
        if self._episode and self._loop.time() - self._last_failure >= EPISODE_QUIET:
            self._episode = False
            _log.info("listener on port %s: accepting again (%d connections reset while "
                      "resources were exhausted, so far)", self._port(), self.shed)

    def _port(self) -> Any:
        with contextlib.suppress(OSError):
            return self._sock.getsockname()[1]
        return "?"

    # ---- set-up of one connection (Rules 3 and 4) ----------------------------------------

    def _begin(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._set_up(conn))
        self._tasks[task] = (self._loop.time(), conn)
        task.add_done_callback(self._ended)

    async def _set_up(self, conn: socket.socket) -> None:
        try:
            if self._tls is None:
                await self._loop.connect_accepted_socket(self._factory, conn)
            else:
                # 64 KiB read buffer, heap trims (stacks/tls.py Rules 4, 5)
                await open_tls(self._factory, conn, self._tls, server_side=True,
                               handshake_timeout=self._timeout)
        except (OSError, ssl.SSLError, TimeoutError):
            conn.close()  # failed or timed out: asyncio aborted the transport already
        except BaseException:
            conn.close()  # cancelled by aclose() (asyncio aborts a handshake in progress)
            raise

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._evicting.discard(task)
        if self._aging is not None and len(self._tasks) < self._max:
            self._aging.cancel()  # room again: no need to wait for the age
            self._aging = None
        if not task.cancelled() and task.exception() is not None:
            _log.error("listener on port %s: setting up a connection failed",
                       self._port(), exc_info=task.exception())
        self._want_reading()

    # ---- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the listening socket and abort every handshake in progress: no descriptor
        and no task of this Acceptor is left when it returns."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._aging is not None:
            self._aging.cancel()
            self._aging = None
        self._want_reading()
        self._poll.unregister(self._fd)
        self._sock.close()
        tasks = [*self._tasks, *self._evicting]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
