"""Environment snapshots: the file format and its loader (docs/explain.md, "Running it").

Rule 1: a snapshot is checked as strictly as a policy file, with the same `file:line:col`
errors, because a dry run on a wrong snapshot explains a machine that does not exist.
Rule 2: stack names are checked against the stack catalogue when a snapshot is loaded, so a
snapshot may hold history for a stack registered after import.
Rule 3: every value is checked against what the machine it describes could hold: interface
names as Linux takes them, MTUs from 68 to 65536 (1280 with an IPv6 address), ports 0-65535,
host names as DNS takes them (`environment.host_name_problem`), and any name shown in a
message is repr()'d and cut short, never printed raw.
Rule 4: the snapshot's size costs linear time: checks are per item, duplicates found by set.
Rule 5: the DNS sections (`svcb:`, `tlsa:`, `arrivals:`) hold what a resolver could have
answered and nothing it could not (docs/explain.md, "Snapshot: resolution"): record fields in
their RFC ranges (RFC 9460, RFC 6698), a hint of its own family, AliasMode with a target only,
one AliasMode record per name (RFC 9460 2.4.2 would let a client pick one at random, and a
dry run must not), owner names unique after lowercasing. When `arrivals` is given it is the
whole story of the resolution: every answer the snapshot holds has its arrival, and every
arrival agrees with the answer (a positive A arrival needs an IPv4 address in `dns`, a
negative one none), so the passes explain shows are the ones the answers could give.
Rule 6: history ages (`cache: [{age_s}]`) are relative: a snapshot has no clock, so the
loader puts the decision at time 0 (`Environment.now = 0.0`) and each entry `age_s` before
it; an entry without `age_s` has no time (`at` None, recent), as before. An entry's `port`
is the remote port the attempt went to; without it the entry is about any port.
Rule 7: an HTTPS or SVCB arrival has the type its query is asked with (`names.service_query`):
HTTPS for an https/quic target's host and `_PORT._https.host`, SVCB for `_PORT._SCHEME.host`
of another scheme, and an AliasMode target the type of the chain that reaches it. An arrival
of the other type times a query that is never made, so it would never end the wait for the
real one (a pass explained later than it starts) and is refused.
"""

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ..diagnostics import Diagnostic, InputError
from ..policy import catalog
from ..policy.load import load_yaml, pydantic_diagnostics, read_policy_text
from ..policy.model import InterfaceType, enum_schema, one_of
from ..policy.positions import Positions
from ..policy.shape import After, Before, Record, StrictBool, StrictInt, field
from .environment import (
    Address,
    CacheEntry,
    Environment,
    Interface,
    MptcpEndpoint,
    host_name_problem,
    interface_name_problem,
    shown,
)
from .names import ALIAS_LIMIT, Arrival, ServiceRecord, TlsaRecord, TlsaSet, normal

if TYPE_CHECKING:
    from pydantic_core import PydanticCustomError

__all__ = ["EnvDocument", "load_environment"]

StackName = Annotated[str, one_of(catalog.names), enum_schema(catalog.names)]

MIN_MTU, MIN_MTU_IPV6, MAX_MTU = 68, 1280, 65536
"""RFC 791's minimum, RFC 8200's minimum for an interface with IPv6, and Linux loopback's
MTU (the largest a live machine reports; an IPv4 packet cannot use more anyway)."""
MAX_RTT_MS = 86_400_000.0
"""A day: a round-trip time above it is a unit mistake, not a path."""
MAX_TTL = 2_147_483_647
"""RFC 2181 section 8: a TTL is 0 to 2^31 - 1 seconds."""
MAX_AGE_S = 10 * 365 * 86_400.0
"""Ten years: a history entry older than that is a unit mistake (ms for s), not a memory."""
MAX_RDATA = 65_535
"""Bytes a resource record's data can hold (RFC 1035 section 3.2.1: RDLENGTH is 16 bits)."""
SVC_KEYS = ("mandatory", "alpn", "no-default-alpn", "port", "ipv4hint", "ipv6hint", "ech")
"""RFC 9460's SvcParamKeys by their presentation names (section 14.3.2), as `mandatory`
names them; any other key is written `keyNNNNN`."""
_SVC_KEY = re.compile(r"[a-z0-9-]{1,63}")
_SERVICE_OWNER = re.compile(r"_[0-9]{1,5}\._([^.]+)\.")
"""A port-prefixed service owner `_PORT._SCHEME.host` (`names.service_query`)."""
_TLSA_NAME = re.compile(r"_([0-9]{1,5})\._(tcp|udp)\.(.+)", re.IGNORECASE)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
DIGEST_BYTES = {1: 32, 2: 64}
"""TLSA matching types 1 (SHA-256) and 2 (SHA-512): their data is a digest of this size."""


def _refuse(message: str) -> "PydanticCustomError":
    # A custom error carries our words as they are (pydantic would prefix "Value error, ").
    from pydantic_core import PydanticCustomError  # only while validating a snapshot

    return PydanticCustomError("taps_value", message)


def _interface_name(value: str | None) -> str | None:
    if value is not None and (why := interface_name_problem(value)) is not None:
        raise _refuse(why)
    return value


def _printable(value: str | None, what: str, limit: int = 253) -> str | None:
    if value is not None and (len(value) > limit or not value.isprintable()):
        raise _refuse(f"{what} {shown(value)} is not printable text of at most {limit} "
                      "characters")
    return value


def _ip(value: str | None) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise _refuse(f"{shown(value)} is not an IP address") from None
    return value


def _shown_value(value: Any) -> str:
    return shown(value) if isinstance(value, str) else repr(value)


def _num(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 16 else f"{text[:16]}..."


def _bounded(name: str, what: str, high: float, unit: str, units: str) -> Before:
    """The one "before" check of a bounded number (`rtt_ms`, `age_s`, `at_ms`, `port`):
    YAML's `true` and a quoted "5" are no numbers (pydantic's lax mode would read them as 1
    and 5), and a number out of 0..`high` (NaN too: it fails both comparisons) is refused in
    our words, the field and its unit named, before pydantic's type check."""
    def check(value: Any) -> Any:
        if isinstance(value, (bool, str)):
            raise _refuse(f"{name} {_shown_value(value)} is not "
                          + (f"a number of {units}" if units else "a number"))
        if isinstance(value, (int, float)) and not 0 <= value <= high:
            raise _refuse(f"{name} {_num(value)} is not {what} from 0 to {high:.0f}"
                          + (f" {unit}" if unit else ""))
        return value
    return Before(check)


def _mtu(value: Any) -> Any:
    # before the type check: our words, not pydantic's
    if isinstance(value, int) and not isinstance(value, bool) and \
            not MIN_MTU <= value <= MAX_MTU:
        shown_value = str(value) if len(str(value)) <= 12 else f"{str(value)[:12]}..."
        raise _refuse(f"mtu {shown_value} is out of range: an interface's MTU is from "
                      f"{MIN_MTU} to {MAX_MTU}")
    return value


def _plain_strings(value: Any) -> Any:
    # "192.0.2.1" is shorthand for {address: "192.0.2.1"}; one shape for the checks below.
    if isinstance(value, list):
        return [{"address": a} if isinstance(a, str) else a for a in value]
    return value


def _pvd(value: str | None) -> str | None:
    return _printable(value, "pvd")


def _remote(value: str) -> str:
    if (why := remote_problem(value)) is not None:
        raise _refuse(why)
    return value


IfName = Annotated[str, After(_interface_name)]
Ip = Annotated[str, After(_ip)]


def remote_problem(remote: str) -> str | None:
    """Why `remote` is not the `host:port` (or `[v6]:port`) a cache entry names, or None."""
    host, sep, port = remote.rpartition(":")
    if not sep or not host:
        return f"{shown(remote)} is not host:port"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return f"{shown(remote)}: only an IPv6 address goes in brackets"
    elif ":" in host:
        return f"{shown(remote)}: an IPv6 address goes in brackets ([v6]:port)"
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
        return f"{shown(remote)}: port {shown(port)} is not a number from 0 to 65535"
    why = host_name_problem(host)
    return f"{shown(remote)}: {why}" if why else None


class AddressEntry(Record):
    """A local address; a plain string is shorthand for a stable (non-temporary) one."""

    address: str
    temporary: StrictBool = False


class InterfaceEntry(Record):
    """An interface as discovery would report it, so a dry run sees a machine as it is."""

    name: IfName = field(min_length=1)
    type: InterfaceType = "other"
    up: StrictBool = True
    addresses: Annotated[list[AddressEntry], Before(_plain_strings)] = field(
        default_factory=list)
    metered: StrictBool = False
    cost: StrictInt = field(0, ge=0)
    pvd: Annotated[str | None, After(_pvd)] = None
    mtu: Annotated[StrictInt | None, Before(_mtu)] = field(None, ge=MIN_MTU)
    gateways: list[str] = field(default_factory=list)


class CacheItem(Record):
    """How an earlier attempt went; candidates are ranked by it, as with a live Association."""

    remote: Annotated[str, After(_remote)] = field(description='"host:port"')
    stack: StackName
    outcome: Literal["success", "failure", "fallback"] = field(
        description="fallback: an MPTCP stack whose peer answered as plain TCP")
    rtt_ms: Annotated[
        float | None, _bounded("rtt_ms", "a time", MAX_RTT_MS, "ms", "milliseconds")
    ] = field(None, ge=0)
    age_s: Annotated[
        float | None, _bounded("age_s", "an age", MAX_AGE_S, "s", "seconds")
    ] = field(None, ge=0, le=MAX_AGE_S,
              description="How long ago the outcome was recorded, in seconds: a failure "
                          "younger than racing.failureMemory demotes its candidate; absent: "
                          "recent")
    ticket: StrictBool = False
    interface: Annotated[str | None, After(_interface_name)] = None
    address: Annotated[str | None, After(_ip)] = field(
        None, description="remote address the entry is about")
    port: Annotated[StrictInt | None, _bounded("port", "a port", 65535, "", "")] = field(
        None, ge=0, le=65535,
        description="The remote port the attempt went to; absent: any port (an entry from "
                    "before ports were kept)")


class EndpointItem(Record):
    """One in-kernel path manager endpoint, as `ip mptcp endpoint show` lists it."""

    address: Ip = field(description="The endpoint's local IP address")
    interface: Annotated[str | None, After(_interface_name)] = field(
        None, description="The dev it is bound to; absent: the interface holding address")
    flags: list[Literal["signal", "subflow", "backup", "fullmesh", "implicit"]] = field(
        default_factory=list)
    id: int | None = field(None, ge=0, le=255)


class MptcpEntry(Record):
    """The namespace's MPTCP state, as `taps-post interfaces --format json` reports it."""

    path_manager: Literal["kernel", "userspace", "disabled"] | None = field(
        None, alias="pathManager",
        description="The MPTCP path manager in force: kernel (net.mptcp.pm_type=0), "
                    "userspace (pm_type=1), or disabled (net.mptcp.enabled=0); absent: unknown")
    endpoints: list[EndpointItem] = field(
        default_factory=list,
        description="The in-kernel path manager's endpoints (ip mptcp endpoint show): explain "
                    "warns about one on an interface the policy excludes")


class SvcbItem(Record):
    """One SVCB or HTTPS record (RFC 9460) of an owner name, as `dig` would show its fields."""

    priority: StrictInt = field(ge=0, le=65535,
                                description="SvcPriority: 0 AliasMode, 1-65535 ServiceMode "
                                            "(lower first)")
    target: str = field(description='TargetName: "." (the owner itself) or a host name')
    alpn: list[str] = field(default_factory=list, description="ALPN protocol ids (h3, h2, ...)")
    no_default_alpn: StrictBool = field(
        False, description="HTTPS records only: do not add the default http/1.1")
    port: StrictInt | None = field(None, ge=0, le=65535)
    ipv4hint: list[str] = field(default_factory=list)
    ipv6hint: list[str] = field(default_factory=list)
    ech: StrictBool = field(False, description="the record carries an ECH configuration")
    mandatory: list[str] = field(default_factory=list,
                                 description="SvcParamKeys a client must understand")
    ttl: StrictInt | None = field(None, ge=0, le=MAX_TTL)


class TlsaItem(Record):
    """One TLSA record (RFC 6698 section 2.1); `data` is its certificate association data in
    hexadecimal, as `dig` prints it."""

    usage: StrictInt = field(ge=0, le=3, description="0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE")
    selector: StrictInt = field(ge=0, le=1, description="0 full certificate, 1 SPKI")
    matching: StrictInt = field(ge=0, le=2, description="0 exact, 1 SHA-256, 2 SHA-512")
    data: str = field(min_length=2, description="hexadecimal")


class TlsaEntry(Record):
    """The TLSA answer for one `_port._tcp.host` or `_port._udp.host` name."""

    validated: StrictBool = field(
        False, description="DNSSEC-validated (AD bit from a trusted resolver); an unvalidated "
                           "set is never used")
    records: list[TlsaItem] = field(default_factory=list,
                                    description="empty: a negative answer")


class ArrivalItem(Record):
    """When one DNS answer arrived, in ms since resolution started."""

    name: str
    type: Literal["A", "AAAA", "HTTPS", "SVCB", "TLSA"]
    at_ms: Annotated[
        float, _bounded("at_ms", "a time", MAX_RTT_MS, "ms", "milliseconds")
    ] = field(ge=0, le=MAX_RTT_MS)
    ttl: StrictInt | None = field(None, ge=0, le=MAX_TTL)
    negative: StrictBool = field(False, description="NXDOMAIN or NODATA")


class EnvDocument(Record, title="taps_post environment snapshot"):
    """An environment snapshot for dry runs and tests."""

    interfaces: list[InterfaceEntry] = field(default_factory=list)
    dns: dict[str, list[str]] = field(
        default_factory=dict, description="A and AAAA answers: name -> addresses")
    svcb: dict[str, list[SvcbItem]] = field(
        default_factory=dict,
        description="SVCB/HTTPS answers by owner name (host, _8443._https.host, "
                    "_port._scheme.host); [] is a negative answer")
    tlsa: dict[str, TlsaEntry] = field(
        default_factory=dict, description="TLSA answers by _port._tcp.host / _port._udp.host")
    arrivals: list[ArrivalItem] = field(
        default_factory=list,
        description="When each answer arrived (resolution passes); absent: all at 0 ms")
    cache: list[CacheItem] = field(default_factory=list)
    mptcp: MptcpEntry | None = None


_CACHE: dict[tuple[str, int, int, int, int, int], Environment] = {}


def load_environment(spec: str | os.PathLike[str] | Mapping[str, Any]) -> Environment:
    """Load a snapshot from a YAML/JSON file or a dict; InputError on any problem.

    Files are cached by (path, inode, size, mtime), like policy files: repeated dry runs
    against one snapshot should cost the decision, not the YAML parser. The catalogue version
    is part of the key, since it decides which stack names a snapshot may use.
    """
    if isinstance(spec, Mapping):
        return _build(dict(spec), Positions("<env>"))
    path = os.fspath(spec)
    try:
        st = os.stat(path)
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, catalog.version())
        if key in _CACHE:
            return _CACHE[key]
        text = read_policy_text(path)  # a regular file, bounded: never a FIFO or /dev/zero
    except OSError as exc:  # the stat (read_policy_text raises only InputError)
        raise InputError([Diagnostic(path, f"cannot read environment: {exc}")]) from None
    data, pos = load_yaml(text, path)
    env = _build(data, pos)
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = env
    return env


def _build(data: Any, pos: Positions) -> Environment:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError([pos.diagnostic((), "expected an environment snapshot (a mapping)")])
    from pydantic_core import ValidationError  # validation happens here, not at import

    try:
        doc = EnvDocument.validate(data)
    except ValidationError as exc:
        raise InputError(pydantic_diagnostics(exc, pos, EnvDocument)) from None
    problems = []
    interfaces: list[Interface] = []
    for i, entry in enumerate(doc.interfaces):
        addrs: list[Address] = []
        for j, a in enumerate(entry.addresses):
            text_addr, temp = a.address, a.temporary
            try:
                ipaddress.ip_address(text_addr)
            except ValueError:
                problems.append(pos.diagnostic(("interfaces", i, "addresses", j),
                                               f"{text_addr!r} is not an IP address"))
                continue
            addrs.append(Address(text_addr, temp))
        for j, gateway in enumerate(entry.gateways):
            try:
                ipaddress.ip_address(gateway)
            except ValueError:
                problems.append(pos.diagnostic(("interfaces", i, "gateways", j),
                                               f"gateway {shown(gateway)} is not an IP address"))
        if entry.mtu is not None and entry.mtu < MIN_MTU_IPV6 and \
                any(a.family == "ipv6" for a in addrs):
            problems.append(pos.diagnostic(
                ("interfaces", i, "mtu"), f"mtu {entry.mtu} is below {MIN_MTU_IPV6}, the "
                                          "minimum of an interface with an IPv6 address"))
        interfaces.append(Interface(entry.name, entry.type, entry.up, tuple(addrs),
                                    entry.metered, entry.cost, entry.pvd, entry.mtu,
                                    tuple(entry.gateways)))
    dns: dict[str, tuple[str, ...]] = {}
    for name, answers in doc.dns.items():
        if (why := host_name_problem(name)) is not None:
            problems.append(pos.diagnostic(("dns", name), f"dns: {why}", key=True))
        elif name.lower() in dns:  # Rule 4: a dict lookup
            problems.append(pos.diagnostic(
                ("dns", name), f"duplicate dns name {shown(name)}: names are case-insensitive",
                key=True))
        for j, text_addr in enumerate(answers):
            try:
                ipaddress.ip_address(text_addr)
            except ValueError:
                problems.append(pos.diagnostic(("dns", name, j),
                                               f"{shown(text_addr)} is not an IP address"))
        dns[name.lower()] = tuple(answers)
    first: dict[str, int] = {}  # Rule 4: a set lookup per interface, not a list scan
    for i, iface in enumerate(interfaces):
        if first.setdefault(iface.name, i) != i:
            problems.append(pos.diagnostic(("interfaces", i, "name"),
                                           f"duplicate interface name {iface.name!r}"))
    multipath = {info.name for info in catalog.infos() if info.multipath_capable}
    for i, c in enumerate(doc.cache):
        if c.outcome == "fallback" and c.stack not in multipath:
            problems.append(pos.diagnostic(
                ("cache", i, "outcome"),
                f"outcome fallback is for a multipath stack ({', '.join(sorted(multipath))}); "
                f"{c.stack} has nothing to fall back from"))
    svcb = _services(doc, pos, problems)
    tlsa = _tlsa(doc, pos, problems)
    arrivals = _arrivals(doc, pos, problems, dns, svcb, tlsa)
    if problems:
        raise InputError(problems)
    # Rule 6: ages against a decision at time 0
    now = 0.0 if any(c.age_s is not None for c in doc.cache) else None
    cache = tuple(CacheEntry(c.remote.lower(), c.stack, c.outcome, c.rtt_ms, c.ticket,
                             c.interface, c.address,
                             at=None if c.age_s is None else 0.0 - c.age_s, port=c.port)
                  for c in doc.cache)
    endpoints = tuple(MptcpEndpoint(e.address, e.interface, tuple(e.flags), e.id)
                      for e in (doc.mptcp.endpoints if doc.mptcp else ()))
    return Environment(tuple(interfaces), dns, cache, source=pos.source,
                       path_manager=doc.mptcp.path_manager if doc.mptcp else None,
                       mptcp_endpoints=endpoints, svcb=svcb, tlsa=tlsa, arrivals=arrivals,
                       now=now)


def dns_name(name: str) -> str:
    """A DNS name as the Environment keys it: lower case, without the final dot
    (`names.service_query` and `names.tlsa_name` build their names the same way)."""
    return normal(name) or "."


def _new_key(seen: Mapping[str, Any], name: str, what: str, where: tuple[Any, ...],
             pos: Positions, problems: list[Diagnostic]) -> str | None:
    """`name` as the Environment keys it (`dns_name`), or None after reporting it as a
    duplicate of a name already in `seen` (Rule 4: a dict lookup, not a scan)."""
    key = dns_name(name)
    if key in seen:
        problems.append(pos.diagnostic(
            where, f"duplicate {what} {shown(name)}: names are case-insensitive and the final "
                   "dot does not count", key=True))
        return None
    return key


def _owner_problem(name: str, what: str) -> str | None:
    """Why `name` cannot own records of kind `what`, or None: a host name (`_port._scheme`
    labels included), never an IP address, which is not resolved."""
    why = host_name_problem(name)
    if why is not None:
        return f"{what}: {why}"
    if name.rstrip(".").replace(".", "").isdigit() or ":" in name:
        return f"{what}: {shown(name)} is an IP address, which is never resolved"
    return None


def _services(doc: EnvDocument, pos: Positions,
              problems: list[Diagnostic]) -> dict[str, tuple[ServiceRecord, ...]]:
    """The `svcb:` section as ServiceRecords by owner (Rule 5)."""
    out: dict[str, tuple[ServiceRecord, ...]] = {}
    for owner, items in doc.svcb.items():
        where: tuple[Any, ...] = ("svcb", owner)
        if (why := _owner_problem(owner, "svcb")) is not None:
            problems.append(pos.diagnostic(where, why, key=True))
            continue
        key = _new_key(out, owner, "svcb owner", where, pos, problems)
        if key is None:
            continue
        records: list[ServiceRecord] = []
        aliases = 0
        for i, item in enumerate(items):
            record = _service(item, (*where, i), pos, problems)
            if item.priority == 0:
                aliases += 1
                if aliases == 2:
                    problems.append(pos.diagnostic(
                        (*where, i, "priority"),
                        "a second AliasMode record (priority 0) for this name: RFC 9460 "
                        "section 2.4.2 expects one, and a client would pick one at random"))
            if record is not None:
                records.append(record)
        out[key] = tuple(records)
    return out


def _service(item: SvcbItem, where: tuple[Any, ...], pos: Positions,
             problems: list[Diagnostic]) -> ServiceRecord | None:
    before = len(problems)

    def bad(field: tuple[Any, ...], message: str) -> None:
        problems.append(pos.diagnostic((*where, *field), message))

    if item.target != "." and (why := _owner_problem(item.target, "target")) is not None:
        bad(("target",), why)
    if item.priority == 0:
        for name in sorted(item.fields_set - {"priority", "target", "ttl"}):
            bad((name,), f"an AliasMode record (priority 0) takes only a target (RFC 9460 "
                         f"section 2.4.2); {name} belongs in a ServiceMode record (priority "
                         "1-65535)")
    for j, alpn in enumerate(item.alpn):
        if not alpn or len(alpn.encode("utf-8", "surrogatepass")) > 255 or \
                not alpn.isprintable() or "," in alpn:
            bad(("alpn", j), f"alpn {shown(alpn)} is not an ALPN protocol id (1-255 "
                             "printable bytes, no comma)")
    if item.no_default_alpn and not item.alpn:
        bad(("no_default_alpn",), "no_default_alpn needs an alpn list (RFC 9460 section "
                                  "7.1.1): the record would offer no protocol at all")
    for family, hints in (("IPv4", item.ipv4hint), ("IPv6", item.ipv6hint)):
        for j, hint in enumerate(hints):
            field = ("ipv4hint" if family == "IPv4" else "ipv6hint", j)
            try:
                ip = ipaddress.ip_address(hint)
            except ValueError:
                bad(field, f"{field[0]} {shown(hint)} is not an IP address")
                continue
            if ip.version != (4 if family == "IPv4" else 6):
                bad(field, f"{field[0]} {shown(hint)} is not an {family} address")
    present = {"alpn": bool(item.alpn), "no-default-alpn": item.no_default_alpn,
               "port": item.port is not None, "ipv4hint": bool(item.ipv4hint),
               "ipv6hint": bool(item.ipv6hint), "ech": item.ech}
    seen: set[str] = set()
    for j, key in enumerate(item.mandatory):
        number = key[3:] if key.startswith("key") else ""
        if not _SVC_KEY.fullmatch(key) or (key not in SVC_KEYS and not (
                number.isdigit() and int(number) <= 65535)):
            bad(("mandatory", j), f"mandatory {shown(key)} is not a SvcParamKey (one of "
                                  f"{', '.join(SVC_KEYS[1:])}, or keyNNNNN)")
        elif key == "mandatory":
            bad(("mandatory", j), "mandatory may not name itself (RFC 9460 section 8)")
        elif key in seen:
            bad(("mandatory", j), f"mandatory names {key} twice")
        elif not present.get(key, True):
            bad(("mandatory", j), f"mandatory names {key}, which the record does not have "
                                  "(RFC 9460 section 8)")
        seen.add(key)
    if len(problems) != before:
        return None
    return ServiceRecord(item.priority, dns_name(item.target), tuple(item.alpn),
                         item.no_default_alpn, item.port, tuple(item.ipv4hint),
                         tuple(item.ipv6hint), item.ech, tuple(item.mandatory), item.ttl)


def _tlsa(doc: EnvDocument, pos: Positions, problems: list[Diagnostic]) -> dict[str, TlsaSet]:
    """The `tlsa:` section as TlsaSets by name (Rule 5)."""
    out: dict[str, TlsaSet] = {}
    for name, entry in doc.tlsa.items():
        where: tuple[Any, ...] = ("tlsa", name)
        match = _TLSA_NAME.fullmatch(name)
        why = None
        if match is None:
            why = (f"tlsa: {shown(name)} is not a TLSA name: _PORT._tcp.HOST or "
                   "_PORT._udp.HOST (RFC 6698 section 3)")
        elif int(match.group(1)) > 65535:
            why = f"tlsa: {shown(name)}: port {match.group(1)} is not from 0 to 65535"
        else:
            why = _owner_problem(match.group(3), "tlsa")
        if why is not None:
            problems.append(pos.diagnostic(where, why, key=True))
            continue
        key = _new_key(out, name, "tlsa name", where, pos, problems)
        if key is None:
            continue
        records: list[TlsaRecord] = []
        for j, item in enumerate(entry.records):
            at = (*where, "records", j, "data")
            if not _HEX.fullmatch(item.data):
                problems.append(pos.diagnostic(at, f"data {shown(item.data, 40)} is not "
                                                   "hexadecimal, two digits a byte"))
                continue
            size = len(item.data) // 2
            want = DIGEST_BYTES.get(item.matching)
            if want is not None and size != want:
                problems.append(pos.diagnostic(
                    at, f"data is {size} bytes; matching {item.matching} "
                        f"({'SHA-256' if item.matching == 1 else 'SHA-512'}) is {want}"))
                continue
            if size > MAX_RDATA:
                problems.append(pos.diagnostic(at, f"data is {size} bytes; a record holds "
                                                   f"at most {MAX_RDATA}"))
                continue
            records.append(TlsaRecord(item.usage, item.selector, item.matching,
                                      bytes.fromhex(item.data)))
        out[key] = TlsaSet(key, tuple(records), entry.validated)
    return out


def _arrivals(doc: EnvDocument, pos: Positions, problems: list[Diagnostic],
              dns: Mapping[str, tuple[str, ...]],
              svcb: Mapping[str, tuple[ServiceRecord, ...]],
              tlsa: Mapping[str, TlsaSet]) -> tuple[Arrival, ...]:
    """The `arrivals:` section, checked against the answers it times (Rule 5)."""
    families: dict[str, set[str]] = {}
    for name, addresses in dns.items():
        got = families.setdefault(dns_name(name), set())
        got.update("AAAA" if ":" in a else "A" for a in addresses)
    asked_as = _service_types(svcb)
    out: list[Arrival] = []
    seen: dict[tuple[str, str], int] = {}
    timed: set[tuple[str, str]] = set()  # refused ones too: one problem, not a second
    for i, item in enumerate(doc.arrivals):
        where: tuple[Any, ...] = ("arrivals", i)
        if (why := _owner_problem(item.name, "name")) is not None:
            problems.append(pos.diagnostic((*where, "name"), why))
            continue
        name = dns_name(item.name)
        timed.add((name, item.type))
        if item.type in ("HTTPS", "SVCB") and \
                item.type not in (types := asked_as.get(name, {_own_type(name)})):
            problems.append(pos.diagnostic((*where, "type"), _asked_as(name, types, item.type)))
            continue
        query = (name, item.type)
        if query in seen:
            problems.append(pos.diagnostic(
                (*where, "type"), f"a second {item.type} answer for {shown(name)} (the first "
                                  f"is arrivals[{seen[query]}]): a query is answered once"))
            continue
        seen[query] = i
        why = _disagreement(item, name, families, svcb, tlsa)
        if why is not None:
            problems.append(pos.diagnostic((*where, "negative"), why))
            continue
        out.append(Arrival(name, item.type, float(item.at_ms), item.ttl, item.negative))
    if timed:
        _untimed(doc, pos, problems, timed)
    return tuple(out)


def _own_type(owner: str) -> str:
    """The type `names.service_query` asks `owner` with: SVCB for `_PORT._SCHEME.host` of a
    scheme other than https, HTTPS for the host itself and `_PORT._https.host` (https and
    quic targets)."""
    match = _SERVICE_OWNER.match(owner)
    return "SVCB" if match is not None and match.group(1).lower() != "https" else "HTTPS"


def _service_types(svcb: Mapping[str, tuple[ServiceRecord, ...]]) -> dict[str, set[str]]:
    """The record types each name of `svcb` (and each AliasMode target in it) is asked with
    (Rule 7): its own (`_own_type`), and an alias target also the type of every chain that
    reaches it (RFC 9460 section 2.4.2: a client follows an alias with the query's type).
    Each chain is followed at most ALIAS_LIMIT names (Rule 4)."""
    out: dict[str, set[str]] = {}
    for owner in svcb:
        rtype = _own_type(owner)
        out.setdefault(owner, set()).add(rtype)
        name, seen = owner, {owner}
        for _ in range(ALIAS_LIMIT):
            alias = next((r for r in svcb.get(name, ()) if r.alias), None)
            if alias is None or alias.target in (".", "") or alias.target in seen:
                break
            name = alias.target
            seen.add(name)
            out.setdefault(name, {_own_type(name)}).add(rtype)
    return out


def _asked_as(name: str, types: set[str], given: str) -> str:
    """Why an arrival typed `given` times no query made for `name` (Rule 7)."""
    if types == {"HTTPS"}:
        how = ("an https:// or quic:// target's host, its _PORT._https.host and the AliasMode "
               "targets their chains reach are asked for HTTPS records")
    else:
        how = ("_PORT._SCHEME.host of a scheme other than https and the AliasMode targets "
               "its chain reaches are asked for SVCB records")
    return (f"{shown(name)} is asked as {' or '.join(sorted(types))}, not {given}: {how}, so "
            f"no {given} answer arrives for it")


def _disagreement(item: ArrivalItem, name: str, families: Mapping[str, set[str]],
                  svcb: Mapping[str, tuple[ServiceRecord, ...]],
                  tlsa: Mapping[str, TlsaSet]) -> str | None:
    """Why an arrival contradicts the answer it times, or None."""
    what = f"{'a negative' if item.negative else 'a positive'} {item.type} answer for " \
           f"{shown(name)}"
    if item.type in ("A", "AAAA"):
        family = "IPv4" if item.type == "A" else "IPv6"
        has = item.type in families.get(name, set())
        if has == item.negative:
            return (f"{what}, but dns holds {'an' if has else 'no'} {family} address for it"
                    + ("" if has else " (a positive answer has addresses)"))
    elif item.type in ("HTTPS", "SVCB"):
        records = svcb.get(name)
        if records is None:
            return f"{what}, but svcb has no entry for it (a negative answer is `{name}: []`)"
        if bool(records) == item.negative:
            return f"{what}, but svcb holds {len(records)} record(s) for it"
    else:
        tlsa_set = tlsa.get(name)
        if tlsa_set is None:
            return (f"{what}, but tlsa has no entry for it (a negative answer is "
                    f"`{name}: {{records: []}}`)")
        if bool(tlsa_set.records) == item.negative:
            return f"{what}, but tlsa holds {len(tlsa_set.records)} record(s) for it"
    return None


def _untimed(doc: EnvDocument, pos: Positions, problems: list[Diagnostic],
             timed: set[tuple[str, str]]) -> None:
    """With arrivals, every answer the snapshot holds says when it arrived (Rule 5)."""
    note = "with arrivals, every answer says when it arrived"
    for name, addresses in doc.dns.items():
        for rtype in dict.fromkeys("AAAA" if ":" in a else "A" for a in addresses):
            if (dns_name(name), rtype) not in timed:
                problems.append(pos.diagnostic(
                    ("dns", name), f"dns[{shown(name)}] holds "
                                   f"{'IPv6' if rtype == 'AAAA' else 'IPv4'} addresses but "
                                   f"arrivals has no {rtype} answer for it ({note})", key=True))
    for owner in doc.svcb:
        key = dns_name(owner)
        if (key, "HTTPS") not in timed and (key, "SVCB") not in timed:
            problems.append(pos.diagnostic(
                ("svcb", owner), f"svcb[{shown(owner)}] has no HTTPS or SVCB arrival ({note})",
                key=True))
    for name in doc.tlsa:
        if (dns_name(name), "TLSA") not in timed:
            problems.append(pos.diagnostic(
                ("tlsa", name), f"tlsa[{shown(name)}] has no TLSA arrival ({note})", key=True))
