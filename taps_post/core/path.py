"""PathStats: what a Transient measured about its path, as numbers the kernel or QUIC gave.

Rule 1: measured, never guessed: a field the stack cannot read is None, not an estimate.
Stream stacks read TCP_INFO (`taps_post.system.tcpinfo`), QUIC reads aioquic's recovery state
(through the QUIC compat module); the runtime's `Path` shows them, read afresh on access.
Rule 2: an MPTCP connection is several paths at once: each `Subflow` is the kernel's own view
of one subflow (getsockopt MPTCP_FULL_INFO / MPTCP_TCPINFO / MPTCP_SUBFLOW_ADDRS), read by
`taps_post.system.mptcp`; the runtime makes one `Path` per subflow (docs/multipath.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PathStats", "Subflow"]


@dataclass(frozen=True, slots=True)
class PathStats:
    rtt_ms: float | None = None
    """Smoothed round-trip time."""
    rttvar_ms: float | None = None
    """Round-trip time variation."""
    loss: float | None = None
    """Retransmitted / sent segments (TCP) or lost / sent packets (QUIC), 0.0 to 1.0."""
    rate_bps: float | None = None
    """Delivery rate in bits per second (TCP_INFO tcpi_delivery_rate; QUIC: cwnd / rtt)."""
    mtu: int | None = None
    """Path MTU as the socket knows it (IP_MTU), or the QUIC max datagram size."""
    sent: int | None = None
    """Segments or packets sent (the denominator of `loss`)."""


@dataclass(frozen=True, slots=True)
class Subflow:
    """One MPTCP subflow as the kernel reports it, read now."""

    local_address: tuple[str, int]
    remote_address: tuple[str, int]
    interface: str | None = None
    """The local interface carrying it (from the local address), None when unknown."""
    backup: bool | None = None
    """The subflow's backup flag (MPTCP_PM_ADDR_FLAG_BACKUP), None when the kernel cannot say."""
    stats: PathStats = PathStats()
    """RTT, loss, rate and MTU of this subflow (its tcp_info)."""
    bytes_sent: int | None = None
    """tcpi_bytes_sent of the subflow (payload bytes, retransmissions included)."""
    bytes_received: int | None = None
    """tcpi_bytes_received of the subflow."""
