"""Loading policy documents (files, directories, dicts) into checked, compiled layers.

Rule 1: a document is either loaded whole or rejected whole with every problem listed as
`file:line:col: message`; nothing half-checked ever reaches the resolver.
Rule 2: every Statement knows its layer, rule, file and line, because every decision must be
explainable down to the line that caused it.
Rule 3: everything loaded is immutable (tuples, frozen dataclasses, read-only mappings), so a
loaded document can be cached and shared by every PolicyContext and Decision that uses it.
Rule 4: a file is parsed again whenever its identity on disk changes (path, inode, size,
mtime) or the stack catalogue does (it decides which `stack.NAME` keys exist); a document's
`digest` names its content, so equal inputs give equal fingerprints.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from ..diagnostics import Diagnostic, InputError
from . import catalog
from .match import Matcher, check_glob, compile_when
from .model import InterfaceFact, PolicyDocument
from .registry import PROFILES, REGISTRY, lookup, nearest
from .yamlpos import Path, Positions, load_yaml

__all__ = [
    "LAYERS",
    "LoadedRule",
    "PolicyFile",
    "PolicySpec",
    "Statement",
    "bundled_path",
    "discover_system_sources",
    "load_document",
    "load_layer",
    "pydantic_diagnostics",
]

LAYERS: tuple[str, ...] = ("defaults", "system", "app", "carrier")

PolicySpec = str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any] | None
"""A path (file or directory), a dict holding one policy document, or a list of these."""


@dataclass(frozen=True, slots=True)
class Statement:
    """One `key: value` a rule (or the built-in defaults) states, carrying its provenance
    (layer, rule, file:line) so that every effective value can cite where it came from."""

    key: str
    value: Any
    layer: str
    rule: str | None
    source: str | None
    """"file:line" of the statement, None for built-in defaults."""
    file: str
    """The document's name, for the alphabetical tie-break."""
    enforce: bool = False
    priority: int = 0
    specificity: int = 0
    via: str | None = None
    """The profile this statement came from, if any (`use:`)."""

    def describe(self) -> str:
        if self.rule is None:
            return f"{self.layer} default"
        via = f" via {self.via}" if self.via else ""
        return f"{self.layer} rule {self.rule}{via} ({self.source})"


@dataclass(frozen=True, slots=True)
class LoadedRule:
    """One checked rule, compiled: its matcher runs on every request, so nothing is left to
    parse at decision time."""

    id: str
    description: str | None
    matcher: Matcher
    enforce: bool
    priority: int
    statements: tuple[Statement, ...]
    source: str
    when: Mapping[str, Any]
    """The rule's `when` as data (read-only, lists as tuples), for the lint in validate.py."""
    column: int | None = None


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One loaded policy document, kept whole (rules, facts, warnings, matched or not) so
    explain can list every layer and rule, not only the ones that won."""

    layer: str
    source: str
    name: str
    rules: tuple[LoadedRule, ...]
    interfaces: tuple[tuple[InterfaceFact, str], ...] = ()
    warnings: tuple[Diagnostic, ...] = field(default=())
    digest: str = ""
    """A hash of the document's content (file text, or the dict's canonical form): equal
    content, equal digest. PolicyContext.fingerprint is built from it."""


def bundled_path(*parts: str) -> FsPath:
    """Bundled data (`policies/`, `schemas/`): in the wheel, or in the source checkout."""
    here = FsPath(__file__).resolve().parent.parent
    packaged = here.joinpath("_bundled", *parts)
    if packaged.exists():
        return packaged
    return here.parent.joinpath(*parts)


def discover_system_sources() -> list[str]:
    """$TAPS_POST_SYSTEM_POLICY, else /etc/taps-post/policy.d, else the bundled default
    (docs/policy-language.md, "Layers and where they come from")."""
    env = os.environ.get("TAPS_POST_SYSTEM_POLICY")
    if env:
        return [env]
    etc = FsPath("/etc/taps-post/policy.d")
    if etc.is_dir() and any(_policy_files(etc)):
        return [str(etc)]
    return [str(bundled_path("policies", "system", "default.yaml"))]


def _policy_files(directory: FsPath) -> list[FsPath]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


_FILES: dict[tuple[str, str, int, int, int, int, int], PolicyFile] = {}
"""(path, layer, st_dev, st_ino, st_size, st_mtime_ns, catalogue version) -> the loaded file.
The catalogue version is there because whether `stack.NAME` is valid depends on it."""
_DOCS: dict[tuple[str, str, str, int], PolicyFile] = {}
"""(layer, source, content digest, catalogue version) -> a document given as Python data."""
_CACHE_LIMIT = 256


def load_layer(spec: PolicySpec, layer: str) -> tuple[PolicyFile, ...]:
    """Load every document a layer argument names; all errors of all documents at once."""
    docs: list[PolicyFile] = []
    problems: list[Diagnostic] = []
    for item in _expand(spec, layer):
        try:
            if isinstance(item, Mapping):
                docs.append(_load_mapping(item, layer))
            else:
                docs.append(_load_file(item, layer))
        except InputError as exc:
            problems.extend(exc.diagnostics)
    if problems:
        raise InputError(problems)
    return tuple(docs)


def _expand(spec: PolicySpec, layer: str) -> Iterable[str | Mapping[str, Any]]:
    if spec is None:
        return
    if isinstance(spec, Mapping):
        yield spec
        return
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        try:
            is_dir = stat.S_ISDIR(os.stat(text).st_mode)
        except (OSError, ValueError):
            raise InputError([Diagnostic(text, f"no such {layer} policy file or directory")]
                             ) from None
        if is_dir:
            for p in _policy_files(FsPath(text)):
                yield os.path.join(text, p.name)
        else:
            yield text
        return
    if isinstance(spec, Sequence):
        for item in spec:
            yield from _expand(item, layer)
        return
    raise TypeError(
        f"a {layer} policy must be a path, a dict holding one policy document, or a list of "
        f"these, not {type(spec).__name__}"
    )


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _load_file(path: str, layer: str) -> PolicyFile:
    try:
        before = _identity(os.stat(path))
        key = (path, layer, *before, catalog.version())
        cached = _FILES.get(key)
        if cached is not None:
            return cached
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        after = _identity(os.stat(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError([Diagnostic(path, f"cannot read policy: {exc}")]) from None
    data, positions = load_yaml(text, path)
    stem = FsPath(path).stem
    digest = _digest(text)
    loaded = _build(data, positions, layer, path, stem, digest)
    if after == before:  # not rewritten while we read it: this text is what the key names
        if len(_FILES) >= _CACHE_LIMIT:
            _FILES.clear()
        _FILES[key] = loaded
    return loaded


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _canonical(value: Any) -> str:
    """A text that is equal for equal documents (mapping order aside) and tells apart what
    validation tells apart (1, True and "1"; a list and a tuple)."""
    if isinstance(value, Mapping):
        return "{" + ",".join(sorted(f"{_canonical(k)}:{_canonical(v)}"
                                     for k, v in value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(_canonical(v) for v in value) + ")"
    return f"{type(value).__name__}:{value!r}"


def _load_mapping(data: Mapping[str, Any], layer: str) -> PolicyFile:
    source = f"<{layer}>"
    digest = _digest(_canonical(data))
    key = (layer, source, digest, catalog.version())
    cached = _DOCS.get(key)
    if cached is not None:
        return cached
    loaded = load_document(data, layer=layer, source=source, digest=digest)
    if len(_DOCS) >= _CACHE_LIMIT:
        _DOCS.clear()
    _DOCS[key] = loaded
    return loaded


def load_document(
    data: Mapping[str, Any], *, layer: str, source: str, positions: Positions | None = None,
    digest: str | None = None,
) -> PolicyFile:
    """Check and compile one document given as Python data."""
    name = data.get("name") if isinstance(data, Mapping) else None
    return _build(dict(data), positions or Positions(source), layer, source,
                  name if isinstance(name, str) else source,
                  digest if digest is not None else _digest(_canonical(data)))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _build(data: Any, pos: Positions, layer: str, source: str, default_name: str,
           digest: str) -> PolicyFile:
    if not isinstance(data, dict):
        got = "an empty document" if data is None else type(data).__name__
        raise InputError([pos.diagnostic((), f"expected a policy document (a mapping), got {got}")])
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise InputError(pydantic_diagnostics(exc, pos)) from None

    problems: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    if doc.layer != layer:
        problems.append(pos.diagnostic(
            ("layer",), f"this file declares layer {doc.layer!r} but was loaded as the "
                        f"{layer} layer"))
    name = doc.name or default_name
    facts: list[tuple[InterfaceFact, str]] = []
    for i, fact in enumerate(doc.interfaces):
        where = ("interfaces", i)
        if layer != "system":
            warnings.append(pos.diagnostic(
                where, f"interface facts belong in the system layer; ignored in the {layer} layer"))
            continue
        if fact.match.name is None and fact.match.type is None:
            problems.append(pos.diagnostic((*where, "match"), "match needs a name or a type"))
        if fact.match.name and (why := check_glob(fact.match.name)):
            problems.append(pos.diagnostic((*where, "match", "name"), why))
        facts.append((fact, _src(pos, where)))

    rules: list[LoadedRule] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(doc.rules):
        where = ("rules", i)
        if rule.id in seen:
            line, _ = pos.locate(("rules", seen[rule.id], "id"))
            first = f" (first used on line {line})" if line else ""
            problems.append(pos.diagnostic((*where, "id"), f"duplicate rule id {rule.id!r}{first}"))
            continue
        seen[rule.id] = i
        for fieldname in ("app", "host"):
            for j, pattern in enumerate(getattr(rule.when, fieldname) or ()):
                at: Path = (*where, "when", fieldname) + ((j,) if _is_list(data, where, fieldname)
                                                          else ())
                if fieldname == "host" and "/" in pattern:
                    if (why := _check_cidr(pattern)) is not None:
                        problems.append(pos.diagnostic(at, why))
                elif (why := check_glob(pattern)) is not None:
                    problems.append(pos.diagnostic(at, why))
        statements = _statements(rule.set_, rule, pos, where, layer, name, source, problems)
        if problems:
            continue
        rules.append(LoadedRule(
            id=rule.id,
            description=rule.description,
            matcher=compile_when(rule.when),
            enforce=rule.enforce,
            priority=rule.priority,
            statements=tuple(statements),
            source=_src(pos, where),
            when=_freeze(rule.when.model_dump(exclude_none=True)),
            column=pos.locate(where)[1],
        ))
    if problems:
        raise InputError(problems)
    return PolicyFile(layer, source, name, tuple(rules), tuple(facts), tuple(warnings), digest)


def _is_list(data: Any, where: Path, fieldname: str) -> bool:
    try:
        return isinstance(data["rules"][where[1]]["when"][fieldname], list)
    except (KeyError, IndexError, TypeError):
        return False


def _check_cidr(text: str) -> str | None:
    import ipaddress

    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"invalid CIDR {text!r}: expected an address/prefix such as 192.0.2.0/24"
    return None


def _src(pos: Positions, path: Path) -> str:
    line, _ = pos.locate(path)
    if line is None:
        from .yamlpos import render_path

        return f"{pos.source}:{render_path(path)}" if path else pos.source
    return f"{pos.source}:{line}"


def _statements(
    raw: dict[str, Any],
    rule: Any,
    pos: Positions,
    where: Path,
    layer: str,
    name: str,
    source: str,
    problems: list[Diagnostic],
) -> list[Statement]:
    spec_kw = dict(layer=layer, rule=rule.id, file=name, enforce=rule.enforce,
                   priority=rule.priority, specificity=rule.when.specificity)
    by_key: dict[str, Statement] = {}
    for j, profile in enumerate(rule.use):
        at = _src(pos, (*where, "use", j))
        for key, value in PROFILES[profile].items():
            by_key[key] = Statement(key, value, source=at, via=profile, **spec_kw)
    own: dict[str, Path] = {}
    for key, value, path in _flatten(raw, (*where, "set"), ""):
        try:
            spec, leaf = lookup(key)
        except KeyError as exc:
            hint = exc.args[1] if len(exc.args) > 1 else None
            extra = f" (did you mean {hint!r}?)" if hint else ""
            problems.append(pos.diagnostic(path, f"unknown property {key!r}{extra}", key=True))
            continue
        if leaf is not None and spec.name == "interface" and (why := check_glob(leaf)):
            problems.append(pos.diagnostic(path, why, key=True))
            continue
        try:
            parsed = spec.parse(value)
        except ValueError as exc:
            problems.append(pos.diagnostic(path, f"{key}: {exc}"))
            continue
        if key in own:
            line, _ = pos.locate(own[key], key=True)
            first = f" (first on line {line})" if line else ""
            problems.append(pos.diagnostic(path, f"property {key!r} is set twice in rule "
                                                 f"{rule.id!r}{first}", key=True))
            continue
        own[key] = path
        by_key[key] = Statement(key, parsed, source=_src(pos, path), **spec_kw)
    return [by_key[k] for k in sorted(by_key)]


def _flatten(raw: Any, path: Path, prefix: str) -> Iterable[tuple[str, Any, Path]]:
    for key, value in raw.items():
        key = str(key)
        full = f"{prefix}.{key}" if prefix else key
        child = (*path, key)
        spec = REGISTRY.get(full)
        if isinstance(value, dict) and (spec is None or spec.map_key):
            yield from _flatten(value, child, full)
        else:
            yield full, value, child


_FRIENDLY = {
    "missing": "missing required key {name!r}",
    "bool_type": "expected true or false, got {input!r}",
    "int_type": "expected an integer, got {input!r}",
    "string_type": "expected a string, got {input!r}",
    "list_type": "expected a list, got {input!r}",
    "dict_type": "expected a mapping, got {input!r}",
    "model_type": "expected a mapping, got {input!r}",
    "model_attributes_type": "expected a mapping, got {input!r}",
}


def pydantic_diagnostics(exc: ValidationError, pos: Positions) -> list[Diagnostic]:
    """A pydantic error as located, friendly diagnostics; shared with the environment
    snapshot loader so both formats report problems the same way."""
    out: list[Diagnostic] = []
    seen: set[tuple[Any, ...]] = set()
    for err in exc.errors(include_url=False):
        loc: Path = tuple(err["loc"])
        kind = err["type"]
        name = str(loc[-1]) if loc else ""
        if kind == "extra_forbidden":
            hint = nearest(name, _known_fields(loc[:-1]))
            extra = f" (did you mean {hint!r}?)" if hint else ""
            known = ", ".join(sorted(_known_fields(loc[:-1])))
            message = f"unknown key {name!r}{extra}; expected one of: {known}"
            diag = pos.diagnostic(loc, message, key=True)
        elif kind == "missing":
            diag = pos.diagnostic(loc[:-1], _FRIENDLY[kind].format(name=name, input=None))
        else:
            template = _FRIENDLY.get(kind)
            if template:
                message = template.format(name=name, input=err.get("input"))
            else:
                message = err["msg"]
                if message.startswith("Value error, "):
                    message = message[len("Value error, "):]
                    if message.startswith("@"):  # the validator names the bad list item
                        index, _, message = message[1:].partition(" ")
                        loc = (*loc, int(index))
                elif kind == "literal_error":
                    message = f"{message[0].lower()}{message[1:]}, got {err.get('input')!r}"
                else:
                    message = f"{message[0].lower()}{message[1:]}"
            if pos.values or pos.keys:
                field = ".".join(str(p) for p in loc if isinstance(p, str)) or "document"
                message = f"{field}: {message}"
            diag = pos.diagnostic(loc, message)
        ident = (diag.line, diag.column, diag.path, diag.message)
        if ident not in seen:
            seen.add(ident)
            out.append(diag)
    return out


def _known_fields(loc: Path) -> list[str]:
    from pydantic import BaseModel

    from .model import InterfaceMatch, Rule, When

    model: type[BaseModel] = PolicyDocument
    walk = [p for p in loc if isinstance(p, str)]
    routes: dict[tuple[type[BaseModel], str], type[BaseModel]] = {
        (PolicyDocument, "rules"): Rule,
        (PolicyDocument, "interfaces"): InterfaceFact,
        (Rule, "when"): When,
        (InterfaceFact, "match"): InterfaceMatch,
    }
    for part in walk:
        nxt = routes.get((model, part))
        if nxt is None:
            break
        model = nxt
    return [f.alias or n for n, f in model.model_fields.items()]
