"""Fork requests on stream stacks (draft 2.1): a fork arrives at the peer's parent carrier.

On QUIC a fork is a new stream (the stack's `open_sibling`). On TCP and TLS it is a new
connection, and a new connection alone says nothing about which Association it belongs to.
This module is the small protocol that says it, in control frames of the length-prefix
framer (core/framing.py, Rule 4: 0xFFFFFFFF, u16 length, payload), so only the two
taps_post endpoints ever see it.

Wire format: each payload is an ASCII verb, optionally followed by one space and a 16-byte
nonce (`secrets.token_bytes`): HELLO, HELLO <nonce>, CHALLENGE <nonce>, FORK <nonce>,
REQUEST <nonce>, REFUSE [<nonce>], OK, LATE.

Client C forks its carrier P (to server S, accepted there as P'):
1. C opens a connection N to P's candidate (same stack, interface, addresses, settings and
   Association) and sends HELLO on N.
2. S's Listener holds every new length-prefixed stream connection until its first byte or a
   short hold (runtime/listener.py, Rule 6), so it sees the HELLO before N reaches anyone; it
   answers CHALLENGE <n> on N (n single use, expires after NONCE_TTL seconds).
3. C sends FORK <n> on P. The nonce is only honoured on a carrier the same Listener accepted:
   whoever controls P also controls N (over TLS both are authenticated connections).
4. S builds the child on P'.association, hands it to `P'.deliver_fork(child)` (P'.accept()
   gets it, never the Listener's queue) and answers OK on N; REFUSE when P' refuses forks.
5. C's fork() returns the child on P's Association.
A HELLO that arrives after the hold (the connection already went to the application) is
answered LATE; C closes N and tries again on a new connection, at most RETRIES times.
C waits for each answer max(0.2 s, 4 x P's measured RTT), at most connTimeout. No answer,
an answer that is not the protocol (an echo of the HELLO, a message, a close): the peer is
not taps_post, N is closed and fork() raises ForkRefusedError, unless carrier.forkParallel
is true: then fork() returns a plain new connection to the same candidate (a fresh one: N
carried bytes the peer could not parse), and later forks on that Association go plain at
once. REFUSE from a taps_post peer is always ForkRefusedError.

An accepted carrier P' forks by sending REQUEST <r> on P' (only once its peer has spoken the
protocol on P'.association: anything else would drop control bytes into an application that
cannot parse them, so it is a UsageError). C (watching P, `watch()`) opens N to the same
candidate and sends HELLO <r> on N; S matches r, answers OK and P'.fork() returns the child;
C hands its side to `P.deliver_fork(child)`. C answers REFUSE <r> on P when it cannot fork.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import stacks
from ..core.framing import LengthPrefixFramer
from ..core.settings import Settings
from ..errors import ConnectionClosedError, ForkRefusedError, UsageError
from ..stacks.base import AttemptSpec
from ..stacks.transient import Transient
from .association import Association
from .carrier import Carrier
from .endpoints import hostport

__all__ = ["CHALLENGE", "FORK", "HELLO", "LATE", "MAX_ANSWERING", "MAX_PENDING", "NONCE_SIZE",
           "NONCE_TTL", "OK", "REFUSE", "REQUEST", "RETRIES", "ForkServer", "answer_timeout",
           "fork_stream", "speaks_fork", "watch"]

HELLO, CHALLENGE, FORK, REQUEST, REFUSE, OK, LATE = (
    b"HELLO", b"CHALLENGE", b"FORK", b"REQUEST", b"REFUSE", b"OK", b"LATE")
RETRIES = 2
"""New connections a fork tries after a LATE (its HELLO came after the Listener's hold)."""
NONCE_SIZE = 16
NONCE_TTL = 5.0
"""Seconds a CHALLENGE or REQUEST nonce stays valid; after that the held connection closes."""
MAX_PENDING = 256
"""Outstanding nonces per Listener: a peer opening HELLO connections without ever sending
FORK gets REFUSE beyond this, so it cannot grow the table."""
MAX_ANSWERING = 8
"""Fork requests a client answers at once per carrier; more get REFUSE."""
_MIN_WAIT = 0.2


def _frame(verb: bytes, nonce: bytes | None = None) -> bytes:
    return verb if nonce is None else verb + b" " + nonce


def _parse(payload: bytes) -> tuple[bytes, bytes | None]:
    verb, sep, arg = bytes(payload).partition(b" ")
    if not sep:
        return verb, None
    return verb, (arg if len(arg) == NONCE_SIZE else b"")


def speaks_fork(transient: Transient | None) -> bool:
    """Whether this Transient can carry fork requests: a stack over a TCP connection (TCP,
    TLS, MPTCP) with the length-prefix framer. QUIC forks are streams, and other framers
    have no control frames."""
    if transient is None or type(transient.framer) is not LengthPrefixFramer:
        return False
    try:
        return stacks.info(transient.stack).ip_protocol == "tcp"
    except KeyError:
        return False


def answer_timeout(transient: Transient | None, settings: Settings | None) -> float:
    """How long to wait for the peer's next control frame: max(0.2 s, 4 x the measured RTT),
    at most connTimeout. RTT from the kernel's TCP_INFO (path_stats), else the connect time."""
    rtt_ms: float | None = None
    if transient is not None:
        rtt_ms = transient.path_stats().rtt_ms
        if rtt_ms is None:
            rtt_ms = transient.rtt_ms
    wait = max(_MIN_WAIT, 4.0 * (rtt_ms or 0.0) / 1000.0)
    if settings is not None:
        wait = min(wait, max(settings.conn_timeout, _MIN_WAIT))
    return wait


# ---- client side (the initiating endpoint) ---------------------------------------------------

class _NotTaps(Exception):
    """The peer answered in a way no taps_post endpoint would (or not at all)."""


class _Refused(Exception):
    """A taps_post peer said REFUSE."""


class _Late(Exception):
    """A taps_post peer said LATE: our HELLO came after its hold; try a new connection."""


class _Join:
    """One new connection N waiting for the peer's answers (control frames on N)."""

    def __init__(self, transient: Transient) -> None:
        self.transient = transient
        self.answers: asyncio.Queue[bytes | BaseException] = asyncio.Queue()

    def on_control(self, payload: bytes) -> None:
        self.answers.put_nowait(bytes(payload))

    def on_message(self, message: Any) -> bool:
        # Before the CHALLENGE a message means the peer is not taps_post (an echo server, a
        # server speaking first): refuse. The callback detaches itself (returns False).
        self.answers.put_nowait(_NotTaps("it sent a message instead of a fork answer"))
        return False

    def fail(self, exc: BaseException) -> None:
        self.answers.put_nowait(exc)

    async def expect(self, verb: bytes, timeout: float) -> bytes | None:
        """The nonce (or None) of the next answer, which must be `verb`."""
        t = self.transient
        getter = asyncio.ensure_future(self.answers.get())
        closed: asyncio.Future[Any] = t.closed  # asyncio.wait never cancels what it waits on
        waiting: set[asyncio.Future[Any]] = {getter, closed}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            answer = getter.result()
            if isinstance(answer, BaseException):
                raise answer
            got, nonce = _parse(answer)
            if got == REFUSE:
                raise _Refused()
            if got == LATE:
                raise _Late()
            if got != verb or nonce == b"":
                raise _NotTaps(f"it answered {answer[:24]!r}, not {verb.decode()}")
            return nonce
        if closed in done or t.closed.done():
            raise _NotTaps("it closed the new connection")
        raise _NotTaps(f"no answer within {timeout * 1000:.0f} ms")


_joins: dict[bytes, _Join] = {}
"""Client forks waiting for OK, by the nonce sent in FORK (a REFUSE <nonce> on the parent
ends them at once)."""
_answering: weakref.WeakKeyDictionary[Transient, int] = weakref.WeakKeyDictionary()
"""REQUESTs being answered, per parent Transient (at most MAX_ANSWERING at once)."""
_plain_peers: weakref.WeakSet[Association] = weakref.WeakSet()
"""Associations whose peer is known not to speak fork requests (carrier.forkParallel)."""


def watch(carrier: Carrier) -> None:
    """Answer the peer's fork requests (REQUEST) and refusals on `carrier`'s current
    Transient; the handler finds the carrier through `transient.owner`. fork_stream()
    watches the parent before its first FORK and every child it makes: a server only sends
    REQUEST on an Association whose peer forked (so proved it speaks the protocol), and
    every carrier of that Association on this side was watched then."""
    t = carrier.transient
    if t is not None and speaks_fork(t):
        t.on_control = functools.partial(_client_control, t)


def _client_control(transient: Transient, payload: bytes) -> None:
    verb, nonce = _parse(payload)
    if verb == REFUSE and nonce:
        join = _joins.pop(nonce, None)
        if join is not None:
            join.fail(_Refused())
    elif verb == REQUEST and nonce:
        carrier = transient.owner
        if not isinstance(carrier, Carrier):
            return
        busy = _answering.get(transient, 0)
        if busy >= MAX_ANSWERING:  # a server cannot make us open connections without bound
            transient.send_control(_frame(REFUSE, nonce))
            return
        _answering[transient] = busy + 1
        carrier.spawn(_answer_request(carrier, transient, nonce))


async def _answer_request(parent: Carrier, transient: Transient, nonce: bytes) -> None:
    """The server asked for a fork: open it towards the server; our side goes to the
    parent's accept() (a task the parent owns: its close() cancels it)."""
    try:
        try:
            child = await _fork(parent, request=nonce)
        except Exception:
            if transient.is_open:
                transient.send_control(_frame(REFUSE, nonce))
            return
        if not parent.deliver_fork(child):
            await child.close()
    finally:
        left = _answering.get(transient, 1) - 1
        if left > 0:
            _answering[transient] = left
        else:
            _answering.pop(transient, None)


async def fork_stream(parent: Carrier) -> Carrier:
    """fork() on a TCP or TLS carrier that this side initiated: a new connection that joins
    the parent's Association at the peer (module header). ForkRefusedError when the peer
    is not taps_post (unless carrier.forkParallel) or refuses."""
    return await _fork(parent, request=None)


async def _connect(parent: Carrier) -> Transient:
    """A new Transient to the parent's candidate, with its settings and Association."""
    candidate, settings, remote, framer = (parent.candidate, parent.settings, parent.remote,
                                           parent.framer)
    association = parent.association
    if candidate is None or settings is None or remote is None or framer is None:
        raise UsageError("fork() needs a carrier this side initiated (its candidate, "
                         "settings and Remote)")
    impl = stacks.get(candidate.stack)
    if impl is None:
        raise ConnectionClosedError(f"the {candidate.stack} stack is no longer registered")
    local = parent.local
    spec = AttemptSpec(candidate=candidate, host=remote.host, settings=settings,
                       association=association, framer=framer,
                       pinned=tuple(remote.certificates),
                       identity=tuple(local.certificates) if local is not None else ())
    try:
        async with asyncio.timeout(settings.conn_timeout):
            return await impl.connect(spec)
    except (OSError, TimeoutError) as exc:
        raise ForkRefusedError(f"the fork's new connection to {_peer(parent)} failed: "
                               f"{exc or type(exc).__name__}") from exc


async def _fork(parent: Carrier, *, request: bytes | None) -> Carrier:
    if not parent.is_active:
        await parent.activate()
    pt = parent.transient
    settings = parent.settings
    if pt is None or not speaks_fork(pt):
        what = f"{type(pt.framer).__name__} on {pt.stack}" if pt is not None else "no stack"
        raise UsageError(f"fork() cannot announce itself to the peer ({what}): fork requests "
                         "need a TCP or TLS carrier with the length-prefix framer. Policy "
                         "carrier.forkParallel: true opens a plain parallel connection "
                         "instead")
    if pt.on_control is None:
        watch(parent)
    parallel = request is None and settings is not None and settings.fork_parallel
    if parallel and parent.association in _plain_peers:
        return parent.sibling(await _connect(parent))
    wait = answer_timeout(pt, settings)
    for attempt in range(RETRIES + 1):
        try:
            n = await _join(parent, pt, request, wait)
        except _Late:
            if attempt < RETRIES:
                continue
            raise ForkRefusedError(f"the peer ({_peer(parent)}) held the fork connection "
                                   f"shorter than it took us to announce it, {RETRIES + 1} "
                                   "times") from None
        except _Refused:
            raise ForkRefusedError(f"the peer ({_peer(parent)}) refused the fork: its carrier "
                                   "does not accept forks (its accept callback returned "
                                   "False, or it is closed)") from None
        except _NotTaps as exc:
            if parallel:
                _plain_peers.add(parent.association)
                return parent.sibling(await _connect(parent))
            raise ForkRefusedError(
                f"the peer ({_peer(parent)}) does not understand fork requests: {exc}; it is "
                "not a taps_post endpoint. Policy carrier.forkParallel: true opens a plain "
                "parallel connection instead") from None
        child = parent.sibling(n)
        watch(child)
        return child
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def _join(parent: Carrier, pt: Transient, request: bytes | None,
                wait: float) -> Transient:
    """One new connection announced to the peer (module header, steps 1-4): the Transient
    once the peer said OK; closed and _Late/_Refused/_NotTaps otherwise."""
    n = await _connect(parent)
    join = _Join(n)
    n.on_control = join.on_control
    sent: bytes | None = None
    try:
        if request is None:
            n.set_callback(join.on_message)
            n.send_control(HELLO)
            sent = await join.expect(CHALLENGE, wait)
            assert sent is not None
            n.set_callback(None)  # from here on, messages belong to the child carrier
            _joins[sent] = join
            pt.send_control(_frame(FORK, sent))
        else:
            n.send_control(_frame(HELLO, request))
        await join.expect(OK, wait)
    except BaseException:
        n.abort()
        raise
    finally:
        if sent is not None:
            _joins.pop(sent, None)
    return n


def _peer(carrier: Carrier) -> str:
    addr = carrier.remote_address
    return f"{carrier.stack} {hostport((addr[0], addr[1]))}" if addr else carrier.stack


# ---- server side (a Listener's accepted carriers) ----------------------------------------------

@dataclass(slots=True)
class _Challenge:
    transient: Transient
    timer: asyncio.TimerHandle


@dataclass(slots=True)
class _Request:
    parent: Carrier
    future: asyncio.Future[Carrier]
    timer: asyncio.TimerHandle


@dataclass(slots=True, eq=False)
class _Hold:
    """A new connection the Listener holds until its first byte (or the hold ends)."""

    transient: Transient
    admit: Callable[[Transient], None]
    timer: asyncio.TimerHandle | None = None
    fork: bool = False
    """It said HELLO: a fork connection, never handed to the Listener's application."""
    done: bool = False


@dataclass
class ForkServer:
    """The server half, one per Listener: nonces are valid only among the carriers of the
    Listener that issued them."""

    tracer: Any = None
    challenges: dict[bytes, _Challenge] = field(default_factory=dict)
    requests: dict[bytes, _Request] = field(default_factory=dict)
    holds: set[_Hold] = field(default_factory=set)
    proven: weakref.WeakSet[Association] = field(default_factory=weakref.WeakSet)
    """Associations whose peer has spoken the protocol (it forked towards us)."""
    closing: set[asyncio.Task[None]] = field(default_factory=set)
    accepting: bool = True
    """False once the Listener stopped accepting: forks cannot connect back any more."""

    # -- holding new connections (Listener, Rule 6) --

    def hold(self, transient: Transient, delay: float,
             admit: Callable[[Transient], None]) -> None:
        """Keep `transient` from the application until its first byte or `delay` seconds:
        a HELLO makes it a fork connection; anything else (or nothing) admits it."""
        loop = asyncio.get_running_loop()
        held = _Hold(transient, admit)
        transient.on_control = functools.partial(self._held_control, held)
        held.timer = loop.call_later(delay, self._release, held)
        self.holds.add(held)
        transient.first_data.add_done_callback(lambda _f: self._release(held))

    def _release(self, held: _Hold) -> None:
        if held.done:
            return
        held.done = True
        self.holds.discard(held)
        if held.timer is not None:
            held.timer.cancel()
        if not held.fork:
            held.admit(held.transient)

    def _held_control(self, held: _Hold, payload: bytes) -> None:
        verb, nonce = _parse(payload)
        t = held.transient
        if verb != HELLO or held.fork or nonce == b"":
            return  # only the first HELLO counts; the client talks on its parent now
        held.fork = True
        if nonce is None:
            if len(self.challenges) >= MAX_PENDING or not self.accepting:
                self._refuse(t)
                return
            n = secrets.token_bytes(NONCE_SIZE)
            timer = asyncio.get_running_loop().call_later(NONCE_TTL, self._expire, n)
            self.challenges[n] = _Challenge(t, timer)
            t.send_control(_frame(CHALLENGE, n))
            return
        req = self.requests.pop(nonce, None)
        if req is None or req.future.done():
            self._refuse(t)
            return
        req.timer.cancel()
        child = req.parent.sibling(t)
        t.on_control = functools.partial(self.on_parent_control, t)
        t.send_control(OK)
        req.future.set_result(child)

    def _expire(self, nonce: bytes) -> None:
        c = self.challenges.pop(nonce, None)
        if c is not None:
            c.transient.abort()

    def _refuse(self, transient: Transient) -> None:
        if transient.is_open:
            transient.send_control(REFUSE)
        task = asyncio.ensure_future(transient.aclose())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    # -- control frames on accepted carriers --

    def on_parent_control(self, transient: Transient, payload: bytes) -> None:
        """Control frames on a carrier this Listener accepted: FORK (the peer forks that
        carrier), REFUSE (the peer will not answer our REQUEST), and a HELLO that came after
        the hold (LATE)."""
        verb, nonce = _parse(payload)
        if verb == HELLO:
            # A fork connection announced after the hold: it is the application's already.
            # The client retries on a new connection.
            transient.send_control(LATE)
            return
        if not nonce:
            return
        parent = transient.owner
        if verb == FORK and isinstance(parent, Carrier):
            c = self.challenges.pop(nonce, None)
            if c is None or not c.transient.is_open:
                transient.send_control(_frame(REFUSE, nonce))
                return
            c.timer.cancel()
            self.proven.add(parent.association)
            child = parent.sibling(c.transient)
            c.transient.on_control = functools.partial(self.on_parent_control, c.transient)
            if parent.deliver_fork(child):
                c.transient.send_control(OK)
                if self.tracer is not None:
                    self.tracer.emit("listener.fork", stack=child.stack,
                                     remote=child.remote_address)
            else:
                self._refuse(c.transient)
        elif verb == REFUSE:
            req = self.requests.pop(nonce, None)
            if req is not None and not req.future.done():
                req.timer.cancel()
                req.future.set_exception(ForkRefusedError(
                    "the peer refused the fork request (its carrier could not fork or "
                    "does not accept forks)"))

    # -- accepted carriers fork too --

    async def fork(self, parent: Carrier) -> Carrier:
        """fork() on an accepted carrier: REQUEST <r> on it; the peer connects back and the
        connection carrying HELLO <r> is the child."""
        t = parent.transient
        if t is None or not t.is_open:
            raise ConnectionClosedError("an accepted carrier cannot fork once it is closed")
        if not speaks_fork(t):
            raise UsageError("fork requests need a TCP or TLS carrier with the length-prefix "
                             "framer")
        if parent.association not in self.proven:
            raise UsageError(
                "this accepted carrier cannot fork yet: its peer has not shown that it speaks "
                "taps_post fork requests (it has not forked towards this Listener), and a "
                "request would reach an application that cannot parse it. Fork from the "
                "initiating side")
        if not self.accepting:
            raise UsageError("the Listener stopped accepting, so the peer cannot connect "
                             "back for the fork")
        loop = asyncio.get_running_loop()
        r = secrets.token_bytes(NONCE_SIZE)
        future: asyncio.Future[Carrier] = loop.create_future()
        wait = (parent.settings.conn_timeout if parent.settings is not None else 10.0) \
            + 2 * answer_timeout(t, parent.settings)

        def expire() -> None:
            self.requests.pop(r, None)
            if not future.done():
                future.set_exception(ForkRefusedError(
                    f"the peer did not fork back within {wait:.1f} s"))

        self.requests[r] = _Request(parent, future, loop.call_later(wait, expire))
        t.send_control(_frame(REQUEST, r))
        try:
            return await future
        finally:
            req = self.requests.pop(r, None)
            if req is not None:
                req.timer.cancel()

    async def close(self) -> None:
        """Abort held and half-forked connections, fail outstanding requests."""
        self.accepting = False
        for held in list(self.holds):
            held.done = True
            if held.timer is not None:
                held.timer.cancel()
            held.transient.abort()
        self.holds.clear()
        for c in self.challenges.values():
            c.timer.cancel()
            c.transient.abort()
        self.challenges.clear()
        for req in self.requests.values():
            req.timer.cancel()
            if not req.future.done():
                req.future.set_exception(ForkRefusedError("the Listener closed"))
        self.requests.clear()
        if self.closing:
            await asyncio.gather(*self.closing, return_exceptions=True)
