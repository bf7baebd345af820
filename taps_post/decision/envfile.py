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
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..diagnostics import Diagnostic, InputError
from ..policy import catalog
from ..policy.load import pydantic_diagnostics, read_policy_text
from ..policy.model import enum_schema, one_of
from ..policy.registry import INTERFACE_TYPES
from ..policy.yamlpos import Positions, load_yaml
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

__all__ = ["EnvDocument", "load_environment"]

IfType = Literal["loopback", "ethernet", "wifi", "cellular", "vpn", "other"]
assert set(IfType.__args__) == set(INTERFACE_TYPES)  # type: ignore[attr-defined]
StackName = Annotated[str, one_of(catalog.names), enum_schema(catalog.names)]

MIN_MTU, MIN_MTU_IPV6, MAX_MTU = 68, 1280, 65536
"""RFC 791's minimum, RFC 8200's minimum for an interface with IPv6, and Linux loopback's
MTU (the largest a live machine reports; an IPv4 packet cannot use more anyway)."""
MAX_RTT_MS = 86_400_000.0
"""A day: a round-trip time above it is a unit mistake, not a path."""


def _refuse(message: str) -> PydanticCustomError:
    # A custom error carries our words as they are (pydantic would prefix "Value error, ").
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


class AddressEntry(BaseModel):
    """A local address; a plain string is shorthand for a stable (non-temporary) one."""

    model_config = ConfigDict(extra="forbid")
    address: str
    temporary: StrictBool = False


class InterfaceEntry(BaseModel):
    """An interface as discovery would report it, so a dry run sees a machine as it is."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1)
    type: IfType = "other"
    up: StrictBool = True
    addresses: list[AddressEntry] = Field(default_factory=list)
    metered: StrictBool = False
    cost: StrictInt = Field(0, ge=0)
    pvd: str | None = None
    mtu: StrictInt | None = Field(None, ge=MIN_MTU)
    gateways: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str | None:
        return _interface_name(value)

    @field_validator("pvd")
    @classmethod
    def _pvd(cls, value: str | None) -> str | None:
        return _printable(value, "pvd")

    @field_validator("mtu", mode="before")  # before the type check: our words, not pydantic's
    @classmethod
    def _mtu(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and \
                not MIN_MTU <= value <= MAX_MTU:
            shown_value = str(value) if len(str(value)) <= 12 else f"{str(value)[:12]}..."
            raise _refuse(f"mtu {shown_value} is out of range: an interface's MTU is from "
                          f"{MIN_MTU} to {MAX_MTU}")
        return value

    @field_validator("addresses", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        # "192.0.2.1" is shorthand for {address: "192.0.2.1"}; one shape for the checks below.
        if isinstance(value, list):
            return [{"address": a} if isinstance(a, str) else a for a in value]
        return value


class CacheItem(BaseModel):
    """How an earlier attempt went; candidates are ranked by it, as with a live Association."""

    model_config = ConfigDict(extra="forbid")
    remote: str = Field(..., description='"host:port"')
    stack: StackName
    outcome: Literal["success", "failure", "fallback"] = Field(
        ..., description="fallback: an MPTCP stack whose peer answered as plain TCP")
    rtt_ms: float | None = Field(None, ge=0)
    ticket: StrictBool = False
    interface: str | None = None
    address: str | None = Field(None, description="remote address the entry is about")

    @field_validator("remote")
    @classmethod
    def _remote(cls, value: str) -> str:
        if (why := remote_problem(value)) is not None:
            raise _refuse(why)
        return value

    @field_validator("rtt_ms", mode="before")
    @classmethod
    def _rtt(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not 0 <= value <= MAX_RTT_MS:  # NaN fails both
            raise _refuse(f"rtt_ms {value!r} is not a time from 0 to {MAX_RTT_MS:.0f} ms")
        return value

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str | None) -> str | None:
        return _interface_name(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return _ip(value)


class EndpointItem(BaseModel):
    """One in-kernel path manager endpoint, as `ip mptcp endpoint show` lists it."""

    model_config = ConfigDict(extra="forbid")
    address: str = Field(..., description="The endpoint's local IP address")
    interface: str | None = Field(
        None, description="The dev it is bound to; absent: the interface holding address")
    flags: list[Literal["signal", "subflow", "backup", "fullmesh", "implicit"]] = Field(
        default_factory=list)
    id: int | None = Field(None, ge=0, le=255)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip(value) or value

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str | None) -> str | None:
        return _interface_name(value)


class MptcpEntry(BaseModel):
    """The namespace's MPTCP state, as `taps-post interfaces --format json` reports it."""

    model_config = ConfigDict(extra="forbid")
    path_manager: Literal["kernel", "userspace", "disabled"] | None = Field(
        None, alias="pathManager",
        description="The MPTCP path manager in force: kernel (net.mptcp.pm_type=0), "
                    "userspace (pm_type=1), or disabled (net.mptcp.enabled=0); absent: unknown")
    endpoints: list[EndpointItem] = Field(
        default_factory=list,
        description="The in-kernel path manager's endpoints (ip mptcp endpoint show): explain "
                    "warns about one on an interface the policy excludes")


class EnvDocument(BaseModel):
    """An environment snapshot for dry runs and tests."""

    model_config = ConfigDict(extra="forbid", title="taps_post environment snapshot")
    interfaces: list[InterfaceEntry] = Field(default_factory=list)
    dns: dict[str, list[str]] = Field(default_factory=dict)
    cache: list[CacheItem] = Field(default_factory=list)
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
    try:
        doc = EnvDocument.model_validate(data)
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
    if problems:
        raise InputError(problems)
    cache = tuple(CacheEntry(c.remote.lower(), c.stack, c.outcome, c.rtt_ms, c.ticket,
                             c.interface, c.address) for c in doc.cache)
    endpoints = tuple(MptcpEndpoint(e.address, e.interface, tuple(e.flags), e.id)
                      for e in (doc.mptcp.endpoints if doc.mptcp else ()))
    return Environment(tuple(interfaces), dns, cache, source=pos.source,
                       path_manager=doc.mptcp.path_manager if doc.mptcp else None,
                       mptcp_endpoints=endpoints)
