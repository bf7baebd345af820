"""Kernel features that need a namespace of their own: TCP Fast Open and multicast Sinks.

Each test builds a network namespace (Fast Open is a per-namespace sysctl; multicast needs a
real, non-loopback interface), runs a script inside it with `ip netns exec`, and deletes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to build network namespaces")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tpfeat-{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        # Two ends of one veth pair in one namespace: a real interface for multicast.
        sh("ip", "-n", name, "link", "add", "mc0", "type", "veth", "peer", "name", "mc1")
        sh("ip", "-n", name, "addr", "add", "198.18.9.1/24", "dev", "mc0")
        sh("ip", "-n", name, "addr", "add", "198.18.9.2/24", "dev", "mc1")
        sh("ip", "-n", name, "link", "set", "mc0", "up")
        sh("ip", "-n", name, "link", "set", "mc1", "up")
        sh("ip", "-n", name, "route", "add", "239.0.0.0/8", "dev", "mc0")
        # Both ends are local here, so let mc1 accept packets whose source is our own mc0.
        for key in ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.mc1.rp_filter=0",
                    "net.ipv4.conf.mc1.accept_local=1"):
            sh("ip", "netns", "exec", name, "sysctl", "-q", "-w", key)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=False)


def run_in(ns: str, code: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-P", "-c",
                           textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_idempotent_first_message_rides_in_the_syn_on_a_repeat_connection(netns: str) -> None:
    sh("ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=3")
    out = run_in(netns, """
        import asyncio, json
        import taps_post as tp

        async def main():
            pol = tp.PolicyContext(system=[], app_name="tfo")
            got = []
            async def serve(c):
                async for m in c:
                    got.append(bytes(m))
                    await c.send(b"ok " + bytes(m))
            lst = await tp.listen(tp.Local(address="127.0.0.1", port=0), policy=pol)
            lst.accept(lambda c: asyncio.ensure_future(serve(c)) and True)
            store = tp.AssociationStore()
            runs = []
            for i, idem in enumerate((True, True, False)):
                first = tp.OutMessage(b"GET %d" % i, idempotent=idem)
                c = await tp.initiate(f"tcp://127.0.0.1:{lst.port}", policy=pol, store=store,
                                      send=first)
                reply = bytes(await c.receive())
                t = c.transients[0]
                runs.append({"reply": reply.decode(), "early_sent": t.early_sent,
                             "in_syn": t.early_in_syn})
                await c.close()
            await lst.close()
            print(json.dumps({"runs": runs, "got": [g.decode() for g in got]}))

        asyncio.run(main())
    """)
    first, second, third = out["runs"]  # type: ignore[misc]
    assert out["got"] == ["GET 0", "GET 1", "GET 2"]  # each exactly once
    assert first == {"reply": "ok GET 0", "early_sent": True, "in_syn": False}  # cookie fetched
    assert second == {"reply": "ok GET 1", "early_sent": True, "in_syn": True}  # data in SYN
    assert third == {"reply": "ok GET 2", "early_sent": False, "in_syn": False}  # not idempotent


def test_sink_joined_to_a_multicast_group_receives_from_a_source(netns: str) -> None:
    out = run_in(netns, """
        import asyncio, json
        import taps_post as tp

        DATAGRAM = {"version": 1, "layer": "app",
                    "rules": [{"id": "dgram", "use": ["unreliable-datagram"]}]}

        async def main():
            pol = tp.PolicyContext(system=[], app=DATAGRAM, app_name="mc")
            sink = await tp.new_sink(tp.Local(address="239.1.2.3", port=0, interface="mc1"),
                                     policy=pol)
            source = await tp.new_source(tp.Local(interface="mc0"), f"239.1.2.3:{sink.port}",
                                         policy=pol)
            for i in range(3):
                await source.send(b"tick %d" % i)
            got = []
            async with asyncio.timeout(5):
                while len(got) < 3:
                    m = await sink.receive()
                    got.append([bytes(m).decode(), m.remote[0]])
            await source.close()
            await sink.close()
            print(json.dumps({"got": got, "source_stack": source.stack}))

        asyncio.run(main())
    """)
    assert out["source_stack"] == "udp"
    assert out["got"] == [["tick 0", "198.18.9.1"], ["tick 1", "198.18.9.1"],
                          ["tick 2", "198.18.9.1"]]
