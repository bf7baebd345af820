"""The draft's patterns in docs/runtime.md run as they are written.

Every ```python block of docs/runtime.md whose first line is `# example: ...` is a whole
program: it is run in a fresh interpreter against the installed package, and must exit 0
and print what the block promises. The multicast one needs a network with a multicast route,
so it runs in a network namespace of its own (root only), where `eth0` is a veth with an
address and a route for 239.0.0.0/8.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import PYTHON, ROOT, installed_env

RUNTIME_MD = ROOT / "docs" / "runtime.md"
_BLOCK = re.compile(r"^```python\n(# example: ([^\n]*)\n.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = {m.group(2): m.group(1) for m in _BLOCK.finditer(RUNTIME_MD.read_text())}

EXPECTED = {
    "client-server (draft section 3.1.1, Figures 2 and 3)": "b'Hello!'\n",
    "responder (draft section 3.1.1, Figure 4)": "b'Hello!'\n",
    "happy eyeballs and 0-RTT (draft section 3.1.2)": "b'after the handshake'\nb'early'\n",
    "multicast receiver (draft section 3.1.4)": "b'to the group'\n",
    "peer to peer (draft section 3.1.3)": "host\nb'Hello, Bob!'\nb'on a fork'\n",
}


def test_every_pattern_of_the_draft_has_its_example() -> None:
    assert set(EXAMPLES) == set(EXPECTED)


def _run(code: str, tmp_path: Path, prefix: tuple[str, ...] = ()) -> str:
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([*prefix, *PYTHON, str(script)], capture_output=True, text=True,
                         timeout=60, env=installed_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("name", [n for n in EXPECTED if "multicast" not in n])
def test_example_runs(name: str, tmp_path: Path) -> None:
    assert _run(EXAMPLES[name], tmp_path) == EXPECTED[name]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a network namespace")
def test_multicast_example_runs_in_its_own_namespace(tmp_path: Path) -> None:
    ns = f"tapsdoc{uuid.uuid4().hex[:6]}"
    steps = [["ip", "netns", "add", ns],
             ["ip", "-n", ns, "link", "set", "lo", "up"],
             ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
             ["ip", "-n", ns, "addr", "add", "198.18.7.1/24", "dev", "eth0"],
             ["ip", "-n", ns, "link", "set", "peer0", "up"],
             ["ip", "-n", ns, "link", "set", "eth0", "up", "multicast", "on"],
             ["ip", "-n", ns, "route", "add", "239.0.0.0/8", "dev", "eth0"]]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        name = "multicast receiver (draft section 3.1.4)"
        assert _run(EXAMPLES[name], tmp_path, ("ip", "netns", "exec", ns)) == EXPECTED[name]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
