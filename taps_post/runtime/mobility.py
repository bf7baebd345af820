"""Mobility: which carriers a change of the network touches, and where they may go.

Rule 1: one subscription to the PathMonitor per event loop, held while any carrier is
watched or waits for a path, dropped with the last one: a process with no carrier open (or
only loopback ones) has no netlink socket registered, and while nothing changes nothing
runs (the monitor's fd sits in the loop's selector).
Rule 2: watching is cheap, because thousands of carriers are held at once: a carrier is put
in two dict-of-set indexes, by interface name and by local IP, when it adopts a Transient,
and taken out when that Transient ends or the carrier closes. A change is one lookup per
index; MPTCP carriers are also kept in one set that every removal visits (their subflows
run on interfaces the initial one does not name).
Rule 3: this module decides nothing about a carrier and starts no task: it finds the
carriers a change touches and calls them (`Mobile.path_gone` for the carriers on what went,
`Mobile.path_usable` for every watched or waiting carrier when something came: one call
each, and the carrier returns at once unless it has something to do); the carrier owns
whatever follows (its close() cancels it). A raising carrier is reported to the loop's
exception handler and the others are still told.
Rule 4: where a carrier may move (`usable_addresses`) comes from its Decision: the
candidates of its stack name the interfaces and local addresses policy allowed, ranked, and
only those that are up now with that address still on them, within the application's Local,
are offered (a prohibited interface is never in the Decision, so it is never offered).
Rule 5: `handle(changes, interfaces)` is the monitor's callback and also the whole unit of
logic: any source of NetChange values (the monitor, a test) can drive it.
Rule 6: the subscription follows the monitor: a Watch keeps the PathMonitor it subscribed
to, and when the application closed that one (`path_monitor()` then makes a new one) the
next carrier watched or waiting subscribes the Watch to the new monitor; re-indexing a
carrier (after a migration) never drops the subscription, so changes the monitor has queued
for its next delivery are not lost. Unsubscribed, the Watch forgets the interfaces it was
told: `current_interfaces()` then reads the monitor's (or the live) snapshot, never an old
one.
Rule 7: many carriers re-racing after one change discover the interfaces once: while the
Watch is subscribed the monitor refreshed the live snapshot before it delivered the change,
and otherwise `refresh_interfaces()` runs once per loop iteration (1,000 TCP carriers
losing their path would otherwise stall the loop ~0.7 s in discovery).
Rule 8: a carrier whose Local names an interface or an address is pinned there: it is never
moved off it automatically (no migration when that path goes, no handover to a better one:
a QUIC connection is left open for the application to move, a TCP one is failed and
re-activates only within its Local, as a send would), while the application's own
`transient.migrate()` still moves it (`usable_addresses` takes the Local).
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..decision.decision import Decision
from ..decision.environment import Interface
from ..system import live
from .monitor import PathMonitor, path_monitor

__all__ = ["Mobile", "Watch", "canonical", "current_interfaces", "handle", "has_usable_path",
           "is_loopback",
           "refresh_interfaces", "unwatch", "usable_addresses", "wait_for_path", "watch",
           "watch_of"]


class Mobile(Protocol):
    """What a watched carrier offers the index (runtime/carrier.py's Carrier)."""

    def path_gone(self, interface: str | None, address: str | None,
                  interfaces: tuple[Interface, ...]) -> None: ...

    def path_usable(self, interfaces: tuple[Interface, ...]) -> None: ...


def canonical(address: str | None) -> str | None:
    """An IP address as the index keys it (inet_ntop's form: IPv6 compressed, no zone),
    None when not an IP. inet_pton/inet_ntop, not ipaddress: a tenth of the cost, and this
    runs once per activation of every carrier (Rule 2)."""
    if not address:
        return None
    ip = address.split("%", 1)[0]
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, ip))
    except (OSError, ValueError):
        return None


def _loopback(ip: str) -> bool:
    return ip.startswith(("127.", "::ffff:127.")) or ip == "::1"


def is_loopback(address: str | None) -> bool:
    """A loopback address (127/8, ::1, or IPv4 loopback mapped into IPv6): nothing a change
    of the network can take away, so a carrier there is not watched (Rule 1)."""
    ip = canonical(address)
    return ip is not None and _loopback(ip)


class Watch:
    """The carriers of one event loop that a network change may touch (Rule 2)."""

    __slots__ = ("__weakref__", "by_if", "by_ip", "interfaces", "keys", "loop", "monitor",
                 "multipath", "refreshed", "unsubscribe", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.by_if: dict[str, set[Mobile]] = {}
        self.by_ip: dict[str, set[Mobile]] = {}
        self.multipath: set[Mobile] = set()
        self.keys: dict[Mobile, tuple[str | None, str | None]] = {}
        self.waiting: set[Mobile] = set()
        """Dormant carriers that wait for a usable path (Mobile.path_usable)."""
        self.unsubscribe: Callable[[], None] | None = None
        self.monitor: PathMonitor | None = None
        """The monitor `unsubscribe` belongs to (Rule 6)."""
        self.refreshed = False
        """refresh_interfaces() ran in this loop iteration (Rule 7)."""
        self.interfaces: tuple[Interface, ...] | None = None
        """The interfaces the last change came with (None: no change seen yet)."""

    def __len__(self) -> int:
        return len(self.keys) + len(self.waiting)

    def add(self, carrier: Mobile, interface: str | None, address: str | None,
            multipath: bool) -> None:
        self._drop(carrier)  # re-indexed, still subscribed (Rule 6)
        self.keys[carrier] = (interface, address)
        if interface is not None:
            self.by_if.setdefault(interface, set()).add(carrier)
        if address is not None:
            self.by_ip.setdefault(address, set()).add(carrier)
        if multipath:
            self.multipath.add(carrier)
        self._subscribe()

    def remove(self, carrier: Mobile) -> None:
        self._drop(carrier)
        if not self.keys and not self.waiting:
            self._unsubscribe()

    @property
    def subscribed(self) -> bool:
        """Subscribed to a monitor that still runs (its snapshot is current)."""
        monitor = self.monitor
        return self.unsubscribe is not None and monitor is not None and not monitor.closed

    def _drop(self, carrier: Mobile) -> None:
        keys = self.keys.pop(carrier, None)
        if keys is not None:
            interface, address = keys
            _discard(self.by_if, interface, carrier)
            _discard(self.by_ip, address, carrier)
            self.multipath.discard(carrier)
        self.waiting.discard(carrier)

    def wait(self, carrier: Mobile) -> None:
        self.waiting.add(carrier)
        self._subscribe()

    def _subscribe(self) -> None:
        if self.subscribed:
            return
        if self.unsubscribe is not None:  # the application closed that monitor (Rule 6)
            self._unsubscribe()
        monitor = _monitor()
        if monitor is not None:
            self.unsubscribe = monitor.subscribe(self.changed)
            self.monitor = monitor

    def _unsubscribe(self) -> None:
        unsubscribe, self.unsubscribe = self.unsubscribe, None
        self.monitor = None
        self.interfaces = None  # Rule 6: not kept past the subscription
        if unsubscribe is not None:
            unsubscribe()

    def changed(self, changes: Sequence[Any], interfaces: tuple[Interface, ...]) -> None:
        """The monitor's callback (Rule 5)."""
        self.interfaces = tuple(interfaces)
        gone: list[tuple[Mobile, str | None, str | None]] = []
        usable = False
        for change in changes:
            kind, action = change.kind, change.action
            if kind == "link" and action in ("down", "removed"):
                name = change.interface
                gone += [(c, name, None) for c in self.by_if.get(name, ())]
                gone += [(c, name, None) for c in self.multipath]
            elif kind == "address" and action == "removed":
                ip = canonical(change.address)
                if ip is not None:
                    gone += [(c, change.interface, ip) for c in self.by_ip.get(ip, ())]
                    gone += [(c, change.interface, ip) for c in self.multipath]
            elif action in ("up", "added"):
                usable = True
        told: set[int] = set()
        for carrier, name, ip in gone:
            if id(carrier) in told:
                continue
            told.add(id(carrier))
            _tell(self.loop, carrier.path_gone, name, ip, self.interfaces)
        if usable:  # dormant ones come back, MPTCP ones re-plan, QUIC ones may hand over
            for carrier in list(self.waiting) + [c for c in self.keys if c not in self.waiting]:
                if id(carrier) not in told:
                    _tell(self.loop, carrier.path_usable, self.interfaces)


def _discard(index: dict[str, set[Mobile]], key: str | None, carrier: Mobile) -> None:
    if key is None:
        return
    found = index.get(key)
    if found is not None:
        found.discard(carrier)
        if not found:
            del index[key]


def _tell(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # one carrier's bug must not keep the others in the dark
        loop.call_exception_handler({"message": "taps_post path change handler failed",
                                     "exception": exc})


def _monitor() -> PathMonitor | None:
    """The loop's PathMonitor (runtime/monitor.py), None once it was closed."""
    monitor = path_monitor()
    return None if monitor.closed else monitor


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watch] = \
    weakref.WeakKeyDictionary()


def watch_of(loop: asyncio.AbstractEventLoop | None = None) -> Watch:
    """The Watch of `loop` (default: the running loop), made on first use."""
    if loop is None:
        loop = asyncio.get_running_loop()
    found = _WATCHES.get(loop)
    if found is None:
        found = _WATCHES[loop] = Watch(loop)
    return found


def watch(carrier: Mobile, local_address: tuple[str, int] | None, interface: str | None,
          *, multipath: bool = False) -> Watch | None:
    """Index `carrier` by its interface and local IP (Rule 2); None when there is nothing a
    change could take away (a loopback or unbound carrier)."""
    ip = canonical(local_address[0]) if local_address else None
    if ip is None or _loopback(ip):
        return None
    found = watch_of()
    found.add(carrier, interface, ip, multipath)
    return found


def unwatch(carrier: Mobile, found: Watch | None) -> None:
    if found is not None:
        found.remove(carrier)


def wait_for_path(carrier: Mobile, found: Watch | None = None) -> Watch:
    """Keep `carrier` (dormant) told of interfaces coming up and addresses added."""
    if found is None:
        found = watch_of()
    found.wait(carrier)
    return found


def handle(changes: Sequence[Any], interfaces: tuple[Interface, ...],
           loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Tell the carriers of `loop` about `changes` (Rule 5): any source of NetChange-like
    values (kind, action, interface, address) will do."""
    watch_of(loop).changed(changes, interfaces)


def _usable(interfaces: Iterable[Interface], name: str, address: str) -> bool:
    for i in interfaces:
        if i.name == name:
            return i.up and any(canonical(a.address) == address for a in i.addresses)
    return False


def usable_addresses(decision: Decision | None, stack: str, family: str | None,
                     interfaces: tuple[Interface, ...], *, avoid_interface: str | None = None,
                     avoid_address: str | None = None, local_interface: str | None = None,
                     local_address: str | None = None) -> list[tuple[str, str]]:
    """(local address, interface) pairs a carrier of `stack` may move to now, best first
    (Rule 4): its Decision's candidates of that stack and address family, on interfaces up
    in `interfaces` that still hold the address, not the interface or address that went,
    and within `local_interface` / `local_address` when given. The carrier moves by itself
    only when its Local names neither (Rule 8: a Local naming one pins it there); an
    application's own migrate() may pass its Local to stay within it."""
    if decision is None:
        return []
    pinned = canonical(local_address)
    found: dict[tuple[str, str], None] = {}
    for c in decision.candidates:
        if c.stack != stack or (family is not None and c.family != family):
            continue
        if local_interface is not None and c.interface != local_interface:
            continue
        if pinned is not None and canonical(c.local_address) != pinned:
            continue
        ip = canonical(c.local_address)
        if ip is None or c.interface == avoid_interface or ip == avoid_address:
            continue
        if _usable(interfaces, c.interface, ip):
            found.setdefault((ip, c.interface), None)
    return list(found)


def has_usable_path(remote_families: Iterable[str] | None,
                    interfaces: tuple[Interface, ...], *, loopback: bool = False) -> bool:
    """Whether any interface is up with an address of a family the remote has (None: any
    family), so a re-race could reach it at all. Loopback counts only for a loopback
    remote; IPv6 link-local addresses never count (a remote that needs one names a zone)."""
    families = None if remote_families is None else set(remote_families)
    for i in interfaces:
        if not i.up or (i.type == "loopback") != loopback:
            continue
        for a in i.addresses:
            if families is not None and a.family not in families:
                continue
            if a.family == "ipv6" and a.ip.is_link_local:
                continue
            return True
    return False


def current_interfaces(loop: asyncio.AbstractEventLoop | None = None
                       ) -> tuple[Interface, ...]:
    """The interfaces now: the monitor's snapshot while the Watch is subscribed (Rule 6),
    else the live snapshot discovered now."""
    if loop is None:
        loop = asyncio.get_running_loop()
    found = _WATCHES.get(loop)
    if found is not None and found.subscribed and found.monitor is not None:
        return found.interfaces if found.interfaces is not None else found.monitor.interfaces
    return live.refresh()


def refresh_interfaces(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Before a re-race after a change: the next decision discovers the interfaces afresh
    (an unchanged list keeps its identity, so plans decided on it stay valid). Skipped while
    the Watch is subscribed (the monitor refreshed before it told us), and at most once per
    loop iteration otherwise (Rule 7)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    found = watch_of(loop)
    if found.subscribed or found.refreshed:
        return
    found.refreshed = True
    loop.call_soon(_refreshed, found)
    live.refresh()


def _refreshed(found: Watch) -> None:
    found.refreshed = False
