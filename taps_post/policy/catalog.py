"""The stack catalogue: what each protocol stack offers, as the facts the decision core ranks by.

Rule 1: a stack's facts (features, schemes, IP protocol, capabilities, tie-break order) live
here as data and nowhere else. Every reader (key validation, decide(), the JSON Schemas, the
docs tables) asks this module when it runs, never at import time, so a stack registered later
is known everywhere at once (docs/architecture.md, "Adding a stack").
Rule 2: the table is replaced, never mutated: each change publishes a new immutable snapshot
and bumps `version()`. A reader sees one consistent table, and a cache keyed on the version
can never serve a verdict about an older table.
Rule 3: facts only. The code that runs a stack is registered next to it by
`taps_post.stacks.register(info, impl)`, which calls `register_info` here.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "StackInfo",
    "info",
    "infos",
    "names",
    "register_info",
    "registered",
    "schemes",
    "unregister_info",
    "version",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
"""A stack name is the leaf of a `stack.NAME` key, so it cannot hold a dot."""
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+-]*$")


@dataclass(frozen=True, slots=True)
class StackInfo:
    """The facts of one stack. Frozen, so `dataclasses.replace(info("tcp"), name="tcp-alt")`
    is how a variant is made and no reader can change a registered stack behind the catalogue's
    back."""

    name: str
    ip_protocol: Literal["tcp", "udp"]
    """What the stack runs over on the wire: one TCP-family and one UDP-family stack can
    share a port number."""
    features: frozenset[str]
    """Protocol-level preference keys of the property registry the stack offers (`secure`,
    `multistreaming`, ...); `prohibit`/`require` on a key judge the stack by this set."""
    schemes: tuple[str, ...] = ()
    """URL schemes the stack may serve (`https`, `tls`, ...); the bare host:port form may be
    served by every stack."""
    stream_capable: bool = False
    """Carries a byte stream (framing needed for messages)."""
    multipath_capable: bool = False
    """Uses several paths at once; excluded while `multipath` is `disabled`."""
    order: int = 0
    """Tie-break: between candidates equal on everything else the lower order is tried first
    (equal orders fall back to the name)."""
    alpn: tuple[str, ...] = ()
    """The ALPN protocol ids the stack can speak (RFC 7301): an SVCB/HTTPS record offers the
    stack when its ALPN set holds one of them (docs/resolution.md). Empty: no ALPN, so an
    HTTPS record never offers it."""
    ech: bool = False
    """Can send Encrypted Client Hello; `security.ech: require` refuses every stack that
    cannot (no built-in stack can: neither the stdlib nor aioquic sends ECH)."""
    dane: Literal["none", "leaf", "chain"] = "none"
    """How the stack checks a peer against TLSA records (`security.dane`, RFC 7671):
    "chain" sees the peer's whole certificate chain, "leaf" only its leaf certificate (so a
    DANE-TA record must carry the anchor certificate itself, `names.usable(leaf_only=True)`),
    "none" does not check TLSA at all, so `security.dane: require` excludes it: a stack that
    ignores TLSA must never meet a DANE requirement silently."""
    rendezvous: bool = False
    """Runs over a path the runtime establishes between two peers (an ICE pair,
    `AttemptSpec.path`), never over a socket of its own: a candidate only for a rendezvous
    Remote (the `rendezvous` scheme, which only such stacks serve), never for any other
    target, the bare host:port form included (docs/rendezvous.md)."""

    def __post_init__(self) -> None:
        # Checked here, not at registration, so an invalid StackInfo cannot exist at all.
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"stack name {self.name!r}: expected letters, digits, '-' or '_'")
        if self.ip_protocol not in ("tcp", "udp"):
            raise ValueError(f"stack {self.name}: ip_protocol must be 'tcp' or 'udp', "
                             f"got {self.ip_protocol!r}")
        features = frozenset(self.features)
        if not all(isinstance(f, str) and f for f in features):
            raise ValueError(f"stack {self.name}: features must be non-empty strings")
        object.__setattr__(self, "features", features)
        if isinstance(self.schemes, str):
            raise ValueError(f"stack {self.name}: schemes must be a tuple of schemes, not a str")
        schemes_ = tuple(self.schemes)
        for s in schemes_:
            if not isinstance(s, str) or not _SCHEME_RE.match(s) or s == "hostport":
                raise ValueError(f"stack {self.name}: {s!r} is not a URL scheme")
        object.__setattr__(self, "schemes", schemes_)
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise ValueError(f"stack {self.name}: order must be an integer")
        if isinstance(self.alpn, str):
            raise ValueError(f"stack {self.name}: alpn must be a tuple of ALPN ids, not a str")
        alpn = tuple(self.alpn)
        if not all(isinstance(a, str) and a for a in alpn):
            raise ValueError(f"stack {self.name}: ALPN ids must be non-empty strings")
        object.__setattr__(self, "alpn", alpn)
        if not isinstance(self.ech, bool):
            raise ValueError(f"stack {self.name}: ech must be true or false")
        if not isinstance(self.rendezvous, bool):
            raise ValueError(f"stack {self.name}: rendezvous must be true or false")
        if self.rendezvous and self.schemes != ("rendezvous",):
            raise ValueError(f"stack {self.name}: a rendezvous stack serves the rendezvous "
                             "scheme and no other")
        if "rendezvous" in self.schemes and not self.rendezvous:
            raise ValueError(f"stack {self.name}: only a rendezvous stack serves the "
                             "rendezvous scheme")
        if self.dane not in ("none", "leaf", "chain"):
            raise ValueError(f"stack {self.name}: dane must be 'none', 'leaf' or 'chain', "
                             f"got {self.dane!r}")

    @property
    def secure(self) -> bool:
        """Encrypts and authenticates (derived from the `secure` feature, so it cannot
        disagree with what `secure: require` selects)."""
        return "secure" in self.features


@dataclass(frozen=True, slots=True)
class _Table:
    """One published state of the catalogue (Rule 2): readers hold it, nobody changes it."""

    version: int
    by_name: Mapping[str, StackInfo]
    infos: tuple[StackInfo, ...]
    names: tuple[str, ...]
    schemes: Mapping[str, tuple[str, ...]]


# The built-in schemes keep this order in messages and schemas; schemes a plug-in brings
# follow, in the order their first stack sorts.
_SCHEME_ORDER = ("https", "tls", "tcp", "udp", "quic", "rendezvous")


def _table(by_name: Mapping[str, StackInfo], version: int) -> _Table:
    infos_ = tuple(sorted(by_name.values(), key=lambda i: (i.order, i.name)))
    seen: dict[str, list[str]] = {}
    for i in infos_:
        for s in i.schemes:
            seen.setdefault(s, []).append(i.name)
    rank = {s: n for n, s in enumerate(_SCHEME_ORDER)}
    order = sorted(seen, key=lambda s: rank.get(s, len(rank)))  # stable: first appearance
    return _Table(version, MappingProxyType(dict(by_name)), infos_,
                  tuple(i.name for i in infos_),
                  MappingProxyType({s: tuple(seen[s]) for s in order}))


_ALWAYS = frozenset({"fullChecksumSend", "fullChecksumRecv", "softErrorNotify",
                     "activeReadBeforeSend"})
_RELIABLE = frozenset({"reliability", "preserveOrder", "congestionControl", "keepAlive"})

_HTTP_TCP = ("h2", "http/1.1")

_TLS_DANE: Literal["leaf", "chain"] = "chain" if sys.version_info >= (3, 13) else "leaf"
"""The stdlib's TLS shows the peer's chain from Python 3.13 (SSLObject.get_unverified_chain);
before that only its leaf (stacks/tls.py PEER_CHAIN)."""

_BUILTIN = (
    StackInfo("tcp", "tcp", _ALWAYS | _RELIABLE | {"zeroRttMsg"}, ("tcp",),
              stream_capable=True, order=0),
    StackInfo("tls", "tcp", _ALWAYS | _RELIABLE | {"secure"}, ("https", "tls"),
              stream_capable=True, order=1, alpn=_HTTP_TCP, dane=_TLS_DANE),
    StackInfo("quic", "udp", _ALWAYS | _RELIABLE | {"preserveMsgBoundaries",
                                                    "perMsgReliability", "multistreaming",
                                                    "zeroRttMsg", "secure"},
              ("https", "quic"), order=2, alpn=("h3",), dane="chain"),
    StackInfo("mptcp", "tcp", _ALWAYS | _RELIABLE, ("tcp",), stream_capable=True,
              multipath_capable=True, order=3),
    StackInfo("tls-mptcp", "tcp", _ALWAYS | _RELIABLE | {"secure"}, ("https", "tls"),
              stream_capable=True, multipath_capable=True, order=4, alpn=_HTTP_TCP,
              dane=_TLS_DANE),
    StackInfo("udp", "udp", _ALWAYS | {"preserveMsgBoundaries", "zeroRttMsg"}, ("udp",),
              order=5),
    # QUIC between two peers over an ICE path (stacks/quic/peer.py, docs/rendezvous.md):
    # authenticated by the certificate fingerprints the peers exchanged, never by a CA.
    StackInfo("quic-ice", "udp", _ALWAYS | _RELIABLE | {"preserveMsgBoundaries",
                                                        "perMsgReliability", "multistreaming",
                                                        "secure"},
              ("rendezvous",), order=6, rendezvous=True),
)

_lock = threading.Lock()
_current = _table({i.name: i for i in _BUILTIN}, 0)


def version() -> int:
    """A counter that changes on every registration or removal: key caches on it."""
    return _current.version


def names() -> tuple[str, ...]:
    """Every stack, in tie-break order."""
    return _current.names


def infos() -> tuple[StackInfo, ...]:
    """Every stack's facts, in tie-break order."""
    return _current.infos


def info(name: str) -> StackInfo:
    """The facts of one stack; KeyError for a name the catalogue does not hold."""
    return _current.by_name[name]


def schemes() -> dict[str, tuple[str, ...]]:
    """URL scheme -> the stacks that may serve it, in tie-break order (a fresh dict: the
    caller may keep or change it without touching the catalogue)."""
    return dict(_current.schemes)


def register_info(new: StackInfo) -> None:
    """Add a stack's facts, or replace those of a stack with the same name."""
    global _current
    if not isinstance(new, StackInfo):
        raise TypeError(f"expected a StackInfo, got {type(new).__name__}")
    with _lock:
        if _current.by_name.get(new.name) == new:
            return  # nothing changes, so caches keyed on the version stay valid
        by_name = dict(_current.by_name)
        by_name[new.name] = new
        _current = _table(by_name, _current.version + 1)


def unregister_info(name: str) -> StackInfo | None:
    """Remove a stack's facts (returned; None if there were none). Meant for plug-ins that
    unload and for tests; removing a built-in stack makes it unknown to validation too."""
    global _current
    with _lock:
        old = _current.by_name.get(name)
        if old is None:
            return None
        by_name = dict(_current.by_name)
        del by_name[name]
        _current = _table(by_name, _current.version + 1)
        return old


@contextmanager
def registered(new: StackInfo) -> Iterator[StackInfo]:
    """Register `new` for the duration of a `with` block, then restore what was there."""
    previous = _current.by_name.get(new.name)
    register_info(new)
    try:
        yield new
    finally:
        if previous is None:
            unregister_info(new.name)
        else:
            register_info(previous)
