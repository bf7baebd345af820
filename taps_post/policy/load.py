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
Rule 5: fail closed. Every path named, and every *.yaml/*.yml entry of a directory named, is
loaded or is an error (`file: what is wrong`): a dangling symlink, a FIFO, a device, an
unreadable or oversized file is never skipped. Only regular files are opened (stat first,
then O_NONBLOCK and fstat on the descriptor), and never more than MAX_FILE_BYTES is read.
Rule 6: as root, a system policy file, and the directories that hold it, must be owned by
root and writable by root alone (sshd's StrictModes); anything else is refused by name and
mode. The bundled default is exempt: it ships with the code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..diagnostics import Diagnostic, InputError
from . import catalog, shape
from .match import Matcher, check_glob, compile_when
from .model import InterfaceFact, PolicyDocument
from .positions import Path, Positions, render_path
from .registry import PROFILES, REGISTRY, ItemError, lookup, nearest

if TYPE_CHECKING:
    from pydantic_core import ValidationError

__all__ = [
    "ETC_POLICY_DIR",
    "LAYERS",
    "MAX_FILE_BYTES",
    "SUFFIXES",
    "LoadedRule",
    "PolicyFile",
    "PolicySpec",
    "Statement",
    "bundled_path",
    "discover_system_sources",
    "disk_state",
    "load_document",
    "load_layer",
    "policy_entries",
    "pydantic_diagnostics",
    "read_policy_text",
    "screen_paths",
    "source_paths",
    "stem",
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


def bundled_path(*parts: str) -> str:
    """Bundled data (`policies/`, `schemas/`): in the wheel, or in the source checkout.
    (os.path, not pathlib: every policy load may ask, and pathlib costs 3 ms to import.)"""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    packaged = os.path.join(here, "_bundled", *parts)
    if os.path.exists(packaged):
        return packaged
    return os.path.join(os.path.dirname(here), *parts)


def stem(path: str) -> str:
    """The file name without its last suffix, as pathlib's `stem` (a name ending in a dot,
    or a dot file, keeps it)."""
    name = os.path.basename(path)
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


ETC_POLICY_DIR = "/etc/taps-post/policy.d"
"""Where the administrator's system policy lives when $TAPS_POST_SYSTEM_POLICY is unset."""

SUFFIXES = (".yaml", ".yml")
"""The entries of a policy directory that are policy: every one is loaded or an error."""

MAX_FILE_BYTES = 16 * 1024 * 1024
"""A policy file larger than this is refused before it is read (a policy is text people
write; anything bigger is a mistake or an attack on the loader)."""

_TRUST = "system policy must be owned by root and not group/other-writable"


def discover_system_sources() -> list[str]:
    """$TAPS_POST_SYSTEM_POLICY, else /etc/taps-post/policy.d, else the bundled default
    (docs/policy-language.md, "Layers and where they come from").

    Fails closed: anything at ETC_POLICY_DIR that is not an empty directory (a dangling
    symlink, an unreadable directory, a file) is the system layer, and loading it reports what
    is wrong, rather than falling back to the bundled default the administrator replaced."""
    env = os.environ.get("TAPS_POST_SYSTEM_POLICY")
    if env:
        return [env]
    etc = ETC_POLICY_DIR
    try:
        st = os.stat(etc)
    except FileNotFoundError:
        if not os.path.lexists(etc):
            return [bundled_path("policies", "system", "default.yaml")]
        return [etc]  # a dangling symlink: loading says so
    except OSError:
        return [etc]  # e.g. /etc/taps-post not searchable: loading says so
    if not stat.S_ISDIR(st.st_mode):
        raise InputError([Diagnostic(etc, f"not a directory ({_kind(st.st_mode)}); the system "
                                          "policy directory holds *.yaml files")])
    try:
        names = _listing(etc, st)
    except OSError:
        return [etc]
    return [etc] if names else [bundled_path("policies", "system", "default.yaml")]


def policy_entries(directory: str) -> list[str]:
    """The names in `directory` that are policy files (*.yaml, *.yml), whatever kind of file
    each is, in name order: a FIFO or a dangling symlink there is an error, never skipped."""
    return sorted(n for n in os.listdir(directory) if os.path.splitext(n)[1] in SUFFIXES)


_LISTINGS: dict[tuple[str, int, int, int, int], tuple[str, ...]] = {}


def _listing(directory: str, st: os.stat_result) -> tuple[str, ...]:
    """policy_entries(), reused while the directory's inode and mtime stay the same (adding,
    removing or renaming an entry changes the mtime), so a live context's check per decision
    costs a stat, not a listing."""
    key = (directory, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    found = _LISTINGS.get(key)
    if found is None:
        found = tuple(policy_entries(directory))
        if len(_LISTINGS) >= _CACHE_LIMIT:
            _LISTINGS.clear()
        _LISTINGS[key] = found
    return found


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISLNK, "a symlink"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


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
        if isinstance(item, Diagnostic):
            problems.append(item)
            continue
        try:
            if isinstance(item, Mapping):
                docs.append(_load_mapping(item, layer))
            else:
                docs.append(_load_file(item[0], layer, item[1], item[2]))
        except InputError as exc:
            problems.extend(exc.diagnostics)
    if problems:
        raise InputError(problems)
    return tuple(docs)


_Item = Mapping[str, Any] | tuple[str, str | None, os.stat_result | None] | Diagnostic
"""A document given as data, a file (with the directory it was listed from, whose trust is
checked already, and its stat when one was taken), or a problem found while expanding."""


def _expand(spec: PolicySpec, layer: str) -> Iterable[_Item]:
    if spec is None:
        return
    if isinstance(spec, Mapping):
        yield spec
        return
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        try:
            st = os.stat(text)
        except (OSError, ValueError) as exc:
            yield _missing(text, exc, f"no such {layer} policy file or directory")
            return
        if not stat.S_ISDIR(st.st_mode):
            yield (text, None, st)
            return
        listed_in = None
        if layer == "system" and _strict():
            listed_in = os.path.abspath(text)
            if (why := _untrusted_dir(listed_in, listed=True)) is not None:
                yield Diagnostic(text, f"refused: {why}; {_TRUST}")
                return
        try:
            names = policy_entries(text)
        except OSError as exc:
            yield Diagnostic(text, f"cannot list the {layer} policy directory: "
                                   f"{exc.strerror or exc}")
            return
        for name in names:
            yield (os.path.join(text, name), listed_in, None)
        return
    if isinstance(spec, Sequence):
        for item in spec:
            yield from _expand(item, layer)
        return
    raise TypeError(
        f"a {layer} policy must be a path, a dict holding one policy document, or a list of "
        f"these, not {type(spec).__name__}"
    )


def _missing(path: str, exc: Exception, absent: str) -> Diagnostic:
    """Why `path` cannot be stat'ed, saying so plainly for the common cases."""
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:  # pragma: no cover (replaced between the two calls)
            target = "?"
        return Diagnostic(path, f"dangling symlink to {target!r}: the file it names does "
                                "not exist")
    if isinstance(exc, (FileNotFoundError, ValueError)):
        return Diagnostic(path, absent)
    if isinstance(exc, OSError):
        return Diagnostic(path, f"cannot read policy: {exc.strerror or exc}")
    return Diagnostic(path, f"cannot read policy: {exc}")  # pragma: no cover


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_stat(path: str, st: os.stat_result, layer: str, listed_in: str | None
                ) -> Diagnostic | None:
    """Why the file `st` describes must not be read, if it must not: not a regular file (a
    FIFO would block the reader, /dev/zero would never end), too large, or (root only, system
    layer) writable by someone other than root."""
    if not stat.S_ISREG(st.st_mode):
        return Diagnostic(path, f"not a regular file ({_kind(st.st_mode)}); policy is read "
                                "only from regular files")
    if st.st_size > MAX_FILE_BYTES:
        return Diagnostic(path, f"too large: {st.st_size} bytes; a policy file may hold at "
                                f"most {MAX_FILE_BYTES} bytes (16 MiB)")
    if layer == "system" and _strict():
        why = _untrusted_file(path, st, listed_in)
        if why is not None:
            return Diagnostic(path, f"refused: {why}; {_TRUST}")
    return None


def load_yaml(text: str, source: str) -> tuple[Any, Positions]:
    """yamlpos.load_yaml, imported on the first file read: a process whose policy (or
    environment) is given as data never loads a YAML parser (positions Rule 1). Every policy
    file and environment snapshot is parsed here."""
    from .yamlpos import load_yaml as parse

    return parse(text, source)


def _load_file(path: str, layer: str, listed_in: str | None = None,
               st: os.stat_result | None = None) -> PolicyFile:
    st = _checked_stat(path, layer, listed_in, st, f"no such {layer} policy file")
    before = _identity(st)
    key = (path, layer, *before, catalog.version())
    cached = _FILES.get(key)
    if cached is not None:
        return cached
    text, after = _read_text(path, layer, listed_in, st)
    data, positions = load_yaml(text, path)
    loaded = _build(data, positions, layer, path, stem(path), _digest(text))
    if _identity(after) == before:  # not replaced or rewritten while we read it
        if len(_FILES) >= _CACHE_LIMIT:
            _FILES.clear()
        _FILES[key] = loaded
    return loaded


def _checked_stat(path: str, layer: str, listed_in: str | None, st: os.stat_result | None,
                  absent: str) -> os.stat_result:
    """`st` (`path` stat'ed when None, `absent` the message if it is not there), once it has
    passed `_check_stat`."""
    if st is None:
        try:
            st = os.stat(path)
        except (OSError, ValueError) as exc:
            raise InputError([_missing(path, exc, absent)]) from None
    if (problem := _check_stat(path, st, layer, listed_in)) is not None:
        raise InputError([problem])
    return st


def _read_text(path: str, layer: str, listed_in: str | None, checked: os.stat_result
               ) -> tuple[str, os.stat_result]:
    """`_read_regular`, decoded as UTF-8."""
    raw, after = _read_regular(path, layer, listed_in, checked)
    try:
        return raw.decode("utf-8"), after
    except UnicodeDecodeError as exc:
        raise InputError([_not_utf8(path, raw, exc)]) from None


def _read_regular(path: str, layer: str, listed_in: str | None, checked: os.stat_result
                  ) -> tuple[bytes, os.stat_result]:
    """The bytes of `path`, read only if the descriptor opened is the file `checked`
    describes, or another that passes the same checks (it may have been swapped since it was
    stat'ed): O_NONBLOCK so that opening a FIFO put there meanwhile cannot block, and never
    more than the limit read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError([_missing(path, exc, f"no such {layer} policy file")]) from None
    try:
        st = os.fstat(fd)
        same = (st.st_dev, st.st_ino, st.st_mode, st.st_uid) == (
            checked.st_dev, checked.st_ino, checked.st_mode, checked.st_uid)
        if not same and (problem := _check_stat(path, st, layer, listed_in)) is not None:
            raise InputError([problem])
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise InputError([Diagnostic(path, f"too large: it grew over {MAX_FILE_BYTES} "
                                               "bytes (16 MiB) while being read")])
        return b"".join(chunks), os.fstat(fd)
    except OSError as exc:
        raise InputError([Diagnostic(path, f"cannot read policy: {exc.strerror or exc}")]
                         ) from None
    finally:
        os.close(fd)


def screen_paths(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[Diagnostic]]:
    """The files `paths` name (a directory: its *.yaml/*.yml entries, in name order), split
    into those that may be opened and a Diagnostic for each that may not (missing, dangling,
    not a regular file, too large), without opening any: for tools that read the files
    themselves, so that a FIFO or /dev/zero among them is reported instead of read."""
    files: list[str] = []
    problems: list[Diagnostic] = []
    for spec in paths:
        text = os.fspath(spec)
        try:
            st = os.stat(text)
        except (OSError, ValueError) as exc:
            problems.append(_missing(text, exc, "no such file or directory"))
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                names = policy_entries(text)
            except OSError as exc:
                problems.append(Diagnostic(text, f"cannot list the directory: "
                                                 f"{exc.strerror or exc}"))
                continue
            entries = [os.path.join(text, n) for n in names]
        else:
            entries = [text]
        for path in entries:
            try:
                est = st if path == text else os.stat(path)
            except (OSError, ValueError) as exc:
                problems.append(_missing(path, exc, "no such file"))
                continue
            if (problem := _check_stat(path, est, "app", None)) is not None:
                problems.append(problem)
            else:
                files.append(path)
    return files, problems


def read_policy_text(path: str | os.PathLike[str], *, layer: str = "app") -> str:
    """The text of one file, with every check loading a policy file applies (a regular file,
    at most MAX_FILE_BYTES, UTF-8; for the system layer as root, trusted), for the readers
    outside this module: environment snapshots, validate's look at a file's `layer:`."""
    text = os.fspath(path)
    st = _checked_stat(text, layer, None, None, "no such file")
    return _read_text(text, layer, None, st)[0]


def _not_utf8(path: str, raw: bytes, exc: UnicodeDecodeError) -> Diagnostic:
    return Diagnostic(path, f"cannot read: not UTF-8 text (byte {raw[exc.start]:#04x} at "
                            f"offset {exc.start})")


# --- trusted files (as root, like sshd's StrictModes) ------------------------------------------


def _strict() -> bool:
    """Only root checks who may write the system policy: root is the user whose decisions a
    file writable by someone else would hand to that someone."""
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


_BUNDLED: list[str] = []


def _is_bundled(full: str) -> bool:
    """The bundled default ships with the code: whoever can write it can write the code."""
    if not _BUNDLED:
        _BUNDLED.append(bundled_path("policies") + os.sep)
    return full.startswith(_BUNDLED[0])


def _writable_by_others(st: os.stat_result) -> str | None:
    who = [name for bit, name in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others"))
           if st.st_mode & bit]
    if who:
        return f"mode {stat.S_IMODE(st.st_mode):04o} is writable by {' and '.join(who)}"
    return None


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _untrusted_dir(full: str, *, listed: bool, depth: int = 0) -> str | None:
    """Why the directory `full` (an absolute path), or one above it, cannot be trusted. A
    listed directory must be writable by root alone (whoever can add a file there writes
    policy); any other, a root-owned sticky directory such as /tmp included, is fine when
    nobody but root can write it or rename root's entries in it. A symlink on the way is
    checked twice over: where it leads (resolved), and the directories holding the link
    (lstat all the way: resolving every path would cost a call per component each load)."""
    here, first = full, True
    while True:
        try:
            st = os.lstat(here)
        except OSError as exc:
            return f"cannot check directory {here}: {exc.strerror or exc}"
        if stat.S_ISLNK(st.st_mode):
            if depth > 8:  # pragma: no cover (a symlink race)
                return f"cannot check directory {here}: it keeps changing"
            why = _untrusted_dir(os.path.realpath(here), listed=listed and first,
                                 depth=depth + 1)
            if why is not None:
                return why
        else:
            strict = first and listed
            what = "" if strict and depth == 0 else f"directory {here}: "
            if st.st_uid != 0:
                return f"{what}owned by {_owner(st.st_uid)}, not root"
            why = _writable_by_others(st)
            if why is not None and (strict or not st.st_mode & stat.S_ISVTX):
                return f"{what}{why}"
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here, first = parent, False


def _untrusted_file(path: str, st: os.stat_result, listed_in: str | None) -> str | None:
    """Why the system policy file `path` cannot be trusted: the file itself, and the
    directories holding it (a symlink is followed to where the text lives)."""
    full = os.path.abspath(path)
    if _is_bundled(full):
        return None
    if st.st_uid != 0:
        return f"owned by {_owner(st.st_uid)}, not root"
    why = _writable_by_others(st)
    if why is not None:
        return why
    holders = [os.path.dirname(full)]
    try:
        if stat.S_ISLNK(os.lstat(full).st_mode):  # where the link is, and where the text is
            holders.append(os.path.dirname(os.path.realpath(full)))
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror or exc}"
    for holder in holders:
        if holder != listed_in:  # a listed directory was checked once for all its entries
            why = _untrusted_dir(holder, listed=False)
            if why is not None:
                return why
    return None


# --- live system layer: what a context checks per decision ----------------------------------


def source_paths(spec: PolicySpec) -> list[str]:
    """The paths (files and directories) a layer argument names; documents given as data
    have no place on disk to watch."""
    if spec is None or isinstance(spec, Mapping):
        return []
    if isinstance(spec, (str, os.PathLike)):
        return [os.fspath(spec)]
    if isinstance(spec, Sequence):
        return [p for item in spec for p in source_paths(item)]
    return []


def disk_state(paths: Sequence[str]) -> tuple[Hashable, ...]:
    """What `paths` look like on disk, cheaply: each file's and directory's (dev, inode,
    size, mtime, ctime, mode, owner), and the same for every policy entry of a directory
    (whose listing is reused while the directory's mtime stays). Equal states, same files:
    a changed state means load again (docs/policy-language.md, "Editing the system policy")."""
    return tuple(_path_state(p) for p in paths)


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid)


def _path_state(path: str) -> Hashable:
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        return (path, getattr(exc, "errno", None) or str(exc))
    if not stat.S_ISDIR(st.st_mode):
        return (path, _stamp(st))
    try:
        names = _listing(path, st)
    except OSError as exc:
        return (path, _stamp(st), exc.errno)
    entries: list[Hashable] = []
    for name in names:
        try:
            entries.append(_stamp(os.stat(os.path.join(path, name))))
        except (OSError, ValueError) as exc:
            entries.append((name, getattr(exc, "errno", None)))
    return (path, _stamp(st), names, tuple(entries))


def _digest(text: str) -> str:
    return _blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


try:  # CPython's own BLAKE2, which hashlib wraps after loading OpenSSL (3 ms of a CLI start)
    from _blake2 import blake2b as _blake2b
except ImportError:  # another interpreter: hashlib's, the same function
    from hashlib import blake2b as _blake2b


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
    from pydantic_core import ValidationError  # validation happens here, not at import

    try:
        doc = PolicyDocument.validate(data)
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
        if fact.match.name and (why := check_glob(fact.match.name) or
                                _never_an_interface(fact.match.name)):
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
            when=_freeze(rule.when.values(exclude_none=True)),
            column=pos.locate(where)[1],
        ))
    if problems:
        raise InputError(problems)
    return PolicyFile(layer, source, name, tuple(rules), tuple(facts), tuple(warnings), digest)


def _never_an_interface(glob: str) -> str | None:
    """Why an interface name glob can match no interface, or None: it holds what no Linux
    interface name holds (`/`, `:`, whitespace, control characters; see
    decision.environment.interface_name_problem), so it is a mistake, not a fact."""
    for ch in glob:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            return (f"interface name glob {glob!r} can match no interface: a name may not "
                    f"hold {ch!r} ('/', ':', whitespace and control characters are refused)")
    return None


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
        except ItemError as exc:  # one item of a list: point at it
            item: Path = (*path, exc.index) if isinstance(value, list) else path
            problems.append(pos.diagnostic(item, f"{key}: {exc}"))
            continue
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


def pydantic_diagnostics(exc: ValidationError, pos: Positions,
                         root: type[shape.Record] | None = None) -> list[Diagnostic]:
    """A pydantic error as located, friendly diagnostics; shared with the environment
    snapshot loader so both formats report problems the same way. `root` is the record the
    document was validated against (a policy document when None): an unknown key's
    suggestions are the fields of the record at its place."""
    out: list[Diagnostic] = []
    seen: set[tuple[Any, ...]] = set()
    for err in exc.errors(include_url=False):
        loc: Path = tuple(err["loc"])
        kind = err["type"]
        name = str(loc[-1]) if loc else ""
        if kind == "extra_forbidden":
            fields = _known_fields(loc[:-1], root)
            hint = nearest(name, fields)
            extra = f" (did you mean {hint!r}?)" if hint else ""
            known = ", ".join(sorted(fields))
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
                # render_path: a key with a newline or an unprintable character is shown
                # repr'd, so the diagnostic stays one printable line
                field = render_path(tuple(p for p in loc if isinstance(p, str))) or "document"
                message = f"{field}: {message}"
            diag = pos.diagnostic(loc, message)
        ident = (diag.line, diag.column, diag.path, diag.message)
        if ident not in seen:
            seen.add(ident)
            out.append(diag)
    return out


def _known_fields(loc: Path, root: type[shape.Record] | None = None) -> list[str]:
    """The keys the record at `loc` (string parts only: list indexes are skipped) accepts,
    found by following field annotations down from `root`."""
    record: type[shape.Record] = root or PolicyDocument
    for part in (p for p in loc if isinstance(p, str)):
        nxt = shape.child(record, part)
        if nxt is None:
            break
        record = nxt
    return shape.keys(record)
