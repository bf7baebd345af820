"""Shared fixtures for the runtime tests (real sockets on loopback, no mocks).

Every policy here is built explicitly with `system=[]`, so the machine's own system policy
(`/etc/taps-post/policy.d`, `$TAPS_POST_SYSTEM_POLICY`) can never leak into a test.
No pytest-asyncio: a test calls `run(coro)`, which bounds the whole coroutine in time.
No test sleeps to synchronise: it awaits the event itself (a future its callback sets,
`receive()`, the object's own completion) or `await until(condition)`, which checks the
condition once per event-loop iteration. A sleep that remains is the behaviour under test
(a lifetime running out, an observation window) and says so.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

# `from helpers import ...` works from this directory too, whichever subset of tests runs.
_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

import taps_post as tp  # noqa: E402
from helpers import bounded_run  # noqa: E402

Run = Callable[..., Any]
MakePolicy = Callable[..., Any]
Until = Callable[..., Coroutine[Any, Any, None]]


def _make_policy(set_: dict[str, Any] | None = None, *, use: list[str] | None = None,
                 carrier: dict[str, Any] | None = None, app_name: str = "t") -> tp.PolicyContext:
    """An app layer with one rule `x` (`set_` and/or `use`), an optional carrier-layer `set`."""
    app = None
    if set_ is not None or use is not None:
        rule: dict[str, Any] = {"id": "x"}
        if set_ is not None:
            rule["set"] = set_
        if use is not None:
            rule["use"] = use
        app = {"version": 1, "layer": "app", "rules": [rule]}
    carrier_doc = None
    if carrier is not None:
        carrier_doc = {"version": 1, "layer": "carrier", "rules": [{"id": "c", "set": carrier}]}
    return tp.PolicyContext(system=[], app=app, carrier=carrier_doc, app_name=app_name)


async def _until(condition: Callable[[], object], timeout: float = 2.0,
                 what: str | Callable[[], str] | None = None) -> None:
    """Return as soon as `condition()` is true. It is checked once per event-loop iteration
    (`sleep(0)` in between lets every ready callback run), so this waits for the condition,
    never for a guessed duration; the timeout only bounds a failure. `what` (or a function
    giving it, evaluated at the timeout) says what was missing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"not true within {timeout} s: {detail or condition}")
        await asyncio.sleep(0)


async def _warm_loop() -> None:
    """Let the running loop make its one-time descriptors, so that a leak check taking its
    baseline after this counts only what the code under test opens: uvloop (libuv) opens a
    reserve descriptor with the loop's first stream transport (to shed connections when
    descriptors run out) and holds it until the loop closes. The transport made here is
    closed again before this returns (`wait_closed` waits for connection_lost)."""
    mine, theirs = socket.socketpair()
    with theirs:
        _, writer = await asyncio.open_connection(sock=mine)
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def run() -> Run:
    """`run(coro, timeout=10.0)`: asyncio.run with the whole coroutine bounded in time."""
    return bounded_run


@pytest.fixture
def until() -> Until:
    """`await until(lambda: condition, timeout=2.0, what="...")`: wait for a condition."""
    return _until


@pytest.fixture
def warm_loop() -> Callable[[], Coroutine[Any, Any, None]]:
    """`await warm_loop()` before a leak check's baseline (descriptors, tasks) is taken."""
    return _warm_loop


@pytest.fixture
def make_policy() -> MakePolicy:
    """`make_policy(set_dict, use=[...], carrier={...})` -> PolicyContext without system layer."""
    return _make_policy


@pytest.fixture
def tcp_policy() -> tp.PolicyContext:
    """Plain TCP only: the first candidate is a TCP one, so the explanation matches."""
    return _make_policy({"stack": {"tcp": "require"}})


@pytest.fixture
def store() -> tp.AssociationStore:
    """A fresh in-memory Association store, so tests never share tickets or history."""
    return tp.AssociationStore()


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port with nothing listening (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
