"""Interface discovery against the real kernel: this machine, and a throw-away network namespace.

No kernel mocks: the namespace test builds the interfaces it asserts on, so the classification
table, the /proc parser and the psutil/netifaces plumbing are exercised together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import installed_env
from taps_post.policy.registry import INTERFACE_TYPES
from taps_post.system import interfaces
from taps_post.system.interfaces import RULES, classify, discover_interfaces, parse_if_inet6

# --- classify: the table, row by row -------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "sysfs_type", "wireless", "flags", "expected"),
    [
        # loopback: by type, by name, by IFF_LOOPBACK when sysfs is unreadable
        ("lo", 772, False, {"up", "loopback", "running"}, "loopback"),
        ("lo", None, False, set(), "loopback"),
        ("weird0", 772, False, set(), "loopback"),
        ("lo0", None, False, {"loopback"}, "loopback"),
        # wifi wins over any name, including ethernet-looking ones
        ("wlan0", 1, True, {"device"}, "wifi"),
        ("wlp2s0", 1, True, {"device"}, "wifi"),
        ("eth1", 1, True, {"device"}, "wifi"),
        # cellular by name, even when the modem driver presents ARPHRD_ETHER with a device
        ("wwan0", 1, False, {"device"}, "cellular"),
        ("wwan0", 1, False, set(), "cellular"),
        ("rmnet_data0", 519, False, set(), "cellular"),
        ("ccmni0", 1, False, set(), "cellular"),
        # ppp is ambiguous (modem or PPTP/L2TP): other, the system policy decides
        ("ppp0", 512, False, {"pointopoint"}, "other"),
        # vpn by name (checked before the ARPHRD_ETHER rules: a tap or dummy is type 1) ...
        ("tun0", 65534, False, {"pointopoint"}, "vpn"),
        ("tap0", 1, False, set(), "vpn"),
        ("wg0", 1, False, set(), "vpn"),
        ("wg0", 65534, False, set(), "vpn"),
        ("utun3", None, False, set(), "vpn"),
        ("ipsec0", None, False, set(), "vpn"),
        ("vpn-office", 1, False, set(), "vpn"),
        ("tailscale0", 65534, False, set(), "vpn"),
        # ... and by ARPHRD_NONE whatever the name
        ("corp", 65534, False, {"pointopoint"}, "vpn"),
        # ethernet by name, with or without sysfs
        ("eth0", 1, False, {"device"}, "ethernet"),
        ("eth0", None, False, set(), "ethernet"),
        ("enp3s0", 1, False, {"device"}, "ethernet"),
        ("eno1", 1, False, {"device"}, "ethernet"),
        ("em1", 1, False, {"device"}, "ethernet"),
        # ethernet by type + bus device, whatever the name
        ("lan", 1, False, {"device"}, "ethernet"),
        ("usb0", 1, False, {"device"}, "ethernet"),
        # virtual ethernet stand-ins for test namespaces
        ("veth0", 1, False, set(), "ethernet"),
        ("vethab12cd", 1, False, {"up", "running"}, "ethernet"),
        ("dummy0", 1, False, set(), "ethernet"),
        ("dummy0", None, False, set(), "other"),
        # everything else
        ("docker0", 1, False, set(), "other"),
        ("br-0f3e2a", 1, False, set(), "other"),
        ("virbr0", 1, False, set(), "other"),
        ("br0", 1, False, set(), "other"),
        ("ifb0", 1, False, set(), "other"),
        ("usb0", 1, False, set(), "other"),
        ("sit0", 776, False, set(), "other"),
        ("", None, False, set(), "other"),
    ],
)
def test_classify(
    name: str, sysfs_type: int | None, wireless: bool, flags: set[str], expected: str
) -> None:
    assert classify(name, sysfs_type, wireless, flags) == expected


def test_classify_patterns_are_case_sensitive() -> None:
    # Linux names are case-sensitive; "ETH0" is not the kernel's naming scheme.
    assert classify("ETH0", None, False, set()) == "other"


def test_rules_only_produce_registry_types() -> None:
    assert {rule.type for rule in RULES} <= set(INTERFACE_TYPES)
    assert RULES[-1].matches("anything", None, False, set()), "the table must end in a catch-all"


# --- /proc/net/if_inet6 parser ---------------------------------------------------------------

IF_INET6 = """\
fe80000000000000ec5c0ffffed68253 03 40 20 c0    wwan0
fd000005000000000000000000000099 03 40 00 c0    wwan0
fd00000500000000127e25fd8a3d8bb6 03 40 00 41    wwan0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000001 0a 30 00 01 eth-with-long-name0
not a line
zz00000500000000127e25fd8a3d8bb6 03 40 00 41    bad0
fd0000050000000000000000000001 03 40 00 00    short0

"""


def test_parse_if_inet6() -> None:
    entries = parse_if_inet6(IF_INET6)
    assert [(e.address, e.name) for e in entries] == [
        ("fe80::ec5c:fff:fed6:8253", "wwan0"),
        ("fd00:5::99", "wwan0"),
        ("fd00:5::127e:25fd:8a3d:8bb6", "wwan0"),
        ("::1", "lo"),
        ("2001:db8::1", "eth-with-long-name0"),
    ]
    tmp = entries[2]
    assert (tmp.ifindex, tmp.prefixlen, tmp.scope, tmp.flags) == (3, 64, 0, 0x41)
    assert [e.temporary for e in entries] == [False, False, True, False, True]
    assert entries[4].ifindex == 10 and entries[4].prefixlen == 48


def test_parse_if_inet6_of_this_machine() -> None:
    try:
        text = Path("/proc/net/if_inet6").read_text()
    except OSError:
        pytest.skip("/proc/net/if_inet6 unreadable (IPv6 disabled?)")
    assert len(parse_if_inet6(text)) == len([ln for ln in text.splitlines() if ln.strip()])


# --- this machine ------------------------------------------------------------------------------

def test_discovers_loopback_on_this_machine() -> None:
    found = {i.name: i for i in discover_interfaces()}
    lo = found["lo"]
    assert lo.type == "loopback"
    assert lo.up is True
    assert "127.0.0.1" in [a.address for a in lo.addresses]
    assert lo.metered is False and lo.cost == 0


def test_discovery_shape_on_this_machine() -> None:
    found = discover_interfaces()
    assert [i.name for i in found] == sorted(i.name for i in found)
    for iface in found:
        assert iface.type in INTERFACE_TYPES
        families = [a.family for a in iface.addresses]
        assert families == sorted(families), "IPv4 before IPv6"
        for addr in iface.addresses:
            assert "%" not in addr.address
            assert not (addr.family == "ipv6" and addr.ip.is_link_local)
        assert iface.metered == (iface.type == "cellular")


def test_discovery_without_sysfs_or_proc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a locked-down container looks like: the facts go, discovery does not fail.
    monkeypatch.setattr(interfaces, "SYSFS_NET", str(tmp_path / "no-sysfs"))
    monkeypatch.setattr(interfaces, "PROC_IF_INET6", str(tmp_path / "no-if_inet6"))
    found = {i.name: i for i in discover_interfaces()}
    assert found["lo"].type == "loopback"
    assert all(not a.temporary for i in found.values() for a in i.addresses)


def test_import_stays_light() -> None:
    code = "import sys, taps_post.system.interfaces; print('asyncio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], env=installed_env(),
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False"


# --- a throw-away network namespace ---------------------------------------------------------

DISCOVER = (
    "import dataclasses, json\n"
    "from taps_post.system.interfaces import discover_interfaces\n"
    "print(json.dumps([dataclasses.asdict(i) for i in discover_interfaces()]))\n"
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclasses.dataclass
class Namespace:
    name: str
    wg0_kind: str
    found: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    if shutil.which("ip") is None or _ip("netns", "list", check=False).returncode != 0:
        pytest.skip("`ip netns` (iproute2) is unavailable")
    name = f"tpdisc-{os.getpid()}"
    _ip("netns", "del", name, check=False)  # a leftover from a crashed run with the same pid
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        veth = _ip("-n", name, "link", "add", "wwan0", "type", "veth", "peer", "name", "veth0",
                   check=False)
        if veth.returncode != 0:
            pytest.skip(f"kernel cannot create veth pairs: {veth.stderr.strip()}")
        # A dummy named wg0 checks that the name beats ARPHRD_ETHER. Kernels built without
        # CONFIG_DUMMY (e.g. Firecracker guests) get a tun named wg0, which is what
        # wireguard-go and OpenVPN really create.
        wg0_kind = "dummy"
        if _ip("-n", name, "link", "add", "wg0", "type", "dummy", check=False).returncode:
            wg0_kind = "tun"
            _ip("netns", "exec", name, "ip", "tuntap", "add", "dev", "wg0", "mode", "tun")
        # Ask for privacy addresses before adding the template, so the kernel derives one.
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.wwan0.use_tempaddr=2"],
            capture_output=True, check=False,
        )
        _ip("-n", name, "addr", "add", "198.18.5.1/24", "dev", "wwan0")
        _ip("-n", name, "addr", "add", "198.18.6.1/24", "dev", "wwan0", "label", "wwan0:1")
        _ip("-n", name, "addr", "add", "fd00:5::1/64", "dev", "wwan0")
        for dev in ("lo", "wwan0", "veth0", "wg0"):
            _ip("-n", name, "link", "set", dev, "up")
        _ip("-n", name, "-6", "addr", "add", "fd00:5::99/64", "dev", "wwan0", "mngtmpaddr",
            check=False)
        _ip("-n", name, "route", "add", "default", "via", "198.18.5.254", "dev", "wwan0")
        _ip("-n", name, "-6", "route", "add", "default", "via", "fd00:5::fe", "dev", "wwan0")
        out = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-P", "-c", DISCOVER],
            env=installed_env(), capture_output=True, text=True, check=True,
        )
        found = {i["name"]: i for i in json.loads(out.stdout)}
        yield Namespace(name, wg0_kind, found)
    finally:
        _ip("netns", "del", name, check=False)


def _addresses(iface: dict[str, Any]) -> list[str]:
    return [a["address"] for a in iface["addresses"]]


def test_namespace_sees_only_its_interfaces(netns: Namespace) -> None:
    assert set(netns.found) == {"lo", "veth0", "wg0", "wwan0"}, "labels must not become NICs"


def test_namespace_cellular(netns: Namespace) -> None:
    wwan0 = netns.found["wwan0"]
    assert wwan0["type"] == "cellular"
    assert wwan0["metered"] is True and wwan0["cost"] == 0
    assert wwan0["up"] is True
    assert wwan0["mtu"] == 1500
    addrs = _addresses(wwan0)
    assert {"198.18.5.1", "198.18.6.1", "fd00:5::1"} <= set(addrs)
    assert addrs.index("198.18.6.1") < addrs.index("fd00:5::1"), "IPv4 before IPv6"
    assert not [a for a in addrs if a.startswith("fe80") or "%" in a]
    assert wwan0["gateways"] == ["198.18.5.254", "fd00:5::fe"]


def test_namespace_vpn_loopback_and_stand_in_ethernet(netns: Namespace) -> None:
    assert netns.found["wg0"]["type"] == "vpn", netns.wg0_kind
    assert netns.found["wg0"]["metered"] is False
    lo = netns.found["lo"]
    assert lo["type"] == "loopback" and lo["up"] is True
    assert _addresses(lo) == ["127.0.0.1", "::1"]
    veth0 = netns.found["veth0"]
    assert veth0["type"] == "ethernet" and veth0["addresses"] == []  # only fe80::, dropped
    assert veth0["gateways"] == []


def test_namespace_temporary_address(netns: Namespace) -> None:
    listed = _ip("-n", netns.name, "-6", "addr", "show", "dev", "wwan0", "temporary",
                 check=False).stdout
    if "inet6" not in listed:
        pytest.skip("this kernel did not derive a privacy address from the mngtmpaddr template")
    by_address = {a["address"]: a["temporary"] for a in netns.found["wwan0"]["addresses"]}
    assert by_address["fd00:5::99"] is False and by_address["fd00:5::1"] is False
    temporary = [a for a, t in by_address.items() if t]
    assert len(temporary) == 1 and temporary[0].startswith("fd00:5:")
