"""Hypothesis profiles for the fuzz targets (docs/reliability.md, "Bad input").

`make test` runs every target here under the `taps-ci` profile: no deadline (a loaded CI
machine must not fail a test for being slow) and each target's small example count, so the
whole directory stays within a minute. `make fuzz` sets TAPS_FUZZ=1: the `taps-fuzz` profile
multiplies every count by TAPS_FUZZ_FACTOR (default 100) and prints statistics. A target
asks `fuzzing.fuzz(n)` for its settings and never reads the variables itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_HERE = Path(__file__).resolve().parent
for p in (str(_HERE), str(_HERE.parent)):  # fuzzing.py, and tests/strategies.py, helpers.py
    if p not in sys.path:
        sys.path.append(p)

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("taps-ci", deadline=None, suppress_health_check=_QUIET,
                          print_blob=True)
settings.register_profile("taps-fuzz", deadline=None, suppress_health_check=_QUIET,
                          print_blob=True, report_multiple_bugs=True)
