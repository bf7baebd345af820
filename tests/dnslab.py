"""A DNS test lab of real servers that are not ours: Knot DNS (authoritative, signs its zone
itself) and Unbound (validating resolver), plus a small delaying relay, started and stopped
by context managers that work in pytest and in plain scripts (bench/) alike.

Rule 1: every server is a real, unmodified daemon from the distribution (knotd, unbound),
run in the foreground from a temporary directory with a configuration written here; nothing
of the machine's own DNS set-up (/etc/knot, /etc/unbound, a system resolver on port 53) is
read, used or touched.
Rule 2: zones live under `.test` (RFC 6761) and every address in them and every listening
address is loopback, 198.18.0.0/15 or fd00::/8; the resolver refuses every name outside the
lab zone, so no query ever leaves for the real root servers.
Rule 3: whatever a context manager starts, it stops (terminate, then kill, then wait) even
when the body or the start-up fails; a start-up that does not answer within its deadline
raises with the server's log.
Rule 4: loopback mode (127.0.0.1, free ports) needs no root; namespace mode (port 53 inside a
tests/netns.py Topology host) needs root, and `lab()` skips under pytest with the reason.

Usage (loopback, no root):

    zone = example_zone()                            # svc A/AAAA/HTTPS/TLSA, alias, ...
    with lab(zone, signed=True) as dns:              # knot + validating unbound
        host, port = dns.nameserver                  # ("127.0.0.1", 41234)
        ...  # DnsClient(ResolverConfig(nameservers=(Nameserver(host, port),),
             #                           trust_ad=True))  # AD believed only with trust-ad
        zone.replace("svc", "AAAA", 30, "fd00:1::3")
        dns.knot.reload()                            # new answers (after unbound's TTL)

The chain is client -> [relay] -> unbound -> [inner relay] -> knot. The relay (present
with `relay=True` or any of its knots) delays answers by QTYPE (`delays={"AAAA": 0.4}`),
drops them (`drop`), answers an RCODE (`rcode={"HTTPS": "SERVFAIL"}`) or truncates UDP
(`truncate`); `lab.relay.set(...)` changes that while running. The inner relay (`tamper`)
alters answers so validation fails. `lab(signed=True, validate=False)` or `signed=False`:
answers without AD. `lab(port53=True)` (root): the front server on 127.53.X.Y port 53, for
a resolv.conf without ports. `lab(topo=topo)` (root): port 53 inside the namespace.

Pieces on their own: `knot(zone, listen=...)`, `unbound(upstream=..., zone=..., ...)`,
`delay_relay(upstream, delays={"AAAA": 0.4}, listen=...)`; see each one's docstring. None
needs pytest: bench scripts use them the same way (outside pytest `lab()` raises where
it would skip).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

Address = tuple[str, int]
Record = tuple[str, int, str, str]
"""(owner, ttl, type, rdata text). Owner relative to the zone ("svc", "@") or absolute."""

TOOLS = ("knotd", "knotc", "keymgr", "kdig", "unbound", "unbound-checkconf", "dig")
START_TIMEOUT = 10.0

QTYPES: dict[str, int] = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
    "SRV": 33, "DS": 43, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "TLSA": 52, "SVCB": 64,
    "HTTPS": 65, "ANY": 255,
}


def missing_tools() -> str | None:
    """Why the lab cannot run here (a daemon or tool not installed), or None."""
    gone = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if gone:
        return (f"DNS lab tools not installed: {', '.join(gone)} "
                "(apt-get install knot knot-dnsutils unbound bind9-dnsutils; .ci/run does)")
    return None


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():  # root's PATH may lack sbin
        found = f"/usr/sbin/{name}"
    if found is None:
        raise RuntimeError(missing_tools() or name)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (the kernel's choice, checked on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError(f"no free UDP+TCP port on {host}")


def _at(addr: Address) -> str:
    """knot/unbound address syntax: ADDR@PORT."""
    return f"{addr[0]}@{addr[1]}"


def _listens(listen: Address | Sequence[Address]) -> list[Address]:
    """One (addr, port) or a sequence of them, as a list."""
    if len(listen) == 2 and isinstance(listen[0], str) and isinstance(listen[1], int):
        return [(listen[0], listen[1])]
    return [(str(a[0]), int(a[1])) for a in cast("Sequence[Address]", listen)]


def _ns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


# ---- zones ----------------------------------------------------------------------------------


@dataclass
class Zone:
    """A zone as data. `records` are (owner, ttl, type, rdata text) in zone-file syntax; the
    SOA and NS (and the NS's glue) are added by `text()`. `negative_ttl` is the SOA minimum,
    the TTL of NXDOMAIN/NODATA answers (RFC 2308)."""

    name: str = "lab.test."
    records: list[Record] = field(default_factory=list)
    soa_ttl: int = 300
    negative_ttl: int = 30

    def __post_init__(self) -> None:
        if not self.name.endswith("."):
            self.name += "."
        if not (self.name == "test." or self.name.endswith(".test.")):
            raise ValueError(f"lab zones live under .test (RFC 6761), not {self.name}")

    def fqdn(self, owner: str) -> str:
        """The absolute name of `owner` ("svc" -> "svc.lab.test.")."""
        if owner in ("@", ""):
            return self.name
        return owner if owner.endswith(".") else f"{owner}.{self.name}"

    def add(self, owner: str, ttl: int, rtype: str, rdata: str) -> Zone:
        self.records.append((owner, int(ttl), rtype.upper(), rdata))
        return self

    def remove(self, owner: str, rtype: str | None = None) -> Zone:
        """Drop every record of `owner` (of type `rtype` when given)."""
        name = self.fqdn(owner).lower()
        self.records = [r for r in self.records
                        if not (self.fqdn(r[0]).lower() == name
                                and (rtype is None or r[2] == rtype.upper()))]
        return self

    def replace(self, owner: str, rtype: str, ttl: int, *rdatas: str) -> Zone:
        """Set the `rtype` RRset of `owner` to `rdatas` (none: remove it)."""
        self.remove(owner, rtype)
        for rdata in rdatas:
            self.add(owner, ttl, rtype, rdata)
        return self

    def text(self, serial: int = 1) -> str:
        lines = [f"$ORIGIN {self.name}",
                 f"@ {self.soa_ttl} IN SOA ns.{self.name} hostmaster.{self.name} "
                 f"{serial} 3600 600 86400 {self.negative_ttl}",
                 f"@ {self.soa_ttl} IN NS ns.{self.name}"]
        if not any(self.fqdn(r[0]).lower() == f"ns.{self.name}" for r in self.records):
            # Glue only: the resolver reaches knot through its stub-addr, never this address.
            lines.append(f"ns {self.soa_ttl} IN A 198.18.1.2")
        lines += [f"{owner} {ttl} IN {rtype} {rdata}" for owner, ttl, rtype, rdata in self.records]
        return "\n".join(lines) + "\n"


ECH_CONFIG = base64.b64encode(
    bytes.fromhex("0045fe0d0041a50020002010") + b"\x00" * 32 + bytes.fromhex("000400010001")
    + b"\x12" + b"ech.lab.test" + b"\x00" * 6 + bytes.fromhex("0000")).decode()
"""An opaque ECHConfigList-shaped value for `ech=` (tests only check it is carried)."""


def example_zone(name: str = "lab.test.", *, v4: str = "198.18.1.2", v6: str = "fd00:1::2",
                 tlsa: str | None = None) -> Zone:
    """The lab's standard zone: `svc` with A (ttl 300) and AAAA (ttl 60), an HTTPS ServiceMode
    record (h3,h2 on 8443 with hints and ECH), `alias` (HTTPS AliasMode to svc), `www` (CNAME
    to svc), `v4only` (A only), `_443._tcp.svc` TLSA (3 1 1, `tlsa` rdata or a fixed digest)."""
    zone = Zone(name)
    zone.add("svc", 300, "A", v4)
    zone.add("svc", 60, "AAAA", v6)
    zone.add("svc", 300, "HTTPS",
             f"1 . alpn=h3,h2 port=8443 ipv4hint={v4} ipv6hint={v6} ech={ECH_CONFIG}")
    zone.add("alias", 300, "HTTPS", f"0 svc.{zone.name}")
    zone.add("www", 300, "CNAME", f"svc.{zone.name}")
    zone.add("v4only", 300, "A", v4)
    zone.add("_443._tcp.svc", 300, "TLSA", tlsa or "3 1 1 " + hashlib.sha256(b"lab").hexdigest())
    return zone


# ---- TLSA from certificates -----------------------------------------------------------------


def tlsa_rdata(pem: bytes | str, usage: int = 3, selector: int = 1, matching: int = 1) -> str:
    """The TLSA rdata text ("3 1 1 <hex>", RFC 6698) for the first certificate in `pem`:
    selector 0 = the whole certificate (DER), 1 = its SubjectPublicKeyInfo; matching 0 =
    exact bytes, 1 = SHA-256, 2 = SHA-512."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    elif selector == 1:
        data = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raise ValueError(f"TLSA selector {selector} is not 0 or 1")
    if matching == 0:
        value = data
    elif matching in (1, 2):
        value = (hashlib.sha256 if matching == 1 else hashlib.sha512)(data).digest()
    else:
        raise ValueError(f"TLSA matching type {matching} is not 0, 1 or 2")
    return f"{usage} {selector} {matching} {value.hex()}"


def tlsa_record(pem: bytes | str, host: str = "svc", port: int = 443, proto: str = "tcp",
                usage: int = 3, selector: int = 1, matching: int = 1, ttl: int = 300) -> Record:
    """A zone Record `_PORT._PROTO.HOST TTL TLSA ...` for `pem` (see tlsa_rdata)."""
    return (f"_{port}._{proto}.{host}", ttl, "TLSA", tlsa_rdata(pem, usage, selector, matching))


# ---- processes ------------------------------------------------------------------------------


def _parent_death_signal() -> Any:
    """A preexec_fn making the child get SIGTERM when this (main) thread dies, so a test run
    killed with SIGKILL leaves no server behind; None off the main thread (the signal
    follows the thread that forked, and a worker thread may end before the lab does)."""
    if threading.current_thread() is not threading.main_thread() or sys.platform != "linux":
        return None
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return arm


class Daemon:
    """A foreground server process (in `netns`, or here); its stdout+stderr go to a log file
    quoted in errors. The NAT lab runs coturn and its peers with it too (tests/natlab.py)."""

    def __init__(self, argv: Sequence[str], *, netns: str | None, log: Path, label: str,
                 stdin: int | IO[Any] | None = subprocess.DEVNULL,
                 stdout: int | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.label = label
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [*_ns_prefix(netns), *argv], stdin=stdin,
            stdout=self._log if stdout is None else stdout,
            stderr=self._log, env=env, cwd=cwd, start_new_session=True,
            preexec_fn=_parent_death_signal())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.label} exited ({self.proc.returncode}); "
                               f"log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s; always waits, never raises."""
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(Exception):
            self._log.close()


def _kdig(server: Address, name: str, rtype: str, *, netns: str | None = None,
          extra: Sequence[str] = (), timeout: float = 1.0) -> subprocess.CompletedProcess[str]:
    argv = [*_ns_prefix(netns), _tool("kdig"), f"@{server[0]}", "-p", str(server[1]),
            f"+timeout={max(1, round(timeout))}", "+retry=0", *extra, name, rtype]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                          check=False)


def _wait_answer(daemon: Daemon, server: Address, name: str, rtype: str, *,
                 netns: str | None, want: str | None = "NOERROR",
                 timeout: float = START_TIMEOUT) -> str:
    """Poll `server` until it answers `name rtype` with rcode `want` (None: any rcode);
    its kdig output."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        daemon.check_alive()
        # TCP: a port nobody listens on yet is refused at once (UDP waits out the timeout).
        out = _kdig(server, name, rtype, netns=netns, extra=["+tcp"], timeout=1.0)
        last = out.stdout + out.stderr
        if out.returncode == 0 and ("status: " if want is None else f"status: {want}") \
                in out.stdout:
            return out.stdout
        if time.monotonic() > deadline:
            raise RuntimeError(f"{daemon.label} did not answer {name} {rtype} with {want} "
                               f"at {server} within {timeout} s; last kdig:\n{last}\n"
                               f"log:\n{daemon.log()[-4000:]}")
        time.sleep(0.02)  # pacing between polls, not a guessed wait: returns on the answer


# ---- knot -----------------------------------------------------------------------------------


class Knot:
    """A running knotd serving one zone; see `knot()`."""

    def __init__(self, zone: Zone, listen: Sequence[Address], netns: str | None, signed: bool,
                 workdir: Path) -> None:
        self.zone = zone
        self.listen = list(listen)
        self.netns = netns
        self.signed = signed
        self.dir = workdir
        self.conf = workdir / "knot.conf"
        self.zonefile = workdir / f"{zone.name.rstrip('.')}.zone"
        self.serial = 1
        self._daemon: Daemon | None = None

    @property
    def address(self) -> Address:
        return self.listen[0]

    def _write_conf(self) -> None:
        d = self.dir
        lines = ["server:", f'    rundir: "{d}"']
        lines += [f"    listen: {_at(a)}" for a in self.listen]
        lines += ["    udp-workers: 1", "    tcp-workers: 1", "    background-workers: 1",
                  "log:", "  - target: stderr", "    any: info",
                  "database:", f'    storage: "{d}"',
                  "control:", f'    listen: "{d}/knot.sock"']
        if self.signed:
            # A single combined key (CSK, one DS), ECDSA P-256, NSEC; no key roll during a
            # test run; signatures valid for a week.
            lines += ["policy:", "  - id: lab", "    algorithm: ecdsap256sha256",
                      "    single-type-signing: on", "    nsec3: off",
                      "    dnskey-ttl: 300", "    zone-max-ttl: 3600",
                      "    propagation-delay: 0", "    ksk-lifetime: 0", "    zsk-lifetime: 0",
                      "    rrsig-lifetime: 7d", "    rrsig-refresh: 1d"]
        lines += ["zone:", f"  - domain: {self.zone.name}", f'    file: "{self.zonefile}"',
                  # The file is the truth: reload = load it whole, never write it back.
                  "    zonefile-sync: -1", "    zonefile-load: whole", "    journal-content: none",
                  "    semantic-checks: on"]
        if self.signed:
            lines += ["    dnssec-signing: on", "    dnssec-policy: lab"]
        self.conf.write_text("\n".join(lines) + "\n")

    def _write_zone(self) -> None:
        self.zonefile.write_text(self.zone.text(self.serial))

    def start(self) -> None:
        self._write_conf()
        self._write_zone()
        check = subprocess.run([_tool("knotc"), "-c", str(self.conf), "conf-check"],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"knot.conf rejected: {check.stdout}{check.stderr}\n"
                               f"{self.conf.read_text()}")
        self._daemon = Daemon([_tool("knotd"), "-c", str(self.conf)], netns=self.netns,
                               log=self.dir / "knotd.log", label="knotd")
        self._wait_serial(self.serial)
        if self.signed:
            _wait_answer(self._daemon, self.address, self.zone.name, "DNSKEY",
                         netns=self.netns)

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()

    def restart(self) -> None:
        """Stop and start again from the same directory (the same keys when signed)."""
        self.stop()
        self.serial += 1
        self.start()

    def log(self) -> str:
        return self._daemon.log() if self._daemon else ""

    def served_serial(self) -> int | None:
        out = _kdig(self.address, self.zone.name, "SOA", netns=self.netns,
                    extra=["+short", "+tcp"])
        fields = out.stdout.split()
        return int(fields[2]) if out.returncode == 0 and len(fields) >= 3 else None

    def _wait_serial(self, serial: int, timeout: float = START_TIMEOUT) -> None:
        assert self._daemon is not None
        deadline = time.monotonic() + timeout
        while True:
            self._daemon.check_alive()
            got = self.served_serial()
            if got is not None and got >= serial:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"knotd did not serve {self.zone.name} serial {serial} "
                                   f"within {timeout} s (serves {got}); "
                                   f"log:\n{self.log()[-4000:]}")
            time.sleep(0.02)  # pacing between polls; returns once the serial is served

    def reload(self, zone: Zone | None = None) -> None:
        """Serve the zone's current records (after `zone.add/replace/remove`, or a new
        `zone`): rewrite the file with a higher serial, `knotc zone-reload`, and wait until
        knot serves it. A resolver in front keeps cached answers until their TTL runs out."""
        if zone is not None:
            if zone.name != self.zone.name:
                raise ValueError("reload() serves the same zone name; start another knot")
            self.zone = zone
        self.serial = max(self.serial, self.served_serial() or 0) + 1
        self._write_zone()
        out = subprocess.run([_tool("knotc"), "-c", str(self.conf), "-s",
                              str(self.dir / "knot.sock"), "zone-reload", self.zone.name],
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"knotc zone-reload failed: {out.stdout}{out.stderr}")
        self._wait_serial(self.serial)

    # ---- DNSSEC ---------------------------------------------------------------------------

    def dnskey(self) -> str:
        """The zone's DNSKEY (the CSK) as a zone-file line, as knot serves it."""
        out = _kdig(self.address, self.zone.name, "DNSKEY", netns=self.netns, extra=["+short"])
        keys = [ln for ln in out.stdout.splitlines() if ln.startswith("257 ")]
        if not keys:
            raise RuntimeError(f"no DNSKEY 257 served for {self.zone.name}: {out.stdout}")
        return f"{self.zone.name} 300 IN DNSKEY {keys[0]}"

    def ds(self) -> str:
        """The zone's DS (SHA-256 digest) as a zone-file line, from `keymgr ... ds`."""
        if not self.signed:
            raise RuntimeError("an unsigned zone has no DS")
        out = subprocess.run([_tool("keymgr"), "-c", str(self.conf), self.zone.name, "ds"],
                             capture_output=True, text=True, timeout=10, check=False)
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "DS" and fields[4] == "2":
                return f"{fields[0]} 300 IN DS {' '.join(fields[2:])}"
        raise RuntimeError(f"keymgr printed no SHA-256 DS: {out.stdout}{out.stderr}")

    @property
    def trust_anchor(self) -> str:
        """The DS line to give a validating resolver (`unbound(trust_anchor=...)`)."""
        return self.ds()


@contextlib.contextmanager
def knot(zone: Zone, listen: Address | Sequence[Address] | None = None, *,
         netns: str | None = None, signed: bool = False) -> Iterator[Knot]:
    """Run knotd authoritative for `zone` on `listen` ((addr, port) or a list; default
    127.0.0.1 on a free port), inside `ip netns exec NETNS` when given. `signed`: knot signs
    the zone itself (ECDSA P-256 CSK, NSEC) and `Knot.trust_anchor` is its DS. Yields once
    `kdig @addr SOA zone` answers; always stops knotd."""
    addrs = _listens(listen) if listen is not None else [("127.0.0.1", free_port())]
    with tempfile.TemporaryDirectory(prefix="dnslab-knot-") as tmp:
        server = Knot(zone, addrs, netns, signed, Path(tmp))
        try:
            server.start()
            yield server
        finally:
            server.stop()


# ---- unbound --------------------------------------------------------------------------------


class Unbound:
    """A running validating unbound; see `unbound()`."""

    def __init__(self, daemon: Daemon, listen: Sequence[Address], conf: Path,
                 trust_anchor: str | None) -> None:
        self._daemon = daemon
        self.listen = list(listen)
        self.conf = conf
        self.trust_anchor = trust_anchor

    @property
    def address(self) -> Address:
        return self.listen[0]

    def log(self) -> str:
        return self._daemon.log()


def unbound_conf(upstream: Address, zone: str, trust_anchor: str | None,
                 listen: Sequence[Address], workdir: Path,
                 extra: Sequence[str] = ()) -> str:
    """The unbound.conf text `unbound()` runs (exposed so a test can show or vary it)."""
    zone = zone if zone.endswith(".") else zone + "."
    lines = ["server:"]
    lines += [f"    interface: {_at(a)}" for a in listen]
    lines += [
        f"    port: {listen[0][1]}",
        "    do-daemonize: no", '    username: ""', '    chroot: ""',
        f'    directory: "{workdir}"', '    pidfile: ""', '    logfile: ""', "    use-syslog: no",
        "    log-servfail: yes", "    verbosity: 1", "    val-log-level: 2",
        "    num-threads: 1", "    so-reuseport: no", "    do-ip6: yes",
        # Bound to lab addresses only, so allowing every client is allowing the tests.
        "    access-control: 0.0.0.0/0 allow", "    access-control: ::/0 allow",
        "    do-not-query-localhost: no",
        '    module-config: "validator iterator"', "    val-permissive-mode: no",
        "    qname-minimisation: no", "    prefetch: no", "    serve-expired: no",
        "    minimal-responses: no",
        # Nothing outside the lab zone: "." refused (the rest of .test stays unbound's
        # built-in RFC 6761 zone, answered locally), the lab zone resolved through the stub
        # (transparent: more specific than both, no local data, so normal resolution).
        '    local-zone: "." refuse', f'    local-zone: "{zone}" transparent',
    ]
    if trust_anchor:
        lines.append(f'    trust-anchor: "{trust_anchor}"')
    lines += [f"    {line}" for line in extra]
    lines += ["stub-zone:", f'    name: "{zone}"', f"    stub-addr: {_at(upstream)}",
              "    stub-prime: no", "remote-control:", "    control-enable: no"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def unbound(upstream: Address, zone: str | Zone, trust_anchor: str | None = None,
            listen: Address | Sequence[Address] | None = None, *, netns: str | None = None,
            extra: Sequence[str] = ()) -> Iterator[Unbound]:
    """Run a validating unbound ("validator iterator", val-permissive-mode: no) on `listen`
    (default 127.0.0.1, free port) with a stub-zone for `zone` at `upstream` (knot or a
    relay). With `trust_anchor` (a DS or DNSKEY line, e.g. Knot.trust_anchor) answers from
    the signed zone carry AD and tampered ones are SERVFAIL; without it the zone is
    insecure: answers, never AD. Yields once it answers `zone SOA`; always stops it."""
    name = zone.name if isinstance(zone, Zone) else zone
    addrs = _listens(listen) if listen is not None else [("127.0.0.1", free_port())]
    if len({port for _, port in addrs}) != 1:
        raise ValueError("unbound listens on one port for all its addresses")
    with tempfile.TemporaryDirectory(prefix="dnslab-unbound-") as tmp:
        workdir = Path(tmp)
        conf = workdir / "unbound.conf"
        conf.write_text(unbound_conf(upstream, name, trust_anchor, addrs, workdir, extra))
        check = subprocess.run([_tool("unbound-checkconf"), str(conf)], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"unbound.conf rejected: {check.stdout}{check.stderr}\n"
                               f"{conf.read_text()}")
        daemon = Daemon([_tool("unbound"), "-d", "-c", str(conf)], netns=netns,
                         log=workdir / "unbound.log", label="unbound")
        try:
            # Any answer means it is up: with a wrong anchor the answer is SERVFAIL.
            _wait_answer(daemon, addrs[0], name, "SOA", netns=netns, want=None)
            yield Unbound(daemon, addrs, conf, trust_anchor)
        finally:
            daemon.stop()


def corrupt_anchor(anchor: str) -> str:
    """`anchor` (a DS or DNSKEY line) with one digest/key character changed: a resolver given
    it finds no key matching the zone's and answers SERVFAIL (bogus), never the data."""
    fields = anchor.split()
    at = fields.index("DS") if "DS" in fields else fields.index("DNSKEY")
    head, data = fields[:at + 4], list("".join(fields[at + 4:]))
    data[0] = "0" if data[0] != "0" else "1"  # hex digit or base64 character alike
    return " ".join([*head, "".join(data)])


# ---- the delay relay ------------------------------------------------------------------------

RELAY_SCRIPT = r'''
"""A DNS relay (stdlib only): forwards each UDP/TCP query to the upstream and sends the
answer back no earlier than delays[qtype] seconds after the query arrived. Per QTYPE also:
`drop` (no answer), `tamper` (the last rdata byte of the first answer record of that type
flipped), `rcode` (answer with that RCODE at once, upstream not asked), `truncate` (UDP
answer empty with TC set: the client must retry over TCP, which is relayed normally).
Commands on stdin (JSON lines) replace settings: {"delays": {...}}, {"drop": [...]},
{"tamper": [...]}, {"rcode": {...}}, {"truncate": [...]}; {"log": true} adds the queries
seen ([qname, qtype, t_received, t_answered, transport]), {"clear": true} forgets them."""
import asyncio, json, socket, struct, sys, time

cfg = json.loads(sys.argv[1])
UP = (cfg["upstream"][0], cfg["upstream"][1])
UPFAM = socket.AF_INET6 if ":" in UP[0] else socket.AF_INET
S = {}
LOG = []

def configure(cmd):
    if "delays" in cmd:
        S["delays"] = {int(k): float(v) for k, v in cmd["delays"].items()}
    if "rcode" in cmd:
        S["rcode"] = {int(k): int(v) for k, v in cmd["rcode"].items()}
    for key in ("drop", "tamper", "truncate"):
        if key in cmd:
            S[key] = set(int(x) for x in cmd[key])

configure({"delays": {}, "rcode": {}, "drop": [], "tamper": [], "truncate": []})
configure(cfg)

def skip_name(msg, i):
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n

def question(msg):
    i, labels = 12, []
    while i < len(msg) and msg[i]:
        n = msg[i]
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack("!H", msg[i + 1:i + 3])[0] if len(msg) >= i + 3 else 0
    return ".".join(labels).lower() + ".", qtype

def reply_only(query, rcode, tc=False):
    """A header-and-question answer to `query`: QR, opcode and RD copied, RA, the RCODE,
    TC when asked."""
    try:
        end = skip_name(query, 12) + 4
    except IndexError:
        end = 12
    flags = struct.unpack("!H", query[2:4])[0]
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | (0x0200 if tc else 0) | (rcode & 0xF)
    counts = struct.pack("!HHHHH", flags, 1 if end > 12 else 0, 0, 0, 0)
    return query[:2] + counts + query[12:end]

def tamper(msg, qtype):
    """Flip the last rdata byte of the first answer record of type qtype (a signature over
    it no longer verifies: a validating resolver must call the answer bogus)."""
    if qtype not in S["tamper"]:
        return msg
    try:
        qd, an = struct.unpack("!HH", msg[4:8])
        i = 12
        for _ in range(qd):
            i = skip_name(msg, i) + 4
        for _ in range(an):
            i = skip_name(msg, i)
            rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
            i += 10
            if rtype == qtype and rdlen:
                out = bytearray(msg)
                out[i + rdlen - 1] ^= 0x01
                return bytes(out)
            i += rdlen
    except (IndexError, struct.error):
        pass
    return msg

async def udp_upstream(msg):
    loop = asyncio.get_running_loop()
    with socket.socket(UPFAM, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, UP)
        await loop.sock_sendall(s, msg)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), 5.0)

async def tcp_upstream(msg):
    reader, writer = await asyncio.open_connection(*UP)
    try:
        writer.write(struct.pack("!H", len(msg)) + msg)
        await writer.drain()
        size = await asyncio.wait_for(reader.readexactly(2), 5.0)
        return await asyncio.wait_for(reader.readexactly(struct.unpack("!H", size)[0]), 5.0)
    finally:
        writer.close()

async def respond(data, transport):
    """The answer to send for query `data` (None: none), once its delay has passed."""
    t0 = time.monotonic()
    name, qtype = question(data)
    entry = [name, qtype, t0, None, transport]
    LOG.append(entry)
    if qtype in S["drop"]:
        return None
    if qtype in S["rcode"]:
        answer = reply_only(data, S["rcode"][qtype])
    elif transport == "udp" and qtype in S["truncate"]:
        answer = reply_only(data, 0, tc=True)
    else:
        try:
            answer = await (udp_upstream if transport == "udp" else tcp_upstream)(data)
        except Exception:
            return None
        answer = tamper(answer, qtype)
    left = t0 + S["delays"].get(qtype, 0.0) - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)
    entry[3] = time.monotonic()
    return answer

class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        asyncio.ensure_future(self.relay(data, addr))
    async def relay(self, data, addr):
        answer = await respond(data, "udp")
        if answer is not None:
            self.transport.sendto(answer, addr)

async def tcp_client(reader, writer):
    lock = asyncio.Lock()
    pending = set()
    async def one(data):
        answer = await respond(data, "tcp")
        if answer is not None:
            async with lock:
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
    try:
        while True:  # pipelined queries are answered as their delays end (RFC 7766)
            head = await reader.readexactly(2)
            data = await reader.readexactly(struct.unpack("!H", head)[0])
            task = asyncio.ensure_future(one(data))
            pending.add(task)
            task.add_done_callback(pending.discard)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        if pending:
            await asyncio.wait(pending, timeout=10)
        writer.close()

def command(line):
    cmd = json.loads(line)
    configure(cmd)
    out = {"ok": True}
    if cmd.get("log"):
        out["log"] = list(LOG)
    if cmd.get("clear"):
        LOG.clear()
    return out

async def main():
    loop = asyncio.get_running_loop()
    for host, port in cfg["listen"]:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        await loop.create_datagram_endpoint(Udp, local_addr=(host, port), family=fam)
        await asyncio.start_server(tcp_client, host, port, family=fam, reuse_address=True)
    print(json.dumps({"ready": cfg["listen"]}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        try:
            out = command(line)
        except Exception as exc:
            out = {"unexpected": repr(exc)}
        print(json.dumps(out), flush=True)

asyncio.run(main())
'''

RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}


def _relay_settings(delays: Mapping[str | int, float] | None,
                    drop: Iterable[str | int] | None, tamper: Iterable[str | int] | None,
                    rcode: Mapping[str | int, str | int] | None,
                    truncate: Iterable[str | int] | None) -> dict[str, Any]:
    cmd: dict[str, Any] = {}
    if delays is not None:
        cmd["delays"] = {str(_qtype(k)): float(v) for k, v in delays.items()}
    if rcode is not None:
        cmd["rcode"] = {str(_qtype(k)): v if isinstance(v, int) else RCODES[v.upper()]
                        for k, v in rcode.items()}
    for key, value in (("drop", drop), ("tamper", tamper), ("truncate", truncate)):
        if value is not None:
            cmd[key] = [_qtype(k) for k in value]
    return cmd


def _qtype(key: str | int) -> int:
    if isinstance(key, int):
        return key
    if key.upper() in QTYPES:
        return QTYPES[key.upper()]
    if key.upper().startswith("TYPE") and key[4:].isdigit():
        return int(key[4:])
    raise ValueError(f"unknown QTYPE {key!r}")


@dataclass(frozen=True)
class Query:
    """One query the relay saw: monotonic seconds it arrived and was answered (None: not)."""

    name: str
    rtype: str
    received: float
    answered: float | None
    transport: str


class Relay:
    """A running delay relay; see `delay_relay()`."""

    def __init__(self, daemon: Daemon, listen: Sequence[Address]) -> None:
        self._daemon = daemon
        self.listen = list(listen)
        self._buf = b""

    @property
    def address(self) -> Address:
        return self.listen[0]

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self._daemon.proc.stdout is not None
        fd = self._daemon.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        import select
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"delay relay silent {timeout} s; log:\n{self._daemon.log()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._daemon.check_alive()
                    raise EOFError(f"delay relay closed stdout; log:\n{self._daemon.log()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        out: dict[str, Any] = json.loads(line)
        if "unexpected" in out:
            raise RuntimeError(f"delay relay: {out['unexpected']}")
        return out

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stdin = self._daemon.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps(cmd) + "\n").encode())
        stdin.flush()
        return self._line(5.0)

    def set(self, delays: Mapping[str | int, float] | None = None,
            drop: Iterable[str | int] | None = None,
            tamper: Iterable[str | int] | None = None,
            rcode: Mapping[str | int, str | int] | None = None,
            truncate: Iterable[str | int] | None = None) -> None:
        """Replace settings while running (an argument left None keeps that setting); see
        delay_relay() for what each does."""
        self._ask(_relay_settings(delays, drop, tamper, rcode, truncate))

    def queries(self, clear: bool = False) -> list[Query]:
        """The queries seen so far (in arrival order); `clear` forgets them afterwards."""
        names = {v: k for k, v in QTYPES.items()}
        out = self._ask({"log": True, "clear": clear})
        return [Query(n, names.get(t, f"TYPE{t}"), r, a, tr) for n, t, r, a, tr in out["log"]]


@contextlib.contextmanager
def delay_relay(upstream: Address, delays: Mapping[str | int, float] | None = None,
                listen: Address | Sequence[Address] | None = None, *,
                netns: str | None = None, drop: Iterable[str | int] = (),
                tamper: Iterable[str | int] = (),
                rcode: Mapping[str | int, str | int] | None = None,
                truncate: Iterable[str | int] = ()) -> Iterator[Relay]:
    """Run the relay (a stdlib Python subprocess, inside `netns` when given) on `listen`
    (default 127.0.0.1, free port): every UDP and TCP query goes to `upstream` and its
    answer is sent back `delays[QTYPE]` seconds (e.g. {"AAAA": 0.4}) after the query arrived
    (or when the upstream answered, if later). By QTYPE also: `drop` never answers;
    `tamper` flips the last rdata byte of the first such answer record (put the relay
    between unbound and a signed knot: the answer turns bogus, SERVFAIL); `rcode` answers
    at once with that RCODE ({"HTTPS": "SERVFAIL"}); `truncate` answers UDP with an empty
    TC answer (the client retries over TCP, relayed normally). Pipelined TCP queries are
    answered as their delays end."""
    addrs = _listens(listen) if listen is not None else [("127.0.0.1", free_port())]
    cfg = {"upstream": list(upstream), "listen": [list(a) for a in addrs],
           **_relay_settings(delays or {}, drop, tamper, rcode or {}, truncate)}
    with tempfile.TemporaryDirectory(prefix="dnslab-relay-") as tmp:
        script = Path(tmp) / "relay.py"
        script.write_text(RELAY_SCRIPT)
        # Stdlib only, so any python3 runs it (this interpreter may not be executable for a
        # user who only imported it, e.g. a venv under /root).
        python = sys.executable if os.access(sys.executable, os.X_OK) else (
            shutil.which("python3") or sys.executable)
        daemon = Daemon([python, "-I", str(script), json.dumps(cfg)], netns=netns,
                         log=Path(tmp) / "relay.log", label="delay relay",
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            relay = Relay(daemon, addrs)
            ready = relay._line(START_TIMEOUT)
            if "ready" not in ready:
                raise RuntimeError(f"delay relay did not start: {ready}")
            yield relay
        finally:
            daemon.stop()


# ---- the whole lab --------------------------------------------------------------------------


@dataclass
class Lab:
    """A running lab: `nameservers` is where clients ask (the relay when delays were given,
    else unbound, or knot itself with resolver=False)."""

    zone: Zone
    knot: Knot
    unbound: Unbound | None
    relay: Relay | None
    nameservers: tuple[Address, ...]
    netns: str | None = None
    inner_relay: Relay | None = None
    """Between unbound and knot (present with `tamper`): `.set(tamper=[...])` changes it."""

    @property
    def nameserver(self) -> Address:
        return self.nameservers[0]

    @property
    def trust_anchor(self) -> str | None:
        return self.unbound.trust_anchor if self.unbound else None

    def resolv_conf_text(self, options: Sequence[str] = ()) -> str:
        """A resolv.conf naming the lab's nameservers (for `$TAPS_POST_RESOLV_CONF`). A port
        other than 53 is written as `ADDR:PORT` / `[V6]:PORT`, systemd's form, which glibc
        and taps_post.resolver skip as a resolv.conf line: use `lab(port53=True)` (root) or
        namespace mode for a resolv.conf they read."""
        lines = []
        for addr, port in self.nameservers:
            if port == 53:
                lines.append(f"nameserver {addr}")
            else:
                lines.append(f"nameserver [{addr}]:{port}" if ":" in addr
                             else f"nameserver {addr}:{port}")
        if options:
            lines.append("options " + " ".join(options))
        return "\n".join(lines) + "\n"

    def write_resolv_conf(self, path: str | os.PathLike[str],
                          options: Sequence[str] = ()) -> Path:
        """Write resolv_conf_text() to `path`; returns it (set $TAPS_POST_RESOLV_CONF)."""
        out = Path(path)
        out.write_text(self.resolv_conf_text(options))
        return out

    def logs(self) -> str:
        """The servers' logs, for an assertion message."""
        parts = [f"--- knotd\n{self.knot.log()[-3000:]}"]
        if self.unbound:
            parts.append(f"--- unbound\n{self.unbound.log()[-3000:]}")
        return "\n".join(parts)


_used53: set[str] = set()


def _loopback53() -> str:
    """A 127.53.X.Y address (loopback: all of 127/8 is local on Linux) whose port 53 is free
    for UDP and TCP; never 127.0.0.1 or 127.0.0.53, where a system resolver may listen."""
    import random
    for _ in range(100):
        addr = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        if addr in _used53:
            continue
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind((addr, 53))
        except OSError:
            continue
        _used53.add(addr)
        return addr
    raise RuntimeError("no 127.53.X.Y address with a free port 53")


def port53_unavailable() -> str | None:
    """Why `lab(port53=True)` cannot run here (not root; port 53 taken by a wildcard
    listener), or None."""
    if os.geteuid() != 0:
        return "port 53 on loopback needs root (CI runs as root)"
    try:
        _used53.discard(_loopback53())  # only a probe: the address stays available
    except (RuntimeError, OSError) as exc:
        return f"cannot listen on 127.53.X.Y port 53: {exc}"
    return None


def skip_reason(topo: Any = None) -> str | None:
    """Why `lab()` cannot run here (tools missing; namespace mode without root), or None."""
    reason = missing_tools()
    if reason is None and topo is not None and os.geteuid() != 0:
        reason = "namespace DNS lab needs root (CI runs as root)"
    return reason


@contextlib.contextmanager
def lab(zone: Zone | None = None, *, signed: bool = True, validate: bool = True,
        resolver: bool = True, delays: Mapping[str | int, float] | None = None,
        drop: Iterable[str | int] = (), tamper: Iterable[str | int] = (),
        rcode: Mapping[str | int, str | int] | None = None,
        truncate: Iterable[str | int] = (), relay: bool = False, topo: Any = None,
        host: str | None = None, loopback: str = "127.0.0.1", port53: bool = False,
        resolv_conf: bool = True, resolv_options: Sequence[str] = (),
        unbound_extra: Sequence[str] = ()) -> Iterator[Lab]:
    """knot (+ unbound, + the delay relay when `relay` or any of `delays`, `drop`, `rcode`,
    `truncate` is given (see delay_relay); `lab.relay.set(...)` changes them later), wired
    together:
    client -> [relay: delays, drop] -> unbound -> [inner relay: tamper] -> knot.

    Loopback (no `topo`): everything on `loopback` (127.0.0.1 or ::1), free ports, no root.
    With `port53` (root): the front server (relay or unbound) listens on port 53 of a fresh
    127.53.X.Y address instead, so a resolv.conf without ports (glibc's, and what
    taps_post.resolver reads) names it: `lab.write_resolv_conf(path)`.
    Namespace (`topo`, a tests/netns.py Topology, root): all servers in `host` (default
    topo.b): knot on 127.0.0.1@53, unbound on 198.18.1.2/fd00:1::2 port 53 (on 127.0.0.2@53
    behind the relay, which then takes 198.18.1.2/fd00:1::2 port 53; the inner relay is on
    127.0.0.3@53); with `resolv_conf`, topo.a's /etc/resolv.conf names the front servers
    (removed at topology teardown).
    `signed`: knot signs; `validate`: unbound gets the trust anchor (AD on answers);
    `tamper`: answers of these QTYPEs are altered between knot and unbound (bogus with
    `validate`: SERVFAIL); `resolver=False`: clients ask knot directly (AA, no RA, no AD).
    Under pytest a missing tool or root skips; elsewhere it raises."""
    reason = skip_reason(topo)
    if reason is None and port53 and topo is None:
        reason = port53_unavailable()
    if reason is not None:
        if "pytest" in sys.modules:
            import pytest
            pytest.skip(reason)
        raise RuntimeError(reason)
    zone = zone if zone is not None else example_zone()
    drop, tamper, truncate = tuple(drop), tuple(tamper), tuple(truncate)
    relayed = relay or bool(delays) or bool(drop) or bool(rcode) or bool(truncate)
    netns: str | None = None if topo is None else (host or topo.b)
    for attempt in range(3):
        # Free ports are the kernel's choice of the moment; another process may take one
        # before our server binds it: then start again on new ones (loopback only).
        stack = contextlib.ExitStack()
        try:
            running = _start(stack, zone, signed, validate, resolver, relayed, delays, drop,
                             tamper, rcode, truncate, topo, netns, loopback, port53,
                             unbound_extra)
        except BaseException as exc:
            stack.close()
            if (topo is None and attempt < 2 and isinstance(exc, (RuntimeError, EOFError))
                    and "already in use" in str(exc).lower()):
                continue
            raise
        break
    with stack:
        if topo is not None and resolv_conf:
            topo.resolv_conf(topo.a, [a for a, _ in running.nameservers], resolv_options)
        yield running


def _start(stack: contextlib.ExitStack, zone: Zone, signed: bool, validate: bool,
           resolver: bool, relayed: bool, delays: Mapping[str | int, float] | None,
           drop: tuple[str | int, ...], tamper: tuple[str | int, ...],
           rcode: Mapping[str | int, str | int] | None, truncate: tuple[str | int, ...],
           topo: Any, netns: str | None, loopback: str, port53: bool,
           unbound_extra: Sequence[str]) -> Lab:
    """Start lab()'s servers on `stack` (which stops them), front to back as needed."""
    if topo is None:
        k_listen: list[Address] = [(loopback, free_port(loopback))]
        u_listen: list[Address] = [(loopback, free_port(loopback))]
        r_listen: list[Address] = [(loopback, free_port(loopback))]
        t_listen: list[Address] = [(loopback, free_port(loopback))]
        if port53:
            front53 = [(_loopback53(), 53)]
            if relayed:
                r_listen = front53
            elif resolver:
                u_listen = front53
            else:
                k_listen = front53
    else:
        from netns import B1_V4, B1_V6
        front = [(B1_V4, 53), (B1_V6, 53)]
        k_listen = [("127.0.0.1", 53)]
        u_listen = [("127.0.0.2", 53)] if relayed else front
        r_listen = front
        t_listen = [("127.0.0.3", 53)]
    k = stack.enter_context(knot(zone, k_listen, netns=netns, signed=signed))
    front_addrs: list[Address] = k.listen
    inner = None
    if tamper:
        inner = stack.enter_context(delay_relay(k.address, None, t_listen, netns=netns,
                                                tamper=tamper))
        front_addrs = inner.listen
    u = None
    if resolver:
        anchor = k.trust_anchor if signed and validate else None
        u = stack.enter_context(unbound(front_addrs[0], zone, anchor, u_listen, netns=netns,
                                        extra=unbound_extra))
        front_addrs = u.listen
    r = None
    if relayed:
        r = stack.enter_context(delay_relay(front_addrs[0], delays, r_listen, netns=netns,
                                            drop=drop, rcode=rcode, truncate=truncate))
        front_addrs = r.listen
    return Lab(zone, k, u, r, tuple(front_addrs), netns, inner)


def dig(server: Address, name: str, rtype: str = "A", *args: str,
        netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run BIND's `dig @server -p port ARGS name rtype` (inside `netns`), +tries=1 +time=3."""
    argv = [*_ns_prefix(netns), _tool("dig"), f"@{server[0]}", "-p", str(server[1]),
            "+tries=1", "+time=3", *args, name, rtype]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)


def dig_flags(output: str) -> set[str]:
    """The header flags of a `dig` answer ("qr", "aa", "rd", "ra", "ad", ...)."""
    found = re.search(r";; flags: ([a-z ]+);", output)
    return set(found.group(1).split()) if found else set()


def dig_status(output: str) -> str | None:
    found = re.search(r"status: ([A-Z]+)", output)
    return found.group(1) if found else None


def dig_query_ms(output: str) -> int | None:
    """dig's own measurement of the query (";; Query time: N msec")."""
    found = re.search(r";; Query time: (\d+) msec", output)
    return int(found.group(1)) if found else None
