"""`open_socket`: a policy-chosen, raced, connected socket for libraries that take `sock=`.

Rule 1: the socket comes from the same resolve, decide and race as `initiate()`
(establish.py Rule 9): HEv3 passes, the plan cache, attemptDelay, connTimeout, interface
binding, the Association's history. Only the bare TCP and MPTCP stacks are candidates (the
enforced carrier rule `open-socket`); TLS is left to the caller, so a pinned certificate on
the Remote or a client identity on the Local is an ArgumentError here, not a quiet plaintext
connection.
Rule 2: nothing is read from or written to the socket before it is handed over: a server that
speaks first (SMTP, a database) still has its first bytes in the kernel for the caller, and
no Fast Open data rides in the SYN.
Rule 3: the caller owns the socket it gets; every other attempt's socket was closed by the
race. The result is a `RacedSocket`, a `socket.socket` on the winner's descriptor (the
attempt's own object is detached, so exactly one object closes it), non-blocking as asyncio
wants it, carrying the Decision (`explanation`), the winning Candidate and the attempts.
Rule 4: the failures are initiate's: PolicyError when the policy leaves no TCP or MPTCP
candidate (with the rule that excluded them), EstablishmentError when every attempt failed,
each with the Decision.
"""

from __future__ import annotations

import errno
import socket

from ..decision.decision import Candidate, Decision
from ..errors import ArgumentError, Attempt
from ..policy.context import PolicyContext
from ..stacks.base import AttemptSpec
from ..stacks.tcp import BareSocket, StreamStack
from .association import AssociationStore, default_store
from .endpoints import Local, Remote, has_identity
from .establish import EnvSpec, dialler, policy_for, tracer_for
from .trace import TraceCallback

__all__ = ["RacedSocket", "open_socket"]

_SCHEMES = frozenset({"hostport", "tcp"})
"""The targets whose stacks include a bare socket's (Rule 1)."""


class RacedSocket(socket.socket):
    """A connected socket, with how it was chosen (Rule 3)."""

    explanation: Decision
    """The Decision this socket was raced by, as a dry run (`taps-post policy explain`) shows
    it."""
    candidate: Candidate
    """The candidate that won: interface, local and remote address, port, stack."""
    attempts: tuple[Attempt, ...]
    """Every racing attempt: won, failed (with its error), cancelled or not started."""
    stack: str
    """`tcp` or `mptcp`; `tcp` too when an MPTCP attempt's peer fell back to plain TCP."""

    def __repr__(self) -> str:
        base = super().__repr__()
        return f"{base[:-1]}, stack={self.stack!r}>" if base.endswith(">") else base


async def _bare(impl: object, spec: AttemptSpec) -> BareSocket:
    if not isinstance(impl, StreamStack):
        raise OSError(errno.EPROTONOSUPPORT,
                      f"{spec.candidate.stack} cannot hand over a bare socket")
    return await impl.connect_socket(spec)


async def open_socket(
    target: str | Remote,
    *,
    local: Local | None = None,
    policy: PolicyContext | None = None,
    app_name: str | None = None,
    store: AssociationStore | None = None,
    env: EnvSpec = None,
    trace: TraceCallback | None = None,
) -> RacedSocket:
    """A connected TCP or MPTCP socket to `target` (`host:port`, `tcp://host:port`, an IP
    literal or a Remote), chosen and raced by policy as `initiate()` chooses and races a
    carrier, for the libraries that take a ready socket: `asyncio.open_connection(sock=...)`,
    `websockets.connect(uri, sock=...)`, `loop.create_connection(..., sock=...)`
    (docs/integrations.md). The arguments mean what they mean for `initiate()`.
    """
    remote = target if isinstance(target, Remote) else Remote.parse(target)
    if remote.is_rendezvous:
        raise ArgumentError("open_socket: a rendezvous Remote meets its peer over QUIC; "
                            "use tp.initiate() for it")
    if remote.scheme not in _SCHEMES:
        need = "TLS" if remote.scheme in ("https", "tls", "quic") else "datagrams"
        raise ArgumentError(f"open_socket connects TCP or MPTCP only, and TLS is left to the "
                            f"caller; {remote.scheme}:// needs {need}: pass host:port (or "
                            f"tcp://host:port) and let the library wrap TLS, or use "
                            f"tp.initiate()")
    if remote.port == 0:
        raise ArgumentError(f"open_socket: {remote.target} has no port")
    if remote.certificates or has_identity(local):
        raise ArgumentError("open_socket hands over a bare TCP or MPTCP socket and leaves TLS "
                            "to the caller, so it cannot honour pinned certificates or a client "
                            "certificate: use tp.initiate() for those")
    ctx = policy_for(policy, app_name)
    association = (store or default_store).get(remote.hostport, remote=remote, local=local)
    opener = dialler(remote, local, ctx, None, association, env, kind="initiate",
                     tracer=tracer_for(trace), dial=_bare, restriction="open-socket")
    won = await opener(lambda: None)
    bare = won.transient
    sock = RacedSocket(fileno=bare.sock.detach())
    sock.setblocking(False)  # the descriptor already is; make the object agree (Rule 3)
    sock.explanation = won.decision
    sock.candidate = won.candidate
    sock.attempts = won.attempts
    sock.stack = bare.stack
    return sock
