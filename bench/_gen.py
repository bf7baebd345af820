"""Deterministic generators for the benchmarks: policy layers and an environment snapshot.

The workload is the one the performance issue names: three layers (system, app, carrier)
holding N rules in all, and an environment of 8 interfaces x 6 stacks x 8 remote addresses =
384 candidates for `svc.example:8443` (the bare host:port form, so the scheme allows all six
stacks).

Rules are meant to look like real policy, not like N copies of one line: varied `when`
(app globs, host globs, CIDRs, ports and ranges, schemes, kinds), about one in eight matching
the request, a mix of keys written nested or dotted, some `use:` profiles, some enforced, some
with priorities, and a few system-layer interface facts.

Rules that MATCH the request only state values that keep every one of the 384 candidates
(soft preferences, runtime knobs, generous maxCost), so that the candidate count stays exactly
384 at every size. Rules that do NOT match may state anything, including hard
require/prohibit values, profiles and `multipath: disabled`: they cost matching time, exactly
like the unrelated rules of a real machine, but never change the decision.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = [
    "APP_NAME",
    "EXPECTED_CANDIDATES",
    "HOST",
    "PORT",
    "TARGET",
    "Workload",
    "environment",
    "policy_layers",
    "write_workload",
]

HOST = "svc.example"
PORT = 8443
TARGET = f"{HOST}:{PORT}"
APP_NAME = "com.example.mail"
EXPECTED_CANDIDATES = 8 * 6 * 8

# Share of the rules (after the fixed carrier rule) whose `when` matches the request.
MATCH_SHARE = 0.12
LAYER_SHARE = (("system", 0.40), ("app", 0.35), ("carrier", 0.25))

# --- environment -----------------------------------------------------------------------------

_INTERFACES: tuple[tuple[str, str, int, bool, str | None], ...] = (
    # name, type, cost, metered, pvd
    ("eth0", "ethernet", 0, False, None),
    ("eth1", "ethernet", 1, False, None),
    ("wlan0", "wifi", 2, False, "home.example"),
    ("wlan1", "wifi", 3, False, None),
    ("wwan0", "cellular", 10, True, "carrier-a.example"),
    ("wwan1", "other", 15, False, None),  # the system policy's interface facts fix this one
    ("tun0", "vpn", 1, False, "corp.example"),
    ("usb0", "other", 5, False, None),
)


def environment() -> dict[str, Any]:
    """8 up, non-loopback interfaces (one IPv4 + one global IPv6 each); 4 + 4 DNS answers."""
    interfaces = []
    for i, (name, kind, cost, metered, pvd) in enumerate(_INTERFACES, start=1):
        entry: dict[str, Any] = {
            "name": name,
            "type": kind,
            "up": True,
            "addresses": [f"198.51.100.{10 + i}", f"2001:db8:{i:x}::{10 + i:x}"],
            "metered": metered,
            "cost": cost,
            "mtu": 1500 if kind != "vpn" else 1400,
            "gateways": [f"198.51.100.{i}"],
        }
        if pvd:
            entry["pvd"] = pvd
        interfaces.append(entry)
    return {
        "interfaces": interfaces,
        "dns": {
            HOST: [*(f"2001:db8:ff::{i}" for i in range(1, 5)),
                   *(f"203.0.113.{i}" for i in range(1, 5))],
            "api.example": ["2001:db8:fe::1", "203.0.113.50"],
            "backup.example.net": ["192.0.2.80"],
        },
        "cache": [
            {"remote": TARGET, "stack": "quic", "outcome": "success", "rtt_ms": 21.5,
             "ticket": True, "interface": "wlan0"},
            {"remote": TARGET, "stack": "tcp", "outcome": "failure", "interface": "wwan0"},
            {"remote": TARGET, "stack": "tls", "outcome": "success", "rtt_ms": 35.0},
            {"remote": "api.example:443", "stack": "quic", "outcome": "success", "rtt_ms": 12.0},
        ],
    }


# --- `when` ----------------------------------------------------------------------------------

# (matching variants, non-matching variants) per `when` field, for the request
# app=com.example.mail, host=svc.example, port=8443, scheme=hostport, kind=initiate.
_WHEN: dict[str, tuple[list[Any], list[Any]]] = {
    "app": (
        ["com.example.*", "com.example.mail", "*", "com.*.mail", ["org.chat.*", "com.example.*"],
         "com.example.[lm]ail"],
        ["backup*", "org.videoconf.*", "com.example.browser", ["net.sync.*", "io.metrics.agent"],
         "com.example.mail.helper", "updater"],
    ),
    "host": (
        ["svc.example", "*.example", "svc.*", "SVC.EXAMPLE", ["api.example", "svc.example"],
         "s?c.example"],
        ["*.corp.internal", "10.0.0.0/8", "2001:db8:100::/48", "backup.example.net",
         ["*.cdn.example.org", "192.0.2.0/24"], "*.onion", "mail.example.com"],
    ),
    "port": (
        [8443, "8000-8999", [443, 8443], "1024-65535", ["8443", 9443]],
        [53, 443, [80, 443], "5000-5999", "0-1023", [25, 587, 993]],
    ),
    "scheme": (
        ["hostport", ["hostport", "tcp"], ["https", "hostport", "quic"]],
        ["https", ["quic", "udp"], "tls", ["tcp", "udp"]],
    ),
    "kind": (
        ["initiate", ["initiate", "listen"], ["initiate", "source", "sink"]],
        ["listen", ["source", "sink"], "respond"],
    ),
}
_FIELDS = tuple(_WHEN)


def _when(rng: random.Random, matching: bool) -> dict[str, Any]:
    weights = (0.08, 0.37, 0.30, 0.17, 0.08) if matching else (0.0, 0.40, 0.33, 0.19, 0.08)
    n = rng.choices(range(5), weights)[0]
    fields = rng.sample(_FIELDS, max(n, 0 if matching else 1))
    # Host and app are what real rules mostly key on.
    if fields and "host" not in fields and rng.random() < 0.5:
        fields[0] = "host"
    failing = rng.choice(fields) if not matching else None
    when: dict[str, Any] = {}
    for name in _FIELDS:  # stable field order in the file
        if name in fields:
            yes, no = _WHEN[name]
            # A copy: shared list objects would come out as YAML anchors and aliases.
            when[name] = copy.deepcopy(rng.choice(no if name == failing else yes))
    return when


# --- `set` -----------------------------------------------------------------------------------

_SOFT = ("prefer", "avoid", "no_preference")
_ALL = ("require", "prefer", "no_preference", "avoid", "prohibit")
_IFACE_LEAVES = ("ethernet", "wifi", "cellular", "vpn", "other", "wlan*", "eth*", "wwan?",
                 "tun*", "usb0")
_STACK_LEAVES = ("tcp", "tls", "quic", "mptcp", "tls-mptcp", "udp")
_PVD_LEAVES = ("home.example", "corp.example", "carrier-a.example")


def _safe_statement(rng: random.Random) -> tuple[str, Any]:
    """A statement that may win for the request without excluding any of the 384 candidates."""
    pick = rng.random()
    if pick < 0.22:
        return f"interface.{rng.choice(_IFACE_LEAVES)}", rng.choice(_SOFT)
    if pick < 0.34:
        return f"stack.{rng.choice(_STACK_LEAVES)}", rng.choice(_SOFT)
    if pick < 0.40:
        return f"pvd.{rng.choice(_PVD_LEAVES)}", rng.choice(("prefer", "avoid"))
    if pick < 0.46:
        return "metered", rng.choice(("avoid", "prefer", "no_preference"))
    if pick < 0.52:
        return f"addressFamily.{rng.choice(('ipv4', 'ipv6'))}", rng.choice(_SOFT)
    if pick < 0.62:
        key = rng.choice(("secure", "zeroRttMsg", "keepAlive", "multistreaming",
                          "preserveMsgBoundaries", "perMsgReliability", "reliability",
                          "preserveOrder", "congestionControl"))
        return key, rng.choice(_SOFT)
    if pick < 0.66:  # every stack offers these, so even require keeps all candidates
        key = rng.choice(("fullChecksumSend", "fullChecksumRecv", "softErrorNotify",
                          "activeReadBeforeSend"))
        return key, rng.choice(("require", "prefer", "no_preference"))
    if pick < 0.69:
        return "useTemporaryLocalAddress", rng.choice(("prefer", "avoid", "no_preference"))
    if pick < 0.72:
        return "maxCost", rng.choice((20, 50, 100))
    if pick < 0.75:
        return "multipath", rng.choice(("passive", "active"))
    return _runtime_statement(rng)


def _runtime_statement(rng: random.Random) -> tuple[str, Any]:
    key = rng.choice(("racing.attemptDelay", "racing.resolutionDelay", "connTimeout",
                      "message.maxSize", "security.minTlsVersion", "security.verifyPeer",
                      "security.sessionCache", "security.alpn"))
    value: Any = {
        "racing.attemptDelay": lambda: rng.choice((50, 100, 150, 250, 300)),
        "racing.resolutionDelay": lambda: rng.choice((20, 50, 80)),
        "connTimeout": lambda: rng.choice((5000, 10000, 30000, 60000)),
        "message.maxSize": lambda: rng.choice((65536, 1 << 20, 4 << 20, 16 << 20)),
        "security.minTlsVersion": lambda: rng.choice(("1.2", "1.3")),
        "security.verifyPeer": lambda: rng.random() < 0.9,
        "security.sessionCache": lambda: rng.random() < 0.7,
        "security.alpn": lambda: list(rng.choice((("h2", "http/1.1"), ("h3",), ("imap",)))),
    }[key]()
    return key, value


def _any_statement(rng: random.Random) -> tuple[str, Any]:
    """Any statement at all; used only by rules that do not match the request."""
    pick = rng.random()
    if pick < 0.25:
        return f"interface.{rng.choice(_IFACE_LEAVES)}", rng.choice(_ALL)
    if pick < 0.37:
        return f"stack.{rng.choice(_STACK_LEAVES)}", rng.choice(_ALL)
    if pick < 0.42:
        return f"addressFamily.{rng.choice(('ipv4', 'ipv6'))}", rng.choice(_ALL)
    if pick < 0.55:
        key = rng.choice(("secure", "zeroRttMsg", "keepAlive", "multistreaming", "metered",
                          "reliability", "preserveOrder", "useTemporaryLocalAddress"))
        return key, rng.choice(_ALL)
    if pick < 0.60:
        return "maxCost", rng.choice((0, 1, 5, 10))
    if pick < 0.65:
        return "multipath", rng.choice(("disabled", "passive", "active"))
    return _runtime_statement(rng)


def _render_set(statements: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Write each dotted key either dotted or nested, as people do."""
    out: dict[str, Any] = {}
    for key, value in statements.items():
        prefix, dot, leaf = key.partition(".")
        if dot and rng.random() < 0.5 and not isinstance(out.get(key), dict):
            nested = out.setdefault(prefix, {})
            if isinstance(nested, dict) and leaf not in nested:
                nested[leaf] = value
                continue
        out[key] = value
    return out


_WORDS = ("bulk", "video", "voip", "backup", "sync", "mail", "chat", "metrics", "update",
          "corp", "guest", "roaming", "lab", "cdn", "login", "push", "dns", "vpn")
_PURPOSES = ("keep it cheap", "keep it fast", "stay private", "stay on corp paths",
             "leave cellular alone")


def _rule(rng: random.Random, layer: str, index: int, matching: bool) -> dict[str, Any]:
    word = rng.choice(_WORDS)
    rule: dict[str, Any] = {"id": f"{layer[:3]}-{word}-{index:05d}"}
    if rng.random() < 0.4:
        rule["description"] = f"{word} traffic: {rng.choice(_PURPOSES)}"
    when = _when(rng, matching)
    if when:
        rule["when"] = when
    # Enforced statements are administrators' business: mostly the system layer.
    p_enforce = {"system": 0.25, "app": 0.08, "carrier": 0.02}[layer]
    if rng.random() < p_enforce:
        rule["enforce"] = True
    if rng.random() < 0.3:
        rule["priority"] = rng.choice((-10, 1, 5, 10, 20, 50))
    statement = _safe_statement if matching else _any_statement
    statements: dict[str, Any] = {}
    for _ in range(rng.choices((1, 2, 3, 4, 5), (0.30, 0.30, 0.20, 0.12, 0.08))[0]):
        key, value = statement(rng)
        statements.setdefault(key, value)
    # Profiles: only where they cannot win for the request (see the module docstring).
    if not matching and rng.random() < 0.12:
        rule["use"] = [rng.choice(("reliable-inorder-stream", "reliable-message",
                                   "unreliable-datagram"))]
    rule["set"] = _render_set(statements, rng)
    return rule


def _carrier_enabler() -> dict[str, Any]:
    """Lets udp (unreliable), mptcp and tls-mptcp (multipath) in: all six stacks stay."""
    return {
        "id": "car-svc-any-stack",
        "description": "This carrier takes any stack, multipath included",
        "when": {"host": HOST, "port": PORT},
        "priority": 1000,
        "set": {
            "multipath": "active",
            "reliability": "no_preference",
            "preserveOrder": "no_preference",
            "congestionControl": "no_preference",
        },
    }


def _interface_facts() -> list[dict[str, Any]]:
    return [
        {"match": {"name": "wwan*"}, "type": "cellular", "metered": True, "cost": 10},
        {"match": {"name": "wwan1"}, "cost": 15},
        {"match": {"name": "tun*"}, "type": "vpn", "pvd": "corp.example"},
        {"match": {"type": "wifi"}, "cost": 2},
    ]


def policy_layers(total_rules: int, seed: int = 1) -> dict[str, dict[str, Any]]:
    """Three policy documents (system, app, carrier) with `total_rules` rules in all."""
    if total_rules < 3:
        raise ValueError("need at least 3 rules (one per layer)")
    rng = random.Random(seed * 1_000_003 + total_rules)
    counts = {layer: max(1, round(total_rules * share)) for layer, share in LAYER_SHARE}
    counts["carrier"] = total_rules - counts["system"] - counts["app"]
    docs: dict[str, dict[str, Any]] = {}
    for layer, _share in LAYER_SHARE:
        rules: list[dict[str, Any]] = []
        if layer == "carrier":
            rules.append(_carrier_enabler())
        while len(rules) < counts[layer]:
            rules.append(_rule(rng, layer, len(rules), rng.random() < MATCH_SHARE))
        doc: dict[str, Any] = {"version": 1, "layer": layer, "name": f"bench-{layer}"}
        if layer == "system":
            doc["interfaces"] = _interface_facts()
        doc["rules"] = rules
        docs[layer] = doc
    return docs


@dataclass(frozen=True)
class Workload:
    rules: int
    system: str
    app: str
    carrier: str
    env: str

    @property
    def policy_paths(self) -> tuple[str, str, str]:
        return (self.system, self.app, self.carrier)


def _dump(path: str, data: dict[str, Any], header: str = "") -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header)
        yaml.safe_dump(data, fh, sort_keys=False, default_flow_style=None, width=100)


def write_workload(directory: str, total_rules: int, seed: int = 1) -> Workload:
    """Write system.yaml, app.yaml, carrier.yaml and env.yaml under `directory`."""
    os.makedirs(directory, exist_ok=True)
    header = "# yaml-language-server: $schema=../schemas/policy.schema.json\n"
    paths: dict[str, str] = {}
    for layer, doc in policy_layers(total_rules, seed).items():
        paths[layer] = os.path.join(directory, f"{layer}.yaml")
        _dump(paths[layer], doc, header)
    env = os.path.join(directory, "env.yaml")
    _dump(env, environment())
    return Workload(total_rules, paths["system"], paths["app"], paths["carrier"], env)
