"""The kernel's own view of an MPTCP connection: getsockopts, path manager, endpoints.

Rule 1: measured, never guessed (core/path.py Rule 1): every fact comes from the kernel
(TCP_IS_MPTCP, SOL_MPTCP getsockopts, sock_diag, /proc/sys/net/mptcp, the mptcp_pm genl
family); what this kernel does not report is None, and a read that fails gives None or ()
and never raises: the stacks call these on every Path access.
Rule 2: MPTCP_FULL_INFO first (Linux 6.5+): one call returns the connection's mptcp_info and,
per subflow, its addresses and tcp_info consistently (the kernel holds the socket lock), so a
subflow cannot be paired with another one's counters. Older kernels: MPTCP_TCPINFO plus
MPTCP_SUBFLOW_ADDRS, two calls, paired by position (documented as possibly inconsistent
while the set changes). These options read a request header the caller fills in (and
FULL_INFO takes two user pointers), which Python's socket.getsockopt cannot pass, so the
call goes through libc's getsockopt via ctypes; the bytes are parsed with struct.
Rule 3: layouts are the kernel's (include/uapi/linux/mptcp.h, tcp.h); a field is read only
when the kernel returned enough bytes to hold it, so an older kernel's shorter struct gives
None for the newer fields.
Rule 4: MPTCP_FULL_INFO has no per-subflow flags; the backup flag is read from the subflow's
TCP socket through sock_diag (INET_DIAG_ULP_INFO -> MPTCP_SUBFLOW_ATTR_FLAGS, what `ss -tiM`
prints as "b"/"B"); measured on Linux 6.18, an unprivileged process gets it too. When the
lookup fails (no sock_diag, the subflow just closed) the flag is None.
Rule 5: a subflow's interface is the device its TCP socket is bound to (sock_diag idiag_if,
set when a path manager opened it on an endpoint's device), else the interface holding its
local address in the caller's `interfaces` (decision Interface values), else in psutil's
view of this namespace; None when none has it.
Rule 6: no asyncio, and pyroute2 is imported lazily (sock_diag, endpoints, the mptcp_pm
family): stacks/tcp.py imports this module, and importing any pyroute2 module imports the
whole package (0.2-0.8 s measured here), which a TCP connect must not pay.
Rule 7: netlink goes through `NetlinkChannel`, a plain blocking socket with a timeout, with
pyroute2's message classes and Marshal for the bytes (nothing hand-packed), not through
pyroute2's sockets: pyroute2 0.9's synchronous sockets call `run_until_complete` and raise
"This event loop is already running" when used from a coroutine or loop callback
(measured), which is where the runtime reads subflows and drives the path manager. Calls
from an event loop's thread use `LOOP_TIMEOUT` (0.25 s; sock_diag always does); only the
kernel's answers are read (sender port id 0), so another process cannot forge one.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.path import Subflow
from ..decision.environment import Interface
from . import tcpinfo

__all__ = [
    "ADDR_FLAG_BACKUP",
    "ADDR_FLAG_FULLMESH",
    "ADDR_FLAG_IMPLICIT",
    "ADDR_FLAG_SIGNAL",
    "ADDR_FLAG_SUBFLOW",
    "IPPROTO_MPTCP",
    "LOOP_TIMEOUT",
    "MPTCP_FULL_INFO",
    "MPTCP_INFO",
    "MPTCP_SUBFLOW_ADDRS",
    "MPTCP_TCPINFO",
    "SOL_MPTCP",
    "TCP_IS_MPTCP",
    "Endpoint",
    "LocalAddress",
    "MptcpInfo",
    "NetlinkChannel",
    "is_mptcp",
    "kernel_endpoints",
    "open_pm",
    "parse_info",
    "path_manager",
    "pm_addresses",
    "pm_message_class",
    "read_info",
    "read_subflows",
    "subflow_addresses",
    "sysctl",
]

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_TCPINFO = 2
MPTCP_SUBFLOW_ADDRS = 3
MPTCP_FULL_INFO = 4
TCP_IS_MPTCP = 43
"""getsockopt(SOL_TCP) on an MPTCP socket: 1 while MPTCP is in use, 0 after a fallback."""

MPTCP_INFO_FLAG_FALLBACK = 1 << 0
SUBFLOW_FLAG_BKUP_REM = 1 << 4
"""The peer asked for this subflow to be a backup (MP_JOIN B bit or MP_PRIO)."""
SUBFLOW_FLAG_BKUP_LOC = 1 << 5
"""We asked for this subflow to be a backup."""

_PROC = "/proc/sys/net/mptcp"
_INFO_SIZE = 96
"""sizeof(struct mptcp_info) on Linux 6.10+; the kernel copies what it has, up to this."""
_TCPI_SIZE = 256
"""Bytes of tcp_info asked per subflow; the kernel shrinks it to its own size."""
_SFINFO_SIZE = 264
"""sizeof(struct mptcp_subflow_info): u32 id, pad, mptcp_subflow_addrs (2 x 128, 8-aligned)."""
_ADDRS_SIZE = 256
_FULL_HEADER = struct.Struct("=6I2Q")
"""struct mptcp_full_info up to mptcp_info (40 bytes)."""
_SUBFLOW_DATA = struct.Struct("=4I")
"""struct mptcp_subflow_data (16 bytes, the header of MPTCP_TCPINFO / SUBFLOW_ADDRS)."""
_FIRST_GUESS = 8
"""Subflows made room for at first; the kernel says how many there are, then we retry."""
NETLINK_TIMEOUT = 2.0
"""Seconds a netlink request may take before it fails with ETIMEDOUT (never seen: they are
answered in microseconds; this only guards against a kernel that never answers)."""
LOOP_TIMEOUT = 0.25
"""The timeout for netlink calls made from an event loop's thread (the runtime's path
controller, sock_diag reads on a Path access): the kernel answers a request before send()
returns, so a longer wait only ever stalls every carrier of the loop."""

# (name, offset, struct format) in struct mptcp_info (natural alignment).
_INFO_LAYOUT: tuple[tuple[str, int, str], ...] = (
    ("subflows", 0, "B"),
    ("add_addr_signal", 1, "B"),
    ("add_addr_accepted", 2, "B"),
    ("subflows_max", 3, "B"),
    ("add_addr_signal_max", 4, "B"),
    ("add_addr_accepted_max", 5, "B"),
    ("flags", 8, "I"),
    ("token", 12, "I"),
    ("write_seq", 16, "Q"),
    ("snd_una", 24, "Q"),
    ("rcv_nxt", 32, "Q"),
    ("local_addr_used", 40, "B"),
    ("local_addr_max", 41, "B"),
    ("csum_enabled", 42, "B"),
    ("retransmits", 44, "I"),
    ("bytes_retrans", 48, "Q"),
    ("bytes_sent", 56, "Q"),
    ("bytes_received", 64, "Q"),
    ("bytes_acked", 72, "Q"),
    ("subflows_total", 80, "B"),
)
_INFO_FIELDS = tcpinfo.compile_layout(_INFO_LAYOUT, needs={"retransmits": 56})
"""mptcpi_retransmits (6.5) sits where 5.16-6.4 had the struct's tail padding (sizeof 48), so
it is real only with bytes_retrans after it."""


@dataclass(frozen=True, slots=True)
class MptcpInfo:
    """struct mptcp_info of one connection, read now (None: this kernel does not report it)."""

    token: int | None
    """The local MPTCP token: names the connection to the userspace path manager."""
    subflows: int
    """Subflows now, the initial one included (mptcpi_subflows_total, or extra + 1)."""
    subflows_max: int | None = None
    add_addr_signal: int | None = None
    add_addr_accepted: int | None = None
    local_addr_used: int | None = None
    local_addr_max: int | None = None
    flags: int = 0
    csum_enabled: bool | None = None
    retransmits: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    bytes_acked: int | None = None
    bytes_retrans: int | None = None
    write_seq: int | None = None
    snd_una: int | None = None
    rcv_nxt: int | None = None

    @property
    def fallback(self) -> bool:
        return bool(self.flags & MPTCP_INFO_FLAG_FALLBACK)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One in-kernel path manager endpoint (`ip mptcp endpoint show`)."""

    address: str
    id: int
    interface: str | None
    flags: tuple[str, ...]
    """Of "signal", "subflow", "backup", "fullmesh", "implicit"."""
    port: int | None = None


ADDR_FLAG_SIGNAL = 1 << 0
ADDR_FLAG_SUBFLOW = 1 << 1
ADDR_FLAG_BACKUP = 1 << 2
ADDR_FLAG_FULLMESH = 1 << 3
ADDR_FLAG_IMPLICIT = 1 << 4
"""MPTCP_PM_ADDR_FLAG_* (include/uapi/linux/mptcp.h): an endpoint's flags, and what the
userspace path manager is given (system/mptcp_pm.py imports them from here)."""
_FLAG_NAMES = ((ADDR_FLAG_SIGNAL, "signal"), (ADDR_FLAG_SUBFLOW, "subflow"),
               (ADDR_FLAG_BACKUP, "backup"), (ADDR_FLAG_FULLMESH, "fullmesh"),
               (ADDR_FLAG_IMPLICIT, "implicit"))


def is_mptcp(sock: Any) -> bool | None:
    """Is MPTCP in use on this connection? False after a fallback to TCP (or a plain TCP
    socket), None when the kernel cannot say (before Linux 5.16, or not a socket)."""
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP))
    except (OSError, ValueError, AttributeError):
        return None


def parse_info(raw: bytes) -> MptcpInfo:
    """struct mptcp_info from `raw` (possibly short: Rule 3)."""
    values = tcpinfo.unpack(_INFO_FIELDS, raw)
    total = values.pop("subflows_total", None)
    extra = values.pop("subflows", 0)
    for unused in ("add_addr_signal_max", "add_addr_accepted_max"):
        values.pop(unused, None)
    csum = values.pop("csum_enabled", None)
    token = values.pop("token", None)
    flags = values.pop("flags", 0)
    return MptcpInfo(token=token, subflows=total if total else extra + 1, flags=flags,
                     csum_enabled=None if csum is None else bool(csum), **values)


def read_info(sock: Any) -> MptcpInfo | None:
    """MPTCP_INFO of `sock`, or None: not MPTCP, fell back to TCP, or the kernel cannot say."""
    if sock is None or is_mptcp(sock) is False:
        return None
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, _INFO_SIZE)
    except (OSError, ValueError, AttributeError):
        return None
    if not raw:
        return None
    info = parse_info(raw)
    return None if info.fallback else info


# -- libc getsockopt (Rule 2) ---------------------------------------------------------------

_libc: Any = None


def _getsockopt(fd: int, level: int, name: int, buf: Any) -> int:
    """libc getsockopt with a caller-filled buffer; the length the kernel wrote, or OSError."""
    import ctypes
    import ctypes.util  # (ctypes.util imports tempfile: only for MPTCP sockets)

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                     ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        _libc.getsockopt.restype = ctypes.c_int
    length = ctypes.c_uint32(ctypes.sizeof(buf))
    if _libc.getsockopt(fd, level, name, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockopt({level}, {name}): {os.strerror(err)}")
    return int(length.value)


_SOCKADDR_SIZE = 128
"""Each address of struct mptcp_subflow_addrs: a union up to __kernel_sockaddr_storage."""


def _sockaddr(raw: bytes, offset: int) -> tuple[str, int] | None:
    """The sockaddr_in / sockaddr_in6 at `offset`, None when `raw` is too short for it (a
    kernel that returned fewer bytes than asked: Rules 1, 3) or of another family."""
    if offset < 0 or len(raw) < offset + 2:
        return None
    family = struct.unpack_from("=H", raw, offset)[0]
    if family == socket.AF_INET and len(raw) >= offset + 8:
        port, = struct.unpack_from(">H", raw, offset + 2)
        return socket.inet_ntop(socket.AF_INET, raw[offset + 4:offset + 8]), port
    if family == socket.AF_INET6 and len(raw) >= offset + 24:
        port, = struct.unpack_from(">H", raw, offset + 2)
        ip = ipaddress.IPv6Address(raw[offset + 8:offset + 24])
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped), port
        return str(ip), port
    return None


def subflow_addresses(raw: bytes, offset: int = 0
                      ) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(local, remote) of the struct mptcp_subflow_addrs at `offset` of `raw` (an element of
    MPTCP_SUBFLOW_ADDRS, or inside MPTCP_FULL_INFO's mptcp_subflow_info); None when `raw`
    is too short to hold both addresses or one is of neither IP family (never raises)."""
    if offset < 0 or len(raw) < offset + 2 * _SOCKADDR_SIZE:
        return None
    local = _sockaddr(raw, offset)
    remote = _sockaddr(raw, offset + _SOCKADDR_SIZE)
    if local is None or remote is None:
        return None
    return local, remote


_Raw = tuple[tuple[str, int], tuple[str, int], bytes]
"""(local, remote, tcp_info bytes) of one subflow."""


def _full_info(fd: int) -> list[_Raw]:
    """MPTCP_FULL_INFO: every subflow's addresses and tcp_info in one consistent call."""
    import ctypes

    room = _FIRST_GUESS
    for _ in range(3):
        sfinfo = ctypes.create_string_buffer(room * _SFINFO_SIZE)
        tcpi = ctypes.create_string_buffer(room * _TCPI_SIZE)
        buf = ctypes.create_string_buffer(_FULL_HEADER.size + _INFO_SIZE)
        _FULL_HEADER.pack_into(buf, 0, 0, _TCPI_SIZE, 0, _SFINFO_SIZE, 0, room,
                               ctypes.addressof(sfinfo), ctypes.addressof(tcpi))
        _getsockopt(fd, SOL_MPTCP, MPTCP_FULL_INFO, buf)
        (_, tcpi_user, _, sf_user, count, _, _, _) = _FULL_HEADER.unpack_from(buf.raw, 0)
        if count > room:
            room = count
            continue
        out: list[_Raw] = []
        sf_raw, tcpi_raw = sfinfo.raw, tcpi.raw
        for i in range(count):
            # mptcp_subflow_info: u32 id, pad, then the addresses (8-aligned)
            element = sf_raw[i * sf_user:(i + 1) * sf_user]
            pair = subflow_addresses(element, 8)
            if pair is None:
                continue
            out.append((*pair, tcpi_raw[i * tcpi_user:(i + 1) * tcpi_user]))
        return out
    return []


def _subflow_array(fd: int, name: int, size: int) -> list[bytes]:
    """MPTCP_TCPINFO / MPTCP_SUBFLOW_ADDRS: one element per subflow, `size` bytes asked."""
    import ctypes

    room = _FIRST_GUESS
    for _ in range(3):
        buf = ctypes.create_string_buffer(_SUBFLOW_DATA.size + room * size)
        _SUBFLOW_DATA.pack_into(buf, 0, _SUBFLOW_DATA.size, 0, 0, size)
        _getsockopt(fd, SOL_MPTCP, name, buf)
        _, count, _, user = _SUBFLOW_DATA.unpack_from(buf.raw, 0)
        if count > room:
            room = count
            continue
        raw = buf.raw
        start = _SUBFLOW_DATA.size
        return [raw[start + i * user:start + (i + 1) * user] for i in range(count)]
    return []


def _legacy_info(fd: int) -> list[_Raw]:
    infos = _subflow_array(fd, MPTCP_TCPINFO, _TCPI_SIZE)
    addrs = _subflow_array(fd, MPTCP_SUBFLOW_ADDRS, _ADDRS_SIZE)
    out: list[_Raw] = []
    for info, addr in zip(infos, addrs, strict=False):
        pair = subflow_addresses(addr)
        if pair is not None:
            out.append((*pair, info))
    return out


def _address_owners(interfaces: Iterable[Interface]) -> dict[str, str]:
    owners: dict[str, str] = {}
    for iface in interfaces:
        for addr in iface.addresses:
            owners.setdefault(addr.address, iface.name)
    return owners


def _psutil_owners() -> dict[str, str]:
    try:
        import psutil
        found = psutil.net_if_addrs()
    except Exception:  # Rule 1: a missing fact, not an error
        return {}
    owners: dict[str, str] = {}
    for name, addrs in found.items():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                owners.setdefault(addr.address.split("%", 1)[0], name)
    return owners


def read_subflows(sock: Any, interfaces: Sequence[Interface] = (), *, backup: bool = True,
                  legacy: bool = False) -> tuple[Subflow, ...]:
    """Every subflow of `sock` as the kernel reports it now; () when not MPTCP (Rules 2-5).

    `backup=False` skips the sock_diag lookups (Rule 4): each Subflow's backup is None and
    its interface comes from its local address only; measured ~15 us per call instead of
    ~300 us per subflow, for readers that only want addresses, RTT and bytes.
    `legacy` reads with MPTCP_TCPINFO + MPTCP_SUBFLOW_ADDRS even where MPTCP_FULL_INFO
    exists (what a pre-6.5 kernel gets; tests compare the two)."""
    if sock is None or is_mptcp(sock) is False:
        return ()
    try:
        fd = sock.fileno()
    except (OSError, ValueError, AttributeError):
        return ()
    if fd < 0:
        return ()
    try:
        if legacy:
            raise OSError(errno.EOPNOTSUPP, "legacy read asked for")
        raws = _full_info(fd)
    except (OSError, struct.error, ValueError):
        try:
            raws = _legacy_info(fd)
        except (OSError, struct.error, ValueError):  # Rule 1: never raises
            return ()
    if not raws:
        return ()
    owners = _address_owners(interfaces)
    fallback_owners: dict[str, str] | None = None
    guesses: list[str | None] = []
    for local, _, _ in raws:
        guess = owners.get(local[0])
        if guess is None:
            if fallback_owners is None:
                fallback_owners = _psutil_owners()
            guess = fallback_owners.get(local[0])
        guesses.append(guess)
    diag = _diag_subflows([(local, remote, guess)
                           for (local, remote, _), guess in zip(raws, guesses, strict=True)]
                          ) if backup else {}
    out: list[Subflow] = []
    for (local, remote, raw), guess in zip(raws, guesses, strict=True):
        info = tcpinfo.parse(raw)
        flags, ifindex = diag.get((local, remote), (None, 0))
        name: str | None = None
        if ifindex:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                name = None
        if name is None:
            name = guess
        is_backup = (None if flags is None
                     else bool(flags & (SUBFLOW_FLAG_BKUP_LOC | SUBFLOW_FLAG_BKUP_REM)))
        out.append(Subflow(local_address=local, remote_address=remote, interface=name,
                           backup=is_backup, stats=tcpinfo.stats_of(info),
                           bytes_sent=info.bytes_sent,
                           bytes_received=info.bytes_received))
    return tuple(out)


# -- sock_diag: per-subflow flags and bound device (Rules 4, 5) ---------------------------

_diag_classes: tuple[Any, Any] | None = None


def _diag_types() -> tuple[Any, Any]:
    """(request class, marshal class) for sock_diag, built on first use (pyroute2 is lazy)."""
    global _diag_classes
    if _diag_classes is None:
        from pyroute2.netlink import nla
        from pyroute2.netlink.diag import inet_diag_msg, inet_diag_req
        from pyroute2.netlink.marshal import Marshal

        class subflow_diag_msg(inet_diag_msg):  # type: ignore[misc]
            # ULP info decoded; tcp_info (sent because the kernel adds ULP info only with
            # INET_DIAG_INFO) left undecoded: the getsockopt gave it already, and decoding
            # it costs more than the rest of the message.
            nla_map = tuple((n, {"INET_DIAG_ULP_INFO": "ulp_info", "INET_DIAG_INFO": "none"}
                             .get(n, kind)) for n, kind in inet_diag_msg.nla_map)

            class ulp_info(nla):  # type: ignore[misc]  # INET_ULP_INFO_*
                nla_map = (
                    ("INET_ULP_INFO_UNSPEC", "none"),
                    ("INET_ULP_INFO_NAME", "asciiz"),
                    ("INET_ULP_INFO_TLS", "hex"),
                    ("INET_ULP_INFO_MPTCP", "mptcp_subflow"),
                )

                class mptcp_subflow(nla):  # type: ignore[misc]  # MPTCP_SUBFLOW_ATTR_*
                    nla_map = (
                        ("MPTCP_SUBFLOW_ATTR_UNSPEC", "none"),
                        ("MPTCP_SUBFLOW_ATTR_TOKEN_REM", "uint32"),
                        ("MPTCP_SUBFLOW_ATTR_TOKEN_LOC", "uint32"),
                        ("MPTCP_SUBFLOW_ATTR_RELWRITE_SEQ", "uint32"),
                        ("MPTCP_SUBFLOW_ATTR_MAP_SEQ", "uint64"),
                        ("MPTCP_SUBFLOW_ATTR_MAP_SFSEQ", "uint32"),
                        ("MPTCP_SUBFLOW_ATTR_SSN_OFFSET", "uint32"),
                        ("MPTCP_SUBFLOW_ATTR_MAP_DATALEN", "uint16"),
                        ("MPTCP_SUBFLOW_ATTR_FLAGS", "uint32"),
                        ("MPTCP_SUBFLOW_ATTR_ID_REM", "uint8"),
                        ("MPTCP_SUBFLOW_ATTR_ID_LOC", "uint8"),
                        ("MPTCP_SUBFLOW_ATTR_PAD", "hex"),
                    )

        class DiagMarshal(Marshal):  # type: ignore[misc]
            msg_map: ClassVar[dict[int, Any]] = {_SOCK_DIAG_BY_FAMILY: subflow_diag_msg}

            def parse_one_message(self, key: int, flags: int, seq: int, data: bytes,
                                  offset: int, length: int) -> Any:
                # An error echoes our request, which is not an inet_diag_msg: decode it
                # with a marshal that knows no message classes.
                if key == NLMSG_ERROR:
                    return bare.parse_one_message(key, flags, seq, data, offset, length)
                return super().parse_one_message(key, flags, seq, data, offset, length)

        bare = Marshal()
        _diag_classes = (inet_diag_req, DiagMarshal)
    return _diag_classes


_SOCK_DIAG_BY_FAMILY = 20
_INET_DIAG_INFO_EXT = 1 << (2 - 1)
"""idiag_ext bit of INET_DIAG_INFO: the kernel adds INET_DIAG_ULP_INFO only with it."""
_NOCOOKIE = 0xFFFFFFFFFFFFFFFF


def _words(ip: str) -> tuple[int, int, int, int]:
    packed = ipaddress.ip_address(ip).packed
    if len(packed) == 4:
        return (int.from_bytes(packed, "big"), 0, 0, 0)
    a, b, c, d = struct.unpack(">4I", packed)
    return (a, b, c, d)


def _diag_subflows(subflows: Sequence[tuple[tuple[str, int], tuple[str, int], str | None]]
                   ) -> dict[tuple[tuple[str, int], tuple[str, int]], tuple[int | None, int]]:
    """(local, remote) -> (MPTCP subflow flags or None, bound ifindex) from sock_diag, for
    (local, remote, name of the interface holding the local address) triples."""
    try:
        request_class, marshal_class = _diag_types()
        channel = NetlinkChannel(NETLINK_SOCK_DIAG, marshal_class(), timeout=LOOP_TIMEOUT)
    except (ImportError, OSError):
        return {}
    out: dict[tuple[tuple[str, int], tuple[str, int]], tuple[int | None, int]] = {}
    try:
        _diag_fill(channel, request_class, subflows, out)
    except Exception:  # Rule 1: a decode surprise costs the flags, never the read
        pass
    finally:
        channel.close()
    return out


def _diag_fill(channel: Any, request_class: Any,
               subflows: Sequence[tuple[tuple[str, int], tuple[str, int], str | None]],
               out: dict[tuple[tuple[str, int], tuple[str, int]], tuple[int | None, int]]
               ) -> None:
    for local, remote, owner in subflows:
        answer = _diag_one(channel, request_class, local, remote, owner)
        if answer is None:
            continue
        ifindex = int(answer["idiag_if"] or 0)
        flags: int | None = None
        ulp = answer.get_attr("INET_DIAG_ULP_INFO")
        if ulp is not None:
            sub = ulp.get_attr("INET_ULP_INFO_MPTCP")
            if sub is not None:
                value = sub.get_attr("MPTCP_SUBFLOW_ATTR_FLAGS")
                flags = None if value is None else int(value)
        out[(local, remote)] = (flags, ifindex)


def _diag_one(channel: Any, request_class: Any, local: tuple[str, int],
              remote: tuple[str, int], owner: str | None) -> Any:
    """The subflow's inet_diag_msg. A socket bound to a device is only found when the
    lookup names that device, and an unbound one is found whatever device is named, so the
    lookup names `owner`'s ifindex, then (a subflow bound elsewhere) none."""
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    candidates = [0]
    if owner is not None:
        with contextlib.suppress(OSError):
            candidates.insert(0, socket.if_nametoindex(owner))
    for ifindex in candidates:
        req = request_class()
        req["sdiag_family"] = family
        req["sdiag_protocol"] = socket.IPPROTO_TCP
        req["idiag_ext"] = _INET_DIAG_INFO_EXT
        req["idiag_states"] = 0xFFF
        req["idiag_sport"] = local[1]
        req["idiag_dport"] = remote[1]
        req["idiag_src"] = _words(local[0])
        req["idiag_dst"] = _words(remote[0])
        req["idiag_if"] = ifindex
        req["idiag_cookie"] = _NOCOOKIE
        try:
            answers = channel.request(req, _SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, "sock_diag")
        except OSError:
            continue
        if answers:
            return answers[0]
    return None


# -- path manager and endpoints ------------------------------------------------------------

def sysctl(name: str) -> str | None:
    """net.mptcp.NAME of the calling process's network namespace, as text; None when the
    kernel has no such setting (no MPTCP built in, or an older kernel)."""
    try:
        with open(f"{_PROC}/{name}") as fh:
            return fh.read().strip()
    except OSError:
        return None


def path_manager() -> str:
    """"disabled" (net.mptcp.enabled 0 or absent), "userspace" (pm_type=1 or
    path_manager=userspace) or "kernel", read in the calling process's network namespace."""
    if sysctl("enabled") in (None, "0"):
        return "disabled"
    named = sysctl("path_manager")
    if named is not None:
        return "userspace" if named == "userspace" else "kernel"
    return "userspace" if sysctl("pm_type") == "1" else "kernel"


def kernel_endpoints(timeout: float = NETLINK_TIMEOUT) -> tuple[Endpoint, ...]:
    """The in-kernel PM's endpoints (`ip mptcp endpoint show`); () on any failure. From an
    event loop pass `timeout=LOOP_TIMEOUT`."""
    try:
        channel, family = open_pm(timeout)
    except (ImportError, OSError):
        return ()
    try:
        entries = pm_addresses(channel, family)
    except OSError:
        return ()
    finally:
        channel.close()
    out: list[Endpoint] = []
    for entry in entries:
        if entry.address is None:
            continue
        name: str | None = None
        if entry.ifindex:
            try:
                name = socket.if_indextoname(entry.ifindex)
            except OSError:
                name = None
        flags = tuple(label for bit, label in _FLAG_NAMES if entry.flags & bit)
        out.append(Endpoint(address=entry.address, id=entry.id, interface=name, flags=flags,
                            port=entry.port))
    return tuple(out)


# -- netlink: a blocking channel and the mptcp_pm family (Rule 7) -------------------------

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NETLINK_GENERIC = 16
NETLINK_SOCK_DIAG = 4
MPTCP_PM_NAME = "mptcp_pm"
MPTCP_PM_VER = 1
PM_CMD_GET_ADDR = 3
_SOL_NETLINK = 270
_NETLINK_EXT_ACK = 11
_NETLINK_GET_STRICT_CHK = 12
_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3


class NetlinkChannel:
    """One blocking netlink socket with a timeout; pyroute2 message classes in and out.

    Only the kernel's answers are read: a datagram whose sender port id is not 0 (another
    process unicasting to this socket, which CAP_NET_ADMIN in a user namespace allows) is
    dropped, so no one can forge a path manager's reply or a sock_diag answer."""

    def __init__(self, protocol: int, marshal: Any, *,
                 timeout: float = NETLINK_TIMEOUT) -> None:
        self.marshal = marshal
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  protocol)
        try:
            self.sock.settimeout(timeout)
            for opt in (_NETLINK_EXT_ACK, _NETLINK_GET_STRICT_CHK):
                with contextlib.suppress(OSError):  # older kernel: no error text
                    self.sock.setsockopt(_SOL_NETLINK, opt, 1)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise

    def request(self, msg: Any, msg_type: int, flags: int, what: str) -> list[Any]:
        """Send `msg`, collect the answers to it (a dump up to NLMSG_DONE, a request up to
        its ACK, else its one reply); a kernel error raises OSError(errno, "what: text")."""
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        self.sock.send(msg.data)
        out: list[Any] = []
        while True:
            try:
                data, sender = self.sock.recvfrom(1 << 16)
            except TimeoutError:
                raise OSError(errno.ETIMEDOUT, f"{what}: no answer from the kernel") from None
            if sender[0] != 0:
                continue  # not from the kernel (class docstring)
            for reply in self.marshal.parse(data):
                header = reply["header"]
                if header.get("sequence_number") != seq:
                    continue
                error = header.get("error")
                if error is not None:
                    code = int(getattr(error, "code", 0) or errno.EIO)
                    detail = error.args[1] if len(error.args) > 1 and error.args[1] else None
                    message = f"{what}: {os.strerror(code)}"
                    raise OSError(code, f"{message} ({detail})"
                                  if detail and detail != os.strerror(code) else message)
                if header.get("type") in (NLMSG_DONE, NLMSG_ERROR):
                    return out
                out.append(reply)
                if not flags & (NLM_F_ACK | NLM_F_DUMP):
                    return out

    def close(self) -> None:
        self.sock.close()


_pm_classes: tuple[Any, Any] | None = None


def pm_message_class() -> Any:
    """pyroute2's `mptcp_msg` extended with the attributes the userspace path manager needs
    (TOKEN, LOC_ID, ADDR_REMOTE; include/uapi/linux/mptcp_pm.h), built on first use."""
    return _pm_types()[0]


def _pm_types() -> tuple[Any, Any]:
    global _pm_classes
    if _pm_classes is None:
        from pyroute2.netlink import ctrlmsg
        from pyroute2.netlink.generic.mptcp import mptcp_msg
        from pyroute2.netlink.marshal import Marshal

        class PmMsg(mptcp_msg):  # type: ignore[misc]  # pyroute2 is untyped
            nla_map = (
                ("MPTCP_PM_ATTR_UNSPEC", "none"),
                ("MPTCP_PM_ATTR_ADDR", "pm_addr"),
                ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", "uint32"),
                ("MPTCP_PM_ATTR_SUBFLOWS", "uint32"),
                ("MPTCP_PM_ATTR_TOKEN", "uint32"),
                ("MPTCP_PM_ATTR_LOC_ID", "uint8"),
                ("MPTCP_PM_ATTR_ADDR_REMOTE", "pm_addr"),
            )

            class pm_addr(mptcp_msg.pm_addr):  # type: ignore[misc]
                # IF_IDX is an s32 (pyroute2 0.9.7 maps it to hex, which cannot encode).
                nla_map = (
                    ("MPTCP_PM_ADDR_ATTR_UNSPEC", "none"),
                    ("MPTCP_PM_ADDR_ATTR_FAMILY", "uint16"),
                    ("MPTCP_PM_ADDR_ATTR_ID", "uint8"),
                    ("MPTCP_PM_ADDR_ATTR_ADDR4", "ipaddr"),
                    ("MPTCP_PM_ADDR_ATTR_ADDR6", "ipaddr"),
                    ("MPTCP_PM_ADDR_ATTR_PORT", "uint16"),
                    ("MPTCP_PM_ADDR_ATTR_FLAGS", "uint32"),
                    ("MPTCP_PM_ADDR_ATTR_IF_IDX", "int32"),
                )

        class GenlMarshal(Marshal):  # type: ignore[misc]
            msg_map: ClassVar[dict[int, Any]] = {_GENL_ID_CTRL: ctrlmsg}

        _pm_classes = (PmMsg, GenlMarshal)
    return _pm_classes


def open_pm(timeout: float = NETLINK_TIMEOUT) -> tuple[NetlinkChannel, int]:
    """A channel to the "mptcp_pm" generic netlink family and its id; raises OSError
    (ENOENT: this kernel has no MPTCP path manager family)."""
    from pyroute2.netlink import ctrlmsg

    pm_msg, marshal = _pm_types()
    channel = NetlinkChannel(NETLINK_GENERIC, marshal(), timeout=timeout)
    try:
        msg = ctrlmsg()
        msg["cmd"] = _CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"].append(["CTRL_ATTR_FAMILY_NAME", MPTCP_PM_NAME])
        (answer,) = channel.request(msg, _GENL_ID_CTRL, NLM_F_REQUEST,
                                    f"genl family {MPTCP_PM_NAME}")
        family = int(answer.get_attr("CTRL_ATTR_FAMILY_ID"))
    except (OSError, ValueError):
        channel.close()
        raise
    channel.marshal.msg_map[family] = pm_msg
    return channel, family


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """One address entry of a path manager: an endpoint (in-kernel PM) or a local address a
    userspace-PM connection uses (its id is what MP_JOIN and REMOVE_ADDR carry)."""

    id: int
    address: str | None
    port: int | None
    flags: int
    ifindex: int | None


def pm_addresses(channel: NetlinkChannel, family: int,
                 token: int | None = None) -> tuple[LocalAddress, ...]:
    """GET_ADDR dump: the in-kernel PM's endpoints, or with `token` the local addresses the
    userspace PM holds for that connection; raises OSError."""
    msg = pm_message_class()()
    msg["cmd"] = PM_CMD_GET_ADDR
    msg["version"] = MPTCP_PM_VER
    if token is not None:
        msg["attrs"] = [("MPTCP_PM_ATTR_TOKEN", token)]
    answers = channel.request(msg, family, NLM_F_REQUEST | NLM_F_DUMP, "mptcp_pm get_addr")
    out: list[LocalAddress] = []
    for answer in answers:
        addr = answer.get_attr("MPTCP_PM_ATTR_ADDR")
        if addr is None:
            continue
        ip = (addr.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4")
              or addr.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6"))
        out.append(LocalAddress(
            id=int(addr.get_attr("MPTCP_PM_ADDR_ATTR_ID") or 0), address=ip,
            port=addr.get_attr("MPTCP_PM_ADDR_ATTR_PORT") or None,
            flags=int(addr.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS") or 0),
            ifindex=addr.get_attr("MPTCP_PM_ADDR_ATTR_IF_IDX") or None))
    return tuple(out)
