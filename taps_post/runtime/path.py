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
Rule 4: an MPTCP connection is one Path per subflow (`paths_of`), each identified by the
subflow's own addresses and interface as the kernel reports them (`Transient.subflows()`),
and measured from that subflow alone, read afresh on each access (`SubflowView`): a subflow
the kernel no longer lists measures nothing (every value None), never another subflow's.
A connection that fell back to TCP, or whose subflows the kernel cannot list, is the
Transient's own single Path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..core.path import PathStats, Subflow
from ..decision.environment import Interface
from .endpoints import hostport

__all__ = ["Measured", "MeasuresSubflows", "Path", "SubflowView", "paths_of"]


class Measured(Protocol):
    """What a Path reads from its Transient (stacks.transient.Transient has all of it)."""

    interface: str | None
    local_address: tuple[str, int] | None
    remote_address: tuple[str, int] | None

    def path_stats(self) -> PathStats: ...


class MeasuresSubflows(Protocol):
    """A Transient that names its subflows' interfaces from given Interfaces and reads their
    figures without the backup-flag lookups (stacks.tcp.StreamTransient): a subflow Path's
    measured properties use `measure_subflows`, read on every access. Any other Transient
    is asked `subflows()` alone."""

    def subflows(self, interfaces: Sequence[Interface] = ()) -> tuple[Subflow, ...]: ...

    def measure_subflows(self, interfaces: Sequence[Interface] = ()) -> tuple[Subflow, ...]:
        ...


class SubflowView:
    """One subflow of an MPTCP Transient, as a `Measured` (Rule 4): its addresses and
    interface fixed when made, its statistics read from the kernel on every call."""

    __slots__ = ("_measure", "interface", "interfaces", "local_address", "remote_address",
                 "transient")

    def __init__(self, transient: Any, subflow: Subflow, interface: str | None,
                 interfaces: Sequence[Interface] = ()) -> None:
        self.transient = transient
        """The MPTCP connection's Transient (Path.transient names it)."""
        self.interface = interface
        self.interfaces = interfaces
        """The decision's interfaces: a measurement names subflows by them, not by asking
        the system again."""
        measure = getattr(transient, "measure_subflows", None)  # MeasuresSubflows, cheaply
        self._measure: Callable[[Sequence[Interface]], tuple[Subflow, ...]] | None = measure
        self.local_address: tuple[str, int] | None = subflow.local_address
        self.remote_address: tuple[str, int] | None = subflow.remote_address

    def subflow(self) -> Subflow | None:
        """This subflow as the kernel reports it now, backup flag included; None once the
        kernel lists it no more (closed, or the connection ended)."""
        return self._find(self.transient.subflows(self.interfaces)
                          if self._measure is not None else self.transient.subflows())

    def path_stats(self) -> PathStats:
        measure = self._measure
        flow = self._find(measure(self.interfaces) if measure is not None
                          else self.transient.subflows())
        return flow.stats if flow is not None else PathStats()

    def _find(self, flows: tuple[Subflow, ...]) -> Subflow | None:
        for flow in flows:
            if (_address(flow.local_address) == self.local_address
                    and _address(flow.remote_address) == self.remote_address):
                return flow
        return None

    def __repr__(self) -> str:
        return (f"<SubflowView {self.interface or '?'} {_show(self.local_address)} -> "
                f"{_show(self.remote_address)}>")


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
        """The Transient this Path was read from (for debugging, like carrier.transients);
        for an MPTCP subflow, the connection's Transient."""
        t = self._transient
        return t.transient if isinstance(t, SubflowView) else t

    @property
    def subflow(self) -> Subflow | None:
        """The MPTCP subflow this Path is, as the kernel reports it now (backup flag, bytes
        sent and received, its stats); None when the Path is not a subflow or the kernel
        lists it no more (Rule 4)."""
        t = self._transient
        return t.subflow() if isinstance(t, SubflowView) else None

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
        flow = self.subflow if isinstance(self._transient, SubflowView) else None
        stats = flow.stats if flow is not None else (
            PathStats() if isinstance(self._transient, SubflowView) else self.stats())
        mtu = stats.mtu if stats.mtu is not None else (
            self._info.mtu if self._info is not None else None)
        out: dict[str, Any] = {
            "interface": self._interface,
            "local_address": list(self._local) if self._local is not None else None,
            "remote_address": list(self._remote) if self._remote is not None else None,
            "pvd": self.pvd, "metered": self.metered, "cost": self.cost, "mtu": mtu,
            "rtt_ms": stats.rtt_ms, "rttvar_ms": stats.rttvar_ms, "loss": stats.loss,
            "rate_bps": stats.rate_bps}
        if isinstance(self._transient, SubflowView):  # one kernel read for all of it
            out["subflow"] = {"backup": flow.backup if flow is not None else None,
                              "bytes_sent": flow.bytes_sent if flow is not None else None,
                              "bytes_received": (flow.bytes_received if flow is not None
                                                 else None),
                              "listed": flow is not None}
        return out

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
    """The Paths a Transient uses now: one per subflow of an MPTCP connection, as the kernel
    lists them now (Rule 4), else its own. `interfaces` (default: the live machine's, as the
    last decision saw them) give each Path its Interface; a subflow whose interface the
    kernel did not name is matched by its local address."""
    flows = transient.subflows()
    if flows:
        if interfaces is None:
            from ..system.live import cached_interfaces

            interfaces = cached_interfaces()
        return [_subflow_path(transient, flow, interfaces) for flow in flows]
    path = transient.path
    return [path] if path is not None else [Path.of(transient, interfaces)]


def _subflow_path(transient: Any, flow: Subflow, interfaces: Sequence[Interface]) -> Path:
    ip = flow.local_address[0]
    found = (next((i for i in interfaces if i.name == flow.interface), None)
             if flow.interface is not None else None)
    if found is None:
        found = next((i for i in interfaces if any(a.address == ip for a in i.addresses)), None)
    name = flow.interface if flow.interface is not None else (
        found.name if found is not None else None)
    return Path(SubflowView(transient, flow, name, interfaces), found)
