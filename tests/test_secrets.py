"""Secrets stay secret: a whole demo-like run, in-process, leaves no key or ticket in any text.

The run: a TLS (and QUIC) Responder with a self-signed certificate and its key, clients that
pin it over TLS, QUIC and a bare `host:port`, a second connection of each that resumes (so
the Associations hold TLS sessions and QUIC session tickets), a PolicyError and an
EstablishmentError provoked on purpose, explain JSON, every `taps_post` logger at DEBUG and a
trace callback on every call. Then every text the run can show is scanned: repr() and str()
of every object reachable from what the application holds (carriers, their explanations,
attempts and associations, the store, Local, Remote, certificates, tickets, listeners),
every exception with its causes, the Decisions' JSON, every log record's message, arguments,
`taps` extra and traceback, every trace event's info, and the store's file on disk.

Nothing may contain a PEM header, the words PRIVATE KEY, a line of the key's base64 body, or
the bytes of any ticket (hex, escaped or base64). A Certificate's own `key_pem` field is the
key itself, so the walk reads a Certificate through its repr only; likewise a held ticket.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import taps_post as tp

LO4 = "127.0.0.1"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _is_opaque(obj: Any) -> bool:
    """Objects read through their repr only: a Certificate (its fields are the PEM and the
    key), a held ticket, and a raw ticket (its fields are the ticket bytes)."""
    name = type(obj).__name__
    return isinstance(obj, tp.certs.Certificate) or name in ("Ticket", "SSLSession",
                                                             "SessionTicket")


def texts(root: Any, depth: int = 4) -> Iterator[tuple[str, str]]:
    """(path, text) for repr() and str() of `root` and of everything reachable from it
    through public attributes, dataclass fields, mapping items and sequence items."""
    seen: set[int] = set()

    def walk(obj: Any, path: str, left: int) -> Iterator[tuple[str, str]]:
        if id(obj) in seen or obj is None or isinstance(obj, (bool, int, float)):
            return
        seen.add(id(obj))
        for how, show in (("repr", repr), ("str", str)):
            try:
                yield f"{how}({path})", show(obj)
            except Exception as exc:  # a repr that fails is a finding of its own kind
                yield f"{how}({path}) raised", f"{type(exc).__name__}: {exc}"
        if left == 0 or _is_opaque(obj) or isinstance(obj, (str, bytes, bytearray)):
            return
        if isinstance(obj, BaseException):
            yield f"traceback({path})", "".join(traceback.format_exception(obj))
            for i, arg in enumerate(obj.args):
                yield from walk(arg, f"{path}.args[{i}]", left - 1)
            for attr in ("__cause__", "__context__"):
                yield from walk(getattr(obj, attr), f"{path}.{attr}", left - 1)
        children: list[tuple[str, Any]] = []
        if isinstance(obj, dict):
            children = [(f"[{k!r}]", v) for k, v in obj.items()]
            children += [(f".key({k!r})", k) for k in obj]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = [(f"[{i}]", v) for i, v in enumerate(obj)]
        else:
            if dataclasses.is_dataclass(obj):
                names = [f.name for f in dataclasses.fields(obj)]
            else:
                names = list(getattr(obj, "__dict__", {}))
                for cls in type(obj).__mro__:
                    slots = cls.__dict__.get("__slots__", ())
                    names += [slots] if isinstance(slots, str) else list(slots)
            for name in dict.fromkeys(names):
                if name.startswith("_"):
                    continue
                try:
                    children.append((f".{name}", getattr(obj, name)))
                except AttributeError:
                    continue
        for step, child in children:
            yield from walk(child, path + step, left - 1)

    yield from walk(root, "", depth)


def carrier_view(carrier: tp.Carrier) -> dict[str, Any]:
    """What an application can reach from a carrier through its public properties."""
    return {"carrier": carrier, "explanation": carrier.explanation,
            "association": carrier.association, "candidate": carrier.candidate,
            "attempts": carrier.attempts, "transients": carrier.transients,
            "stack": carrier.stack, "local": carrier.local_address,
            "remote": carrier.remote_address}


def ticket_forms(data: bytes) -> list[str]:
    """The ways ticket bytes could appear in a text: hex, Python's escaped bytes, base64
    (a prefix of each, so a truncated rendering is caught too)."""
    head = data[:24]
    return [head.hex(), head.hex().upper(), repr(head)[2:-1][:40],
            base64.b64encode(head).decode()[:24]]


async def _wait(condition: Any, what: str, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0)


def _peek_tickets(assoc: tp.Association, stack: str) -> list[Any]:
    """The raw tickets an Association holds, without taking them (a held ticket is wrapped
    in a Ticket; before issue 8 the raw object was stored)."""
    return [getattr(t, "value", t) for t in assoc.tickets.get(stack, [])]


def _ticket_bytes(ticket: Any) -> list[bytes]:
    found = []
    for attr in ("id", "ticket", "resumption_secret"):
        value = getattr(ticket, attr, None)
        if isinstance(value, bytes) and len(value) >= 8:
            found.append(value)
    return found


async def demo_run(tmp: Path) -> tuple[list[Any], list[bytes],
                                       list[tuple[str, dict[str, Any]]], str,
                                       list[BaseException]]:
    """The run; returns what the scan reads."""
    cert = tp.certs.self_signed(["localhost", LO4])
    other = tp.certs.self_signed(["localhost", LO4])
    events: list[tuple[str, dict[str, Any]]] = []

    def trace(name: str, info: dict[str, Any]) -> None:
        events.append((name, dict(info)))

    roots: list[Any] = [cert, other]
    tickets: list[bytes] = []
    server_policy = tp.PolicyContext(system=[], app_name="secrets-server")
    policy = tp.PolicyContext(system=[], app_name="secrets-client")

    async def handler(msg: tp.InMessage, reply: tp.Reply) -> None:
        await reply.send(b"ack " + bytes(msg))

    local = tp.Local(address=LO4, port=0, certificates=[cert])
    responder = await tp.respond(local, handler, policy=server_policy, trace=trace)
    roots += [local, responder, responder.ports]
    try:
        assert "tls" in responder.ports and "quic" in responder.ports, responder.ports
        store = tp.AssociationStore(tmp / "assoc.json")
        roots.append(store)
        targets = [("tls", tp.Remote.parse(f"tls://{LO4}:{responder.ports['tls']}",
                                           certificates=[cert])),
                   ("quic", tp.Remote.parse(f"quic://{LO4}:{responder.ports['quic']}",
                                            certificates=[cert]))]
        for stack, remote in targets:
            roots.append(remote)
            for attempt in (1, 2):
                first = tp.OutMessage(b"GET /status", idempotent=True)
                carrier = await tp.initiate(remote, policy=policy, store=store, send=first,
                                            trace=trace)
                assert bytes(await carrier.receive()) == b"ack GET /status"
                assoc = carrier.association
                assert assoc is not None
                await _wait(lambda a=assoc, s=stack: a.has_ticket(s),  # type: ignore[misc]
                            f"a {stack} ticket")
                for raw in _peek_tickets(assoc, stack):
                    tickets += _ticket_bytes(raw)
                if attempt == 2:
                    assert carrier.transients[0].session_reused, f"{stack} resumed"
                open_view = list(texts(carrier_view(carrier)))  # while open, then closed
                roots.append([text for _path, text in open_view])
                await carrier.close()
                roots.append(carrier_view(carrier))
        # A bare host:port with the pin: the no-downgrade path.
        hostport = tp.Remote.parse(f"{LO4}:{responder.ports['tls']}", certificates=[cert])
        carrier = await tp.initiate(hostport, policy=policy, store=store, trace=trace,
                                    local=tp.Local(certificates=[cert]))
        roots += [hostport, carrier_view(carrier)]
        await carrier.close()
        # A PolicyError naming the Local (it holds our key), and one from a conflict (a pin
        # with a policy that allows only plain TCP), then an EstablishmentError: the wrong
        # pin (its own store: this is about the pin, not a ticket made under another pin).
        errors: list[BaseException] = []
        wrong = tp.Remote.parse(f"tls://{LO4}:{responder.ports['tls']}", certificates=[other])
        plain_only = tp.PolicyContext(system=[], app_name="plain", app={
            "version": 1, "layer": "app",
            "rules": [{"id": "x", "set": {"stack": {"tcp": "require"}}}]})
        for target, kwargs in (
                (hostport, {"local": tp.Local(interface="no-such-if0", certificates=[cert])}),
                (hostport, {"policy": plain_only}),
                (wrong, {"store": tp.AssociationStore(), "local": tp.Local(certificates=[cert])})):
            try:
                carrier = await tp.initiate(target, **{"policy": policy, "store": store,
                                                       "trace": trace, **kwargs})
            except tp.TapsError as exc:
                errors.append(exc)
            else:
                await carrier.close()
        roots += [*errors, wrong]
        decisions = [e.decision for e in errors if getattr(e, "decision", None) is not None]
        decisions += [tp.explain(f"tls://{LO4}:{responder.ports['tls']}", policy=policy)]
        roots += [json.dumps(d.to_dict()) for d in decisions] + decisions
        roots += [store.get(r.hostport) for _s, r in targets]
        store.save()
        on_disk = (tmp / "assoc.json").read_text()
    finally:
        await responder.close()
    return roots, tickets, events, on_disk, errors


def test_no_key_or_ticket_in_any_text_of_a_full_run(tmp_path: Path) -> None:
    logger = logging.getLogger("taps_post")
    capture = Capture()
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        async def bounded() -> Any:
            async with asyncio.timeout(30):
                return await demo_run(tmp_path)

        roots, tickets, events, on_disk, errors = asyncio.run(bounded())
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)

    cert_key = next(r for r in roots if isinstance(r, tp.certs.Certificate)).key_pem
    assert cert_key is not None
    body = [line for line in cert_key.splitlines() if line and not line.startswith("-----")]
    needles = ["-----BEGIN", "PRIVATE KEY", *(line for line in body if len(line) >= 16)]
    assert tickets, "the run must have produced tickets to look for"
    for raw in tickets:
        needles += ticket_forms(raw)
    assert capture.records and events, "logging and tracing must have seen the run"

    haystack: list[tuple[str, str]] = []
    for i, root in enumerate(roots):
        haystack += [(f"root[{i}]{p}", t) for p, t in texts(root)]
    formatter = logging.Formatter()
    for i, rec in enumerate(capture.records):
        where = f"log[{i}] {rec.name}"
        haystack.append((f"{where} message", rec.getMessage()))
        haystack.append((f"{where} args", repr(rec.args)))
        haystack.append((f"{where} taps", repr(getattr(rec, "taps", None))))
        if rec.exc_info:
            haystack.append((f"{where} traceback", formatter.formatException(rec.exc_info)))
    for i, (name, info) in enumerate(events):
        haystack.append((f"trace[{i}] {name}", json.dumps(info)))
        haystack.append((f"trace[{i}] {name} repr", repr(info)))
    haystack.append(("store file", on_disk))

    leaks = sorted({f"{where}: contains {needle[:24]!r}"
                    for where, text in haystack for needle in needles if needle in text})
    assert not leaks, f"{len(leaks)} texts leak a secret:\n" + "\n".join(leaks[:400])
    assert len(haystack) > 1000, "the scan must have read the run"
    assert [type(e).__name__ for e in errors] == ["PolicyError", "PolicyError",
                                                 "EstablishmentError"], errors
    assert "tls_verify" in str(errors[-1])


def test_certificate_local_and_remote_reprs_show_fingerprints() -> None:
    cert = tp.certs.self_signed(["localhost"])
    assert cert.key_pem is not None
    shown = repr(cert)
    assert shown == f"<Certificate sha256:{cert.fingerprint} with key>" == str(cert)
    assert repr(tp.certs.Certificate(cert.cert_pem)) == f"<Certificate sha256:{cert.fingerprint}>"
    for text in (repr(tp.Local(port=1, certificates=[cert])),
                 repr(tp.Remote.parse("tls://localhost:1", certificates=[cert]))):
        assert cert.fingerprint in text and "BEGIN" not in text, text
    assert "BEGIN" not in repr(tp.certs.Certificate("-----BEGIN nonsense"))
