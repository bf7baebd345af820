"""Associations: long-lived state between a Local and a Remote (draft 2.3).

Rule 1: an Association remembers what the network taught us (which path and stack worked, how
fast, which failed) and the cryptographic state that makes the next connection cheaper (TLS
sessions). The decision core reads the history as `Environment.cache`; it never reads tickets.
Rule 2: tickets are used by one racing attempt only (RFC 9623 section 5.3): `take_ticket()`
hands a ticket out once, the newest one the caller can use (`accept`), and leaves the others.
Rule 3: the optional on-disk cache holds path history, and, when the store is made with
`tickets=True`, the QUIC session tickets too (stacks/quic/tickets.py; stdlib TLS sessions
cannot be serialised, so TLS over TCP resumes within one process only). It is written
atomically, created with mode 0600, and never holds a ticket past its lifetime: expired ones
are dropped when the file is written and when it is read. At most `_TICKETS_PER_KEY` tickets
per remote (as in memory) and `_TICKETS_LIMIT` in all are read back.
Rule 4: the cache is a hint, never an authority, and never a reason to refuse a connection. A
file is read only when it is a regular file (not through a symlink), owned by this user and
writable by nobody else, and a store that keeps tickets (secrets) also refuses one that group
or others may read; every entry is checked (types, bounds, known stacks, a count cap)
before it can reach decide(). What fails is skipped with one warning per file on the
`taps_post.store` logger, and the store starts from what was left.
Rule 5: no secret in a repr. A ticket is held as a `Ticket`, whose repr names its stack only,
and an Association's repr counts its tickets; the ticket's bytes leave only through
`take_ticket()`, to the one attempt that resumes with it.
Rule 6: an Association is found by its `key` (`host:port`, lower case): the store, the history
(`CacheEntry.remote`) and the cache file use the key; `remote` and `local` are the endpoints
the application named, filled by the first carrier that asks for the key, and never decide
which Association a carrier gets.
Rule 7: an Association knows its carriers by weak reference only (`attach`/`detach`): it never
keeps a carrier alive, and `paths` lists what the live ones use now, read from their open
Transients (one Path per subflow of an MPTCP connection, runtime/path.py Rule 4), so a closed
or collected carrier drops out without anyone telling it.
Rule 8: an attempt's outcome is one of `OUTCOMES`: "success", "failure", or "fallback", an
MPTCP stack (`mptcp`, `tls-mptcp`) whose connection came up as plain TCP because the peer
does not speak MPTCP. A fallback is remembered like a failure is (and, like the TCP Fast Open
cookies the kernel caches, it saves the next connection a useless attempt): decide() ranks
the plain stack first for that remote. It is recorded only for a multipath-capable stack;
the cache file accepts it only there (Rule 4).
Rule 9: the RTT kept for a path is smoothed as TCP smooths its own (RFC 6298, alpha 1/8), and
an entry is rewritten only when the smoothed value moved out of the band a ranking would
notice (`_near`). A single slow handshake on a loaded machine must not re-rank the paths nor
throw away every cached plan. A failure is the exception: it is rewritten each time it
happens, because its time (`CacheEntry.at`) is what `racing.failureMemory` counts from, and a
QUIC path that failed a minute ago must not be remembered as failing ten minutes ago.
Rule 10: every entry is stamped with the wall clock (`time.time()`) when it is recorded, and
the cache file keeps the stamp, so a failure remembered before a restart still demotes its
candidate after it (and stops when it is older than the memory). A stamp read from a file
is a finite number no more than a minute in the future (clock steps between processes are
small; a stamp from next year is a damaged or forged file) and not negative, or the entry
is skipped like any other bad one (Rule 4). An old file without stamps loads with `at` None,
which counts as recent until the next outcome rewrites the entry.
Rule 11: an entry is about one (stack, interface, address, port): the remote port is part of
its identity (`CacheEntry.port`), because with SVCB one stack reaches one address on two
ports, and a success on 443 must not overwrite the failure on 8443 it fell back from (the
8443 candidate would rank first again, and every connection would wait one attempt delay
behind it). An entry without a port (an old file, a caller that names none) is about any
port; the first outcome recorded with a port for the same (stack, interface, address)
replaces it, since it is older news about the same path. The cache file keeps the port and
checks it like any other field (an integer from 0 to 65535, else the entry is skipped).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, Protocol

from ..decision.environment import CacheEntry
from ..errors import ArgumentError
from ..policy import catalog
from .endpoints import Local, Remote
from .path import Path, paths_of

__all__ = ["OUTCOMES", "Association", "AssociationStore", "Ticket", "default_store"]

OUTCOMES = ("success", "failure", "fallback")
"""What `Association.record` accepts and the cache file may hold (Rule 8)."""

_HISTORY_LIMIT = 64
"""Entries kept per remote, in memory and when loaded."""
_REMOTES_LIMIT = 4096
"""Remotes loaded from a cache file; a bigger file is a damaged (or hostile) one."""
_FILE_LIMIT = 8 << 20
"""Bytes read from a cache file: 4096 remotes of 64 entries fit well below it."""
_TEXT_LIMIT = 255
"""Longest remote, interface or address string accepted from a file."""
_FUTURE_S = 60.0
"""How far in the future a stamp from the file may be (Rule 10)."""
_TICKETS_PER_KEY = 4
"""Tickets kept per stack and remote, in memory and when loaded (the newest)."""
_TICKETS_LIMIT = 1024
"""Tickets loaded from a cache file in all (Rule 3)."""

_log = logging.getLogger("taps_post.store")


class Ticket:
    """A resumption ticket (an ssl.SSLSession, a QUIC SessionTicket) held for one attempt.

    It exists so that nothing that prints an Association, its `tickets` or a list of them can
    print ticket bytes or resumption secrets: aioquic's SessionTicket is a dataclass whose
    repr shows both."""

    __slots__ = ("_value", "stack")

    def __init__(self, stack: str, value: Any) -> None:
        self.stack = stack
        self._value = value

    @property
    def value(self) -> Any:
        """The ticket itself, for the stack that resumes with it."""
        return self._value

    def __repr__(self) -> str:
        return f"<Ticket {self.stack}>"

    __str__ = __repr__


class Attachable(Protocol):
    """What an Association reads from a carrier: the Transients serving it now (runtime
    Carrier has it; a Protocol so this module does not import the carrier's)."""

    @property
    def transients(self) -> Sequence[Any]: ...


@dataclass(eq=False)
class Association:
    """State shared by every carrier to one remote: the draft's Association (2.3) between
    `local` and `remote`, its path history and tickets, and the `paths` in use now.

    Identity is the object itself (two Associations are equal only if they are one), like
    the carriers it serves: the store hands out one per key."""

    key: str
    """"host:port" the store, the history and the cache file know it by (lower case)."""
    remote: Remote | None = None
    """The Remote the application named (the first carrier's), None for one only loaded
    from the cache file so far."""
    local: Local | None = None
    """The Local the first carrier named (None: any local endpoint)."""
    history: list[CacheEntry] = field(default_factory=list)
    tickets: dict[str, list[Ticket]] = field(default_factory=dict)
    """Per stack: resumable sessions (ssl.SSLSession, QUIC session tickets), newest last."""
    session_cache: bool = True
    tls_contexts: dict[Any, Any] = field(default_factory=dict, repr=False)
    """SSLContexts by settings: a TLS session resumes only on the context that created it."""
    plans: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Decisions by (context, kind, target, addresses); valid while the history and the live
    interfaces are unchanged (runtime.establish, Rule 2)."""
    _srtt: dict[tuple[str, str | None, str | None, int | None], float] = field(
        default_factory=dict, init=False, repr=False)
    """The smoothed RTT of each (stack, interface, address, port), kept apart from the
    history entries, which change only when it leaves their band (Rule 9)."""
    _carriers: list[weakref.ref[Attachable]] = field(default_factory=list, init=False,
                                                     repr=False)
    """Attached carriers, oldest first (Rule 7)."""

    # ---- carriers and paths (draft 2.3, 2.7) -----------------------------------------------

    def attach(self, carrier: Attachable) -> None:
        """Bind `carrier` to this Association (again: it becomes the newest)."""
        self.detach(carrier)
        self._carriers.append(weakref.ref(carrier))

    def detach(self, carrier: Attachable) -> None:
        """Forget `carrier` (a carrier never attached is not an error: close is idempotent)."""
        self._carriers = [r for r in self._carriers
                          if (c := r()) is not None and c is not carrier]

    @property
    def carriers(self) -> list[Attachable]:
        """The attached carriers still alive, newest first."""
        alive = [c for r in reversed(self._carriers) if (c := r()) is not None]
        if len(alive) != len(self._carriers):
            self._carriers = [weakref.ref(c) for c in reversed(alive)]
        return alive

    @property
    def paths(self) -> list[Path]:
        """The distinct Paths the live carriers use now, newest carrier first: one per open
        Transient, or one per subflow of an MPTCP connection (a dormant carrier has none).
        Their dynamic properties are read afresh on each access (runtime.path, Rule 2)."""
        seen: dict[Path, None] = {}
        for carrier in self.carriers:
            for transient in carrier.transients:
                if not transient.is_open:
                    continue
                if not isinstance(transient.path, Path):  # a Transient no Carrier adopted
                    transient.path = Path.of(transient)
                for path in paths_of(transient):
                    seen.setdefault(path, None)
        return list(seen)

    # ---- history and tickets ----------------------------------------------------------------

    def record(self, stack: str, outcome: str, *, rtt_ms: float | None = None,
               interface: str | None = None, address: str | None = None,
               at: float | None = None, port: int | None = None) -> None:
        """Remember how an attempt went (`outcome`: one of OUTCOMES, Rule 8); the newest
        entry for (stack, interface, address, port) replaces older ones, so a success clears
        a failure on that port only (Rule 11). A "fallback" for a stack that cannot fall
        back (not multipath-capable) is recorded as the "success" it was. `at` is when it
        happened on the wall clock (default: now, Rule 10); `port` is the remote port the
        attempt went to (None: any port)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        if outcome == "fallback" and not _multipath(stack):
            outcome = "success"
        where = (stack, interface, address, port)
        srtt = self._srtt.get(where)
        if rtt_ms is None:
            self._srtt.pop(where, None)
        else:
            srtt = self._srtt[where] = rtt_ms if srtt is None else _smoothed(srtt, rtt_ms)
        rtt = round(srtt, 3) if rtt_ms is not None and srtt is not None else None
        ticket = bool(self.tickets.get(stack))
        for old in self.history:
            if _identity(old) == where:
                if (old.outcome, old.ticket) == (outcome, ticket) and \
                        _near(old.rtt_ms, rtt) and outcome != "failure":
                    return  # nothing a ranking would notice: keep the entry (and the plan)
                break  # Rule 9: a failure is rewritten, its time is the memory's start
        entry = CacheEntry(self.key, stack, outcome, rtt, ticket, interface, address,
                           at=time.time() if at is None else at, port=port)
        anyport = (stack, interface, address, None)  # Rule 11: older news of this path
        self.history = [e for e in self.history if _identity(e) not in (where, anyport)
                        ][-_HISTORY_LIMIT:]
        self.history.append(entry)

    def add_ticket(self, stack: str, ticket: Any) -> None:
        if self.session_cache and ticket is not None:
            bucket = self.tickets.setdefault(stack, [])
            bucket.append(Ticket(stack, ticket))
            del bucket[:-_TICKETS_PER_KEY]

    def take_ticket(self, stack: str,
                    accept: Callable[[Any], bool] | None = None) -> Any | None:
        """Pop and return the newest ticket of `stack` that `accept(ticket)` approves (every
        one when `accept` is None), None when there is none; the others stay (Rule 2). A TLS
        stack passes an `accept` that checks the session was made by the SSLContext it is
        about to use: a session offered on another context fails the handshake."""
        bucket = self.tickets.get(stack)
        if not bucket:
            return None
        for i in range(len(bucket) - 1, -1, -1):
            value = bucket[i].value
            if accept is None or accept(value):
                del bucket[i]
                return value
        return None

    def has_ticket(self, stack: str) -> bool:
        return bool(self.tickets.get(stack))

    def __repr__(self) -> str:
        tickets = sum(len(v) for v in self.tickets.values())
        return (f"<Association {self.key} history={len(self.history)} tickets={tickets} "
                f"carriers={len(self.carriers)}>")


class AssociationStore:
    """Associations by remote; optionally backed by a JSON file of path history and, with
    `tickets=True`, of QUIC session tickets, so that a process's next run resumes (and sends
    its first idempotent message in 0-RTT) where this one left off (Rule 3).

    Constructing a store never raises because of its file (Rule 4): a missing, untrusted or
    damaged file gives a store with what could be trusted of it, possibly nothing."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 tickets: bool = False) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, Association] = {}
        self.path = os.fspath(path) if path is not None else None
        self.tickets = tickets
        """Whether the file keeps QUIC session tickets (secrets: the file must be 0600)."""
        if tickets and self.path is None:
            raise ArgumentError("AssociationStore(tickets=True) keeps tickets in its file: "
                                "give it a path")
        if self.path:
            self._load()

    def get(self, key: str, remote: Remote | None = None,
            local: Local | None = None) -> Association:
        """The Association for `key` (`host:port`, any case), made on first use. `remote`
        and `local` fill the Association's endpoints when it has none yet (Rule 6): the
        first carrier to a key names them, and an Association loaded from the cache file
        gets them from the first carrier that uses it."""
        key = key.lower()
        with self._lock:
            assoc = self._by_key.get(key)
            if assoc is None:
                assoc = self._by_key[key] = Association(key, remote, local)
            else:
                if assoc.remote is None and remote is not None:
                    assoc.remote = remote
                if assoc.local is None and local is not None:
                    assoc.local = local
            return assoc

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()

    def __repr__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return f"<AssociationStore{where} associations={len(self._by_key)}>"

    def save(self) -> None:
        """Write path history (and the live QUIC tickets, with `tickets=True`) atomically
        with mode 0600: it reveals where we connect, and a ticket resumes a session."""
        if not self.path:
            return
        with self._lock:
            associations = list(self._by_key.items())
        data: dict[str, Any] = {"version": 1, "associations": {
            k: [_entry(e) for e in a.history] for k, a in associations if a.history}}
        if self.tickets:
            data["tickets"] = {k: records for k, a in associations
                               if (records := _ticket_records(a))}
        directory = os.path.dirname(os.path.abspath(self.path))
        import tempfile  # (and shutil, bz2, lzma) only for a store that saves to a file

        fd, tmp = tempfile.mkstemp(prefix=".taps-post-", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = _read_trusted(self.path, secret=self.tickets)
            if data is None:
                return
            history, skipped, first = _validated(data)
        except _Untrusted as exc:
            _log.warning("ignoring the association cache %s: %s", self.path, exc)
            return
        except Exception as exc:  # Rule 4: a damaged cache never stops a connection
            _log.warning("ignoring the association cache %s: %s: %s", self.path,
                         type(exc).__name__, exc)
            return
        for remote, entries in history.items():
            self.get(remote).history = entries
        if self.tickets:
            tickets, bad, why = _loaded_tickets(data.get("tickets"))
            for remote, values in tickets.items():
                self.get(remote).tickets["quic"] = [Ticket("quic", v) for v in values]
            skipped += bad
            first = first or why
        if skipped:
            _log.warning("association cache %s: skipped %d bad entr%s (first: %s)", self.path,
                         skipped, "y" if skipped == 1 else "ies", first)


class _Untrusted(Exception):
    """The cache file as a whole cannot be used (its message says why)."""


def _read_trusted(path: str, *, secret: bool = False) -> Any:
    """The parsed JSON of `path`, None when there is no file, _Untrusted when it may not be
    trusted: a symlink (O_NOFOLLOW), not a regular file (O_NONBLOCK: a FIFO must not hang
    us), owned by someone else, writable by group or others (`secret`: any access by group
    or others), too big, or not JSON. The checks are made on the opened descriptor, so the
    file judged is the file read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Untrusted("it is a symbolic link") from None
        raise _Untrusted(f"cannot open it: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Untrusted("it is not a regular file")
        if st.st_uid != os.geteuid():
            raise _Untrusted(f"it is owned by uid {st.st_uid}, not by this user "
                             f"(uid {os.geteuid()})")
        if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise _Untrusted(f"it holds session tickets, and group or others may use it "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600)")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _Untrusted(f"it is writable by group or others "
                             f"(mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > _FILE_LIMIT:
            raise _Untrusted(f"it is larger than {_FILE_LIMIT} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= _FILE_LIMIT and (chunk := os.read(fd, _FILE_LIMIT + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    finally:
        os.close(fd)
    if len(raw) > _FILE_LIMIT:
        raise _Untrusted(f"it is larger than {_FILE_LIMIT} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _Untrusted(f"it is not valid JSON ({exc})") from None


def _validated(data: Any) -> tuple[dict[str, list[CacheEntry]], int, str]:
    """The entries of a cache document that may reach decide(), by remote, how many were
    skipped and where and why the first was. A wrong top-level shape is _Untrusted: nothing
    in it counts."""
    if not isinstance(data, dict):
        raise _Untrusted(f"the top level is {_kind(data)}, not an object")
    if data.get("version") != 1 or type(data.get("version")) is not int:
        raise _Untrusted(f"version is {data.get('version')!r}, expected 1")
    table = data.get("associations")
    if not isinstance(table, dict):
        raise _Untrusted(f"associations is {_kind(table)}, not an object")
    history: dict[str, list[CacheEntry]] = {}
    skipped = 0
    first = ""

    def skip(count: int, why: str) -> None:
        nonlocal skipped, first
        skipped += count
        first = first or why

    known = frozenset(catalog.names())
    for remote, entries in table.items():
        where = f"associations[{remote!r:.80}]"
        count = len(entries) if isinstance(entries, list) else 1
        if not _text(remote) or not remote:
            skip(count, f"{where}: not a host:port")
        elif not isinstance(entries, list):
            skip(count, f"{where}: {_kind(entries)}, not a list of entries")
        elif remote.lower() not in history and len(history) >= _REMOTES_LIMIT:
            skip(count, f"{where}: over the limit of {_REMOTES_LIMIT} remotes")
        else:
            key = remote.lower()
            good = history.setdefault(key, [])
            for i, raw in enumerate(entries):
                entry = _entry_of(key, raw, known)
                if isinstance(entry, str):
                    skip(1, f"{where}[{i}]: {entry}")
                else:
                    good.append(entry)
            if len(good) > _HISTORY_LIMIT:
                skip(len(good) - _HISTORY_LIMIT, f"{where}: over the limit of "
                     f"{_HISTORY_LIMIT} entries per remote (the oldest are dropped)")
                del good[:-_HISTORY_LIMIT]
            if not good:
                del history[key]
    return history, skipped, first


def _ticket_records(assoc: Association) -> list[dict[str, Any]]:
    """The on-disk form of an Association's live QUIC tickets, oldest first (Rule 3)."""
    values = [t.value for t in assoc.tickets.get("quic", ())]
    if not values:
        return []
    from ..stacks.quic.tickets import ticket_to_record  # aioquic is loaded: it made them

    return [r for v in values if (r := ticket_to_record(v)) is not None]


def _loaded_tickets(table: Any) -> tuple[dict[str, list[Any]], int, str]:
    """The QUIC tickets of a cache document's `tickets` table by remote, how many were
    skipped and why the first was. Expired tickets are dropped without a warning: reaching
    its lifetime is what a ticket does, not damage (Rule 3)."""
    if table is None:
        return {}, 0, ""
    if not isinstance(table, dict):
        return {}, 1, f"tickets: {_kind(table)}, not an object"
    from ..stacks.quic.tickets import EXPIRED, ticket_from_record

    out: dict[str, list[Any]] = {}
    skipped, first, total = 0, "", 0
    for remote, records in table.items():
        where = f"tickets[{remote!r:.80}]"
        count = len(records) if isinstance(records, list) else 1
        if not _text(remote) or not remote:
            bad = f"{where}: not a host:port"
        elif not isinstance(records, list):
            bad = f"{where}: {_kind(records)}, not a list of tickets"
        elif total >= _TICKETS_LIMIT:
            bad = f"{where}: over the limit of {_TICKETS_LIMIT} tickets"
        else:
            good = []
            start = max(0, len(records) - _TICKETS_PER_KEY)  # only the newest are kept
            for i, raw in enumerate(records[start:], start):
                ticket = ticket_from_record(raw)
                if ticket == EXPIRED:
                    continue
                if isinstance(ticket, str):
                    skipped += 1
                    first = first or f"{where}[{i}]: {ticket}"
                else:
                    good.append(ticket)
            if len(good) > _TICKETS_LIMIT - total:  # counted like a whole remote over it
                skipped += len(good) - (_TICKETS_LIMIT - total)
                first = first or f"{where}: over the limit of {_TICKETS_LIMIT} tickets"
                good = good[:_TICKETS_LIMIT - total]
            if good:
                out.setdefault(remote.lower(), []).extend(good)
                del out[remote.lower()][:-_TICKETS_PER_KEY]
                total += len(good)
            continue
        skipped += count
        first = first or bad
    return out, skipped, first


_FIELDS = frozenset(("remote", "stack", "outcome", "rtt_ms", "ticket", "interface", "address",
                     "at", "port"))


def _entry_of(remote: str, raw: Any, known: frozenset[str]) -> CacheEntry | str:
    """A checked CacheEntry, or why `raw` is not one."""
    if not isinstance(raw, dict):
        return f"{_kind(raw)}, not an object"
    unknown = sorted(str(k)[:40] for k in raw if k not in _FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r}"
    owner = raw.get("remote", remote)
    if not _text(owner) or owner.lower() != remote:
        return "its remote is not the association's"
    stack = raw.get("stack")
    if not _text(stack) or stack not in known:
        return f"stack {stack!r:.40} is not a known stack"
    outcome = raw.get("outcome")
    if outcome not in OUTCOMES:
        return f"outcome {outcome!r:.40} is not success, failure or fallback"
    if outcome == "fallback" and not _multipath(stack):
        return f"outcome 'fallback' for {stack}, which is not a multipath stack"
    rtt = raw.get("rtt_ms")
    if rtt is not None and ((number := _number(rtt)) is None or number < 0):
        return f"rtt_ms {rtt!r:.40} is not a finite number >= 0"
    ticket = raw.get("ticket", False)
    if type(ticket) is not bool:
        return f"ticket {ticket!r:.40} is not true or false"
    interface = raw.get("interface")
    if interface is not None and (not _text(interface) or not interface):
        return f"interface {interface!r:.40} is not an interface name"
    address = raw.get("address")
    if address is not None:
        if not _text(address):
            return f"address {address!r:.40} is not an IP address"
        try:
            ip_address(address)
        except ValueError:
            return f"address {address!r:.40} is not an IP address"
    at = raw.get("at")
    if at is not None:
        stamp = _number(at)
        if stamp is None or stamp < 0:
            return f"at {at!r:.40} is not a time (seconds since the epoch)"
        if stamp > time.time() + _FUTURE_S:
            return f"at {at!r:.40} is more than a minute in the future"
    port = raw.get("port")
    if port is not None and (type(port) is not int or not 0 <= port <= 65535):
        return f"port {port!r:.40} is not a port (an integer from 0 to 65535)"
    return CacheEntry(remote, stack, outcome, None if rtt is None else float(rtt), ticket,
                      interface, address, at=None if at is None else float(at), port=port)


def _identity(e: CacheEntry) -> tuple[str, str | None, str | None, int | None]:
    """What one history entry is about (Rule 11)."""
    return e.stack, e.interface, e.address, e.port


def _number(value: Any) -> float | None:
    """`value` as a finite float when the file holds a JSON number (not a bool), else None;
    an integer too big for a float is None too, not an OverflowError."""
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _multipath(stack: str) -> bool:
    """The stack may fall back to a single path (Rule 8): multipath-capable in the catalogue."""
    try:
        return catalog.info(stack).multipath_capable
    except KeyError:
        return False


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= _TEXT_LIMIT


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _smoothed(old: float, sample: float) -> float:
    """RFC 6298's SRTT step (alpha 1/8): one slow handshake on a loaded machine moves the
    stored RTT by an eighth of the difference, not all of it (Rule 9)."""
    return old + (sample - old) / 8


def _near(old: float | None, new: float | None) -> bool:
    """An RTT sample within 25 % (or 0.5 ms: below that it is scheduling noise) of the stored
    one ranks the same."""
    if old is None or new is None:
        return old is new
    return abs(new - old) <= max(0.25 * old, 0.5)


def _entry(e: CacheEntry) -> dict[str, Any]:
    """An entry as the file holds it; `at` and `port` only when known, so an entry loaded
    from a file written before stamps (Rule 10) or ports (Rule 11) is written back
    unchanged."""
    return {"remote": e.remote, "stack": e.stack, "outcome": e.outcome, "rtt_ms": e.rtt_ms,
            "ticket": e.ticket, "interface": e.interface, "address": e.address,
            **({"at": e.at} if e.at is not None else {}),
            **({"port": e.port} if e.port is not None else {})}


default_store = AssociationStore()
"""The process-wide store `initiate()` uses unless given another."""
