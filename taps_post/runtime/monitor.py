"""The path monitor: interfaces and addresses coming and going, told to whoever subscribed.

`path_monitor()` returns the event loop's one `PathMonitor`. Carriers (runtime/mobility.py)
and applications (`events()`) subscribe; the monitor keeps the live interface snapshot
(`system.live`) current, so the plan cache and every new decision follow a change at once.

Rule 1: nothing runs when nothing changes. With netlink, the monitor's whole cost is one
rtnetlink socket registered with `loop.add_reader` while anyone subscribes: no task, no timer,
no thread. The socket leaves the loop with the last subscriber and is closed `LINGER` seconds
later unless someone subscribes again (what it queued meanwhile is read then). Only where netlink is
refused (or `TAPS_POST_MONITOR=poll`, or `PathMonitor(mode="polling")`) does a timer poll
every `POLL_INTERVAL` seconds and diff snapshots (`system.netevents.diff`).
Rule 2: the snapshot is refreshed before any subscriber hears of a change, and changes that
arrive within one loop iteration are delivered together, once (debounce): a subscriber that
decides again from its callback decides on the new interfaces, and a burst (a link going down
takes its addresses with it) is one call, not five.
Rule 3: a subscriber cannot break the monitor: a callback that raises is logged on the
`taps_post.monitor` logger and the others are still called.
Rule 4: structured. Everything the monitor starts it owns and stops in `close()`: the reader,
the timer, and the one short-lived thread that opens the first netlink source (importing
pyroute2 costs a fifth of a second, which a running loop should not stall for; changes in
that window are caught by diffing the snapshot taken at subscribe time). `events()` streams
run in their consumer's task, never in one of ours.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..decision.environment import Interface
from ..system import live
from ..system.netevents import NetChange, RtnlSource, diff, interface_indexes

__all__ = ["MODE_ENV", "POLL_INTERVAL", "ChangeStream", "PathMonitor", "Subscriber",
           "path_monitor"]

POLL_INTERVAL = 2.0
"""Seconds between two snapshots in the polling fallback (the live cache's TTL)."""
LINGER = 2.0
"""Seconds the netlink socket stays open (out of the loop) after the last subscriber left, so
carriers that come and go one at a time do not pay a socket and two dumps each."""
MODE_ENV = "TAPS_POST_MONITOR"
"""Environment variable: "poll" (or "polling") forces the polling fallback; "netlink" or
unset: netlink where the kernel allows it."""

Subscriber = Callable[[Sequence[NetChange], tuple[Interface, ...]], None]
"""Called on the loop with the changes of one burst and the interfaces after them."""

_log = logging.getLogger("taps_post.monitor")
_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                     weakref.ref[PathMonitor]] = weakref.WeakKeyDictionary()
"""Loop -> its monitor, weak on both sides: a monitor holds its loop, so a strong value would
keep every loop (and its socket) alive forever. Whoever subscribes holds the monitor (the
unsubscribe function, the reader, the linger timer); a monitor nobody holds is not needed."""


def path_monitor() -> PathMonitor:
    """The running event loop's PathMonitor, made on first use (nothing is opened until
    someone subscribes)."""
    loop = asyncio.get_running_loop()
    ref = _monitors.get(loop)
    monitor = ref() if ref is not None else None
    if monitor is None or monitor.closed:
        monitor = PathMonitor(loop)
        _monitors[loop] = weakref.ref(monitor)
    return monitor


def _wanted_mode(mode: str | None) -> str:
    chosen = (mode or os.environ.get(MODE_ENV) or "netlink").strip().lower()
    if chosen in ("poll", "polling"):
        return "polling"
    if chosen == "netlink":
        return "netlink"
    raise ValueError(f"path monitor mode {chosen!r}: expected 'netlink' or 'polling'")


class PathMonitor:
    """Interface and address changes of this network namespace, for one event loop.

    `mode` is "netlink" or "polling" while anyone subscribes, "stopped" otherwise; "starting"
    only while the first netlink source opens (`await started()` waits that out).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *,
                 mode: str | None = None, poll_interval: float = POLL_INTERVAL) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._want = _wanted_mode(mode)
        self.poll_interval = poll_interval
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = 0
        self._source: RtnlSource | None = None
        self._reading = False
        self._linger: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._opener: threading.Thread | None = None
        self._started: asyncio.Future[str] | None = None
        self._snapshot: tuple[Interface, ...] | None = None
        self._pending: list[NetChange] = []
        self._flush_handle: asyncio.Handle | None = None
        self._mode = "stopped"
        self._closed = False
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        self.fallback_reason: str | None = None
        """Why the monitor polls although netlink was wanted (the OSError), else None."""

    # ---- what callers see -----------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def interfaces(self) -> tuple[Interface, ...]:
        """The interfaces now: the monitor's snapshot while it runs, else the live cache."""
        if self._snapshot is not None and self._mode != "stopped":
            return self._snapshot
        return live.cached_interfaces()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def fileno(self) -> int | None:
        """The netlink socket registered with the loop, None when there is none."""
        return self._source.fileno() if self._source is not None and self._reading else None

    @property
    def next_poll(self) -> float | None:
        """Loop time of the next poll, None when no timer is pending (netlink, stopped)."""
        return self._timer.when() if self._timer is not None else None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(changes, interfaces)` on every burst of changes until the returned
        function is called (calling it twice is harmless)."""
        if self._closed:
            raise RuntimeError("the path monitor is closed")
        self._ids += 1
        key = self._ids
        self._subscribers[key] = callback
        if len(self._subscribers) == 1:
            self._start()

        def unsubscribe() -> None:
            if self._subscribers.pop(key, None) is not None and not self._subscribers:
                self._stop()

        return unsubscribe

    async def started(self) -> str:
        """The mode once listening has begun (immediately unless netlink is still opening)."""
        if self._started is not None and not self._started.done():
            return await asyncio.shield(self._started)
        return self._mode

    async def prepare(self) -> str:
        """Pay netlink's one-time cost now (importing pyroute2: 0.1-0.3 s of CPU on a
        thread, during which the loop shares the GIL) rather than at the first subscription,
        which is often a carrier's first activation. Returns the mode it would run in."""
        if self._want != "netlink" or _opened_before:
            return self._want
        unsubscribe = self.subscribe(lambda changes, interfaces: None)
        try:
            return await self.started()
        finally:
            unsubscribe()

    def events(self) -> ChangeStream:
        """An async iterator of `NetChange`, subscribed from this call on:
        `async with monitor.events() as changes: async for change in changes: ...`."""
        stream = ChangeStream(self)
        self._streams.add(stream)
        return stream

    def close(self) -> None:
        """Stop listening and end every `events()` stream; the monitor cannot be reused
        (`path_monitor()` makes a new one)."""
        if self._closed:
            return
        self._closed = True
        self._subscribers.clear()
        self._stop()
        for stream in list(self._streams):
            stream.close()
        ref = _monitors.get(self._loop)
        if ref is not None and ref() is self:
            del _monitors[self._loop]

    # ---- starting and stopping ------------------------------------------------------------

    def _start(self) -> None:
        if self._want == "polling":
            self._snapshot = live.refresh()
            self._start_polling(None)
            return
        if self._source is not None:  # lingering since the last subscriber left (Rule 1)
            self._cancel_linger()
            self._snapshot = live.cached_interfaces()
            self._listen(self._source)
            return
        self._mode = "starting"
        if self._started is None:
            self._started = self._loop.create_future()
        if self._opener is not None:
            return  # still opening for an earlier subscriber: _attach takes it from there
        self._snapshot = live.refresh()
        if _opened_before:
            self._attach(*_open_source(), caught_up=True)  # ~1 ms once pyroute2 is in
            return
        self._opener = threading.Thread(target=self._open_in_thread,
                                        name="taps-post-monitor", daemon=True)
        self._opener.start()

    def _open_in_thread(self) -> None:
        opened = _open_source()
        try:
            self._loop.call_soon_threadsafe(self._attach, *opened)
        except RuntimeError:  # the loop closed meanwhile
            if opened[0] is not None:
                opened[0].close()

    def _attach(self, source: RtnlSource | None, error: OSError | None,
                caught_up: bool = False) -> None:
        self._opener = None
        if source is not None and self._closed:
            source.close()
        elif source is not None and not self._subscribers:
            self._source = source  # everyone left while it opened: linger like after a stop
            self._linger = self._loop.call_later(LINGER, self._linger_over)
        elif self._subscribers and self._mode == "starting":
            if source is None:
                self._start_polling(error)
            else:
                self._listen(source)
                if not caught_up:
                    self._catch_up()
        elif source is not None:
            source.close()
        self._resolve_started()

    def _listen(self, source: RtnlSource) -> None:
        self._source = source
        self._loop.add_reader(source.fileno(), self._on_readable)
        self._reading = True
        self._mode = "netlink"
        self._resolve_started()

    def _catch_up(self) -> None:
        """Changes between the subscribe-time snapshot and the source's seed: diff them."""
        before = self._snapshot
        now = live.refresh()
        if before is not None and now is not before:
            self._snapshot = now
            changes = diff(before, now, interface_indexes())
            if changes:
                self._queue(changes)

    def _start_polling(self, error: OSError | None) -> None:
        if error is not None:
            self.fallback_reason = f"{type(error).__name__}: {error}"
            _log.info("path monitor: netlink refused (%s); polling every %g s",
                      self.fallback_reason, self.poll_interval)
        self._mode = "polling"
        self._timer = self._loop.call_later(self.poll_interval, self._poll)

    def _resolve_started(self) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_result(self._mode)
        self._started = None

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _linger_over(self) -> None:
        self._linger = None
        if self._source is not None and not self._reading:
            self._source.close()
            self._source = None

    def _stop(self) -> None:
        if self._source is not None:
            if self._reading:
                self._loop.remove_reader(self._source.fileno())
                self._reading = False
            if self._closed:
                self._cancel_linger()
                self._source.close()
                self._source = None
            elif self._linger is None:
                self._linger = self._loop.call_later(LINGER, self._linger_over)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        self._mode = "stopped"
        self._resolve_started()
        opener = self._opener
        if opener is not None and self._closed:
            opener.join(1.0)  # what it opens is closed by _attach (or, loop gone, by itself)

    # ---- changes --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        source = self._source
        if source is None:
            return
        try:
            changes = source.read()
        except OSError as exc:  # the socket broke: poll from now on rather than go deaf
            self._loop.remove_reader(source.fileno())
            source.close()
            self._source = None
            self._start_polling(exc)
            return
        if changes:
            self._queue(changes)

    def _poll(self) -> None:
        self._timer = None
        if self._mode != "polling":
            return
        before = self._snapshot
        now = live.refresh()
        self._snapshot = now
        if before is not None and now is not before:
            changes = diff(before, now, interface_indexes())
            if changes:
                self._deliver(changes, now)
        if self._mode == "polling" and self._timer is None:
            self._timer = self._loop.call_later(self.poll_interval, self._poll)

    def _queue(self, changes: Sequence[NetChange]) -> None:
        self._pending.extend(changes)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        changes, self._pending = self._pending, []
        if not changes:
            return
        self._snapshot = live.refresh()
        self._deliver(changes, self._snapshot)

    def _deliver(self, changes: Sequence[NetChange], interfaces: tuple[Interface, ...]) -> None:
        batch = tuple(changes)
        for callback in list(self._subscribers.values()):
            try:
                callback(batch, interfaces)
            except Exception:
                _log.exception("path monitor subscriber %r raised; it stays subscribed",
                               callback)


_opened_before = False
"""A source opened in this process: pyroute2 is imported, so opening again costs ~1 ms and
needs no thread (Rule 4)."""


def _open_source() -> tuple[RtnlSource | None, OSError | None]:
    global _opened_before
    try:
        source = RtnlSource()
    except OSError as exc:
        return None, exc
    _opened_before = True
    return source, None


class ChangeStream:
    """`PathMonitor.events()`: the changes since it was made, one `NetChange` at a time.

    Subscribed from creation (nothing between creation and the first `await` is missed);
    `close()` (or leaving `async with`) unsubscribes, and so does the monitor's close(),
    which ends the iteration. A stream nobody holds any more unsubscribes itself.
    """

    def __init__(self, monitor: PathMonitor) -> None:
        self._queue: collections.deque[NetChange] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._done = False
        ref = weakref.ref(self)

        def on_changes(changes: Sequence[NetChange], _interfaces: tuple[Interface, ...]) -> None:
            stream = ref()
            if stream is None:
                unsubscribe()
            else:
                stream.push(changes)

        unsubscribe = monitor.subscribe(on_changes)
        self._unsubscribe = unsubscribe
        self._monitor = monitor

    def push(self, changes: Sequence[NetChange]) -> None:
        self._queue.extend(changes)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self._done = True
        self._unsubscribe()
        self._wake()

    def __aiter__(self) -> AsyncIterator[NetChange]:
        return self

    async def __anext__(self) -> NetChange:
        while not self._queue:
            if self._done or self._monitor.closed:
                self._unsubscribe()
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def __aenter__(self) -> ChangeStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
