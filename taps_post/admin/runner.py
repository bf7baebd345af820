"""`taps-post policy test`: an administrator's scenario files run against the policy on disk.

Rule 1: a scenario that states `policies:` is run with them alone (like the project's tables);
one that does not is run with the layers the command was given (`--system`/`--no-system`,
`--app`, `--carrier`), the system layer this machine discovers by default. So a scenario kept
next to a policy directory tests that directory as it is on disk.
Rule 2: the environment is never the live machine: each scenario's `env:`, else `--env FILE`;
a scenario with neither is malformed.
Rule 3: every file is loaded and its shape checked before any is run. A malformed file is an
input error (file:line:col, exit 2) and no verdict is printed: half a report would read as
a pass for the scenarios left out.
Rule 4: exit 0 when every scenario met its expectation, 1 when any did not. A scenario marked
`xfail: why` is expected to fail (XFAIL); one that passes anyway is XPASS and counts as a
failure, so the mark is removed once the policy is fixed.
Rule 5: `--format junit` writes JUnit XML to stdout (one testcase per file, the failure's
text its message), for CI systems that collect it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from ..diagnostics import Diagnostic, InputError
from ..policy.load import SUFFIXES, screen_paths, stem
from . import scenario as sc

__all__ = ["Verdict", "load_files", "main", "run_files", "scenario_files"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One scenario's result; `problems` is the difference of expected and actual."""

    path: str
    description: str
    status: str  # PASS | FAIL | XFAIL | XPASS
    problems: tuple[str, ...]

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "XPASS")


def scenario_files(paths: list[str]) -> list[str]:
    """The scenario files PATHs name (directories searched recursively), screened."""
    expanded: list[str] = []
    for p in paths:
        if os.path.isdir(p):  # scenario directories may nest (tests/web/, tests/vpn/)
            expanded.extend(sorted(_scenario_entries(p), key=lambda f: f.split(os.sep)))
        else:
            expanded.append(p)
    files, problems = screen_paths(expanded)
    if problems:
        raise InputError(problems)
    if not files:
        raise InputError([Diagnostic(" ".join(paths), "no scenario files (*.yaml, *.yml)")])
    return files


def _scenario_entries(top: str) -> list[str]:
    """Every entry below `top` whose suffix is .yaml or .yml, directories not followed
    through symlinks (pathlib's rglob, without importing pathlib: this runs in `policy test`,
    whose start-up is measured). A directory so named is listed too, and screened out."""
    found = []
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            base = stem(name)  # pathlib's suffix is what stem leaves
            if base != name and name[len(base):] in SUFFIXES:
                found.append(os.path.join(root, name))
    return found


def load_files(paths: list[str], *, need_env: bool) -> list[tuple[str, dict[str, Any]]]:
    """Every scenario file `paths` name, loaded and checked; one InputError with the problems
    of all of them, before anything runs (Rule 3)."""
    loaded: list[tuple[str, dict[str, Any]]] = []
    problems: list[Any] = []
    for path in scenario_files(paths):
        with open(path, encoding="utf-8") as fh:
            data, positions = sc.load_scenario(fh.read(), path)
        found = sc.shape_problems(data, positions, need_policies=False, need_env=need_env)
        problems.extend(found)
        if not found:
            loaded.append((path, data))
    if problems:
        raise InputError(problems)
    return loaded


def run_files(paths: list[str], *, layers: dict[str, Any], env: str | None) -> list[Verdict]:
    """Load and check every file (Rule 3), then run each scenario (Rules 1, 2)."""
    verdicts = []
    for path, data in load_files(paths, need_env=env is None):
        policies = None if data.get("policies") is not None else layers
        result = sc.run(data, policies, None if data.get("env") is not None else env)
        found_problems = tuple(sc.check(data, result))
        if data.get("xfail"):
            status = "XFAIL" if found_problems else "XPASS"
        else:
            status = "FAIL" if found_problems else "PASS"
        verdicts.append(Verdict(path, " ".join(str(data["description"]).split()), status,
                                found_problems))
    return verdicts


def write_text(verdicts: list[Verdict], out: TextIO) -> None:
    for v in verdicts:
        out.write(f"{v.status:<5}  {v.path}: {v.description}\n")
        if v.status == "FAIL":
            for problem in v.problems:
                out.write("       " + problem.replace("\n", "\n       ") + "\n")
        elif v.status == "XPASS":
            out.write("       passed, but is marked xfail: remove the mark\n")
    failed = sum(v.failed for v in verdicts)
    out.write(f"{len(verdicts)} scenario(s): {len(verdicts) - failed} passed, "
              f"{failed} failed\n")


def write_junit(verdicts: list[Verdict], out: TextIO) -> None:
    import xml.etree.ElementTree as ET  # only `--format junit` pays for it

    suite = ET.Element("testsuite", name="taps-post policy test", tests=str(len(verdicts)),
                       failures=str(sum(v.failed for v in verdicts)), errors="0",
                       skipped=str(sum(v.status == "XFAIL" for v in verdicts)))
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=stem(v.path), name=v.description,
                             file=v.path)
        if v.failed:
            text = "\n".join(v.problems) or "passed, but is marked xfail"
            failure = ET.SubElement(case, "failure", message=text.splitlines()[0])
            failure.text = text
        elif v.status == "XFAIL":
            ET.SubElement(case, "skipped", message="expected failure (xfail)")
    out.write(ET.tostring(suite, encoding="unicode") + "\n")


def main(paths: list[str], *, layers: dict[str, Any], env: str | None, fmt: str) -> int:
    verdicts = run_files(paths, layers=layers, env=env)
    (write_junit if fmt == "junit" else write_text)(verdicts, sys.stdout)
    return 1 if any(v.failed for v in verdicts) else 0
