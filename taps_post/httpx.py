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
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import typing
from collections.abc import Iterator, Sequence
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
        raise httpcore.ConnectError(f"taps_post policy allows no connection: {err}") from err
    except tp.EstablishmentError as err:
        raise httpcore.ConnectError(f"taps_post establishment failed: {err}") from err
    except (OSError, tp.TapsError, EOFError) as err:
        if kind == "connect":
            raise httpcore.ConnectError(str(err)) from err
        if kind == "read":
            raise httpcore.ReadError(str(err)) from err
        raise httpcore.WriteError(str(err)) from err


def _remote(host: str, port: int, scheme: str,
            certificates: Sequence[tp.certs.Certificate]) -> tp.Remote:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return tp.Remote(host=host, port=port, scheme=scheme, certificates=tuple(certificates))
    return tp.Remote.ip(host, port, scheme=scheme, certificates=certificates)


class CarrierStream(httpcore.AsyncNetworkStream):
    """An httpcore stream over one taps_post carrier turned into a byte stream
    (`carrier.as_stream()`). Lazy until opened (Rule 2): `connect_tcp` returns it unopened,
    `start_tls` returns an opened TLS one, a plain one opens at its first write."""

    def __init__(self, backend: Backend, host: str, port: int,
                 connect_timeout: float | None) -> None:
        self._backend = backend
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._carrier: tp.Carrier | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False

    async def _open(self, scheme: str, alpn: Sequence[str] = ()) -> None:
        """Race and win a carrier, then take its byte stream."""
        carrier = self._backend.carrier_for(self._host, self._port, scheme, alpn)
        self._carrier = carrier
        try:
            with _mapped("connect"):
                async with asyncio.timeout(self._connect_timeout):
                    await carrier.activate()
                    self._reader, self._writer = await carrier.as_stream()
        except BaseException:
            await carrier.close()
            raise

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._closed:
            raise httpcore.ReadError("stream is closed")
        if self._reader is None or self._writer is None:
            await self._open("tcp")
        assert self._reader is not None and self._writer is not None
        return self._reader, self._writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Whatever arrived, up to max_bytes; b"" at the peer's end of stream."""
        reader, _ = await self._ensure()
        with _mapped("read"):
            async with asyncio.timeout(timeout):
                return await reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write and drain (the transport's flow control is the write timeout's subject)."""
        if not buffer:
            return
        _, writer = await self._ensure()
        with _mapped("write"):
            async with asyncio.timeout(timeout):
                writer.write(buffer)
                await writer.drain()

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
        if self._carrier is not None:
            raise httpcore.ConnectError("start_tls on an open taps_post stream (TLS in TLS, "
                                        "as through an https proxy, is not supported)")
        stream = CarrierStream(self._backend, server_hostname or self._host, self._port,
                               timeout if timeout is not None else self._connect_timeout)
        await stream._open("tls", self._backend.alpn)
        self._closed = True
        return stream

    def get_extra_info(self, info: str) -> Any:
        """ssl_object, client_addr, server_addr, socket, is_readable, and
        `taps_post.explanation` (the Decision) / `taps_post.carrier`."""
        carrier = self._carrier
        if info == _CARRIER:
            return carrier
        if info == _EXPLANATION:
            return None if carrier is None else carrier.explanation
        writer = self._writer
        if writer is None or carrier is None:
            return None
        if info == "ssl_object":
            return writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return carrier.local_address or writer.get_extra_info("sockname")
        if info == "server_addr":
            return carrier.remote_address or writer.get_extra_info("peername")
        if info == "socket":
            return writer.get_extra_info("socket")
        if info == "is_readable":
            reader = self._reader
            return reader is not None and (reader.at_eof() or bool(_buffered(reader))
                                           or writer.is_closing())
        return None


def _buffered(reader: asyncio.StreamReader) -> int:
    """Bytes waiting in the reader: there is no public accessor, `_buffer` is stable."""
    return len(getattr(reader, "_buffer", b""))


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
        settings: dict[str, Any] = {"stack": {scheme: "require"}}
        if alpn:
            settings["security.alpn"] = list(alpn)
        if not self.verify and scheme == "tls":
            settings["security.verifyPeer"] = False
        return base.with_carrier({"version": 1, "layer": "carrier",
                                  "rules": [{"id": "httpx", "set": settings}]})

    def carrier_for(self, host: str, port: int, scheme: str,
                    alpn: Sequence[str]) -> tp.Carrier:
        """A dormant raw-framed carrier to host:port over `scheme` (tls or tcp)."""
        with _mapped("connect"):
            return tp.initiate(_remote(host, port, scheme, self.certificates),
                               local=self.local, policy=self._policy_for(scheme, alpn),
                               framer=tp.RawFramer(), store=self.store, trace=self.trace)

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
        """No policy decides a Unix socket: refused clearly."""
        raise httpcore.ConnectError("taps_post.httpx does not open Unix sockets (uds=)")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Transport(httpx.AsyncHTTPTransport):
    """httpx's AsyncHTTPTransport with a connection pool on `Backend`: pooling, keep-alive
    and HTTP/2 stay httpcore's, connections are taps_post's. `http2` defaults to True when
    h2 is installed."""

    def __init__(self, *, policy: tp.PolicyContext | None = None,
                 certificates: Sequence[tp.certs.Certificate] = (),
                 verify: bool = True, http1: bool = True, http2: bool | None = None,
                 limits: httpx.Limits = _LIMITS,
                 retries: int = 0, store: tp.AssociationStore | None = None,
                 trace: Any = None, local: tp.Local | None = None) -> None:
        h2 = _http2_available() if http2 is None else http2
        self.backend = Backend(policy=policy, certificates=certificates, verify=verify,
                               http2=h2, store=store, trace=trace, local=local)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1, http2=h2, retries=retries, network_backend=self.backend)
