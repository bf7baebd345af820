"""The rendezvous point (issue 13 item 4) and its client, on loopback with real TLS.

What is checked: two RendezvousClients exchange offers both ways through a RendezvousPoint
(a long-poll wait is woken by the put; a wait and a put share one carrier); peers that are
not authenticated are refused before anything is relayed (no client certificate, from
taps_post and from `openssl s_client`; an untrusted certificate; a certificate naming no
identity; a Unicode name that lower-cases onto another's); no request can make the point
stamp another sender; and the bounds hold: a queue per recipient and sender dropping only
that sender's oldest, so no sender evicts another's offer or takes all of a recipient's
sender slots or the point's identities (per-sender quotas of recipients and bytes), newest
offer only, TTL, request and offer size, wait timeout, waits and connections per client
certificate, identities held, and an offer given back staying within them.
MemorySignalling, the in-process hub, keeps the same contract. Clients are CA-signed
(`ca_issue`) or pinned self-signed certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import taps_post as tp
from taps_post.certs import Certificate
from taps_post.core.framing import LengthPrefixFramer
from taps_post.runtime.rendezvous_client import RendezvousClient
from taps_post.runtime.rendezvous_point import RendezvousPoint, certificate_identities
from taps_post.runtime.signalling import (
    MAX_OFFER_BYTES,
    MAX_REQUEST,
    MemorySignalling,
    OfferTooLargeError,
    RendezvousError,
    Signalling,
)

LO4 = "127.0.0.1"
POINT_CERT = tp.certs.self_signed(["localhost", LO4])


def ca_pair(name: str = "Rendezvous Test CA") -> tuple[Any, Any, Certificate]:
    """A CA: (key, x509 certificate, its Certificate without key, for Local.trusted)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return key, cert, Certificate(pem)


CA_KEY, CA_X509, CA = ca_pair()


def ca_issue(cn: str, *dns: str, ips: tuple[str, ...] = ()) -> Certificate:
    """A client certificate signed by CA: subject CN `cn`, DNS SANs `dns`, IP SANs `ips`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(CA_X509.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    alt: list[Any] = [x509.DNSName(n) for n in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(CA_KEY, hashes.SHA256())
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode("ascii"))


ALICE = ca_issue("alice", "alice", "Alice-Laptop")
BOB = ca_issue("bob")
CAROL = tp.certs.self_signed(["carol"])
"""A pinned client: her own self-signed certificate is in the point's trusted list."""


def policy() -> tp.PolicyContext:
    return tp.PolicyContext(system=[], app_name="rendezvous-test")


def remote(point: RendezvousPoint) -> tp.Remote:
    return tp.Remote.parse(f"tls://{LO4}:{point.port}", certificates=[POINT_CERT])


def client(point: RendezvousPoint, cert: Certificate) -> RendezvousClient:
    return RendezvousClient(remote(point), tp.Local(certificates=[cert]), policy(),
                            initiate=tp.initiate, store=tp.AssociationStore())


@contextlib.asynccontextmanager
async def serving(**kw: Any) -> AsyncIterator[RendezvousPoint]:
    trusted = [CA, Certificate(CAROL.cert_pem)]
    point = await RendezvousPoint.start(
        tp.Local(address=LO4, port=0, certificates=[POINT_CERT], trusted=trusted),
        system=[], **kw)
    try:
        yield point
    finally:
        await point.close()


@contextlib.asynccontextmanager
async def clients(point: RendezvousPoint, *certs: Certificate
                  ) -> AsyncIterator[list[RendezvousClient]]:
    made = [client(point, c) for c in certs]
    try:
        yield made
    finally:
        for c in made:
            await c.aclose()


def offer(n: int = 0, **extra: Any) -> dict[str, Any]:
    """Opaque to signalling: something shaped like an ICE offer."""
    return {"session": f"{n:032x}", "ufrag": "abcd", "pwd": "p" * 22, "n": n, **extra}


async def raw(point: RendezvousPoint, cert: Certificate | None,
              max_size: int = MAX_REQUEST) -> tp.Carrier:
    """A taps_post TLS carrier to the point speaking its wire by hand."""
    local = tp.Local(certificates=[cert]) if cert is not None else None
    return await tp.initiate(remote(point), local=local, policy=policy(),
                             framer=LengthPrefixFramer(max_size), store=tp.AssociationStore())


async def ask(carrier: tp.Carrier, request: dict[str, Any] | bytes) -> dict[str, Any]:
    data = request if isinstance(request, bytes) else json.dumps(request).encode()
    await carrier.send(data)
    reply: dict[str, Any] = json.loads(bytes(await carrier.receive()))
    return reply


# ---- relaying ---------------------------------------------------------------------------


def test_two_clients_exchange_offers_both_ways(run) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, ALICE, BOB) as (alice, bob):
            assert isinstance(alice, Signalling)
            # bob waits first: the long poll is woken by alice's put, not by polling
            waiting = asyncio.ensure_future(bob.receive("bob", "alice", 5))
            await asyncio.sleep(0)
            await alice.send("alice", "bob", offer(1))
            assert await waiting == offer(1)
            # the other way: put first, then the wait finds it queued
            await bob.send("bob", "alice", offer(2))
            assert await alice.receive("alice", "bob", 5) == offer(2)
            assert point.stats.delivered == 2 and point.stats.put == 2
            # alice's certificate names her as its CN and two DNS SANs, in lower case
            assert await alice.whoami() == ("alice", "alice-laptop")
            await alice.send("Alice-Laptop", "bob", offer(3))
            with pytest.raises(TimeoutError):
                await bob.receive("bob", "alice", 0.05)  # from "alice-laptop", not "alice"
            assert await bob.receive("bob", "alice-laptop", 1) == offer(3)

    run(main())


def test_a_wait_and_a_put_share_one_carrier(run) -> None:
    accepted: list[str] = []

    def trace(name: str, info: dict[str, Any]) -> None:
        if name == "listener.accepted":
            accepted.append(name)

    async def main() -> None:
        async with serving(trace=trace) as point, clients(point, ALICE, BOB) as (alice, bob):
            waiting = asyncio.ensure_future(alice.receive("alice", "bob", 5))
            await asyncio.sleep(0.05)
            await alice.send("alice", "bob", offer(1))  # while alice's wait is held
            assert await bob.receive("bob", "alice", 5) == offer(1)
            await bob.send("bob", "alice", offer(2))
            assert await waiting == offer(2)
            assert len(accepted) == 2  # one carrier per client, whatever it asked

    run(main())


def test_memory_signalling_keeps_the_same_contract(run) -> None:
    async def main() -> None:
        hub = MemorySignalling(queue=2)
        assert isinstance(hub, Signalling)
        sent = offer(1, nested={"a": [1, 2]})
        waiting = asyncio.ensure_future(hub.receive("bob", "alice", 1))
        await asyncio.sleep(0)
        await hub.send("alice", "bob", sent)
        got = await waiting
        assert got == sent and got is not sent  # a copy, as over the wire
        sent["nested"]["a"].append(3)
        assert got["nested"]["a"] == [1, 2]
        for n in (2, 3, 4):
            await hub.send("alice", "bob", offer(n))
        assert (await hub.receive("bob", "alice", 1))["n"] == 4  # the newest only
        with pytest.raises(TimeoutError):
            await hub.receive("bob", "alice", 0.05)
        assert hub.mailboxes.stats.dropped == 1  # queue 2: n=2 went to make room
        with pytest.raises(tp.ArgumentError):
            await hub.send("alice", "bob", {"x": object()})
        with pytest.raises(OfferTooLargeError):
            await hub.send("alice", "bob", {"x": "a" * MAX_OFFER_BYTES})
        await hub.aclose()

    run(main())


# ---- who may use it ---------------------------------------------------------------------


def test_certificate_identities() -> None:
    import ssl

    def der(cert: Certificate) -> bytes:
        return ssl.PEM_cert_to_DER_cert(cert.cert_pem)

    assert certificate_identities(der(ALICE)) == ("alice", "alice-laptop")
    assert certificate_identities(der(CAROL)) == ("carol",)
    odd = ca_issue("198.18.0.9", "*.example", "Dave.Example", ips=("198.18.0.9",))
    assert certificate_identities(der(odd)) == ("dave.example",)  # no IP, no wildcard
    assert certificate_identities(der(ca_issue("198.18.0.10"))) == ()
    assert certificate_identities(b"not a certificate") == ()
    # the Kelvin sign lower-cases to "k": "\u212aarl" must not become karl's identity
    assert certificate_identities(der(ca_issue("\u212aarl", "karl2"))) == \
        ("karl2",)
    assert certificate_identities(der(ca_issue("\u212aarl"))) == ()


def test_a_unicode_name_folding_onto_another_gets_no_identity(run) -> None:
    kelvin = ca_issue("\u212aarl")
    karl = ca_issue("karl")

    async def main() -> None:
        async with serving() as point, clients(point, kelvin, karl, BOB) as (fake, k, bob):
            with pytest.raises(RendezvousError) as err:
                await fake.whoami()
            assert err.value.code == "no-identity"
            carrier = await raw(point, kelvin)
            try:
                reply = await ask(carrier, {"op": "put", "to": "bob", "offer": offer()})
                assert reply["error"] == "no-identity"
            finally:
                await carrier.close()
            carrier = await raw(point, BOB)
            try:  # nor does a request's name fold: "\u212aarl" is not karl
                for req in ({"op": "put", "to": "\u212aarl", "offer": offer()},
                            {"op": "wait", "from": "\u212aarl", "timeout": 0},
                            {"op": "put", "to": "karl", "as": "\u212aob", "offer": offer()}):
                    reply = await ask(carrier, req)
                    assert reply["error"] in ("bad-request", "not-your-identity"), reply
            finally:
                await carrier.close()
            assert point.stats.put == 0
            await bob.send("bob", "karl", offer(1))
            assert await k.receive("karl", "bob", 1) == offer(1)
        with pytest.raises(tp.ArgumentError):
            await MemorySignalling().send("\u212aarl", "bob", offer())

    run(main())


def test_without_a_client_certificate_nothing_is_relayed(run) -> None:
    async def main() -> None:
        async with serving() as point:
            with pytest.raises(tp.ArgumentError, match="client certificate"):
                RendezvousClient(remote(point), tp.Local(), policy(), initiate=tp.initiate)
            # TLS 1.3: our handshake ends before the point judged us; its refusal is an
            # alert, so the first request finds the connection closed
            with pytest.raises((tp.ConnectionClosedError, tp.EstablishmentError)):
                carrier = await raw(point, None)
                try:
                    await ask(carrier, {"op": "put", "to": "bob", "offer": offer()})
                finally:
                    await carrier.close()
            assert point.requests == 0 and point.stats.put == 0

    run(main())


def test_an_untrusted_certificate_is_refused(run) -> None:
    mallory = tp.certs.self_signed(["alice"])  # names alice, but nobody vouches for it

    async def main() -> None:
        async with serving() as point, clients(point, mallory, BOB) as (fake, bob):
            with pytest.raises((RendezvousError, tp.EstablishmentError)):
                await fake.send("alice", "bob", offer(666))
            with pytest.raises(TimeoutError):
                await bob.receive("bob", "alice", 0.05)
            assert point.stats.put == 0 and point.requests == 1  # bob's wait alone

    run(main())


def test_no_request_can_name_another_sender(run) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, ALICE, BOB) as (alice, bob):
            with pytest.raises(RendezvousError) as err:
                await alice.send("bob", "carol", offer())
            assert err.value.code == "not-your-identity"
            with pytest.raises(RendezvousError) as err:
                await alice.receive("bob", "carol", 1)  # reading bob's mail
            assert err.value.code == "not-your-identity"
            carrier = await raw(point, ALICE)
            try:
                reply = await ask(carrier, {"id": 7, "op": "put", "to": "bob", "from": "carol",
                                            "offer": offer()})
                assert reply["id"] == 7 and reply["error"] == "bad-request"
                reply = await ask(carrier, {"id": 8, "op": "put", "to": "bob",
                                            "as": "carol", "offer": offer()})
                assert reply["error"] == "not-your-identity"
                # an offer saying it is from carol is still relayed as alice's, untouched
                inner = offer(5, **{"from": "carol", "identity": "carol"})
                assert (await ask(carrier, {"id": 9, "op": "put", "to": "bob",
                                            "offer": inner})) == {"id": 9, "ok": True}
            finally:
                await carrier.close()
            with pytest.raises(TimeoutError):
                await bob.receive("bob", "carol", 0.05)
            assert await bob.receive("bob", "alice", 1) == inner
            assert point.stats.put == 1

    run(main())


def test_a_certificate_naming_no_identity_is_refused(run) -> None:
    nobody = ca_issue("198.18.0.10", ips=("198.18.0.10",))

    async def main() -> None:
        async with serving() as point, clients(point, nobody) as (c,):
            with pytest.raises(RendezvousError) as err:
                await c.send("nobody", "bob", offer())
            assert err.value.code in ("no-identity", "not-your-identity")
            with pytest.raises(RendezvousError) as err:
                await c.whoami()
            assert err.value.code == "no-identity"
            assert point.stats.put == 0 and point.refused >= 1

    run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_without_a_certificate_is_refused(run) -> None:
    frame = json.dumps({"op": "whoami"}).encode()

    async def main() -> None:
        async with serving() as point:
            with tempfile.TemporaryDirectory() as tmp:
                ca = Path(tmp) / "point.pem"
                ca.write_text(POINT_CERT.cert_pem)
                proc = await asyncio.create_subprocess_exec(
                    "openssl", "s_client", "-connect", f"{LO4}:{point.port}", "-CAfile",
                    str(ca), "-verify_return_error", "-ign_eof", "-quiet",
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out, _ = await asyncio.wait_for(
                    proc.communicate(len(frame).to_bytes(4, "big") + frame), 10)
            text = out.decode(errors="replace")
            # refused in the handshake: the alert, or the connection cut without one (reset
            # before the alert was read: `read:errno=104`)
            assert proc.returncode != 0 and any(w in text for w in ("alert", "error", "errno")), \
                text
            assert "identities" not in text and '"ok"' not in text
            assert point.requests == 0

    run(main(), timeout=30)


# ---- bounds -----------------------------------------------------------------------------


def test_a_full_queue_drops_only_its_own_senders_oldest(run) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, ALICE, BOB) as (alice, bob):
            for n in range(9):  # 9 puts from alice to bob: her queue holds 8
                await alice.send("alice", "bob", offer(n))
            assert point.stats.dropped == 1
            assert (await bob.receive("bob", "alice", 1))["n"] == 8
            assert point.stats.superseded == 7 and point.mailboxes.held_bytes == 0

    run(main())


def test_another_sender_cannot_evict_an_offer(run) -> None:
    """The review's repro: alice's offer to bob, then mallory's 8 (and more) to bob; and
    mallory's other names cannot take all of bob's sender slots from alice either."""
    mallory = ca_issue("mallory", *(f"m{i}" for i in range(3)))

    async def main() -> None:
        async with serving(senders_per_recipient=3) as point, \
                clients(point, ALICE, BOB, CAROL) as (alice, bob, carol):
            await alice.send("alice", "bob", offer(1))
            carrier = await raw(point, mallory)
            try:
                for n in range(20):
                    assert (await ask(carrier, {"op": "put", "to": "bob",
                                                "offer": offer(n)}))["ok"]
                # bob holds queues from 3 senders at most: a new one is refused, nobody's
                # offer is dropped to make room for it
                assert (await ask(carrier, {"op": "put", "to": "bob", "as": "m0",
                                            "offer": offer()}))["ok"]
                reply = await ask(carrier, {"op": "put", "to": "bob", "as": "m1",
                                            "offer": offer()})
                assert reply["error"] == "full" and "senders" in reply["detail"]
            finally:
                await carrier.close()
            with pytest.raises(RendezvousError) as err:
                await carol.send("carol", "bob", offer())
            assert err.value.code == "full"
            assert point.stats.dropped == 12  # mallory's own: 20 into a queue of 8
            assert await bob.receive("bob", "alice", 1) == offer(1)
            assert (await bob.receive("bob", "mallory", 1))["n"] == 19
            await carol.send("carol", "bob", offer(3))  # alice's slot is free again
            assert await bob.receive("bob", "carol", 1) == offer(3)

    run(main())


def test_one_sender_cannot_fill_the_point(run) -> None:
    """The review's repro: mallory puts to many names; she is held to 64 recipients, so the
    4096 identities (or any smaller global bound) stay for everyone else."""
    mallory = ca_issue("mallory")

    async def main() -> None:
        async with serving(max_identities=100) as point, \
                clients(point, ALICE, BOB) as (alice, bob):
            carrier = await raw(point, mallory)
            try:
                for n in range(64):
                    assert (await ask(carrier, {"op": "put", "to": f"victim{n}",
                                                "offer": offer(n)}))["ok"]
                reply = await ask(carrier, {"op": "put", "to": "victim64",
                                            "offer": offer()})
                assert reply["error"] == "full" and "recipients" in reply["detail"]
                # more to a recipient she has a queue at is still within her quota
                assert (await ask(carrier, {"op": "put", "to": "victim0",
                                            "offer": offer()}))["ok"]
            finally:
                await carrier.close()
            assert point.mailboxes.identities == 64
            assert point.mailboxes.usage("mallory")[0] == 64
            await alice.send("alice", "bob", offer(1))
            assert await bob.receive("bob", "alice", 1) == offer(1)

    run(main())


def test_bytes_are_bounded_per_sender_and_in_all() -> None:
    from taps_post.runtime.signalling import Mailboxes, MailboxFull

    text = json.dumps(offer(0, pad="x" * 900))  # ~1 kB
    boxes = Mailboxes(bytes_per_sender=3 * len(text), max_bytes=5 * len(text))
    for n in range(3):
        boxes.put("mallory", f"r{n}", text)
    with pytest.raises(MailboxFull) as err:
        boxes.put("mallory", "r3", text)
    assert err.value.bound == "sender-bytes"
    assert boxes.usage("mallory") == (3, 3 * len(text))
    boxes.put("alice", "bob", text)
    boxes.put("carol", "bob", text)
    with pytest.raises(MailboxFull) as err:
        boxes.put("dave", "bob", text)
    assert err.value.bound == "bytes"
    assert boxes.held_bytes == 5 * len(text) and boxes.stats.dropped == 0
    assert boxes.stats.refused == 2


def test_only_the_newest_offer_from_a_peer_is_delivered(run) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, ALICE, BOB) as (alice, bob):
            for n in (1, 2, 3):
                await alice.send("alice", "bob", offer(n))
            assert (await bob.receive("bob", "alice", 1))["n"] == 3
            with pytest.raises(TimeoutError):  # 1 and 2 are never returned (Rule 3)
                await bob.receive("bob", "alice", 0.05)
            assert point.stats.superseded == 2

    run(main())


def test_offers_older_than_the_ttl_are_never_delivered(run) -> None:
    async def main() -> None:
        async with serving(ttl=0.2) as point, clients(point, ALICE, BOB) as (alice, bob):
            await alice.send("alice", "bob", offer(1))
            await asyncio.sleep(0.3)  # the behaviour under test: the offer's lifetime ends
            with pytest.raises(TimeoutError):
                await bob.receive("bob", "alice", 0.05)
            assert point.stats.expired == 1 and point.stats.delivered == 0

    run(main())


def test_oversize_requests_and_offers_are_refused(run) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, ALICE) as (alice,):
            with pytest.raises(OfferTooLargeError):  # refused before it is sent
                await alice.send("alice", "bob", {"x": "a" * MAX_OFFER_BYTES})
            carrier = await raw(point, ALICE, max_size=1 << 20)
            try:
                # within a frame, but the offer itself is over MAX_OFFER_BYTES
                reply = await ask(carrier, {"op": "put", "to": "bob",
                                            "offer": {"x": "a" * (MAX_OFFER_BYTES + 8)}})
                assert reply["error"] == "too-large"
                # a frame over MAX_REQUEST is not even read: the connection ends
                await carrier.send(b"{" + b" " * (MAX_REQUEST + 1) + b"}")
                with pytest.raises(tp.ConnectionClosedError):
                    await carrier.receive()
            finally:
                await carrier.close()
            assert point.stats.put == 0

    run(main())


def test_a_wait_times_out(run) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, BOB) as (bob,):
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="alice"):
                await bob.receive("bob", "alice", 0.2)
            assert 0.15 < time.monotonic() - started < 3
            assert point.waiting == 0

    run(main())


def test_waits_per_client_and_identities_are_bounded(run) -> None:
    async def main() -> None:
        async with serving(max_waits=2, max_identities=2) as point, \
                clients(point, ALICE) as (alice,):
            held = [asyncio.ensure_future(alice.receive("alice", p, 5)) for p in ("x", "y")]
            while point.waiting < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(RendezvousError) as err:
                await alice.receive("alice", "z", 5)
            assert err.value.code == "too-many-waits"
            for task in held:
                task.cancel()
            await alice.send("alice", "p1", offer())
            await alice.send("alice", "p2", offer())
            with pytest.raises(RendezvousError) as err:
                await alice.send("alice", "p3", offer())
            assert err.value.code == "full"
            await alice.send("alice", "p2", offer(2))  # p2 has a queue already: room

    run(main())


def test_a_wait_whose_connection_ended_does_not_lose_the_offer(run, until) -> None:
    async def main() -> None:
        async with serving() as point, clients(point, ALICE) as (alice,):
            bob = client(point, BOB)
            waiting = asyncio.ensure_future(bob.receive("bob", "alice", 5))
            await until(lambda: point.waiting == 1)
            waiting.cancel()
            await bob.aclose()
            await until(lambda: point.waiting == 0)
            await alice.send("alice", "bob", offer(1))
            async with clients(point, BOB) as (again,):
                assert await again.receive("bob", "alice", 1) == offer(1)

    run(main())


def test_connections_per_certificate_are_bounded(run, until) -> None:
    async def main() -> None:
        async with serving(max_connections=2) as point:
            held = [await raw(point, ALICE) for _ in range(2)]
            try:
                for carrier in held:
                    assert (await ask(carrier, {"id": 1, "op": "whoami"}))["ok"]
                assert point.connections == 2
                extra = await raw(point, ALICE)
                try:
                    reply = await ask(extra, {"id": 4, "op": "whoami"})
                    assert reply["id"] == 4 and reply["error"] == "too-many-connections"
                    await until(lambda: not extra.is_active)  # then the point closed it
                finally:
                    await extra.close()
                assert point.turned_away == 1 and point.connections == 2
                async with clients(point, BOB) as (bob,):  # another certificate: its own
                    assert await bob.whoami() == ("bob",)
                await held.pop().close()
                await until(lambda: point.connections == 1)
                again = await raw(point, ALICE)
                held.append(again)
                assert (await ask(again, {"op": "whoami"}))["ok"]
            finally:
                for carrier in held:
                    await carrier.close()
            await until(lambda: point.connections == 0)

    run(main())


def test_a_given_back_offer_stays_within_the_bounds(run) -> None:
    from taps_post.runtime.signalling import Mailboxes

    async def main() -> None:
        boxes = Mailboxes(max_identities=1, senders_per_recipient=1)
        boxes.put("alice", "bob", "{}")
        letter, _ = await boxes.take("bob", "alice", 0)
        boxes.put("carol", "dave", "{}")  # the one identity slot is taken meanwhile
        assert not boxes.restore("bob", letter)
        assert boxes.stats.dropped == 1 and boxes.identities == 1
        boxes = Mailboxes(senders_per_recipient=1)
        boxes.put("alice", "bob", '{"n":1}')
        letter, _ = await boxes.take("bob", "alice", 0)
        boxes.put("carol", "bob", "{}")  # bob's one sender slot is carol's now
        assert not boxes.restore("bob", letter) and boxes.stats.dropped == 1
        assert boxes.usage("alice") == (0, 0)
        letter, _ = await boxes.take("bob", "carol", 0)
        assert boxes.restore("bob", letter)  # room: kept, still the newest
        assert boxes.usage("carol") == (1, 2)
        boxes.put("carol", "bob", '{"n":2}')
        newer, _ = await boxes.take("bob", "carol", 0)
        assert newer.text == '{"n":2}'
        boxes.put("carol", "bob", '{"n":3}')
        assert not boxes.restore("bob", newer)  # a newer one came: superseded, not kept
        assert (await boxes.take("bob", "carol", 0))[0].text == '{"n":3}'

    run(main())


def test_the_point_refuses_to_open_without_client_authentication(run) -> None:
    async def main() -> None:
        with pytest.raises(tp.ArgumentError, match="trust"):
            await RendezvousPoint.start(tp.Local(address=LO4, port=0,
                                                 certificates=[POINT_CERT]), system=[])
        with pytest.raises(tp.ArgumentError, match="private key"):
            await RendezvousPoint.start(tp.Local(address=LO4, port=0, trusted=[CA]),
                                        system=[])

    run(main())
