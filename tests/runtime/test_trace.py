"""Tracer (taps_post.runtime.trace) and the events race() emits, under virtual time; and
what a real establishment reports through them (loopback sockets; the DNS lab for the
resolution passes).

The Tracer tests use plain callbacks and pytest's caplog; the race tests reuse the scripted
fake attempts of test_race_unit. The silence test runs a fresh interpreter with logging left
unconfigured, exactly as an application that never heard of taps_post's loggers. The
establishment tests connect through `tp.initiate` to a taps_post Listener or a silent TCP
socket on 127.0.0.1: the carrier.active event says how DANE accepted the peer, a TLSA set
from an `env=` snapshot is never trusted as validated, and a pass that withdraws a pending
QUIC candidate never starts it (establish Rules 1 and 7).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import gc
import logging
import subprocess
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
from test_race_unit import Fail, Hang, Passes, Script, Stubborn, Win, candidates

from fakeclock import run
from helpers import PYTHON, installed_env
from taps_post.errors import FailureKind
from taps_post.runtime.racing import RaceResult, Replan, race
from taps_post.runtime.trace import EVENTS, LOGGERS, Tracer, logger_for

Events = list[tuple[str, dict[str, Any]]]


def collector() -> tuple[Events, Any]:
    events: Events = []

    def trace(name: str, info: dict[str, Any]) -> None:
        events.append((name, info))

    return events, trace


# -- the callback ---------------------------------------------------------------------------


def test_callback_gets_name_info_context_trace_id_and_time() -> None:
    events, trace = collector()

    async def main() -> Tracer:
        tracer = Tracer(trace, target="tcp://svc:443")
        await asyncio.sleep(0.25)
        tracer.emit("attempt.started", rank=1, stack="tcp")
        tracer.bind(carrier=7).emit("carrier.active", stack="tcp")
        return tracer

    tracer = run(main())
    assert events == [
        ("attempt.started", {"target": "tcp://svc:443", "rank": 1, "stack": "tcp",
                             "trace_id": tracer.trace_id, "t_ms": 250.0}),
        ("carrier.active", {"target": "tcp://svc:443", "carrier": 7, "stack": "tcp",
                            "trace_id": tracer.trace_id, "t_ms": 250.0}),
    ]
    assert Tracer(trace).trace_id != tracer.trace_id


def test_each_call_gets_its_own_info_dict() -> None:
    seen: list[dict[str, Any]] = []

    def trace(name: str, info: dict[str, Any]) -> None:
        seen.append(info)
        info["rank"] = "mutated"

    tracer = Tracer(trace, clock=lambda: 0.0)
    tracer.emit("attempt.started", rank=1)
    tracer.emit("attempt.started", rank=2)
    assert seen[1]["rank"] == "mutated" and seen[0] is not seen[1]
    assert len(seen) == 2


def test_async_callback_runs_in_emit_order_in_a_task_the_tracer_owns() -> None:
    done: list[tuple[int, float]] = []

    async def trace(name: str, info: dict[str, Any]) -> None:
        await asyncio.sleep(0.5 if info["rank"] == 1 else 0.125)  # #1 is the slow one
        done.append((info["rank"], asyncio.get_running_loop().time()))

    async def main() -> None:
        tracer = Tracer(trace)
        for rank in (1, 2, 3):
            tracer.emit("attempt.started", rank=rank)
        assert done == [], "emit() must not wait for the callback"
        await tracer.flush()
        assert done == [(1, 0.5), (2, 0.625), (3, 0.75)]
        await tracer.flush()  # nothing pending: returns at once
        assert asyncio.get_running_loop().time() == 0.75

    run(main())


def test_failing_callbacks_are_logged_and_never_raise(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taps_post")
    calls: list[int] = []

    def bad(name: str, info: dict[str, Any]) -> None:
        calls.append(info["rank"])
        raise RuntimeError("callback bug")

    async def bad_async(name: str, info: dict[str, Any]) -> None:
        calls.append(info["rank"])
        if info["rank"] == 1:
            raise ValueError("async callback bug")

    tracer = Tracer(bad, clock=lambda: 0.0)
    tracer.emit("attempt.failed", rank=1)
    tracer.emit("attempt.failed", rank=2)
    assert calls == [1, 2]

    async def main() -> None:
        t = Tracer(bad_async)
        t.emit("listener.accepted", rank=1)
        t.emit("listener.accepted", rank=2)
        await t.flush()

    calls.clear()
    run(main())
    assert calls == [1, 2], "a failed async callback must not stop the ones after it"
    failures = [r for r in caplog.records if "trace callback failed" in r.getMessage()]
    assert [(r.name, r.levelno) for r in failures] == [
        ("taps_post.race", logging.WARNING), ("taps_post.race", logging.WARNING),
        ("taps_post.listener", logging.WARNING)]
    assert all(r.exc_info is not None for r in failures)


def test_async_callback_outside_a_loop_is_dropped_and_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taps_post")

    async def trace(name: str, info: dict[str, Any]) -> None:
        raise AssertionError("must never run")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Tracer(trace, clock=lambda: 0.0).emit("decision.complete", outcome="ok")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert any("outside an event loop" in r.getMessage() for r in caplog.records)


def test_pending_async_callbacks_are_closed_when_the_loop_ends() -> None:
    async def trace(name: str, info: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        tracer = Tracer(trace)
        for rank in range(5):
            tracer.emit("attempt.started", rank=rank)
        await asyncio.sleep(1)  # leave them pending: asyncio.Runner cancels the pump

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)
                or "destroyed but it is pending" in str(w.message)]


# -- logging --------------------------------------------------------------------------------


def test_log_records_carry_the_event_as_extra(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="taps_post")
    tracer = Tracer(clock=lambda: 0.0)  # no callback: logging alone makes it active
    assert tracer.active
    tracer.emit("attempt.failed", rank=2, kind=FailureKind.REFUSED, error="refused")
    (record,) = caplog.records
    assert (record.name, record.levelno) == ("taps_post.race", logging.DEBUG)
    assert record.taps == {"event": "attempt.failed", "rank": 2,  # type: ignore[attr-defined]
                           "kind": "refused", "error": "refused",
                           "trace_id": tracer.trace_id, "t_ms": 0.0}
    assert record.getMessage().startswith("attempt.failed rank=2 kind=refused")


@pytest.mark.parametrize(("name", "logger"), [
    ("decision.complete", "taps_post.decision"),
    ("race.started", "taps_post.race"),
    ("attempt.won", "taps_post.race"),
    ("carrier.closed", "taps_post.carrier"),
    ("listener.accepted", "taps_post.listener"),
])
def test_the_area_picks_the_logger(name: str, logger: str) -> None:
    assert logger_for(name).name == logger


def test_every_documented_event_has_a_known_area() -> None:
    for name in EVENTS:
        assert logger_for(name) in LOGGERS.values()


@pytest.mark.parametrize("name", ["attempt", "atempt.started", "attempt.", ".won", ""])
def test_an_unknown_event_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"area\.event"):
        Tracer(lambda n, i: None, clock=lambda: 0.0).emit(name)


_SILENT = """
import logging, sys
from taps_post.runtime.trace import Tracer
{setup}
t = Tracer(lambda name, info: 1 / 0)
t.emit("attempt.failed", rank=1, kind="refused", error="x")
t.emit("listener.failed", stack="tcp", error="handshake")
"""


def test_silent_by_default_even_for_warnings() -> None:
    quiet = subprocess.run([*PYTHON, "-c", _SILENT.format(setup="")], capture_output=True,
                           text=True, env=installed_env(), timeout=60, check=True)
    assert (quiet.stdout, quiet.stderr) == ("", "")
    # the same program with logging configured does log: the test above can fail
    loud = subprocess.run(
        [*PYTHON, "-c", _SILENT.format(setup="logging.basicConfig(level=logging.DEBUG)")],
        capture_output=True, text=True, env=installed_env(), timeout=60, check=True)
    assert "attempt.failed rank=1" in loud.stderr
    assert "trace callback failed on attempt.failed" in loud.stderr
    assert "ZeroDivisionError" in loud.stderr


# -- no secrets: the allow-list -------------------------------------------------------------


@dataclass(frozen=True)
class FakeCertificate:
    pem: str


class Secret(str):
    """A str subclass could carry anything in its attributes: refused."""


class Color(enum.Enum):
    RED = "red"


class Blob(enum.Enum):
    KEY = b"\x00secret"


@pytest.mark.parametrize("value", [
    b"ticket", bytearray(b"key"), memoryview(b"payload"), ["a"], {"a": 1}, {"a"},
    object(), FakeCertificate("-----BEGIN CERTIFICATE-----"), Secret("x"), ("ok", b"bad"),
    ("ok", ("nested", [1])), Blob.KEY, 1j,
], ids=lambda v: type(v).__name__)
def test_only_plain_values_may_leave_through_a_trace(value: object) -> None:
    events, trace = collector()
    tracer = Tracer(trace, clock=lambda: 0.0)
    with pytest.raises(TypeError, match="only str, int, float, bool, None and tuples"):
        tracer.emit("carrier.active", value=value)
    with pytest.raises(TypeError):
        Tracer(trace, clock=lambda: 0.0, value=value)
    with pytest.raises(TypeError):
        tracer.bind(value=value)
    assert events == []


def test_plain_values_pass_and_enums_become_their_value() -> None:
    events, trace = collector()
    Tracer(trace, clock=lambda: 0.0).emit(
        "attempt.failed", s="x", i=1, f=1.5, b=True, n=None, t=("a", (1, None)),
        kind=FailureKind.TLS_VERIFY, color=Color.RED)
    (_, info) = events[0]
    assert info["t"] == ("a", (1, None))
    assert info["kind"] == "tls_verify" and type(info["kind"]) is str
    assert info["color"] == "red" and type(info["color"]) is str


def test_an_inactive_tracer_returns_before_reading_its_arguments() -> None:
    """Rule 1: nothing listening (no callback, logging off) costs one level check."""
    logging.getLogger("taps_post").setLevel(logging.WARNING)
    try:
        tracer = Tracer(clock=lambda: 0.0)
        assert not tracer.active
        tracer.emit("attempt.started", value=b"never looked at")
    finally:
        logging.getLogger("taps_post").setLevel(logging.NOTSET)


# -- race() events --------------------------------------------------------------------------


def race_events(script: Script, n: int, **kw: Any) -> tuple[Events, object]:
    events, trace = collector()

    async def main() -> object:
        tracer = Tracer(trace)
        return await race(candidates(n), script, attempt_delay=kw.pop("delay", 0.25),
                          timeout=kw.pop("timeout", 2.0), tracer=tracer)

    return events, run(main())


def brief(events: Events) -> list[tuple[Any, ...]]:
    return [(n, i.get("rank"), i.get("t_ms")) for n, i in events]


def test_race_emits_attempt_events_in_order_at_their_virtual_times() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    script = Script({1: Fail(0.125, refused), 2: Hang(), 3: Win(0.0625)})
    events, result = race_events(script, 3)
    assert isinstance(result, RaceResult) and result.candidate.rank == 3
    assert brief(events) == [
        ("race.started", None, 0.0),
        ("attempt.started", 1, 0.0),
        ("attempt.failed", 1, 125.0),
        ("attempt.started", 2, 125.0),
        ("attempt.started", 3, 375.0),
        ("attempt.won", 3, 437.5),
        ("attempt.cancelled", 2, 437.5),
        ("race.finished", None, 437.5),
    ]
    info = dict(events)
    assert info["race.started"] | {"trace_id": 0} == {
        "candidates": 3, "attempt_delay_ms": 250.0, "timeout_ms": 2000.0, "trace_id": 0,
        "t_ms": 0.0}
    failed = events[2][1]
    assert {k: failed[k] for k in ("interface", "stack", "remote", "elapsed_ms", "kind")} == {
        "interface": "eth0", "stack": "tcp", "remote": "192.0.2.1:443", "elapsed_ms": 125.0,
        "kind": "refused"}
    assert "Connection refused" in failed["error"]
    assert events[3][1]["at_ms"] == 125.0 and events[4][1]["at_ms"] == 375.0
    assert events[5][1]["elapsed_ms"] == 62.5
    # #2 ran 312.5 ms (>= attemptDelay) while #3, started after it, won: outrun (racing Rule 4)
    assert events[6][1]["reason"] == "outrun: no answer within attemptDelay while a later " \
        "attempt won"
    assert info["race.finished"]["outcome"] == "won" and info["race.finished"]["winner"] == 3


def test_race_events_on_conn_timeout() -> None:
    events, result = race_events(Script({1: Hang(), 2: Hang()}), 2, timeout=1.0)
    assert isinstance(result, tuple)
    assert brief(events) == [
        ("race.started", None, 0.0), ("attempt.started", 1, 0.0),
        ("attempt.started", 2, 250.0), ("attempt.failed", 1, 1000.0),
        ("attempt.failed", 2, 1000.0), ("race.finished", None, 1000.0)]
    assert [e[1]["kind"] for e in events[3:5]] == ["timeout", "timeout"]
    assert events[-1][1]["outcome"] == "timeout" and events[-1][1]["winner"] is None


def test_race_events_for_a_late_transient() -> None:
    events, result = race_events(Script({1: Stubborn(), 2: Win(0.125)}), 2)
    assert isinstance(result, RaceResult)
    assert [(n, i.get("rank")) for n, i in events][-3:] == [
        ("attempt.won", 2), ("attempt.cancelled", 1), ("race.finished", None)]


@pytest.mark.parametrize("n", [1, 3], ids=["one-candidate", "full-race"])
def test_race_events_when_the_caller_cancels(n: int) -> None:
    events, trace = collector()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(race(candidates(n), Script({r: Hang() for r in (1, 2, 3)}),
                                          attempt_delay=0.25, timeout=2.0,
                                          tracer=Tracer(trace)))
        loop.call_at(0.375, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    started = [i["rank"] for name, i in events if name == "attempt.started"]
    cancelled = [i["rank"] for name, i in events if name == "attempt.cancelled"]
    assert started == cancelled == ([1] if n == 1 else [1, 2])
    assert events[-1][0] == "race.finished" and events[-1][1]["outcome"] == "cancelled"
    assert events[-1][1]["t_ms"] == 375.0


def test_one_candidate_race_events() -> None:
    events, result = race_events(Script({1: Win(0.125)}), 1)
    assert isinstance(result, RaceResult)
    assert brief(events) == [("race.started", None, 0.0), ("attempt.started", 1, 0.0),
                             ("attempt.won", 1, 125.0), ("race.finished", None, 125.0)]
    events, result = race_events(Script({1: Hang()}), 1, timeout=0.5)
    assert isinstance(result, tuple)
    assert [(n, i.get("kind")) for n, i in events][2:] == [
        ("attempt.failed", "timeout"), ("race.finished", None)]
    assert events[-1][1]["outcome"] == "timeout"


def test_race_events_for_a_withdrawn_candidate() -> None:
    events, trace = collector()
    script = Script({1: Hang(), 3: Win(0.0625)})
    passes = Passes([(0.125, Replan(tuple(candidates(3)[2:]), "withdrawn: pass 2"))])

    async def main() -> object:
        return await race(candidates(3), script, attempt_delay=0.25, timeout=2.0,
                          tracer=Tracer(trace), more=passes())

    result = run(main())
    assert isinstance(result, RaceResult) and result.candidate.rank == 3
    assert brief(events)[:4] == [("race.started", None, 0.0), ("attempt.started", 1, 0.0),
                                 ("race.withdrawn", None, 125.0), ("attempt.started", 3, 250.0)]
    withdrawn = events[2][1]
    assert (withdrawn["ranks"], withdrawn["reason"], withdrawn["at_ms"]) == (
        (2,), "withdrawn: pass 2", 125.0)
    assert not [i for n, i in events if n.startswith("attempt.") and i.get("rank") == 2]


def test_a_failing_trace_callback_does_not_change_the_race() -> None:
    def trace(name: str, info: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    async def main() -> object:
        return await race(candidates(2), Script({1: Hang(), 2: Win(0.125)}),
                          attempt_delay=0.25, timeout=2.0, tracer=Tracer(trace))

    logging.getLogger("taps_post").propagate = False  # keep pytest's output clean
    try:
        result = run(main())
    finally:
        logging.getLogger("taps_post").propagate = True
    assert isinstance(result, RaceResult) and result.candidate.rank == 2


def emitted_names() -> dict[str, str]:
    """Every event name the package passes to an emit() as a literal: `x.emit("name", ...)`
    and racing's `_emit(tracer, "name", ...)`, with where it is emitted."""
    import ast
    from pathlib import Path

    import taps_post

    found: dict[str, str] = {}
    root = Path(taps_post.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func, args = node.func, node.args
            if isinstance(func, ast.Attribute) and func.attr == "emit" and args:
                arg = args[0]
            elif isinstance(func, ast.Name) and func.id == "_emit" and len(args) > 1:
                arg = args[1]
            else:
                continue
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found[arg.value] = f"{path.relative_to(root)}:{node.lineno}"
    return found


def test_every_event_the_package_emits_is_listed_in_events() -> None:
    names = emitted_names()
    assert {"attempt.started", "attempt.fallback", "carrier.active"} <= set(names)  # scan works
    unlisted = {name: where for name, where in names.items() if name not in EVENTS}
    assert not unlisted, f"emitted but missing from runtime/trace.py EVENTS: {unlisted}"


# -- a real establishment -------------------------------------------------------------------

LO4 = "127.0.0.1"


def live_run(coro: Any, timeout: float = 15.0) -> Any:
    """asyncio.run on the real clock, bounded (fakeclock's `run` is virtual time)."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def app_policy(values: dict[str, Any]) -> Any:
    import taps_post as tp

    return tp.PolicyContext(system=[], app={"version": 1, "layer": "app",
                                            "rules": [{"id": "t", "set": values}]},
                            app_name="trace")


@pytest.fixture(scope="module")
def cert() -> Any:
    import taps_post as tp

    return tp.certs.self_signed(["localhost", LO4, "dane.test"])


def test_carrier_active_says_how_the_peer_was_accepted(cert: Any) -> None:
    """The secure stack's verdict (Transient.dane) rides in carrier.active as `dane`; a
    stack that checks no certificate says None."""
    import taps_post as tp

    async def main() -> list[tuple[str, Any, Any]]:
        seen: list[tuple[str, Any, Any]] = []
        for secure in (True, False):
            local = tp.Local(address=LO4, port=0, certificates=[cert] if secure else [])
            policy = app_policy({"stack": {"tcp" if not secure else "tls": "require"}})
            listener = await tp.listen(local, policy=policy)
            events, trace = collector()
            try:
                remote = tp.Remote.parse(f"{LO4}:{listener.port}",
                                         certificates=[cert] if secure else [])
                carrier = await tp.initiate(remote, policy=policy, trace=trace,
                                            store=tp.AssociationStore())
                try:
                    active = next(i for n, i in events if n == "carrier.active")
                    seen.append((carrier.stack, active["dane"], carrier.transients[0].dane
                                 if hasattr(carrier.transients[0], "dane") else None))
                finally:
                    await carrier.close()
            finally:
                await listener.close()
        return seen

    (tls, tls_dane, tls_t), (tcp, tcp_dane, tcp_t) = live_run(main())
    assert tls == "tls" and isinstance(tls_dane, str) and tls_dane == tls_t, tls_dane
    assert tcp == "tcp" and tcp_dane is None and tcp_t is None


def test_a_snapshots_validated_tlsa_is_not_trusted_on_a_real_connection(cert: Any) -> None:
    """initiate(env=...) with `tlsa: validated: true` for the listener's own certificate
    (DANE-EE 3 0 0) under security.dane require: the snapshot is text, not a DNSSEC
    validation, so the attempt gets the set unvalidated and refuses (establish Rule 7),
    where trusting the file would have connected to a certificate no CA and no pin vouch
    for. The explanation still shows the set as the snapshot wrote it."""
    import ssl
    from dataclasses import replace as dc_replace

    import taps_post as tp
    from taps_post.decision.names import TlsaRecord, TlsaSet
    from taps_post.errors import DaneError
    from taps_post.system import live

    async def main() -> Any:
        listener = await tp.listen(tp.Local(address=LO4, port=0, certificates=[cert]),
                                   policy=app_policy({"stack": {"tls": "require"}}))
        try:
            port = listener.port
            name = f"_{port}._tcp.dane.test"
            record = TlsaRecord(3, 0, 0, ssl.PEM_cert_to_DER_cert(cert.cert_pem))
            env = dc_replace(live.live_environment("dane.test", port, (), addresses=(LO4,)),
                             tlsa={name: TlsaSet(name, (record,), validated=True)})
            policy = app_policy({"stack": {"tls": "require"}, "security.dane": "require",
                                 "connTimeout": 3000})
            with pytest.raises(tp.EstablishmentError) as err:
                await tp.initiate(f"tls://dane.test:{port}", policy=policy, env=env,
                                  store=tp.AssociationStore())
            return name, err.value
        finally:
            await listener.close()

    name, err = live_run(main())
    failed = [a for a in err.attempts if a.outcome == "failed"]
    assert failed and all(isinstance(a.exception, DaneError) for a in failed), err
    assert all(a.exception.reason == "not_validated" for a in failed), err  # found, by name
    assert err.decision.dane is not None
    assert (err.decision.dane.name, err.decision.dane.validated) == (name, True)


@pytest.fixture
def h2_later(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A silent TCP listener on 127.0.0.1 (it accepts, never answers a ClientHello), and
    the DNS lab on port 53 (root) saying `web.w3.test` is 127.0.0.1 at once and, 300 ms
    later, that the service on that port speaks h2 only (HTTPS `1 . alpn=h2`)."""
    import socket

    import dnslab

    silent = socket.socket()
    silent.bind((LO4, 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    zone = dnslab.Zone("w3.test.")
    zone.add("web", 300, "A", LO4)
    zone.add(f"_{port}._https.web", 300, "HTTPS", "1 . alpn=h2")
    with dnslab.lab(zone, signed=False, resolver=False, port53=True,
                    delays={"HTTPS": 0.3}) as running:
        running.write_resolv_conf(tmp_path / "resolv.conf")
        (tmp_path / "hosts").write_text("")
        monkeypatch.setenv("TAPS_POST_RESOLV_CONF", str(tmp_path / "resolv.conf"))
        monkeypatch.setenv("TAPS_POST_HOSTS", str(tmp_path / "hosts"))
        try:
            yield port
        finally:
            silent.close()


def test_quic_planned_before_an_h2_only_https_record_is_never_started(h2_later: int) -> None:
    """Pass 1 (A answered, HTTPS outstanding for resolutionDelay) plans TLS then QUIC on the
    port; TLS starts and hangs; the HTTPS record arrives 300 ms in, before QUIC's turn
    (attemptDelay 1000 ms), and says h2 only: pass 2 has no QUIC, so the pending QUIC
    candidate is withdrawn (establish Rule 1, racing Rule 7): never started, recorded
    not_started with the reason, and nothing about QUIC in the Association's history."""
    import taps_post as tp

    policy = app_policy({"stack": {"tls": "prefer", "tls-mptcp": "prohibit"},
                         "racing.attemptDelay": 1000, "connTimeout": 1500})
    store = tp.AssociationStore()

    async def main() -> Any:
        events, trace = collector()
        with pytest.raises(tp.EstablishmentError) as err:
            await tp.initiate(f"https://web.w3.test:{h2_later}", policy=policy, trace=trace,
                              store=store)
        return events, err.value

    events, err = live_run(main())
    first = next(i for n, i in events if n == "decision.complete")
    assert first["stacks"] == ("tls", "quic"), "pass 1 planned QUIC second"
    by_stack = {a.stack: a for a in err.attempts}
    assert set(by_stack) == {"tls", "quic"}, err.attempts
    assert by_stack["tls"].outcome == "failed"
    quic = by_stack["quic"]
    assert quic.outcome == "not_started" and quic.error.startswith("withdrawn: resolution pass")
    started = [i["stack"] for n, i in events if n == "attempt.started"]
    assert started == ["tls"], started
    withdrawn = [i for n, i in events if n == "race.withdrawn"]
    assert [w["ranks"] for w in withdrawn] == [(quic.rank,)]
    assert withdrawn[0]["at_ms"] < 1000.0, "withdrawn before its turn"
    history = store.get(f"web.w3.test:{h2_later}").history
    assert [(e.stack, e.outcome, e.port) for e in history] == [
        ("tls", "failure", h2_later)], "history keyed by the attempt's remote port too"
    assert not any(c.stack == "quic" for c in err.decision.candidates), "explain: no QUIC"


def test_a_refused_decision_is_traced_before_the_policy_error() -> None:
    """decision.complete is emitted for a decision the policy refuses too, so a trace says
    why nothing was opened; the PolicyError carries the same Decision."""
    import taps_post as tp

    policy = app_policy({"interface": {"lo": "prohibit"}})

    async def main() -> Any:
        events, trace = collector()
        carrier = tp.initiate("tcp://127.0.0.1:9", policy=policy, trace=trace)
        with pytest.raises(tp.PolicyError) as err:
            await carrier.activate()
        return events, err.value

    events, err = live_run(main())
    assert [n for n, _ in events] == ["decision.complete"], events
    [(_, info)] = events
    assert info["outcome"] == err.decision.outcome != "ok" and info["candidates"] == 0, info
