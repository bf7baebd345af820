"""Shared fixtures for the integration tests (real sockets, a real nginx, no mocks).

As in tests/runtime/conftest.py: no pytest-asyncio, a test calls `run(coro)` (bounded in
time), and every policy is built with `system=[]` so the machine's system policy never leaks
in. The nginx the tests talk to is tests/nginxlab.py's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from helpers import bounded_run  # noqa: E402


@pytest.fixture
def run() -> Callable[..., Any]:
    """`run(coro, timeout=10.0)`: asyncio.run with the whole coroutine bounded in time."""
    return bounded_run
