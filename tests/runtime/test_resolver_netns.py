"""AD trust when the validating resolver is not on this machine (root, network namespaces).

The lab's knot and validating unbound run in host B; host A's /etc/resolv.conf names unbound
at 198.18.1.2 and fd00:1::2 (tests/dnslab.py namespace mode). unbound validates the signed
zone and sets AD either way; the client believes it only when the system says so: a
loopback resolver, or `options trust-ad` (glibc's switch). The client runs in host A from the
installed package and reads A's real /etc/resolv.conf through `system_config()`.
"""

from __future__ import annotations

from dnslab import lab
from netns import B1_V4, B1_V6, Topology, topology_fixture

topo = topology_fixture(prefix="tpr")

CLIENT = r'''
import asyncio, json
import dns.asyncquery, dns.flags, dns.message
from taps_post.resolver.client import DnsClient, default_client
from taps_post.resolver.conf import Nameserver, ResolverConfig, system_config

async def main():
    config = system_config()
    client = default_client()
    a = await client.query("svc.lab.test", "A")
    tlsa = await client.query("_443._tcp.svc.lab.test", "TLSA")
    v6 = await DnsClient(ResolverConfig((Nameserver("fd00:1::2"),))).query("svc.lab.test",
                                                                          "AAAA")
    query = dns.message.make_query("svc.lab.test", "A", want_dnssec=True)
    raw = await dns.asyncquery.udp(query, config.nameservers[0].address, timeout=3)
    print(json.dumps({
        "nameservers": [ns.address for ns in config.nameservers],
        "trust_ad": config.trust_ad,
        "a": [a.status, list(a.addresses), a.authenticated],
        "tlsa": [tlsa.status, len(tlsa.tlsa), tlsa.authenticated],
        "v6": [v6.status, list(v6.addresses), v6.authenticated],
        "raw_ad": bool(raw.flags & dns.flags.AD),
    }))

asyncio.run(main())
'''


def test_ad_from_a_remote_resolver_counts_only_with_trust_ad(topo: Topology) -> None:
    with lab(topo=topo):
        plain = topo.run_python(topo.a, CLIENT)
        assert plain["nameservers"] == [B1_V4, B1_V6] and not plain["trust_ad"]
        assert plain["raw_ad"], "unbound did not validate the lab zone"
        assert plain["a"] == ["ok", [B1_V4], False]
        assert plain["tlsa"] == ["ok", 1, False]
        assert plain["v6"] == ["ok", [B1_V6], False]
        topo.resolv_conf(topo.a, [B1_V4, B1_V6], ["trust-ad"])
        trusting = topo.run_python(topo.a, CLIENT)
        assert trusting["trust_ad"]
        assert trusting["a"] == ["ok", [B1_V4], True]
        assert trusting["tlsa"] == ["ok", 1, True]
