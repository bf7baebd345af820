"""The stack catalogue: a stack registered from outside the package, after import, is known to
validation, explain, the snapshot loader, the JSON Schemas and the docs tables, exactly like a
built-in one; and the built-in table says what the old constants said."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

import taps_post as tp
from helpers import ENV, policy
from taps_post import docgen, schemas
from taps_post.policy import catalog
from taps_post.policy.catalog import StackInfo
from taps_post.policy.registry import protocol_features

ALT = "tcp-alt"


@pytest.fixture
def alt() -> Iterator[StackInfo]:
    """tcp-alt: tcp's facts under another name, tried after every built-in stack."""
    info = dataclasses.replace(catalog.info("tcp"), name=ALT, order=100)
    with catalog.registered(info):
        yield info
    assert ALT not in catalog.names()


def require(stack: str) -> dict[str, Any]:
    return policy("app", {"id": "only", "set": {f"stack.{stack}": "require"}})


# --- the built-in table ---------------------------------------------------------------------


def test_builtin_table_is_the_old_constants() -> None:
    assert catalog.names() == ("tcp", "tls", "quic", "mptcp", "tls-mptcp", "udp", "quic-ice")
    assert catalog.schemes() == {
        "https": ("tls", "quic", "tls-mptcp"),
        "tls": ("tls", "tls-mptcp"),
        "tcp": ("tcp", "mptcp"),
        "udp": ("udp",),
        "quic": ("quic",),
        "rendezvous": ("quic-ice",),
    }
    assert list(catalog.schemes()) == ["https", "tls", "tcp", "udp", "quic", "rendezvous"]
    by = {i.name: i for i in catalog.infos()}
    assert {n for n, i in by.items() if i.rendezvous} == {"quic-ice"}
    assert {n for n, i in by.items() if i.ip_protocol == "udp"} == {"quic", "udp", "quic-ice"}
    assert {n for n, i in by.items() if i.stream_capable} == {"tcp", "tls", "mptcp", "tls-mptcp"}
    assert {n for n, i in by.items() if i.multipath_capable} == {"mptcp", "tls-mptcp"}
    assert {n for n, i in by.items() if i.secure} == {"tls", "quic", "tls-mptcp", "quic-ice"}
    assert [i.order for i in catalog.infos()] == sorted(i.order for i in catalog.infos())
    for i in catalog.infos():
        assert i.features <= protocol_features(), (i.name, i.features - protocol_features())


def test_schemes_is_a_copy() -> None:
    table = catalog.schemes()
    table["https"] = ()
    del table["tcp"]
    assert catalog.schemes()["https"] == ("tls", "quic", "tls-mptcp")
    assert "tcp" in catalog.schemes()


@pytest.mark.parametrize("change, message", [
    ({"name": "tcp.alt"}, "stack name"),
    ({"name": ""}, "stack name"),
    ({"ip_protocol": "sctp"}, "ip_protocol"),
    ({"schemes": "tcp"}, "schemes"),
    ({"schemes": ("hostport",)}, "not a URL scheme"),
    ({"schemes": ("HTTP",)}, "not a URL scheme"),
    ({"order": 1.5}, "order"),
    ({"features": frozenset({""})}, "features"),
])
def test_an_invalid_stackinfo_cannot_be_made(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(catalog.info("tcp"), **change)


def test_stackinfo_is_frozen_and_normalised() -> None:
    info = StackInfo("x", "udp", {"secure"}, ["x"])  # type: ignore[arg-type]
    assert info.features == frozenset({"secure"}) and info.schemes == ("x",) and info.secure
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "y"  # type: ignore[misc]


def test_version_changes_on_every_change_and_only_then(alt: StackInfo) -> None:
    v = catalog.version()
    catalog.register_info(alt)  # the very same facts again: nothing changes
    assert catalog.version() == v
    catalog.register_info(dataclasses.replace(alt, order=101))
    assert catalog.version() == v + 1
    assert catalog.info(ALT).order == 101
    assert catalog.unregister_info("no-such-stack") is None
    assert catalog.version() == v + 1


def test_registered_restores_a_replaced_stack() -> None:
    before = catalog.info("udp")
    with catalog.registered(dataclasses.replace(before, features=before.features | {"secure"})):
        assert catalog.info("udp").secure
    assert catalog.info("udp") == before
    with pytest.raises(KeyError):
        catalog.info(ALT)


# --- a stack registered later, from test code alone ------------------------------------------


def test_registered_stack_validates_in_policy(alt: StackInfo) -> None:
    ctx = tp.PolicyContext(system=[], app=require(ALT))
    assert [s.key for f in ctx.files for r in f.rules for s in r.statements] == [f"stack.{ALT}"]


def test_unregistered_stack_is_an_unknown_property() -> None:
    with pytest.raises(tp.InputError, match=r"unknown property 'stack\.tcp-alt' "
                                            r"\(did you mean 'stack\.tcp'\?\)"):
        tp.PolicyContext(system=[], app=require(ALT))


def test_explain_lists_the_registered_stack(alt: StackInfo) -> None:
    d = tp.explain("example.com:80", system=[], app=require(ALT), env=ENV)
    assert d.outcome == "ok"
    assert {c.stack for c in d.candidates} == {ALT}
    assert all(c.key.stack_order == alt.order for c in d.candidates)
    # Every other stack is excluded once, at the stack level; those that pass the defaults
    # are reported as lacking the required stack.tcp-alt. A rendezvous stack is not judged
    # for a host:port target at all (it serves rendezvous:// only).
    pruned = [e.stack for e in d.excluded if e.stack and not e.interface]
    assert pruned == [s for s in catalog.names() if s != ALT and not catalog.info(s).rendezvous]
    lacking = [e.stack for e in d.excluded if e.property == f"stack.{ALT}"]
    assert lacking == ["tcp", "tls", "quic"]  # mptcp: multipath disabled; udp: unreliable


def test_registered_stack_ranks_by_its_order(alt: StackInfo) -> None:
    d = tp.explain("example.com:80", system=[], env=ENV)
    on_wlan = [c.stack for c in d.candidates
               if c.interface == "wlan0" and c.remote_address == "2001:db8::5"]
    assert on_wlan[-1] == ALT  # order 100: after every built-in stack
    assert ALT in on_wlan and "tcp" in on_wlan


def test_scheme_tables_include_the_registered_stack(alt: StackInfo) -> None:
    d = tp.explain("tcp://example.com:80", system=[], env=ENV)
    assert {c.stack for c in d.candidates} == {"tcp", ALT}
    d = tp.explain("https://example.com", system=[], env=ENV)
    assert ALT in {e.stack for e in d.excluded if e.outcome == "scheme"}


def test_cached_stack_verdicts_follow_the_catalogue() -> None:
    """One PolicyContext across a registration: decide() memoises stack verdicts per
    resolution, and must not serve the verdicts of the older stack set."""
    ctx = tp.PolicyContext(system=[], app=policy("app", {"id": "r", "set": {"secure": "avoid"}}))
    before = tp.explain("example.com:80", policy=ctx, env=ENV)
    assert ALT not in {c.stack for c in before.candidates}
    info = dataclasses.replace(catalog.info("tcp"), name=ALT, order=100)
    with catalog.registered(info):
        during = tp.explain("example.com:80", policy=ctx, env=ENV)
        assert ALT in {c.stack for c in during.candidates}
    after = tp.explain("example.com:80", policy=ctx, env=ENV)
    assert ALT not in {c.stack for c in after.candidates}
    assert after.to_dict() == before.to_dict()


def test_snapshot_history_may_name_the_registered_stack(alt: StackInfo) -> None:
    env = {**ENV, "cache": [{"remote": "example.com:80", "stack": ALT, "outcome": "success",
                             "rtt_ms": 1}]}
    d = tp.explain("example.com:80", system=[], env=env)
    mine = [c for c in d.candidates if c.stack == ALT]
    assert mine and all(c.key.history == 0 for c in mine)
    # Same features as tcp, and a success in the history: ranked before tcp everywhere.
    first_tcp = min(c.rank for c in d.candidates if c.stack == "tcp")
    assert min(c.rank for c in mine) < first_tcp


def test_snapshot_rejects_an_unknown_stack_like_a_literal() -> None:
    env = {**ENV, "cache": [{"remote": "example.com:80", "stack": ALT, "outcome": "success"}]}
    with pytest.raises(tp.InputError) as info:
        tp.load_environment(env)
    (diag,) = info.value.diagnostics
    assert diag.path == "cache[0].stack"
    assert diag.message == ("input should be 'tcp', 'tls', 'quic', 'mptcp', 'tls-mptcp', "
                            "'udp' or 'quic-ice', got 'tcp-alt'")


def test_fresh_schemas_list_the_registered_stack(alt: StackInfo) -> None:
    pol = schemas.schema("policy")
    set_schema = pol["$defs"]["Rule"]["properties"]["set"]
    assert ALT in set_schema["properties"]["stack"]["propertyNames"]["enum"]
    assert any(ALT in pattern for pattern in set_schema["patternProperties"])
    env = schemas.schema("env")
    assert ALT in env["$defs"]["CacheItem"]["properties"]["stack"]["enum"]
    explain = schemas.schema("explain")
    assert ALT in json.dumps(explain["$defs"]["_CandidateOut"]["properties"]["stack"])


def test_schemas_without_the_stack_are_the_checked_in_ones() -> None:
    for name in schemas.SCHEMA_NAMES:
        assert ALT not in schemas.schema_text(name)


def test_docs_stack_table_lists_the_registered_stack(alt: StackInfo) -> None:
    table = docgen.render_stack_table()
    assert f"| `{ALT}` |" in table
    assert table.index(f"| `{ALT}` |") > table.index("| `udp` |")  # tie-break order
    assert f"`stack.{ALT}`" in docgen.render_properties_table()


def test_a_stack_with_a_new_scheme() -> None:
    info = StackInfo("sctp", "tcp", catalog.info("tcp").features, ("sctp",), order=50)
    with pytest.raises(tp.InputError, match="unknown scheme 'sctp'"):
        tp.parse_target("sctp://example.com:9")
    with catalog.registered(info):
        assert list(catalog.schemes())[-1] == "sctp"
        request = tp.parse_target("sctp://example.com:9")
        assert request.scheme == "sctp"
        app = policy("app", {"id": "s", "when": {"scheme": "sctp"}, "set": {"secure": "avoid"}})
        d = tp.explain("sctp://example.com:9", system=[], app=app, env=ENV)
        assert {c.stack for c in d.candidates} == {"sctp"}
        assert d.properties["secure"].statement.rule == "s"
        assert "sctp" in json.dumps(schemas.schema("policy")["$defs"]["When"])
        assert "sctp" in json.dumps(schemas.schema("explain")["$defs"]["_RequestOut"])
    with pytest.raises(tp.InputError, match="expected one of https, tls, tcp, udp, quic, "
                                            "rendezvous, hostport, got 'sctp'"):
        tp.PolicyContext(system=[], app=policy("app", {"id": "s", "when": {"scheme": "sctp"}}))
