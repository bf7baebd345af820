"""`taps-post rendezvous serve`, run as a subprocess exactly as an administrator runs it.

It checks its input before it listens (exit 2, one line naming the option or file, never a
traceback), prints `listening on HOST:PORT` with the bound port once ready, relays offers
between two clients that authenticate with pinned certificates (both pins in one --trust
file, a third in another), logs identities and sizes but never an offer, and exits 0 on
SIGTERM and on SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import taps_post as tp
from helpers import PYTHON, installed_env, run_cli

LO4 = "127.0.0.1"
POINT = tp.certs.self_signed(["localhost", LO4])
ALICE = tp.certs.self_signed(["alice"])
BOB = tp.certs.self_signed(["bob"])
CAROL = tp.certs.self_signed(["carol"])
MARKER = "offer-marker-7f3a9c"
"""In the offers: the point must never print it."""


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    files = {"cert": POINT.cert_pem, "key": POINT.key_pem or "",
             "pins": ALICE.cert_pem + BOB.cert_pem, "carol": CAROL.cert_pem,
             "empty": "nothing here\n"}
    out = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_text(text)
        out[name] = str(path)
    return out


def serve_argv(pems: dict[str, str], *extra: str) -> list[str]:
    return [*PYTHON, "-m", "taps_post.cli", "rendezvous", "serve", "--listen", f"{LO4}:0",
            "--certificate", pems["cert"], pems["key"], "--trust", pems["pins"],
            "--trust", pems["carol"], "--no-system", *extra]


def first_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the point printed nothing in time"
    return proc.stdout.readline().strip()


@pytest.fixture
def point(pems: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(serve_argv(pems, "--ttl", "5", "--queue", "4", "--verbose"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=installed_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_serve_relays_offers_and_stops_cleanly_on_sigterm(point: subprocess.Popen[str]) -> None:
    from taps_post.runtime.rendezvous_client import RendezvousClient

    line = first_line(point)
    assert line.startswith(f"listening on {LO4}:"), line
    port = int(line.rpartition(":")[2])
    assert port > 0
    via = tp.Remote.parse(f"tls://{LO4}:{port}", certificates=[POINT])

    async def main() -> None:
        policy = tp.PolicyContext(system=[], app_name="cli-rendezvous-test")
        alice, bob = (RendezvousClient(via, tp.Local(certificates=[c]), policy,
                                       initiate=tp.initiate, store=tp.AssociationStore())
                      for c in (ALICE, BOB))
        try:
            await alice.send("alice", "bob", {"secret": MARKER})
            assert await bob.receive("bob", "alice", 5) == {"secret": MARKER}
        finally:
            await alice.aclose()
            await bob.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))
    point.send_signal(signal.SIGTERM)
    out, err = point.communicate(timeout=10)
    assert point.returncode == 0, err
    assert "Traceback" not in err
    assert "alice -> bob" in err  # --verbose: identities and sizes
    assert MARKER not in err and MARKER not in out


def test_serve_exits_0_on_sigint(pems: dict[str, str]) -> None:
    proc = subprocess.Popen(serve_argv(pems), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=installed_env())
    try:
        assert first_line(proc).startswith("listening on ")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def exit_2(*argv: str) -> str:
    started = time.monotonic()
    proc = run_cli("rendezvous", "serve", *argv)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert time.monotonic() - started < 30
    return proc.stderr


def test_bad_input_is_exit_2_naming_it(pems: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-cert.pem")
    good = ["--certificate", pems["cert"], pems["key"], "--trust", pems["pins"]]
    err = exit_2("--listen", f"{LO4}:0", "--certificate", missing, pems["key"],
                 "--trust", pems["pins"])
    assert missing in err and "No such file" in err
    err = exit_2("--listen", "localhost:7443", *good)
    assert "--listen" in err and "HOST:PORT" in err
    err = exit_2("--listen", f"{LO4}:70000", *good)
    assert "--listen" in err
    err = exit_2("--listen", f"{LO4}:0", "--certificate", pems["cert"], pems["key"],
                 "--trust", pems["empty"])
    assert pems["empty"] in err and "no PEM certificate" in err
    err = exit_2("--listen", f"{LO4}:0", "--certificate", pems["cert"], pems["pins"],
                 "--trust", pems["pins"])  # a certificate where the key should be
    assert "--certificate" in err
    err = exit_2("--listen", f"{LO4}:0", "--certificate", pems["cert"], "/dev/null",
                 "--trust", pems["pins"])
    assert "/dev/null" in err and "not a regular file" in err
    err = exit_2("--listen", f"{LO4}:0", *good, "--queue", "0")
    assert "--queue" in err
    err = exit_2("--listen", f"{LO4}:0", *good, "--ttl", "nan")
    assert "--ttl" in err
    err = exit_2("--listen", f"{LO4}:0", "--certificate", pems["cert"], pems["key"])
    assert "--trust" in err  # argparse: required
    assert os.path.exists(pems["cert"])
