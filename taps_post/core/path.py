"""PathStats: what a Transient measured about its path, as numbers the kernel or QUIC gave.

Rule 1: measured, never guessed: a field the stack cannot read is None, not an estimate.
Stream stacks read TCP_INFO (`taps_post.system.tcpinfo`), QUIC reads aioquic's recovery state
(through the QUIC compat module); the runtime's `Path` shows them, read afresh on access.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PathStats"]


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
