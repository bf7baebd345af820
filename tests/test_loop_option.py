"""`--loop` is not a no-op: the loop a test's asyncio.run() starts is the one asked for."""

from __future__ import annotations

import asyncio

import pytest

import taps_post as tp


def test_asyncio_run_gets_the_loop_asked_for(pytestconfig: pytest.Config) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = asyncio.run(which())
    if pytestconfig.getoption("--loop") == "uvloop":
        assert module.startswith("uvloop")
    else:
        assert module.startswith("asyncio")


def test_a_carrier_on_the_loop_asked_for(pytestconfig: pytest.Config) -> None:
    """One message each way over loopback TCP, on whichever loop runs the suite."""
    async def exchange() -> tuple[bytes, str]:
        ctx = tp.PolicyContext(system=[], app_name="t")
        listener = await tp.listen(tp.Local(address="127.0.0.1", port=0), policy=ctx)
        try:
            client = await tp.initiate(f"tcp://127.0.0.1:{listener.port}", policy=ctx)
            server = await asyncio.wait_for(anext(aiter(listener)), 5)
            await client.send(b"ping")
            msg = await asyncio.wait_for(server.receive(), 5)
            await server.send(b"pong")
            back = await asyncio.wait_for(client.receive(), 5)
            await client.close()
            await server.close()
            return bytes(msg) + bytes(back), type(asyncio.get_running_loop()).__module__
        finally:
            await listener.close()

    data, module = asyncio.run(exchange())
    assert data == b"pingpong"
    assert module.startswith(pytestconfig.getoption("--loop"))
