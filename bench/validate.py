"""Benchmark of `taps-post policy validate` on big input: loading plus the lint.

Run from the repository root:

    .venv/bin/python -P bench/validate.py            # every workload, 5 runs each
    .venv/bin/python -P bench/validate.py --quick    # 1k rules only, 2 runs: a smoke run
    .venv/bin/python -P bench/validate.py --only dir-10k --runs 3

Workloads, written as YAML to a temporary directory and passed by path, as the CLI does:
- mixed-1k, mixed-10k: bench/_gen.py's three layers (system, app, carrier) with 1,000 and
  10,000 rules in all: varied `when`, keys written nested and dotted, profiles, enforced rules.
- per-host-1k, per-host-10k: one app file with a rule per host (`h17.example`, port 443),
  as a per-site policy has, and one broad rule above them all that leaves every tenth rule
  dead. Every other rule is alive, and a live rule is the pairwise lint's worst case: it
  compared it with every rule stating the same key, so this shape grew with the square of
  its size.
- dir-10k: a directory of 10,000 files of one rule each (mixed-10k's rules, one per file).

Figures, per workload, wall time (time.perf_counter) over --runs runs, GC on:
- validate: `validate_paths()` (what `policy validate` runs after start-up), the files' mtime
  bumped before each run, outside the timed region, so the loader's parse cache never
  answers.
- floor: `load_layer()` of every file, cold the same way: loading without the lint (and
  without the layer sniff that makes validate read each file a second time). A bound that
  puts the figure in scale, not a competitor.
- reference: the pairwise lint this replaced (`taps_post.policy.validate.pairwise_lint`,
  the definition the indexed lint is held to; validate never calls it), on the files
  validate loaded; only up to --reference-max rules (default 1,000),
  because it grows with the square of the rule count. Its output must be validate's, word for
  word, or the script fails.

Nothing is asserted about speed: the script reports and exits 0. It exits non-zero only on an
internal error: a workload that does not load cleanly or has the wrong rule count, or a lint
whose warnings differ from the reference's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _gen
from _report import Invalidator, banner, num, pct, run_main
from taps_post.policy.load import load_layer
from taps_post.policy.validate import pairwise_lint, validate_paths

WORKLOADS = ("mixed-1k", "per-host-1k", "mixed-10k", "per-host-10k", "dir-10k")


# --- workloads -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    name: str
    rules: int
    paths: tuple[str, ...]
    """What validate is given: files, or one directory."""
    files: tuple[tuple[str, str], ...]
    """(path, layer) of every policy file, for the floor and the mtime bump."""


def _dump(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False, default_flow_style=None, width=100)


def mixed(directory: str, rules: int, seed: int) -> Workload:
    w = _gen.write_workload(directory, rules, seed)
    files = tuple(zip(w.policy_paths, ("system", "app", "carrier"), strict=True))
    return Workload(f"mixed-{rules // 1000}k", rules, w.policy_paths, files)


def per_host(directory: str, rules: int) -> Workload:
    """One broad rule, then a rule per host; every tenth states only what the broad rule
    outranks (dead), the others also a key nobody else states for their host (alive)."""
    body: list[dict[str, Any]] = [{"id": "everyone", "priority": 10,
                                   "set": {"secure": "prefer"}}]
    for i in range(rules - 1):
        statements: dict[str, Any] = {"secure": "avoid"}
        if i % 10:
            statements["stack.quic"] = ("avoid", "prefer")[i % 2]
            statements["connTimeout"] = 5000 + 1000 * (i % 7)
        body.append({"id": f"site-{i:05d}", "when": {"host": f"h{i}.example", "port": 443},
                     "set": statements})
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "sites.yaml")
    _dump(path, {"version": 1, "layer": "app", "name": "sites", "rules": body})
    return Workload(f"per-host-{rules // 1000}k", rules, (path,), ((path, "app"),))


def one_rule_per_file(directory: str, rules: int, seed: int) -> Workload:
    """mixed's rules, one per file, in file-name order system, app, carrier."""
    os.makedirs(directory, exist_ok=True)
    files: list[tuple[str, str]] = []
    for layer, doc in _gen.policy_layers(rules, seed).items():
        for j, rule in enumerate(doc["rules"]):
            out: dict[str, Any] = {"version": 1, "layer": layer, "name": f"p{len(files):05d}"}
            if j == 0 and "interfaces" in doc:
                out["interfaces"] = doc["interfaces"]
            out["rules"] = [rule]
            path = os.path.join(directory, f"{len(files):05d}-{layer}.yaml")
            _dump(path, out)
            files.append((path, layer))
    return Workload(f"dir-{rules // 1000}k", rules, (directory,), tuple(files))


def build(name: str, tmp: str, seed: int) -> Workload:
    shape, _, size = name.rpartition("-")
    rules = int(size.removesuffix("k")) * 1000
    where = os.path.join(tmp, name)
    if shape == "mixed":
        return mixed(where, rules, seed)
    if shape == "per-host":
        return per_host(where, rules)
    if shape == "dir":
        return one_rule_per_file(where, rules, seed)
    raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


# --- measuring -------------------------------------------------------------------------------

def timed(fn: Callable[[], object], runs: int, before_each: Callable[[], None],
          budget_s: float) -> list[float]:
    """Seconds per run; stops early (after at least one run) once `budget_s` is spent."""
    out: list[float] = []
    spent = 0.0
    for _ in range(runs):
        before_each()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
        spent += out[-1]
        if spent >= budget_s:
            break
    return out


def line(label: str, xs: list[float]) -> str:
    return (f"  {label:<10} median {num(statistics.median(xs)):>7} s  p10 {num(pct(xs, 10)):>7}"
            f"  p90 {num(pct(xs, 90)):>7}  ({len(xs)} run{'s' if len(xs) > 1 else ''})")


def run_workload(w: Workload, runs: int, reference_max: int, budget_s: float) -> str:
    bump = Invalidator([p for p, _ in w.files])
    bump()
    report = validate_paths(list(w.paths), load_snapshot=lambda _path: None)
    if report.errors:
        raise SystemExit(f"internal error: {w.name} does not load: {report.errors[0]}")
    rules = sum(len(f.rules) for f in report.files)
    if rules != w.rules or len(report.files) != len(w.files):
        raise SystemExit(f"internal error: {w.name} loaded {len(report.files)} files and "
                         f"{rules} rules, expected {len(w.files)} and {w.rules}")
    lint = report.warnings[sum(len(f.warnings) for f in report.files):]
    dead = sum("can never win" in x for x in lint)
    print(f"\n[{w.name}] {len(w.files):,} file(s), {rules:,} rules; the lint reports {dead:,} "
          f"dead rule(s) and {len(lint) - dead:,} contradiction(s)")

    def validate() -> None:
        validate_paths(list(w.paths), load_snapshot=lambda _path: None)

    def floor() -> None:
        for path, layer in w.files:
            load_layer(path, layer)

    v = timed(validate, runs, bump, budget_s)
    f = timed(floor, runs, bump, budget_s)
    print(line("validate", v))
    print(line("floor", f))
    summary = (f"| {w.name} | {num(statistics.median(v))} s | {num(statistics.median(f))} s | "
               f"{statistics.median(v) / statistics.median(f):.2f} |")
    if w.rules <= reference_max:
        ref_out: list[str] = []

        def reference() -> None:
            ref_out[:] = pairwise_lint(report.files)

        r = timed(reference, runs, lambda: None, budget_s)
        if ref_out != lint:
            first = next((i for i, (a, b) in enumerate(zip(ref_out, lint, strict=False))
                          if a != b), min(len(ref_out), len(lint)))
            raise SystemExit(f"internal error: {w.name}: the lint's warnings differ from the "
                             f"pairwise reference's from warning {first + 1} on "
                             f"({len(lint)} vs {len(ref_out)})")
        print(line("reference", r) + "  the pairwise lint alone; same warnings: yes")
        summary += f" {num(statistics.median(r))} s |"
    else:
        summary += " (not run) |"
    print(f"  validate / floor = {statistics.median(v) / statistics.median(f):.2f}x")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure (default 5)")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help=f"comma-separated workloads (default: {','.join(WORKLOADS)})")
    ap.add_argument("--reference-max", type=int, default=1000,
                    help="largest rule count the pairwise reference runs on (default 1000)")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds per figure after which no further run starts (default 120)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1k workloads, 2 runs: a smoke run")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.quick:
        names = [n for n in names if n.endswith("-1k")] or ["mixed-1k"]
        args.runs = min(args.runs, 2)

    print(banner("policy validate benchmark"))
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="taps-bench-validate-") as tmp:
        for name in names:
            rows.append(run_workload(build(name, tmp, args.seed), args.runs,
                                     args.reference_max, args.budget))
    print("\n| workload | validate | floor (loading alone) | validate / floor | "
          "pairwise reference lint |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    run_main(main)
