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
        pool = sorted({lo, lo + 1, min(hi, lo + 5), min(hi, max(lo, 250)), hi})
        return st.one_of(st.sampled_from(pool), st.integers(lo, hi))
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "enum":
        return st.sampled_from(spec.choices)
    if spec.kind == "tls_version":
        return st.sampled_from(("1.2", "1.3", 1.2, 1.3))
    if spec.kind == "string_list":
        # A list with choices (message.dscp) takes only those; a checked one (rendezvous.stun,
        # rendezvous.turn) its registry samples; any other any word.
        words = spec.options() or spec.samples or ALPN
        return st.one_of(st.sampled_from(words),
                         st.lists(st.sampled_from(words), min_size=1, max_size=3))
    raise AssertionError(spec.kind)


def _one_or_list(items: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(items, st.lists(items, min_size=1, max_size=3))


_PORT_ITEMS = st.one_of(st.sampled_from(PORTS), st.sampled_from(("400-500", "1-1024", "443",
                                                                 "8000-9000", "0-65535")))


_WHEN_FIELDS = (
    ("app", _one_or_list(st.sampled_from(APP_GLOBS))),
    ("host", _one_or_list(st.sampled_from(HOST_GLOBS))),
    ("port", _one_or_list(_PORT_ITEMS)),
    ("scheme", _one_or_list(st.sampled_from(SCHEMES))),
    ("kind", _one_or_list(st.sampled_from(KINDS))),
)


def _bits(flags: int, i: int) -> bool:
    """Bit i of a flag word: one draw decides many small yes/no questions (fast to generate)."""
    return bool(flags >> i & 1)


@st.composite
def whens(draw: st.DrawFn) -> dict[str, Any]:
    """A `when:` mapping; each field present with probability 1/4."""
    flags = draw(st.integers(0, 2 ** (2 * len(_WHEN_FIELDS)) - 1))
    return {name: draw(values) for i, (name, values) in enumerate(_WHEN_FIELDS)
            if _bits(flags, 2 * i) and _bits(flags, 2 * i + 1)}


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
    flags = draw(st.integers(0, 255))
    if _bits(flags, 0) and _bits(flags, 1):
        rule["description"] = ("", "a rule", "Ünïcode — text")[flags % 3]
    when = draw(whens())
    if when or _bits(flags, 2):
        rule["when"] = when
    if _bits(flags, 3):
        rule["enforce"] = _bits(flags, 4)
    if _bits(flags, 5):
        rule["priority"] = draw(st.integers(-2, 2))
    if _bits(flags, 6) and _bits(flags, 7):
        rule["use"] = draw(st.lists(st.sampled_from(PROFILES), max_size=2))
    rule["set"] = draw(set_blocks(keys))
    return rule


@st.composite
def interface_facts(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        flags = draw(st.integers(0, 127))
        match: dict[str, Any] = {}
        if _bits(flags, 0):
            match["name"] = draw(st.sampled_from((*IFACE_GLOBS, *IFACE_NAMES)))
        if not match or _bits(flags, 1):
            match["type"] = draw(st.sampled_from(INTERFACE_TYPES))
        fact: dict[str, Any] = {"match": match}
        if _bits(flags, 2):
            fact["type"] = draw(st.sampled_from(INTERFACE_TYPES))
        if _bits(flags, 3):
            fact["metered"] = _bits(flags, 4)
        if _bits(flags, 5):
            fact["cost"] = draw(st.integers(0, 20))
        if _bits(flags, 6):
            fact["pvd"] = PVDS[flags % 2]
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
    # Small integers shrink to a few hot addresses, which then repeat across interfaces, DNS
    # answers and targets; the high bits still spread over the whole of 198.18.0.0/15.
    return st.integers(0, 2**17 - 1).map(lambda i: str(ipaddress.IPv4Address(_V4 + i)))


def _v6() -> st.SearchStrategy[str]:
    return st.integers(0, 2**24 - 1).map(
        lambda i: str(ipaddress.IPv6Address(_V6 + ((i >> 16) << 112) + (i & 0xFFFF))))


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
        flags = draw(st.integers(0, 2**17 - 1))
        # Mostly both families, sometimes one or none (then the branch is unreachable).
        v4 = draw(st.lists(_v4(), min_size=int(flags & 3 > 0), max_size=2, unique=True))
        v6 = draw(st.lists(_v6(), min_size=int(flags >> 2 & 3 > 0), max_size=2, unique=True))
        addresses: list[Any] = [*v4, *({"address": a, "temporary": True}
                                       if _bits(flags, 4 + i) else a for i, a in enumerate(v6))]
        iface: dict[str, Any] = {
            "name": name,
            "type": INTERFACE_TYPES[(flags >> 6) % len(INTERFACE_TYPES)],
            "addresses": addresses,
        }
        if _bits(flags, 9):
            iface["up"] = not (_bits(flags, 10) and _bits(flags, 11))
        if _bits(flags, 12):
            iface["metered"] = _bits(flags, 13)
        if _bits(flags, 14):
            iface["cost"] = draw(st.integers(0, 20))
        if _bits(flags, 15):
            iface["pvd"] = PVDS[flags >> 16 & 1]
        interfaces.append(iface)
    dns: dict[str, list[str]] = {}
    for host in draw(st.lists(st.sampled_from(HOST_NAMES), unique=True)):
        dns[host] = draw(st.lists(st.one_of(_v4(), _v6()), max_size=3, unique=True))
    target_host = hostport.rpartition(":")[0]
    if target_host in HOST_NAMES and draw(st.integers(0, 5)) > 0:  # usually it resolves
        dns[target_host] = draw(st.lists(st.one_of(_v4(), _v6()), min_size=1, max_size=3,
                                         unique=True))
    cache: list[dict[str, Any]] = []
    stacks = ("tcp", "tls", "quic", "mptcp", "tls-mptcp", "udp")
    for _ in range(draw(st.integers(0, 3))):
        flags = draw(st.integers(0, 2**12 - 1))
        entry: dict[str, Any] = {
            "remote": "other.org:443" if flags & 3 == 3 else hostport,
            "stack": stacks[(flags >> 2) % len(stacks)],
            "outcome": ("success", "failure")[flags >> 5 & 1],
        }
        if entry["stack"] in ("mptcp", "tls-mptcp") and draw(st.booleans()):
            entry["outcome"] = "fallback"  # the peer answered MPTCP as plain TCP
        if _bits(flags, 6):
            entry["rtt_ms"] = (0, 5, 20.5, 100)[flags >> 7 & 3]
        if _bits(flags, 9):
            entry["interface"] = (*names, "nosuch0")[(flags >> 10) % (len(names) + 1)]
        cache.append(entry)
    env: dict[str, Any] = {"interfaces": interfaces, "dns": dns, "cache": cache}
    manager = draw(st.sampled_from((None, "kernel", "userspace", "disabled")))
    if manager is not None:
        env["mptcp"] = {"pathManager": manager}
    return env


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

# No control characters, surrogates or line/paragraph separators here: test_bad_input.py has
# dedicated cases for them.
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
