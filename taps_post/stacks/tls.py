"""TLS for the TLS stacks (over TCP and MPTCP): contexts built from Settings, and the
lean TLS transport every TLS connection is opened with (`open_tls`).

Rule 1: a client context trusts the system CAs, or exactly the pinned certificates when a
Remote pins some; pinning is then checked again by fingerprint (`verify_pins`), so a pin means
"this certificate", not "anything this CA signed".
Rule 2: a pin mismatch raises PinMismatchError, an ssl.SSLCertVerificationError, so racing
classifies it as tls_verify without reading the text.
Rule 3: a listener under security.clientAuth asks for a client certificate (request:
CERT_OPTIONAL, a client without one is still served; require: CERT_REQUIRED, it is refused
in the handshake) and verifies a presented one against exactly the trusted certificates: CAs,
or self-signed client certificates loaded as trust anchors, which verify only the very same
certificate (a pin). A presented certificate that does not verify is refused in both modes.
Rule 4: a TLS connection reads the socket through a TLS_READ_BUFFER (64 KiB) buffer, not
asyncio's 256 KiB one (`open_tls`). asyncio's SSLProtocol allocates and zeroes its read
buffer for every connection before the handshake: 256 KiB of the ~300 KiB an idle TLS
connection costs (bench/memory.py), and, freed by the thousand, the blocks glibc keeps in its
arenas after the connections closed (docs/reliability.md). A TLS record is at most 16 KiB, so
64 KiB still takes four records per read.
Rule 5: memory freed by closed TLS connections goes back to the system. glibc keeps freed
blocks in its heap (a server that held 5,000 TLS connections still had 1.5 GB after they all
closed, 67 MB after `malloc_trim(0)`), so every TRIM_EVERY (1,024) closed TLS connections,
TRIM_DELAY later (so a burst of closes pays once), a full `gc.collect()` (a closed carrier's
objects are cycles, freed only by the collector) and `malloc_trim(0)` run: tens of ms once
per thousand connections. Where there is no glibc the trim is a no-op.
Rule 6: DANE (stacks/dane.py) is checked after every client handshake, where the pins are
(`verify_dane`). Under `security.dane: opportunistic` (the default) the context is the usual
PKIX one (system CAs or pins, the name checked) and a validated usable TLSA set must match as
well: DANE only adds refusals (dane Rule 6). Only under `require`, when a validated usable
set decides the peer (`dane.defers_pkix`), does the context make no PKIX or name check
(`client_tls_context(defer_pkix=True)`: CERT_NONE, no check_hostname) and the DANE match alone
accept the peer (RFC 7671 section 5); under `require` an attempt with no set that could decide
is refused before it connects (`refuse_before_dane`: it could only fail). Contexts are keyed
by whether PKIX is deferred and by the anchors (stacks/tcp.py), so a deferred one never
serves an opportunistic attempt. Python's ssl before 3.13 shows only the peer's leaf
certificate (`PEER_CHAIN` False: `SSLObject.get_unverified_chain` is 3.13's), so there a
DANE-TA record works only as a full certificate (2 0 0; `decision.names.usable(leaf_only=True)`):
when every usable record is one, the context verifies the chain and the name against exactly
those certificates (`dane_anchors`, dane Rule 7; a failure there is a DaneError too): under
`require` always, under `opportunistic` only when that verification is a PKIX one as well
(every anchor is a CA the system store holds, `load_default_certs`, and nothing is pinned; or
verifyPeer is off, so there is no PKIX to keep). Else the anchor must have issued the leaf
(dane, Rule 5).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
import ssl
from asyncio import sslproto
from collections.abc import Callable, Sequence

from ..certs import Certificate, fingerprint_of_der
from ..core.settings import Settings
from ..decision.names import TlsaSet
from ..errors import ArgumentError, DaneError
from . import dane

__all__ = ["PEER_CHAIN", "TLS_READ_BUFFER", "TRIM_DELAY", "TRIM_EVERY", "LeanSSLProtocol",
           "PinMismatchError", "client_tls_context", "dane_anchors", "dane_refusal",
           "defers_pkix", "open_tls", "peer_chain", "refuse_before_dane", "server_tls_context",
           "trim_heap", "verify_dane", "verify_pins"]

TLS_READ_BUFFER = 64 * 1024
"""Bytes a TLS connection reads from its socket at once (asyncio's own: 256 KiB; Rule 4)."""
TRIM_EVERY = 1024
"""Closed TLS connections between two heap trims (Rule 5)."""
TRIM_DELAY = 0.25
"""Seconds from the TRIM_EVERY-th close to the trim, so a burst of closes trims once."""


PEER_CHAIN = hasattr(ssl.SSLObject, "get_unverified_chain")
"""The stdlib shows the peer's whole chain (Python 3.13+); before, only its leaf (Rule 6)."""


class PinMismatchError(ssl.SSLCertVerificationError):
    """The peer's certificate is valid but is not one of the pinned ones."""


_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_tls_context(settings: Settings, pinned: Sequence[Certificate],
                       identity: Sequence[Certificate], *, defer_pkix: bool = False,
                       anchors: Sequence[bytes] = ()) -> ssl.SSLContext:
    """A client context: system CAs, or exactly the pinned certificates when there are some;
    `defer_pkix`: no PKIX nor name check, a validated TLSA set decides (Rule 6); `anchors`:
    verify against exactly these DANE-TA certificates (DER), and the name (Rule 6)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[settings.min_tls]
    if anchors:
        ctx.load_verify_locations(cadata=b"".join(anchors))
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # an intermediate may be the anchor
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
    elif settings.verify_peer and not defer_pkix:
        if pinned:
            for cert in pinned:
                ctx.load_verify_locations(cadata=cert.cert_pem)
        else:
            ctx.load_default_certs()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    for cert in identity:
        if cert.key_pem is not None:
            cert.load_into(ctx)
            break
    return ctx


def server_tls_context(settings: Settings, identity: Sequence[Certificate],
                       trusted: Sequence[Certificate] = ()) -> ssl.SSLContext:
    """A server context with the Local's key; under clientAuth (Rule 3) it verifies client
    certificates against `trusted` (the system CAs when none are given)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_tls]
    for cert in identity:
        if cert.key_pem is not None:
            cert.load_into(ctx)
            break
    else:
        raise ArgumentError("a TLS listener needs a Local certificate with its private key")
    mode = settings.client_auth
    if mode in ("request", "require"):
        if trusted:
            for cert in trusted:
                ctx.load_verify_locations(cadata=cert.cert_pem)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED if mode == "require" else ssl.CERT_OPTIONAL
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    return ctx


def verify_pins(ssl_object: ssl.SSLObject | None, pinned: Sequence[Certificate]) -> None:
    """Pinning is by fingerprint: the chain check passed, now it must be one of *these*."""
    if not pinned or ssl_object is None:
        return
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise PinMismatchError("the peer presented no certificate, but certificates are pinned")
    got = fingerprint_of_der(der)
    if got not in {c.fingerprint for c in pinned}:
        raise PinMismatchError(f"the peer's certificate {got} is not one of the pinned ones")


def defers_pkix(tlsa: TlsaSet | None, settings: Settings) -> bool:
    """Does the TLSA set decide this peer alone, so the handshake skips PKIX (Rule 6: only
    under security.dane require)?"""
    return dane.defers_pkix(tlsa, settings.dane, partial_chain=not PEER_CHAIN)


def dane_anchors(tlsa: TlsaSet | None, settings: Settings,
                 pinned: Sequence[Certificate] = ()) -> tuple[bytes, ...]:
    """The DANE-TA certificates the handshake verifies against (Rule 6, dane Rule 7): under
    require, or under opportunistic where verifying against them is a PKIX verification."""
    found = dane.anchors(tlsa, settings.dane, partial_chain=not PEER_CHAIN)
    if not found or settings.dane == "require" or not settings.verify_peer:
        return found
    if pinned:  # PKIX means the pins here, not these anchors
        return ()
    system = _system_anchors()
    return found if all(a in system for a in found) else ()


def _system_anchors() -> frozenset[bytes]:
    """The system's CA certificates (DER) as `load_default_certs` loads them from the CA file
    ($SSL_CERT_FILE honoured), read again when that file changes."""
    cafile = ssl.get_default_verify_paths().cafile
    try:
        stamp = os.stat(cafile).st_mtime_ns if cafile else None
    except OSError:
        stamp = None
    return _read_system_anchors(cafile, stamp)


@functools.lru_cache(maxsize=4)
def _read_system_anchors(cafile: str | None, stamp: int | None) -> frozenset[bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_default_certs()
    return frozenset(ctx.get_ca_certs(binary_form=True))


def dane_refusal(exc: ssl.SSLCertVerificationError, tlsa: TlsaSet | None) -> DaneError:
    """A handshake that failed against the DANE-TA anchors, as the DaneError it is."""
    name = tlsa.name if tlsa is not None else "?"
    why = getattr(exc, "verify_message", None) or str(exc)
    return DaneError(f"the peer's certificate chain does not verify to the DANE-TA "
                     f"certificate(s) of {name} ({why})", name, "mismatch")


def peer_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """The peer's certificates (DER, leaf first) as far as the stdlib shows them (Rule 6)."""
    if ssl_object is None:
        return []
    chain = getattr(ssl_object, "get_unverified_chain", None)
    if chain is not None:  # Python 3.13+
        got = [c if isinstance(c, bytes) else c.public_bytes(ssl.ENCODING_DER)  # type: ignore[attr-defined]
               for c in (chain() or ())]
        if got:
            return got
    der = ssl_object.getpeercert(binary_form=True)
    return [der] if der else []


def refuse_before_dane(tlsa: TlsaSet | None, settings: Settings, host: str) -> None:
    """Under security.dane require, a set that cannot decide the peer (none, unvalidated, no
    record usable here) refuses the attempt before anything is sent: DaneError (Rule 6)."""
    dane.refuse_undecidable(tlsa, settings.dane, host=host, partial_chain=not PEER_CHAIN)


def verify_dane(ssl_object: ssl.SSLObject | None, tlsa: TlsaSet | None, settings: Settings,
                host: str, *, anchored: bool = False) -> str:
    """DANE after the handshake (Rule 6): how the peer was accepted, or DaneError.
    `anchored`: the context verified against `dane_anchors()`."""
    if settings.dane == "off":
        return "dane off"
    return dane.check(tlsa, settings.dane, peer_chain(ssl_object), host=host,
                      partial_chain=not PEER_CHAIN, anchored=anchored)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up on first use: ctypes (and ctypes.util's tempfile) are
    not loaded by a process that never closes TLS connections."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        return None
    return trim


class _Trimmer:
    """Counts closed TLS connections; every TRIM_EVERY, trims the heap once (Rule 5)."""

    def __init__(self) -> None:
        self.closed = 0
        self.pending: asyncio.AbstractEventLoop | None = None
        """The loop a trim is scheduled on (None: none is)."""
        self.trims = 0

    def connection_closed(self, loop: asyncio.AbstractEventLoop) -> None:
        self.closed += 1
        if self.closed < TRIM_EVERY or _malloc_trim() is None:
            return
        # A trim scheduled on a loop that has since closed (one asyncio.run() after another)
        # never runs: schedule again on this one.
        if self.pending is None or self.pending.is_closed():
            self.pending = loop
            loop.call_later(TRIM_DELAY, self.run)

    def run(self) -> None:
        self.pending = None
        self.closed = 0
        # A closed carrier's objects form cycles (carrier, transient, handlers): they are
        # freed by the cyclic collector, not at close; trim what is actually free.
        gc.collect()
        trim_heap()


_TRIMMER = _Trimmer()


def trim_heap() -> bool:
    """`malloc_trim(0)` now (glibc): give freed heap pages back. False where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    _TRIMMER.trims += 1
    return True


class LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS-over-a-transport protocol with a TLS_READ_BUFFER read buffer (Rule 4)
    and heap trims after many closes (Rule 5); everything else, handshake and shutdown
    timeouts included, is asyncio's."""

    max_size = TLS_READ_BUFFER

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        _TRIMMER.connection_closed(self._loop)

    def app_transport(self) -> asyncio.Transport:
        """The transport the application protocol was given (once the handshake is done).
        The protocol may have closed it already inside its connection_made (a Listener that
        stopped accepting aborts at once): that is a connection ended during set-up, an
        OSError like every other way a set-up fails, so callers handle it as they do those."""
        transport = self._app_transport
        if transport is None:
            raise ConnectionAbortedError("the TLS connection was closed during its set-up")
        return transport


async def open_tls(protocol_factory: Callable[[], asyncio.BaseProtocol], sock: socket.socket,
                   context: ssl.SSLContext, *, server_side: bool,
                   server_hostname: str | None = None,
                   handshake_timeout: float | None = None,
                   ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """TLS over a connected (client) or accepted (server) socket, as
    `loop.create_connection(sock=, ssl=)` / `loop.connect_accepted_socket(ssl=)` do, with a
    LeanSSLProtocol (Rule 4). Returns once the handshake is done; on failure or
    cancellation the transport is aborted (the socket then closed) and the error raised."""
    loop = asyncio.get_running_loop()
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = LeanSSLProtocol(loop, protocol, context, waiter, server_side=server_side,
                          server_hostname=server_hostname,
                          ssl_handshake_timeout=handshake_timeout)  # type: ignore[arg-type]
    # (typeshed says int; asyncio takes any number of seconds, as create_connection does)
    if server_side:
        raw, _ = await loop.connect_accepted_socket(lambda: tls, sock)
    else:
        raw, _ = await loop.create_connection(lambda: tls, sock=sock)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            # The cancel came after the handshake completed: the protocol has its transport
            # and may serve a carrier already, so the connection is its own now. Too late to
            # undo; the set-up is over and reports so (the canceller awaits it, and must not
            # close a socket a live transport holds).
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return tls.app_transport(), protocol
        raw.abort()
        raise
    except BaseException:
        raw.abort()
        raise
    return tls.app_transport(), protocol
