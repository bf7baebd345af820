"""What the first `initiate()` of a process costs, and which modules it imports.

Run from the repository root:

    .venv/bin/python -P bench/imports.py            # 7 runs per figure
    .venv/bin/python -P bench/imports.py --runs 3   # quicker

A server child (`--serve`) listens with taps_post on 127.0.0.1: plain TCP, and QUIC with a
fresh self-signed certificate. Each figure is then taken in fresh client interpreters, one per
run, with asyncio already imported (the application has its loop before it connects):

- import: `import taps_post` alone.
- first: the first `initiate()` of the process to ready (building the PolicyContext, the
  imports the call pulls in, the first decision, the connect), for a TCP and a QUIC target.
- first, imports done: the same, after the modules that call imports (found in a probe
  child: sys.modules after the call, minus before) were imported untimed. The difference
  to the warm figure is the first call's own work: the issue's limit is 50 ms.
- warm: the median of 30 later initiate() calls in the same process.

It also reports which modules a TCP initiate imports (aioquic must not be among them), and
`python -X importtime` totals (the sum of the self times of the modules imported) for
`import taps_post`, a TCP initiate and a QUIC initiate; importtime adds its own overhead, so
these totals are larger than the wall figures.

Every figure is the median of --runs fresh processes (p10/p90 beside). The script asserts
nothing about speed; it exits 2 on an internal error (a child that failed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import banner, run_main

SRC = Path(__file__).resolve().parent.parent

SERVER = r"""
import asyncio, sys, json
import taps_post as tp

async def main():
    cert = tp.certs.self_signed(["127.0.0.1"])
    open(sys.argv[1], "w").write(cert.cert_pem)
    ctx = tp.PolicyContext(system=[], app_name="bench")
    plain = await tp.listen(tp.Local(address="127.0.0.1", port=0), policy=ctx)
    secure = await tp.listen(tp.Local(address="127.0.0.1", port=0, certificates=[cert]),
                             policy=ctx)
    held = []
    plain.accept(held.append)
    secure.accept(held.append)
    print(json.dumps({"tcp": plain.port, "quic": secure.port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, statistics, sys, time
clock = time.perf_counter
stack, port, cert_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for name in sys.argv[4:]:  # what the first call would import, imported untimed
    try:
        __import__(name)
    except ImportError:  # a synthetic entry of sys.modules (a Cython helper), not a module
        pass
t0 = clock()
import taps_post as tp
import_ms = (clock() - t0) * 1000
before = set(sys.modules)

def target():
    if stack == "tcp":
        return f"tcp://127.0.0.1:{port}"
    cert = tp.certs.Certificate(open(cert_file).read())
    return tp.Remote.parse(f"quic://127.0.0.1:{port}", certificates=[cert])

async def main():
    t = clock()
    ctx = tp.PolicyContext(system=[], app_name="bench")
    c = await tp.initiate(target(), policy=ctx)
    first = (clock() - t) * 1000
    await c.close()
    new = sorted(set(sys.modules) - before)
    warm = []
    for _ in range(30):
        t = clock()
        c = await tp.initiate(target(), policy=ctx)
        warm.append((clock() - t) * 1000)
        await c.close()
    print(json.dumps({"import_ms": import_ms, "first_ms": first,
                      "warm_ms": statistics.median(warm), "new": new}))

asyncio.run(main())
"""


PYCACHE_PREFIX: str | None = None
"""Where the children keep bytecode (set by main()): an installed wheel has its .pyc files,
and a checkout run with PYTHONDONTWRITEBYTECODE=1 would compile taps_post at every start."""


def child_env() -> dict[str, str]:
    """The checkout on PYTHONPATH, bytecode written and reused like an install's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if PYCACHE_PREFIX is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE_PREFIX
    return env


def client(stack: str, port: int, cert: str, preimport: Sequence[str] = (),
           importtime: bool = False) -> tuple[dict[str, Any], str]:
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c",
            "import asyncio\n" + CLIENT, stack, str(port), cert, *preimport]
    done = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client ({stack}) failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime_totals(stderr: str, names: set[str]) -> tuple[float, float]:
    """(`import taps_post` cumulative ms, sum of self ms of the modules in `names`)."""
    root = 0.0
    total = 0.0
    for line in stderr.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        self_us, cumulative_us, name = int(m[1]), int(m[2]), m[4]
        indent = m[3][1:]  # one space follows the bar; the rest is the nesting
        if name == "taps_post" and not indent and not root:
            root = cumulative_us / 1000
        if name in names:
            total += self_us / 1000
    return root, total


def spread(xs: list[float]) -> str:
    ys = sorted(xs)
    p10 = ys[round(0.1 * (len(ys) - 1))]
    p90 = ys[round(0.9 * (len(ys) - 1))]
    return f"median {statistics.median(ys):8.1f} ms   p10 {p10:8.1f}   p90 {p90:8.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per figure (7)")
    args = ap.parse_args(argv)
    print(banner("first initiate() and imports"))
    global PYCACHE_PREFIX
    with tempfile.TemporaryDirectory() as tmp:
        PYCACHE_PREFIX = os.path.join(tmp, "pycache")
        cert = os.path.join(tmp, "cert.pem")
        server = subprocess.Popen([sys.executable, "-c", SERVER, cert], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=child_env())
        try:
            assert server.stdout is not None
            ports = json.loads(server.stdout.readline())
            report(args, ports, cert)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
    return 0


def report(args: argparse.Namespace, ports: dict[str, int], cert: str) -> None:
    summary: list[str] = []
    for stack in ("tcp", "quic"):
        client(stack, ports[stack], cert)  # compiles what it imports into the cache, untimed
        probe, _ = client(stack, ports[stack], cert)
        new = [n for n in probe["new"] if not n.startswith("__")]
        runs = [client(stack, ports[stack], cert)[0] for _ in range(args.runs)]
        pre = [client(stack, ports[stack], cert, new)[0] for _ in range(args.runs)]
        _, stderr = client(stack, ports[stack], cert, importtime=True)
        root, during = importtime_totals(stderr, set(new))
        first = [r["first_ms"] for r in runs]
        first_pre = [r["first_ms"] for r in pre]
        warm = [r["warm_ms"] for r in runs]
        own = statistics.median(first_pre) - statistics.median(warm)
        heavy = sorted({n.split(".")[0] for n in new} - {"taps_post"})
        print(f"\n[{stack}] {len(new)} modules imported by the first initiate(); "
              f"aioquic among them: {'yes' if any(n.startswith('aioquic') for n in new) else 'no'}")
        print(f"  third-party / stdlib packages it imports: {', '.join(heavy) or 'none'}")
        print(f"  import taps_post                 {spread([r['import_ms'] for r in runs])}")
        print(f"  first initiate() to ready        {spread(first)}")
        print(f"  first, its imports done          {spread(first_pre)}")
        print(f"  warm initiate() to ready         {spread(warm)}")
        print(f"  first call's own work (first with imports done - warm): {own:.1f} ms "
              f"(limit 50 ms: {'MEETS' if own <= 50 else 'MISSES'})")
        print(f"  -X importtime: import taps_post {root:.1f} ms cumulative; the modules the "
              f"first {stack} initiate() imports, summed self time {during:.1f} ms")
        summary.append(f"| {stack} | {statistics.median(first):.1f} | "
                       f"{statistics.median(first_pre):.1f} | {statistics.median(warm):.2f} | "
                       f"{own:.1f} | {during:.1f} | "
                       f"{'yes' if any(n.startswith('aioquic') for n in new) else 'no'} |")
    print("\n| initiate | first (ms) | first, imports done (ms) | warm (ms) | own work (ms, "
          "limit 50) | -X importtime of its imports (ms) | imports aioquic |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    run_main(main)
