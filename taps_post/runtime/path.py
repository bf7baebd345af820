"""Path: one path through the network that an Association uses (draft 2.7).

Rule 1: a Path names its endpoints once: `interface`, `local_address` and `remote_address` are
taken when the Path is made (the runtime makes it for a connected Transient) and never change,
so two Paths compare and hash by them; a Transient that moves to other addresses gets a new
Path (that is what `PathChange` reports, old and new).
Rule 2: the dynamic properties (`rtt_ms`, `rttvar_ms`, `loss`, `rate_bps`, and `mtu` when the
stack measured one) are measured, never guessed: each access asks the Transient afresh
(`Transient.path_stats()`: TCP_INFO on TCP/TLS, aioquic's recovery state on QUIC), and a value
the stack cannot measure is None. `stats()` is one consistent snapshot of all of them.
Rule 3: the static properties of the local side (`pvd`, `metered`, `cost`, the link `mtu`)
come from the decision's Interface, the same value the decision ranked with, so a Path and
an explanation never disagree about which interface is metered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..core.path import PathStats
from ..decision.environment import Interface
from .endpoints import hostport

__all__ = ["Path", "paths_of"]


class Measured(Protocol):
    """What a Path reads from its Transient (stacks.transient.Transient has all of it)."""

    interface: str | None
    local_address: tuple[str, int] | None
    remote_address: tuple[str, int] | None

    def path_stats(self) -> PathStats: ...


class Path:
    """A path of an Association: source and destination addresses, the local interface and
    its provisioning domain, and what the transport stack measures about it now."""

    __slots__ = ("_info", "_interface", "_local", "_remote", "_transient")

    def __init__(self, transient: Measured, interface: Interface | None = None) -> None:
        self._transient = transient
        self._info = interface
        self._interface = interface.name if interface is not None else transient.interface
        self._local = _address(transient.local_address)
        self._remote = _address(transient.remote_address)

    @classmethod
    def of(cls, transient: Measured,
           interfaces: Sequence[Interface] | None = None) -> Path:
        """The Path of `transient`, with the Interface named by `transient.interface` looked
        up in `interfaces` (default: the live machine's, as the last decision saw them)."""
        name = transient.interface
        if interfaces is None and name is not None:
            from ..system.live import cached_interfaces

            interfaces = cached_interfaces()
        found = next((i for i in interfaces or () if i.name == name), None)
        return cls(transient, found)

    # ---- what the Path is (fixed) ---------------------------------------------------------

    @property
    def interface(self) -> str | None:
        """The local interface's name (None when the stack could not say which)."""
        return self._interface

    @property
    def local_address(self) -> tuple[str, int] | None:
        return self._local

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self._remote

    @property
    def route(self) -> tuple[str | None, str | None, tuple[str, int] | None]:
        """Where the path runs: the interface, the local IP and the remote address and port.
        The local port is left out: a new connection over the same interface between the
        same addresses is a new Path object (its own measurements) on the same route, so a
        carrier re-activated there reports no PathChange."""
        return (self._interface, self._local[0] if self._local else None, self._remote)

    @property
    def pvd(self) -> str | None:
        """The provisioning domain (RFC 7556) of the local interface, when it has one."""
        return self._info.pvd if self._info is not None else None

    @property
    def metered(self) -> bool | None:
        """Whether the local interface is metered; None when the interface is unknown."""
        return self._info.metered if self._info is not None else None

    @property
    def cost(self) -> int | None:
        return self._info.cost if self._info is not None else None

    @property
    def transient(self) -> Any:
        """The Transient this Path was read from (for debugging, like carrier.transients)."""
        return self._transient

    # ---- what the stack measures (read on every access) -----------------------------------

    def stats(self) -> PathStats:
        """One snapshot of everything measured, read now (the properties below each read
        their own snapshot; use this when several values must agree)."""
        return self._transient.path_stats()

    @property
    def mtu(self) -> int | None:
        """The path MTU the socket measured, else the local interface's MTU."""
        measured = self.stats().mtu
        if measured is not None:
            return measured
        return self._info.mtu if self._info is not None else None

    @property
    def rtt_ms(self) -> float | None:
        return self.stats().rtt_ms

    @property
    def rttvar_ms(self) -> float | None:
        return self.stats().rttvar_ms

    @property
    def loss(self) -> float | None:
        """Retransmitted / sent segments (TCP) or lost / sent packets (QUIC), 0.0 to 1.0."""
        return self.stats().loss

    @property
    def rate_bps(self) -> float | None:
        """Delivery rate in bits per second."""
        return self.stats().rate_bps

    # ---- comparing and showing ------------------------------------------------------------

    def _ident(self) -> tuple[str | None, tuple[str, int] | None, tuple[str, int] | None]:
        return (self._interface, self._local, self._remote)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return self._ident() == other._ident()

    def __hash__(self) -> int:
        return hash(self._ident())

    def to_dict(self) -> dict[str, Any]:
        """Plain values for explain output and traces: what the Path is and, measured now,
        what it is like (a value the stack cannot measure is None)."""
        stats = self.stats()
        mtu = stats.mtu if stats.mtu is not None else (
            self._info.mtu if self._info is not None else None)
        return {"interface": self._interface,
                "local_address": list(self._local) if self._local is not None else None,
                "remote_address": list(self._remote) if self._remote is not None else None,
                "pvd": self.pvd, "metered": self.metered, "cost": self.cost, "mtu": mtu,
                "rtt_ms": stats.rtt_ms, "rttvar_ms": stats.rttvar_ms, "loss": stats.loss,
                "rate_bps": stats.rate_bps}

    def __repr__(self) -> str:
        return (f"<Path {self._interface or '?'} {_show(self._local)} -> "
                f"{_show(self._remote)}>")


def _address(address: Any) -> tuple[str, int] | None:
    """(host, port) of a socket address; IPv6 addresses come with flow info and scope id,
    which name no other path."""
    if not address:
        return None
    return (str(address[0]), int(address[1]))


def _show(address: tuple[str, int] | None) -> str:
    if address is None:
        return "?"
    return hostport(address)


def paths_of(transient: Any, interfaces: Sequence[Interface] | None = None) -> list[Path]:
    """The Paths a Transient uses now: its own, or one per subflow of an MPTCP connection."""
    path = transient.path
    return [path] if path is not None else [Path.of(transient, interfaces)]
