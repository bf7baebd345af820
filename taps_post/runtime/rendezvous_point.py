"""The rendezvous point: offers relayed between identities that authenticate to it by client
certificate (draft 3.1.3, issue 13 item 4; docs/rendezvous.md). Its client is
runtime/rendezvous_client.py; the wire (bounds, error codes) is runtime/signalling.py's.

Rule 1: the point is a taps_post Responder over TLS only (policy: `secure: require`, QUIC
prohibited, `security.clientAuth: require`, checked again once it listens, so no system layer
can open it without client authentication), with the length-prefix framer: one JSON object
per frame, at most MAX_REQUEST bytes (a larger frame ends the connection before it is read).
A connection without a verified client certificate never gets a request served.
Rule 2: a client is its verified certificate. The identities it may act as are the
certificate's subject CN and DNS subjectAltNames that are identities (ASCII DNS-like names,
no wildcard, no IP address: `certificate_identities`; a name that is not ASCII is no
identity, before any lower-casing, so that no Unicode name folds onto another's, as the
Kelvin sign U+212A does onto "k"). A name a request gives (`to`, `from`, `as`) must be ASCII
too. The point stamps every offer it relays
with the sender's authenticated identity; a request naming another identity (`as`) is
refused with `not-your-identity`, and no field of a request can set the sender.
Rule 3: an offer is opaque (signalling Rule 2): the point checks only that it is a JSON
object within MAX_OFFER_BYTES, keeps its text, and never reads, logs or echoes it. Logs and
errors name identities, sizes and counts only; a request's other values are never repeated.
Rule 4: everything the point holds is bounded: offers as signalling's `Mailboxes` (signalling
Rule 4: a queue per recipient and sender, senders per recipient, recipients and bytes per
sender, ttl, identities, bytes), a `wait` by MAX_WAIT seconds and `max_waits` at once per
client certificate, connections by `max_connections` at once per client certificate (its
SHA-256 fingerprint; counted from its first request, until it closes: the one beyond is
answered `too-many-connections` and closed), by the Listener's own bounds and by
carrier.idleTimeout (IDLE_TIMEOUT_MS, longer than a wait). A wait whose connection ends
gives its offer back, within the same bounds (else it is counted as dropped).
Rule 5: the handler never returns False (that would stop the Responder, responder Rule 3)
and never raises for a client's mistake: every request gets exactly one reply, `{"ok":
true, ...}` or `{"error": CODE, "detail": TEXT}`, except a wait whose connection ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import stacks
from ..certs import fingerprint_of_der
from ..core.events import CarrierEvent, Closed
from ..core.framing import LengthPrefixFramer
from ..core.messages import InMessage
from ..errors import ArgumentError, ConnectionClosedError, PolicyError, UsageError
from ..policy.context import PolicyContext
from ..policy.load import PolicySpec
from .carrier import Carrier
from .endpoints import Local, has_identity, hostport, identity_problem
from .establish import EnvSpec
from .responder import Reply, Responder, respond
from .signalling import (
    MAX_REQUEST,
    MAX_WAIT,
    Mailboxes,
    MailboxFull,
    MailboxStats,
    OfferTooLargeError,
    encode_offer,
)
from .trace import TraceCallback

__all__ = ["DEFAULT_BYTES_PER_SENDER", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_IDENTITIES",
           "DEFAULT_MAX_WAITS", "DEFAULT_QUEUE", "DEFAULT_RECIPIENTS_PER_SENDER",
           "DEFAULT_SENDERS_PER_RECIPIENT", "DEFAULT_TTL", "IDLE_TIMEOUT_MS", "POINT_POLICY",
           "RendezvousPoint", "certificate_identities"]

_log = logging.getLogger("taps_post.rendezvous")

DEFAULT_QUEUE = 8
DEFAULT_TTL = 60.0
DEFAULT_MAX_IDENTITIES = 4096
DEFAULT_MAX_WAITS = 4
DEFAULT_MAX_CONNECTIONS = 8
"""Connections at once per client certificate (Rule 4)."""
DEFAULT_SENDERS_PER_RECIPIENT = 64
DEFAULT_RECIPIENTS_PER_SENDER = 64
DEFAULT_BYTES_PER_SENDER = 1024 * 1024
IDLE_TIMEOUT_MS = 120_000
"""carrier.idleTimeout at the point: a connection silent this long is closed (Rule 4)."""

POINT_POLICY: Mapping[str, Any] = {
    "version": 1, "layer": "app",
    "rules": [{"id": "rendezvous-point", "set": {
        "secure": "require", "stack.quic": "prohibit", "security.clientAuth": "require",
        "carrier.idleTimeout": IDLE_TIMEOUT_MS}}],
}
"""The point's own app layer (Rule 1), under whatever system layer the machine has."""

_OPS = {"put": frozenset({"id", "op", "to", "offer", "as"}),
        "wait": frozenset({"id", "op", "from", "timeout", "as"}),
        "whoami": frozenset({"id", "op"})}


@functools.lru_cache(maxsize=1024)
def certificate_identities(der: bytes) -> tuple[str, ...]:
    """The identities a client certificate (DER) lets its holder act as (Rule 2): its
    subject CN, then its DNS subjectAltNames, lower case, each once, in that order; names
    that are no identity (not ASCII, IP addresses, wildcards, what `identity_problem` refuses) are
    left out. Empty when it names none (or is no certificate)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
        names: list[str] = [str(a.value) for a in
                            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except ValueError:
        return ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
    except (x509.ExtensionNotFound, ValueError):
        pass
    out: list[str] = []
    for name in names:
        if not name.isascii():  # before lower(): "\u212a".lower() == "k" (Rule 2)
            continue
        low = name.lower()
        if "*" not in low and identity_problem(low) is None and low not in out:
            out.append(low)
    return tuple(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error(rid: int | None, code: str, detail: str) -> bytes:
    return json.dumps({"id": rid, "error": code, "detail": detail}).encode()


@dataclass(slots=True)
class _Client:
    """What the point knows of one connection: the certificate, what it may act as."""

    fingerprint: str
    identities: tuple[str, ...]
    over: bool = False
    """Beyond max_connections for its certificate: answered once, then closed (Rule 4)."""
    answered: bool = False
    """An `over` connection had its one answer: requests still in flight get none."""
    gone: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    """Resolved when the connection closed: its waits end (Rule 4)."""


class _Refusal(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class RendezvousPoint:
    """Relays offers between identities that authenticate by client certificate (Rules 1-4).

    `point = await RendezvousPoint.start(tp.Local(address=..., port=..., certificates=[cert],
    trusted=[ca_or_client_certs]))`; `point.port`; `await point.close()` (or `async with`).
    """

    def __init__(self, *, queue: int = DEFAULT_QUEUE, ttl: float = DEFAULT_TTL,
                 max_identities: int = DEFAULT_MAX_IDENTITIES,
                 max_waits: int = DEFAULT_MAX_WAITS, max_wait: float = MAX_WAIT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 senders_per_recipient: int = DEFAULT_SENDERS_PER_RECIPIENT,
                 recipients_per_sender: int = DEFAULT_RECIPIENTS_PER_SENDER,
                 bytes_per_sender: int = DEFAULT_BYTES_PER_SENDER) -> None:
        if max_waits < 1 or max_connections < 1 or not 0 < max_wait <= MAX_WAIT:
            raise ArgumentError(f"RendezvousPoint: max_waits and max_connections are at "
                                f"least 1, max_wait over 0 and at most {MAX_WAIT:g} s")
        self.mailboxes = Mailboxes(queue=queue, ttl=ttl, max_identities=max_identities,
                                   senders_per_recipient=senders_per_recipient,
                                   recipients_per_sender=recipients_per_sender,
                                   bytes_per_sender=bytes_per_sender)
        self.max_waits = max_waits
        self.max_connections = max_connections
        self.turned_away = 0
        """Connections closed because their certificate had max_connections already."""
        self._connections: dict[str, int] = {}
        self.max_wait = float(max_wait)
        self.refused = 0
        """Requests refused because the connection had no verified certificate, or its
        certificate names no identity (never relayed)."""
        self.requests = 0
        self._clients: weakref.WeakKeyDictionary[Carrier, _Client] = \
            weakref.WeakKeyDictionary()
        self._waits: dict[str, int] = {}
        self._responder: Responder | None = None
        self._local: Local | None = None

    @classmethod
    async def start(cls, local: Local, *, queue: int = DEFAULT_QUEUE,
                    ttl: float = DEFAULT_TTL, max_identities: int = DEFAULT_MAX_IDENTITIES,
                    max_waits: int = DEFAULT_MAX_WAITS, max_wait: float = MAX_WAIT,
                    max_connections: int = DEFAULT_MAX_CONNECTIONS,
                    senders_per_recipient: int = DEFAULT_SENDERS_PER_RECIPIENT,
                    recipients_per_sender: int = DEFAULT_RECIPIENTS_PER_SENDER,
                    bytes_per_sender: int = DEFAULT_BYTES_PER_SENDER,
                    system: PolicySpec = None, env: EnvSpec = None,
                    trace: TraceCallback | None = None) -> RendezvousPoint:
        """Listen on `local` (its certificate with key: the point's own; `trusted`: the CAs
        or pinned client certificates clients are verified against). `system`: the system
        policy layer (None: the machine's, discovered; [] none)."""
        if not has_identity(local):
            raise ArgumentError("a rendezvous point needs a certificate with its private key "
                                "(Local(certificates=[...]))")
        if not local.trusted:
            raise ArgumentError("a rendezvous point needs the CAs or client certificates it "
                                "trusts (Local(trusted=[...])): it serves no one else")
        point = cls(queue=queue, ttl=ttl, max_identities=max_identities, max_waits=max_waits,
                    max_wait=max_wait, max_connections=max_connections,
                    senders_per_recipient=senders_per_recipient,
                    recipients_per_sender=recipients_per_sender,
                    bytes_per_sender=bytes_per_sender)
        policy = PolicyContext(system=system, app=dict(POINT_POLICY),
                               app_name="taps-post-rendezvous")
        responder = await respond(local, point._handle, policy=policy,
                                  framer=LengthPrefixFramer(MAX_REQUEST), env=env, trace=trace)
        listener = responder.listener
        wrong = [s for s in listener.ports if not stacks.info(s).secure
                 or stacks.info(s).ip_protocol != "tcp"]
        if listener.settings.client_auth != "require" or wrong:
            await responder.close()
            raise PolicyError("the policy in force would open the rendezvous point without "
                              "TLS client authentication (security.clientAuth "
                              f"{listener.settings.client_auth}, stacks {sorted(listener.ports)})"
                              ": refused", listener.explanation)
        point._responder = responder
        point._local = local
        _log.info("rendezvous point listening on %s", point.hostport)
        return point

    # ---- what it is ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._responder is None:
            raise UsageError("the rendezvous point is not listening: RendezvousPoint.start()")
        return self._responder.listener.port

    @property
    def address(self) -> str:
        return (self._local.address if self._local is not None else None) or "::"

    @property
    def hostport(self) -> str:
        """Where it listens, `HOST:PORT` (`[v6]:PORT`), the real port when 0 was asked."""
        return hostport((self.address, self.port))

    @property
    def stats(self) -> MailboxStats:
        return self.mailboxes.stats

    @property
    def waiting(self) -> int:
        """Waits held now, over all clients (each at most MAX_WAIT seconds)."""
        return sum(self._waits.values())

    @property
    def connections(self) -> int:
        """Connections counted now against max_connections, over all certificates."""
        return sum(self._connections.values())

    @property
    def serving(self) -> bool:
        return self._responder is not None and self._responder.serving

    async def close(self) -> None:
        """Stop listening, end every connection and wait; forget every offer."""
        responder, self._responder = self._responder, None
        if responder is not None:
            where = hostport((self.address, responder.listener.port))
            await responder.close()
            _log.info("rendezvous point on %s closed", where)
        self.mailboxes.close()

    async def __aenter__(self) -> RendezvousPoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- serving ------------------------------------------------------------------------

    def _client(self, carrier: Carrier) -> _Client | None:
        """The verified client certificate of `carrier` (Rule 2), or None: no TLS, or no
        certificate (never relayed)."""
        known = self._clients.get(carrier)
        if known is not None:
            return known
        t = carrier.transient
        if t is None or not stacks.info(t.stack).secure or t.transport is None:
            return None
        ssl_object = t.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        client = _Client(fingerprint_of_der(der), certificate_identities(der))
        self._clients[carrier] = client
        key = client.fingerprint
        held = self._connections.get(key, 0)
        client.over = held >= self.max_connections
        if not client.over:
            self._connections[key] = held + 1

        def watch(event: CarrierEvent) -> bool:
            if type(event) is Closed:
                if not client.gone.done():
                    client.gone.set_result(None)
                if not client.over:
                    left = self._connections[key] - 1
                    if left:
                        self._connections[key] = left
                    else:
                        del self._connections[key]
                return False
            return True

        carrier.on_event(watch)
        return client

    async def _handle(self, msg: InMessage, reply: Reply) -> None:
        """One request (Rules 2-4). Returns None always: False would stop the Responder."""
        carrier = reply.carrier
        client = self._client(carrier)
        if client is None:
            self.refused += 1
            _log.warning("refused a request on a connection without a verified client "
                         "certificate (stack %s)", carrier.stack)
            carrier.abort()
            return
        if client.answered:
            return  # closing (Rule 4): what it sent after its one answer is not served
        self.requests += 1
        rid: int | None = None
        try:
            req = _parse(msg)
            rid = req.get("id")
            if rid is not None and (type(rid) is not int or not 0 <= rid < 2 ** 53):
                rid = None
                raise _Refusal("bad-request", "`id` is a non-negative integer")
            if client.over:
                raise _Refusal("too-many-connections", f"at most {self.max_connections} "
                                                       "connections at once per client "
                                                       "certificate")
            op = req.get("op")
            if not isinstance(op, str) or op not in _OPS:
                raise _Refusal("bad-request", "`op` is put, wait or whoami")
            if not req.keys() <= _OPS[op]:
                raise _Refusal("bad-request", f"unexpected field(s) in a {op} request "
                                              f"(it takes {', '.join(sorted(_OPS[op]))})")
            if not client.identities:
                self.refused += 1
                _log.warning("refused certificate sha256:%s: it names no identity",
                             client.fingerprint)
                raise _Refusal("no-identity", "your certificate names no identity (its CN or "
                                              "a DNS subjectAltName)")
            if op == "whoami":
                answer = json.dumps({"id": rid, "ok": True,
                                     "identities": list(client.identities)}).encode()
            elif op == "put":
                answer = self._put(req, rid, client)
            else:
                await self._wait(req, rid, client, reply)
                return
        except _Refusal as refusal:
            answer = _error(rid, refusal.code, refusal.detail)
        if client.over:
            if client.answered:  # another request got the one answer while this one ran
                return
            client.answered = True
        with contextlib.suppress(ConnectionClosedError):  # the client left: nobody to tell
            await reply.send(answer)
        if client.over:  # answered once, then closed (Rule 4)
            self.turned_away += 1
            _log.warning("closed a connection of certificate sha256:%s: it has %d open "
                         "already", client.fingerprint, self.max_connections)
            await carrier.close()

    def _acting(self, req: dict[str, Any], client: _Client) -> str:
        claimed = req.get("as")
        if claimed is None:
            return client.identities[0]
        if isinstance(claimed, str) and claimed.isascii() and \
                claimed.lower() in client.identities:
            return claimed.lower()
        _log.warning("refused: %s (certificate sha256:%s) asked to act as another identity",
                     client.identities[0], client.fingerprint)
        raise _Refusal("not-your-identity", "`as` must be an identity your certificate names: "
                                            + ", ".join(client.identities))

    def _put(self, req: dict[str, Any], rid: int | None, client: _Client) -> bytes:
        sender = self._acting(req, client)
        to = _identity(req, "to")
        try:
            text = encode_offer(req.get("offer"))
        except OfferTooLargeError as exc:
            raise _Refusal("too-large", f"`offer`: {exc}") from None
        except ArgumentError as exc:
            raise _Refusal("bad-request", f"`offer`: {exc}") from None
        try:
            self.mailboxes.put(sender, to, text)
        except MailboxFull as full:
            recipients, held = self.mailboxes.usage(sender)
            _log.warning("refused an offer %s -> %s (%d bytes): %s full (%d identities, %d "
                         "bytes; the sender %d recipients, %d bytes)", sender, to, len(text),
                         full.bound, self.mailboxes.identities, self.mailboxes.held_bytes,
                         recipients, held)
            raise _Refusal("full", f"{full}; try again later") from None
        _log.debug("offer %s -> %s, %d bytes", sender, to, len(text))
        return json.dumps({"id": rid, "ok": True}).encode()

    async def _wait(self, req: dict[str, Any], rid: int | None, client: _Client,
                    reply: Reply) -> None:
        """Hold the request until an offer for it comes (it answers itself: None) or its
        timeout (a `timeout` refusal); a wait whose connection ended answers nothing."""
        me = self._acting(req, client)
        sender = _identity(req, "from")
        timeout = req.get("timeout", self.max_wait)
        if type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout < 0:
            raise _Refusal("bad-request", "`timeout` is a number of seconds, 0 or more")
        timeout = min(float(timeout), self.max_wait)
        key = client.fingerprint
        if self._waits.get(key, 0) >= self.max_waits:
            raise _Refusal("too-many-waits", f"at most {self.max_waits} waits at once per "
                                             "client certificate")
        self._waits[key] = self._waits.get(key, 0) + 1
        take = asyncio.ensure_future(self.mailboxes.take(me, sender, timeout))
        try:
            either: set[asyncio.Future[Any]] = {take, client.gone}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left = self._waits[key] - 1
            if left:
                self._waits[key] = left
            else:
                del self._waits[key]
            if not take.done():  # the connection ended, or we are cancelled
                take.cancel()  # take() keeps a letter it was given as it ended
                await asyncio.gather(take, return_exceptions=True)
        if take.cancelled():
            return None
        try:
            letter, skipped = take.result()
        except TimeoutError:
            raise _Refusal("timeout", f"no offer from {sender} within {timeout:g} s") from None
        head = json.dumps({"id": rid, "ok": True, "from": letter.sender, "skipped": skipped})
        try:
            await reply.send(f'{head[:-1]},"offer":{letter.text}}}'.encode())
        except ConnectionClosedError:
            self.mailboxes.restore(me, letter)  # it never reached `me`
            return None
        _log.debug("delivered %s -> %s, %d bytes (%d older superseded)", letter.sender, me,
                   len(letter.text), skipped)
        return None


def _parse(msg: bytes) -> dict[str, Any]:
    try:
        req = json.loads(bytes(msg), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _Refusal("bad-request", "a request is one JSON object (UTF-8)") from None
    if not isinstance(req, dict):
        raise _Refusal("bad-request", "a request is one JSON object")
    return req


def _identity(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value.isascii() or \
            identity_problem(value.lower()) is not None:
        raise _Refusal("bad-request", f"`{key}` is an identity (a DNS-like name)")
    return value.lower()


