"""Coverage-guided fuzzing of the same contracts with atheris (`make fuzz`, when it installs).

    python -P tests/fuzz/atheris_targets.py TARGET [libFuzzer flags, e.g. -max_total_time=60]

TARGET is one of: framing, policy, env, target. Each feeds the fuzzer's bytes to one input
surface and fails (a crash report and a reproducer file) when it raises anything but the
documented errors. Hypothesis (tests/fuzz/test_fuzz_*.py) states the properties; atheris
finds the inputs that reach new branches of the parsers, which random text seldom does.
Not collected by pytest (no test_ prefix); `make fuzz` skips it when atheris cannot be built.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    from taps_post.core.framing import LengthPrefixFramer, LineFramer
    from taps_post.decision.envfile import load_environment
    from taps_post.diagnostics import InputError
    from taps_post.errors import ArgumentError, DeframingError
    from taps_post.policy.load import load_document
    from taps_post.policy.yamlpos import load_yaml
    from taps_post.runtime.endpoints import Remote


def _lines(diags: InputError) -> None:
    for d in diags.diagnostics:
        if not str(d).isprintable():
            raise AssertionError(f"not one printable line: {str(d)!r}")


def framing(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_size = fdp.ConsumeIntInRange(0, 512)
    cut = fdp.ConsumeIntInRange(0, 1024)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    for make in (lambda: LengthPrefixFramer(max_size), lambda: LineFramer(b"\r\n", max_size)):
        results = []
        for chunks in ([stream], [stream[:cut], stream[cut:]]):
            framer, out = make(), []
            try:
                for c in chunks:
                    out += framer.feed(c)
                out += framer.eof()
                results.append(out)
            except DeframingError:
                results.append(None)
            if any(len(m) > max(max_size, 1024) for m in out):
                raise AssertionError("a message over max_size")
        if results[0] is not None and results[0] != results[1]:
            raise AssertionError(f"split changed the messages: {results}")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def policy(data: bytes) -> None:
    try:
        doc, pos = load_yaml(_text(data), "<fuzz>")
        if isinstance(doc, dict):
            load_document(doc, layer="app", source="<fuzz>", positions=pos)
    except InputError as exc:
        _lines(exc)


def env(data: bytes) -> None:
    try:
        doc, _ = load_yaml(_text(data), "<fuzz>")
        if isinstance(doc, dict):
            load_environment(doc)
    except InputError as exc:
        _lines(exc)


def target(data: bytes) -> None:
    with contextlib.suppress(InputError, ArgumentError):
        Remote.parse(data.decode("utf-8", "replace"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "framing": framing, "policy": policy, "env": env, "target": target}

if __name__ == "__main__":
    name = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if name not in TARGETS:
        sys.exit(f"usage: atheris_targets.py {{{','.join(TARGETS)}}} [libFuzzer flags]")
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()
