"""The property registry: every policy key, its type, default, level and strictness order.

Rule 1: everything the engine knows about a property key lives in this file as data. The
resolver, the candidate filters, the docs table and the JSON Schema are all derived from it,
so adding a key is one entry here.
Rule 2: nothing here looks at a request, a file or the network.
Rule 3: what each stack offers is not here but in the stack catalogue (`catalog.py`); the
`stack.NAME` key reads its names from there when it is checked, so a stack registered after
import validates like a built-in one.
Rule 4: a key whose values hold a credential is marked secret (`PropertySpec.redact`): its
items are parsed into `Secret`s, strings whose text IS the redacted form
(`turn:alice:***@turn.example:3478`). So every renderer of effective values (explain text,
JSON and DOT, `policy show`, conflicts, lint warnings, logs, repr) shows the redacted form
without knowing that secrets exist, and one added later cannot leak the credential by
accident; only `reveal()` gives it back, to the code that must use it (the ICE agent's TURN
client). A check of such a value never echoes it (`turn_url_problem`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import catalog

__all__ = [
    "DEFAULT_PORTS",
    "DSCP",
    "INTERFACE_TYPES",
    "KINDS",
    "PROFILES",
    "REGISTRY",
    "ItemError",
    "Level",
    "Pref",
    "PropertySpec",
    "Secret",
    "fixed_keys",
    "key_family",
    "known_keys",
    "lookup",
    "nearest",
    "protocol_features",
    "protocol_preferences",
    "redact_turn_url",
    "revealed",
    "stun_server_problem",
    "turn_parts",
    "turn_url_problem",
]


class Pref(enum.Enum):
    """RFC 9622 section 6.2 preference levels; `strength` orders them for tie-breaks."""

    REQUIRE = "require"
    PREFER = "prefer"
    NO_PREFERENCE = "no_preference"
    AVOID = "avoid"
    PROHIBIT = "prohibit"

    @property
    def strength(self) -> int:
        # prohibit > require > avoid > prefer > no_preference (docs/conflict-resolution.md).
        return _PREF_STRENGTH[self]

    @property
    def is_hard(self) -> bool:
        return self in (Pref.REQUIRE, Pref.PROHIBIT)

    @property
    def is_soft(self) -> bool:
        return self in (Pref.PREFER, Pref.AVOID)


_PREF_STRENGTH = {
    Pref.PROHIBIT: 4,
    Pref.REQUIRE: 3,
    Pref.AVOID: 2,
    Pref.PREFER: 1,
    Pref.NO_PREFERENCE: 0,
}

Level = Literal["protocol", "path", "endpoint", "plan", "runtime", "filter"]
Kind = Literal["preference", "int", "enum", "bool", "tls_version", "string_list"]
# How "stricter" is judged for a non-preference value under an enforced floor.
Direction = Literal["smaller", "larger", "true", "false", "none"]

INTERFACE_TYPES: tuple[str, ...] = ("loopback", "ethernet", "wifi", "cellular", "vpn", "other")
KINDS: tuple[str, ...] = ("initiate", "listen", "source", "sink", "respond")
DEFAULT_PORTS: dict[str, int] = {"https": 443, "quic": 443, "rendezvous": 0}
"""A rendezvous target (`rendezvous://IDENTITY`) names a peer, not a port: 0."""


class ItemError(ValueError):
    """A string_list value refused for one of its items: `index` says which (0-based), so a
    loader can point its file:line:col at the item rather than at the list."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class Secret(str):
    """One item of a secret key's value (Rule 4): as a str it is the redacted form, so it
    prints, formats, joins and serialises (json.dumps) redacted everywhere; `reveal()` is
    the value as written. Two Secrets are equal when their values are (two passwords for one
    server are two values); against a plain string a Secret compares as its text, so a
    value read back from the JSON equals the one that was written out."""

    _value: str

    def __new__(cls, shown: str, value: str) -> Secret:
        self = super().__new__(cls, shown)
        self._value = value
        return self

    def reveal(self) -> str:
        """The value as the policy wrote it, credential included: for the TURN client only,
        never for a message."""
        return self._value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value != other._value
        return str.__ne__(self, other)

    __hash__ = str.__hash__  # equal Secrets have equal texts, so equal hashes

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle keep the value (str's own reduce would keep the text).
        return (Secret, (str(self), self._value))


def revealed(item: Any) -> str:
    """The value an item of a policy value stands for: `Secret.reveal()` for a secret one
    (`rendezvous.turn`), the string itself otherwise. The runtime reads TURN URLs through
    this, and only to hand them to the TURN client."""
    return item.reveal() if isinstance(item, Secret) else str(item)


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
"""A last label a resolver reads as (part of) an IPv4 address: not a host name."""
_PORT_TEXT = re.compile(r"[0-9]{1,5}")
_MAX_ENTRY = 512
"""Longest STUN or TURN entry accepted: a host name is at most 253 characters."""


def _server_problem(hostport: str) -> str | None:
    """Why `hostport` is not `HOST:PORT` (HOST an IP address, IPv6 in brackets, or a DNS
    name; PORT 1-65535), or None. It names the part at fault without quoting the text, so
    a caller may use it on a text that must not be shown."""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            return "an IPv6 address in brackets has no closing ']'"
        host, rest = hostport[1:close], hostport[close + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "the address in brackets is not an IPv6 address"
        if not rest.startswith(":"):
            return "no port after the IPv6 address: write [ADDRESS]:PORT"
        port = rest[1:]
    else:
        host, colon, port = hostport.rpartition(":")
        if not colon:
            return "no port: write HOST:PORT (3478 is the STUN/TURN default)"
        if ":" in host:
            return "an IPv6 address must be in brackets: [ADDRESS]:PORT"
        if not host:
            return "no host before the port"
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            name = host[:-1] if host.endswith(".") else host
            labels = name.split(".")
            if (not host.isascii() or len(name) > 253
                    or not all(_HOST_LABEL.fullmatch(label) for label in labels)
                    or _NUMERIC_LABEL.fullmatch(labels[-1])):
                return ("the host is neither an IP address nor a DNS name (letters, digits, "
                        "'-' and '_' in dot-separated labels)")
    if not _PORT_TEXT.fullmatch(port) or not 1 <= int(port) <= 65535:
        return "the port is not a number from 1 to 65535"
    return None


def _entry_problem(text: str) -> str | None:
    """What every server entry must be, whatever its kind: printable, bounded."""
    if len(text) > _MAX_ENTRY:
        return f"an entry of {len(text)} characters is over {_MAX_ENTRY}"
    if any(c.isspace() or not c.isprintable() for c in text):
        return "an entry may not hold whitespace or control characters"
    return None


def stun_server_problem(text: str) -> str | None:
    """Why `text` is not a `rendezvous.stun` entry (`HOST:PORT`), or None."""
    why = _entry_problem(text)
    if why is None and text[:5].lower() == "stun:":
        why = "write HOST:PORT without the stun: scheme"
    if why is None and "@" in text:
        why = "a STUN server takes no credentials (a TURN server goes in rendezvous.turn)"
    why = why or _server_problem(text)
    if why is None:
        return None
    if "@" in text:  # credentials, maybe a TURN password: never echoed (Rule 4)
        return f"an entry with '@' (not shown: it may hold a password): {why}"
    shown = repr(text) if len(text) <= 80 else f"{text[:80]!r}... ({len(text)} characters)"
    return f"{shown}: {why}"


_TURN_FORM = "turn:USER:PASS@HOST:PORT[?transport=udp|tcp]"


def turn_parts(url: str) -> tuple[str, str, str, str] | None:
    """(user, password, host:port, query) of a URL of the TURN form, split the way the
    TURN client splits it (the server is what follows the last '@'); None when it has no
    'turn:' scheme or no '@'."""
    if not url.startswith("turn:") or "@" not in url:
        return None
    cred, _, server = url[5:].rpartition("@")
    user, _, password = cred.partition(":")
    hostport, mark, query = server.partition("?")
    return user, password, hostport, mark + query


def redact_turn_url(url: str) -> str:
    """`url` with its password replaced by `***` (`turn:alice:***@turn.example:3478`).
    Anything that cannot be split safely is hidden whole: a text that is not of the TURN
    form may hold a password where it was not expected."""
    parts = turn_parts(url)
    if parts is None:
        return "turn:***" if url.startswith("turn:") else "***"
    user, password, hostport, query = parts
    return f"turn:{user or '***'}:***@{hostport}{query}" if password else \
        f"turn:***@{hostport}{query}"


def turn_url_problem(url: str) -> str | None:
    """Why `url` is not a `rendezvous.turn` entry (`{_TURN_FORM}`), or None. The message
    shows the URL redacted, and only when it could be split (so no part of a password is
    ever quoted): the user name, the server and what is wrong."""
    why = _entry_problem(url)
    parts = turn_parts(url) if why is None else None
    if why is None and url[:6].lower() == "turns:":
        why = "TURN over TLS (turns:) is not supported; use turn: with ?transport=udp or tcp"
    elif why is None and not url.startswith("turn:"):
        why = f"not a TURN URL (it starts with 'turn:', in lower case): expected {_TURN_FORM}"
    elif why is None and parts is None:
        why = f"no USER:PASS@ before the server: expected {_TURN_FORM}"
    if why is not None or parts is None:
        return f"entry not shown, it may hold a password: {why}"
    user, password, hostport, query = parts
    if not user or not password:
        why = f"the credentials before '@' must be USER:PASS, both non-empty ({_TURN_FORM})"
    elif (problem := _server_problem(hostport)) is not None:
        return (f"turn:{user}:***@...: the server after '@' is not HOST:PORT: {problem} "
                "(the rest of the entry is not shown, it may hold a password)")
    elif query not in ("", "?transport=udp", "?transport=tcp"):
        why = "the only parameter is ?transport=udp or ?transport=tcp"
    if why is None:
        return None
    return f"{redact_turn_url(url)}: {why}"


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One registry entry. `name` is the key, or the map prefix (`interface`) for map keys.

    Parsing, strictness, the JSON Schema and the docs table all read this one object, so a
    key is described once and they cannot disagree."""

    name: str
    kind: Kind
    level: Level
    default: Any
    direction: Direction = "none"
    doc: str = ""
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    map_key: bool = False
    listen_default: Any = None
    unit: str = ""
    choices_from: Callable[[], tuple[str, ...]] | None = field(default=None, compare=False)
    """Where the choices come from when they can change after import (the stack names)."""
    item_check: Callable[[str], str | None] | None = field(default=None, compare=False)
    """For a string_list: why one item is not valid (None: it is). For a secret key the
    message must not quote the item (`turn_url_problem`)."""
    redact: Callable[[str], str] | None = field(default=None, compare=False)
    """Marks a secret key (Rule 4): its items become `Secret(redact(item), item)`."""
    max_items: int | None = None
    """For a string_list: the most items a value may hold."""
    samples: tuple[str, ...] = ()
    """Valid example items of a checked string_list (for docs and test generators: a
    string_list without choices is otherwise assumed to take any word)."""

    @property
    def secret(self) -> bool:
        """Its values hold a credential and are shown redacted everywhere (Rule 4)."""
        return self.redact is not None

    def options(self) -> tuple[str, ...]:
        """The allowed values, or a map key's allowed leaves, as of now."""
        return self.choices_from() if self.choices_from is not None else self.choices

    def description(self) -> str:
        """`doc`, followed by the current choices when they come from elsewhere."""
        if self.choices_from is None:
            return self.doc
        return f"{self.doc}: {', '.join(self.choices_from())}"

    def default_for(self, kind: str) -> Any:
        if self.listen_default is not None and kind == "listen":
            return self.listen_default
        return self.default

    def parse(self, value: Any) -> Any:
        """Check one YAML value; raise ValueError with a message a person can act on."""
        if self.kind == "preference":
            if isinstance(value, str):
                for p in Pref:
                    if p.value == value:
                        return p
            raise ValueError(
                f"expected one of require, prefer, no_preference, avoid, prohibit, got {value!r}"
            )
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer{self._range_text()}, got {value!r}")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ValueError(f"expected an integer{self._range_text()}, got {value}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if self.kind == "enum":
            choices = self.options()
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
            return value
        if self.kind == "tls_version":
            text = str(value) if isinstance(value, (int, float, str)) else None
            if text in ("1.2", "1.3"):
                return text
            raise ValueError(f'expected "1.2" or "1.3", got {value!r}')
        if self.kind == "string_list":
            return self._parse_list(value)
        raise AssertionError(self.kind)  # pragma: no cover

    def _parse_list(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            if self.secret:  # Rule 4: whatever was written there may be the credential
                raise ValueError("expected a list of non-empty strings (the value is not "
                                 "shown: it may hold a password)")
            raise ValueError(f"expected a list of non-empty strings, got {value!r}")
        if self.max_items is not None and len(value) > self.max_items:
            raise ValueError(f"at most {self.max_items} entries, got {len(value)}")
        choices = self.options()
        bad = [v for v in value if choices and v not in choices]
        if bad:
            raise ValueError(f"{bad[0]!r} is not one of {', '.join(choices)}")
        if self.item_check is not None:
            for i, item in enumerate(value):
                if (why := self.item_check(item)) is not None:
                    raise ItemError(i, f"entry {i + 1}: {why}" if len(value) > 1 else why)
        if self.redact is not None:
            return tuple(Secret(self.redact(item), item) for item in value)
        return tuple(value)

    def _range_text(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f" from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f" >= {self.minimum}"
        return ""

    def strictness(self, value: Any) -> tuple[int, Any]:
        """A sort key: larger means stricter (docs/conflict-resolution.md, step 1)."""
        if self.kind == "preference":
            return (value.strength, 0)
        if value is None:
            return (-1, 0)
        if self.direction == "smaller":
            return (0, -value)
        if self.direction == "larger":
            if self.kind == "enum":  # choices are listed weakest first
                return (0, self.options().index(value))
            return (0, _tls_rank(value) if self.kind == "tls_version" else value)
        if self.direction == "true":
            return (0, int(bool(value)))
        if self.direction == "false":
            return (0, int(not value))
        return (0, 0)

    def at_least_as_strict(self, value: Any, floor: Any) -> bool:
        """Non-preference acceptance under an enforced floor: equal, or stricter by direction."""
        if value == floor:
            return True
        if self.direction == "none" or floor is None or value is None:
            return False
        return self.strictness(value) > self.strictness(floor)


def _tls_rank(value: str) -> int:
    return {"1.2": 2, "1.3": 3}[value]


def _pref(name: str, level: Level, default: Pref, doc: str, **kw: Any) -> PropertySpec:
    return PropertySpec(name, "preference", level, default, doc=doc, **kw)


DSCP: dict[str, int] = {
    "DF": 0, "LE": 1, "CS1": 8, "AF11": 10, "AF12": 12, "AF13": 14, "CS2": 16, "AF21": 18,
    "AF22": 20, "AF23": 22, "CS3": 24, "AF31": 26, "AF32": 28, "AF33": 30, "CS4": 32,
    "AF41": 34, "AF42": 36, "AF43": 38, "CS5": 40, "VA": 44, "EF": 46, "CS6": 48, "CS7": 56,
}
"""DSCP code points by name (RFC 2474, 2597, 3246, 5865, 8622), for `message.dscp`."""
DSCP_NAMES = tuple(DSCP)

_SPECS: list[PropertySpec] = [
    _pref("reliability", "protocol", Pref.REQUIRE, "Data is delivered reliably"),
    _pref("preserveOrder", "protocol", Pref.REQUIRE, "Data arrives in the order it was sent"),
    _pref("congestionControl", "protocol", Pref.REQUIRE, "The stack runs congestion control"),
    _pref("fullChecksumSend", "protocol", Pref.REQUIRE, "Full checksum coverage on send"),
    _pref("fullChecksumRecv", "protocol", Pref.REQUIRE, "Full checksum coverage on receive"),
    _pref("preserveMsgBoundaries", "protocol", Pref.NO_PREFERENCE,
          "Message boundaries survive the network"),
    _pref("perMsgReliability", "protocol", Pref.NO_PREFERENCE,
          "Reliability can be chosen per message"),
    _pref("zeroRttMsg", "protocol", Pref.NO_PREFERENCE,
          "Idempotent data may ride in the first flight (0-RTT, TCP Fast Open)"),
    _pref("keepAlive", "protocol", Pref.NO_PREFERENCE, "The stack can send keep-alives"),
    _pref("softErrorNotify", "protocol", Pref.NO_PREFERENCE, "ICMP soft errors are reported"),
    _pref("activeReadBeforeSend", "protocol", Pref.NO_PREFERENCE,
          "The application may read before it sends"),
    _pref("multistreaming", "protocol", Pref.PREFER,
          "Several carriers share one connection without head-of-line blocking"),
    _pref("secure", "protocol", Pref.NO_PREFERENCE, "The stack encrypts and authenticates"),
    _pref("stack", "protocol", Pref.NO_PREFERENCE, "A named protocol stack", map_key=True,
          choices_from=catalog.names),
    _pref("interface", "path", Pref.NO_PREFERENCE,
          "An interface type (" + ", ".join(INTERFACE_TYPES) + ") or an interface-name glob",
          map_key=True),
    _pref("pvd", "path", Pref.NO_PREFERENCE, "A provisioning domain by name", map_key=True),
    _pref("metered", "path", Pref.NO_PREFERENCE, "The candidate's interface is metered"),
    PropertySpec("useTemporaryLocalAddress", "preference", "path", Pref.PREFER,
                 doc="Use a temporary (privacy) IPv6 local address",
                 listen_default=Pref.AVOID),
    _pref("addressFamily", "endpoint", Pref.NO_PREFERENCE,
          "An address family: ipv4, ipv6", map_key=True, choices=("ipv4", "ipv6")),
    PropertySpec("maxCost", "int", "filter", None, direction="smaller", minimum=0,
                 doc="Interfaces costlier than this are excluded"),
    PropertySpec("multipath", "enum", "protocol", "disabled",
                 choices=("disabled", "passive", "active"), listen_default="passive",
                 doc="Multipath transport; anything but disabled favours multipath stacks"),
    PropertySpec("multipathPolicy", "enum", "plan", "handover",
                 choices=("handover", "interactive", "aggregate"),
                 doc="RFC 9622 multipathPolicy: handover keeps one primary subflow and the "
                     "other allowed paths as backup; interactive and aggregate put a primary "
                     "subflow on every allowed path (avoided interfaces stay backup)"),
    PropertySpec("racing.attemptDelay", "int", "plan", 250, minimum=10, maximum=2000,
                 unit="ms", doc="Delay between staggered connection attempts"),
    PropertySpec("racing.resolutionDelay", "int", "plan", 50, minimum=10, maximum=2000,
                 unit="ms", doc="How long to wait for AAAA (and HTTPS) after A arrives before "
                                "the first attempt starts (RFC 8305 section 3)"),
    PropertySpec("racing.minAttemptDelay", "int", "plan", 100, minimum=10, maximum=2000,
                 unit="ms", doc="Lower bound of the attempt delay derived from RTT history"),
    PropertySpec("racing.maxAttemptDelay", "int", "plan", 2000, minimum=10, maximum=10000,
                 unit="ms", doc="Upper bound of the attempt delay derived from RTT history"),
    PropertySpec("racing.failureMemory", "int", "plan", 600000, minimum=0, maximum=86400000,
                 unit="ms", doc="How long a failed (stack, interface, address) ranks after "
                                "every candidate without a failure (0: not at all)"),
    PropertySpec("dns.svcbSchemes", "string_list", "plan", ("https", "quic"),
                 doc="URL schemes whose targets are looked up for SVCB/HTTPS records"),
    PropertySpec("security.ech", "enum", "plan", "prefer", choices=("prefer", "require"),
                 direction="larger",
                 doc="Encrypted Client Hello: prefer connects without it when no stack can "
                     "send it; require refuses every candidate that cannot"),
    PropertySpec("security.dane", "enum", "plan", "opportunistic",
                 choices=("off", "opportunistic", "require"), direction="larger",
                 doc="DANE (RFC 6698/7671): off ignores TLSA; opportunistic checks the peer "
                     "against DNSSEC-validated TLSA records when there are any; require "
                     "refuses a peer without a validated, matching record"),
    PropertySpec("connTimeout", "int", "runtime", 30000, minimum=1, unit="ms",
                 doc="Bound on the whole race"),
    PropertySpec("message.maxSize", "int", "runtime", 16 * 1024 * 1024, direction="smaller",
                 minimum=1, unit="bytes", doc="Largest message sent or accepted"),
    PropertySpec("security.minTlsVersion", "tls_version", "runtime", "1.2", direction="larger",
                 doc="Lowest TLS version accepted"),
    PropertySpec("security.verifyPeer", "bool", "runtime", True, direction="true",
                 doc="Verify the peer's certificate"),
    PropertySpec("security.sessionCache", "bool", "runtime", True, direction="false",
                 doc="Keep session tickets for resumption and 0-RTT"),
    PropertySpec("security.alpn", "string_list", "runtime", None,
                 doc="ALPN protocol identifiers offered"),
    PropertySpec("security.clientAuth", "enum", "runtime", "none",
                 choices=("none", "request", "require"), direction="larger",
                 doc="What a listener asks of its clients: no certificate, one if they have "
                     "it, or one that verifies against the Local's trusted CAs or pins"),
    PropertySpec("carrier.reactivate", "bool", "runtime", True, direction="false",
                 doc="A carrier whose connection ended becomes dormant and the next send "
                     "re-establishes it (initiated carriers only)"),
    PropertySpec("carrier.maxHandlers", "int", "runtime", 16, direction="smaller",
                 minimum=1, maximum=4096,
                 doc="async handlers run at once per carrier; above it reading pauses"),
    PropertySpec("carrier.forkParallel", "bool", "runtime", False, direction="false",
                 doc="fork() to a peer that is not taps_post opens a plain parallel "
                     "connection instead of failing"),
    PropertySpec("carrier.recvBudget", "int", "runtime", 4 * 1024 * 1024,
                 direction="smaller", minimum=4096, unit="bytes",
                 doc="Received bytes buffered per carrier (messages not yet taken plus the "
                     "one arriving); above it reading pauses. A single message up to "
                     "message.maxSize may still complete when nothing else is buffered"),
    PropertySpec("carrier.sendBudget", "int", "runtime", 1024 * 1024, direction="smaller",
                 minimum=4096, unit="bytes",
                 doc="Queued outgoing bytes per carrier above which send() waits"),
    PropertySpec("carrier.idleTimeout", "int", "runtime", 0, minimum=0, unit="ms",
                 listen_default=30000,
                 doc="Close a carrier when no whole message went either way for this long "
                     "(0: never); on by default for accepted carriers, so a peer trickling "
                     "bytes of a message it never finishes is cut off"),
    PropertySpec("carrier.linger", "int", "runtime", 5000, minimum=0, maximum=600000,
                 unit="ms", doc="How long close() waits for queued messages to go out and "
                                "be acknowledged before it aborts the connection"),
    PropertySpec("listener.handshakeTimeout", "int", "runtime", 10000, minimum=1,
                 unit="ms", doc="A connection to a Listener that has not finished its "
                                "transport and TLS/QUIC handshake by then is dropped"),
    PropertySpec("listener.maxHandshakes", "int", "runtime", 512, direction="smaller",
                 minimum=1, doc="Handshakes a Listener runs at once; more wait in the "
                                "kernel's backlog, shedding stalled ones (TCP), or are "
                                "dropped (QUIC)"),
    PropertySpec("listener.backlog", "int", "runtime", 0, minimum=0, maximum=65535,
                 doc="Listening backlog (0: the system's net.core.somaxconn)"),
    PropertySpec("listener.retry", "enum", "runtime", "auto",
                 choices=("never", "auto", "always"), direction="larger",
                 doc="QUIC Retry (address validation) before a Listener keeps state for a "
                     "new client: auto does it while half of listener.maxHandshakes are "
                     "in progress"),
    PropertySpec("message.dscp", "string_list", "runtime", None, choices=DSCP_NAMES,
                 doc="DSCP code point per niceness (index = niceness, the last entry for "
                     "all larger); unset: packets are not marked"),
    PropertySpec("rendezvous.stun", "string_list", "runtime", None, max_items=8,
                 item_check=stun_server_problem,
                 samples=("stun.example.net:3478", "198.18.0.1:3478", "[fd00::1]:3478"),
                 doc="STUN servers (HOST:PORT each) a rendezvous asks for our address as "
                     "the NAT maps it (server-reflexive candidates); unset: none, only host "
                     "and relayed candidates"),
    PropertySpec("rendezvous.turn", "string_list", "runtime", None, max_items=8,
                 item_check=turn_url_problem, redact=redact_turn_url,
                 samples=("turn:alice:s3cret@turn.example.net:3478",
                          "turn:bob:hunter2@198.18.0.1:3478?transport=tcp"),
                 doc="TURN servers (turn:USER:PASS@HOST:PORT[?transport=udp|tcp] each) a "
                     "rendezvous may relay through; the password is shown as *** "
                     "everywhere"),
    _pref("rendezvous.relay", "runtime", Pref.AVOID,
          "Relayed (TURN) ICE candidates: prohibit uses none, ours or the peer's; require "
          "only ours; prefer checks them first; avoid and no_preference check them last "
          "(RFC 8445)"),
    PropertySpec("rendezvous.peerWait", "int", "runtime", 30000, minimum=1, maximum=600000,
                 unit="ms", doc="How long a rendezvous initiate waits for the peer's offer"),
]

REGISTRY: dict[str, PropertySpec] = {s.name: s for s in _SPECS}

_LEAF_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!\-]+$")


def lookup(key: str) -> tuple[PropertySpec, str | None]:
    """Map a dotted key to (spec, leaf). Raises KeyError with the nearest known key in args."""
    spec = REGISTRY.get(key)
    if spec is not None and not spec.map_key:
        return spec, None
    prefix, dot, leaf = key.partition(".")
    spec = REGISTRY.get(prefix)
    if spec is not None and spec.map_key and dot and leaf:
        choices = spec.options()
        if (choices or spec.choices_from is not None) and leaf not in choices:
            hint = _nearest(leaf, choices) or (choices[0] if choices else None)
            raise KeyError(key, f"{prefix}.{hint}" if hint else None)
        if not _LEAF_RE.match(leaf):
            raise KeyError(key, None)
        return spec, leaf
    raise KeyError(key, _nearest(key, list(known_keys())))


def key_family(key: str) -> str:
    """The registry name a key belongs to (`interface.wifi` -> `interface`)."""
    return key if key in REGISTRY else key.partition(".")[0]


def known_keys() -> list[str]:
    """Every key a policy may set, map keys with their known leaves (for did-you-mean)."""
    out: list[str] = []
    for spec in _SPECS:
        if spec.map_key:
            leaves = spec.options() or (INTERFACE_TYPES if spec.name == "interface"
                                        else ("NAME",))
            out.extend(f"{spec.name}.{leaf}" for leaf in leaves)
        else:
            out.append(spec.name)
    return out


def fixed_keys() -> list[str]:
    """Keys that always have an effective value (map keys appear only when stated)."""
    return [s.name for s in _SPECS if not s.map_key]


def protocol_preferences() -> tuple[str, ...]:
    """The protocol-level preference keys (map keys aside), in registry order."""
    return tuple(s.name for s in _SPECS
                 if s.kind == "preference" and s.level == "protocol" and not s.map_key)


def protocol_features() -> frozenset[str]:
    """The names a `StackInfo.features` set may hold: the protocol-level preference keys
    (a feature outside this set is never asked about, so it would be a silent typo)."""
    return frozenset(protocol_preferences())


def _nearest(word: str, choices: Any) -> str | None:
    import difflib

    lowered = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hit[0]] if hit else None


def nearest(word: str, choices: Any) -> str | None:
    """The closest known word, for did-you-mean messages."""
    return _nearest(word, choices)


def _profile(**values: str) -> Mapping[str, Pref]:
    return {k: Pref(v) for k, v in values.items()}


# RFC 9622 appendix B.2
PROFILES: dict[str, Mapping[str, Pref]] = {
    "reliable-inorder-stream": _profile(
        reliability="require", preserveOrder="require", congestionControl="require"
    ),
    "reliable-message": _profile(
        reliability="require", preserveOrder="require", congestionControl="require",
        preserveMsgBoundaries="require",
    ),
    "unreliable-datagram": _profile(
        reliability="avoid", preserveOrder="avoid", congestionControl="no_preference",
        preserveMsgBoundaries="require",
    ),
}
