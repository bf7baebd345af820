"""Rendezvous benchmark: how long two peers take to meet through the NAT lab, per case
(direct on one LAN, server-reflexive behind EIM NAT, relayed behind APDM NAT), and the
message round trip over the peer carrier beside plain QUIC between the same namespaces.

Run from the repository root, as root (it builds the NAT lab of tests/natlab.py: coturn and
the rendezvous point in a public namespace, two homes behind nftables NAT routers; every
packet stays inside 198.18.0.0/15 and the namespaces):

    .venv/bin/python -P bench/rendezvous.py            # 5 rounds of 3: about 5 min
    .venv/bin/python -P bench/rendezvous.py --quick    # smoke run: about 2 min
    .venv/bin/python -P bench/rendezvous.py --only relayed --rounds 9

Per case one lab is built (variant lan, eim or apdm), the rendezvous point is started in
it (`taps-post rendezvous serve`, this working tree) and two long-lived peer processes,
alice.test in home1 and bob.test in home2 (tests/natlab.py RENDEZVOUS_PEER), take commands.
The app policy names coturn for STUN and TURN, `rendezvous.relay: avoid`.

Figures (wall time, time.monotonic, one clock for all processes; ours and raw alternated,
the order flipped every round; each round's figure is the median of its --samples samples):

- ready-CASE (ms, lower is better, information): ours is the time from the first of the two
  `tp.initiate(Remote.rendezvous(...))` calls (both peers are told at once) to the later
  of the two carriers active: two TLS connections to the point, STUN and TURN gathering,
  the offer exchange, ICE checks and the QUIC handshake over the nominated pair. Raw is
  plain taps_post QUIC without ICE from home1 to home2 (`tp.initiate("quic://...")` to
  ready, the server's certificate pinned): to home2's LAN address on one LAN, and through
  a port forward (DNAT) on home2's router behind NAT. The ratio is what meeting costs over
  knowing where the peer is.
- rtt-CASE (ms, lower is better): --rtt sequential round trips of a short message over the
  peer carrier (alice sends, bob echoes), against the same over the plain QUIC carrier to an
  echo listener in home2 on the same route as raw above. Target ratio <= 1.5 where the pair
  is direct (ICE adds no hop: the same QUIC over the same route); none when relayed (the
  relay is a hop the direct baseline has not: its cost is the figure).

Each ready row notes which pair kinds won and ICE's own elapsed_ms (activation to the
nominated pair) from the explanation. Nothing is asserted about speed: the script exits 0
(also when not root, or without coturn: it says why), and 2 on an internal error (a failed
meet, a wrong pair kind for the case, lost messages).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import Row, banner, order, run_main

ALICE, BOB = "alice.test", "bob.test"
QUIC_PORT = 5443
CASES = {"direct": "lan", "reflexive": "eim", "relayed": "apdm"}
"""Case name -> NAT lab variant."""


class InternalError(Exception):
    """A figure could not be taken (a failed meet, a pair kind wrong for the case)."""


def unavailable() -> str | None:
    """Why this script cannot measure here, or None."""
    import os

    if os.geteuid() != 0:
        return "needs root (it builds network namespaces); run it as root, e.g. in CI"
    try:
        import natlab
    except ImportError as exc:  # tests/netns.py needs pytest (a dev dependency)
        return f"cannot import tests/natlab.py: {exc}"
    return natlab.skip_reason()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


class Case:
    """One lab variant with its point, peers and plain-QUIC echo listener."""

    def __init__(self, args: argparse.Namespace, case: str) -> None:
        import natlab
        import netns

        self.args = args
        self.case = case
        self.natlab = natlab
        self._stack = contextlib.ExitStack()
        try:
            self.lab = self._stack.enter_context(natlab.nat_lab(CASES[case], prefix="nlb"))
            lab = self.lab
            self.point = lab.start_point(trust=[ALICE, BOB])
            self.policy = lab.tmp / "bench.yaml"
            self.policy.write_text(textwrap.dedent(f"""\
                version: 1
                layer: app
                rules:
                  - id: bench
                    set:
                      rendezvous.stun: ["{natlab.PUBLIC}:{natlab.TURN_PORT}"]
                      rendezvous.turn: ["{lab.turn_url}"]
                      rendezvous.relay: avoid
                """))
            home2 = lab.addresses[lab.home2]
            # One LAN: home2's own address; behind NAT: a port forward on its router.
            target = ((home2, QUIC_PORT) if case == "direct"
                      else lab.forward(lab.home2, QUIC_PORT))
            cert, key = natlab.write_identity(lab.tmp, "echo", [target[0], home2])
            self.quic_cert = cert
            self.quic_target = f"quic://{target[0]}:{target[1]}"
            self.echo = lab.spawn(lab.home2, netns.ECHO_LISTENER, str(QUIC_PORT),
                                  "--certificate", str(cert), str(key), tree=True,
                                  label="QUIC echo listener in home2")
            self.echo.read_json(20)
            self.peers = natlab.PeerPair(lab, (ALICE, BOB))
            self._stack.callback(self.peers.close)
        except BaseException:
            self.close()
            raise
        self.kinds: dict[str, int] = {}
        self.ice_ms: list[float] = []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()

    def meet(self) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """Both peers meet; (both-ready ms, alice's answer, bob's answer)."""
        a, b = self.peers.meet(self.point, self.policy)
        for res in (a, b):
            if res["event"] != "ready":
                raise InternalError(f"{self.case}: {res.get('type')}: {res.get('message')}\n"
                                    f"{res['stderr']}")
        selected = a["report"]["selected"]
        kinds = f"{selected['local']['kind']}->{selected['remote']['kind']}"
        self.kinds[kinds] = self.kinds.get(kinds, 0) + 1
        wrong = {"direct": "relay" in kinds or "srflx" in kinds,
                 "reflexive": False,  # a relay winning behind EIM is noted (rows), not fatal
                 "relayed": "relay" not in kinds}[self.case]
        if wrong:
            raise InternalError(f"{self.case}: the {kinds} pair won")
        for res in (a, b):
            if res["report"]["elapsed_ms"] is not None:
                self.ice_ms.append(res["report"]["elapsed_ms"])
        return self.natlab.both_ready_ms(a, b), a, b

    def ours(self, rtt: bool) -> float:
        """One sample of ours: both-ready ms, or (after a meet) the median round trip."""
        ms, _, _ = self.meet()
        try:
            if not rtt:
                return ms
            alice, bob = self.peers.procs
            bob.ask({"cmd": "echo"})
            samples = alice.ask({"cmd": "rtt", "n": self.args.rtt}, 60)["samples"]
            return median(samples)
        finally:
            self.peers.hang_up()

    def raw(self, rtt: bool) -> float:
        """One sample of plain QUIC from home1 to home2's echo listener."""
        alice = self.peers.procs[0]
        out = alice.ask({"cmd": "quic", "target": self.quic_target,
                         "cert": str(self.quic_cert), "n": self.args.rtt if rtt else 1}, 60)
        if out["stack"] != "quic":
            raise InternalError(f"plain QUIC ran on {out['stack']}")
        return median(out["samples"]) if rtt else float(out["ms"])

    def rows(self) -> list[Row]:
        ready = Row(f"ready-{self.case}", f"both initiate() to both ready, {self.case} "
                    f"({CASES[self.case]} lab), vs plain QUIC initiate() to ready", "ms",
                    False, None)
        rtt = Row(f"rtt-{self.case}", f"message round trip over the peer carrier, "
                  f"{self.case}, vs plain QUIC on the same route", "ms", False,
                  None if self.case == "relayed" else 1.5)
        self.ours(False)  # warm-up: imports, first decision, the first TLS session
        self.raw(False)
        for rnd in range(self.args.rounds):
            for row, is_rtt in ((ready, False), (rtt, True)):
                sides: dict[str, list[float]] = {"ours": [], "raw": []}
                for _ in range(self.args.samples):
                    for side in order(rnd):
                        take = self.ours if side == "ours" else self.raw
                        sides[side].append(take(is_rtt))
                row.ours.append(median(sides["ours"]))
                row.raw.append(median(sides["raw"]))
        ready.notes.append("pairs won (alice's local->remote kind): " + ", ".join(
            f"{k} x{n}" for k, n in sorted(self.kinds.items())))
        if self.ice_ms:
            ready.notes.append(f"ICE alone (activation to the nominated pair, median of "
                               f"both peers): {median(self.ice_ms):.0f} ms")
        if self.case == "reflexive" and any("relay" in k for k in self.kinds):
            ready.notes.append("a relay pair won behind EIM NAT in some meets: relay "
                               "'avoid' did not keep it out (see tests/test_natlab.py)")
        return [ready, rtt]


@contextlib.contextmanager
def case(args: argparse.Namespace, name: str) -> Iterator[Case]:
    c = Case(args, name)
    try:
        yield c
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    ap.add_argument("--samples", type=int, default=3,
                    help="samples a side per round (default 3)")
    ap.add_argument("--rtt", type=int, default=20,
                    help="round trips per rtt sample (default 20)")
    ap.add_argument("--only", default=",".join(CASES),
                    help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.samples = 2, 2
    only = [c for c in CASES if c in set(args.only.split(","))]
    print(banner("rendezvous benchmark"))
    reason = unavailable()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    rows: list[Row] = []
    for name in only:
        try:
            with case(args, name) as c:
                rows += c.rows()
        except InternalError as exc:
            print(f"internal error: {exc}", file=sys.stderr)
            return 2
    for row in rows:
        row.print()
    print("\n| figure | unit | ours median (p10–p90) | raw median (p10–p90) | ratio "
          "(per-round p10–p90) | target | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    print(textwrap.dedent("""
        raw: plain taps_post QUIC (no ICE, no rendezvous point) from home1 to home2, to its
        LAN address (direct) or through a port forward on home2's router (behind NAT)."""))
    print(f"{args.rounds} rounds of {args.samples} samples a side; {args.rtt} round trips "
          "per rtt sample.")
    return 0


if __name__ == "__main__":
    run_main(main)
