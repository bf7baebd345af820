"""The DNS client across two network namespaces (root): AD trust when the validating resolver
is not on this machine, and per-link nameservers asked through their own interface.

The lab's knot and validating unbound run in host B; host A's /etc/resolv.conf names unbound
at 198.18.1.2 and fd00:1::2 (tests/dnslab.py namespace mode). unbound validates the signed
zone and sets AD either way; the client believes it only when the system says so:
`options trust-ad` (glibc's switch, resolver/conf.py Rule 5). The client runs in host A from the
installed package and reads A's real /etc/resolv.conf through `system_config()`.
A nameserver with an interface is asked from a socket bound to it (resolver/transport.py
Rule 2): nftables counters in A see which link the queries leave by, and a drop rule in B
makes the resolver reachable through one link only.
"""

from __future__ import annotations

from typing import Any

from dnslab import example_zone, lab
from netns import A1, A2, B1_V4, B1_V6, Topology, topology_fixture

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



BOUND = r'''
import asyncio, json, sys
from taps_post.resolver.client import DnsClient
from taps_post.resolver.conf import Nameserver, ResolverConfig

async def main():
    out = []
    for spec in sys.argv[2:]:  # INTERFACE:NAME ("-" = no interface)
        interface, name = spec.split(":")
        ns = Nameserver(sys.argv[1], 53, None if interface == "-" else interface)
        client = DnsClient(ResolverConfig((ns,), timeout=0.5, attempts=1))
        answer = await client.query(name, "A")
        out.append([answer.status, len(answer.addresses)])
    print(json.dumps(out))

asyncio.run(main())
'''

LOOPBACK = r'''
import asyncio, json, socket, threading
import dns.message, dns.rrset
from taps_post.resolver.client import DnsClient
from taps_post.resolver.conf import Nameserver, ResolverConfig

server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 0))

def answer_once():
    wire, peer = server.recvfrom(65535)
    reply = dns.message.make_response(dns.message.from_wire(wire))
    reply.answer.append(dns.rrset.from_text("svc.lab.test.", 60, "IN", "A", "198.18.1.2"))
    server.sendto(reply.to_wire(), peer)

threading.Thread(target=answer_once, daemon=True).start()
ns = Nameserver("127.0.0.1", server.getsockname()[1], "veth-a2")
client = DnsClient(ResolverConfig((ns,), timeout=2, attempts=1))
answer = asyncio.run(client.query("svc.lab.test", "A"))
print(json.dumps([answer.status, len(answer.addresses)]))
'''


def _many_zone() -> Any:
    zone = example_zone()
    for n in range(1, 101):  # 100 A records: more than a 1232-byte UDP answer holds
        zone.add("many", 300, "A", f"198.18.3.{n}")
    return zone


def test_a_per_link_nameserver_is_asked_through_its_interface(topo: Topology) -> None:
    """transport.py Rule 2. B's 198.18.1.2 is reachable from A through either link (the
    cross routes; the routing table prefers veth-a1). A nameserver tied to veth-a2: the
    egress counters (nftables postrouting, after the kernel chose) see its UDP query and the
    TCP retry of a truncated answer leave by veth-a2 only. Then B drops DNS that arrives
    on veth-b2, so the resolver is reachable through veth-a1 only: tied to veth-a2 the query
    times out, tied to veth-a1 or to no interface it is answered. A loopback nameserver
    with an interface is never bound (bound to veth-a2 it could not be reached at all)."""
    with lab(_many_zone(), topo=topo, signed=False):
        topo.count_egress(topo.a, [A1, A2], ports=[53])
        via_a2 = topo.run_python(topo.a, BOUND, B1_V4, "veth-a2:svc.lab.test",
                                 "veth-a2:many.lab.test")
        packets = topo.egress_packets(topo.a)
        assert via_a2 == [["ok", 1], ["ok", 100]]
        # UDP svc, UDP many (truncated), TCP SYN, query, ACKs..., nothing by veth-a1.
        assert packets[A1] == 0 and packets[A2] >= 4, packets
        topo.nft(topo.b, 'table inet dnsdrop {\n  chain in { type filter hook input '
                 'priority 0; policy accept;\n    iifname "veth-b2" th dport 53 drop\n  }\n}\n')
        only_a1 = topo.run_python(topo.a, BOUND, B1_V4, "veth-a2:svc.lab.test",
                                  "veth-a1:svc.lab.test", "-:svc.lab.test")
        assert only_a1 == [["timeout", 0], ["ok", 1], ["ok", 1]]
        assert topo.run_python(topo.a, LOOPBACK) == ["ok", 1]
