"""The system policy cannot be bypassed by what is on disk: fail-closed loading, bounded
parsing, trusted files as root, and a live system layer (docs/policy-language.md, "What a
policy path may hold", "Trusted files (running as root)" and "Editing the system policy").

Every file here is made in a temporary directory and reached through `--system`,
`$TAPS_POST_SYSTEM_POLICY` or a monkeypatched `/etc/taps-post/policy.d`; nothing on the
machine is touched. Anything that could hang or eat memory on a broken loader (a FIFO,
/dev/zero, a node bomb) runs in a subprocess with a timeout and a memory ceiling.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import taps_post as tp
from helpers import ENV, PYTHON, installed_env, policy
from taps_post.diagnostics import SystemPolicyError
from taps_post.policy import load as load_module

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0,
                               reason="trusted-file checks apply only when running as root")
AS_ROOT = os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that imports the same taps_post as this process (the
    installed one, normally; a worktree on PYTHONPATH when one is being checked)."""
    env = installed_env(extra)
    env.pop("TAPS_POST_SYSTEM_POLICY", None)
    here = Path(tp.__file__).resolve().parent.parent
    if "site-packages" not in here.parts:
        env["PYTHONPATH"] = str(here)
    if extra:
        env.update(extra)
    return env


def _ceiling() -> None:  # pragma: no cover (runs in the child)
    """At most 2 GiB of address space: a loader that reads /dev/zero fails fast instead of
    taking the machine down with it."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m taps_post.cli ARGS`, bounded in time and memory; a hang is a failure."""
    try:
        return subprocess.run([*PYTHON, "-m", "taps_post.cli", *args], capture_output=True,
                              text=True, env=child_env(env), timeout=timeout, check=False,
                              preexec_fn=_ceiling)
    except subprocess.TimeoutExpired:
        pytest.fail(f"taps-post {' '.join(args)} did not return within {timeout} s")


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def replace(path: Path, text: str) -> None:
    """Write a new file and rename it over `path`: how editors and config tools save."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def system_doc(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return policy("system", *rules, **extra)


GOOD = system_doc({"id": "prohibit-wwan", "enforce": True,
                   "set": {"interface.wwan0": "prohibit"}})


def lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- bad entries

BadEntry = Callable[[Path], str]
"""Makes one bad entry at the given path; returns what its diagnostic must say."""


def dangling(p: Path) -> str:
    p.symlink_to(p.parent / "gone.yaml")
    return "dangling symlink to"


def fifo(p: Path) -> str:
    os.mkfifo(p)
    return "not a regular file (a FIFO)"


def unix_socket(p: Path) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    s.close()
    return "not a regular file (a socket)"


def dev_zero(p: Path) -> str:
    p.symlink_to("/dev/zero")
    return "not a regular file (a character device)"


def subdirectory(p: Path) -> str:
    p.mkdir()
    return "not a regular file (a directory)"


def oversize(p: Path) -> str:
    with open(p, "wb") as fh:  # sparse: costs no disk, and must never be read
        fh.truncate(load_module.MAX_FILE_BYTES + 1)
    return f"too large: {load_module.MAX_FILE_BYTES + 1} bytes"


BAD: dict[str, BadEntry] = {"dangling": dangling, "fifo": fifo, "socket": unix_socket,
                            "dev-zero": dev_zero, "subdirectory": subdirectory,
                            "oversize": oversize}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path (a unix socket's path must fit in 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tps-") as d:
        yield Path(d)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_entry_of_a_system_directory_is_an_error_not_a_skip(
        short_tmp: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    d = short_tmp / "policy.d"
    d.mkdir()
    write(d / "10-good.yaml", GOOD)
    bad = d / "20-bad.yaml"
    expected = BAD[kind](bad)
    (d / "README").write_text("not policy: no .yaml suffix, not read")
    for ctx in (lambda: tp.PolicyContext(system=str(d)), lambda: tp.PolicyContext()):
        monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(d))
        with pytest.raises(SystemPolicyError) as info:
            ctx()
        [diag] = info.value.diagnostics
        assert diag.source == str(bad)
        assert expected in diag.message, diag.message
        assert str(diag).startswith(f"{bad}: ")


def test_every_bad_entry_is_reported_and_the_cli_exits_2(short_tmp: Path) -> None:
    d = short_tmp / "policy.d"
    d.mkdir()
    write(d / "00-good.yaml", GOOD)
    expected = {str(d / f"{kind}.yaml"): make(d / f"{kind}.yaml") for kind, make in BAD.items()}
    for argv in (["policy", "explain", "tcp://127.0.0.1:1", "--system", str(d)],
                 ["policy", "validate", str(d)]):
        proc = cli(*argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        errors = [line for line in lines(proc.stderr) if ": warning: " not in line]
        assert len(errors) == len(expected), proc.stderr
        for line in errors:
            source, _, message = line.partition(": ")
            assert expected[source] in message, line


@pytest.mark.parametrize("target", ["fifo", "dev-zero", "oversize"])
@pytest.mark.parametrize("command", ["validate", "explain", "env"])
def test_a_fifo_or_dev_zero_named_directly_returns_at_once(
        short_tmp: Path, target: str, command: str) -> None:
    path = short_tmp / "p.yaml"
    expected = BAD[target](path)
    argv = {"validate": ["policy", "validate", str(path)],
            "explain": ["policy", "explain", "tcp://127.0.0.1:1", "--system", str(path)],
            "env": ["policy", "explain", "tcp://127.0.0.1:1", "--no-system", "--env",
                    str(path)]}[command]
    started = time.monotonic()
    proc = cli(*argv, timeout=20)
    assert time.monotonic() - started < 15
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [x for x in lines(proc.stderr) if not x.startswith(("ok:", "1 error"))]
    assert line.startswith(f"{path}: ") and expected in line, line


def test_a_dangling_policy_d_is_the_system_layer_not_the_bundled_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "policy.d"
    etc.symlink_to(tmp_path / "missing")
    monkeypatch.delenv("TAPS_POST_SYSTEM_POLICY", raising=False)
    monkeypatch.setattr(load_module, "ETC_POLICY_DIR", str(etc))
    with pytest.raises(SystemPolicyError, match="dangling symlink"):
        tp.PolicyContext()
    etc.unlink()
    etc.write_text("a file where the directory belongs")
    with pytest.raises(SystemPolicyError, match="not a directory"):
        tp.PolicyContext()
    etc.unlink()
    etc.mkdir()  # empty: the bundled default, as before
    assert [Path(f.source).name for f in tp.PolicyContext().files] == ["default.yaml"]


# --------------------------------------------------------------------------- unreadable

_UNREADABLE = r"""
import json, os, sys
import taps_post as tp
from taps_post.diagnostics import SystemPolicyError
tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [{"id": "w"}]})
if os.geteuid() == 0:
    exec(sys.argv[2])
    drop_privileges()
out = {}
for name in ("file", "dir"):
    try:
        tp.PolicyContext(system=os.path.join(sys.argv[1], name))
        out[name] = "loaded"
    except SystemPolicyError as exc:
        out[name] = [str(d) for d in exc.diagnostics]
print(json.dumps(out))
"""


def test_an_unreadable_file_or_directory_is_an_error() -> None:
    """As root the check runs in a child that drops to nobody (root reads everything)."""
    from netns import DROP_PRIVILEGES

    base = Path(tempfile.mkdtemp(prefix="tps-unreadable-"))
    try:
        base.chmod(0o755)
        secret = write(base / "file", GOOD)
        secret.chmod(0o600)
        d = base / "dir"
        d.mkdir(mode=0o711)  # enterable, not listable
        d.chmod(0o711)
        write(d / "a.yaml", GOOD)
        if not AS_ROOT:
            secret.chmod(0o000)
        proc = subprocess.run([*PYTHON, "-c", _UNREADABLE, str(base), DROP_PRIVILEGES],
                              capture_output=True, text=True, env=child_env(), timeout=60,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["file"] == [f"{secret}: cannot read policy: Permission denied"]
        assert out["dir"] == [f"{d}: cannot list the system policy directory: "
                              "Permission denied"]
    finally:
        for p in (base / "file", base / "dir"):
            p.chmod(0o700)
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --------------------------------------------------------------------------- node bombs

_BOMB = r"""
import json, os, resource, sys, time
from taps_post.diagnostics import InputError
from taps_post.policy.load import load_layer
load_layer({"version": 1, "layer": "system"}, "system")  # imports and caches warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_layer(sys.argv[1], "system")
    result = "loaded"
except InputError as exc:
    result = [str(d) for d in exc.diagnostics]
print(json.dumps({"result": result, "seconds": time.perf_counter() - started,
                  "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def _laughs(levels: int, *, merge: bool) -> str:
    """Billion laughs: each level ten aliases of the one before. With `merge`, every anchor
    and every use sits under merge keys (`<<:`), which the position walker used to skip."""
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                for i in range(1, levels)]
    use = f"*a{levels - 1}"
    if merge:
        return ("version: 1\nlayer: system\n<<: {" + ", ".join(anchors) + "}\n"
                f"rules:\n  - <<: {{id: r, when: {{app: {use}}}}}\n")
    return ("version: 1\nlayer: system\n" + "\n".join(anchors) + "\n"
            f"rules:\n  - {{id: r, when: {{app: {use}}}}}\n")


BOMBS = {
    "billion-laughs": lambda: _laughs(9, merge=False),
    "billion-laughs-in-merge-keys": lambda: _laughs(9, merge=True),
    "flat-million-item-list": lambda: ("version: 1\nlayer: system\nrules: ["
                                       + ", ".join(["{id: r}"] * 1_000_000) + "]\n"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_node_bomb_is_stopped_while_parsing(tmp_path: Path, bomb: str) -> None:
    """Refused fast and small: well under a second and 64 MiB (composing the million-item
    list alone took 2.7 s and 300 MB; the merge-key laughs went on until memory ran out).
    billion-laughs guards what the walker already counted before."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[bomb]())
    try:
        proc = subprocess.run([*PYTHON, "-c", _BOMB, str(path)], capture_output=True,
                              text=True, env=child_env(), timeout=30, check=False,
                              preexec_fn=_ceiling)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{bomb} was not stopped within 30 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    [message] = out["result"]
    assert message.startswith(f"{path}:") and "invalid YAML" in message, message
    assert "nodes" in message, message
    assert out["seconds"] < 1.5, out
    assert out["grew_kib"] < 64 * 1024, out
    proc = cli("policy", "validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines(proc.stderr) == [message]


# --------------------------------------------------------------------------- trusted files

TRUST = "system policy must be owned by root and not group/other-writable"


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A root-owned 0700 directory under /tmp (root-owned, sticky: trusted above it)."""
    d = Path(tempfile.mkdtemp(prefix="tps-trust-"))
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def refused(ctx: Callable[[], object]) -> str:
    with pytest.raises(SystemPolicyError) as info:
        ctx()
    [diag] = info.value.diagnostics
    return str(diag)


@ROOT_ONLY
@pytest.mark.parametrize(("mode", "who"), [(0o666, "group and others"), (0o646, "others"),
                                           (0o664, "group")])
def test_as_root_a_writable_system_file_is_refused(
        private_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: int, who: str) -> None:
    f = write(private_dir / "x.yaml", GOOD)
    f.chmod(mode)
    want = f"{f}: refused: mode {mode:04o} is writable by {who}; {TRUST}"
    monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(f))
    assert refused(tp.PolicyContext) == want
    assert refused(lambda: tp.PolicyContext(system=str(private_dir))) == want
    for argv in (["policy", "validate", str(f)],
                 ["policy", "explain", "tcp://127.0.0.1:1", "--system", str(f)]):
        proc = cli(*argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert lines(proc.stderr) == [want]
    f.chmod(0o644)
    assert [x.source for x in tp.PolicyContext().files] == [str(f)]


@ROOT_ONLY
def test_as_root_a_system_file_not_owned_by_root_is_refused(private_dir: Path) -> None:
    f = write(private_dir / "x.yaml", GOOD)
    os.chown(f, NOBODY, NOBODY)
    message = refused(lambda: tp.PolicyContext(system=str(f)))
    assert message == f"{f}: refused: owned by nobody (uid {NOBODY}), not root; {TRUST}" \
        or message == f"{f}: refused: owned by uid {NOBODY}, not root; {TRUST}"
    proc = cli("policy", "validate", str(f))
    assert proc.returncode == 2 and lines(proc.stderr) == [message]


@ROOT_ONLY
def test_as_root_an_untrusted_directory_is_refused(private_dir: Path) -> None:
    d = private_dir / "policy.d"
    d.mkdir()
    write(d / "a.yaml", GOOD)
    d.chmod(0o777)
    assert refused(lambda: tp.PolicyContext(system=str(d))) == (
        f"{d}: refused: mode 0777 is writable by group and others; {TRUST}")
    d.chmod(0o1777)  # sticky does not help a directory whose entries are all read
    assert "mode 1777 is writable" in refused(lambda: tp.PolicyContext(system=str(d)))
    d.chmod(0o755)
    os.chown(d, NOBODY, NOBODY)
    assert refused(lambda: tp.PolicyContext(system=str(d))) in (
        f"{d}: refused: owned by nobody (uid {NOBODY}), not root; {TRUST}",
        f"{d}: refused: owned by uid {NOBODY}, not root; {TRUST}")
    os.chown(d, 0, 0)
    private_dir.chmod(0o775)  # the directory above the policy directory
    assert refused(lambda: tp.PolicyContext(system=str(d))) == (
        f"{d}: refused: directory {private_dir}: mode 0775 is writable by group; {TRUST}")
    private_dir.chmod(0o700)
    assert len(tp.PolicyContext(system=str(d)).files) == 1


@ROOT_ONLY
def test_as_root_the_holder_of_a_single_file_is_checked_and_sticky_tmp_is_fine(
        private_dir: Path) -> None:
    f = write(private_dir / "x.yaml", GOOD)
    private_dir.chmod(0o777)
    assert refused(lambda: tp.PolicyContext(system=str(f))) == (
        f"{f}: refused: directory {private_dir}: mode 0777 is writable by group and others; "
        f"{TRUST}")
    private_dir.chmod(0o1777)  # like /tmp: nobody else may rename root's file away
    assert len(tp.PolicyContext(system=str(f)).files) == 1


@ROOT_ONLY
def test_as_root_a_symlink_is_judged_by_what_it_points_at(private_dir: Path) -> None:
    d = private_dir / "policy.d"
    d.mkdir()
    elsewhere = private_dir / "shared"
    elsewhere.mkdir()
    target = write(elsewhere / "real.yaml", GOOD)
    (d / "a.yaml").symlink_to(target)
    assert len(tp.PolicyContext(system=str(d)).files) == 1  # followed, trusted
    elsewhere.chmod(0o777)
    assert refused(lambda: tp.PolicyContext(system=str(d))) == (
        f"{d / 'a.yaml'}: refused: directory {elsewhere}: mode 0777 is writable by group and "
        f"others; {TRUST}")
    elsewhere.chmod(0o755)
    loose = private_dir / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    (loose / "link.yaml").symlink_to(target)  # a trusted text behind a link anyone can swap
    assert refused(lambda: tp.PolicyContext(system=str(loose / "link.yaml"))) == (
        f"{loose / 'link.yaml'}: refused: directory {loose}: mode 0777 is writable by group "
        f"and others; {TRUST}")
    os.chown(target, NOBODY, NOBODY)
    assert "not root" in refused(lambda: tp.PolicyContext(system=str(d)))


@pytest.mark.skipif(AS_ROOT, reason="as root this is the refusal the tests above check")
def test_not_root_a_writable_system_file_is_used(tmp_path: Path) -> None:
    f = write(tmp_path / "x.yaml", GOOD)
    f.chmod(0o666)
    assert len(tp.PolicyContext(system=str(f)).files) == 1


# --------------------------------------------------------------------------- live reload


def interfaces_of(d: tp.Decision) -> set[str]:
    return {c.interface for c in d.candidates}


def explain(ctx: tp.PolicyContext) -> tp.Decision:
    return tp.explain("tcp://203.0.113.5:80", policy=ctx, env=ENV)


OPEN = system_doc({"id": "open", "set": {"maxCost": 100}})


def test_a_held_context_follows_an_edit_of_its_system_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "corp.yaml", OPEN)
    monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(f))
    ctx = tp.PolicyContext(app_name="mail")
    first = explain(ctx)
    assert "wwan0" in interfaces_of(first)
    before = ctx.fingerprint
    replace(f, yaml.safe_dump(GOOD))
    second = explain(ctx)
    assert "wwan0" not in interfaces_of(second) and interfaces_of(second)
    assert any(e.interface == "wwan0" and e.rule == "prohibit-wwan" and e.source
               and e.source.startswith(f"{f}:") for e in second.excluded), second.excluded
    assert ctx.fingerprint != before
    assert [r.id for f_ in ctx.files for r in f_.rules] == ["prohibit-wwan"]
    seen: list[str] = []  # unchanged files: a stat each per decision, never a parse
    real = load_module.load_yaml
    monkeypatch.setattr(load_module, "load_yaml",
                        lambda text, source: seen.append(source) or real(text, source))
    for _ in range(20):
        explain(ctx)
    assert seen == []
    monkeypatch.setattr(load_module, "load_yaml", real)
    # An in-place rewrite (same inode, other size) is noticed as well.
    write(f, OPEN)
    assert "wwan0" in interfaces_of(explain(ctx))
    assert ctx.fingerprint == before  # the fingerprint names content: the first one again


def test_a_policy_directory_notices_new_and_removed_files(tmp_path: Path) -> None:
    d = tmp_path / "policy.d"
    d.mkdir()
    write(d / "10-open.yaml", OPEN)
    ctx = tp.PolicyContext(system=str(d))
    assert "wwan0" in interfaces_of(explain(ctx))
    tmp = d / ".20-wwan.yaml.tmp"
    write(tmp, GOOD)
    os.replace(tmp, d / "20-wwan.yaml")
    assert "wwan0" not in interfaces_of(explain(ctx))
    (d / "20-wwan.yaml").unlink()
    assert "wwan0" in interfaces_of(explain(ctx))


def test_copies_and_snapshots(tmp_path: Path) -> None:
    f = write(tmp_path / "corp.yaml", OPEN)
    ctx = tp.PolicyContext(system=str(f))
    fixed = ctx.current()
    copy = ctx.with_carrier(policy("carrier", {"id": "c", "set": {"keepAlive": "prefer"}}))
    assert ctx.live and copy.live and not fixed.live
    assert fixed.current() is fixed
    replace(f, yaml.safe_dump(GOOD))
    assert "wwan0" in interfaces_of(explain(fixed))  # a snapshot never changes
    assert "wwan0" not in interfaces_of(explain(copy))  # a copy follows the same files
    assert "wwan0" not in interfaces_of(explain(ctx))
    assert ctx.current() is ctx.current() and ctx.current().fingerprint == ctx.fingerprint
    assert not tp.PolicyContext(system=[], app=OPEN | {"layer": "app"}).live


def test_a_discovered_context_notices_policy_d_appearing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "policy.d"
    monkeypatch.delenv("TAPS_POST_SYSTEM_POLICY", raising=False)
    monkeypatch.setattr(load_module, "ETC_POLICY_DIR", str(etc))
    ctx = tp.PolicyContext()
    assert [Path(f.source).name for f in ctx.files] == ["default.yaml"]
    etc.mkdir()
    write(etc / "a.yaml", GOOD)
    assert "wwan0" not in interfaces_of(explain(ctx))
    assert [Path(f.source).name for f in ctx.files] == ["a.yaml"]


@pytest.fixture
def policy_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="taps_post.policy")
    return caplog


def warnings_in(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records
            if r.name == "taps_post.policy" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("breakage", ["yaml", "schema", "fifo", "dangling"])
def test_a_broken_edit_keeps_the_last_good_policy_and_is_logged_once(
        tmp_path: Path, policy_log: pytest.LogCaptureFixture, breakage: str) -> None:
    f = write(tmp_path / "corp.yaml", GOOD)
    ctx = tp.PolicyContext(system=str(f))
    good = ctx.fingerprint
    assert "wwan0" not in interfaces_of(explain(ctx))
    if breakage == "yaml":
        replace(f, "version: 1\nlayer: system\nrules: [\n")
        where = f"{f}:4:1: invalid YAML"
    elif breakage == "schema":
        replace(f, "version: 1\nlayer: system\nrules:\n  - id: r\n    set: {secure: maybe}\n")
        where = f"{f}:5:19: secure:"
    elif breakage == "fifo":
        f.unlink()
        os.mkfifo(f)
        where = f"{f}: not a regular file (a FIFO)"
    else:
        f.unlink()
        f.symlink_to(tmp_path / "gone.yaml")
        where = f"{f}: dangling symlink"
    for _ in range(5):
        d = explain(ctx)
        assert "wwan0" not in interfaces_of(d), "the last good policy must stay in force"
    assert ctx.fingerprint == good
    [message] = warnings_in(policy_log)
    assert "not applied" in message and where in message, message
    f.unlink()
    write(f, OPEN)  # fixed: applies at once
    assert "wwan0" in interfaces_of(explain(ctx))
    replace(f, "version: 1\nlayer: system\nrules: [\n")  # broken again: logged again
    explain(ctx)
    explain(ctx)
    assert len(warnings_in(policy_log)) == 2


def _version(i: int) -> str:
    """Version i of the system file: a rule id, a value and an interface fact that must
    always be seen together."""
    return yaml.safe_dump(system_doc(
        {"id": f"v{i}", "set": {"maxCost": 20 + i}},
        interfaces=[{"match": {"name": "wlan0"}, "cost": i}]))


def test_concurrent_decisions_across_edits_see_the_old_or_the_new_policy_never_a_mix(
        tmp_path: Path) -> None:
    f = tmp_path / "corp.yaml"
    f.write_text(_version(0))
    ctx = tp.PolicyContext(system=str(f), app_name="mail")
    versions = 12
    seen: set[int] = set()
    mixed: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    changed = threading.Condition()

    def reader() -> None:
        try:
            while not stop.is_set():
                d = explain(ctx)
                (rule,) = (r.id for pf in d.files for r in pf.rules)
                i = int(rule[1:])
                wlan = next(x for x in d.interfaces if x.name == "wlan0")
                if d.value("maxCost") != 20 + i or wlan.cost != i:
                    mixed.append(f"{rule}: maxCost {d.value('maxCost')}, wlan0 cost {wlan.cost}")
                with changed:
                    seen.add(i)
                    changed.notify_all()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(1, versions):
            replace(f, _version(i))
            with changed:
                assert changed.wait_for(lambda i=i: i in seen or stop.is_set(), timeout=10), (
                    f"version {i} of the system file never took effect")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors
    assert not mixed, mixed[:5]
    assert seen == set(range(versions))


def test_a_refused_edit_is_silent_by_default_and_a_good_one_applies(tmp_path: Path) -> None:
    """No logging configured (a CLI, a script): a refused edit must not print to stderr,
    and the next good edit applies to the next decision."""
    f = write(tmp_path / "corp.yaml", OPEN)
    script = ("import os, sys, taps_post as tp\n"
              "def save(text):\n"
              "    open(sys.argv[1] + '.tmp', 'w').write(text)\n"
              "    os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
              "ctx = tp.PolicyContext(system=sys.argv[1])\n"
              "env = {'interfaces': []}\n"
              "save('rules: [')\n"
              "print(tp.explain('tcp://203.0.113.5:80', policy=ctx, env=env).value('maxCost'))\n"
              "save(sys.argv[2])\n"
              "print(tp.explain('tcp://203.0.113.5:80', policy=ctx, env=env).value('maxCost'))\n")
    edit = yaml.safe_dump(system_doc({"id": "x", "set": {"maxCost": 7}}))
    proc = subprocess.run([*PYTHON, "-c", script, str(f), edit], capture_output=True,
                          text=True, env=child_env(), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["100", "7"]
    assert proc.stderr == ""
