"""Cold start of `taps-post policy explain|show|validate`, against `import yaml, pydantic`.

Run from the repository root:

    .venv/bin/python -P bench/cli_startup.py            # 15 runs per command
    .venv/bin/python -P bench/cli_startup.py --runs 5   # quicker
    .venv/bin/python -P bench/cli_startup.py --strict   # exit 1 if asyncio,
                                                                    # aioquic or ssl get imported

Each figure is the wall time of a fresh interpreter doing the whole job (start, import,
load the policy files, read the environment snapshot, decide, print JSON), measured from the
parent around `subprocess.run`, so fork/exec is included for every command alike. Commands
are run round-robin, so a noisy moment on the shared machine hits them all.

Which explain command is timed (`--use`, default `auto`):
- `module`: `python -m taps_post.cli policy explain TARGET --system FILE --env FILE
  --format json` (plus `--app`/`--carrier`/`--app-name` if the CLI's --help offers them);
- `entry-point`: the same through the installed `taps-post` script;
- `api`: `python -c "import taps_post; taps_post.explain(...)"` with the same files;
- `auto`: `entry-point` if the `taps-post` script is beside the interpreter or on PATH (the
  command an administrator runs), else `module` if `taps_post.cli` is importable, else `api`.
  The `api` command is timed in every case, and the `module` one too when the entry point
  is the one measured, for comparison with earlier runs.

The baseline row is `python -c "import yaml, pydantic"` (the two libraries the policy engine
cannot do without); every row shows its median over the baseline's median (`x baseline`;
issue 14 asks for 2.0x or less). Two floor rows add a one-field format, defined and
validated: as a pydantic `BaseModel` (what the commands paid before policy/shape.py) and as a
`shape.Record` (what they pay now), before our own code runs. `policy show` is timed with
the same arguments as explain (`--format json`), `policy validate` on the three policy
files, `policy test` on one scenario for the same request against the same layers.

It also checks that importing taps_post and calling explain() with an environment file leaves
asyncio, aioquic and ssl out of sys.modules (docs/architecture.md, Layers: "The package root
stays light", so `policy explain` starts fast), lists the heavy modules that are imported, and
prints the top 10 imports by cumulative time (`-X importtime`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _gen
from _report import loadavg, run_main

SRC = Path(__file__).resolve().parent.parent
"""The checkout root, where the `taps_post` package sits."""

BASELINE_LABEL = "python -c 'import yaml, pydantic'"
"""The reference row: the CLI's cold start is judged against these two imports (issue 14)."""

FLOOR_LABEL = "  + one pydantic BaseModel validated"
FLOOR_SNIPPET = """\
import yaml, pydantic
from pydantic import BaseModel, ConfigDict
class One(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int
One.model_validate({"x": 1})
"""
"""What a command validating a file with a pydantic model pays before its own code runs:
`import pydantic` alone loads almost nothing (BaseModel, its schema builder and
importlib.metadata for pydantic's plugins load on first use). The policy commands paid it
until the formats moved to `policy/shape.py`; the row stays to show why they did."""

RECORD_LABEL = "  + one shape.Record validated"
RECORD_SNIPPET = """\
import yaml, pydantic
from taps_post.policy.shape import Record
class One(Record):
    x: int
One.validate({"x": 1})
"""
"""The floor the policy commands stand on now: the same one-field format as a `shape.Record`,
validated by pydantic-core directly."""

MUST_NOT_IMPORT = ("asyncio", "aioquic", "ssl")
# Modules worth knowing about when they show up in a short-lived CLI process.
WATCH = ("asyncio", "aioquic", "ssl", "cryptography", "psutil", "netifaces", "socket",
         "selectors", "concurrent", "multiprocessing", "pydantic", "pydantic_core", "yaml",
         "yaml._yaml", "typing_extensions", "annotated_types", "json", "email", "http", "urllib",
         "difflib", "ipaddress", "inspect", "decimal", "uuid", "zoneinfo", "importlib.metadata",
         "pkg_resources", "logging", "argparse", "textwrap", "fnmatch", "dataclasses")

API_SNIPPET = """\
import sys
import taps_post
target, app_name, env, system, app, carrier, out = sys.argv[1:8]
d = taps_post.explain(target, system=system, app=app or None, carrier=carrier or None,
                      app_name=app_name or None, env=env)
mods = sorted(sys.modules)
if out:
    with open(out, "w") as fh:
        fh.write("\\n".join(mods))
sys.stdout.write(f"{d.outcome} {len(d.candidates)}\\n")
"""

CLI_MODULES_SNIPPET = """\
import contextlib, io, runpy, sys
out, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["taps-post", *argv]
code = 0
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("taps_post.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
mods = sorted(sys.modules)
with open(out, "w") as fh:
    fh.write("\\n".join(mods))
sys.exit(code)
"""


@dataclass
class Command:
    label: str
    argv: list[str]
    samples_ms: list[float]
    from_source: bool = False
    cpu_ms: list[float] = field(default_factory=list)
    """User plus system CPU time of each run: on a shared machine it moves less than wall
    time, since time spent waiting for a CPU is not in it."""

    def median(self) -> float:
        return statistics.median(self.samples_ms)

    def cpu_median(self) -> float:
        return statistics.median(self.cpu_ms)

    def pct(self, p: float) -> float:
        xs = sorted(self.samples_ms)
        return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


# Where children keep their bytecode; set by main(). None: leave the environment as it is.
PYCACHE_PREFIX: str | None = None


def child_env(*, from_source: bool = False) -> dict[str, str]:
    """The children's environment: the checkout on PYTHONPATH, and bytecode handled like an install.

    An installed wheel has its .pyc files compiled by pip. Run from the checkout with
    PYTHONDONTWRITEBYTECODE=1 (as on this workplace), every start would compile taps_post
    from source, so by default the children write and reuse bytecode under a temporary
    PYTHONPYCACHEPREFIX instead. `from_source=True` keeps PYTHONDONTWRITEBYTECODE=1 and no
    prefix: taps_post compiled on every start, site-packages from their own __pycache__.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if from_source:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    elif PYCACHE_PREFIX is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE_PREFIX
    return env


def run(argv: list[str], *, capture: bool = False,
        from_source: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=child_env(from_source=from_source), text=True, check=False,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE if capture else subprocess.DEVNULL)


def pick_cli(use: str) -> tuple[str, list[str]]:
    """(how, argv prefix) for `... policy explain`; how is module, entry-point or api."""
    have_module = _cli_importable()
    entry = entry_point()
    if use == "entry-point" or (use == "auto" and entry):
        if not entry:
            raise SystemExit("taps-post is neither beside the interpreter nor on PATH")
        return "entry-point", [entry]
    if use == "module" or (use == "auto" and have_module):
        if not have_module:
            raise SystemExit("taps_post.cli is not importable (taps_post/cli.py missing?)")
        return "module", [sys.executable, "-m", "taps_post.cli"]
    return "api", []


def entry_point() -> str | None:
    """The `taps-post` script of this interpreter's environment (what `make install` puts in
    .venv/bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "taps-post"
    return str(beside) if beside.exists() else shutil.which("taps-post")


def _cli_importable() -> bool:
    probe = run([sys.executable, "-c", "import importlib.util, sys; "
                 "sys.exit(0 if importlib.util.find_spec('taps_post.cli') else 1)"])
    if probe.returncode == 0:
        return True
    return importlib.util.find_spec("taps_post.cli") is not None


def cli_layer_args(prefix: list[str], w: _gen.Workload) -> tuple[list[str], list[str]]:
    """Arguments for the CLI, and which layers they pass; optional flags only if offered."""
    helptext = run([*prefix, "policy", "explain", "--help"], capture=True)
    text = helptext.stdout + helptext.stderr
    args = ["--system", w.system]
    layers = ["system"]
    if "--app " in text or "--app\n" in text or "--app=" in text or "--app FILE" in text:
        args += ["--app", w.app]
        layers.append("app")
    if "--carrier" in text:
        args += ["--carrier", w.carrier]
        layers.append("carrier")
    if "--app-name" in text:
        args += ["--app-name", _gen.APP_NAME]
        layers.append("app-name")
    return [*args, "--env", w.env, "--format", "json"], layers


def api_argv(w: _gen.Workload, layers: list[str], out: str = "") -> list[str]:
    return [sys.executable, "-c", API_SNIPPET, _gen.TARGET,
            _gen.APP_NAME if "app-name" in layers else "", w.env, w.system,
            w.app if "app" in layers else "", w.carrier if "carrier" in layers else "", out]


@dataclass
class ImportRow:
    name: str
    depth: int
    self_us: int
    cum_us: int
    parent: str | None = None


def importtime(argv: list[str]) -> dict[str, ImportRow]:
    """Parse `-X importtime` of one run: every import with its time and its importer."""
    # An interpreter takes -X itself; a script (the entry point) is run by this one.
    cmd = ([argv[0], "-X", "importtime", *argv[1:]] if argv[0] == sys.executable
           else [sys.executable, "-X", "importtime", *argv])
    proc = subprocess.run(cmd, env=child_env(), text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    rows: dict[str, ImportRow] = {}
    waiting: dict[int, list[ImportRow]] = {}  # children are printed before their parent
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        try:
            self_us, cum_us, raw = line[len("import time:"):].split("|", 2)
            row = ImportRow(raw.strip(), (len(raw) - len(raw.lstrip()) - 1) // 2,
                            int(self_us), int(cum_us))
        except ValueError:
            continue
        for child in waiting.pop(row.depth + 1, []):
            child.parent = row.name
        waiting.setdefault(row.depth, []).append(row)
        rows[row.name] = row
    return rows


def import_chain(rows: dict[str, ImportRow], name: str) -> str:
    chain = [name]
    row = rows.get(name)
    while row is not None and row.parent is not None and len(chain) < 12:
        chain.append(row.parent)
        row = rows.get(row.parent)
    return " <- ".join(chain)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    ap.add_argument("--rules", type=int, default=1000, help="rules in the policy files")
    ap.add_argument("--use", choices=("auto", "module", "entry-point", "api"), default="auto")
    ap.add_argument("--pyc-as-is", action="store_true",
                    help="do not redirect bytecode to a temporary PYTHONPYCACHEPREFIX")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if asyncio, aioquic or ssl are imported")
    args = ap.parse_args(argv)

    print(f"CLI cold start; python {sys.version.split()[0]} ({sys.executable}), "
          f"{os.cpu_count()} CPUs, load average "
          f"{loadavg()}")
    failed_check = False
    global PYCACHE_PREFIX
    with tempfile.TemporaryDirectory(prefix="taps-cli-bench-") as tmp:
        if not args.pyc_as_is:
            PYCACHE_PREFIX = os.path.join(tmp, "pycache")
            print(f"bytecode: written and reused under a temporary PYTHONPYCACHEPREFIX, as for "
                  f"an installed wheel\n          (PYTHONDONTWRITEBYTECODE is "
                  f"{os.environ.get('PYTHONDONTWRITEBYTECODE') or 'unset'} in this shell; "
                  f"--pyc-as-is keeps the environment)")
        w = _gen.write_workload(tmp, args.rules)
        how, prefix = pick_cli(args.use)
        if how == "api":
            layers = ["system", "app", "carrier", "app-name"]
            print("\nNOTE: taps_post.cli is not available yet (no taps_post/cli.py and no "
                  "taps-post on PATH);\n      timing the API path `python -c \"import taps_post;"
                  " taps_post.explain(...)\"` instead.")
            explain_argv = api_argv(w, layers)
            explain_label = "python -c 'taps_post.explain(...)'"
        else:
            cli_args, layers = cli_layer_args(prefix, w)
            explain_argv = [*prefix, "policy", "explain", _gen.TARGET, *cli_args]
            explain_label = ("python -m taps_post.cli policy explain" if how == "module"
                             else "taps-post policy explain")
        print(f"\nworkload: {_gen.TARGET}, {args.rules} rules across 3 files, layers passed: "
              f"{', '.join(layers)}; env file with 8 interfaces, 8 DNS answers")

        # Correctness first: one captured run of each explain command.
        first = run(explain_argv, capture=True)
        if first.returncode not in (0, 3):
            sys.stderr.write(first.stderr)
            raise SystemExit(f"internal error: {explain_label} exited {first.returncode}")
        if how == "api":
            print(f"  check: {first.stdout.strip()} (outcome, candidates)")
        else:
            try:
                data = json.loads(first.stdout)
                print(f"  check: exit {first.returncode}, JSON outcome {data.get('outcome')!r}, "
                      f"{len(data.get('candidates', []))} candidates")
            except ValueError:
                print(f"  check: exit {first.returncode}, but stdout is not JSON "
                      f"({first.stdout[:80]!r})")

        commands = [Command("python -c pass", [sys.executable, "-c", "pass"], []),
                    Command(BASELINE_LABEL, [sys.executable, "-c", "import yaml, pydantic"], []),
                    Command(FLOOR_LABEL, [sys.executable, "-c", FLOOR_SNIPPET], []),
                    Command("python -c 'import taps_post'",
                            [sys.executable, "-c", "import taps_post"], [])]
        if (SRC / "taps_post" / "policy" / "shape.py").exists():  # not in trees before it
            commands.insert(3, Command(RECORD_LABEL, [sys.executable, "-c", RECORD_SNIPPET], []))
        if how != "api":
            commands.append(Command("python -c 'taps_post.explain(...)'",
                                    api_argv(w, layers), []))
        commands.append(Command(explain_label, explain_argv, []))
        if how == "entry-point" and _cli_importable():
            commands.append(Command("python -m taps_post.cli policy explain",
                                    [sys.executable, "-m", "taps_post.cli", "policy", "explain",
                                     _gen.TARGET, *cli_args], []))
        if how != "api":
            show_argv = [*prefix, "policy", "show", _gen.TARGET,
                         *cli_args[:-2], "--format", "json"]
            commands.append(Command(explain_label.replace("explain", "show"), show_argv, []))
            validate_argv = [*prefix, "policy", "validate", w.system, w.app, w.carrier]
            commands.append(Command(explain_label.replace("explain", "validate"),
                                    validate_argv, []))
            scenario = Path(tmp, "scenarios", "svc.yaml")
            scenario.parent.mkdir()
            scenario.write_text("description: the bench request is served.\n"
                                f"request: {{target: {_gen.TARGET!r}, app: {_gen.APP_NAME!r}}}\n"
                                "expect: {outcome: ok}\n", encoding="utf-8")
            test_argv = [*prefix, "policy", "test", str(scenario.parent), *cli_args[:-2]]
            test_argv.remove("--app-name")
            test_argv.remove(_gen.APP_NAME)
            commands.append(Command(explain_label.replace("explain", "test"), test_argv, []))
        commands.append(Command("  same, compiling taps_post each start", explain_argv, [],
                                from_source=True))
        for c in commands[3:]:  # each command does its job, or nothing is timed
            if c.label.endswith((" show", " validate", " test")):
                check = run(c.argv, capture=True)
                if check.returncode != 0:
                    sys.stderr.write(check.stdout[-2000:] + check.stderr[-2000:])
                    raise SystemExit(f"internal error: {c.label} exited {check.returncode}")
        for c in commands:  # warm-up: fills the bytecode cache and the OS page cache
            run(c.argv, from_source=c.from_source)
        for _ in range(args.runs):
            for c in commands:
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter_ns()
                run(c.argv, from_source=c.from_source)
                c.samples_ms.append((time.perf_counter_ns() - t0) / 1e6)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                c.cpu_ms.append(1e3 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))

        base = commands[0].median()
        ref = commands[1].median()
        ref_cpu = commands[1].cpu_median()
        print(f"\nwall time, {args.runs} runs each (round-robin); x baseline = median over the "
              f"median of `{BASELINE_LABEL}` (target: 2.0x or less);\nCPU = the child's user "
              "plus system time, median, and its ratio to the baseline's:")
        print(f"  {'command':42} {'median ms':>10} {'p10':>8} {'p90':>8} {'minus pass':>11} "
              f"{'x baseline':>11} {'CPU ms':>8} {'x CPU':>7}")
        for c in commands:
            print(f"  {c.label:42} {c.median():>10.1f} {c.pct(10):>8.1f} {c.pct(90):>8.1f} "
                  f"{c.median() - base:>+11.1f} {c.median() / ref:>10.2f}x "
                  f"{c.cpu_median():>8.1f} {c.cpu_median() / ref_cpu:>6.2f}x")

        # Which modules a dry run pulls in.
        print("\nmodules after `import taps_post` + explain(env=FILE):")
        modfile = os.path.join(tmp, "modules.txt")
        proc = run(api_argv(w, ["system", "app", "carrier", "app-name"], modfile), capture=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit("internal error: the module check run failed")
        failed_check |= report_modules(Path(modfile).read_text().split("\n"))
        if how != "api":
            print(f"\nmodules after the CLI ({explain_label}):")
            proc = run([sys.executable, "-c", CLI_MODULES_SNIPPET, modfile, "policy", "explain",
                        _gen.TARGET, *explain_argv[len(prefix) + 3:]], capture=True)
            if proc.returncode not in (0, 3):
                sys.stderr.write(proc.stderr)
                raise SystemExit("internal error: the CLI module check run failed")
            failed_check |= report_modules(Path(modfile).read_text().split("\n"))

        rows = importtime(explain_argv)
        total = sum(r.self_us for r in rows.values()) / 1000
        print(f"\n-X importtime, one run of {explain_label}: {len(rows)} imports, "
              f"{total:.1f} ms in all (sum of self times)")
        print("top 10 by cumulative time (indent = nesting):")
        print(f"  {'cumulative ms':>13} {'self ms':>8}  module")
        for r in sorted(rows.values(), key=lambda r: -r.cum_us)[:10]:
            print(f"  {r.cum_us / 1000:>13.1f} {r.self_us / 1000:>8.1f}  {'  ' * r.depth}{r.name}")
        print("top 10 by self time:")
        for r in sorted(rows.values(), key=lambda r: -r.self_us)[:10]:
            print(f"  {r.cum_us / 1000:>13.1f} {r.self_us / 1000:>8.1f}  {r.name}")
        print("who pulls in the watched modules (first importer chain):")
        for name in WATCH:
            if name in rows:
                print(f"  {rows[name].cum_us / 1000:>6.1f} ms  {import_chain(rows, name)}")
    if failed_check and args.strict:
        return 1
    return 0


def report_modules(mods: list[str]) -> bool:
    """Print the watch list; True if a module that must not be imported was."""
    present = set(mods)
    tops = {m.split(".")[0] for m in present}
    bad = [m for m in MUST_NOT_IMPORT if m in present]
    verdict = "FAIL: " + ", ".join(bad) + " imported" if bad else "OK, none imported"
    print(f"  {len(present)} modules ({len(tops)} top-level packages)")
    print(f"  check {', '.join(MUST_NOT_IMPORT)} not in sys.modules: {verdict}")
    heavy = [m for m in WATCH if m in present]
    print(f"  watched modules present: {', '.join(heavy) or 'none'}")
    absent = [m for m in WATCH if m not in present]
    print(f"  watched modules absent:  {', '.join(absent) or 'none'}")
    return bool(bad)


if __name__ == "__main__":
    run_main(main)
