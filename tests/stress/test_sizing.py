"""The suite's own plumbing: the runtime fixtures reach this directory."""

from __future__ import annotations

import asyncio

from sizing import sized


def test_runtime_fixtures_are_shared(run, until) -> None:  # type: ignore[no-untyped-def]
    async def main() -> int:
        await until(lambda: True)
        await asyncio.sleep(0)
        return sized(1, 2)

    assert run(main()) in (1, 2)
