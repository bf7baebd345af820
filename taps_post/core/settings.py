"""Settings: the effective properties of a Decision, as the stacks and the runtime need them.

Rule 1: the stacks and the runtime read properties only through this object, so every knob
they honour is visible in one place and comes from the same Decision that `explain` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..decision.decision import Decision
from ..policy.registry import DSCP, Pref

__all__ = ["Settings", "dscp_for"]


def dscp_for(table: tuple[int, ...], niceness: int) -> int | None:
    """The code point of `table` (DSCP by niceness, the last for all larger) for a message of
    `niceness`; None when the table is empty (marking is off)."""
    if not table:
        return None
    return table[min(niceness, len(table) - 1)]


@dataclass(frozen=True, slots=True)
class Settings:
    conn_timeout: float
    attempt_delay: float
    max_size: int
    min_tls: str
    verify_peer: bool
    session_cache: bool
    alpn: tuple[str, ...]
    zero_rtt: bool
    per_msg_reliability: bool = False
    client_auth: str = "none"
    """security.clientAuth: none, request or require (listeners)."""
    reactivate: bool = True
    max_handlers: int = 16
    fork_parallel: bool = False
    dscp: tuple[int, ...] = ()
    """DSCP code point by niceness (the last for all larger); empty: unmarked."""
    recv_budget: int = 4 * 1024 * 1024
    """carrier.recvBudget: received bytes buffered before reading pauses."""
    send_budget: int = 1024 * 1024
    """carrier.sendBudget: queued bytes above which send() waits."""
    idle_timeout: float = 0.0
    """carrier.idleTimeout in seconds; 0: never."""
    linger: float = 5.0
    """carrier.linger in seconds: the bound on a graceful close."""
    handshake_timeout: float = 10.0
    """listener.handshakeTimeout in seconds."""
    max_handshakes: int = 512
    backlog: int = 0
    """listener.backlog; 0: the system's somaxconn."""
    retry: str = "auto"
    """listener.retry: never, auto or always (QUIC address validation)."""
    multipath: str = "disabled"
    """multipath: disabled, passive or active (RFC 9622). Only "active" makes an initiated
    carrier open subflows of its own (runtime/multipath.py); "passive" accepts the peer's."""
    multipath_policy: str = "handover"
    """multipathPolicy: handover, interactive or aggregate (docs/multipath.md)."""
    subflows: tuple[tuple[str, str], ...] = ()
    """(interface, role) for each interface that may carry an MPTCP subflow, best first;
    role is "primary" or "backup" (Decision.subflows). Empty: multipath disabled."""
    dane: str = "opportunistic"
    """security.dane: off, opportunistic or require (stacks/dane.py checks the peer)."""

    def dscp_for(self, niceness: int) -> int | None:
        """The code point for a message of `niceness`, None when marking is off."""
        return dscp_for(self.dscp, niceness)

    @classmethod
    def from_decision(cls, d: Decision) -> Settings:
        alpn = d.value("security.alpn")
        return cls(
            conn_timeout=d.value("connTimeout") / 1000.0,
            # The Decision's own delay: racing.attemptDelay, or what RTT history gave.
            attempt_delay=(d.attempt_delay.ms if d.attempt_delay is not None
                           else d.value("racing.attemptDelay")) / 1000.0,
            max_size=int(d.value("message.maxSize")),
            min_tls=str(d.value("security.minTlsVersion")),
            verify_peer=bool(d.value("security.verifyPeer")),
            session_cache=bool(d.value("security.sessionCache")),
            alpn=tuple(alpn) if alpn else (),
            zero_rtt=d.value("zeroRttMsg") not in (Pref.PROHIBIT, Pref.AVOID),
            per_msg_reliability=d.value("perMsgReliability") in (Pref.REQUIRE, Pref.PREFER),
            client_auth=str(d.value("security.clientAuth")),
            reactivate=bool(d.value("carrier.reactivate")),
            max_handlers=int(d.value("carrier.maxHandlers")),
            fork_parallel=bool(d.value("carrier.forkParallel")),
            dscp=tuple(DSCP[n] for n in (d.value("message.dscp") or ())),
            recv_budget=int(d.value("carrier.recvBudget")),
            send_budget=int(d.value("carrier.sendBudget")),
            idle_timeout=d.value("carrier.idleTimeout") / 1000.0,
            linger=d.value("carrier.linger") / 1000.0,
            handshake_timeout=d.value("listener.handshakeTimeout") / 1000.0,
            max_handshakes=int(d.value("listener.maxHandshakes")),
            backlog=int(d.value("listener.backlog")),
            retry=str(d.value("listener.retry")),
            multipath=str(d.value("multipath")),
            multipath_policy=str(d.value("multipathPolicy")),
            subflows=tuple((s.interface, s.role) for s in d.subflows),
            dane=str(d.value("security.dane")),
        )
