"""Regenerate the tables in docs/*.md from the code they describe.

Rule 1: the property table comes from `REGISTRY`, the stack table from the stack catalogue
(`policy.catalog`, read when the table is rendered), the conflict table from
`resolve.PREF_TABLE`: the docs are rendered from the same data the engine runs on, so they
cannot drift from it (`--check` in the tests).
Rule 2: only the text between `<!-- BEGIN GENERATED: NAME -->` and `<!-- END GENERATED: NAME -->`
is ever touched; everything else in a document is the author's. With `--run-examples`, the
output lines of ```console blocks are touched too (rewritten from a real run of their commands),
and nothing else.

Usage: python -m taps_post.docgen [--check] [--run-examples] [FILE.md ...]
       (default: every docs/*.md that holds a generated block or a console example)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .policy import catalog
from .policy.registry import INTERFACE_TYPES, REGISTRY, Pref, PropertySpec
from .policy.resolve import PREF_TABLE

__all__ = [
    "BLOCKS",
    "main",
    "render_conflict_table",
    "render_properties_table",
    "render_stack_table",
    "run_examples",
    "update_file",
    "update_text",
]

_DIRECTION = {
    "smaller": "smaller is stricter",
    "larger": "higher is stricter",
    "true": "true is stricter",
    "false": "false is stricter",
    "none": "no order",
}


def _cell(text: str) -> str:
    """Escape a table cell: a literal `|` would split the cell."""
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`"


def _show(value: Any) -> str:
    if isinstance(value, Pref):
        return value.value
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value[:1].isdigit() else value
    return str(value)


def _key_text(spec: PropertySpec) -> str:
    if not spec.map_key:
        return _code(spec.name)
    if spec.name == "interface":
        return _code("interface.TYPE") + " or " + _code("interface.GLOB")
    if spec.options():
        return " ".join(_code(f"{spec.name}.{c}") for c in spec.options())
    return _code(f"{spec.name}.NAME")


def _type_text(spec: PropertySpec) -> str:
    if spec.kind == "preference":
        return "preference"
    if spec.kind == "int":
        unit = f" {spec.unit}" if spec.unit else ""
        if spec.minimum is not None and spec.maximum is not None:
            return f"integer{unit}, {spec.minimum}..{spec.maximum}"
        if spec.minimum is not None:
            return f"integer{unit}, >= {spec.minimum}"
        return f"integer{unit}"
    if spec.kind == "enum":
        return " | ".join(spec.options())
    if spec.kind == "bool":
        return "true | false"
    if spec.kind == "tls_version":
        return '"1.2" | "1.3"'
    if spec.kind == "string_list":
        return "list of strings"
    raise AssertionError(spec.kind)  # pragma: no cover


def _default_text(spec: PropertySpec) -> str:
    text = _show(spec.default)
    if spec.unit == "bytes" and isinstance(spec.default, int) and spec.default % 1024 == 0:
        text += f" ({_binary(spec.default)})"
    if spec.listen_default is not None and spec.listen_default != spec.default:
        text += f" (listen: {_show(spec.listen_default)})"
    return text


def _binary(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"  # pragma: no cover


def _order_text(spec: PropertySpec) -> str:
    if spec.kind == "preference":
        return "preference order"
    return _DIRECTION[spec.direction]


def _doc_text(spec: PropertySpec) -> str:
    doc = spec.description()
    if spec.name == "interface":
        doc = ("An interface type (" + ", ".join(INTERFACE_TYPES) + ") or, for any other "
               "word, an interface-name glob")
    return doc


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def render_properties_table() -> str:
    """Every registry key: type, default, level, strictness direction and what it means."""
    rows = [
        (_key_text(spec), _type_text(spec), _default_text(spec), spec.level,
         _order_text(spec), _doc_text(spec))
        for spec in REGISTRY.values()
    ]
    table = _table(("key", "type", "default", "level", "strictness", "meaning"), rows)
    return (table + "\n\n"
            "Preference order, strictest first: "
            + " > ".join(_code(p.value) for p in sorted(Pref, key=lambda p: -p.strength))
            + ". `level` says where a key acts: `protocol` keys judge stacks, `path` keys judge "
            "interfaces, `endpoint` keys judge remote addresses, `filter` keys remove "
            "candidates, `plan` keys shape the race, `runtime` keys configure the connection.")


_STACK_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("reliability", "preserveOrder", "congestionControl", "keepAlive"),
    ("preserveMsgBoundaries",),
    ("perMsgReliability",),
    ("multistreaming",),
    ("zeroRttMsg",),
    ("secure",),
)


def _feature_columns() -> list[tuple[str, ...]]:
    """The fixed column groups, plus any protocol feature the registry grows later."""
    shown = {k for group in _STACK_COLUMNS for k in group}
    always = _always_features()
    extra = sorted({f for i in catalog.infos() for f in i.features} - shown - always)
    return [*_STACK_COLUMNS, *((f,) for f in extra)]


def _always_features() -> set[str]:
    return set.intersection(*(set(i.features) for i in catalog.infos()))


def render_stack_table() -> str:
    """What each stack offers, in the catalogue's tie-break order."""
    columns = _feature_columns()
    header = [", ".join(group) for group in columns] + ["multipath-capable", "schemes"]
    rows = []
    table = catalog.schemes()
    for info in catalog.infos():
        feats = info.features
        cells = [_code(info.name)]
        for group in columns:
            have = [k in feats for k in group]
            cells.append("yes" if all(have) else "no" if not any(have) else "partly")
        cells.append("yes" if info.multipath_capable else "no")
        schemes = [s for s, allowed in table.items() if info.name in allowed]
        hostport = [] if info.rendezvous else ["host:port"]  # it serves rendezvous:// only
        cells.append(", ".join([*(f"{s}://" for s in schemes), *hostport]))
        rows.append(cells)
    always = ", ".join(_code(k) for k in sorted(_always_features()))
    return (_table(["stack", *header], rows) + "\n\n"
            f"Every stack offers {always}. Rows are in tie-break order: when two candidates "
            "rank equal on everything else, the stack higher in this table is tried first.")


_CONFLICT_ORDER = (Pref.REQUIRE, Pref.PROHIBIT, Pref.PREFER, Pref.AVOID, Pref.NO_PREFERENCE)


def render_conflict_table() -> str:
    """PREF_TABLE as a matrix: enforced floor (rows) against a lower layer's value (columns)."""
    header = ["enforced floor ↓ / lower layer says →", *(_code(p.value) for p in _CONFLICT_ORDER)]
    rows = []
    for floor in _CONFLICT_ORDER:
        cells = [_code(floor.value)]
        for value in _CONFLICT_ORDER:
            verdict = PREF_TABLE[(floor, value)]
            cells.append(f"**{verdict}**" if verdict == "conflict" else verdict)
        rows.append(cells)
    return _table(header, rows)


BLOCKS: dict[str, Callable[[], str]] = {
    "properties": render_properties_table,
    "stacks": render_stack_table,
    "conflict-table": render_conflict_table,
}
"""Block name -> renderer. A document may hold any of these blocks, each at most once."""

_BEGIN = re.compile(r"<!-- BEGIN GENERATED: ([A-Za-z0-9_-]+) -->")
_END = "<!-- END GENERATED: {name} -->"
_NOTE = "<!-- Generated by `python -m taps_post.docgen`; edit the code, not this block. -->"


def update_text(text: str, source: str = "<text>") -> str:
    """`text` with every generated block re-rendered; ValueError on a malformed block."""
    out: list[str] = []
    pos = 0
    seen: set[str] = set()
    for match in _BEGIN.finditer(text):
        if match.start() < pos:
            raise ValueError(f"{source}: BEGIN GENERATED: {match.group(1)} inside another block")
        name = match.group(1)
        line = text.count("\n", 0, match.start()) + 1
        render = BLOCKS.get(name)
        if render is None:
            known = ", ".join(BLOCKS)
            raise ValueError(f"{source}:{line}: unknown generated block {name!r}; known: {known}")
        if name in seen:
            raise ValueError(f"{source}:{line}: generated block {name!r} appears twice")
        seen.add(name)
        end = text.find(_END.format(name=name), match.end())
        if end < 0:
            raise ValueError(f"{source}:{line}: no {_END.format(name=name)} after this line")
        out.append(text[pos:match.end()])
        out.append(f"\n{_NOTE}\n\n{render()}\n\n")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def block_names(text: str) -> list[str]:
    """The generated blocks a document holds, in order."""
    return [m.group(1) for m in _BEGIN.finditer(text)]


# --- console examples -------------------------------------------------------------------------
#
# A ```console block holds `$ command` lines (a trailing backslash continues a command on the
# next line), each followed by its output. `run_examples` runs every command with bash, from a
# scratch directory holding `policies/` (a link to the checkout's) and every ```yaml or
# ```python block of the same section whose first line is `# file: NAME`, with `taps-post`
# and `python` running this checkout, and puts the real output in place. A
# section starts at each `##` or `###` heading. ```text blocks are left alone: use them for
# output that depends on the machine (`taps-post interfaces`).

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{2,3} ", re.MULTILINE)
_FILE_LINE = re.compile(r"\A# file: ([A-Za-z0-9_.-]+\.(?:ya?ml|py))\n")
_ROOT = Path.cwd()
"""The checkout being documented: docgen is a maintainer's tool, run from the repository root
(`make schemas`); the package itself may be the installed copy."""


def _shim(bindir: Path) -> None:
    """`taps-post` and `python` on PATH that run this checkout with this interpreter."""
    for name, args in (("taps-post", ' -P -m taps_post.cli "$@"'), ("python", ' -P "$@"')):
        script = bindir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}"{args}\n', encoding="utf-8")
        script.chmod(0o755)


def _commands(body: str) -> list[str]:
    commands: list[str] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            cmd = [lines[i][2:]]
            while cmd[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            commands.append("\n".join(cmd))
        i += 1
    return commands


def _run(command: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120, check=False)
    lines = [line.rstrip() for line in proc.stdout.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def run_examples(text: str, source: str = "<text>") -> str:
    """`text` with the output of every ```console block replaced by a real run's output."""
    sections = [m.start() for m in _HEADING.finditer(text)]
    out: list[str] = []
    pos = 0
    files: dict[str, str] = {}
    section = -1
    with tempfile.TemporaryDirectory(prefix="taps-post-docs-") as tmp:
        bindir = Path(tmp) / "bin"
        bindir.mkdir()
        _shim(bindir)
        env = dict(os.environ)
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)  # the examples run the installed package, as a user would
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("TAPS_POST_SYSTEM_POLICY", None)
        env["COLUMNS"] = "100"
        for n, fence in enumerate(_FENCE.finditer(text)):
            current = sum(1 for s in sections if s < fence.start())
            if current != section:
                section, files = current, {}
            info, body = fence.group(1).strip(), fence.group(2)
            lang = info.split()[0] if info else ""
            named = _FILE_LINE.match(body)
            if lang in ("yaml", "python") and named:
                files[named.group(1)] = body
                continue
            if lang != "console":
                continue
            commands = _commands(body)
            if not commands:
                line = text.count("\n", 0, fence.start()) + 1
                raise ValueError(f"{source}:{line}: console block without a `$ ` command")
            work = Path(tmp) / f"block{n}"
            work.mkdir()
            (work / "policies").symlink_to(_ROOT / "policies")
            for name, content in files.items():
                (work / name).write_text(content, encoding="utf-8")
            parts: list[str] = []
            for command in commands:
                parts.append("$ " + command)
                result = _run(command, work, env)
                if result:
                    parts.append(result)
            out.append(text[pos:fence.start(2)])
            out.append("\n".join(parts) + "\n")
            pos = fence.end(2)
    out.append(text[pos:])
    return "".join(out)


def update_file(path: str | Path, *, check: bool = False, run: bool = False) -> bool:
    """Re-render the blocks in `path` (and with `run`, the console examples); True if the
    file changed (with `check`: would change; nothing is written then)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    new = update_text(text, str(path))
    if run:
        new = run_examples(new, str(path))
    if new == text:
        return False
    if not check:
        p.write_text(new, encoding="utf-8")
    return True


def _has_work(text: str) -> bool:
    return bool(block_names(text)) or "```console" in text


def default_files() -> list[Path]:
    """Every docs/*.md of the source checkout that holds a generated block or an example."""
    docs = _ROOT / "docs"
    if not docs.is_dir():
        return []
    return [p for p in sorted(docs.glob("*.md")) if _has_work(p.read_text(encoding="utf-8"))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m taps_post.docgen",
        description="Regenerate the tables in the docs from the property registry, the stack "
                    "registry and the conflict table; optionally re-run the console examples.")
    parser.add_argument("files", nargs="*", metavar="FILE.md",
                        help="documents to update (default: every docs/*.md with a block "
                             "or a console example)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a file is out of date")
    parser.add_argument("--run-examples", action="store_true",
                        help="also re-run the commands of ```console blocks and refresh "
                             "their output")
    args = parser.parse_args(argv)
    files = [Path(f) for f in args.files] or default_files()
    stale: list[str] = []
    for path in files:
        try:
            changed = update_file(path, check=args.check, run=args.run_examples)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            print(f"docgen: {exc}", file=sys.stderr)
            return 2
        if changed:
            stale.append(str(path))
    flags = " --run-examples" if args.run_examples else ""
    for name in stale:
        if args.check:
            print(f"{name}: out of date; run `python -m taps_post.docgen{flags} {name}`",
                  file=sys.stderr)
        else:
            print(f"updated {name}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
