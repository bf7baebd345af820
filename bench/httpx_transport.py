"""httpx with taps_post.httpx.Transport vs httpx's default transport, same run, same nginx.

(Not bench/httpx.py: in bench/, which is a ruff src root and the script's sys.path[0], a
file named httpx.py would shadow the httpx package.)

Starts a loopback nginx (TLS with h2 and http/1.1, plain http) under a temp directory, then
for each transport and mode takes the median over ROUNDS rounds of N sequential GETs:
  fresh:     a new AsyncClient per round, so the round includes connecting (TCP + TLS);
  keepalive: one client, one warm connection, N requests on it.
Prints ms per request and the taps_post / default ratio. Run:
    .venv/bin/python -P bench/httpx_transport.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import taps_post as tp
import taps_post.httpx as tph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dnslab import free_port
from nginxlab import nginx, nginx_conf


async def rounds(make: Any, url: str, n: int, count: int, fresh: bool, **kw: Any) -> float:
    """Median ms per request over `count` rounds of `n` requests."""
    out: list[float] = []
    client = None if fresh else httpx.AsyncClient(transport=make(), **kw)
    if client is not None:
        await client.get(url)  # warm the connection
    for _ in range(count):
        t0 = time.perf_counter()
        if fresh:
            async with httpx.AsyncClient(transport=make(), **kw) as c:
                for _ in range(n):
                    (await c.get(url)).raise_for_status()
        else:
            assert client is not None
            for _ in range(n):
                (await client.get(url)).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000 / n)
    if client is not None:
        await client.aclose()
    return statistics.median(out)


async def main(n: int, count: int, cert: tp.certs.Certificate, tls: int, plain: int,
               ca: str) -> None:
    policy = tp.PolicyContext(system=[], app_name="bench")
    ctx = ssl.create_default_context(cafile=ca)
    cases = [
        ("http/1.1 plain", f"http://127.0.0.1:{plain}/", False),
        ("http/1.1 tls", f"https://127.0.0.1:{tls}/", False),
        ("h2 tls", f"https://127.0.0.1:{tls}/", True),
    ]
    print(f"{n} sequential GETs per round, median of {count} rounds, ms per request")
    print(f"{'case':16} {'mode':10} {'default':>9} {'taps_post':>10} {'ratio':>6}")
    for name, url, h2 in cases:
        for fresh in (True, False):
            def ours(h2: bool = h2) -> httpx.AsyncBaseTransport:
                return tph.Transport(policy=policy, certificates=[cert], http2=h2)

            def theirs(h2: bool = h2) -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(verify=ctx, http2=h2)

            base = await rounds(theirs, url, n, count, fresh)
            mine = await rounds(ours, url, n, count, fresh)
            mode = "fresh" if fresh else "keepalive"
            print(f"{name:16} {mode:10} {base:9.3f} {mine:10.3f} {mine / base:6.2f}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory(prefix="bench-httpx-") as tmp:
        root = Path(tmp)
        cert = tp.certs.self_signed(["localhost", "127.0.0.1"])
        tls, plain = free_port(), free_port()
        conf = nginx_conf(root, cert, [f"127.0.0.1:{tls}"], [f"127.0.0.1:{plain}"])
        with nginx(root, conf, [("127.0.0.1", tls), ("127.0.0.1", plain)]):
            asyncio.run(main(n, count, cert, tls, plain, str(root / "cert.pem")))
