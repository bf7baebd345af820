"""Fuzz: target and host name parsing (Remote.parse, Remote, Local; decision.request).

Contract: `Remote.parse(text)` returns a Remote whose host is an IP address or a DNS host name
and whose port is 0-65535, or raises InputError (the target's syntax) or ArgumentError (what
it names); never another exception. A refused value is named repr'd and short: the message
is one printable line, whatever the input held. `host_name_problem` is checked against an
independent statement of RFC 1035/1123 below.
"""

from __future__ import annotations

import ipaddress
import re
import string

from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st

import taps_post as tp
from taps_post.decision.environment import host_name_problem, interface_name_problem

_LDH = string.ascii_letters + string.digits + "-_"
_labels = st.one_of(
    st.text(st.sampled_from(_LDH), min_size=0, max_size=8),
    st.text(st.sampled_from(_LDH), min_size=60, max_size=70),
    st.sampled_from(("256", "0x7f", "0", "1", "xn--bcher-kva", "é", "\n", "\x00", "%0a", "*",
                     "[::1]", "a:b", " ")),
)
hosts = st.one_of(
    st.lists(_labels, min_size=1, max_size=6).map(".".join),
    st.lists(st.sampled_from(("a" * 63, "b" * 50, "c")), min_size=3, max_size=6).map(".".join),
    st.ip_addresses().map(str),
    st.text(max_size=30),
)


def _is_name(host: str) -> bool:
    """RFC 1035 section 2.3.1 with RFC 1123's leading digit and `_` as used in practice;
    the last label never numeric (it would be read as IPv4)."""
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii() or len(name) > 253:
        return False
    labels = name.split(".")
    for label in labels:
        if not 1 <= len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        if any(c not in _LDH for c in label):
            return False
    return not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", labels[-1])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@fuzz(500)
@given(host=hosts)
def test_fuzz_host_names_against_the_rfcs(host: str) -> None:
    why = host_name_problem(host)
    assert (why is None) == (_is_ip(host) or _is_name(host)), (host, why)
    if why is not None:
        event("refused")
        assert why.isprintable() and len(why) < 300, why
    else:
        event("accepted")


@fuzz(300)
@given(host=hosts, scheme=st.sampled_from(("https://", "tcp://", "quic://", "")),
       port=st.one_of(st.integers(0, 65535), st.sampled_from((70000, -1)), st.none()))
def test_fuzz_remote_parse(host: str, scheme: str, port: int | None) -> None:
    shown = f"[{host}]" if ":" in host and _is_ip(host) else host
    target = scheme + shown + ("" if port is None else f":{port}")
    try:
        remote = tp.Remote.parse(target)
    except (tp.InputError, tp.ArgumentError) as exc:
        event(type(exc).__name__)
        assert str(exc).isprintable() or isinstance(exc, tp.InputError), str(exc)
        return
    event("parsed")
    assert host_name_problem(remote.host) is None, remote
    assert 0 <= remote.port <= 65535
    again = tp.Remote.parse(remote.target)
    assert (again.host, again.port, again.scheme) == (remote.host, remote.port, remote.scheme)


@fuzz(300)
@given(text=st.text(max_size=40))
def test_fuzz_remote_parse_any_text(text: str) -> None:
    try:
        remote = tp.Remote.parse(text)
    except (tp.InputError, tp.ArgumentError):
        return
    assert host_name_problem(remote.host) is None
    assert 0 <= remote.port <= 65535


@fuzz(300)
@given(host=st.one_of(hosts, st.integers(), st.none()),
       port=st.one_of(st.integers(), st.booleans(), st.text(max_size=3)),
       interface=st.one_of(st.none(), st.text(max_size=20)))
def test_fuzz_endpoint_constructors(host: object, port: object, interface: str | None) -> None:
    try:
        tp.Remote(host, port)  # type: ignore[arg-type]
    except tp.ArgumentError as exc:
        assert str(exc).isprintable(), str(exc)
    try:
        tp.Local(interface=interface, port=port)  # type: ignore[arg-type]
    except tp.ArgumentError as exc:
        assert str(exc).isprintable(), str(exc)
    else:
        assert interface is None or interface_name_problem(interface) is None
