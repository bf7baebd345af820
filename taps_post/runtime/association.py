"""Associations: long-lived state between a Local and a Remote.

Rule 1: an Association remembers what the network taught us (which path and stack worked, how
fast, which failed) and the cryptographic state that makes the next connection cheaper (TLS
sessions). The decision core reads the history as `Environment.cache`; it never reads tickets.
Rule 2: tickets are used by one racing attempt only (RFC 9623 section 5.3): `take_ticket()`
hands a ticket out once.
Rule 3: the optional on-disk cache holds path history only (stdlib TLS sessions cannot be
serialised), is written atomically, and is created with mode 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from ..decision.environment import CacheEntry

__all__ = ["Association", "AssociationStore", "default_store"]

_HISTORY_LIMIT = 64


@dataclass
class Association:
    """State shared by every carrier to one remote (`host:port`)."""

    remote: str
    history: list[CacheEntry] = field(default_factory=list)
    tickets: dict[str, list[Any]] = field(default_factory=dict)
    """Per stack: resumable sessions (ssl.SSLSession, QUIC session tickets)."""
    session_cache: bool = True
    tls_contexts: dict[Any, Any] = field(default_factory=dict, repr=False)
    """SSLContexts by settings: a TLS session resumes only on the context that created it."""
    plans: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Decisions by (context, kind, target, addresses); valid while the history and the live
    interfaces are unchanged (runtime.establish, Rule 2)."""

    def record(self, stack: str, outcome: str, *, rtt_ms: float | None = None,
               interface: str | None = None, address: str | None = None) -> None:
        """Remember how an attempt went; the newest entry for (stack, interface, address)
        replaces older ones."""
        rtt = round(rtt_ms, 3) if rtt_ms is not None else None
        ticket = bool(self.tickets.get(stack))
        for old in self.history:
            if (old.stack, old.interface, old.address) == (stack, interface, address):
                if (old.outcome, old.ticket) == (outcome, ticket) and _near(old.rtt_ms, rtt):
                    return  # nothing a ranking would notice: keep the entry (and the plan)
                break
        entry = CacheEntry(self.remote, stack, outcome, rtt, ticket, interface, address)
        self.history = [e for e in self.history
                        if (e.stack, e.interface, e.address) != (stack, interface, address)
                        ][-_HISTORY_LIMIT:]
        self.history.append(entry)

    def add_ticket(self, stack: str, ticket: Any) -> None:
        if self.session_cache and ticket is not None:
            bucket = self.tickets.setdefault(stack, [])
            bucket.append(ticket)
            del bucket[:-4]

    def take_ticket(self, stack: str) -> Any | None:
        bucket = self.tickets.get(stack)
        return bucket.pop() if bucket else None

    def has_ticket(self, stack: str) -> bool:
        return bool(self.tickets.get(stack))

    def __repr__(self) -> str:
        tickets = sum(len(v) for v in self.tickets.values())
        return f"<Association {self.remote} history={len(self.history)} tickets={tickets}>"


class AssociationStore:
    """Associations by remote; optionally backed by a JSON file of path history."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._by_remote: dict[str, Association] = {}
        self.path = os.fspath(path) if path is not None else None
        if self.path and os.path.exists(self.path):
            self._load()

    def get(self, remote: str) -> Association:
        key = remote.lower()
        with self._lock:
            assoc = self._by_remote.get(key)
            if assoc is None:
                assoc = self._by_remote[key] = Association(key)
            return assoc

    def clear(self) -> None:
        with self._lock:
            self._by_remote.clear()

    def save(self) -> None:
        """Write path history atomically with mode 0600 (it reveals where we connect)."""
        if not self.path:
            return
        data = {"version": 1, "associations": {
            k: [_entry(e) for e in a.history]
            for k, a in self._by_remote.items() if a.history}}
        directory = os.path.dirname(os.path.abspath(self.path))
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
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            for remote, entries in data.get("associations", {}).items():
                assoc = self.get(remote)
                assoc.history = [CacheEntry(**e) for e in entries]
        except (OSError, ValueError, TypeError):
            # A damaged cache only costs us history; never refuse to connect because of it.
            return


def _near(old: float | None, new: float | None) -> bool:
    """An RTT sample within 25 % (or 0.5 ms: below that it is scheduling noise) of the stored
    one ranks the same."""
    if old is None or new is None:
        return old is new
    return abs(new - old) <= max(0.25 * old, 0.5)


def _entry(e: CacheEntry) -> dict[str, Any]:
    return {"remote": e.remote, "stack": e.stack, "outcome": e.outcome, "rtt_ms": e.rtt_ms,
            "ticket": e.ticket, "interface": e.interface, "address": e.address}


default_store = AssociationStore()
"""The process-wide store `initiate()` uses unless given another."""
