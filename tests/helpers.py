"""Shared helpers for tests that run the real CLI and build small inline policies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m taps_post.cli ARGS` as a user would, with our sources first on the path."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(SRC) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "taps_post.cli", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=60, check=False)


def policy(layer: str, *rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": 1, "layer": layer, "rules": list(rules), **extra}


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
