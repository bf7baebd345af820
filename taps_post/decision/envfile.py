"""Environment snapshots: the file format and its loader (docs/explain.md, "Running it").

Rule 1: a snapshot is checked as strictly as a policy file, with the same `file:line:col`
errors, because a dry run on a wrong snapshot explains a machine that does not exist.
Rule 2: stack names are checked against the stack catalogue when a snapshot is loaded, so a
snapshot may hold history for a stack registered after import.
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

from ..diagnostics import Diagnostic, InputError
from ..policy import catalog
from ..policy.load import pydantic_diagnostics, read_policy_text
from ..policy.model import enum_schema, one_of
from ..policy.registry import INTERFACE_TYPES
from ..policy.yamlpos import Positions, load_yaml
from .environment import Address, CacheEntry, Environment, Interface

__all__ = ["EnvDocument", "load_environment"]

IfType = Literal["loopback", "ethernet", "wifi", "cellular", "vpn", "other"]
assert set(IfType.__args__) == set(INTERFACE_TYPES)  # type: ignore[attr-defined]
StackName = Annotated[str, one_of(catalog.names), enum_schema(catalog.names)]


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
    mtu: StrictInt | None = Field(None, ge=68)
    gateways: list[str] = Field(default_factory=list)

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
    outcome: Literal["success", "failure"]
    rtt_ms: float | None = Field(None, ge=0)
    ticket: StrictBool = False
    interface: str | None = None
    address: str | None = Field(None, description="remote address the entry is about")


class EnvDocument(BaseModel):
    """An environment snapshot for dry runs and tests."""

    model_config = ConfigDict(extra="forbid", title="taps_post environment snapshot")
    interfaces: list[InterfaceEntry] = Field(default_factory=list)
    dns: dict[str, list[str]] = Field(default_factory=dict)
    cache: list[CacheItem] = Field(default_factory=list)


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
        raise InputError(pydantic_diagnostics(exc, pos)) from None
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
        interfaces.append(Interface(entry.name, entry.type, entry.up, tuple(addrs),
                                    entry.metered, entry.cost, entry.pvd, entry.mtu,
                                    tuple(entry.gateways)))
    dns: dict[str, tuple[str, ...]] = {}
    for name, answers in doc.dns.items():
        for j, text_addr in enumerate(answers):
            try:
                ipaddress.ip_address(text_addr)
            except ValueError:
                problems.append(pos.diagnostic(("dns", name, j),
                                               f"{text_addr!r} is not an IP address"))
        dns[name.lower()] = tuple(answers)
    names = [i.name for i in interfaces]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append(pos.diagnostic(("interfaces", i, "name"),
                                           f"duplicate interface name {name!r}"))
    if problems:
        raise InputError(problems)
    cache = tuple(CacheEntry(c.remote.lower(), c.stack, c.outcome, c.rtt_ms, c.ticket,
                             c.interface, c.address) for c in doc.cache)
    return Environment(tuple(interfaces), dns, cache, source=pos.source)
