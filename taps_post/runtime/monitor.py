"""The path monitor: interfaces and addresses coming and going, told to whoever subscribed.

`path_monitor()` returns the event loop's one `PathMonitor`. Carriers (runtime/mobility.py)
and applications (`events()`) subscribe; the monitor keeps the live interface snapshot
(`system.live`) current, so the plan cache and every new decision follow a change at once.

Rule 1: nothing runs when nothing changes, and nothing is paid twice. With netlink, the
monitor's whole cost is one rtnetlink socket registered with `loop.add_reader`: no task, no
timer, no thread. The process opens that socket once (importing pyroute2 and two dumps) and
keeps it for its lifetime, still registered when the last subscriber has left: an idle fd costs
nothing, every change goes on refreshing the live snapshot (so `live.cached_interfaces()` is
never stale by more than a loop iteration), and the next subscriber (a carrier's next
activation) pays no socket, no dump and no discovery. A monitor of another loop takes the
socket over once this one's loop has ended or nobody subscribes here (what the kernel queued
meanwhile is read then, and the changes in it are delivered); only a second loop running at
the same time with subscribers on both opens a socket of its own, closed with its last
subscriber. Only where netlink is refused (or `TAPS_POST_MONITOR=poll`, or
`PathMonitor(mode="polling")`) does a timer poll every `POLL_INTERVAL` seconds and diff
snapshots (`system.netevents.diff`).
Rule 2: the snapshot is refreshed before any subscriber hears of a change, and changes that
arrive within one loop iteration are delivered together, once (debounce): a subscriber that
decides again from its callback decides on the new interfaces, and a burst (a link going down
takes its addresses with it) is one call, not five. Changes queued when the last subscriber
leaves are not dropped: one who subscribes before the flush (a carrier re-watching after a
migration) is given them.
Rule 3: a subscriber cannot break the monitor: a callback that raises is logged on the
`taps_post.monitor` logger and the others are still called. Neither can the source: whatever
opening or reading it raises (not only OSError) makes the monitor poll, with the reason in
`fallback_reason`, rather than hang in "starting" or fail the caller.
Rule 4: structured, and the loop never waits. Everything the monitor starts it owns: the
reader, the timer, and the one short-lived thread that opens the process's first netlink
source (importing pyroute2 costs a fifth of a second, which a running loop should not stall
for; changes in that window are caught by diffing the snapshot taken at subscribe time). The
thread's last act is handing its source to the loop, where it is joined (it has nothing left
to do, so the join returns at once); `close()` never joins it (an import cannot be interrupted):
the source it opens after a close is kept for the process, or closed if it was a private one.
`events()` streams run in their consumer's task, never in one of ours.
Rule 5: `TAPS_POST_MONITOR=off` (or `PathMonitor(mode="off")`) watches nothing: subscribing
opens no socket and imports nothing, no change is ever delivered, `mode` is "off". Carriers
are then not watched: a carrier whose path goes away learns it from its own connection's
errors (timeouts, resets), as without issue 11; no carrier migrates, re-races or adds a
subflow because of a network change. For processes that must not hold a netlink socket or
cannot afford pyroute2's import.
Rule 6: a change also drops the DNS answers that may have become wrong: the resolvers of the
changed interfaces, and those tied to no interface (`resolution.network_changed`, which costs
nothing when no DNS query was ever made), before anyone hears of it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..decision.environment import Interface
from ..system import live
from ..system.netevents import NetChange, RtnlSource, diff, interface_indexes
from .resolution import network_changed

__all__ = ["MODE_ENV", "POLL_INTERVAL", "ChangeStream", "PathMonitor", "Subscriber",
           "path_monitor"]

POLL_INTERVAL = 2.0
"""Seconds between two snapshots in the polling fallback (the live cache's TTL)."""
MODE_ENV = "TAPS_POST_MONITOR"
"""Environment variable: "poll" (or "polling") forces the polling fallback; "off" watches
nothing (Rule 5); "netlink" or unset: netlink where the kernel allows it."""

Subscriber = Callable[[Sequence[NetChange], tuple[Interface, ...]], None]
"""Called on the loop with the changes of one burst and the interfaces after them."""

_log = logging.getLogger("taps_post.monitor")
_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                     weakref.ref[PathMonitor]] = weakref.WeakKeyDictionary()
"""Loop -> its monitor, weak on both sides: a monitor holds its loop, so a strong value would
keep every loop alive forever. Whoever subscribes holds the monitor (the unsubscribe function,
the loop's reader); a monitor nobody holds is not needed."""


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
    if chosen in ("off", "none", "disabled"):
        return "off"
    if chosen == "netlink":
        return "netlink"
    raise ValueError(f"path monitor mode {chosen!r}: expected 'netlink', 'polling' or 'off'")


class PathMonitor:
    """Interface and address changes of this network namespace, for one event loop.

    `mode` is "netlink" or "polling" while anyone subscribes, "stopped" otherwise (the
    netlink socket may still be registered, keeping the live snapshot current: Rule 1),
    "off" when watching is switched off (Rule 5); "starting" only while the first netlink
    source opens (`await started()` waits that out).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *,
                 mode: str | None = None, poll_interval: float = POLL_INTERVAL) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._want = _wanted_mode(mode)
        self.poll_interval = poll_interval
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = 0
        self._source: RtnlSource | None = None
        self._private = False
        """Whether `_source` is this monitor's own (closed with its last subscriber) rather
        than the process's (kept: Rule 1)."""
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._opener: threading.Thread | None = None
        self._started: asyncio.Future[str] | None = None
        self._snapshot: tuple[Interface, ...] | None = None
        self._pending: list[NetChange] = []
        self._flush_handle: asyncio.Handle | None = None
        self._mode = "off" if self._want == "off" else "stopped"
        self._closed = False
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        self.fallback_reason: str | None = None
        """Why the monitor polls although netlink was wanted (the error), else None."""

    # ---- what callers see -----------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def interfaces(self) -> tuple[Interface, ...]:
        """The interfaces now: the polling snapshot while polling, else the live cache (which
        the netlink source refreshes on every change)."""
        if self._mode == "polling" and self._snapshot is not None:
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
        (`path_monitor()` makes a new one). Never blocks (Rule 4): the process's netlink
        socket stays open for the next monitor (Rule 1)."""
        if self._closed:
            return
        self._closed = True
        self._subscribers.clear()
        self._stop()
        self._unlisten()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        for stream in list(self._streams):
            stream.close()
        ref = _monitors.get(self._loop)
        if ref is not None and ref() is self:
            del _monitors[self._loop]

    # ---- starting and stopping ------------------------------------------------------------

    def _start(self) -> None:
        if self._want == "off":
            return  # Rule 5
        if self._want == "polling":
            self._snapshot = live.refresh()
            self._start_polling(None)
            return
        if self._source is not None:  # still registered since the last subscriber left
            self._mode = "netlink"
            return
        self._mode = "starting"
        if self._started is None:
            self._started = self._loop.create_future()
        if self._opener is not None:
            return  # still opening for an earlier subscriber: _attach takes it from there
        shared = _claim(self)
        if shared is not None:  # the process's source, free: read what it queued (Rule 1)
            self._listen(shared, private=False)
            self._on_readable()
            return
        self._snapshot = live.cached_interfaces()  # what the catch-up diff starts from
        if _opened_before:  # pyroute2 is in: ~1 ms, no thread needed
            self._attach(*_open_source(self), caught_up=True)
            return
        self._opener = threading.Thread(target=self._open_in_thread,
                                        name="taps-post-monitor", daemon=True)
        self._opener.start()

    def _open_in_thread(self) -> None:
        source, error, private = _open_source(self)
        try:
            self._loop.call_soon_threadsafe(self._attach, source, error, private)
        except RuntimeError:  # the loop closed meanwhile: the process keeps a shared source
            if source is not None and private:
                source.close()

    def _attach(self, source: RtnlSource | None, error: OSError | None, private: bool,
                caught_up: bool = False) -> None:
        opener, self._opener = self._opener, None
        if opener is not None:
            opener.join()  # its last act was handing this over: it has returned (Rule 4)
        if source is None:
            if self._subscribers and not self._closed:
                self._start_polling(error)
            else:
                self._mode = "off" if self._want == "off" else "stopped"
        elif self._closed:
            if private:
                source.close()
            else:
                _release(self)
        else:
            before, self._snapshot = self._snapshot, None
            self._listen(source, private)
            if not caught_up:
                self._catch_up(before)
            if private and not self._subscribers:
                self._unlisten()
        self._resolve_started()

    def _listen(self, source: RtnlSource, private: bool) -> None:
        self._source = source
        self._private = private
        self._loop.add_reader(source.fileno(), self._on_readable)
        self._reading = True
        self._mode = "netlink" if self._subscribers else "stopped"
        self._resolve_started()

    def _unlisten(self) -> None:
        """Take the netlink socket off the loop: closed if it is ours, left open for the
        next monitor if it is the process's (Rule 1)."""
        source, self._source = self._source, None
        if source is None:
            return
        if self._reading and not self._loop.is_closed():
            self._loop.remove_reader(source.fileno())
        self._reading = False
        if self._private:
            source.close()
        else:
            _release(self)

    def _let_go(self) -> None:
        """Another loop's monitor takes the process's socket over (Rule 1): stop reading it
        here (only when nobody subscribes here, or this loop has ended)."""
        if not self._private:
            self._unlisten()

    def _catch_up(self, before: tuple[Interface, ...] | None) -> None:
        """Changes between the subscribe-time snapshot and the source's seed: diff them."""
        now = live.refresh()
        if before is not None and now is not before:
            changes = diff(before, now, interface_indexes())
            if changes:
                self._queue(changes)

    def _start_polling(self, error: BaseException | None) -> None:
        if error is not None:
            self.fallback_reason = f"{type(error).__name__}: {error}"
            _log.info("path monitor: netlink refused (%s); polling every %g s",
                      self.fallback_reason, self.poll_interval)
        if self._snapshot is None:
            self._snapshot = live.refresh()
        self._mode = "polling"
        self._timer = self._loop.call_later(self.poll_interval, self._poll)

    def _resolve_started(self) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_result(self._mode)
        self._started = None

    def _stop(self) -> None:
        """The last subscriber left. The process's netlink socket stays on the loop (Rule 1);
        a private one is closed; what is pending is flushed as planned (Rule 2)."""
        if self._private:
            self._unlisten()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._snapshot = None
        if self._want != "off":
            self._mode = "stopped"
        self._resolve_started()

    # ---- changes --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        source = self._source
        if source is None:
            return
        try:
            changes = source.read()
        except Exception as exc:  # broken: poll from now on rather than go deaf (Rule 3)
            if not isinstance(exc, OSError):
                _log.exception("path monitor: reading netlink failed")
            if self._reading:
                self._loop.remove_reader(source.fileno())
            self._reading = False
            self._source = None
            _discard_source(source)
            if self._subscribers:
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
                network_changed({c.interface for c in changes})  # Rule 6
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
        interfaces = live.refresh()  # with nobody subscribed, only this (Rule 1)
        network_changed({c.interface for c in changes})  # and this (Rule 6)
        if self._subscribers:
            self._deliver(changes, interfaces)

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
_lock = threading.Lock()
"""Guards `_shared` and `_holder`: the opener thread sets them."""
_shared: RtnlSource | None = None
"""The process's netlink source, kept open once opened (Rule 1)."""
_holder: weakref.ref[PathMonitor] | None = None
"""The monitor whose loop reads `_shared` now (None: nobody; the socket queues)."""


def _claim(monitor: PathMonitor) -> RtnlSource | None:
    """The process's source for `monitor`, taken from its holder when that one can let go
    (Rule 1); None when there is none yet, or another running loop listens to it."""
    global _holder
    with _lock:
        source = _shared
        if source is None:
            return None
        holder = _holder() if _holder is not None else None
        if holder is monitor:
            return source
        free = (holder is None or holder.closed or holder._loop.is_closed()
                or (not holder._subscribers
                    and (holder._loop is monitor._loop or not holder._loop.is_running())))
        if not free:
            return None
        _holder = weakref.ref(monitor)
    if holder is not None and not holder.closed and not holder._loop.is_closed():
        holder._let_go()
    return source


def _release(monitor: PathMonitor) -> None:
    global _holder
    with _lock:
        if _holder is not None and _holder() is monitor:
            _holder = None


def _discard_source(source: RtnlSource) -> None:
    """A source that broke: closed, and no longer the process's."""
    global _shared, _holder
    with _lock:
        if _shared is source:
            _shared, _holder = None, None
    source.close()


def _open_source(monitor: PathMonitor) -> tuple[RtnlSource | None, OSError | None, bool]:
    """A new source: (source, None, private) or (None, why, False). It becomes the process's
    when there is none yet, held by `monitor`; else `monitor`'s own (private). Whatever the
    opening raises is an OSError here (Rule 3)."""
    global _opened_before, _shared, _holder
    try:
        source = RtnlSource()
    except OSError as exc:
        return None, exc, False
    except Exception as exc:  # a pyroute2 surprise must not leave the monitor "starting"
        _log.exception("path monitor: opening netlink failed")
        return None, OSError(errno.EIO, f"{type(exc).__name__}: {exc}"), False
    _opened_before = True
    with _lock:
        if _shared is None:
            _shared, _holder = source, weakref.ref(monitor)
            return source, None, False
    return source, None, True


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
