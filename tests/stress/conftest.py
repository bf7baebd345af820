"""Shared sizing for the fault and load suite (docs/reliability.md).

Sizing lives in `sizing.py` (`from sizing import sized`); this file only makes the runtime
suite's fixtures available here.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for p in (str(_HERE.parent), str(_HERE.parent / "runtime")):
    if p not in sys.path:
        sys.path.append(p)


def _runtime_fixtures() -> None:
    """The runtime suite's fixtures (run, until, make_policy, tcp_policy, store, ...) here too,
    so a fault test is written like any runtime test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("runtime_conftest",
                                                  _HERE.parent / "runtime" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in dir(module):
        obj = getattr(module, name)
        if hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction"):
            globals()[name] = obj


_runtime_fixtures()
