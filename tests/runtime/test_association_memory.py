"""Failure memory in the Association history: wall-clock stamps and remote ports, kept by
the cache file (runtime/association.py Rules 9-11), and the live Environment on the same
clock (system/live.py Rule 4).

No network: the store and the file are what is tested; the races that write them are
tests/runtime/test_failure_memory_netns.py's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp
from taps_post.decision.environment import CacheEntry
from taps_post.system import live

KEY = "svc.example:443"


def test_record_stamps_the_wall_clock() -> None:
    assoc = tp.AssociationStore().get(KEY)
    before = time.time()
    assoc.record("quic", "failure", interface="eth0", address="fd00::10")
    after = time.time()
    [entry] = assoc.history
    assert entry.at is not None and before <= entry.at <= after
    assoc.record("tls", "success", rtt_ms=12.0, at=1_700_000_000.0)
    assert assoc.history[-1].at == 1_700_000_000.0


def test_a_repeated_failure_moves_its_time_a_repeated_success_does_not() -> None:
    """The memory counts from the latest failure (Rule 9); a success that ranks the same
    keeps its entry, so cached plans survive it."""
    assoc = tp.AssociationStore().get(KEY)
    assoc.record("quic", "failure", interface="eth0", at=100.0)
    assoc.record("quic", "failure", interface="eth0", at=500.0)
    assert [(e.outcome, e.at) for e in assoc.history] == [("failure", 500.0)]
    assoc.record("tls", "success", rtt_ms=20.0, interface="eth0", at=100.0)
    assoc.record("tls", "success", rtt_ms=21.0, interface="eth0", at=600.0)  # within 25 %
    assert assoc.history[-1].at == 100.0 and assoc.history[-1].rtt_ms == 20.0
    assoc.record("tls", "success", rtt_ms=80.0, interface="eth0", at=700.0)  # re-ranks
    assert assoc.history[-1].at == 700.0


def test_a_success_clears_the_failure_and_a_failure_the_success() -> None:
    assoc = tp.AssociationStore().get(KEY)
    assoc.record("quic", "failure", interface="eth0", at=100.0)
    assoc.record("quic", "success", rtt_ms=5.0, interface="eth0", at=200.0)
    assert [(e.outcome, e.at) for e in assoc.history] == [("success", 200.0)]
    assoc.record("quic", "failure", interface="eth0", at=300.0)
    assert [(e.outcome, e.at) for e in assoc.history] == [("failure", 300.0)]


def test_a_success_on_one_port_keeps_the_failure_on_another() -> None:
    """Rule 11 (R2-2): with SVCB one stack reaches one address on two ports; the fallback's
    success on 443 must not overwrite the failure on 8443 it fell back from."""
    assoc = tp.AssociationStore().get(KEY)
    assoc.record("tls", "failure", interface="eth0", address="198.18.0.10", port=8443,
                 at=100.0)
    assoc.record("tls", "success", rtt_ms=10.0, interface="eth0", address="198.18.0.10",
                 port=443, at=101.0)
    assert [(e.port, e.outcome, e.at) for e in assoc.history] == [
        (8443, "failure", 100.0), (443, "success", 101.0)]
    assoc.record("tls", "success", rtt_ms=12.0, interface="eth0", address="198.18.0.10",
                 port=8443, at=200.0)  # a success on 8443 clears 8443's failure only
    assert [(e.port, e.outcome) for e in assoc.history] == [(443, "success"),
                                                            (8443, "success")]


def test_the_rtt_is_smoothed_per_port() -> None:
    assoc = tp.AssociationStore().get(KEY)
    assoc.record("tls", "success", rtt_ms=10.0, interface="eth0", port=443, at=1.0)
    assoc.record("tls", "success", rtt_ms=200.0, interface="eth0", port=8443, at=2.0)
    assert {e.port: e.rtt_ms for e in assoc.history} == {443: 10.0, 8443: 200.0}


def test_an_entry_without_a_port_gives_way_to_one_with_a_port() -> None:
    """An entry about any port (an old file's) is older news of the same path: the first
    outcome recorded with a port replaces it (Rule 11), on any port."""
    assoc = tp.AssociationStore().get(KEY)
    assoc.history = [CacheEntry(KEY, "quic", "failure", interface="eth0", at=100.0),
                     CacheEntry(KEY, "tls", "failure", interface="eth0", at=100.0)]
    assoc.record("quic", "success", rtt_ms=5.0, interface="eth0", port=443, at=200.0)
    assert [(e.stack, e.port, e.outcome) for e in assoc.history] == [
        ("tls", None, "failure"), ("quic", 443, "success")]
    assoc.record("tls", "failure", interface="eth0", at=300.0)  # no port: replaces no port
    assert [(e.stack, e.port, e.at) for e in assoc.history] == [
        ("quic", 443, 200.0), ("tls", None, 300.0)]


def test_the_file_keeps_the_port(tmp_path: Path) -> None:
    path = tmp_path / "assoc.json"
    store = tp.AssociationStore(path)
    assoc = store.get(KEY)
    assoc.record("tls", "failure", interface="eth0", address="fd00::10", port=8443)
    assoc.record("tls", "success", rtt_ms=3.0, interface="eth0", address="fd00::10")
    store.save()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [e.get("port") for e in data["associations"][KEY]] == [8443, None]
    assert "port" not in data["associations"][KEY][1]  # written back as an old file had it
    assert tp.AssociationStore(path).get(KEY).history == assoc.history


@pytest.mark.parametrize("port", [
    pytest.param(65536, id="over"), pytest.param(-1, id="negative"),
    pytest.param("443", id="a-string"), pytest.param(True, id="a-bool"),
    pytest.param(443.0, id="a-float"), pytest.param(10 ** 400, id="huge")])
def test_a_bad_port_is_skipped_with_the_warning(tmp_path: Path, caplog: Any,
                                                port: Any) -> None:
    bad = {"remote": KEY, "stack": "quic", "outcome": "failure", "port": port}
    path = _file(tmp_path, [{**GOOD, "port": 8443}, bad])
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        store = tp.AssociationStore(path)
    assert [(e.stack, e.port) for e in store.get(KEY).history] == [("tls", 8443)]
    [record] = [r for r in caplog.records if r.name == "taps_post.store"]
    message = record.getMessage()
    assert "skipped 1 bad entry" in message and "is not a port" in message, message
    assert len(message) < 400, message


def test_the_file_keeps_the_stamps_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "assoc.json"
    store = tp.AssociationStore(path)
    assoc = store.get(KEY)
    now = time.time()
    assoc.record("quic", "failure", interface="eth0", address="fd00::10", at=now - 120)
    assoc.record("tls", "success", rtt_ms=15.25, interface="eth0", address="fd00::10")
    old_umask = os.umask(0)
    try:
        store.save()
    finally:
        os.umask(old_umask)
    assert os.stat(path).st_mode & 0o777 == 0o600
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [e["at"] for e in data["associations"][KEY]] == [e.at for e in assoc.history]
    reloaded = tp.AssociationStore(path).get(KEY)
    assert reloaded.history == assoc.history  # the stamps survive a restart exactly
    failure = reloaded.history[0]
    assert failure.outcome == "failure" and failure.at == pytest.approx(now - 120)


def _file(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "assoc.json"
    path.write_text(json.dumps({"version": 1, "associations": {KEY: entries}}),
                    encoding="utf-8")
    path.chmod(0o600)
    return path


GOOD = {"remote": KEY, "stack": "tls", "outcome": "failure", "at": 1_700_000_000}


@pytest.mark.parametrize(("at", "why"), [
    pytest.param(time.time() + 3600, "more than a minute in the future", id="an-hour-ahead"),
    pytest.param(1e300, "more than a minute in the future", id="far-future"),
    pytest.param(-5, "is not a time", id="negative"),
    pytest.param("yesterday", "is not a time", id="a-string"),
    pytest.param(True, "is not a time", id="a-bool"),
    pytest.param(10 ** 400, "is not a time", id="an-int-too-big-for-a-float"),
    pytest.param(float("nan"), "is not a time", id="nan"),
])
def test_a_bad_stamp_is_skipped_with_the_warning(tmp_path: Path, caplog: Any, at: Any,
                                                  why: str) -> None:
    bad = {"remote": KEY, "stack": "quic", "outcome": "failure", "at": at}
    path = _file(tmp_path, [GOOD, bad])
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        store = tp.AssociationStore(path)
    assert [e.stack for e in store.get(KEY).history] == ["tls"]  # the good entry stays
    [record] = [r for r in caplog.records if r.name == "taps_post.store"]
    message = record.getMessage()
    assert "skipped 1 bad entry" in message and why in message, message
    assert len(message) < 400, message  # the value is cut short


def test_a_stamp_a_few_seconds_ahead_is_clock_skew_not_damage(tmp_path: Path) -> None:
    path = _file(tmp_path, [{**GOOD, "at": time.time() + 30}])
    [entry] = tp.AssociationStore(path).get(KEY).history
    assert entry.at is not None and entry.at > time.time()


def test_an_old_file_without_stamps_loads_as_recent(tmp_path: Path) -> None:
    path = _file(tmp_path, [{"remote": KEY, "stack": "tls", "outcome": "failure",
                             "rtt_ms": None, "ticket": False, "interface": None,
                             "address": None}])
    [entry] = tp.AssociationStore(path).get(KEY).history
    assert entry.at is None


def test_the_live_environment_is_on_the_same_clock() -> None:
    before = time.time()
    entry = CacheEntry(KEY, "quic", "failure", at=before - 42)
    env = live.live_environment(None, 0, (entry,))
    assert env.now is not None and before <= env.now <= time.time()
    assert env.now - entry.at == pytest.approx(42, abs=5)
    # and a snapshot of it says the age, not the clock
    assert env.to_dict()["cache"][0]["age_s"] == pytest.approx(42, abs=5)


def test_ages_written_as_a_snapshot_load_back_as_the_same_ages() -> None:
    now = time.time()
    env = tp.Environment(cache=(CacheEntry(KEY, "quic", "failure", at=now - 900),
                                CacheEntry(KEY, "tls", "failure", at=now - 60)), now=now)
    again = tp.load_environment(env.to_dict())
    assert again.now == 0.0
    assert [round(-(e.at or 0.0)) for e in again.cache] == [900, 60]
