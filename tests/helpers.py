"""Shared helpers for tests that run the real CLI and build small inline policies."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import struct
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def installed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A subprocess environment that imports the *installed* taps_post: no PYTHONPATH, and the
    interpreter is started with -P (see PYTHON), so neither the working tree nor the current
    directory can shadow the package under test."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra:
        env.update(extra)
    return env


PYTHON = (sys.executable, "-P")
"""How tests start Python: -P keeps the current directory off sys.path."""


def bounded_run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """asyncio.run with the whole coroutine bounded in time: what the `run` fixture of the
    runtime and integration tests returns."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # a level-triggered reader may fire again before the waiter runs
        ready.set_result(None)


async def sock_recvfrom(sock: Any, size: int) -> tuple[bytes, Any]:
    """`loop.sock_recvfrom(sock, size)` on any event loop: uvloop does not implement it
    (NotImplementedError), so wait for readability with add_reader, which every loop has."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, addr = sock.recvfrom(size)
        except (BlockingIOError, InterruptedError):
            pass
        else:
            return bytes(data), addr
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m taps_post.cli ARGS` as a user would, against the installed package."""
    full_env = installed_env(env)
    return subprocess.run([*PYTHON, "-m", "taps_post.cli", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=60, check=False)


def policy(layer: str, *rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": 1, "layer": layer, "rules": list(rules), **extra}


def quic_policy(app_name: str, **values: Any) -> Any:
    """A PolicyContext for QUIC only (`stack.quic: require`) plus `values`, without any
    system layer: what every QUIC test connects and listens with."""
    import taps_post as tp

    rule = {"id": "q", "set": {"stack.quic": "require", **values}}
    return tp.PolicyContext(system=[], app=policy("app", rule), app_name=app_name)


@functools.cache
def bench_relay() -> Any:
    """bench/relay.py as a module (the user-space delay relay: netem is not available here);
    bench/ is not a package, so it is loaded from its path, once."""
    spec = importlib.util.spec_from_file_location("taps_bench_relay", ROOT / "bench" / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frame(data: bytes) -> bytes:
    """`data` as the length-prefix framer puts it on the wire (for raw peers)."""
    return struct.pack("!I", len(data)) + data


ENV: dict[str, Any] = {
    "interfaces": [
        {"name": "lo", "type": "loopback", "addresses": ["127.0.0.1", "::1"]},
        {"name": "wlan0", "type": "wifi", "addresses": ["192.0.2.10", "2001:db8::10"]},
        {"name": "wwan0", "type": "cellular", "addresses": ["198.51.100.7"], "metered": True,
         "cost": 10},
    ],
    "dns": {"example.com": ["2001:db8::5", "203.0.113.5"]},
    "cache": [],
}


def disable_active_migration(quic: Any) -> None:
    """Make an aioquic server connection (`QuicConnection`) announce disable_active_migration
    (RFC 9000 section 18.2), which aioquic has no option for: what it serializes as its
    transport parameters is decoded, flagged and encoded again with aioquic's public codec."""
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import (
        pull_quic_transport_parameters,
        push_quic_transport_parameters,
    )

    serialize = quic._serialize_transport_parameters

    def with_flag() -> bytes:
        params = pull_quic_transport_parameters(Buffer(data=serialize()))
        params.disable_active_migration = True
        buf = Buffer(capacity=4096)
        push_quic_transport_parameters(buf, params)
        return bytes(buf.data)

    quic._serialize_transport_parameters = with_flag
