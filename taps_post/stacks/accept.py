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
Rule 4: at most `listener.maxHandshakes` set-ups at once. At the bound the listening socket
is not read at all: the kernel's backlog holds the next connections (their SYNs were answered,
nothing is lost) until a handshake ends, completed, failed or timed out.
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
import os
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from .tls import open_tls

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "BATCH", "EPISODE_QUIET", "Acceptor", "backlog_for",
           "somaxconn"]

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
        self._tasks: set[asyncio.Task[None]] = set()
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

    @property
    def handshakes(self) -> int:
        """Connections accepted whose set-up (TLS handshake) is still in progress (Rule 4)."""
        return len(self._tasks)

    def start(self) -> None:
        self._want_reading()

    # ---- the listening socket --------------------------------------------------------------

    def _want_reading(self) -> None:
        """Read the listening socket exactly while there is room for a handshake and no
        back-off is running (Rules 4 and 5)."""
        want = not self._closed and self._retry is None and len(self._tasks) < self._max
        if want and not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        elif not want and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        for _ in range(BATCH):
            if self._closed or len(self._tasks) >= self._max:
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
            self._begin(conn)
        self._want_reading()

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
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            conn.close()
            self.shed += 1
            self._reserve = _open_reserve()  # the descriptor conn just gave back

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
        self._tasks.add(task)
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
        self._tasks.discard(task)
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
        self._want_reading()
        self._sock.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
