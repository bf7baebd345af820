"""What the DNS said about a name, as plain values the decision core can rank by.

Rule 1: these are data only. The runtime's resolver (`taps_post.resolver`) fills them from real
answers, a snapshot file (`svcb:`, `tlsa:`, `arrivals:`) from text; `decide()` reads them and
cannot tell the two apart, so a dry run shows the same service endpoints, passes and DANE
verdict a real connection would use.
Rule 2: one function names the SVCB/HTTPS query of a target (`service_query`), and both the
resolver and `decide()` call it, so they can never look at different owner names
(RFC 9460 section 2.3 and 9.1: `_PORT._https.host` for a non-default HTTPS port,
`_scheme.host` for any other scheme, with `_PORT.` in front for a non-default port).
Rule 3: one function names the TLSA query (`tlsa_name`, RFC 6698 section 3): `_PORT._tcp.host`
for stacks over TCP, `_PORT._udp.host` over UDP (QUIC).
Rule 4a: one function spells a DNS name as every layer compares it (`normal`): lower case
(RFC 4343) without the final dot, so the snapshot loader, the decision, the resolver's cache
and hosts file, the runtime and the DANE name check can never key one name two ways.
Rule 4: one function says which TLSA records this library can check (`usable`), and both the
decision (explain's DANE verdict, `security.dane: require`) and the stacks' check
(stacks/dane.py) call it, so a dry run never promises a connection the stack refuses.
Rule 5: a TLSA set counts only when `validated`: the resolver set the AD bit and the system
trusts that resolver (docs/resolution.md, "DANE"). An unvalidated set is kept so explain can
say it was ignored, never used to accept or refuse a certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALIAS_LIMIT", "Arrival", "ServiceRecord", "TlsaRecord", "TlsaSet", "normal",
           "service_query", "tlsa_name", "usable"]

ALIAS_LIMIT = 8
"""AliasMode records followed before the chain counts as a loop (RFC 9460 section 2.4.2 asks
for a limit; 8 is what common resolvers use for CNAME chains)."""

DEFAULT_PORTS = {"https": 443, "quic": 443}


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One SVCB or HTTPS resource record (RFC 9460): the owner's offer of a service endpoint."""

    priority: int
    """0: AliasMode (follow `target`); 1-65535: ServiceMode, lower tried first."""
    target: str
    """The TargetName, lower case without the final dot; "." means the owner name itself."""
    alpn: tuple[str, ...] = ()
    no_default_alpn: bool = False
    """For HTTPS records, "http/1.1" is offered too unless this is set (RFC 9460 7.1.2)."""
    port: int | None = None
    """The port to use instead of the URL's (None: the URL's)."""
    ipv4hint: tuple[str, ...] = ()
    ipv6hint: tuple[str, ...] = ()
    ech: bool = False
    """The record carries an ECH configuration (its bytes are not kept: nothing here can
    send ECH, and explain only says that the target publishes one)."""
    mandatory: tuple[str, ...] = ()
    """SvcParamKeys the client must understand to use this record (RFC 9460 section 8)."""
    ttl: int | None = None

    @property
    def alias(self) -> bool:
        return self.priority == 0


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 section 2.1)."""

    usage: int
    """0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218 names)."""
    selector: int
    """0: the full certificate, 1: its SubjectPublicKeyInfo."""
    matching: int
    """0: exact bytes, 1: SHA-256, 2: SHA-512."""
    data: bytes


@dataclass(frozen=True, slots=True)
class TlsaSet:
    """The TLSA records of one `_port._proto.host` name, and whether they may be trusted."""

    name: str
    records: tuple[TlsaRecord, ...] = ()
    validated: bool = False
    """DNSSEC-validated: the AD bit from a resolver the system trusts (Rule 4)."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """When one DNS answer arrived, in ms since resolution started: what resolution passes
    are made of (RFC 8305 section 3). A snapshot without arrivals has every answer at 0."""

    name: str
    rtype: str
    """A, AAAA, HTTPS, SVCB or TLSA."""
    at_ms: float
    ttl: int | None = None
    negative: bool = False
    """The answer said there is no such record (NXDOMAIN or NODATA)."""


def normal(name: str) -> str:
    """`name` lower case, without its final dot(s) (Rule 4a); the root and the empty name are
    both "" (no host). Nothing here converts to IDNA: a name is compared as written."""
    return name.lower().rstrip(".")


def service_query(scheme: str, host: str, port: int,
                  schemes: tuple[str, ...]) -> tuple[str, str] | None:
    """The (owner name, record type) of the SVCB/HTTPS query for a target, or None when the
    policy does not name its scheme (`dns.svcbSchemes`) or the host is an IP literal (Rule 2).

    `https` and `quic` ask for HTTPS records (an h3 ALPN is QUIC's offer); any other scheme
    for SVCB records at `_scheme.host`. A port other than the scheme's default is prefixed
    (`_8443._https.host`)."""
    if scheme not in schemes or ":" in host or host.replace(".", "").isdigit():
        return None
    name = normal(host)
    default = DEFAULT_PORTS.get(scheme)
    if scheme in DEFAULT_PORTS:
        return (name if port == default else f"_{port}._https.{name}"), "HTTPS"
    return f"_{port}._{scheme}.{name}", "SVCB"


def tlsa_name(host: str, port: int, ip_protocol: str) -> str:
    """`_port._tcp.host` or `_port._udp.host` (Rule 3)."""
    return f"_{port}._{ip_protocol}.{normal(host)}"


def usable(record: TlsaRecord, *, leaf_only: bool = False) -> bool:
    """Whether this library checks `record` (Rule 4): DANE-TA(2) or DANE-EE(3) with a known
    selector (0, 1) and matching type (0, 1, 2); PKIX-TA/EE are ignored (RFC 7671 section
    4.1 lets a client ignore them). On a stack that sees only the peer's leaf certificate
    (`leaf_only`: the stdlib's TLS before Python 3.13) a DANE-TA record must carry the whole
    anchor certificate (`2 0 0`): a digest names a certificate that is never seen."""
    if record.usage not in (2, 3) or record.selector not in (0, 1) \
            or record.matching not in (0, 1, 2):
        return False
    return not (leaf_only and record.usage == 2 and (record.selector, record.matching) != (0, 0))
