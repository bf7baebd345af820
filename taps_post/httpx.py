"""An httpcore network backend on taps_post carriers, and a ready httpx transport.

`httpx.AsyncClient(transport=taps_post.httpx.Transport(policy=policy))` sends every request
over a carrier that the policy chose and that won a race. httpcore keeps pooling, HTTP/1.1
and HTTP/2 framing; taps_post decides and races the connection under it.

Rule 1: this is the only module that imports httpx or httpcore (architecture rank 7, the
optional extra `taps-post[httpx]`); nothing in taps_post imports it.
Rule 2: a TLS race is judged by the TLS handshake, not by TCP. httpcore calls `connect_tcp`
and then `start_tls`, so `connect_tcp` opens nothing: it returns a lazy stream that records
host, port and timeout. `start_tls` runs the real raced `initiate()` over the `tls` stack
with the ALPN ids httpcore wants (h2 and http/1.1 when HTTP/2 is on) put into a carrier policy
layer. A plain-http stream races TCP at its first write (httpcore writes the request first),
bounded by the connect timeout given to `connect_tcp`.
Rule 3: failures become httpcore exceptions at one boundary (`_mapped`): PolicyError and
EstablishmentError -> ConnectError (the message keeps the policy's reason or the attempts),
a connect past its timeout -> ConnectTimeout, a read/write past its timeout -> ReadTimeout /
WriteTimeout, other read/write failures -> ReadError / WriteError. httpx turns those into its
own ConnectError, ReadTimeout, ... as for its default transport.
Rule 4: trust comes from taps_post, not from httpx's ssl context (the stack builds its own
context per candidate): the system CAs by default, `certificates=` pins the server
certificate, `verify=False` sets `security.verifyPeer: false` in the carrier layer (a system
policy may still forbid it). The ssl context httpcore passes to `start_tls` is not used.
Rule 5: taps_post's events reach httpx's `trace` extension. httpcore hands a request's
`trace` to its own connection code, not to the network backend, so `Transport` keeps it in a
context variable while it handles the request, and the stream that request opens records the
establishment's events (`decision.complete`, `race.started`, `attempt.*`, ...) and awaits the
extension with each, named `taps_post.<event>`, in order, when the race is over: inside
httpcore's `connection.start_tls` (or, for plain http, its first write), before its
`.complete`. The connection's later events, under other requests, are not theirs: they go to
`Transport(trace=)` and the loggers only. What the extension raises propagates, as httpcore
lets it; the carrier just opened is closed first.
Rule 6: `Transport(uds=PATH)` sends every request over the Unix socket PATH, as httpx's own
transport does: there is no path to choose or race, so no policy is consulted and httpcore's
own backend opens it. TLS over it is refused with ConnectError (taps_post's trust settings,
Rule 4, belong to raced carriers), and `taps_post.explanation` is None.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import ssl
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import httpcore
import httpx

import taps_post as tp

__all__ = ["Backend", "CarrierStream", "Transport"]

_EXPLANATION = "taps_post.explanation"
_CARRIER = "taps_post.carrier"
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
"""httpx's own default limits."""

_REQUEST_TRACE: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "taps_post_httpx_request_trace", default=None)
"""The `trace` extension of the request `Transport` is handling (Rule 5)."""


def _http2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _mapped(kind: str) -> Iterator[None]:
    """The one boundary where taps_post and OS errors become httpcore's (Rule 3). `kind` is
    connect, read or write."""
    try:
        yield
    except TimeoutError as err:
        timeout = {"connect": httpcore.ConnectTimeout, "read": httpcore.ReadTimeout,
                   "write": httpcore.WriteTimeout}[kind]
        raise timeout(str(err) or f"{kind} timed out") from err
    except tp.PolicyError as err:
        raise httpcore.ConnectError(f"taps_post policy allows no connection: {err}"
                                    f"{_reasons(err.decision)}") from err
    except tp.EstablishmentError as err:
        raise httpcore.ConnectError(f"taps_post establishment failed: {err}") from err
    except (OSError, tp.TapsError, EOFError) as err:
        if kind == "connect":
            raise httpcore.ConnectError(str(err)) from err
        if kind == "read":
            raise httpcore.ReadError(str(err)) from err
        raise httpcore.WriteError(str(err)) from err


def _reasons(decision: tp.Decision | None) -> str:
    """The policy's own words: each exclusion with the rule (and layer, file) that made it."""
    if decision is None:
        return ""
    parts = []
    for ex in decision.excluded:
        where = " ".join(x for x in (ex.interface, ex.stack, ex.remote_address) if x)
        why = ex.outcome + (f" by rule {ex.rule!r}" if ex.rule else "") + \
            (f" ({ex.layer} layer{', ' + ex.source if ex.source else ''})" if ex.layer else "")
        parts.append(f"{where or 'everything'}: {why}{': ' + ex.detail if ex.detail else ''}")
    return ("; excluded: " + "; ".join(parts)) if parts else ""


def _remote(host: str, port: int, scheme: str,
            certificates: Sequence[tp.certs.Certificate]) -> tp.Remote:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return tp.Remote(host=host, port=port, scheme=scheme, certificates=tuple(certificates))
    return tp.Remote.ip(host, port, scheme=scheme, certificates=certificates)


class CarrierStream(httpcore.AsyncNetworkStream):
    """An httpcore stream over one raw-framed taps_post carrier: `receive()` hands over what
    the network delivered, `send()` writes bytes. (Not `as_stream()`: an HTTP/2 server
    speaks first, so bytes may arrive before we take the stream, and `as_stream()` refuses a
    carrier that received anything.) Lazy until opened (Rule 2): `connect_tcp` returns it
    unopened, `start_tls` returns an opened TLS one, a plain one opens at its first write.
    The carrier never re-activates (`carrier.reactivate: false`): a connection httpcore
    thinks is one HTTP connection must not silently become another."""

    def __init__(self, backend: Backend, host: str, port: int,
                 connect_timeout: float | None) -> None:
        self._backend = backend
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._carrier: tp.Carrier | None = None
        self._opened = False
        self._pending = b""
        self._eof = False
        self._closed = False

    async def _open(self, scheme: str, alpn: Sequence[str] = ()) -> None:
        """Race and win a carrier (the connect timeout bounds the whole race), then hand
        its establishment's events to the request's trace extension (Rule 5)."""
        request_trace = _REQUEST_TRACE.get()
        events: list[tuple[str, dict[str, Any]]] = []
        record = None if request_trace is None else (
            lambda name, info: events.append((name, dict(info))))
        carrier = self._backend.carrier_for(self._host, self._port, scheme, alpn, record)
        self._carrier = carrier
        try:
            try:
                with _mapped("connect"):
                    async with asyncio.timeout(self._connect_timeout):
                        await carrier.activate()
            finally:
                for name, info in events:
                    await request_trace(f"taps_post.{name}", info)
        except BaseException:
            await carrier.close()
            raise
        self._opened = True

    async def _ensure(self, kind: str) -> tp.Carrier:
        if self._closed:
            raise (httpcore.ReadError if kind == "read" else httpcore.WriteError)(
                "the taps_post stream is closed")
        if not self._opened:
            await self._open("tcp")
        assert self._carrier is not None
        return self._carrier

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Whatever arrived, up to max_bytes; b"" once the peer closed cleanly."""
        carrier = await self._ensure("read")
        if not self._pending and not self._eof:
            with _mapped("read"):
                async with asyncio.timeout(timeout):
                    try:
                        self._pending = bytes(await carrier.receive())
                    except tp.ConnectionClosedError:
                        t = carrier.transient
                        if t is not None and t.failure is not None:
                            raise
                        self._eof = True
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send the bytes (send() waits while more than carrier.sendBudget is queued: the
        write timeout bounds that)."""
        if not buffer:
            return
        carrier = await self._ensure("write")
        with _mapped("write"):
            async with asyncio.timeout(timeout):
                await carrier.send(bytes(buffer))

    async def aclose(self) -> None:
        """Close the carrier (bounded by its linger); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._carrier is not None:
            with suppress(OSError, tp.TapsError):
                await self._carrier.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        """The real race (Rule 2): TLS candidates judged by their handshakes. httpcore's ssl
        context is not used (Rule 4); the ALPN ids come from the backend (h2 with HTTP/2)."""
        if self._opened:
            raise httpcore.ConnectError("start_tls on an open taps_post stream (TLS in TLS, "
                                        "as through an https proxy, is not supported)")
        stream = CarrierStream(self._backend, server_hostname or self._host, self._port,
                               timeout if timeout is not None else self._connect_timeout)
        await stream._open("tls", self._backend.alpn)
        self._closed = True
        return stream

    def _transport_info(self, name: str) -> Any:
        t = None if self._carrier is None else self._carrier.transient
        transport = getattr(t, "transport", None)
        return None if transport is None else transport.get_extra_info(name)

    def get_extra_info(self, info: str) -> Any:
        """ssl_object, client_addr, server_addr, socket, is_readable, and
        `taps_post.explanation` (the Decision) / `taps_post.carrier`."""
        carrier = self._carrier
        if info == _CARRIER:
            return carrier
        if info == _EXPLANATION:
            return None if carrier is None else carrier.explanation
        if carrier is None or not self._opened:
            return None
        if info == "ssl_object":
            return self._transport_info("ssl_object")
        if info == "client_addr":
            return carrier.local_address or self._transport_info("sockname")
        if info == "server_addr":
            return carrier.remote_address or self._transport_info("peername")
        if info == "socket":
            return self._transport_info("socket")
        if info == "is_readable":
            t = carrier.transient
            return bool(self._pending) or self._eof or t is None or not t.is_open \
                or t.buffered_bytes > 0
        return None


class Backend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on taps_post: every connection is a policy-chosen, raced
    carrier. `alpn` is what `start_tls` offers (Rule 2)."""

    def __init__(self, *, policy: tp.PolicyContext | None = None,
                 certificates: Sequence[tp.certs.Certificate] = (),
                 verify: bool = True, http2: bool = False,
                 store: tp.AssociationStore | None = None,
                 trace: Any = None, local: tp.Local | None = None) -> None:
        self.policy = policy
        self.certificates = tuple(certificates)
        self.verify = verify
        self.alpn: tuple[str, ...] = ("h2", "http/1.1") if http2 else ("http/1.1",)
        self.store = store
        self.trace = trace
        self.local = local

    def _policy_for(self, scheme: str, alpn: Sequence[str]) -> tp.PolicyContext:
        """The caller's policy plus one carrier layer for what httpcore asked for."""
        base = self.policy if self.policy is not None else tp.PolicyContext()
        settings: dict[str, Any] = {"stack": {scheme: "require"}, "carrier.reactivate": False}
        if alpn:
            settings["security.alpn"] = list(alpn)
        if not self.verify and scheme == "tls":
            settings["security.verifyPeer"] = False
        return base.with_carrier({"version": 1, "layer": "carrier",
                                  "rules": [{"id": "httpx", "set": settings}]})

    def carrier_for(self, host: str, port: int, scheme: str, alpn: Sequence[str],
                    record: Callable[[str, dict[str, Any]], None] | None = None
                    ) -> tp.Carrier:
        """A dormant raw-framed carrier to host:port over `scheme` (tls or tcp); `record`
        also sees each of its events (Rule 5), before the backend's own trace."""
        trace = own = self.trace
        if record is not None:

            def trace(name: str, info: dict[str, Any]) -> Any:
                record(name, info)
                return None if own is None else own(name, info)

        with _mapped("connect"):
            pins = self.certificates if scheme == "tls" else ()  # a pin would demand TLS
            return tp.initiate(_remote(host, port, scheme, pins),
                               local=self.local, policy=self._policy_for(scheme, alpn),
                               framer=tp.RawFramer(), store=self.store, trace=trace)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        """Deferred (Rule 2): nothing opens here. `local_address` becomes a Local address
        unless the backend has a Local; socket_options are not applied (taps_post sets its
        own options, TCP_NODELAY included)."""
        if local_address is not None and self.local is None:
            self.local = tp.Local(address=local_address)
        return CarrierStream(self, host, port, timeout)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        """Rule 6: a Unix socket (`Transport(uds=...)`) has no paths to decide between, so
        httpcore's own backend opens it; TLS over it is refused."""
        stream = await httpcore.AnyIOBackend().connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options)
        return _UnixStream(stream, path)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _UnixStream(httpcore.AsyncNetworkStream):
    """httpcore's stream on a Unix socket, without TLS (Rule 6)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, path: str) -> None:
        self._stream = stream
        self._path = path

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        await self._stream.aclose()
        raise httpcore.ConnectError(
            f"taps_post.httpx does not run TLS over a Unix socket ({self._path}): its trust "
            "settings apply to raced carriers only; use http:// with uds=")

    def get_extra_info(self, info: str) -> Any:
        return None if info == _EXPLANATION else self._stream.get_extra_info(info)


class Transport(httpx.AsyncHTTPTransport):
    """httpx's AsyncHTTPTransport with a connection pool on `Backend`: pooling, keep-alive
    and HTTP/2 stay httpcore's, connections are taps_post's. `http2` defaults to True when
    h2 is installed."""

    def __init__(self, *, policy: tp.PolicyContext | None = None,
                 certificates: Sequence[tp.certs.Certificate] = (),
                 verify: bool = True, http1: bool = True, http2: bool | None = None,
                 limits: httpx.Limits = _LIMITS,
                 retries: int = 0, store: tp.AssociationStore | None = None,
                 trace: Any = None, local: tp.Local | None = None,
                 uds: str | None = None) -> None:
        h2 = _http2_available() if http2 is None else http2
        # httpcore wants a context to hand to start_tls (and sets ALPN on it); ours ignores
        # it, so it is a bare one: loading the system CAs, as httpx.create_ssl_context does,
        # costs tens of milliseconds per Transport for nothing.
        self.backend = Backend(policy=policy, certificates=certificates, verify=verify,
                               http2=h2, store=store, trace=trace, local=local)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),  # unused (Rule 4): no CAs
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1, http2=h2, retries=retries, uds=uds, network_backend=self.backend)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's transport call, with the request's `trace` extension kept where the
        stream it opens can find it (Rule 5)."""
        token = _REQUEST_TRACE.set(request.extensions.get("trace"))
        try:
            return await super().handle_async_request(request)
        finally:
            _REQUEST_TRACE.reset(token)
