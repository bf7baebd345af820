"""`taps-post policy diff`: the what-if of a policy edit, decided both ways for each request.

Rule 1: one layer is diffed (`--layer`, system by default): it is the old version in one run
and the new version in the other; every other layer, the requests and the environment are the
same in both, so every difference shown is the edit's doing.
Rule 2: a change is one of: the outcome, the winner (the first candidate), the candidate
order, an exclusion that appears or vanishes, an effective value whose value, layer or rule
changed (shown with its file:line provenance on both sides), a conflict that appears or
vanishes. A rule's position alone (`source`) is not a change: moving a rule down a file
decides the same.
Rule 3: `--git REV` compares each PATH as committed at REV with PATH as it is now; the old
files are extracted with `git show` into a temporary directory that is removed afterwards,
and shown as `REV:path`. A revision or path git does not know is an input error (exit 2).
Rule 4: the environment is a snapshot (a scenario's `env:`, else `--env FILE`), never the
live machine: the two runs must see the same interfaces and answers, and a live machine can
change between them.
Rule 5: exit 1 when any decision changed, 0 when none did; `--exit-zero` reports and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic
from ..errors import InputError
from . import scenario as sc
from .runner import load_files

__all__ = ["Change", "compare", "git_version", "main"]


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between the old and the new decision of a request (Rule 2)."""

    what: str  # outcome | winner | order | excluded | property | conflict
    key: str | None
    old: Any
    new: Any

    def text(self) -> str:
        if self.what == "excluded":
            return (f"exclusion {'appears' if self.new else 'vanishes'}: "
                    f"{self.new or self.old}")
        if self.what == "conflict":
            return f"conflict on {self.key} {'appears' if self.new else 'vanishes'}"
        label = f"{self.what} {self.key}" if self.key else self.what
        return f"{label}: {_shown(self.old)} -> {_shown(self.new)}"


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "none" if value is None else str(value)


def _candidate(c: dict[str, Any]) -> str:
    address = str(c["remote_address"])
    host = f"[{address}]" if ":" in address else address
    return f"{c['interface']} {c['stack']} {host}:{c['remote_port']}"


def _exclusion(e: dict[str, Any]) -> str:
    where = " ".join(str(e[k]) for k in ("interface", "stack", "remote_address") if e.get(k))
    why = ", ".join(f"{k} {e[k]}" for k in ("property", "rule", "layer") if e.get(k))
    return f"{where or '(all)'} {e['outcome']}" + (f" ({why})" if why else "")


def _effective(p: dict[str, Any]) -> str:
    where = f"{p['layer']} rule {p['rule']}" if p.get("rule") else p["layer"]
    source = f", {p['source']}" if p.get("source") else ""
    return f"{json.dumps(p['value'])} ({where}{source})"


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every Rule 2 change between two `Decision.to_dict()` results."""
    out: list[Change] = []
    if old["outcome"] != new["outcome"]:
        out.append(Change("outcome", None, old["outcome"], new["outcome"]))
    before = [_candidate(c) for c in old["candidates"]]
    after = [_candidate(c) for c in new["candidates"]]
    if before[:1] != after[:1]:
        out.append(Change("winner", None, before[0] if before else None,
                          after[0] if after else None))
    if before != after:
        out.append(Change("order", None, before, after))
    gone = {_exclusion(e) for e in old["excluded"]}
    came = {_exclusion(e) for e in new["excluded"]}
    out.extend(Change("excluded", None, None, e) for e in sorted(came - gone))
    out.extend(Change("excluded", None, e, None) for e in sorted(gone - came))
    for key in sorted(set(old["properties"]) | set(new["properties"])):
        a, b = old["properties"].get(key), new["properties"].get(key)
        essence = [None if p is None else (p["value"], p["layer"], p["rule"]) for p in (a, b)]
        if essence[0] != essence[1]:
            out.append(Change("property", key, a and _effective(a), b and _effective(b)))
    conflicts = [{c["key"] for c in d["conflicts"]} for d in (old, new)]
    out.extend(Change("conflict", k, None, k) for k in sorted(conflicts[1] - conflicts[0]))
    out.extend(Change("conflict", k, k, None) for k in sorted(conflicts[0] - conflicts[1]))
    return out


def _git(cwd: str, *args: str) -> str:
    proc = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise InputError([Diagnostic(cwd, f"git {' '.join(args)}: "
                                          f"{proc.stderr.strip() or 'failed'}")])
    return proc.stdout


@contextmanager
def git_version(paths: list[str], rev: str) -> Iterator[tuple[list[str], str]]:
    """`paths` as committed at `rev`, extracted to a temporary directory (Rule 3); yields the
    extracted paths and the directory, to show its files as REV:path."""
    with tempfile.TemporaryDirectory(prefix="taps-post-diff-") as tmp:
        out = []
        for path in paths:
            real = os.path.realpath(path)
            base = real if os.path.isdir(real) else os.path.dirname(real)
            top = _git(base, "rev-parse", "--show-toplevel").strip()
            rel = os.path.relpath(real, top)
            names = _git(top, "ls-tree", "-r", "--name-only", rev, "--", rel).splitlines()
            if not names:
                raise InputError([Diagnostic(path, f"not in git revision {rev}")])
            for name in names:
                dest = Path(tmp, name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(_git(top, "show", f"{rev}:{name}"), encoding="utf-8")
            out.append(os.path.join(tmp, rel))
        yield out, tmp


def _requests(requests_file: str | None, scenarios: list[str]) -> list[dict[str, Any]]:
    """Each request as {target, app, kind, env}; scenario files give their own env."""
    out: list[dict[str, Any]] = []
    if requests_file:
        text = Path(requests_file).read_text(encoding="utf-8")
        data, positions = sc.load_scenario(text, requests_file)
        if not isinstance(data, list):
            raise InputError([Diagnostic(requests_file, "a list of requests "
                                         "({target, app, kind}) is expected", 1, 1)])
        for i, item in enumerate(data):
            if not (isinstance(item, dict) and isinstance(item.get("target"), str)
                    and not set(item) - sc.REQUEST_KEYS):
                line, col = positions.locate((i,))
                raise InputError([Diagnostic(requests_file, "a request is a mapping with a "
                                             "target and optionally app and kind", line, col)])
            out.append({**item, "env": None})
    if scenarios:
        out.extend({**data["request"], "env": data.get("env")}
                   for _, data in load_files(scenarios, need_env=False))
    if not out:
        raise InputError([Diagnostic("policy diff", "no requests: give --requests FILE "
                                     "and/or --scenarios PATH...")])
    return out


def main(*, old: list[str] | None, new: list[str] | None, git: str | None,
         paths: list[str], layer: str, layers: dict[str, Any], requests_file: str | None,
         scenarios: list[str], env: str | None, fmt: str, exit_zero: bool) -> int:
    requests = _requests(requests_file, scenarios)
    if git is not None:
        if not paths:
            raise InputError([Diagnostic("policy diff", "--git REV needs the policy PATHs")])
        with git_version(paths, git) as (extracted, tmp):
            results = _run(requests, extracted, paths, layer, layers, env)
            shown = [(r, [_relabel(c, tmp, git) for c in cs]) for r, cs in results]
    else:
        if not (old and new):
            raise InputError([Diagnostic("policy diff", "give --old and --new, or --git REV "
                                         "PATH...")])
        shown = _run(requests, old, new, layer, layers, env)
    changed = sum(bool(cs) for _, cs in shown)
    if fmt == "json":
        print(json.dumps({"layer": layer, "requests": [
            {"request": r, "changes": [
                {"what": c.what, "key": c.key, "old": c.old, "new": c.new} for c in cs]}
            for r, cs in shown], "changed": changed}, indent=2))
    else:
        for r, cs in shown:
            label = r["target"] + "".join(f" {k}={r[k]}" for k in ("app", "kind") if r.get(k))
            print(f"{label}: {len(cs)} change(s)" if cs else f"{label}: unchanged")
            for c in cs:
                print("  " + c.text())
        print(f"{len(shown)} request(s), {changed} changed")
    return 1 if changed and not exit_zero else 0


def _relabel(c: Change, tmp: str, rev: str) -> Change:
    def fix(v: Any) -> Any:
        return v.replace(tmp + os.sep, f"{rev}:") if isinstance(v, str) else v

    return Change(c.what, c.key, fix(c.old), fix(c.new))


def _run(requests: list[dict[str, Any]], old: list[str], new: list[str], layer: str,
         layers: dict[str, Any], env: str | None) -> list[tuple[dict[str, Any], list[Change]]]:
    if env is None and any(r["env"] is None for r in requests):
        raise InputError([Diagnostic("policy diff", "a request without a scenario env: needs "
                                     "--env FILE (an environment snapshot; Rule 4)")])
    out = []
    for r in requests:
        where = r["env"] if r["env"] is not None else env
        request = {k: v for k, v in r.items() if k != "env" and v is not None}
        decided = [sc.run({"request": request}, {**layers, layer: version}, where)
                   for version in (old, new)]
        out.append((request, compare(decided[0], decided[1])))
    return out
