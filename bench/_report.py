"""What the benchmark scripts share: percentiles, the ours-versus-raw figure, the banner,
the parse-cache invalidator.

Each script measures its own thing; how a figure is summarised, judged against its target
and printed is the same everywhere, so it lives here once.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def num(x: float) -> str:
    if x >= 10_000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def order(rnd: int) -> tuple[str, str]:
    """Which side goes first in round `rnd`: alternate, so drift hits both equally."""
    return ("ours", "raw") if rnd % 2 == 0 else ("raw", "ours")


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def banner(what: str) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"taps_post {what}, {now}; python {platform.python_version()} "
            f"({platform.python_implementation()}) on {platform.system()} "
            f"{platform.release()}, {os.cpu_count()} CPUs, load average {loadavg()}")


class Invalidator:
    """Bumps the files' mtime so the next load (or explain()) misses the parse cache."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths
        self.tick = 0

    def __call__(self) -> None:
        self.tick += 1
        for p in self.paths:
            st = os.stat(p)
            ns = st.st_mtime_ns + 1_000_000 * self.tick
            os.utime(p, ns=(ns, ns))


LOOPS = ("asyncio", "uvloop")


def add_loop_option(ap: Any) -> None:
    """`--loop`: the event loop the figures (ours and raw alike) run on."""
    ap.add_argument("--loop", choices=LOOPS, default="asyncio",
                    help="event loop for both sides (default asyncio; uvloop needs "
                         "pip install 'taps-post[uvloop]')")


def use_loop(name: str) -> None:
    """Make `asyncio.run()` start `name`'s loop, for ours and the raw baseline alike, so each
    ratio compares the two on one loop."""
    if name == "uvloop":
        import asyncio

        try:
            import uvloop
        except ImportError:
            raise SystemExit("--loop uvloop needs uvloop: pip install 'taps-post[uvloop]'") \
                from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s status; an internal error prints its traceback and exits 2."""
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as exc:  # an internal error: say so and fail
        import traceback

        traceback.print_exc()
        print(f"internal error: {exc}", file=sys.stderr)
        sys.exit(2)


@dataclass
class Row:
    """One figure: per-round values for ours and raw. The target is on ours/raw, or, when
    `expected` is set, on ours alone: median <= expected + tolerance."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    target: float | None
    expected: float | None = None
    ours: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    ratio_label: ClassVar[str] = ""
    """Printed before a ratio bound ("ratio " where a script also has absolute bounds)."""
    tolerance: ClassVar[float] = 0.25

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.raw)

    @property
    def paired(self) -> list[float]:
        return [o / r for o, r in zip(self.ours, self.raw, strict=True)]

    @property
    def bound(self) -> str:
        if self.expected is not None:
            return f"ours ~{self.expected:g} {self.unit} (<= {self.expected + self.tolerance:g})"
        if self.target is None:
            return "none"
        return f"{self.ratio_label}{'>=' if self.higher_is_better else '<='} {self.target:g}"

    @property
    def verdict(self) -> str:
        if self.expected is not None:
            ok = statistics.median(self.ours) <= self.expected + self.tolerance
        elif self.target is None:
            return "(info)"
        else:
            ok = (self.ratio >= self.target if self.higher_is_better
                  else self.ratio <= self.target)
        return "MEETS" if ok else "MISSES"

    def fmt(self, xs: list[float]) -> str:
        return f"median {num(statistics.median(xs)):>10}  p10 {num(pct(xs, 10)):>10}  " \
               f"p90 {num(pct(xs, 90)):>10}"

    def print(self) -> None:
        better = "higher" if self.higher_is_better else "lower"
        print(f"\n[{self.key}] {self.title}  ({self.unit}, {better} is better, "
              f"{len(self.ours)} rounds)")
        print(f"  ours  {self.fmt(self.ours)}")
        print(f"  raw   {self.fmt(self.raw)}")
        pr = self.paired
        straddle = ""
        if self.expected is None and self.target is not None \
                and min(pr) <= self.target <= max(pr):
            straddle = "; the per-round ratios straddle the target"
        print(f"  ratio ours/raw {self.ratio:.2f}  (per-round {pct(pr, 10):.2f}..{pct(pr, 90):.2f}"
              f"{straddle})   target {self.bound} -> {self.verdict}")
        for n in self.notes:
            print(f"  note: {n}")

    def markdown(self) -> str:
        o, r = self.ours, self.raw
        return (f"| {self.title} | {self.unit} | {num(statistics.median(o))} "
                f"({num(pct(o, 10))}–{num(pct(o, 90))}) | {num(statistics.median(r))} "
                f"({num(pct(r, 10))}–{num(pct(r, 90))}) | {self.ratio:.2f} "
                f"({pct(self.paired, 10):.2f}–{pct(self.paired, 90):.2f}) | {self.bound} | "
                f"{self.verdict} |")
