"""Shared hypothesis strategies: policy documents, environments and requests.

Everything here builds plain dicts (the documents a user would write), never engine objects,
so a test can feed the same input to the engine and to its own oracle.

Conventions the property tests rely on:
- every generated document has an explicit, distinct `name` within its layer;
- rule ids are unique across the whole scenario (`WORD.TAG`, TAG = layer letter + doc index),
  so a statement in explain output can be traced back to the rule that made it;
- only the first document of the system layer carries `interfaces:` facts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from taps_post.policy.registry import INTERFACE_TYPES, KINDS, REGISTRY, known_keys

__all__ = [
    "APP_NAMES",
    "HOST_NAMES",
    "KEYS",
    "PREFS",
    "environments",
    "flatten_set",
    "junk",
    "layer_docs",
    "policy_doc",
    "rule_dict",
    "scenarios",
    "targets",
    "values_for",
    "whens",
]

PREFS: tuple[str, ...] = ("require", "prefer", "no_preference", "avoid", "prohibit")
APP_NAMES: tuple[str, ...] = ("backup", "backupd", "browser", "mail", "Backup")
APP_GLOBS: tuple[str, ...] = ("backup*", "b*", "*", "mail", "br?wser", "[bm]*", "Backup",
                              "nothing")
HOST_NAMES: tuple[str, ...] = ("example.com", "api.example.com", "cdn.example.net", "other.org")
HOST_GLOBS: tuple[str, ...] = ("*.example.com", "example.com", "*", "EXAMPLE.COM", "*.net",
                               "198.18.*", "198.18.0.0/15", "198.18.1.0/24", "fd00::/8",
                               "fd00:1::/32", "10.0.0.0/8")
IFACE_NAMES: tuple[str, ...] = ("eth0", "eth1", "wlan0", "wwan0", "tun0", "en0")
IFACE_GLOBS: tuple[str, ...] = ("eth*", "wlan0", "wwan?", "en[0-9]", "tun*")
PVDS: tuple[str, ...] = ("corp", "home")
ALPN: tuple[str, ...] = ("h2", "http/1.1", "h3")
SCHEMES: tuple[str, ...] = ("https", "tls", "tcp", "udp", "quic", "hostport")
PROFILES: tuple[str, ...] = ("reliable-inorder-stream", "reliable-message", "unreliable-datagram")
RULE_WORDS: tuple[str, ...] = ("alpha", "bravo", "charlie", "delta", "echo", "fox", "golf",
                               "hotel", "india", "juliet")
DOC_NAMES: tuple[str, ...] = ("base", "corp", "local", "zz-last", "aa-first", "team")
PORTS: tuple[int, ...] = (443, 80, 8443, 53, 4433)


def _keys() -> list[str]:
    out: list[str] = []
    for key in known_keys():
        if key == "pvd.NAME":
            out.extend(f"pvd.{p}" for p in PVDS)
        else:
            out.append(key)
    out.extend(f"interface.{g}" for g in IFACE_GLOBS)
    return out


KEYS: tuple[str, ...] = tuple(_keys())
"""Every policy key the registry knows, with concrete leaves for the map keys."""


def _spec(key: str) -> Any:
    return REGISTRY.get(key) or REGISTRY[key.partition(".")[0]]


def values_for(key: str) -> st.SearchStrategy[Any]:
    """Valid values for `key`, from its registry kind; small pools so that values collide."""
    spec = _spec(key)
    if spec.kind == "preference":
        return st.sampled_from(PREFS)
    if spec.kind == "int":
        lo = spec.minimum if spec.minimum is not None else 0
        hi = spec.maximum if spec.maximum is not None else lo + 100_000
        pool = sorted({lo, lo + 1, min(hi, lo + 5), min(hi, 250), hi})
        return st.one_of(st.sampled_from(pool), st.integers(lo, hi))
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "enum":
        return st.sampled_from(spec.choices)
    if spec.kind == "tls_version":
        return st.sampled_from(("1.2", "1.3", 1.2, 1.3))
    if spec.kind == "string_list":
        return st.one_of(st.sampled_from(ALPN),
                         st.lists(st.sampled_from(ALPN), min_size=1, max_size=3))
    raise AssertionError(spec.kind)


def _one_or_list(items: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(items, st.lists(items, min_size=1, max_size=3))


_PORT_ITEMS = st.one_of(st.sampled_from(PORTS), st.sampled_from(("400-500", "1-1024", "443",
                                                                 "8000-9000", "0-65535")))


@st.composite
def whens(draw: st.DrawFn) -> dict[str, Any]:
    """A `when:` mapping; each field present with probability about 1/4."""
    def maybe() -> bool:
        return draw(st.integers(0, 3)) == 0

    when: dict[str, Any] = {}
    if maybe():
        when["app"] = draw(_one_or_list(st.sampled_from(APP_GLOBS)))
    if maybe():
        when["host"] = draw(_one_or_list(st.sampled_from(HOST_GLOBS)))
    if maybe():
        when["port"] = draw(_one_or_list(_PORT_ITEMS))
    if maybe():
        when["scheme"] = draw(_one_or_list(st.sampled_from(SCHEMES)))
    if maybe():
        when["kind"] = draw(_one_or_list(st.sampled_from(KINDS)))
    return when


def render_set(flat: dict[str, Any], nest: Sequence[bool]) -> dict[str, Any]:
    """Write a flat {dotted key: value} as a `set:` block, nesting the keys chosen by `nest`."""
    out: dict[str, Any] = {}
    for (key, value), nested in zip(flat.items(), nest, strict=True):
        head, dot, tail = key.partition(".")
        if nested and dot:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def flatten_set(block: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The oracle's own reading of a `set:` block: nested maps joined with dots."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten_set(value, full))
        else:
            out[full] = value
    return out


@st.composite
def set_blocks(draw: st.DrawFn, keys: Sequence[str] = KEYS, max_size: int = 4) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(keys), max_size=max_size, unique=True))
    flat = {k: draw(values_for(k)) for k in chosen}
    nest = draw(st.lists(st.booleans(), min_size=len(flat), max_size=len(flat)))
    return render_set(flat, nest)


@st.composite
def rule_dict(draw: st.DrawFn, rule_id: str, keys: Sequence[str] = KEYS) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": rule_id}
    if draw(st.booleans()):
        rule["description"] = draw(st.sampled_from(("", "a rule", "Ünïcode — text")))
    when = draw(whens())
    if when or draw(st.booleans()):
        rule["when"] = when
    if draw(st.booleans()):
        rule["enforce"] = draw(st.booleans())
    if draw(st.booleans()):
        rule["priority"] = draw(st.integers(-2, 2))
    if draw(st.integers(0, 4)) == 0:
        rule["use"] = draw(st.lists(st.sampled_from(PROFILES), max_size=2))
    rule["set"] = draw(set_blocks(keys))
    return rule


@st.composite
def interface_facts(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        match: dict[str, Any] = {}
        if draw(st.booleans()):
            match["name"] = draw(st.sampled_from((*IFACE_GLOBS, *IFACE_NAMES)))
        if not match or draw(st.booleans()):
            match["type"] = draw(st.sampled_from(INTERFACE_TYPES))
        fact: dict[str, Any] = {"match": match}
        if draw(st.booleans()):
            fact["type"] = draw(st.sampled_from(INTERFACE_TYPES))
        if draw(st.booleans()):
            fact["metered"] = draw(st.booleans())
        if draw(st.booleans()):
            fact["cost"] = draw(st.integers(0, 20))
        if draw(st.booleans()):
            fact["pvd"] = draw(st.sampled_from(PVDS))
        out.append(fact)
    return out


@st.composite
def policy_doc(draw: st.DrawFn, layer: str, name: str, tag: str, keys: Sequence[str] = KEYS,
               facts: bool = False, max_rules: int = 4) -> dict[str, Any]:
    n = draw(st.integers(0, max_rules))
    words = draw(st.lists(st.sampled_from(RULE_WORDS), min_size=n, max_size=n, unique=True))
    doc: dict[str, Any] = {"version": 1, "layer": layer, "name": name,
                           "rules": [draw(rule_dict(f"{w}.{tag}", keys)) for w in words]}
    if facts and layer == "system" and draw(st.booleans()):
        doc["interfaces"] = draw(interface_facts())
    return doc


@st.composite
def layer_docs(draw: st.DrawFn, layer: str, keys: Sequence[str] = KEYS, min_docs: int = 0,
               max_docs: int = 3) -> list[dict[str, Any]]:
    n = draw(st.integers(min_docs, max_docs))
    names = draw(st.lists(st.sampled_from(DOC_NAMES), min_size=n, max_size=n, unique=True))
    return [draw(policy_doc(layer, name, f"{layer[0]}{i}", keys, facts=i == 0))
            for i, name in enumerate(names)]


_V4 = int(ipaddress.IPv4Address("198.18.0.0"))
_V6 = int(ipaddress.IPv6Address("fd00::"))


def _v4() -> st.SearchStrategy[str]:
    # A few hot values so that addresses repeat across interfaces, DNS and targets.
    return st.one_of(st.sampled_from(("198.18.0.1", "198.18.1.1", "198.19.255.254")),
                     st.integers(0, 2**17 - 1).map(lambda i: str(ipaddress.IPv4Address(_V4 + i))))


def _v6() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(("fd00::1", "fd00:1::5", "fdff::ffff")),
                     st.integers(0, 2**120 - 1).map(lambda i: str(ipaddress.IPv6Address(_V6 + i))))


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """(target text, its host:port as a cache entry would name it)."""
    scheme = draw(st.sampled_from(SCHEMES))
    kind = draw(st.sampled_from(("name", "name", "v4", "v6")))
    host = {"name": st.sampled_from(HOST_NAMES), "v4": _v4(), "v6": _v6()}[kind]
    host_text = draw(host)
    in_url = f"[{host_text}]" if kind == "v6" else host_text
    port = draw(st.sampled_from(PORTS))
    if scheme in ("https", "quic") and draw(st.booleans()):
        return f"{scheme}://{in_url}", f"{in_url}:443"
    if scheme == "hostport":
        return f"{in_url}:{port}", f"{in_url}:{port}"
    return f"{scheme}://{in_url}:{port}", f"{in_url}:{port}"


@st.composite
def environments(draw: st.DrawFn, hostport: str = "example.com:443") -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(IFACE_NAMES), min_size=1, max_size=4, unique=True))
    interfaces: list[dict[str, Any]] = []
    if draw(st.booleans()):
        interfaces.append({"name": "lo", "type": "loopback", "addresses": ["127.0.0.1", "::1"]})
    for name in names:
        # Mostly both families, sometimes one or none (then the branch is unreachable).
        addresses: list[Any] = draw(st.lists(_v4(), min_size=int(draw(st.integers(0, 3)) > 0),
                                             max_size=2, unique=True))
        for a in draw(st.lists(_v6(), min_size=int(draw(st.integers(0, 3)) > 0), max_size=2,
                               unique=True)):
            addresses.append({"address": a, "temporary": True} if draw(st.booleans()) else a)
        iface: dict[str, Any] = {
            "name": name,
            "type": draw(st.sampled_from(INTERFACE_TYPES)),
            "addresses": addresses,
        }
        if draw(st.booleans()):
            iface["up"] = draw(st.sampled_from((True, True, False)))
        if draw(st.booleans()):
            iface["metered"] = draw(st.booleans())
        if draw(st.booleans()):
            iface["cost"] = draw(st.integers(0, 20))
        if draw(st.booleans()):
            iface["pvd"] = draw(st.sampled_from(PVDS))
        interfaces.append(iface)
    dns: dict[str, list[str]] = {}
    for host in draw(st.lists(st.sampled_from(HOST_NAMES), unique=True)):
        dns[host] = draw(st.lists(st.one_of(_v4(), _v6()), max_size=3, unique=True))
    target_host = hostport.rpartition(":")[0]
    if target_host in HOST_NAMES and draw(st.integers(0, 5)) > 0:  # usually it resolves
        dns[target_host] = draw(st.lists(st.one_of(_v4(), _v6()), min_size=1, max_size=3,
                                         unique=True))
    cache: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        entry: dict[str, Any] = {
            "remote": draw(st.sampled_from((hostport, hostport, "other.org:443"))),
            "stack": draw(st.sampled_from(("tcp", "tls", "quic", "mptcp", "tls-mptcp", "udp"))),
            "outcome": draw(st.sampled_from(("success", "failure"))),
        }
        if draw(st.booleans()):
            entry["rtt_ms"] = draw(st.sampled_from((0, 5, 20.5, 100)))
        if draw(st.booleans()):
            entry["interface"] = draw(st.sampled_from((*names, "nosuch0")))
        cache.append(entry)
    return {"interfaces": interfaces, "dns": dns, "cache": cache}


@st.composite
def scenarios(draw: st.DrawFn, max_docs: int = 3) -> dict[str, Any]:
    """A whole request: target, app name, kind, environment and the three policy layers.

    The layers draw their keys from a small per-scenario pool, so that several rules and
    layers speak about the same key (that is where resolution has work to do).
    """
    target, hostport = draw(targets())
    pool = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    return {
        "target": target,
        "app_name": draw(st.sampled_from((*APP_NAMES, None))),
        "kind": draw(st.sampled_from(KINDS)),
        "env": draw(environments(hostport)),
        "system": draw(layer_docs("system", pool, max_docs=max_docs)),
        "app": draw(layer_docs("app", pool, max_docs=max_docs)),
        "carrier": draw(layer_docs("carrier", pool, max_docs=max_docs)),
        "pool": pool,
    }


# --- junk, for the loader fuzz -------------------------------------------------------------

# No control characters, surrogates or line/paragraph separators: see test_bad_input.py for
# the (xfailed) cases that show what those do today.
_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=8)
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70_000), st.integers(), st.floats(allow_nan=False),
    _TEXT, st.sampled_from((*PREFS, *KINDS, *SCHEMES, "1.2", "1.3", "*", "[", "a-b", "9-1",
                            "10.0.0.0/33", "", "version", "rules", "set")),
)
_KEYS_JUNK = st.one_of(
    st.sampled_from(("version", "layer", "name", "rules", "interfaces", "id", "when", "set",
                     "enforce", "priority", "use", "description", "match", "app", "host",
                     "port", "scheme", "kind", "secure", "racing", "interface", *KEYS)),
    _TEXT,
)


def junk(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Arbitrary JSON-like data (YAML-dumpable), biased towards policy vocabulary."""
    return st.recursive(
        _SCALARS,
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(_KEYS_JUNK, children, max_size=4)),
        max_leaves=max_leaves,
    )
