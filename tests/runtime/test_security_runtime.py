"""No downgrade and an untrusted Association cache, on loopback with real sockets.

No downgrade (RFC 9623 section 12): a pinned certificate on the Remote, or a client identity
on the Local, can only be honoured by a secure stack, so no insecure stack may be raced, let
alone win. The impostor here is a plain TCP server that counts every byte it receives: a
TLS ClientHello is allowed to reach it, the application's payload never.

The Association cache is a hint: a damaged, oddly shaped or untrusted file is ignored with one
warning on `taps_post.store`, and never makes the store or `initiate()` fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp

LO4 = "127.0.0.1"
PAYLOAD = b"application secret: the impostor must never read this"
INSECURE = {"tcp", "mptcp", "udp"}


class Impostor:
    """A plain TCP server that accepts everything, records every byte, and hangs up once a
    client has said something (so a TLS attempt fails at once instead of timing out)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError):
            data = await reader.read(65536)
            self.received += data
            # Whatever else arrived by now, for a client that wrote twice.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    while chunk := await reader.read(65536):
                        self.received += chunk
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def impostor() -> AsyncIterator[Impostor]:
    imp = Impostor()
    imp.server = await asyncio.start_server(imp._serve, LO4, 0)
    try:
        yield imp
    finally:
        imp.server.close()
        await imp.server.wait_closed()


@contextlib.asynccontextmanager
async def tls_listener(cert: tp.certs.Certificate,
                       policy: tp.PolicyContext) -> AsyncIterator[tp.Listener]:
    listener = await tp.listen(tp.Local(address=LO4, port=0, certificates=[cert]), policy=policy)
    try:
        assert not INSECURE & set(listener.ports), listener.ports
        yield listener
    finally:
        await listener.close()


@pytest.fixture(scope="module")
def cert() -> tp.certs.Certificate:
    return tp.certs.self_signed(["localhost", LO4])


@pytest.fixture(scope="module")
def other() -> tp.certs.Certificate:
    return tp.certs.self_signed(["localhost", LO4])


def quick(make_policy: Any, set_: dict[str, Any] | None = None, **kw: Any) -> tp.PolicyContext:
    """A policy whose races end within a second or two when nothing answers."""
    return make_policy({"connTimeout": 2000, **(set_ or {})}, **kw)


def raced(exc: BaseException) -> set[str]:
    """The stacks an EstablishmentError says were attempted."""
    return {a.stack for a in getattr(exc, "attempts", ())}


# ---- no downgrade --------------------------------------------------------------------------


def test_a_pinned_host_port_never_sends_plaintext_to_an_impostor(run, make_policy, store,
                                                                 cert) -> None:
    """The issue's attack: `host:port` with a pin races TLS, the pin cannot be checked
    against a plain TCP server, and plain TCP must not win instead."""
    policy = quick(make_policy)

    async def main() -> None:
        async with impostor() as imp:
            remote = tp.Remote.parse(f"{LO4}:{imp.port}", certificates=[cert])
            with pytest.raises((tp.EstablishmentError, tp.PolicyError)) as info:
                await tp.initiate(remote, policy=policy, store=store, send=PAYLOAD)
            assert PAYLOAD not in imp.received
            assert imp.connections >= 1, "the TLS attempt did reach the impostor"
            assert imp.received.startswith(b"\x16\x03"), "only a TLS handshake arrived"
            assert raced(info.value) and not raced(info.value) & INSECURE, info.value

    run(main())


def test_a_client_identity_implies_secure_too(run, make_policy, store, cert) -> None:
    policy = quick(make_policy)

    async def main() -> None:
        async with impostor() as imp:
            with pytest.raises((tp.EstablishmentError, tp.PolicyError)) as info:
                await tp.initiate(f"{LO4}:{imp.port}", policy=policy, store=store,
                                  local=tp.Local(certificates=[cert]), send=PAYLOAD)
            assert PAYLOAD not in imp.received
            assert not raced(info.value) & INSECURE, info.value
            excluded = {e.stack for e in info.value.decision.excluded
                        if e.rule == "client-certificate"}
            assert "tcp" in excluded

    run(main())


def test_a_pin_mismatch_at_a_real_tls_server_makes_no_plaintext_attempt(run, make_policy,
                                                                         store, cert,
                                                                         other) -> None:
    policy = quick(make_policy)

    async def main() -> None:
        async with tls_listener(cert, policy) as listener:
            remote = tp.Remote.parse(f"{LO4}:{listener.port}", certificates=[other])
            with pytest.raises(tp.EstablishmentError) as info:
                await tp.initiate(remote, policy=policy, store=store, send=PAYLOAD)
            stacks = raced(info.value)
            assert stacks and not stacks & INSECURE, info.value
            assert all(a.outcome == "failed" for a in info.value.attempts)

    run(main())


def test_the_explanation_names_the_no_downgrade_rule(run, make_policy, store, cert) -> None:
    policy = quick(make_policy)

    async def main() -> None:
        async with tls_listener(cert, policy) as listener:
            remote = tp.Remote.parse(f"{LO4}:{listener.port}", certificates=[cert])
            carrier = await tp.initiate(remote, policy=policy, store=store)
            try:
                assert carrier.stack in ("tls", "quic")
                decision = carrier.explanation
                assert decision is not None
                assert {c.stack for c in decision.candidates} <= {"tls", "quic", "tls-mptcp"}
                why = [e for e in decision.excluded if e.stack == "tcp"]
                assert why and why[0].property == "secure"
                assert why[0].rule == "pinned-certificate" and why[0].layer == "carrier"
                assert decision.properties["secure"].statement.enforce
                assert "pinned-certificate" in json.dumps(decision.to_dict())
            finally:
                await carrier.close()

    run(main())


@pytest.mark.parametrize("layer, rule", [
    ("app", {"set": {"stack": {"tcp": "require"}}}),
    ("app", {"enforce": True, "set": {"secure": "prohibit"}}),
    ("carrier", {"priority": 100, "set": {"secure": "prohibit"}}),
    ("carrier", {"set": {"stack": {"tcp": "require"}}}),
])
def test_a_policy_that_wants_plaintext_fails_closed(run, store, cert, layer, rule) -> None:
    """A pin and a policy that allows only plaintext cannot both hold: PolicyError, and not
    one byte (not even a TCP connection) goes to the remote."""
    doc = {"version": 1, "layer": layer, "rules": [{"id": "plain", **rule}]}
    policy = tp.PolicyContext(system=[], app_name="t", **{layer: doc})

    async def main() -> None:
        async with impostor() as imp:
            remote = tp.Remote.parse(f"{LO4}:{imp.port}", certificates=[cert])
            with pytest.raises(tp.PolicyError) as info:
                await tp.initiate(remote, policy=policy, store=store, send=PAYLOAD)
            assert imp.connections == 0 and not imp.received
            assert info.value.decision is not None
            assert not info.value.decision.candidates

    run(main())


def test_an_enforced_no_preference_cannot_let_plaintext_through(run, store, cert) -> None:
    """An enforced `secure: no_preference` above the carrier layer denies the carrier's
    `require`; the pin still keeps every insecure stack out of the race, and says so."""
    doc = {"version": 1, "layer": "app",
           "rules": [{"id": "open", "enforce": True, "set": {"secure": "no_preference",
                                                             "connTimeout": 2000}}]}
    policy = tp.PolicyContext(system=[], app=doc, app_name="t")

    async def main() -> None:
        async with impostor() as imp:
            remote = tp.Remote.parse(f"{LO4}:{imp.port}", certificates=[cert])
            with pytest.raises(tp.EstablishmentError) as info:
                await tp.initiate(remote, policy=policy, store=store, send=PAYLOAD)
            assert PAYLOAD not in imp.received
            assert not raced(info.value) & INSECURE, info.value
            decision = info.value.decision
            assert decision is not None
            assert [c.rank for c in decision.candidates] == list(
                range(1, len(decision.candidates) + 1))
            assert any(e.stack == "tcp" and e.rule == "pinned-certificate"
                       for e in decision.excluded)

    run(main())


def test_plans_with_and_without_a_pin_stay_apart(run, make_policy, store, cert) -> None:
    """The plan cache keys on the policy's fingerprint, which the no-downgrade layer
    changes: an unpinned plan that allows TCP is never reused for a pinned connect, and the
    pinned one never forces TLS on an unpinned connect."""
    policy = quick(make_policy)

    async def main() -> None:
        async with impostor() as imp:
            target = f"{LO4}:{imp.port}"
            plain = await tp.initiate(target, policy=policy, store=store)
            assert plain.stack == "tcp"
            await plain.close()
            remote = tp.Remote.parse(target, certificates=[cert])
            for _ in range(2):  # the second time from the cached plan
                with pytest.raises(tp.EstablishmentError) as info:
                    await tp.initiate(remote, policy=policy, store=store, send=PAYLOAD)
                assert not raced(info.value) & INSECURE, info.value
            again = await tp.initiate(target, policy=policy, store=store)
            assert again.stack == "tcp"
            await again.close()
            assert PAYLOAD not in imp.received

    run(main())


def test_the_secured_context_is_built_once(cert) -> None:
    """A pinned connect must not load a policy layer each time: the copy with the
    no-downgrade layer is kept by fingerprint, and it is a distinct context."""
    from taps_post.runtime.establish import secured

    ctx = tp.PolicyContext(system=[], app_name="once")
    remote = tp.Remote.parse(f"{LO4}:1", certificates=[cert])
    first, rule = secured(ctx, remote, None)
    assert rule == "pinned-certificate" and first is not ctx
    assert first.fingerprint != ctx.fingerprint
    again, _ = secured(tp.PolicyContext(system=[], app_name="once"), remote, None)
    assert again is first
    assert secured(ctx, tp.Remote.parse(f"{LO4}:1"), None) == (ctx, None)
    pin_only = tp.certs.Certificate(cert.cert_pem)
    assert secured(ctx, tp.Remote.parse(f"{LO4}:1"), tp.Local(certificates=[pin_only])) \
        == (ctx, None), "a certificate without its key is no client identity"


# ---- the Association cache -----------------------------------------------------------------


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "taps_post.store" and r.levelno == logging.WARNING]


def good_entry(key: str, **kw: Any) -> dict[str, Any]:
    return {"remote": key, "stack": "tcp", "outcome": "success", "rtt_ms": 1.5,
            "ticket": False, "interface": None, "address": None, **kw}


def write_cache(path: Path, data: Any, mode: int = 0o600) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


def test_a_wrongly_typed_entry_is_skipped_and_initiate_works(run, tcp_policy, tmp_path,
                                                             caplog) -> None:
    """An entry whose rtt_ms is a list used to reach decide() and raise TypeError there."""

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        try:
            key = f"{LO4}:{listener.port}"
            bad = good_entry(key, rtt_ms=[5])
            path = write_cache(tmp_path / "a.json", {"version": 1, "associations": {
                key: [good_entry(key), bad]}})
            with caplog.at_level(logging.WARNING, logger="taps_post.store"):
                disk = tp.AssociationStore(path)
            loaded = [(e.stack, e.rtt_ms) for e in disk.get(key).history]
            carrier = await tp.initiate(key, policy=tcp_policy, store=disk)
            await carrier.close()
            warnings = store_warnings(caplog)
            assert len(warnings) == 1 and "rtt_ms" in warnings[0], warnings
            assert loaded == [("tcp", 1.5)]
        finally:
            await listener.close()

    run(main())


BAD_ENTRIES = [
    {"rtt_ms": -1}, {"rtt_ms": float("nan")}, {"rtt_ms": float("inf")}, {"rtt_ms": "12"},
    {"rtt_ms": True}, {"outcome": "maybe"}, {"outcome": None}, {"stack": "no-such-stack"},
    {"stack": ["tcp"]}, {"ticket": "yes"}, {"interface": 7}, {"interface": "x" * 1000},
    {"address": "not-an-ip"}, {"address": 127}, {"remote": "elsewhere:1"}, {"remote": 5},
    {"surprise": 1},
]


@pytest.mark.parametrize("change", BAD_ENTRIES, ids=lambda c: next(iter(c)))
def test_each_bad_entry_is_skipped_with_one_warning(tmp_path, caplog, change) -> None:
    key = "example.com:443"
    path = write_cache(tmp_path / "a.json", {"version": 1, "associations": {
        key: [good_entry(key), good_entry(key, **change), good_entry(key, stack="tls")]}})
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
    assert len(store_warnings(caplog)) == 1, store_warnings(caplog)
    assert [e.stack for e in disk.get(key).history] == ["tcp", "tls"]


def test_entries_are_capped_per_remote_and_overall(tmp_path, caplog) -> None:
    many = {"big.example:443": [good_entry("big.example:443", rtt_ms=float(i))
                                for i in range(200)]}
    many.update({f"h{i}.example:443": [good_entry(f"h{i}.example:443")] for i in range(5000)})
    path = write_cache(tmp_path / "a.json", {"version": 1, "associations": many})
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
    assert len(store_warnings(caplog)) == 1, store_warnings(caplog)
    kept = disk.get("big.example:443").history
    assert len(kept) == 64 and kept[-1].rtt_ms == 199.0  # the newest are kept
    assert len(disk.get("h0.example:443").history) == 1
    assert disk.get("h4999.example:443").history == []  # over the cap of remotes


@pytest.mark.parametrize("data", [
    {"version": 1, "associations": []}, [], "just a string", 42, {"associations": {}},
    {"version": 2, "associations": {}}, {"version": True, "associations": {}},
    {"version": 1}, "{not json", "[" * 100000,
], ids=["associations-list", "list", "string", "number", "no-version", "version-2",
        "version-true", "no-associations", "not-json", "deep"])
def test_a_wrong_top_level_shape_gives_an_empty_store(tmp_path, caplog, data) -> None:
    path = tmp_path / "a.json"
    if isinstance(data, str) and data[:1] in "{[":
        write_cache(path, data)
    else:
        write_cache(path, json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
    assert len(store_warnings(caplog)) == 1, store_warnings(caplog)
    assert disk.get("example.com:443").history == []


def trusted_cache(tmp_path: Path, name: str = "a.json") -> Path:
    return write_cache(tmp_path / name, {"version": 1, "associations": {
        "example.com:443": [good_entry("example.com:443")]}})


def test_the_trusted_file_itself_is_loaded(tmp_path, caplog) -> None:
    """The baseline the next tests change one thing of: a 0600 file of ours loads."""
    path = trusted_cache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
    assert not store_warnings(caplog)
    assert len(disk.get("example.com:443").history) == 1


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_cache_writable_by_others_is_ignored(tmp_path, caplog, mode) -> None:
    path = trusted_cache(tmp_path)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
    warnings = store_warnings(caplog)
    assert len(warnings) == 1 and "writable" in warnings[0], warnings
    assert disk.get("example.com:443").history == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_cache_owned_by_another_user_is_ignored(tmp_path, caplog) -> None:
    path = trusted_cache(tmp_path)
    os.chown(path, 65534, 65534)
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
    warnings = store_warnings(caplog)
    assert len(warnings) == 1 and "owned by uid 65534" in warnings[0], warnings
    assert disk.get("example.com:443").history == []


def test_a_symlinked_cache_is_not_followed(tmp_path, caplog) -> None:
    target = trusted_cache(tmp_path, "real.json")
    link = tmp_path / "a.json"
    link.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(link)
    warnings = store_warnings(caplog)
    assert len(warnings) == 1 and "symbolic link" in warnings[0], warnings
    assert disk.get("example.com:443").history == []


def test_a_fifo_or_a_directory_is_refused_without_hanging(tmp_path, caplog) -> None:
    fifo = tmp_path / "a.json"
    os.mkfifo(fifo, 0o600)
    made: list[tp.AssociationStore] = []
    worker = threading.Thread(target=lambda: made.append(tp.AssociationStore(fifo)),
                              daemon=True)
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        worker.start()
        worker.join(5)
        if worker.is_alive():  # release the reader blocked in open() before failing
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(5)
            pytest.fail("opening the cache blocked on a FIFO")
        (tmp_path / "d.json").mkdir(mode=0o700)
        tp.AssociationStore(tmp_path / "d.json")
    warnings = store_warnings(caplog)
    assert len(warnings) == 2 and all("regular file" in w for w in warnings), warnings
    assert made and made[0].get("example.com:443").history == []


def test_a_missing_cache_is_silent_and_save_then_load_round_trips(tmp_path, caplog) -> None:
    path = tmp_path / "a.json"
    with caplog.at_level(logging.WARNING, logger="taps_post.store"):
        disk = tp.AssociationStore(path)
        disk.get("example.com:443").record("tls", "success", rtt_ms=2.0, address=LO4)
        disk.save()
        again = tp.AssociationStore(path)
    assert not store_warnings(caplog)
    assert again.get("example.com:443").history == disk.get("example.com:443").history


def test_tickets_and_the_store_print_no_ticket(store) -> None:
    """A ticket is held in a Ticket whose repr names its stack; take_ticket() returns the
    ticket itself, once."""
    assoc = store.get("example.com:443")
    secret = b"\x13\x37ticket-bytes-and-secret"
    assoc.add_ticket("quic", secret)
    for text in (repr(assoc), repr(assoc.tickets), str(assoc.tickets["quic"]), repr(store)):
        assert "ticket-bytes" not in text and "\\x13" not in text, text
    assert repr(assoc.tickets["quic"][0]) == "<Ticket quic>"
    assert assoc.take_ticket("quic") == secret
    assert assoc.take_ticket("quic") is None


def test_a_socket_pair_still_works_after_a_cache_error(run, tcp_policy, tmp_path) -> None:
    """initiate() with a store whose file was garbage: the store is merely empty."""
    path = write_cache(tmp_path / "a.json", b"\xff\xfe not utf-8".decode("latin-1"))

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4, port=0), policy=tcp_policy)
        try:
            disk = tp.AssociationStore(path)
            carrier = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy, store=disk)
            await carrier.close()
        finally:
            await listener.close()

    run(main())
