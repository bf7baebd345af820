"""TCP_INFO: what the Linux kernel measured about one TCP connection, as PathStats.

Rule 1: the layout is the kernel's `struct tcp_info` (include/uapi/linux/tcp.h); a field is
read only when the kernel returned enough bytes to hold it (older kernels return a shorter
struct), else it is None: measured, never guessed (core/path.py Rule 1).
Rule 2: units are converted once, here: the kernel gives times in microseconds and
`tcpi_delivery_rate` in bytes per second; PathStats holds milliseconds and bits per second.
Rule 3: a socket whose getsockopt fails (closed, not TCP, not Linux) gives None, never raises:
path statistics are read on every access of a Path property and must not break a carrier.
Rule 4: one conversion to PathStats (`stats_of`) and one reader of kernel struct layouts
(`compile_layout`, `unpack`) for every tcp_info there is: a TCP socket's own and each MPTCP
subflow's (system/mptcp.py reads those through its getsockopts and uses these), so the two
cannot drift apart.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from ..core.path import PathStats

__all__ = ["TCPI_OPT_SYN_DATA", "TcpInfo", "compile_layout", "ip_mtu", "parse", "path_stats",
           "read", "stats_of", "syn_data", "unpack"]

TCPI_OPT_SYN_DATA = 32
"""tcpi_options bit: a SYN carried data and it was acknowledged (client: the server took our
Fast Open data; server: the SYN we accepted carried data)."""

_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_SIZE = 232
"""Bytes asked for: up to tcpi_snd_wnd (Linux 5.4); the kernel returns what it has."""

# (name, offset, struct format) for the fields read, from include/uapi/linux/tcp.h.
_LAYOUT: tuple[tuple[str, int, str], ...] = (
    ("state", 0, "B"),
    ("options", 5, "B"),
    ("pmtu", 60, "I"),
    ("rtt_us", 68, "I"),
    ("rttvar_us", 72, "I"),
    ("total_retrans", 100, "I"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("segs_in", 140, "I"),
    ("data_segs_in", 152, "I"),
    ("data_segs_out", 156, "I"),
    ("delivery_rate", 160, "Q"),
    ("bytes_sent", 200, "Q"),
)

Field = tuple[str, int, int, struct.Struct]
"""(name, offset, end, compiled native-order unpacker) of one field of a kernel struct."""


def compile_layout(layout: tuple[tuple[str, int, str], ...],
                   needs: dict[str, int] | None = None) -> tuple[Field, ...]:
    """The Fields of a (name, offset, struct format) layout, built once per struct. `needs`
    gives a field more bytes it requires before it is believed (a field the kernel put where
    an older struct had padding is real only when the struct reaches past it)."""
    extra = needs or {}
    return tuple((name, offset, max(offset + struct.calcsize("=" + fmt), extra.get(name, 0)),
                  struct.Struct("=" + fmt)) for name, offset, fmt in layout)


def unpack(fields: tuple[Field, ...], raw: bytes) -> dict[str, int]:
    """The fields that `raw` (a getsockopt answer, possibly short) holds (Rule 1)."""
    size = len(raw)
    return {name: field.unpack_from(raw, offset)[0]
            for name, offset, end, field in fields if end <= size}


_FIELDS = compile_layout(_LAYOUT)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The fields of struct tcp_info taps_post uses (None: this kernel does not report it)."""

    state: int | None = None
    options: int | None = None
    pmtu: int | None = None
    rtt_us: int | None = None
    rttvar_us: int | None = None
    total_retrans: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    data_segs_in: int | None = None
    data_segs_out: int | None = None
    delivery_rate: int | None = None
    """Bytes per second (the kernel's unit)."""
    bytes_sent: int | None = None
    """tcpi_bytes_sent (Linux 4.19+): payload bytes sent, retransmissions included."""


def parse(raw: bytes) -> TcpInfo:
    """The fields that `raw` (a getsockopt answer, possibly short) holds (Rule 1)."""
    return TcpInfo(**unpack(_FIELDS, raw))


def read(sock: Any) -> TcpInfo | None:
    """TCP_INFO of `sock` now, or None (Rule 3)."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _SIZE)
    except (OSError, ValueError, AttributeError):
        return None
    return parse(raw)


def syn_data(info: TcpInfo | None) -> bool:
    return info is not None and bool((info.options or 0) & TCPI_OPT_SYN_DATA)


_IP_MTU = getattr(socket, "IP_MTU", 14)
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)


def ip_mtu(sock: Any) -> int | None:
    """The path MTU the kernel holds for a connected socket (IP_MTU / IPV6_MTU), or None."""
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET6:
            return int(sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU))
        return int(sock.getsockopt(socket.IPPROTO_IP, _IP_MTU))
    except (OSError, ValueError, AttributeError):
        return None


def path_stats(sock: Any) -> PathStats:
    """PathStats of a TCP socket: TCP_INFO read fresh plus its IP MTU (Rule 2)."""
    info = read(sock)
    mtu = ip_mtu(sock)
    if info is None:
        return PathStats(mtu=mtu)
    return stats_of(info, mtu)


def stats_of(info: TcpInfo, mtu: int | None = None) -> PathStats:
    """PathStats of one tcp_info (Rules 2, 4): `mtu` when known (IP_MTU), else tcpi_pmtu.

    `loss` is tcpi_total_retrans / tcpi_segs_out (retransmitted over sent segments),
    `rate_bps` is tcpi_delivery_rate * 8 (0 before anything was delivered: None)."""
    loss: float | None = None
    if info.segs_out and info.total_retrans is not None:
        loss = min(1.0, info.total_retrans / info.segs_out)
    elif info.segs_out == 0:
        loss = 0.0
    rate = info.delivery_rate
    return PathStats(
        rtt_ms=None if info.rtt_us is None else info.rtt_us / 1000.0,
        rttvar_ms=None if info.rttvar_us is None else info.rttvar_us / 1000.0,
        loss=loss,
        rate_bps=float(rate * 8) if rate else None,
        mtu=mtu if mtu is not None else info.pmtu,
        sent=info.segs_out,
    )
