"""The resolver's configuration, hosts file and cache, on real files and numbers (no server).

conf.py and hosts.py read temp files named by their environment variables; the cache is
sans-I/O, so its clock is the `now` each test passes in.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from taps_post.decision.names import ServiceRecord
from taps_post.resolver import cache as cache_mod
from taps_post.resolver.cache import Answer, DnsCache
from taps_post.resolver.conf import (
    Nameserver,
    ResolverConfig,
    hosts_lookup,
    parse_link_file,
    parse_resolv_conf,
    system_config,
)

RESOLV = """\
# a comment
; another comment
nameserver 198.18.0.53
nameserver fd00::53
nameserver fe80::1%lo
nameserver 198.18.0.54
nameserver not-an-address
domain old.example
search Corp.Example. lab.example
options ndots:3 timeout:2 attempts:4 trust-ad edns0 rotate
options timeout:99
frobnicate yes
"""


def test_resolv_conf_is_read_as_glibc_reads_it() -> None:
    config = parse_resolv_conf(RESOLV, "rc")
    assert config.nameservers == (
        Nameserver("198.18.0.53"), Nameserver("fd00::53"),
        Nameserver("fe80::1%lo", 53, "lo"))
    assert config.search == ("corp.example", "lab.example")
    assert (config.ndots, config.timeout, config.attempts, config.trust_ad) == (3, 30.0, 4, True)
    assert config.source == "rc"
    assert any("more than 3" in w and "rc:6" in w for w in config.warnings)
    assert any("not an address" in w for w in config.warnings)
    assert any("unknown line" in w and "rc:12" in w for w in config.warnings)


def test_resolv_conf_defaults_and_last_search_wins() -> None:
    config = parse_resolv_conf("search a.example\ndomain b.example\noptions ndots:0 bogus:x\n")
    assert config.nameservers == ()
    assert config.search == ("b.example",)
    assert (config.ndots, config.timeout, config.attempts, config.trust_ad) == (0, 5.0, 2, False)
    bad = parse_resolv_conf("options ndots:x timeout: attempts:0\n")
    assert (bad.ndots, bad.timeout, bad.attempts) == (1, 5.0, 1)


def test_res_options_localdomain_and_no_ports() -> None:
    config = parse_resolv_conf("nameserver 127.0.0.1:5353\nnameserver [::1]:53\n"
                               "nameserver ::1\nsearch a.example\noptions ndots:2\n",
                               res_options="ndots:4 attempts:3", localdomain="B.example c")
    assert config.nameservers == (Nameserver("::1"),)  # glibc skips lines with a port
    assert (config.ndots, config.attempts, config.search) == (4, 3, ("b.example", "c"))


def test_trust_is_trust_ad_for_resolv_conf_servers_only() -> None:
    """conf.py Rule 5, glibc's rule: no trust-ad, no trust, loopback included (Docker's
    127.0.0.11, dnsmasq proxy-dnssec, resolved with DNSSEC=no relay an upstream's AD)."""
    plain = parse_resolv_conf("nameserver 127.0.0.53\nnameserver ::1\nnameserver 127.0.0.11\n"
                              "nameserver 198.18.0.1\n")
    assert [plain.trusts(ns) for ns in plain.nameservers] == [False, False, False]
    trusting = parse_resolv_conf("nameserver 198.18.0.1\nnameserver ::1\noptions trust-ad\n")
    assert [trusting.trusts(ns) for ns in trusting.nameservers] == [True, True]
    env = parse_resolv_conf("nameserver 127.0.0.1\n", res_options="trust-ad")
    assert env.trusts(env.nameservers[0])
    # A server the config does not list is not trusted, whatever its address.
    assert not trusting.trusts(Nameserver("198.18.0.2"))


def test_a_per_link_server_is_never_trusted(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """H1: resolv.conf's trust-ad does not reach systemd-resolved's per-link servers, not
    even a loopback one, nor one the file also names on another port."""
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 127.0.0.1\noptions edns0 trust-ad\n")
    links = tmp_path / "netif"
    links.mkdir()
    (links / str(socket.if_nametoindex("lo"))).write_text(
        "DNS=198.18.1.1 127.0.0.2 127.0.0.1#dot.example [127.0.0.1]:5353\n")
    for variable in ("RES_OPTIONS", "LOCALDOMAIN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(rc))
    monkeypatch.setenv("TAPS_POST_RESOLVED_LINKS", str(links))
    config = system_config()
    assert config.trust_ad
    # 127.0.0.1:53 is listed by resolv.conf already: not added again as a per-link server.
    assert config.nameservers == (
        Nameserver("127.0.0.1"), Nameserver("198.18.1.1", 53, "lo", per_link=True),
        Nameserver("127.0.0.2", 53, "lo", per_link=True),
        Nameserver("127.0.0.1", 5353, "lo", per_link=True))
    assert [config.trusts(ns) for ns in config.nameservers] == [True, False, False, False]
    link = ResolverConfig((Nameserver("127.0.0.1", 53, "lo", per_link=True),), trust_ad=True)
    assert not link.trusts(link.nameservers[0])


def test_per_link_servers_are_not_added_behind_resolveds_stub(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """L1: with 127.0.0.53 (or .54) in resolv.conf, resolved asks the links' servers itself,
    per link and per domain; asking them here would ask servers glibc never asks."""
    links = tmp_path / "netif"
    links.mkdir()
    (links / str(socket.if_nametoindex("lo"))).write_text("DNS=198.18.1.1\n")
    monkeypatch.setenv("TAPS_POST_RESOLVED_LINKS", str(links))
    monkeypatch.delenv("RES_OPTIONS", raising=False)
    for stub in ("127.0.0.53", "127.0.0.54"):
        rc = tmp_path / f"resolv-{stub}.conf"
        rc.write_text(f"nameserver {stub}\noptions edns0 trust-ad\nsearch .\n")
        monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(rc))
        config = system_config()
        assert config.nameservers == (Nameserver(stub),)
        assert config.trusts(config.nameservers[0])


def test_systemd_link_file_servers() -> None:
    text = ("# This is private data. Do not parse.\nLLMNR=yes\n"
            "DNS=198.18.1.1 fd00::1 [fd00::2]:5353 198.18.1.2:5300#dns.example bogus\n"
            "DOMAINS=example\n")
    assert parse_link_file(text, "eth9") == tuple(
        Nameserver(a, p, "eth9", per_link=True) for a, p in (
            ("198.18.1.1", 53), ("fd00::1", 53), ("fd00::2", 5353), ("198.18.1.2", 5300)))


def test_system_config_env_override_links_and_stat_cache(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 127.0.0.1\n")
    links = tmp_path / "netif"
    links.mkdir()
    lo = socket.if_nametoindex("lo")
    (links / str(lo)).write_text("DNS=198.18.9.9\n")
    (links / "999999").write_text("DNS=198.18.9.8\n")  # no such interface: skipped
    (links / "state").write_text("DNS=198.18.9.7\n")  # not an ifindex: skipped
    for variable in ("RES_OPTIONS", "LOCALDOMAIN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(rc))
    monkeypatch.setenv("TAPS_POST_RESOLVED_LINKS", str(links))
    first = system_config()
    assert first.nameservers == (Nameserver("127.0.0.1"),
                                 Nameserver("198.18.9.9", 53, "lo", per_link=True))
    assert first.source == str(rc)
    assert system_config() is first  # nothing changed: the same object
    rc.write_text("nameserver 127.0.0.2\n")
    os.utime(rc, ns=(1, 1))  # a new mtime even on a coarse clock
    second = system_config()
    assert second is not first
    assert second.nameservers[0] == Nameserver("127.0.0.2")
    (links / str(lo)).write_text("DNS=198.18.9.10 198.18.9.11\n")
    os.utime(links / str(lo), ns=(2, 2))
    assert system_config().nameservers[1:] == (
        Nameserver("198.18.9.10", 53, "lo", per_link=True),
        Nameserver("198.18.9.11", 53, "lo", per_link=True))
    monkeypatch.setenv("RES_OPTIONS", "trust-ad")
    assert system_config().trust_ad  # the environment is part of the configuration
    monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(tmp_path / "missing"))
    monkeypatch.setenv("TAPS_POST_RESOLVED_LINKS", str(tmp_path / "missing-dir"))
    assert system_config().nameservers == ()


def test_hosts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n198.18.0.5 Web.Example. web # comment\n"
                     "fd00::5 web.example\nfe80::5%lo web.example\n198.18.0.5 web.example\n"
                     "# 198.18.0.6 web.example\nnot-an-ip web.example\n")
    monkeypatch.setenv("TAPS_POST_HOSTS", str(hosts))
    assert hosts_lookup("WEB.example.") == ("198.18.0.5", "fd00::5", "fe80::5")
    assert hosts_lookup("web") == ("198.18.0.5",)
    assert hosts_lookup("other.example") is None
    hosts.write_text("198.18.0.7 other.example\n")
    os.utime(hosts, ns=(3, 3))
    assert hosts_lookup("other.example") == ("198.18.0.7",)
    assert hosts_lookup("web.example") is None
    monkeypatch.setenv("TAPS_POST_HOSTS", str(tmp_path / "missing"))
    assert hosts_lookup("other.example") is None


NS1 = Nameserver("127.0.0.1", 5301)
NS2 = Nameserver("198.18.0.53", 53, "eth1")


def _ok(name: str, rtype: str = "A", ttl: int | None = 60, ns: Nameserver = NS1) -> Answer:
    return Answer(name, rtype, "ok", ("198.18.0.1",), ttl=ttl, nameserver=ns)


def test_cache_counts_down_and_expires() -> None:
    cache = DnsCache()
    assert cache.put(("Web.Example.", "a"), _ok("web.example", ttl=10), now=100.0)
    hit = cache.get(("web.example", "A"), now=103.5)
    assert hit is not None and hit.from_cache and hit.ttl == 6
    assert cache.get(("web.example", "A"), now=109.99) is not None
    assert cache.get(("web.example", "A"), now=110.0) is None
    assert len(cache) == 0  # the expired entry was dropped


def test_cache_floor_and_cap() -> None:
    cache = DnsCache()
    cache.put(("zero", "A"), _ok("zero", ttl=0), now=0.0)
    cache.put(("week", "A"), _ok("week", ttl=604800), now=0.0)
    assert cache.get(("zero", "A"), now=0.9) is not None
    assert cache.get(("zero", "A"), now=1.0) is None
    assert cache.get(("week", "A"), now=3599.0) is not None
    assert cache.get(("week", "A"), now=3600.0) is None


def test_cache_negative_answers_per_rfc2308() -> None:
    cache = DnsCache()
    nx = Answer("gone", "A", "nxdomain", ttl=30, nameserver=NS1)
    nodata = Answer("v4only", "AAAA", "nodata", ttl=86400, nameserver=NS1)
    no_soa = Answer("nosoa", "A", "nodata", ttl=None, nameserver=NS1)
    assert cache.put(("gone", "A"), nx, 0.0) and cache.put(("v4only", "AAAA"), nodata, 0.0)
    assert not cache.put(("nosoa", "A"), no_soa, 0.0)
    hit = cache.get(("gone", "A"), 29.5)
    assert hit is not None and hit.negative and hit.status == "nxdomain"
    assert cache.get(("gone", "A"), 30.0) is None
    assert cache.get(("v4only", "AAAA"), 899.0) is not None
    assert cache.get(("v4only", "AAAA"), 900.0) is None


@pytest.mark.parametrize("status", ["servfail", "refused", "timeout", "error"])
def test_cache_keeps_no_failure(status: str) -> None:
    cache = DnsCache()
    failure = Answer("x", "A", status, nameserver=NS1)
    assert failure.failed and not failure.ok and not failure.negative
    assert not cache.put(("x", "A"), failure, 0.0)
    assert cache.get(("x", "A"), 0.0) is None


def test_cache_keeps_families_apart_and_service_ttls_follow() -> None:
    cache = DnsCache()
    cache.put(("h", "A"), _ok("h", "A", ttl=5), 0.0)
    cache.put(("h", "AAAA"), Answer("h", "AAAA", "ok", ("fd00::1",), ttl=50, nameserver=NS1), 0.0)
    svc = ServiceRecord(1, ".", ("h3",), ttl=20)
    cache.put(("h", "HTTPS"), Answer("h", "HTTPS", "ok", services=(svc,), ttl=20,
                                     nameserver=NS1), 0.0)
    assert cache.get(("h", "A"), 6.0) is None
    aaaa = cache.get(("h", "AAAA"), 6.0)
    assert aaaa is not None and aaaa.addresses == ("fd00::1",) and aaaa.ttl == 44
    https = cache.get(("h", "HTTPS"), 6.0)
    assert https is not None and https.services[0].ttl == 14 and https.services[0].alpn == ("h3",)


def test_cache_is_bounded_lru() -> None:
    cache = DnsCache(max_entries=3)
    for name in ("a", "b", "c"):
        cache.put((name, "A"), _ok(name), 0.0)
    assert cache.get(("a", "A"), 1.0) is not None  # a is now the most recently used
    cache.put(("d", "A"), _ok("d"), 1.0)
    assert len(cache) == 3
    assert cache.get(("b", "A"), 1.0) is None
    assert all(cache.get((n, "A"), 1.0) is not None for n in ("a", "c", "d"))
    assert cache_mod.MAX_ENTRIES == 4096 and DnsCache().max_entries == 4096


def test_cache_is_not_refilled_from_itself() -> None:
    cache = DnsCache()
    cache.put(("a", "A"), _ok("a", ttl=10), 0.0)
    hit = cache.get(("a", "A"), 5.0)
    assert hit is not None and not cache.put(("a", "A"), hit, 5.0)
    assert cache.get(("a", "A"), 9.5) is not None


def test_cache_flush_by_nameserver() -> None:
    cache = DnsCache()
    cache.put(("one", "A"), _ok("one", ns=NS1), 0.0)
    cache.put(("two", "A"), _ok("two", ns=NS2), 0.0)
    assert cache.flush([NS2]) == 1
    assert cache.get(("two", "A"), 0.0) is None and cache.get(("one", "A"), 0.0) is not None
    assert cache.flush() == 1 and len(cache) == 0


def test_client_flush_keeps_other_links() -> None:
    from taps_post.resolver.client import DnsClient

    config = ResolverConfig((NS1, NS2, Nameserver("198.18.1.53", 53, "eth2")))
    client = DnsClient(config)
    for name, ns in (("g", NS1), ("one", NS2), ("two", config.nameservers[2])):
        client.cache.put((name, "A"), _ok(name, ns=ns), 0.0)
    assert client.flush("eth1") == 2  # eth1's own server and the global one
    assert client.cache.get(("two", "A"), 0.0) is not None
    assert client.flush() == 1


@pytest.mark.parametrize("modules", [
    "taps_post", "taps_post.resolver.conf, taps_post.resolver.cache, taps_post.resolver.hosts"])
def test_only_the_client_imports_dnspython(modules: str) -> None:
    code = f"import sys, {modules}; print('dns' in sys.modules)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_default_client_follows_resolv_conf(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from taps_post.resolver.client import default_client

    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 127.0.0.1\n")
    monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(rc))
    monkeypatch.setenv("TAPS_POST_RESOLVED_LINKS", str(tmp_path / "no-links"))
    monkeypatch.delenv("RES_OPTIONS", raising=False)
    first = default_client()
    assert first is not None and first.config.nameservers == (Nameserver("127.0.0.1"),)
    first.cache.put(("a", "A"), _ok("a", ns=first.config.nameservers[0]), 0.0)
    assert default_client() is first  # same configuration: same client, same cache
    rc.write_text("nameserver 127.0.0.1\noptions trust-ad\n")
    second = default_client()
    assert second is not None and second is not first and second.config.trust_ad
    assert len(second.cache) == 0  # a new configuration starts with an empty cache
    rc.write_text("# no servers\n")
    assert default_client() is None


def test_cache_forget_by_name() -> None:
    cache = DnsCache()
    for key in (("web.example", "A"), ("web.example", "AAAA"), ("other", "A")):
        cache.put(key, _ok(key[0], key[1]), 0.0)
    assert cache.forget(["WEB.example."]) == 2
    assert len(cache) == 1 and cache.get(("other", "A"), 0.0) is not None


def test_search_names_as_glibc_tries_them() -> None:
    config = parse_resolv_conf("search corp.example lab.example\noptions ndots:2\n")
    assert config.names_for("svc") == ("svc.corp.example", "svc.lab.example", "svc")
    assert config.names_for("a.b.c") == ("a.b.c", "a.b.c.corp.example", "a.b.c.lab.example")
    assert config.names_for("Svc.Example.") == ("svc.example",)
    assert parse_resolv_conf("").names_for("svc") == ("svc",)


def test_dnspython_is_imported_by_client_py_alone() -> None:
    """resolver package Rule 1, read from the installed package's source."""
    import ast

    import taps_post

    root = Path(taps_post.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom)
                     and node.level == 0 else [])
            if any(n == "dns" or n.startswith("dns.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"resolver/client.py"}


def test_a_lookup_never_loads_dnspythons_transports_or_aioquic() -> None:
    """client.py Rule 1, in a fresh interpreter: importing the client and asking a question
    (to a local socket that stays silent) loads dnspython's message layer only, never
    dns.asyncquery, dns.quic or aioquic (a TCP initiate must not pay for QUIC)."""
    code = (
        "import asyncio, socket, sys\n"
        "from taps_post.resolver.client import DnsClient\n"
        "from taps_post.resolver.conf import Nameserver, ResolverConfig\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))\n"
        "ns = Nameserver('127.0.0.1', s.getsockname()[1])\n"
        "c = DnsClient(ResolverConfig((ns,), timeout=0.05, attempts=1))\n"
        "a = asyncio.run(c.query('svc.lab.test', 'HTTPS'))\n"
        "print(a.status, 'dns.message' in sys.modules, sorted(m for m in sys.modules if m in\n"
        "      ('dns.asyncquery', 'dns.query', 'dns.quic', 'dns.asyncbackend', 'aioquic')))\n")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["timeout", "True", "[]"], out.stderr


def test_cache_is_bounded_by_bytes_lru() -> None:
    """cache.py Rule 6: a name with 4000 addresses weighs what it holds; the bytes bound
    evicts the least recently used entries, and one answer above the bound is not kept."""
    many = Answer("many", "A", "ok", tuple(f"198.18.{n // 250}.{n % 250}" for n in range(4000)),
                  ttl=60, nameserver=NS1)
    assert cache_mod.size(many) > 4000 * 64
    assert cache_mod.MAX_BYTES == 4 * 1024 * 1024 and DnsCache().max_bytes == cache_mod.MAX_BYTES
    cache = DnsCache(max_bytes=3 * cache_mod.size(many) + 100)  # no room for a 4th entry
    for name in ("a", "b", "c"):
        assert cache.put((name, "A"), replace(many, name=name), 0.0)
    assert cache.get(("a", "A"), 1.0) is not None  # a is the most recently used now
    assert cache.put(("small", "A"), _ok("small"), 1.0)  # evicts b
    assert cache.put(("d", "A"), replace(many, name="d"), 1.0)  # evicts c
    assert [n for n in "abcd" if cache.get((n, "A"), 1.0) is not None] == ["a", "d"]
    assert cache.get(("small", "A"), 1.0) is not None
    assert cache.bytes <= cache.max_bytes
    tiny = DnsCache(max_bytes=cache_mod.size(many) - 1)
    assert not tiny.put(("many", "A"), many, 0.0) and len(tiny) == 0 and tiny.bytes == 0
    assert cache.forget(["a", "d", "small"]) == 3 and cache.bytes == 0


def test_an_nxdomain_for_the_name_itself_answers_every_type() -> None:
    """cache.py Rule 8 (RFC 2308 section 5): put with whole_name, an NXDOMAIN answers the
    name's other types while it lives; without it (it ended a CNAME chain), only its own."""
    cache = DnsCache()
    nx = Answer("gone.example", "A", "nxdomain", ttl=30, nameserver=NS1)
    assert cache.put(("gone.example", "A"), nx, 0.0, whole_name=True)
    aaaa = cache.get(("Gone.Example.", "AAAA"), 10.0)
    assert aaaa is not None and (aaaa.rtype, aaaa.status, aaaa.ttl) == ("AAAA", "nxdomain", 20)
    assert aaaa.from_cache and cache.get(("gone.example", "HTTPS"), 30.0) is None
    chained = Answer("alias.example", "A", "nxdomain", ttl=30, nameserver=NS1)
    assert cache.put(("alias.example", "A"), chained, 0.0)
    assert cache.get(("alias.example", "AAAA"), 1.0) is None
    assert cache.get(("alias.example", "A"), 1.0) is not None
    nodata = Answer("v4.example", "AAAA", "nodata", ttl=30, nameserver=NS1)
    assert cache.put(("v4.example", "AAAA"), nodata, 0.0, whole_name=True)
    assert cache.get(("v4.example", "A"), 1.0) is None  # NODATA: only that type is absent
    cache.put(("gone.example", "A"), nx, 40.0, whole_name=True)
    assert cache.forget(["gone.example"]) == 2 and cache.get(("gone.example", "TLSA"), 41) is None
