"""The runtime half of the redesign: stacks as plug-ins, the plan cache, typed errors.

Each test here failed on the runtime before the redesign: a stack could not be added without
editing seven files, `initiate()` without a shared PolicyContext never reused its plan, and
misuse raised bare RuntimeError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

import taps_post as tp
from taps_post import stacks
from taps_post.stacks.tcp import StreamStack


@pytest.fixture
def tcp_alt() -> Iterator[str]:
    """A stack registered from test code alone: TCP's facts and code under a new name."""
    facts = dataclasses.replace(stacks.info("tcp"), name="tcp-alt", order=99)
    stacks.register(facts, StreamStack("tcp-alt", secure=False, mptcp=False))
    try:
        yield "tcp-alt"
    finally:
        stacks.unregister("tcp-alt")


def test_info_is_frozen_data_and_get_returns_the_implementation() -> None:
    info = stacks.info("tls")
    assert info.name == "tls" and info.secure and info.stream_capable
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    impl = stacks.get("tls")
    assert impl is not None and impl.name == "tls"
    assert stacks.get("no-such-stack") is None


def test_register_refuses_facts_and_code_under_different_names() -> None:
    facts = dataclasses.replace(stacks.info("tcp"), name="tcp-b")
    with pytest.raises(ValueError, match="named"):
        stacks.register(facts, StreamStack("tcp-c", secure=False, mptcp=False))


def test_a_registered_stack_validates_explains_and_connects(run, store, tcp_alt) -> None:
    require = {"version": 1, "layer": "app", "rules": [{"id": "alt",
                                                          "set": {"stack.tcp-alt": "require"}}]}
    policy = tp.PolicyContext(system=[], app=require, app_name="t")

    async def main() -> None:
        async with await tp.listen(tp.Local(address="127.0.0.1"),
                                   policy=tp.PolicyContext(system=[])) as listener:
            target = f"127.0.0.1:{listener.ports['tcp']}"
            dry = tp.explain(target, policy=policy)
            assert dry.outcome == "ok"
            assert {c.stack for c in dry.candidates} == {"tcp-alt"}
            async with await tp.initiate(target, policy=policy, store=store) as carrier:
                assert carrier.stack == "tcp-alt"
                assert carrier.explanation is not None
                assert carrier.explanation.candidates[0].stack == "tcp-alt"
                await carrier.send(b"through the plug-in")
                async for server in listener:
                    assert await server.receive() == b"through the plug-in"
                    await server.close()
                    break

    run(main())


def test_repeat_initiates_with_equal_policy_inputs_reuse_the_plan(run, store) -> None:
    app = {"version": 1, "layer": "app", "rules": [{"id": "x", "set": {"stack.tcp": "require"}}]}

    async def main() -> None:
        async with await tp.respond(tp.Local(address="127.0.0.1"), lambda m, r: None,
                                    policy=tp.PolicyContext(system=[])) as responder:
            target = f"127.0.0.1:{responder.ports['tcp']}"
            decisions = []
            for _ in range(4):  # a new, equal PolicyContext each time
                ctx = tp.PolicyContext(system=[], app=app, app_name="same")
                async with await tp.initiate(target, policy=ctx, store=store) as carrier:
                    decisions.append(carrier.explanation)
            # The first connection taught the Association a success, which is an input of the
            # decision; from then on nothing changes and the plan is reused.
            assert decisions[1] is decisions[2] is decisions[3]
            other = tp.PolicyContext(system=[], app=app, app_name="other")
            async with await tp.initiate(target, policy=other, store=store) as carrier:
                assert carrier.explanation is not decisions[0]

    run(main())


def test_repeat_initiates_without_a_policy_reuse_the_plan(run, store, monkeypatch,
                                                          tmp_path) -> None:
    monkeypatch.setenv("TAPS_POST_SYSTEM_POLICY", str(tmp_path))  # an empty system layer

    async def main() -> None:
        async with await tp.respond(tp.Local(address="127.0.0.1"), lambda m, r: None,
                                    policy=tp.PolicyContext(system=[])) as responder:
            target = f"tcp://127.0.0.1:{responder.ports['tcp']}"
            warm = await tp.initiate(target, app_name="a", store=store)  # history: a success
            first = await tp.initiate(target, app_name="a", store=store)
            second = await tp.initiate(target, app_name="a", store=store)
            try:
                assert first.explanation is second.explanation
            finally:
                for carrier in (warm, first, second):
                    await carrier.close()

    run(main())


def test_misuse_is_a_usage_error_that_old_code_still_catches(run, store, tcp_policy) -> None:
    async def main() -> None:
        async with await tp.respond(tp.Local(address="127.0.0.1"), lambda m, r: None,
                                    policy=tp.PolicyContext(system=[])) as responder:
            target = f"127.0.0.1:{responder.ports['tcp']}"
            async with await tp.initiate(target, policy=tcp_policy, store=store) as carrier:
                await carrier.send(b"x")
                with pytest.raises(tp.UsageError, match="before the first message") as info:
                    await carrier.as_stream()
                assert isinstance(info.value, RuntimeError)
                assert isinstance(info.value, tp.TapsError)
        with pytest.raises(tp.ArgumentError) as bad:
            tp.OutMessage(b"x", niceness=-1)
        assert isinstance(bad.value, ValueError)

    run(main())


def test_a_peer_announcing_an_oversize_message_is_a_typed_remote_fault() -> None:
    framer = tp.LengthPrefixFramer(max_size=10)
    with pytest.raises(tp.FrameTooLargeError) as info:
        framer.feed((1000).to_bytes(4, "big"))
    assert isinstance(info.value, tp.RemoteProtocolError)
    assert isinstance(info.value, tp.MessageTooLargeError)


def test_trace_and_logging_name_every_step_of_an_establishment(run, store, tcp_policy,
                                                                 caplog) -> None:
    events: list[tuple[str, dict[str, object]]] = []

    async def main() -> None:
        async with await tp.respond(tp.Local(address="127.0.0.1"), lambda m, r: None,
                                    policy=tp.PolicyContext(system=[])) as responder:
            target = f"127.0.0.1:{responder.ports['tcp']}"
            carrier = await tp.initiate(target, policy=tcp_policy, store=store,
                                        trace=lambda name, info: events.append((name, info)))
            await carrier.close()

    with caplog.at_level("DEBUG", logger="taps_post"):
        run(main())
    names = [n for n, _ in events]
    assert names[0] == "decision.complete"
    assert "attempt.started" in names and "attempt.won" in names
    assert names.index("attempt.won") < names.index("carrier.active") < names.index(
        "carrier.closed")
    won = dict(events)["attempt.won"]
    assert won["stack"] == "tcp" and won["interface"] == "lo"
    logged = [r for r in caplog.records if r.name.startswith("taps_post.")]
    assert {"taps_post.decision", "taps_post.race", "taps_post.carrier"} <= {
        r.name for r in logged}
    assert all(isinstance(getattr(r, "taps", None), dict) for r in logged)


def test_a_refused_attempt_keeps_its_exception_and_kind(run, store, tcp_policy,
                                                        closed_port) -> None:
    events: list[tuple[str, dict[str, object]]] = []

    async def main() -> None:
        with pytest.raises(tp.EstablishmentError) as info:
            await tp.initiate(f"127.0.0.1:{closed_port}", policy=tcp_policy, store=store,
                              trace=lambda name, data: events.append((name, data)))
        (attempt,) = info.value.attempts
        assert attempt.outcome == "failed"
        assert attempt.kind is tp.FailureKind.REFUSED
        assert isinstance(attempt.exception, ConnectionRefusedError)
        assert "[refused]" in str(info.value)

    run(main())
    failed = [d for n, d in events if n == "attempt.failed"]
    assert failed and failed[0]["kind"] == "refused"


def test_register_refuses_a_misspelt_feature() -> None:
    facts = dataclasses.replace(stacks.info("tcp"), name="tcp-typo",
                                features=stacks.info("tcp").features | {"zeroRtt"})
    with pytest.raises(tp.ArgumentError, match="unknown features zeroRtt"):
        stacks.register(facts, StreamStack("tcp-typo", secure=False, mptcp=False))
    with pytest.raises(KeyError):
        stacks.info("tcp-typo")


def test_registering_a_stack_invalidates_cached_plans(run, store, tcp_alt) -> None:
    app = {"version": 1, "layer": "app", "rules": [{"id": "x", "set": {"stack.tcp": "avoid"}}]}

    async def main() -> None:
        async with await tp.respond(tp.Local(address="127.0.0.1"), lambda m, r: None,
                                    policy=tp.PolicyContext(system=[])) as responder:
            target = f"127.0.0.1:{responder.ports['tcp']}"
            ctx = tp.PolicyContext(system=[], app=app, app_name="inv")
            for _ in range(2):
                async with await tp.initiate(target, policy=ctx, store=store) as carrier:
                    before = carrier.explanation
            facts = dataclasses.replace(stacks.info("tcp"), name="tcp-beta", order=98)
            stacks.register(facts, StreamStack("tcp-beta", secure=False, mptcp=False))
            try:
                async with await tp.initiate(target, policy=ctx, store=store) as carrier:
                    assert carrier.explanation is not before
                    assert "tcp-beta" in {c.stack for c in carrier.explanation.candidates}
            finally:
                stacks.unregister("tcp-beta")

    run(main())


_FIRST_TCP_INITIATE = r"""
import asyncio, json, socket, sys
server = socket.create_server(("127.0.0.1", 0))
import taps_post as tp

async def main():
    ctx = tp.PolicyContext(system=[], app_name="t")
    c = await tp.initiate(f"tcp://127.0.0.1:{server.getsockname()[1]}", policy=ctx)
    await c.send(b"x")
    await c.close()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""

# What a plain TCP connect with a policy built in code has no use for: the QUIC stack, the
# YAML parser and pydantic-core (no file or document is read or validated), cryptography,
# and the modules only a saving store, a certificate of our own or an MPTCP socket needs.
_NOT_FOR_TCP = ("aioquic", "yaml", "pydantic_core", "pydantic", "cryptography", "tempfile",
                "ctypes", "taps_post.decision.envfile", "taps_post.policy.yamlpos")


def test_a_tcp_initiate_imports_only_what_it_uses() -> None:
    """Issue 15, item 3: nothing is imported on a path that does not need it (each module
    above was imported by the first TCP initiate() before; docs/performance.md has the
    figures)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-P", "-c", _FIRST_TCP_INITIATE],
                          capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "taps_post.stacks.tcp" in loaded  # the probe did connect over TCP
    unwanted = sorted(m for m in loaded
                      if any(m == n or m.startswith(n + ".") for n in _NOT_FOR_TCP))
    assert unwanted == []
