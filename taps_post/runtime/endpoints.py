"""Local and Remote endpoints (draft 2.4, 2.5, Appendix A).

Rule 1: a Remote resolves in passes until complete (URL -> name + port -> addresses -> one
address), and each pass is a new frozen value, so a Remote can be logged, compared and reused
at any stage. `lookup()` is the name pass (the same Remote with all its addresses);
`resolve()` is the draft's Resolve(): the list of more specific Remotes, one per address, each
`complete`. A resolved Remote keeps its name (TLS verifies the peer against it).
Rule 2: `lookup()` resolves through runtime/resolution.py, the same code a carrier's
establishment uses: the hosts file first, then the system's nameservers through the DNS
client (A and AAAA together, TTL-true cache), and the event loop's getaddrinfo only when no
nameserver is configured or every one fails; never a blocking call on the loop thread.
Rule 3: a name that does not resolve is an error naming it (`ResolutionError`), never a Remote
with no addresses: nothing downstream has to tell "resolved to nothing" from "not resolved".
Rule 4: an endpoint's repr and `describe()` name its certificates (ours, pinned and trusted
ones) by fingerprint only, never their PEM text or key, so a Local holding our private key can
be logged or named in an exception message (docs/architecture.md, "Errors and certificates").
Rule 5: an endpoint is checked when it is made, however it is made (`parse`, `ip`, the
constructor, `replace`): a host is an IP address or a DNS name (`host_name_problem`: no empty
or over-long labels, no `256.256.256.256`), a port is 0-65535, an interface name is one Linux
could have; anything else is an ArgumentError naming the value (repr'd and cut short), raised
before a resolver or a socket sees it.
Rule 6: a rendezvous Remote (`Remote.rendezvous`, draft 3.1.3) names a peer by identity
(`host`, a DNS-like name; scheme `rendezvous`, port 0) and how to meet it (`via`: the
rendezvous point's Remote, or an application's own `Signalling`); it has no addresses to
resolve, the ICE path is found when it is activated (runtime/rendezvous.py). The peer's
`certificates`, when given, are pins learned out of band: then not even the rendezvous
point can put another peer in its place. Identities are kept in lower case on both sides
(`Local.identity`, the Remote's host): they are names, and the two peers order them the same
way to agree on their roles.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..certs import Certificate
from ..decision.environment import host_name_problem, interface_name_problem, shown
from ..decision.request import Request, is_ip_address, parse_target
from ..errors import ArgumentError, Diagnostic, InputError

if TYPE_CHECKING:
    from .signalling import Signalling

__all__ = ["Local", "Remote", "has_identity", "hostport", "identity_problem"]


def _parse(target: str) -> Request:
    """parse_target(), which caches its results. Any ValueError it lets through (a port of
    Unicode digits int() cannot read, `host:¹`) is the target's fault too: an InputError
    naming it."""
    try:
        return parse_target(target)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError([Diagnostic("target", f"{shown(target, 80)}: not a target "
                                               f"({exc})")]) from None


@dataclass(frozen=True, slots=True)
class Local:
    """Where we are: an interface and/or address, a port, our certificates, and the
    certificates we trust our peers by (a Listener's client authentication)."""

    interface: str | None = None
    address: str | None = None
    port: int = 0
    """The local port: a Listener's, or the source port an initiated carrier binds (0: any)."""
    certificates: Sequence[Certificate] = ()
    """Our identity: end-entity certificates with their private keys."""
    trusted: Sequence[Certificate] = ()
    """CA certificates, or pinned client certificates, a Listener on this Local verifies
    clients against when policy `security.clientAuth` is request or require (draft 2.5:
    "certificates ... to identify this endpoint", and the peers it accepts)."""
    identity: str | None = None
    """Our name at a rendezvous point (a DNS-like name): the peer's rendezvous Remote names
    us by it. The rendezvous point accepts it only from a client certificate naming it.
    Kept in lower case, as `Remote.rendezvous` keeps the peer's (Rule 6: both ends must
    agree on it, and on which of two identities sorts first)."""

    def __post_init__(self) -> None:
        _check_port("Local", self.port)
        if self.identity is not None:
            if (why := identity_problem(self.identity)) is not None:
                raise ArgumentError(f"Local.identity: {why}")
            object.__setattr__(self, "identity", self.identity.lower())
        if self.address is not None:
            _check_address("Local.address", self.address)
        if self.interface is not None and (why := interface_name_problem(self.interface)):
            raise ArgumentError(f"Local.interface: {why}")
        for name in ("certificates", "trusted"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not all(
                    isinstance(c, Certificate) for c in value):
                raise ArgumentError(f"Local.{name} must be a sequence of Certificate "
                                    "(taps_post.certs)")
            # A tuple: a caller's list may change later, and a frozen Local stays hashable.
            object.__setattr__(self, name, tuple(value))

    def describe(self) -> str:
        """What the Local selects, for messages: interface, address and port (a Local's
        certificates never decide which candidate it matches)."""
        parts = [f"interface {self.interface}" if self.interface is not None else "",
                 f"address {self.address}" if self.address is not None else "",
                 f"port {self.port}" if self.port else ""]
        return ", ".join(p for p in parts if p) or "any local address"

    def __repr__(self) -> str:
        return (f"Local(interface={self.interface!r}, address={self.address!r}, "
                f"port={self.port}, certificates={_certs(self.certificates)}, "
                f"trusted={_certs(self.trusted)}, identity={self.identity!r})")


@dataclass(frozen=True, slots=True)
class Remote:
    """Where we go. Forms: URL (`https://h`), named (`Remote(host=h, port=p)`), IP, IP + cert."""

    host: str
    port: int
    scheme: str = "hostport"
    addresses: tuple[str, ...] | None = None
    """None until resolved; IP-literal hosts resolve to themselves."""
    certificates: Sequence[Certificate] = field(default=())
    """Pinned peer certificates: the peer must present one of these."""
    via: Remote | Signalling | None = field(default=None, compare=False)
    """A rendezvous Remote's meeting place (Rule 6): the rendezvous point, or the
    application's own signalling channel. None for every other Remote."""

    def __post_init__(self) -> None:
        if self.scheme == "rendezvous" or self.via is not None:
            if self.scheme != "rendezvous" or self.via is None or self.port != 0 or \
                    self.addresses is not None:
                raise ArgumentError("a rendezvous Remote has scheme 'rendezvous', port 0, no "
                                    "addresses and a `via`: make it with Remote.rendezvous()")
            if (why := identity_problem(self.host)) is not None:
                raise ArgumentError(f"Remote.rendezvous identity: {why}")
            object.__setattr__(self, "host", self.host.lower())  # Rule 6
            if isinstance(self.via, Remote) and self.via.scheme == "rendezvous":
                raise ArgumentError("Remote.rendezvous via: the rendezvous point is reached "
                                    "over TLS, not through another rendezvous")
        if (why := host_name_problem(self.host)) is not None:
            raise ArgumentError(f"Remote host: {why}")
        _check_port("Remote", self.port)
        if self.addresses is not None:
            if isinstance(self.addresses, (str, bytes)):
                raise ArgumentError("Remote.addresses must be a sequence of IP addresses, "
                                    "not a string")
            addresses = tuple(self.addresses)
            for address in addresses:
                _check_address("Remote.addresses", address)
            object.__setattr__(self, "addresses", addresses)

    def __repr__(self) -> str:
        via = "" if self.via is None else f", via={self.via!r}"
        return (f"Remote(host={self.host!r}, port={self.port}, scheme={self.scheme!r}, "
                f"addresses={self.addresses!r}, certificates={_certs(self.certificates)}{via})")

    @classmethod
    def rendezvous(cls, identity: str, *, via: str | Remote | Signalling,
                   certificates: Sequence[Certificate] = ()) -> Remote:
        """The peer named `identity`, met through `via` (draft 3.1.3, Rule 6): both peers
        call `initiate()` at about the same time, each with a Local carrying its own
        `identity` and certificate, and each gets a Carrier to the other.

        `via` is the rendezvous point (a `tls://host:port` target or a Remote, with its
        pinned certificate where it has no CA-signed one), or an object implementing
        `taps_post.Signalling` that carries the offers over the application's own channel.
        `certificates` pin the peer's certificate, learned out of band (optional: without
        them the peer is authenticated by the fingerprint its offer carries)."""
        if isinstance(via, str):
            via = cls.parse(via)
        return cls(identity.lower() if isinstance(identity, str) else identity, 0,
                   "rendezvous", None, tuple(certificates), via)

    @property
    def is_rendezvous(self) -> bool:
        return self.scheme == "rendezvous"

    @classmethod
    def parse(cls, target: str, *, certificates: Sequence[Certificate] = ()) -> Remote:
        req = _parse(target)
        # An IP literal is its own resolution: resolve() then has nothing left to do.
        return cls(req.host, req.port, req.scheme, (req.host,) if req.is_ip_literal else None,
                   tuple(certificates))

    @classmethod
    def ip(cls, address: str, port: int, *, scheme: str = "hostport",
           certificates: Sequence[Certificate] = ()) -> Remote:
        _check_address("Remote.ip", address)
        return cls(address, port, scheme, (address,), tuple(certificates))

    @property
    def target(self) -> str:
        if self.scheme == "rendezvous":
            return f"rendezvous://{self.host}"
        if self.scheme == "hostport":
            return self.hostport
        return f"{self.scheme}://{self.hostport}"

    @property
    def hostport(self) -> str:
        return hostport((self.host, self.port))

    @property
    def is_resolved(self) -> bool:
        """Whether the addresses are known (one or more): `lookup()` has nothing left to do."""
        return bool(self.addresses)

    @property
    def complete(self) -> bool:
        """The draft's Complete(): this Remote names one address and a port, so a stack can
        open a Transient to it without resolving anything (`resolve()` returns [self])."""
        return self.addresses is not None and len(self.addresses) == 1 and self.port != 0

    def request(self, *, app: str | None, kind: str) -> Request:
        return parse_target(self.target, app=app, kind=kind)

    async def lookup(self) -> Remote:
        """The name pass: this Remote with all the addresses its name has, in the resolver's
        order (itself when they are known; an IP literal is its own address).

        Raises ResolutionError, naming the name, when the resolver fails or answers no
        address (Rule 3)."""
        if self.addresses:
            return self
        if self.is_rendezvous:
            raise ArgumentError(f"{self.target} is met through its rendezvous, not resolved")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            pass
        else:
            return replace(self, addresses=(self.host,))
        from .resolution import addresses

        return replace(self, addresses=await addresses(self.host, self.port))

    async def resolve(self) -> list[Remote]:
        """The draft's Resolve() (Appendix A): the more specific Remotes, one per address of
        this one (looked up first when it has none), each `complete`, in the resolver's
        order. Each keeps the name, scheme and pinned certificates: a stack verifies the
        peer against the name whichever address it connects to. A complete Remote resolves
        to itself. Raises ResolutionError when the name has no address (Rule 3)."""
        if self.complete:
            return [self]
        found = await self.lookup()
        return [replace(found, addresses=(address,)) for address in found.addresses or ()]


def _check_port(what: str, port: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int):
        raise ArgumentError(f"{what} port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ArgumentError(f"{what} port {port} is out of range 0-65535")


def _check_address(what: str, address: object) -> None:
    if not isinstance(address, str):
        raise ArgumentError(f"{what}: an IP address is a string, not {type(address).__name__}")
    if not is_ip_address(address):
        raise ArgumentError(f"{what}: {shown(address)} is not an IP address")


def identity_problem(identity: object) -> str | None:
    """Why `identity` cannot name a rendezvous peer (None: it can): a DNS-like name, so
    it can be matched by policy `host:` rules and stand in a certificate's name."""
    if not isinstance(identity, str):
        return f"an identity is a string, not {type(identity).__name__}"
    if not identity or any(c.isspace() for c in identity):
        return f"{shown(identity)} is not an identity (a DNS-like name)"
    try:
        ipaddress.ip_address(identity)
    except ValueError:
        return host_name_problem(identity)
    return f"{shown(identity)} is an IP address, not an identity"


def has_identity(local: Local | None) -> bool:
    """Whether `local` carries a client identity (a certificate with its private key)."""
    return local is not None and any(c.key_pem is not None for c in local.certificates)


def _certs(certificates: Sequence[Certificate]) -> str:
    # repr() of each element, not of the sequence: a caller's list may hold anything, and
    # only a Certificate's own repr is known to leave its key out.
    return "[" + ", ".join(repr(c) if isinstance(c, Certificate) else
                           f"<{type(c).__name__}>" for c in certificates) + "]"


def hostport(address: tuple[str, int]) -> str:
    """`host:port` text of an address, an IPv6 host in brackets (`[::1]:443`)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
