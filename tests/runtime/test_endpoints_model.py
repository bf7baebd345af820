"""The draft's endpoint model (sections 2.3-2.7, Appendix A): Association, Path, Local, Remote.

Real TCP carriers on loopback against a real Listener, the machine's real resolver on names
/etc/hosts answers (`localhost`) and on a reserved name that fails at once without any
network (`nonexistent.invalid`, RFC 6761). No mocks.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import taps_post as tp
from taps_post.core.path import PathStats
from taps_post.errors import ResolutionError
from taps_post.runtime.path import Path as TapsPath
from taps_post.system.live import cached_interfaces

LO4 = "127.0.0.1"
BAD = "nonexistent.invalid"


async def next_carrier(listener: tp.Listener) -> tp.Carrier:
    async with contextlib.aclosing(aiter(listener)) as it:  # type: ignore[type-var]
        return await anext(it)


@contextlib.asynccontextmanager
async def served(policy: tp.PolicyContext) -> AsyncIterator[tp.Listener]:
    listener = await tp.listen(tp.Local(address=LO4, port=0), policy=policy)
    try:
        yield listener
    finally:
        await listener.close()


def loopback() -> tp.Interface:
    return next(i for i in cached_interfaces() if i.type == "loopback")


# ---- Association: remote, local, paths ---------------------------------------------------


def test_the_association_of_a_carrier_names_its_remote_and_local(run, tcp_policy,
                                                                 store) -> None:
    """Association.remote is the application's Remote (not a string), local its Local."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            remote = tp.Remote.parse(f"{LO4}:{listener.port}")
            local = tp.Local(address=LO4)
            carrier = await tp.initiate(remote, local=local, policy=tcp_policy, store=store)
            try:
                assoc = carrier.association
                assert assoc is not None
                assert assoc.key == f"{LO4}:{listener.port}"
                assert isinstance(assoc.remote, tp.Remote)
                assert (assoc.remote.host, assoc.remote.port) == (LO4, listener.port)
                assert isinstance(assoc.local, tp.Local) and assoc.local.address == LO4
                assert {e.remote for e in assoc.history} == {assoc.key}
            finally:
                await carrier.close()

    run(main())


def test_association_paths_follow_the_carriers(run, until, tcp_policy, store) -> None:
    """Two carriers to one Remote share an Association with two Paths, newest first; the
    Path of a closed carrier drops out."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            target = f"{LO4}:{listener.port}"
            first = await tp.initiate(target, policy=tcp_policy, store=store)
            second = await tp.initiate(target, policy=tcp_policy, store=store)
            try:
                assoc = first.association
                assert assoc is not None and second.association is assoc
                paths = assoc.paths
                assert [p.local_address for p in paths] == [second.local_address,
                                                            first.local_address]
                assert all(isinstance(p, tp.Path) for p in paths)
                assert all(p.remote_address == (LO4, listener.port) for p in paths)
                assert first in assoc.carriers and second in assoc.carriers
                await second.close()
                assert [p.local_address for p in assoc.paths] == [first.local_address]
                assert second not in assoc.carriers
            finally:
                await first.close()
                await second.close()
            assert assoc.paths == []

    run(main())


def test_an_accepted_carrier_has_an_association_with_its_path(run, tcp_policy,
                                                              store) -> None:
    """The server side too: the Association names the peer as a Remote, the Listener's
    Local, and the accepted connection's Path (the client's mirror image)."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            client = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                       store=store)
            server = await next_carrier(listener)
            try:
                assoc = server.association
                assert assoc is not None and assoc is not client.association
                assert isinstance(assoc.remote, tp.Remote) and isinstance(assoc.local, tp.Local)
                assert (assoc.remote.host, assoc.remote.port) == client.local_address
                [path] = assoc.paths
                assert (path.local_address, path.remote_address) == (client.remote_address,
                                                                     client.local_address)
            finally:
                server.abort()
                await client.close()

    run(main())


def test_attach_holds_carriers_weakly_and_paths_skip_closed_ones(run, tcp_policy,
                                                                  store) -> None:
    """attach() keeps no carrier alive, re-attaching makes a carrier the newest, a closed
    carrier's Transient contributes no Path, and detach() forgets a carrier."""
    async def main() -> None:
        assoc = tp.Association("own.example:1")
        async with served(tcp_policy) as listener:
            target = f"{LO4}:{listener.port}"
            a = await tp.initiate(target, policy=tcp_policy, store=store)
            b = await tp.initiate(target, policy=tcp_policy, store=store)
            assoc.attach(a)
            assoc.attach(b)
            assert assoc.carriers == [b, a]
            assoc.attach(a)
            assert assoc.carriers == [a, b]
            assert [p.local_address for p in assoc.paths] == [a.local_address,
                                                              b.local_address]
            await a.close()
            assert [p.local_address for p in assoc.paths] == [b.local_address]
            assoc.detach(a)
            assoc.detach(a)  # twice: close may run more than once
            assert assoc.carriers == [b]
            await b.close()
            del a, b
            gc.collect()
            assert assoc.carriers == [] and assoc.paths == []
            assert "carriers=0" in repr(assoc)

    run(main())


def test_get_fills_remote_and_local_on_first_use(store) -> None:
    """The first carrier to a key names the endpoints; later ones leave them; the key is
    case-insensitive as before."""
    remote = tp.Remote.parse("Example.COM:443")
    local = tp.Local(port=4000)
    assoc = store.get("Example.COM:443", remote=remote, local=local)
    assert (assoc.key, assoc.remote, assoc.local) == ("example.com:443", remote, local)
    other = tp.Remote.parse("https://example.com")
    assert store.get("example.com:443", remote=other, local=tp.Local()) is assoc
    assert (assoc.remote, assoc.local) == (remote, local)
    bare = store.get("other.example:1")
    assert (bare.remote, bare.local) == (None, None)
    assert store.get("other.example:1", remote=other).remote is other


def test_an_old_cache_file_loads_and_is_written_back_unchanged(tmp_path: Path) -> None:
    """A cache file written before Associations had endpoints loads; its Associations get
    their Remote from the first carrier, and saving writes the same document."""
    key = "127.0.0.1:5000"
    entry = {"remote": key, "stack": "tcp", "outcome": "success", "rtt_ms": 1.5,
             "ticket": False, "interface": "lo", "address": "127.0.0.1"}
    document = {"version": 1, "associations": {key: [entry]}}
    path = tmp_path / "assoc.json"
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    disk = tp.AssociationStore(path)
    remote = tp.Remote.ip(LO4, 5000)
    assoc = disk.get(key, remote=remote, local=tp.Local())
    assert assoc.remote is remote and isinstance(assoc.local, tp.Local)
    assert [(e.remote, e.stack, e.rtt_ms) for e in assoc.history] == [(key, "tcp", 1.5)]
    assoc.record("tls", "failure", interface="lo", address=LO4)
    assert assoc.history[-1].remote == key
    disk.save()
    saved = json.loads(path.read_text())
    assert saved["version"] == 1 and list(saved["associations"]) == [key]
    assert saved["associations"][key][0] == entry
    assert saved["associations"][key][1]["remote"] == key


# ---- tickets -----------------------------------------------------------------------------


def test_take_ticket_pops_the_newest_accepted_ticket_and_keeps_the_others() -> None:
    """take_ticket(stack, accept): the newest ticket accept() approves, once; a ticket made
    for another context is never handed out, and stays for a caller that can use it."""
    assoc = tp.Association("t.example:443")
    for value in ("ctx-a/1", "ctx-b/1", "ctx-a/2", "ctx-b/2"):
        assoc.add_ticket("tls", value)
    mine = (lambda v: v.startswith("ctx-a/"))  # noqa: E731
    assert assoc.take_ticket("tls", accept=mine) == "ctx-a/2"
    assert assoc.take_ticket("tls", accept=mine) == "ctx-a/1"
    assert assoc.take_ticket("tls", accept=mine) is None
    assert assoc.has_ticket("tls")  # ctx-b's are still there
    assert assoc.take_ticket("tls") == "ctx-b/2"  # no accept: the newest, as before
    assert assoc.take_ticket("tls", accept=lambda v: True) == "ctx-b/1"
    assert assoc.take_ticket("tls") is None and not assoc.has_ticket("tls")
    assert assoc.take_ticket("quic", accept=mine) is None
    assert "ctx" not in repr(assoc)


# ---- Path --------------------------------------------------------------------------------


def test_a_path_names_its_addresses_and_interface(run, tcp_policy, store) -> None:
    """A Path: the Transient's addresses, the decision's Interface (pvd, metered, cost, link
    MTU), equal and hashed by (interface, local, remote)."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                        store=store)
            try:
                transient = carrier.transients[0]
                lo = loopback()
                path = TapsPath(transient, lo)
                assert path.interface == lo.name
                assert path.local_address == carrier.local_address
                assert path.remote_address == (LO4, listener.port)
                assert (path.pvd, path.metered, path.cost) == (lo.pvd, lo.metered, lo.cost)
                stats = path.stats()
                assert isinstance(stats, PathStats)
                assert path.mtu == (stats.mtu if stats.mtu is not None else lo.mtu)
                assert path.mtu is not None
                same = TapsPath.of(transient)
                assert same == path and hash(same) == hash(path) and len({same, path}) == 1
                assert TapsPath(transient, None).metered is None
                shown = repr(path)
                assert f"{LO4}:{listener.port}" in shown and lo.name in shown
                data = path.to_dict()
                assert data["interface"] == lo.name
                assert data["remote_address"] == [LO4, listener.port]
                assert set(data) >= {"pvd", "metered", "cost", "mtu", "rtt_ms", "rttvar_ms",
                                     "loss", "rate_bps"}
                json.dumps(data)
            finally:
                await carrier.close()
            other = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                      store=store)
            try:
                assert TapsPath.of(other.transients[0]) != path
            finally:
                await other.close()

    run(main())


def test_path_dynamic_properties_are_measured_after_traffic(run, tcp_policy, store) -> None:
    """rtt_ms, rttvar_ms, loss and rate_bps come from TCP_INFO, read on every access: after
    traffic both ways they are known and the segment count has grown."""
    async def main() -> None:
        async with served(tcp_policy) as listener:
            carrier = await tp.initiate(f"{LO4}:{listener.port}", policy=tcp_policy,
                                        store=store)
            server = await next_carrier(listener)
            try:
                path = TapsPath.of(carrier.transients[0])
                before = path.stats()
                for i in range(20):
                    await carrier.send(b"x" * 1000)
                    assert bytes(await server.receive()) == b"x" * 1000
                    await server.send(b"ok %d" % i)
                    await carrier.receive()
                after = path.stats()
                assert after != before
                assert after.sent is not None and (before.sent or 0) < after.sent
                assert path.rtt_ms is not None and path.rtt_ms > 0
                assert path.rttvar_ms is not None and path.rttvar_ms >= 0
                assert path.loss is not None and 0.0 <= path.loss <= 1.0
                assert path.rate_bps is not None and path.rate_bps >= 0
            finally:
                server.abort()
                await carrier.close()

    run(main())


def test_a_quic_path_is_measured_from_the_recovery_state(run) -> None:
    """On QUIC the same Path properties come from aioquic's loss recovery: known after a
    few round trips, and the packet count grows with traffic."""
    cert = tp.certs.self_signed(["localhost", LO4])
    rule = {"id": "q", "set": {"stack.quic": "require"}}
    quic = tp.PolicyContext(system=[], app={"version": 1, "layer": "app", "rules": [rule]},
                            app_name="endpoints-quic")

    async def main() -> None:
        listener = await tp.listen(tp.Local(address=LO4, port=0, certificates=[cert]),
                                   policy=quic)
        try:
            remote = tp.Remote.parse(f"quic://{LO4}:{listener.port}", certificates=[cert])
            carrier = await tp.initiate(remote, policy=quic, store=tp.AssociationStore())
            await carrier.send(b"q")  # a QUIC server's carrier is born with the first stream
            server = await next_carrier(listener)
            try:
                assert bytes(await server.receive()) == b"q"
                assert carrier.stack == "quic"
                assoc = carrier.association
                assert assoc is not None
                [path] = assoc.paths
                assert path.remote_address == (LO4, listener.port)
                before = path.stats()
                for i in range(10):
                    await carrier.send(b"q%d" % i)
                    assert bytes(await server.receive()) == b"q%d" % i
                    await server.send(b"a%d" % i)
                    assert bytes(await carrier.receive()) == b"a%d" % i
                after = path.stats()
                assert after.sent is not None and (before.sent or 0) < after.sent
                assert path.rtt_ms is not None and path.rtt_ms > 0
                assert path.loss is not None and 0.0 <= path.loss <= 1.0
                assert path.mtu is not None
            finally:
                server.abort()
                await carrier.close()
        finally:
            await listener.close()

    run(main())


# ---- Remote: complete, lookup, resolve ---------------------------------------------------


def test_complete_means_one_address_and_a_port() -> None:
    assert tp.Remote.ip(LO4, 80).complete
    assert tp.Remote.parse(f"{LO4}:80").complete
    assert tp.Remote.parse("[::1]:80").complete
    assert not tp.Remote.parse("localhost:80").complete  # a name: not looked up yet
    assert not tp.Remote.parse("https://example.com").complete
    assert not tp.Remote("h.example", 80, addresses=("::1", LO4)).complete
    assert not tp.Remote.ip(LO4, 0).complete  # no port


def test_lookup_finds_every_address_of_a_name(run) -> None:
    async def main() -> None:
        remote = tp.Remote.parse("https://localhost")
        found = await remote.lookup()
        assert found.host == "localhost" and found.port == 443 and found.scheme == "https"
        assert found.addresses and LO4 in found.addresses
        assert found.is_resolved and await found.lookup() is found
        literal = tp.Remote.parse(f"{LO4}:9")
        assert await literal.lookup() is literal

    run(main())


def test_an_unresolvable_name_is_an_error_naming_it(run) -> None:
    async def main() -> None:
        for remote in (tp.Remote.parse(f"{BAD}:80"), tp.Remote.parse(f"https://{BAD}")):
            with pytest.raises(ResolutionError) as caught:
                await remote.lookup()
            assert caught.value.name == BAD and BAD in str(caught.value)
            assert isinstance(caught.value, tp.EstablishmentError)
            with pytest.raises(ResolutionError):
                await remote.resolve()
            assert not remote.is_resolved

    run(main())


def test_initiate_to_an_unresolvable_name_raises_resolution_error(run, tcp_policy,
                                                                  store) -> None:
    async def main() -> None:
        with pytest.raises(ResolutionError) as caught:
            carrier = await tp.initiate(f"{BAD}:80", policy=tcp_policy, store=store)
            await carrier.send(b"x")  # a dormant carrier resolves when it activates
        assert BAD in str(caught.value)

    run(main())


def test_resolve_returns_one_complete_remote_per_address(run) -> None:
    """The draft's Resolve(): the more specific Remotes; each keeps the name (TLS checks the
    peer against it), the scheme and the pins, and names one address."""
    cert = tp.certs.self_signed(["localhost"])

    async def main() -> None:
        named = tp.Remote.parse("https://localhost", certificates=[cert])
        found = await named.resolve()
        looked = await named.lookup()
        assert isinstance(found, list) and found
        assert [r.addresses for r in found] == [(a,) for a in looked.addresses or ()]
        for r in found:
            assert r.complete and (r.host, r.port, r.scheme) == ("localhost", 443, "https")
            assert tuple(r.certificates) == (cert,)
            assert await r.resolve() == [r]
        two = tp.Remote("dual.example", 7, addresses=("::1", LO4))
        assert [r.addresses for r in await two.resolve()] == [("::1",), (LO4,)]
        literal = tp.Remote.ip(LO4, 7)
        assert await literal.resolve() == [literal]

    run(main())


# ---- Local -------------------------------------------------------------------------------


def test_local_trusted_holds_certificates_shown_by_fingerprint() -> None:
    ca = tp.certs.self_signed(["client-ca"])
    pinned = tp.certs.Certificate(ca.cert_pem)  # a pin: the certificate without its key
    local = tp.Local(port=443, certificates=[ca], trusted=[ca, pinned])
    assert local.trusted == (ca, pinned) and local.certificates == (ca,)
    shown = repr(local)
    assert "BEGIN" not in shown and "PRIVATE" not in shown
    assert shown.count(ca.fingerprint) == 3
    assert hash(local) == hash(tp.Local(port=443, certificates=(ca,), trusted=(ca, pinned)))
    assert tp.Local().trusted == ()
    for bad in (["not a certificate"], ca.cert_pem):
        with pytest.raises(tp.ArgumentError):
            tp.Local(trusted=bad)  # type: ignore[arg-type]


def test_association_repr_names_no_certificate_text() -> None:
    cert = tp.certs.self_signed(["localhost"])
    store = tp.AssociationStore()
    assoc = store.get("localhost:443", remote=tp.Remote.parse("tls://localhost:443",
                                                              certificates=[cert]),
                      local=tp.Local(certificates=[cert], trusted=[cert]))
    assoc.add_ticket("tls", b"secret-ticket-bytes")
    for text in (repr(assoc), str(assoc), repr(store)):
        assert "BEGIN" not in text and "secret" not in text
    assert isinstance(assoc.remote, tp.Remote) and "BEGIN" not in repr(assoc.remote)


def test_a_sink_has_an_association_with_its_local_and_paths(run) -> None:
    """Draft Appendix A: Sink.Association(). A Sink has a Local and no Remote; its paths are
    the sockets it receives on, and they leave when it closes."""

    async def main() -> None:
        local = tp.Local(address="127.0.0.1", port=0)
        sink = await tp.new_sink(local)
        try:
            a = sink.association
            assert a.local == local and a.remote is None
            assert [p.local_address for p in a.paths] == [("127.0.0.1", sink.port)]
        finally:
            await sink.close()
        assert sink.association.paths == []

    run(main())


# ---- checked when made (issue 10: `a..b`, a 10 KB name, 256.256.256.256 passed) -----------


@pytest.mark.parametrize(("target", "message"), [
    ("https://a..b", "'a..b' has an empty label"),
    ("https://.example.com", "has an empty label"),
    ("https://" + "a" * 10_000 + ".com", "host name of 10004 characters is over 253"),
    ("https://" + "a" * 64 + ".com", "has a label of 64 characters"),
    ("https://256.256.256.256", "'256.256.256.256' is not a valid IPv4 address"),
    ("127.1:80", "'127.1' is not a valid IPv4 address"),
    ("tcp://0x7f000001:80", "'0x7f000001' is not a valid IPv4 address"),
    ("https://bücher.de", "is not ASCII; give an internationalised name in its IDNA A-label"),
    ("https://-a.example", "label '-a' may hold only letters"),
    ("https://a%0a.example", "label 'a%0a' may hold only letters"),
])
def test_remote_refuses_what_is_not_a_host_name(target: str, message: str) -> None:
    with pytest.raises(tp.ArgumentError) as caught:
        tp.Remote.parse(target)
    text = str(caught.value)
    assert message in text and len(text) < 200, text
    assert text.isprintable()


@pytest.mark.parametrize("target", [
    "https://example.com", "https://Example.COM.", "https://xn--bcher-kva.de",
    "https://a_b.example", "tcp://198.18.0.1:9", "[fd00::1]:443", "https://localhost",
    "https://" + ".".join(["a" * 63] * 3 + ["a" * 61]),  # 253 characters, labels of 63
    "https://123.example",  # a digit first is fine (RFC 1123); only the last label matters
])
def test_remote_takes_every_host_name(target: str) -> None:
    remote = tp.Remote.parse(target)
    assert tp.Remote(remote.host, remote.port) == tp.Remote(remote.host, remote.port)


def test_a_target_that_crashed_the_parser_is_an_input_error() -> None:
    """Found by the fuzz (issue 10): '¹' passes str.isdigit() but not int(); a plain
    ValueError escaped Remote.parse."""
    with pytest.raises(tp.InputError, match=re.escape("':¹'")):
        tp.Remote.parse(":¹")


def test_remote_and_local_refuse_bad_values_however_made() -> None:
    cases = [
        (lambda: tp.Remote("a..b", 443), "empty label"),
        (lambda: tp.Remote("example.com", 70000), "Remote port 70000 is out of range"),
        (lambda: tp.Remote("example.com", "443"), "port must be an int, not str"),  # type: ignore[arg-type]
        (lambda: tp.Remote("example.com", 443, addresses=("nope",)), "'nope' is not an IP"),
        (lambda: tp.Remote("example.com", 443, addresses="198.18.0.1"),  # type: ignore[arg-type]
         "must be a sequence of IP addresses, not a string"),
        (lambda: tp.Remote.ip("999.1.1.1", 1), "'999.1.1.1' is not an IP address"),
        (lambda: tp.Local(interface="eth0\n"), "interface name 'eth0\\n' holds '\\n'"),
        (lambda: tp.Local(interface="x" * 16), "is 16 bytes; Linux allows at most 15"),
        (lambda: tp.Local(address="nope"), "Local.address: 'nope' is not an IP address"),
        (lambda: tp.Local(port=-1), "Local port -1 is out of range"),
    ]
    for make, message in cases:
        with pytest.raises(tp.ArgumentError, match=re.escape(message)):
            make()
    ok = tp.Remote("example.com", 443, addresses=["198.18.0.1"])  # type: ignore[arg-type]
    assert ok.addresses == ("198.18.0.1",)  # a list is kept as a tuple: hashable, frozen
    hash(ok)


def test_history_smooths_rtt_so_one_slow_sample_keeps_the_entry_and_the_plan() -> None:
    # association Rule 9: RFC 6298's SRTT step. One 2.8 ms handshake after 0.5 ms ones is
    # the loaded machine, not the path: the entry (and so every cached plan) stays.
    assoc = tp.AssociationStore().get("smooth.example:443")
    assoc.record("tcp", "success", rtt_ms=0.5, interface="eth0", address="192.0.2.1")
    first = assoc.history[-1]
    assoc.record("tcp", "success", rtt_ms=2.8, interface="eth0", address="192.0.2.1")
    assert assoc.history[-1] is first
    # A path that really became slower moves the stored value, an eighth at a time.
    for _ in range(12):
        assoc.record("tcp", "success", rtt_ms=20.0, interface="eth0", address="192.0.2.1")
    moved = assoc.history[-1].rtt_ms
    assert moved is not None and 10.0 < moved < 20.0
    assert len(assoc.history) == 1
    # A new outcome is recorded as it is, at once.
    assoc.record("tcp", "failure", interface="eth0", address="192.0.2.1")
    assert [(e.outcome, e.rtt_ms) for e in assoc.history] == [("failure", None)]
