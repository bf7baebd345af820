"""Which resolvers this machine uses: /etc/resolv.conf and systemd-resolved's per-link servers.

Rule 1: resolv.conf is read as glibc reads it (resolv.conf(5)): `nameserver` lines in order, at
most three (glibc ignores the rest, so a fourth would make us ask a server the system never
asks), `search` and `domain` where the last one wins, `options ndots: timeout: attempts:
trust-ad`, comments starting with `;` or `#`; `$RES_OPTIONS` and `$LOCALDOMAIN` as glibc
applies them. A line we cannot parse is skipped, as glibc
does, never an error: a broken resolv.conf must not break a connection that getaddrinfo would
still make. `$TAPS_POST_RESOLV_CONF` names another file (tests, containers).
Rule 2: no nameserver line means no nameserver here (glibc would try 127.0.0.1): the caller
then falls back to getaddrinfo, which does exactly what glibc does, so nothing is guessed twice.
Rule 3: systemd-resolved's per-link servers (`DNS=` in /run/systemd/resolve/netif/<ifindex>,
the directory overridable with `$TAPS_POST_RESOLVED_LINKS`) are added after the resolv.conf
servers as `Nameserver(interface=name, per_link=True)`, so a cache flush for an interface can
drop what they said; one whose address and port resolv.conf already lists is not added twice.
They are not added at all when resolv.conf names systemd-resolved's own stub (127.0.0.53,
127.0.0.54): resolved already asks them, per link and per domain, and asking them here would
ask servers glibc never asks (Rule 1) and send one link's names (a VPN's) to another link.
A link-local nameserver written with a zone (`fe80::1%eth0`) is tied to that interface the
same way (it stays a resolv.conf server).
Rule 4: reading costs a `stat`: the parsed config is kept under each file's
(path, st_mtime_ns, st_size, st_ino) and the same `ResolverConfig` object is returned while
nothing changed, so a caller can key on it (`client.default_client()` does).
Rule 5: `trusts(ns)` is the DANE trust question (docs/resolution.md, "What AD trust means"),
answered as glibc answers it (2.31+): the AD bit counts only when resolv.conf (or
`$RES_OPTIONS`) says `options trust-ad`, the administrator's statement that the path to these
servers is secure and that they validate, and only for the servers resolv.conf itself lists.
A per-link server from systemd-resolved's link files (Rule 3) is never trusted, whatever its
address: it is whatever resolver the local network handed out. A loopback server is not
trusted without trust-ad either: Docker's 127.0.0.11, dnsmasq with proxy-dnssec and
systemd-resolved with DNSSEC=no relay an upstream's AD bit without validating it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..decision.names import normal
from .hosts import hosts_lookup

__all__ = ["MAX_NAMESERVERS", "RESOLVED_STUBS", "Nameserver", "ResolverConfig", "hosts_lookup",
           "parse_link_file", "parse_resolv_conf", "system_config"]

MAX_NAMESERVERS = 3
"""glibc's MAXNS."""

_DEFAULT_PATH = "/etc/resolv.conf"
_LINKS_DIR = "/run/systemd/resolve/netif"
RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})
"""systemd-resolved's stub listeners (Rule 3)."""


@dataclass(frozen=True, slots=True)
class Nameserver:
    """One server to ask: an address (an IPv6 one may carry `%zone`), a port, the interface
    it belongs to when the system tied it to one, and whether it came from a systemd-resolved
    link file rather than resolv.conf (Rule 3; such a server is never trusted, Rule 5)."""

    address: str
    port: int = 53
    interface: str | None = None
    per_link: bool = False

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.address.split("%")[0]).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """What resolv.conf (and systemd-resolved) say, as values (Rule 1)."""

    nameservers: tuple[Nameserver, ...]
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2
    trust_ad: bool = False
    source: str = ""
    """The file it was read from, for explain and error messages."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Lines that were skipped, with their line numbers."""

    def names_for(self, name: str) -> tuple[str, ...]:
        """The names glibc's res_search tries for `name`, in order (resolv.conf(5)): only
        the name itself when it ends with a dot; the name first and then each search domain
        when it has at least `ndots` dots; the search domains first otherwise."""
        if name.endswith("."):
            return (normal(name),)
        name = normal(name)
        searched = tuple(f"{name}.{domain}" for domain in self.search)
        if name.count(".") >= self.ndots:
            return (name, *searched)
        return (*searched, name)

    def trusts(self, ns: Nameserver) -> bool:
        """May the AD bit in this server's answer be believed? Only with `options trust-ad`,
        and only for one of this config's own (resolv.conf) servers (Rule 5)."""
        return self.trust_ad and not ns.per_link and ns in self.nameservers


def _nameserver(text: str, interface: str | None = None, *,
                ports: bool = True) -> Nameserver | None:
    """`192.0.2.1`, `fd00::1`, `fe80::1%eth0`, and with `ports` systemd's `addr#sni`,
    `[v6]:port`, `v4:port` forms (resolv.conf has no port: glibc skips such a line); None
    for anything else."""
    if not ports and ("#" in text or "[" in text or text.count(":") == 1):
        return None
    text = text.split("#", 1)[0].strip()
    port = 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        text = host
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            return None
        text, port = host, int(p)
    address, _, zone = text.partition("%")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    if zone and ip.version == 6:
        return Nameserver(f"{ip.compressed}%{zone}", port, interface or zone)
    return Nameserver(ip.compressed, port, interface)


def _number(value: str, low: int, high: int, default: int) -> int:
    """glibc's clamps (resolv.conf(5)); a malformed value keeps the default."""
    try:
        n = int(value)
    except ValueError:
        return default
    return max(low, min(high, n))


def _options(args: list[str], into: dict[str, int]) -> None:
    for option in args:
        name, _, value = option.partition(":")
        if name == "ndots":
            into["ndots"] = _number(value, 0, 15, into["ndots"])
        elif name == "timeout":
            into["timeout"] = _number(value, 1, 30, into["timeout"])
        elif name == "attempts":
            into["attempts"] = _number(value, 1, 5, into["attempts"])
        elif name == "trust-ad":
            into["trust_ad"] = 1
        # edns0 and the rest: queries here always carry EDNS0 (client.py, Rule 2).


def parse_resolv_conf(text: str, source: str = "", *, res_options: str = "",
                      localdomain: str | None = None) -> ResolverConfig:
    """A resolv.conf's text as a ResolverConfig (Rule 1). Pure: tests feed it strings.
    `res_options` and `localdomain` are glibc's `$RES_OPTIONS` (applied after the file's
    options) and `$LOCALDOMAIN` (replaces the search list)."""
    servers: list[Nameserver] = []
    search: tuple[str, ...] = ()
    opts = {"ndots": 1, "timeout": 5, "attempts": 2, "trust_ad": 0}
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        words = line.split()
        keyword, args = words[0], words[1:]
        if keyword == "nameserver" and args:
            ns = _nameserver(args[0], ports=False)
            if ns is None:
                warnings.append(f"{source}:{number}: not an address: {args[0]}")
            elif len(servers) < MAX_NAMESERVERS:
                servers.append(ns)
            else:
                warnings.append(f"{source}:{number}: more than {MAX_NAMESERVERS} "
                                "nameservers, ignored as glibc does")
        elif keyword in ("search", "domain"):
            search = _domains(args)
        elif keyword == "options":
            _options(args, opts)
        else:
            warnings.append(f"{source}:{number}: unknown line: {line[:60]}")
    _options(res_options.split(), opts)
    if localdomain is not None:
        search = _domains(localdomain.split())
    return ResolverConfig(tuple(servers), search, opts["ndots"], float(opts["timeout"]),
                          opts["attempts"], bool(opts["trust_ad"]), source, tuple(warnings))


def _domains(args: list[str]) -> tuple[str, ...]:
    names = [a for a in args if not a.startswith((";", "#"))]
    return tuple(normal(n) for n in names if normal(n))


def parse_link_file(text: str, interface: str) -> tuple[Nameserver, ...]:
    """The `DNS=` servers of one systemd-resolved link state file (Rule 3)."""
    servers: list[Nameserver] = []
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "DNS":
            for word in value.split():
                ns = _nameserver(word, interface)
                if ns is not None:
                    ns = replace(ns, per_link=True)
                    if ns not in servers:
                        servers.append(ns)
    return tuple(servers)


_Stamp = tuple[str, int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _link_files(directory: str) -> tuple[tuple[str, str, _Stamp], ...]:
    """(interface, path, stamp) of each link file whose ifindex names an interface."""
    try:
        entries = sorted(os.listdir(directory), key=lambda e: (len(e), e))
    except OSError:
        return ()
    found = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            name = socket.if_indextoname(int(entry))
        except OSError:
            continue  # a link that is gone: its servers are unreachable anyway
        path = os.path.join(directory, entry)
        found.append((name, path, _stamp(path)))
    return tuple(found)


_cached: tuple[object, ResolverConfig] | None = None


def system_config(path: str | None = None, links: str | None = None) -> ResolverConfig:
    """This machine's resolvers now (Rules 1-4); the same object while no file changed."""
    global _cached
    path = path or os.environ.get("TAPS_POST_RESOLV_CONF") or _DEFAULT_PATH
    links = links or os.environ.get("TAPS_POST_RESOLVED_LINKS") or _LINKS_DIR
    link_files = _link_files(links)
    env = (os.environ.get("RES_OPTIONS", ""), os.environ.get("LOCALDOMAIN"))
    key = (_stamp(path) or path, link_files, env)
    if _cached is not None and _cached[0] == key:
        return _cached[1]
    config = parse_resolv_conf(_read(path), path, res_options=env[0], localdomain=env[1])
    stub = any(ns.address in RESOLVED_STUBS for ns in config.nameservers)
    extra = [] if stub else [ns for name, link, _st in link_files
                             for ns in parse_link_file(_read(link), name)]
    listed = {(ns.address, ns.port) for ns in config.nameservers}
    extra = [ns for ns in extra if (ns.address, ns.port) not in listed]
    if extra:
        servers = list(config.nameservers)
        servers += [ns for ns in extra if ns not in servers]
        config = ResolverConfig(tuple(servers), config.search, config.ndots, config.timeout,
                                config.attempts, config.trust_ad, config.source,
                                config.warnings)
    _cached = (key, config)
    return config
