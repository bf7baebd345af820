"""Rendezvous end to end through the NAT lab (tests/natlab.py; issue 13's test cases).

Two peers, alice.test in home1 and bob.test in home2, each a subprocess in its home
namespace (natlab.RENDEZVOUS_PEER) running `tp.initiate(tp.Remote.rendezvous(PEER,
via=tls://198.18.0.1:4433 with the point's certificate pinned), local=tp.Local(identity=ME,
certificates=[cert]), policy=...)` with an app policy file naming coturn
(`rendezvous.stun`, `rendezvous.turn`) and `rendezvous.relay`. The rendezvous point is
`taps-post rendezvous serve` in the public namespace, trusting alice's and bob's
certificates only. The subprocesses import this working tree, like this test process.

Cases (the issue's):
- same LAN: a host pair wins (home to home);
- EIM NAT (masquerade + the drop rule): a server-reflexive pair wins, no relay, although
  relayed candidates were gathered;
- APDM NAT (masquerade fully-random): the TURN relay carries it when policy allows relays,
  and initiate() fails with a PolicyError naming `rendezvous.relay` and its rule (file:line)
  when policy prohibits them;
- 1,000 numbered messages each way over the peer carrier: none lost, duplicated or
  reordered (behind EIM and through the relay);
- the rendezvous point refuses a peer whose certificate it does not trust, and neither it
  nor TURN sees a payload: during the relayed run every frame on the public network is
  captured (AF_PACKET), and a marker every message carries never appears in one, while both
  peers received all of them (positive controls: the capture does see the TURN username
  and relayed datagrams, and dropped no frame).

Both peers are told "meet" at once; each answers when its carrier is active (or failed).
Root only; skips with the reason otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natlab import (
    PUBLIC,
    RELAY_PORTS,
    TURN_PORT,
    TURN_USER,
    NatLab,
    PeerPair,
    Point,
    both_ready_ms,
    nat_lab,
)
from taps_post.certs import Certificate

ALICE, BOB, MALLORY = "alice.test", "bob.test", "mallory.test"


class Site:
    """A lab with the rendezvous point running in its public namespace."""

    def __init__(self, lab: NatLab) -> None:
        self.lab = lab
        self.point: Point = lab.start_point(trust=[ALICE, BOB])
        lab.identity(MALLORY)  # a certificate the point does not trust

    def logs(self) -> str:
        return (f"point log:\n{self.point.log()[-2000:]}\n"
                f"turn log:\n{self.lab.turn_log()[-2000:]}")


def _site(variant: str) -> Iterator[Site]:
    with nat_lab(variant) as lab:
        yield Site(lab)


@pytest.fixture(scope="module")
def lan() -> Iterator[Site]:
    yield from _site("lan")


@pytest.fixture(scope="module")
def eim() -> Iterator[Site]:
    yield from _site("eim")


@pytest.fixture(scope="module")
def apdm() -> Iterator[Site]:
    yield from _site("apdm")


def policy_file(site: Site, name: str, relay: str, *, conn_timeout_ms: int = 10000,
                peer_wait_ms: int = 15000) -> tuple[Path, int]:
    """An app policy naming coturn for STUN and TURN and `relay` for rendezvous.relay;
    the file and the line of the relay statement."""
    lines = ["version: 1", "layer: app", "rules:", "  - id: natlab", "    set:",
             f'      rendezvous.stun: ["{PUBLIC}:{TURN_PORT}"]',
             f'      rendezvous.turn: ["{site.lab.turn_url}"]',
             f"      rendezvous.relay: {relay}",
             f"      rendezvous.peerWait: {peer_wait_ms}",
             f"      connTimeout: {conn_timeout_ms}"]
    path = site.lab.tmp / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, lines.index(f"      rendezvous.relay: {relay}") + 1


def peers(site: Site, who: tuple[str, str] = (ALICE, BOB)) -> PeerPair:
    return PeerPair(site.lab, who)


def _selected(res: dict[str, Any], site: Site) -> dict[str, Any]:
    """The selected pair of a peer that must have connected (else a failure with its
    error, its stderr and the lab's logs)."""
    assert res["event"] == "ready", (
        f"{res.get('type')}: {res.get('message')}\nstderr:\n{res['stderr']}\n{site.logs()}")
    assert res["stack"] == "quic-ice"
    report = res["report"]
    assert report is not None and report["selected"] is not None, report
    selected: dict[str, Any] = report["selected"]
    assert selected["nominated"] is True
    return selected


def _all_arrived(got: dict[str, Any], count: int) -> None:
    numbers = got["numbers"]
    assert numbers == list(range(count)), (
        f"{len(numbers)} received; lost {sorted(set(range(count)) - set(numbers))[:10]}, "
        f"duplicated {len(numbers) - len(set(numbers))}, first out of order "
        f"{next((n for i, n in enumerate(numbers) if n != i), None)}")


def _fingerprint(lab: NatLab, who: str) -> str:
    return Certificate.from_files(str(lab.identity(who)[0])).fingerprint


def _timing(case: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    return (f"{case}: both ready {both_ready_ms(a, b):.0f} ms (alice {a['ms']:.0f}, "
            f"bob {b['ms']:.0f})")


def test_same_lan_a_host_pair_wins(lan: Site) -> None:
    policy, _ = policy_file(lan, "lan", "avoid")
    lab = lan.lab
    with peers(lan) as pair:
        a, b = pair.meet(lan.point, policy)
        for res, peer in ((a, lab.home2), (b, lab.home1)):
            selected = _selected(res, lan)
            assert selected["local"]["kind"] == "host", selected
            assert selected["remote"]["kind"] in ("host", "prflx"), selected
            assert selected["remote"]["address"] == lab.addresses[peer], selected
        assert a["report"]["role"] == "controlling" and b["report"]["role"] == "controlled"
        assert a["report"]["peer_fingerprint"] == _fingerprint(lab, BOB)
        assert b["report"]["peer_fingerprint"] == _fingerprint(lab, ALICE)
        for got in pair.exchange("lan", 100):
            _all_arrived(got, 100)
    print(_timing("same LAN", a, b))


def test_eim_a_server_reflexive_pair_wins_no_relay(eim: Site) -> None:
    policy, _ = policy_file(eim, "eim", "avoid")
    lab = eim.lab
    with peers(eim) as pair:
        a, b = pair.meet(eim.point, policy)
        for res, peer in ((a, lab.home2), (b, lab.home1)):
            selected = _selected(res, eim)
            kinds = (selected["local"]["kind"], selected["remote"]["kind"])
            assert "relay" not in kinds, selected
            assert {"srflx", "prflx"} & set(kinds), selected
            # The peer as its NAT maps it:
            assert selected["remote"]["address"] == lab.wan[peer], selected
        # Relays were on offer (TURN worked) and were not used.
        gathered = a["report"]["local"] + b["report"]["local"]
        assert any(c["kind"] == "relay" for c in gathered), gathered
        for got in pair.exchange("eim", 1000):
            _all_arrived(got, 1000)
    print(_timing("EIM", a, b))


def test_apdm_the_relay_carries_it_and_sees_no_payload(apdm: Site) -> None:
    marker = f"natlab-secret-{secrets.token_hex(8)}"
    policy, _ = policy_file(apdm, "apdm-avoid", "avoid")
    with peers(apdm) as pair, apdm.lab.capture() as cap:
        a, b = pair.meet(apdm.point, policy)
        for res in (a, b):
            selected = _selected(res, apdm)
            assert "relay" in (selected["local"]["kind"], selected["remote"]["kind"]), selected
        received = pair.exchange(marker, 1000)
        for got in received:
            _all_arrived(got, 1000)  # every message carried the marker, and arrived
    assert cap.drops == 0, f"the capture dropped {cap.drops} frames: it proves nothing"
    assert cap.count(TURN_USER.encode()) > 0, "the capture saw no TURN request"
    assert cap.udp_frames(RELAY_PORTS) >= 100, "the capture saw no relayed traffic"
    assert cap.count(marker.encode()) == 0, "a payload crossed the public network in clear"
    assert marker not in apdm.point.log() and marker not in apdm.lab.turn_log()
    print(_timing("APDM relayed", a, b) + f"; {len(cap.frames)} frames captured")


def test_apdm_relay_prohibited_is_a_policy_error(apdm: Site) -> None:
    policy, line = policy_file(apdm, "apdm-prohibit", "prohibit", conn_timeout_ms=4000)
    with peers(apdm) as pair:
        results = pair.meet(apdm.point, policy)
    for res in results:
        assert res["event"] == "error", res
        assert res["type"] == "PolicyError", res
        assert "rendezvous.relay" in res["message"], res["message"]
        assert f"{policy.name}:{line}" in res["message"], res["message"]


def test_the_point_refuses_an_untrusted_peer(eim: Site) -> None:
    """mallory's certificate is not among the point's --trust: its initiate fails at the
    point at once (not by waiting out peerWait for an offer), and bob, waiting for
    mallory's offer, gets none and fails on peerWait."""
    policy, _ = policy_file(eim, "mallory", "avoid", peer_wait_ms=3000)
    with peers(eim, who=(MALLORY, BOB)) as pair:
        a, b = pair.meet(eim.point, policy)
    assert a["event"] == "error" and a["type"] == "EstablishmentError", a
    assert "rendezvous point" in a["message"] and a["ms"] < 3000, a
    assert b["event"] == "error" and "peerWait" in b["message"], b
