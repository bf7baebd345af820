"""Suite-wide options.

`--loop uvloop` (or TAPS_POST_TEST_LOOP=uvloop) runs every test on uvloop instead of the
default asyncio loop: the tests start their loops with `asyncio.run()`, which asks the event
loop policy set here. `make test-uvloop` runs the suite that way; tests/test_loop_option.py
checks that the loop asked for is the loop the tests get.
"""

from __future__ import annotations

import asyncio
import os

import pytest

LOOPS = ("asyncio", "uvloop")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--loop", choices=LOOPS,
                     default=os.environ.get("TAPS_POST_TEST_LOOP", "asyncio"),
                     help="event loop every test runs on (default asyncio, or "
                          "$TAPS_POST_TEST_LOOP)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--loop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise pytest.UsageError("--loop uvloop needs uvloop: pip install "
                                    "'taps-post[uvloop]'") from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: {config.getoption('--loop')}"
