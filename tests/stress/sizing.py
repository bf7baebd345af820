"""How big a fault or load test runs.

`make test` runs every test in tests/stress at the small size, bounded to a few minutes on a
2-core machine; `make stress` sets TAPS_STRESS=1 and the same tests run at the large size. A
test asks `sized(small, large)` for its count and never reads the variable itself.
"""

from __future__ import annotations

import os

STRESS = os.environ.get("TAPS_STRESS", "") not in ("", "0")


def sized(small: int, large: int) -> int:
    """`large` under `make stress`, else `small`."""
    return large if STRESS else small
