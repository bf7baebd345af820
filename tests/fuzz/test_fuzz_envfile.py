"""Fuzz: the environment snapshot loader (taps_post.decision.envfile).

Contract: a snapshot, given as a dict or as a YAML file, either loads whole or raises
InputError whose every diagnostic is one printable `file:line:col: what` line; never another
exception. What loads is what a machine can hold: interface names Linux would take, MTUs in
68-65536, cache ports in 0-65535, host names DNS would take, every address an IP address.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fuzzing import check_input_error, fuzz
from hypothesis import event, given
from hypothesis import strategies as st

from strategies import environments, junk
from taps_post import InputError
from taps_post.decision.envfile import MAX_MTU, MIN_MTU, load_environment
from taps_post.decision.environment import host_name_problem, interface_name_problem

_NASTY_TEXT = st.one_of(
    st.sampled_from(("eth0", "a\nb", "a\x00b", "x" * 16, "x" * 15, "a/b", "a:1", "a b", ".",
                     "..", "", "\t", "\x1b[31m", "é" * 8, "\udcff", "a..b", "256.256.256.256",
                     "1.2.3", "0x7f000001", "a" * 64, ("a" * 63 + ".") * 4, "-a", "a-",
                     "example.com.", "xn--bcher-kva.de", "bücher.de", "[::1]", "::1",
                     "fe80::1%eth0", "198.18.0.1", "999.1.1.1")),
    st.text(max_size=20),
)
_NASTY_PORT = st.sampled_from(("0", "65535", "65536", "70000", "-1", "", "08", "٣", "99999999"))
_NASTY_MTU = st.one_of(st.sampled_from((0, 67, 68, 1279, 1280, 1500, 65535, 65536, 65537,
                                        10**30, -1, 1e30, 1500.0, "1500", True)),
                       st.integers())


@st.composite
def nasty_environments(draw: st.DrawFn) -> dict[str, Any]:
    """A valid snapshot with values replaced by the ones the issue names, edge values near
    every bound, or junk."""
    env = draw(environments())
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(("name", "mtu", "remote", "dns", "gateway", "address",
                                     "pvd", "cache-iface", "rtt")))
        ifaces = env["interfaces"]
        iface = ifaces[draw(st.integers(0, len(ifaces) - 1))] if ifaces else None
        if what == "name" and iface is not None:
            iface["name"] = draw(_NASTY_TEXT)
        elif what == "mtu" and iface is not None:
            iface["mtu"] = draw(_NASTY_MTU)
        elif what == "gateway" and iface is not None:
            iface["gateways"] = [draw(_NASTY_TEXT)]
        elif what == "address" and iface is not None:
            iface["addresses"] = [draw(_NASTY_TEXT)]
        elif what == "pvd" and iface is not None:
            iface["pvd"] = draw(_NASTY_TEXT)
        elif what == "remote":
            env["cache"].append({"remote": f"{draw(_NASTY_TEXT)}:{draw(_NASTY_PORT)}",
                                 "stack": "tcp", "outcome": "success"})
        elif what == "cache-iface":
            env["cache"].append({"remote": "example.com:443", "stack": "tcp",
                                 "outcome": "failure", "interface": draw(_NASTY_TEXT)})
        elif what == "rtt":
            env["cache"].append({"remote": "example.com:443", "stack": "tcp",
                                 "outcome": "failure", "rtt_ms": draw(st.one_of(
                                     st.floats(), st.integers(), st.sampled_from((-0.0,))))})
        elif what == "dns":
            env["dns"][draw(_NASTY_TEXT)] = ["198.18.0.1"]
    if draw(st.integers(0, 4)) == 0:  # last: the edits above need the sections' shapes
        section = draw(st.sampled_from(("interfaces", "dns", "cache", "extra")))
        env[section] = draw(junk(6))
    return env


def _check_loaded(env: Any) -> None:
    """What loaded is what a machine could hold."""
    names = [i.name for i in env.interfaces]
    assert len(set(names)) == len(names)
    for iface in env.interfaces:
        assert interface_name_problem(iface.name) is None, iface.name
        assert iface.mtu is None or MIN_MTU <= iface.mtu <= MAX_MTU
    for name in env.dns:
        assert host_name_problem(name) is None, name
    for entry in env.cache:
        host, _, port = entry.remote.rpartition(":")
        assert 0 <= int(port) <= 65535
        assert host_name_problem(host.strip("[]")) is None, entry.remote


def _load_dict(data: Any) -> None:
    try:
        env = load_environment(data)
    except InputError as exc:
        event("dict: rejected")
        check_input_error(exc, "<env>")
    else:
        event("dict: loaded")
        _check_loaded(env)


_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="taps-fuzz-env-") as d:
        yield d


def _load_text(text: str, directory: str) -> None:
    path = os.path.join(directory, f"env{next(_COUNTER)}.yaml")  # a new file: no cache hit
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
        fh.write(text)
    try:
        env = load_environment(path)
    except InputError as exc:
        event("file: rejected")
        check_input_error(exc, path, text)
    else:
        event("file: loaded")
        _check_loaded(env)
    finally:
        os.unlink(path)


@fuzz(150)
@given(env=nasty_environments())
def test_fuzz_environment_dict(env: dict[str, Any]) -> None:
    _load_dict(env)


@fuzz(100)
@given(env=nasty_environments(), flow=st.sampled_from((False, None, True)))
def test_fuzz_environment_file(scratch: str, env: dict[str, Any], flow: bool | None) -> None:
    try:
        text = yaml.safe_dump(env, allow_unicode=True, default_flow_style=flow)
    except yaml.YAMLError:  # a surrogate cannot be written as YAML; the dict path had it
        return
    _load_text(text, scratch)


_YAMLISH = st.lists(st.sampled_from([*"{}[]:,-#&*!|>'\"%@ \t\n", "interfaces", "name",
                                     "mtu", "dns", "cache", "remote", "eth0", "1500",
                                     "70000", "1e30", "::1", "\x00", "\x85", "\ufeff"]),
                    max_size=40).map("".join)


@fuzz(150)
@given(text=_YAMLISH)
def test_fuzz_environment_yamlish_text(scratch: str, text: str) -> None:
    _load_text(text, scratch)
