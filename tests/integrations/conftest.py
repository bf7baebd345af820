"""Shared fixtures for the integration tests (real sockets, a real nginx, no mocks).

As in tests/runtime/conftest.py: no pytest-asyncio, a test calls `run(coro)` (bounded in
time), and every policy is built with `system=[]` so the machine's system policy never leaks
in. `nginx_server(tmp_path, ...)` starts Debian's nginx in the foreground with a config, pid,
logs and temp paths under the test's tmp directory, and stops it (by its own pid) afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

import taps_post as tp  # noqa: E402

NGINX = "/usr/sbin/nginx"


def _run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def run() -> Callable[..., Any]:
    """`run(coro, timeout=10.0)`: asyncio.run with the whole coroutine bounded in time."""
    return _run


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def nginx_conf(root: Path, cert: tp.certs.Certificate, listens_tls: list[str],
               listens_plain: list[str]) -> Path:
    """An nginx config under `root`: TLS (http/1.1 and h2 by ALPN) on `listens_tls`, plain
    http on `listens_plain`; every path nginx writes is under `root`."""
    (root / "logs").mkdir(exist_ok=True)
    (root / "cert.pem").write_text(cert.cert_pem)
    key = root / "key.pem"
    key.write_text(cert.key_pem or "")
    key.chmod(0o600)
    tls = "\n".join(f"    listen {a} ssl http2;" for a in listens_tls)
    plain = "\n".join(f"    listen {a};" for a in listens_plain)
    conf = root / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  server {{
{tls}
{plain}
    ssl_certificate {root}/cert.pem; ssl_certificate_key {key};
    location / {{ return 200 "hello from nginx\\n"; }}
  }}
}}
""")
    return conf


@contextmanager
def nginx(root: Path, conf: Path, ports: list[tuple[str, int]],
          prefix: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run nginx (optionally under `prefix`, such as `ip netns exec NS`) until the block
    ends; waits until every (host, port) in `ports` accepts (checked from this process
    unless a prefix is given: then the config's error log must stay empty and nginx must run)."""
    if not os.path.exists(NGINX):
        pytest.skip(f"{NGINX} is not installed (Debian package nginx-light or nginx)")
    cmd = [*(prefix or []), NGINX, "-p", str(root), "-c", str(conf), "-g", "daemon off;"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        pending = list(ports)
        while pending:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx not listening on {pending}")
            host, port = pending[0]
            if prefix:
                listening = subprocess.run([*prefix, "ss", "-Htln"], capture_output=True,
                                           text=True, check=False).stdout
                if f":{port} " in listening:
                    pending.pop(0)
                else:
                    time.sleep(0.02)
                continue
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    pending.pop(0)
            except OSError:
                time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root / "body", ignore_errors=True)
