"""Debian's nginx as a test peer: HTTP/1.1 and HTTP/2 over TLS, and plain http.

`nginx_conf(root, cert, ...)` writes a config whose pid, logs and temp paths are under
`root`; `nginx(root, conf, ports, netns=...)` runs it in the foreground (a tests/dnslab.py
`Daemon`) until the block ends, and stops it. A module of its own, not a conftest: tests
import it by name, whichever other conftest pytest loaded first.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import taps_post as tp
from dnslab import Daemon

NGINX = "/usr/sbin/nginx"


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
          netns: str | None = None) -> Iterator[Daemon]:
    """Run nginx (in `netns`, if given) until the block ends; waits until every (host, port)
    in `ports` accepts (checked from this process, or with `ss` inside the namespace)."""
    if not os.path.exists(NGINX):
        pytest.skip(f"{NGINX} is not installed (Debian package nginx-light or nginx)")
    daemon = Daemon([NGINX, "-p", str(root), "-c", str(conf), "-g", "daemon off;"],
                    netns=netns, log=root / "nginx.out", label="nginx")
    try:
        deadline = time.monotonic() + 5
        pending = list(ports)
        while pending:
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx not listening on {pending}; log:\n{daemon.log()}")
            host, port = pending[0]
            if netns:
                listening = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htln"],
                                           capture_output=True, text=True,
                                           check=False).stdout
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
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root / "body", ignore_errors=True)
