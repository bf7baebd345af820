"""The rendezvous point's client: Signalling over one TLS carrier to the point (draft 3.1.3,
issue 13 item 4; docs/rendezvous.md; the point itself is runtime/rendezvous_point.py).

Rule 1: the client holds ONE taps_post TLS carrier to the point, opened on first use (and
again after it ended) with our client certificate and the length-prefix framer (frames of at
most MAX_REQUEST bytes): the point knows us by that certificate, and `sender`/`me` must be
one of the identities it names (its CN or a DNS subjectAltName).
Rule 2: requests carry an `id` and replies are matched by it (one reader task per carrier,
owned by the client), so a long `wait` and a `put` share the carrier. A request whose
connection ended before its answer is sent once more on a new carrier (a put may then be
delivered twice: harmless, the receiver takes the newest offer).
Rule 3: the carrier is opened with the `initiate` the caller hands in (tp.initiate, or
establish's own when a rendezvous activation makes the client): this module sits below
runtime/establish.py, which reaches it through the rendezvous opener, so it may not import
it (tests/test_architecture.py Rule 2).
Rule 4: failures. The point's refusals are RendezvousError (a ConnectionError) with the wire's
error code (signalling.ERROR_CODES); `receive()` finding no offer in time is TimeoutError,
as the Signalling protocol says; reaching the point at all is an ordinary initiate():
EstablishmentError, PolicyError. An offer is opaque here too: checked only as JSON within
MAX_OFFER_BYTES (signalling Rule 5), never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..core.framing import LengthPrefixFramer
from ..errors import ArgumentError, ConnectionClosedError, UsageError
from ..policy.context import PolicyContext
from .association import AssociationStore
from .carrier import Carrier
from .endpoints import Local, Remote, has_identity, identity_problem
from .signalling import MAX_REQUEST, MAX_WAIT, REPLY_SLACK, RendezvousError, encode_offer

__all__ = ["Initiate", "RendezvousClient"]

Initiate = Callable[..., Carrier]
"""How the client opens its carrier: `tp.initiate`'s signature (Rule 3)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class RendezvousClient:
    """Signalling through a rendezvous point (Rules 1-4): `RendezvousClient(
    tp.Remote.parse("tls://point.example:7443"), tp.Local(certificates=[my_cert]),
    initiate=tp.initiate)`. The point knows us by the certificate; `sender`/`me` must be one
    of the identities it names. `policy` decides the carrier to the point as any initiate."""

    def __init__(self, via: Remote, local: Local, policy: PolicyContext | None = None, *,
                 initiate: Initiate, store: AssociationStore | None = None) -> None:
        if not isinstance(via, Remote) or via.is_rendezvous:
            raise ArgumentError("RendezvousClient: `via` is the rendezvous point's Remote "
                                "(tls://host:port)")
        if via.scheme == "hostport":
            via = replace(via, scheme="tls")
        elif via.scheme != "tls":
            raise ArgumentError(f"RendezvousClient: the rendezvous point speaks TLS, not "
                                f"{via.scheme}: tls://{via.hostport}")
        if not has_identity(local):
            raise ArgumentError("RendezvousClient: the rendezvous point knows us by our client "
                                "certificate: Local(certificates=[cert with its key])")
        self.via = via
        self.local = Local(certificates=tuple(local.certificates))
        self.policy = policy
        self._initiate = initiate
        self._store = store
        self._carrier: Carrier | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, tuple[Carrier, asyncio.Future[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RendezvousClient(via={self.via.target!r}, local={self.local!r})"

    # ---- Signalling ---------------------------------------------------------------------

    async def send(self, sender: str, to: str, offer: dict[str, Any]) -> None:
        text = encode_offer(offer)
        head = {"op": "put", "to": _name(to), "as": _name(sender)}
        _check(await self._request(head, text, REPLY_SLACK))

    async def receive(self, me: str, peer: str, timeout: float) -> dict[str, Any]:
        peer = _name(peer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            left = max(0.0, deadline - loop.time())
            turn = min(left, MAX_WAIT)
            reply = await self._request({"op": "wait", "from": peer, "as": _name(me),
                                         "timeout": turn}, None, turn + REPLY_SLACK)
            if reply.get("error") == "timeout":
                if left <= MAX_WAIT:
                    raise TimeoutError(f"no offer from {peer} within {timeout:g} s")
                continue
            _check(reply)
            offer = reply.get("offer")
            if reply.get("from") != peer or not isinstance(offer, dict):
                raise RendezvousError("the rendezvous point answered a wait with an offer "
                                      "from someone else", "protocol")
            return offer

    async def aclose(self) -> None:
        self._closed = True
        carrier, self._carrier = self._carrier, None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if carrier is not None:
            self._fail(carrier, None)
            await carrier.close()

    async def whoami(self) -> tuple[str, ...]:
        """The identities the point lets us act as (from our certificate, Rule 2)."""
        reply = _check(await self._request({"op": "whoami"}, None, REPLY_SLACK))
        names = reply.get("identities")
        return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()

    async def __aenter__(self) -> RendezvousClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- the carrier --------------------------------------------------------------------

    async def _open(self) -> Carrier:
        if self._closed:
            raise UsageError("this RendezvousClient is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._carrier is not None:
                return self._carrier
            carrier = self._initiate(self.via, local=self.local, policy=self.policy,
                                     framer=LengthPrefixFramer(MAX_REQUEST), store=self._store)
            try:
                await carrier.activate()
            except BaseException:
                await carrier.close()
                raise
            if self._closed:
                await carrier.close()
                raise UsageError("this RendezvousClient is closed")
            self._carrier = carrier
            self._reader = asyncio.ensure_future(self._read(carrier))
            return carrier

    async def _read(self, carrier: Carrier) -> None:
        """Hand each reply to the request with its id; when the carrier ends, fail what is
        still waiting on it and forget it (the next request opens a new one)."""
        error: BaseException | None = None
        try:
            async for msg in carrier:
                try:
                    reply = json.loads(bytes(msg), parse_constant=_no_constant)
                except (ValueError, RecursionError):
                    reply = None
                if not isinstance(reply, dict):
                    error = RendezvousError("the rendezvous point sent something that is not "
                                            "a reply", "protocol")
                    break
                rid = reply.get("id")
                entry = self._pending.get(rid) if type(rid) is int else None
                if entry is not None and entry[0] is carrier and not entry[1].done():
                    entry[1].set_result(reply)
        except ConnectionClosedError as exc:
            error = exc
        finally:
            if self._carrier is carrier:
                self._carrier = None
                self._reader = None
            self._fail(carrier, error)
            carrier.abort()

    def _fail(self, carrier: Carrier, error: BaseException | None) -> None:
        for c, fut in list(self._pending.values()):
            if c is carrier and not fut.done():
                exc = RendezvousError("the connection to the rendezvous point ended before it "
                                      "answered (was our client certificate refused?)")
                exc.__cause__ = error
                fut.set_exception(exc)

    async def _request(self, head: dict[str, Any], offer: str | None,
                       answer_within: float) -> dict[str, Any]:
        """Send one request (`offer`: the JSON text to put under "offer") and return its
        reply; once more on a new carrier when the connection ended first (Rule 5)."""
        for attempt in (1, 2):
            carrier = await self._open()
            rid = next(self._ids)
            text = json.dumps({"id": rid, **head})
            if offer is not None:
                text = f'{text[:-1]},"offer":{offer}}}'
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[rid] = (carrier, fut)
            try:
                try:
                    await carrier.send(text.encode())
                except ConnectionClosedError as exc:
                    if not fut.done():
                        fut.set_exception(RendezvousError(
                            f"the connection to the rendezvous point ended ({exc})"))
                try:
                    async with asyncio.timeout(answer_within):
                        return await fut
                except TimeoutError:
                    carrier.abort()  # it answers nothing: start afresh next time
                    raise RendezvousError(f"the rendezvous point did not answer within "
                                          f"{answer_within:g} s", "no-answer") from None
                except RendezvousError as exc:
                    if exc.code != "closed" or attempt == 2 or self._closed:
                        raise
            finally:
                self._pending.pop(rid, None)
        raise AssertionError("unreachable")  # pragma: no cover


def _name(identity: object) -> str:
    if not isinstance(identity, str):
        raise ArgumentError(f"rendezvous identity: a string, not {type(identity).__name__}")
    if (why := identity_problem(identity.lower())) is not None:
        raise ArgumentError(f"rendezvous identity: {why}")
    return identity.lower()


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    code = reply.get("error")
    if code is None and reply.get("ok") is True:
        return reply
    detail = reply.get("detail")
    text = detail if isinstance(detail, str) else "the rendezvous point refused the request"
    raise RendezvousError(f"rendezvous point: {text[:300]}",
                          code if isinstance(code, str) else "protocol")
