"""The suite tests the installed package, never the working tree by accident.

`make test` installs the checkout into the venv (not editable) and runs pytest with -P, so the
repository root is not on sys.path. If a change to the Makefile, conftest or an import brought
the tree back in, these tests would notice: the package must come from site-packages.
"""

from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

import pytest

import taps_post
from helpers import PYTHON, installed_env

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(sysconfig.get_paths()["purelib"]).resolve()


def _is_installed(path: str) -> bool:
    return Path(path).resolve().is_relative_to(SITE)


@pytest.mark.skipif(not (ROOT / "Makefile").exists(), reason="not run from a checkout")
def test_the_suite_imports_the_installed_package() -> None:
    assert _is_installed(taps_post.__file__), (
        f"taps_post came from {taps_post.__file__}, not from {SITE}: run the suite through "
        "`make test` (installed package, python -P)")


def test_subprocesses_import_the_installed_package() -> None:
    out = subprocess.run([*PYTHON, "-c", "import taps_post; print(taps_post.__file__)"],
                         capture_output=True, text=True, env=installed_env(), cwd=ROOT,
                         check=True, timeout=60)
    assert _is_installed(out.stdout.strip()), out.stdout
