"""Fuzz: the `taps-post` command line, in process (taps_post.cli.main).

Contract (cli.py, Rule 1): whatever argv holds, main() ends with exit status 0, 1, 2 or 3
(argparse's own errors are exit 2 too) and never a traceback; stdout and stderr are
encoded as a UTF-8 terminal would (stdout strict, stderr backslashreplace, as Python sets
them up), so printing what argv held cannot crash it. Files named are real files in a scratch
directory: good and bad policies and snapshots, a directory, a FIFO, missing paths.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator

import pytest
from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st

from taps_post.cli import main

_FILES = {
    "system.yaml": "version: 1\nlayer: system\nrules: []\n",
    "app.yaml": "version: 1\nlayer: app\nrules:\n  - id: a\n    set: {secure: require}\n",
    "broken.yaml": "version: 1\nlayer: [system\n",
    "wrong-layer.yaml": "version: 1\nlayer: app\nrules: []\n",
    "env.yaml": 'interfaces:\n  - {name: eth0, type: ethernet, addresses: ["198.18.0.1"]}\n'
                'dns:\n  example.com: ["198.18.1.1"]\n',
    "bad-env.yaml": "interfaces:\n  - {name: \"a\\nb\", mtu: 1500}\n",
    "not-utf8.yaml": b"version: 1\nname: \xff\n",
    "\udcffodd-name.yaml": "version: 1\nlayer: app\nrules: []\n",
}


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="taps-fuzz-cli-") as d:
        for name, text in _FILES.items():
            path = os.path.join(d, name)
            with open(os.fsencode(path), "wb") as fh:
                fh.write(text if isinstance(text, bytes) else text.encode())
        os.mkfifo(os.path.join(d, "fifo.yaml"))
        os.mkdir(os.path.join(d, "dir"))
        yield d


_COMMANDS = (["policy", "explain"], ["policy", "show"], ["policy", "validate"],
             ["policy", "schema"], ["interfaces"], ["policy"], [])
_OPTIONS = ("--system", "--app", "--carrier", "--env", "--format", "--kind", "--app-name",
            "--no-system", "--strict", "--help", "--version", "-h", "--", "-x", "--sys")
_VALUES = ("https://example.com", "tcp://198.18.1.1:80", "example.com:443", "quic://[::1]",
           "https://a..b", "https://256.256.256.256", ":¹", "a:b:c", "https://\udcff.com",
           "https://x\x1b[31m.com", "", "json", "text", "dot", "policy", "env", "explain",
           "listen", "initiate", "video", "tls://" + "a" * 300 + ":1", "\x00")


def _argv(scratch: str) -> st.SearchStrategy[list[str]]:
    paths = st.sampled_from([os.path.join(scratch, n) for n in
                             (*_FILES, "fifo.yaml", "dir", "missing.yaml")] + [scratch])
    token = st.one_of(st.sampled_from(_OPTIONS), st.sampled_from(_VALUES), paths,
                      st.text(max_size=12))
    return st.tuples(st.sampled_from(_COMMANDS), st.lists(token, max_size=7)).map(
        lambda t: [*t[0], *t[1]])


def _stream(errors: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors, write_through=True)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = _stream("strict"), _stream("backslashreplace")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    text = [s.buffer.getvalue().decode("utf-8", "replace")  # type: ignore[attr-defined]
            for s in (out, err)]
    return code, text[0], text[1]


@fuzz(120)
@given(data=st.data())
def test_fuzz_cli_argv(scratch: str, data: st.DataObject) -> None:
    argv = data.draw(_argv(scratch), label="argv")
    code, _out, err = run_main(argv)
    event(f"exit {code}")
    assert code in (0, 1, 2, 3), (argv, code, err)
    assert "Traceback" not in err, err


def test_cli_input_errors_exit_2(scratch: str) -> None:
    """Regression cases the fuzz found (issue 10): each is one line on stderr, exit 2."""
    env = os.path.join(scratch, "env.yaml")
    for argv, message in [
        (["policy", "explain", ":¹", "--no-system", "--env", env], "':¹': "),
        (["policy", "explain", "https://a..b", "--no-system", "--env", env], "empty label"),
        (["policy", "explain", "https://256.256.256.256", "--no-system", "--env", env],
         "'256.256.256.256' is not a valid IPv4 address"),
        (["policy", "explain", "https://x\x1b.com", "--no-system", "--env", env],
         "'x\\x1b.com' is not a host name"),
        (["policy", "explain", "https://example.com", "--no-system", "--env",
          os.path.join(scratch, "bad-env.yaml")], "holds '\\n'"),
    ]:
        code, out, err = run_main(argv)
        assert code == 2, (argv, code, out, err)
        [line] = err.splitlines()
        assert message in line and "Traceback" not in err, line



def test_cli_prints_a_file_name_that_is_not_utf8_escaped(scratch: str) -> None:
    """A policy file whose name is not UTF-8 (argv holds it as a lone surrogate) is named in
    the explanation escaped; strict stdout raised UnicodeEncodeError (a traceback) before."""
    odd = os.path.join(scratch, "\udcffodd-name.yaml")
    code, out, err = run_main(["policy", "explain", "https://example.com", "--no-system",
                               "--app", odd, "--env", os.path.join(scratch, "env.yaml")])
    assert code in (0, 3) and "Traceback" not in err, err
    assert "\\udcffodd-name" in out
