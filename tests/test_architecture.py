"""The layer rules of taps_post, checked on the source (see docs/architecture.md).

Rule 1: imports point down. Every module has a rank (RANKS below); a module may import modules of
its own or a lower rank, never a higher one. Imports under `if TYPE_CHECKING:` and imports inside
functions count like any other: a lazy import is still a dependency, only a later one.
Rule 2: no import circle, counted the same way.
Rule 3: policy, decision and diagnostics are pure: no event loop, no sockets, no clock, no
machine probing. That is what keeps `taps-post policy explain` fast and the decision testable.
Rule 4: private names (one leading underscore) stay in the module that defines them; aioquic's
private names are touched only in one compat module of the QUIC stack, so an aioquic upgrade
breaks in one place.
Rule 5: the public surface of `taps_post` is what `__all__` says, and all of it resolves.

The graph is built from the source with `ast`, never by importing, so a broken or heavy module
cannot hide an edge. Importing `a.b.c` also runs the `__init__` of `a` and `a.b`; those implicit
parent edges are not counted (every relative import would otherwise point at its package), only
the module an import statement names.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from helpers import ENV, PYTHON, ROOT, installed_env

PACKAGE = "taps_post"
SOURCE = ROOT / PACKAGE

# Rank table: a prefix covers itself and its submodules; the longest matching prefix wins.
# The package root (`taps_post/__init__.py`) is matched exactly, not as a prefix, so that a new
# module is never placed by accident: it must be added here.
RANKS: dict[str, int] = {
    "taps_post.diagnostics": 0,
    "taps_post.policy": 1,
    "taps_post.decision": 2,
    "taps_post.errors": 3,
    "taps_post.certs": 3,
    "taps_post.core": 4,
    "taps_post.system": 4,
    "taps_post.resolver": 4,
    "taps_post.ice": 4,
    "taps_post.stacks": 5,
    "taps_post.runtime": 6,
    "taps_post.cli": 7,
    "taps_post.demo": 7,
    "taps_post.docgen": 7,
    "taps_post.schemas": 7,
    "taps_post.dryrun": 7,
    "taps_post.httpx": 7,
    "taps_post.admin": 7,
}
ROOT_RANK = 7

PURE_PREFIXES = ("taps_post.policy", "taps_post.decision", "taps_post.diagnostics")
IMPURE_TOP_LEVEL = frozenset({"asyncio", "ssl", "socket", "time", "psutil", "netifaces",
                              "aioquic"})
HEAVY_FOR_EXPLAIN = ("asyncio", "ssl", "aioquic", "psutil", "netifaces")
ATTR_BUILTINS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


# --------------------------------------------------------------------------- source model


@dataclass(frozen=True, slots=True)
class Import:
    """One import of one module: `target` is the full dotted name as written (resolved if
    relative); `names` are the from-imported names ("*" for a star import)."""

    target: str
    names: tuple[str, ...]
    line: int
    where: str  # "module", "function" or "TYPE_CHECKING"
    aliases: tuple[tuple[str, str], ...]  # (bound name, dotted module) for `import x as y`


@dataclass(slots=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    line: int
    where: str


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve_relative(mod: Module, level: int, name: str | None) -> str:
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        raise AssertionError(f"{mod.rel}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(mod: Module) -> Iterator[Import]:
    def visit(nodes: Iterable[ast.AST], where: str) -> Iterator[Import]:
        for child in nodes:
            if isinstance(child, ast.Import):
                for alias in child.names:
                    bound = alias.asname or alias.name.partition(".")[0]
                    module = alias.name if alias.asname else alias.name.partition(".")[0]
                    yield Import(alias.name, (), child.lineno, where, ((bound, module),))
            elif isinstance(child, ast.ImportFrom):
                target = (_resolve_relative(mod, child.level, child.module) if child.level
                          else child.module or "")
                names = tuple(a.name for a in child.names)
                aliases = tuple((a.asname or a.name, f"{target}.{a.name}") for a in child.names
                                if a.name != "*")
                yield Import(target, names, child.lineno, where, aliases)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from visit(child.body, "TYPE_CHECKING" if where == "module" else where)
                yield from visit(child.orelse, where)
                continue
            elif (isinstance(child, ast.Call) and _call_name(child.func) == "import_module"
                  and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and not child.args[0].value.startswith(".")):
                # importlib.import_module("literal") is an import by another name.
                yield Import(child.args[0].value, (), child.lineno, where, ())
            inner = ("function" if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                              | ast.Lambda) else where)
            yield from visit(ast.iter_child_nodes(child), inner)

    yield from visit([mod.tree], "module")


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        name, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found[name] = Module(name, path, is_package, tree)
    assert found, f"no Python modules under {SOURCE}"
    for mod in found.values():
        mod.imports = list(_walk_imports(mod))
    return found


def _known(dotted: str) -> str | None:
    """The taps_post module a dotted name names, if there is one (a directory without
    `__init__.py` is a namespace package: it exists, but has no code and so no edges)."""
    return dotted if dotted in modules() else None


def _exists(dotted: str) -> bool:
    return dotted in modules() or (SOURCE.parent / dotted.replace(".", "/")).is_dir()


def _targets(imp: Import) -> Iterator[str]:
    """The taps_post modules one import statement loads. `from pkg import name` loads the
    submodule `pkg.name` when there is one, and `pkg` itself otherwise."""
    mods = modules()
    if not imp.names:
        if (target := _known(imp.target)) is not None:
            yield target
        return
    for name in imp.names:
        sub = f"{imp.target}.{name}"
        if name != "*" and sub in mods:
            yield sub
        elif (target := _known(imp.target)) is not None:
            yield target


@cache
def edges() -> tuple[Edge, ...]:
    out: dict[tuple[str, str], Edge] = {}
    for mod in modules().values():
        for imp in mod.imports:
            for dst in _targets(imp):
                if dst != mod.name:
                    out.setdefault((mod.name, dst), Edge(mod.name, dst, imp.line, imp.where))
    return tuple(out.values())


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {name: set() for name in modules()}
    for e in edges():
        g[e.src].add(e.dst)
    return g


def _edge(src: str, dst: str) -> Edge:
    return next(e for e in edges() if e.src == src and e.dst == dst)


def _describe(e: Edge) -> str:
    where = "" if e.where == "module" else f", {e.where}"
    return f"{modules()[e.src].rel}:{e.line}{where}"


def test_imports_name_existing_modules() -> None:
    """An import of a taps_post module that is not there would also hide its edges from the
    checks below (a broken tree, typically half way through a move)."""
    mods = modules()
    missing = []
    for mod in mods.values():
        for imp in mod.imports:
            if imp.target.partition(".")[0] != PACKAGE:
                continue
            if not _exists(imp.target):
                missing.append(f"  {mod.name} imports {imp.target}, which does not exist"
                               f"  [{mod.rel}:{imp.line}]")
    assert not missing, "imports of missing taps_post modules:\n" + "\n".join(missing)


# --------------------------------------------------------------------------- Rule 2: no circles


def strongly_connected(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the package is small, but recursion limits are not
    worth thinking about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    result.append(sorted(component))
    return result


def shortest_cycle(g: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest cycle inside one strongly connected component (BFS from every member)."""
    members = set(component)
    best: list[str] | None = None
    for start in component:
        parent: dict[str, str | None] = {start: None}
        queue = deque([start])
        found: list[str] | None = None
        while queue and found is None:
            node = queue.popleft()
            for child in sorted(g[node] & members):
                if child == start:
                    path = [node]
                    while (p := parent[path[-1]]) is not None:
                        path.append(p)
                    found = [*reversed(path), start]
                    break
                if child not in parent:
                    parent[child] = node
                    queue.append(child)
        if found is not None and (best is None or len(found) < len(best)):
            best = found
    assert best is not None
    return best


def test_no_import_circle() -> None:
    g = graph()
    circles = [c for c in strongly_connected(g) if len(c) > 1]
    report = []
    for component in circles:
        cycle = shortest_cycle(g, component)
        steps = "\n".join(f"    {a} -> {b}  [{_describe(_edge(a, b))}]"
                          for a, b in itertools.pairwise(cycle))
        report.append(f"  shortest circle: {' -> '.join(cycle)}\n{steps}\n"
                      f"  (all modules in this knot: {', '.join(component)})")
    assert not circles, "import circle(s) in taps_post:\n" + "\n".join(report)


# --------------------------------------------------------------------------- Rule 1: ranks


def rank(name: str) -> int | None:
    if name == PACKAGE:
        return ROOT_RANK
    best: tuple[int, int] | None = None
    for prefix, r in RANKS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]):
            best = (len(prefix), r)
    return None if best is None else best[1]


def test_imports_only_point_down() -> None:
    unplaced = sorted(name for name in modules() if rank(name) is None)
    assert not unplaced, (
        "cannot check ranks: modules without a rank, place them in RANKS in "
        "tests/test_architecture.py: " + ", ".join(unplaced))
    upward = []
    for e in sorted(edges(), key=lambda e: (e.src, e.dst)):
        src_rank, dst_rank = rank(e.src), rank(e.dst)
        assert src_rank is not None and dst_rank is not None
        if dst_rank > src_rank:
            upward.append(f"  {e.src} ({src_rank}) imports {e.dst} ({dst_rank})"
                          f"  [{_describe(e)}]")
    assert not upward, ("imports pointing up the layers (a module may import only its own "
                        "rank or lower):\n" + "\n".join(upward))


# --------------------------------------------------------------------------- Rule 3: purity


def test_decision_and_policy_are_pure() -> None:
    found = []
    for mod in modules().values():
        if not any(mod.name == p or mod.name.startswith(p + ".") for p in PURE_PREFIXES):
            continue
        for imp in mod.imports:
            top = imp.target.partition(".")[0]
            if top in IMPURE_TOP_LEVEL:
                where = "" if imp.where == "module" else f", {imp.where}"
                found.append(f"  {mod.name} imports {imp.target}  [{mod.rel}:{imp.line}{where}]")
    assert not found, ("policy, decision and diagnostics must stay pure (no "
                       + ", ".join(sorted(IMPURE_TOP_LEVEL)) + "):\n" + "\n".join(found))


# --------------------------------------------------------------------------- Rule 4: privates


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None for anything that is not a plain name chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _module_aliases(mod: Module) -> dict[str, str]:
    """Names this file binds to taps_post modules (`import taps_post.x as y`, `from . import x`,
    `import taps_post`). Scopes are ignored: a shadowing local would be odd enough to flag."""
    mods = modules()
    bound: dict[str, str] = {}
    for imp in mod.imports:
        for name, dotted in imp.aliases:
            if dotted in mods:
                bound[name] = dotted
    return bound


def _private_module_ok(importer: str, target: str) -> bool:
    """A private submodule (`_util.py`) is private to its package: siblings and the package
    itself may import it, nobody else."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            owner = ".".join(parts[:i])
            if not (importer == owner or importer.startswith(owner + ".")):
                return False
    return True


def test_no_private_names_cross_modules() -> None:
    mods = modules()
    found = []
    for mod in mods.values():
        for imp in mod.imports:
            if imp.target.partition(".")[0] != PACKAGE:
                continue
            if not _private_module_ok(mod.name, imp.target):
                found.append(f"  {mod.name} imports private module {imp.target}  "
                             f"[{mod.rel}:{imp.line}]")
            for name in imp.names:
                if not _is_private(name):
                    continue
                sub = f"{imp.target}.{name}"
                if sub in mods and _private_module_ok(mod.name, sub):
                    continue
                if _known(imp.target) == mod.name:
                    continue
                found.append(f"  {mod.name} imports {name} from {imp.target}  "
                             f"[{mod.rel}:{imp.line}]")
        aliases = _module_aliases(mod)
        for node in ast.walk(mod.tree):
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
                continue
            chain = _dotted(node)
            if chain is None or chain[0] not in aliases:
                continue
            # Substitute the alias, then find which module the attribute is read from.
            full = aliases[chain[0]].split(".") + chain[1:]
            owner = _known(".".join(full[:-1]))
            if owner is None or owner == mod.name:
                continue
            found.append(f"  {mod.name} reads {owner}.{node.attr}  [{mod.rel}:{node.lineno}]")
    assert not found, ("private names used across modules (make them public, or move the "
                       "code that needs them):\n" + "\n".join(sorted(set(found))))


QUIC_PACKAGE = "taps_post.stacks.quic"
QUIC_COMPAT = "taps_post.stacks.quic.compat"
"""The one module allowed aioquic's private names (taps_post/stacks/quic/compat.py)."""


def _is_quic_stack(name: str) -> bool:
    return name == QUIC_PACKAGE or name.startswith(QUIC_PACKAGE + ".")


def _is_quic_compat(name: str) -> bool:
    return name == QUIC_COMPAT


@cache
def _privates_defined_in_package() -> frozenset[str]:
    """Private attribute names taps_post itself defines: methods and class attributes in its
    classes, and `self._x = ...` stores. A private attribute read that is in none of these
    belongs to someone else (aioquic, asyncio)."""
    names: set[str] = set()
    for mod in modules().values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(stmt.name)
                    elif isinstance(stmt, ast.Assign):
                        names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
                    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        names.add(stmt.target.id)
                    if isinstance(stmt, ast.Assign | ast.AnnAssign):
                        # __slots__ = ("_a", "_b")
                        value = stmt.value
                        if isinstance(value, ast.Tuple | ast.List):
                            names.update(e.value for e in value.elts
                                         if isinstance(e, ast.Constant)
                                         and isinstance(e.value, str))
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
    return frozenset(n for n in names if _is_private(n))


def test_aioquic_privates_only_in_compat() -> None:
    """aioquic's internals move between releases; one compat module absorbs that. Outside it:
    no `from aioquic... import _x` (or a private aioquic module) anywhere, no getattr/setattr/
    hasattr/delattr with a literal private name anywhere (it hides the same thing from this
    check), and in the QUIC stack no `.x._y` read whose `_y` taps_post does not define itself
    (`self._y`/`cls._y` are let through: inherited protocol state is the subclassing contract
    aioquic documents by example)."""
    found = []
    ours = _privates_defined_in_package()
    for mod in modules().values():
        if _is_quic_compat(mod.name):
            continue
        for imp in mod.imports:
            if imp.target.partition(".")[0] != "aioquic":
                continue
            private = [p for p in imp.target.split(".") if _is_private(p)]
            private += [n for n in imp.names if _is_private(n)]
            if private:
                names = f" ({', '.join(imp.names)})" if imp.names else ""
                found.append(f"  {mod.name} imports aioquic private {', '.join(private)} via "
                             f"{imp.target}{names}  [{mod.rel}:{imp.line}]")
        for node in ast.walk(mod.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ATTR_BUILTINS and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str) and _is_private(node.args[1].value)
                    and not (isinstance(node.args[0], ast.Name)
                             and node.args[0].id in ("self", "cls"))):
                found.append(f"  {mod.name} calls {node.func.id}(..., "
                             f"{node.args[1].value!r})  [{mod.rel}:{node.lineno}]")
            elif (_is_quic_stack(mod.name) and isinstance(node, ast.Attribute)
                  and _is_private(node.attr) and node.attr not in ours
                  and not (isinstance(node.value, ast.Name)
                           and node.value.id in ("self", "cls"))):
                found.append(f"  {mod.name} reads .{node.attr} on `{ast.unparse(node.value)}`"
                             f", a private name taps_post does not define  "
                             f"[{mod.rel}:{node.lineno}]")
    assert not found, (
        "aioquic private names outside the QUIC compat module (taps_post/stacks/quic/"
        "compat.py); also no getattr/setattr with private names outside it:\n"
        + "\n".join(sorted(set(found))))


# --------------------------------------------------------------------------- light explain()

_EXPLAIN_SCRIPT = """
import json, sys
import taps_post
decision = taps_post.explain("https://example.com", system=[], env=sys.argv[1])
print(json.dumps({
    "decision": type(decision).__name__,
    "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules],
}))
"""


def _import_chains(importtime: str, wanted: tuple[str, ...]) -> dict[str, list[str]]:
    """Who imported what, from `python -X importtime` output: a module is printed after its
    children, one indentation level (two spaces) shallower."""
    rows: list[tuple[int, str]] = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or line.count("|") < 2:
            continue
        cell = line.rsplit("|", 1)[1]
        name = cell.strip()
        if name == "imported package":
            continue
        rows.append(((len(cell) - len(cell.lstrip(" ")) - 1) // 2, name))
    chains: dict[str, list[str]] = {}
    for i, (depth, name) in enumerate(rows):
        if name not in wanted or name in chains:
            continue
        chain, want = [name], depth - 1
        for d, parent in rows[i + 1:]:
            if d == want:
                chain.append(parent)
                want -= 1
                if want < 0:
                    break
        chains[name] = chain[::-1]
    return chains


def test_explain_with_env_file_stays_light(tmp_path: Path) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text(json.dumps(ENV), encoding="utf-8")  # JSON is YAML
    proc = subprocess.run(
        [*PYTHON, "-X", "importtime", "-c", _EXPLAIN_SCRIPT, str(env_file),
         json.dumps(HEAVY_FOR_EXPLAIN)],
        capture_output=True, text=True, env=installed_env(), cwd=tmp_path, timeout=60,
        check=False)
    errors = "\n".join(line for line in proc.stderr.splitlines()
                       if not line.startswith("import time:"))
    status = proc.returncode
    assert status == 0, f"the explain script failed:\n{errors[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["decision"] == "Decision", result
    heavy = result["heavy"]
    chains = _import_chains(proc.stderr, tuple(heavy))
    detail = "\n".join(f"  {m}: " + " -> ".join(chains.get(m, ["?"])) for m in heavy)
    assert not heavy, ("explain() with an env file loaded modules it has no use for "
                       "(import chains, outermost first):\n" + detail)


# --------------------------------------------------------------------------- light CLI

# The `taps-post` script as the console entry point runs it, then what it left loaded and
# whether the collector was on (cli Rule 6): written at exit, since the script exits.
_SCRIPT_RUNNER = """
import atexit, gc, json, sys
out = sys.argv.pop(1)
def report():
    with open(out, "w") as fh:
        json.dump({"modules": sorted(sys.modules), "gc": gc.isenabled()}, fh)
atexit.register(report)
from taps_post.cli import script
sys.argv[0] = "taps-post"
script()
"""

EXAMPLES = ROOT / "policies" / "examples"

POLICY_COMMANDS = {
    "validate": ["policy", "validate", str(EXAMPLES)],
    "explain": ["policy", "explain", "https://video.example", "--system",
                str(EXAMPLES / "system-corp-laptop.yaml"), "--app",
                str(EXAMPLES / "app-video.yaml"), "--app-name", "video-player", "--env",
                str(EXAMPLES / "env-laptop.yaml"), "--format", "json"],
    "show": ["policy", "show", "https://video.example", "--system",
             str(EXAMPLES / "system-corp-laptop.yaml"), "--env", str(EXAMPLES / "env-laptop.yaml")],
    "test": ["policy", "test", str(EXAMPLES / "scenarios"), "--system",
             str(EXAMPLES / "system-corp-laptop.yaml"), "--env",
             str(EXAMPLES / "env-laptop.yaml")],
}

HEAVY_FOR_POLICY = ("asyncio", "ssl", "aioquic", "cryptography", "dns", "psutil", "netifaces",
                    "pyroute2", "aioice", "httpx", "httpcore", "pydantic", "pathlib", "xml",
                    "hashlib")
"""What no policy command has a use for: the runtime's event loop and TLS, QUIC, the DNS
client, live discovery and ICE; pydantic itself (the files are validated by pydantic-core
directly, policy/shape.py), pathlib, xml (junit output only) and hashlib (which loads
OpenSSL). Each costs start-up time an administrator pays on every `validate` in a CI job
(docs/performance.md, CLI start-up)."""


@pytest.mark.parametrize("command", sorted(POLICY_COMMANDS))
def test_policy_commands_stay_light(command: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run([*PYTHON, "-c", _SCRIPT_RUNNER, str(out), *POLICY_COMMANDS[command]],
                          capture_output=True, text=True, env=installed_env(), cwd=tmp_path,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"taps-post {command} failed:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    heavy = sorted({m for m in report["modules"] if m.split(".")[0] in HEAVY_FOR_POLICY})
    assert not heavy, f"taps-post policy {command} imported {', '.join(heavy)}"
    assert report["gc"] is False, "the script runs a policy command with the collector off"


def test_policy_diff_keeps_the_collector_on(tmp_path: Path) -> None:
    """cli Rule 6: diff decides every request twice and may run long, so it is no one-shot."""
    system = str(EXAMPLES / "system-corp-laptop.yaml")
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [*PYTHON, "-c", _SCRIPT_RUNNER, str(out), "policy", "diff", "--old", system, "--new",
         system, "--scenarios", str(EXAMPLES / "scenarios"), "--env",
         str(EXAMPLES / "env-laptop.yaml")],
        capture_output=True, text=True, env=installed_env(), cwd=tmp_path, timeout=60,
        check=False)
    assert proc.returncode == 0, f"taps-post policy diff failed:\n{proc.stderr[-3000:]}"
    assert json.loads(out.read_text())["gc"] is True


def test_import_taps_post_loads_nothing_until_a_name_is_used() -> None:
    script = ("import sys, taps_post; before = sorted(m for m in ('pydantic', 'yaml', "
              "'taps_post.decision.decision') if m in sys.modules); taps_post.Decision; "
              "print(before, 'taps_post.decision.decision' in sys.modules)")
    proc = subprocess.run([*PYTHON, "-c", script], capture_output=True, text=True,
                          env=installed_env(), timeout=60, check=True)
    assert proc.stdout.split() == ["[]", "True"], proc.stdout + proc.stderr


def test_main_in_process_leaves_the_collector_as_it_was(capsys: Any) -> None:
    import gc

    from taps_post.cli import main

    assert gc.isenabled()
    assert main(["policy", "validate", str(EXAMPLES)]) == 0
    assert gc.isenabled(), "main() turned the collector off for its in-process caller"


# --------------------------------------------------------------------------- public surface


def test_all_lists_the_public_names() -> None:
    import taps_post

    exported = list(taps_post.__all__)
    offered = {name for name in dir(taps_post) if not name.startswith("_")}
    duplicates = sorted({n for n in exported if exported.count(n) > 1})
    missing = sorted(offered - set(exported))
    hidden = sorted(set(exported) - offered)
    unresolved = []
    for name in sorted(offered | set(exported)):
        try:
            getattr(taps_post, name)
        except Exception as exc:  # any failure is a broken public name
            unresolved.append(f"{name} ({type(exc).__name__}: {exc})")
    problems = []
    if missing:
        problems.append("offered by dir(taps_post) but not in __all__: " + ", ".join(missing))
    if hidden:
        problems.append("in __all__ but not offered by dir(taps_post): " + ", ".join(hidden))
    if duplicates:
        problems.append("listed twice in __all__: " + ", ".join(duplicates))
    if unresolved:
        problems.append("do not resolve: " + ", ".join(unresolved))
    assert not problems, "taps_post public surface:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from . import certs", {"taps_post.certs"}),
    ("from . import certs, explain", {"taps_post.certs", "taps_post"}),
    ("from .errors import TapsError", {"taps_post.errors"}),
    ("if TYPE_CHECKING:\n    from .errors import TapsError", {"taps_post.errors"}),
    ("def f():\n    from .errors import TapsError", {"taps_post.errors"}),
    ("class C:\n    async def f(self):\n        import taps_post.certs", {"taps_post.certs"}),
    ("import importlib\nimportlib.import_module('taps_post.errors')", {"taps_post.errors"}),
    ("from .. import errors", {"taps_post.errors"}),
    ("from ..policy.context import PolicyContext", {"taps_post.policy.context"}),
    ("import taps_post.policy.load as load", {"taps_post.policy.load"}),
])
def test_the_graph_resolves_imports(source: str, expected: set[str]) -> None:
    """The checker itself: relative and submodule imports land on the right module."""
    here = "taps_post.decision.explain" if source.startswith("from ..") else "taps_post.cli"
    mod = Module(here, SOURCE / "x.py", False, ast.parse(source))
    found = {t for imp in _walk_imports(mod) for t in _targets(imp)}
    assert found == expected


def test_the_circle_finder_finds_the_shortest_circle() -> None:
    g = {"a": {"b"}, "b": {"c", "a"}, "c": {"d"}, "d": {"a"}, "e": {"a"}}
    assert strongly_connected(g) == [["a", "b", "c", "d"], ["e"]]
    assert shortest_cycle(g, ["a", "b", "c", "d"]) == ["a", "b", "a"]
