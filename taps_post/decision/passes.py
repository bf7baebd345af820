"""Resolution passes (RFC 8305 section 3, Happy Eyeballs v3): when the race may start, and
which later answers start a new pass. Pure: time comes in as `Arrival.at_ms`.

Rule 1: one rule, here, decides when the first attempt may start, and both `decide()` (for
explain) and the runtime (for the real race) call it, so a dry run on a snapshot with
`arrivals:` and a live connection agree on when and why. Pass 1 starts at the earliest time
t at which an address is known (a positive A/AAAA answer, or an address hint of a ServiceMode
SVCB/HTTPS record that arrived) and one of these holds:
(a) every asked query has answered by t;
(b) the preferred family's query has answered (positive or negative) and no service query
    (HTTPS/SVCB) is outstanding at t;
(c) `racing.resolutionDelay` has passed since the first address became known.
The trigger says which condition started the pass; under (c) it names the queries still
unanswered then ("resolutionDelay 50 ms after A; HTTPS svc.example not answered"): they are
what held the pass.
Rule 2: each condition, once true, stays true as time passes, so pass 1 is
max(first address, min(a, b, c)). An answer that arrives later can only make (a) or (b)
true sooner than "never", never later than (c): more answers never delay pass 1 past the
(c) bound, and a pass 1 that has started (at <= the newest arrival) stays where it is.
Rule 3: every arrival after pass 1 that adds addresses or service records starts a new pass
at its `at_ms` (arrivals at the same instant share one pass). A negative answer, or a TLSA
answer, adds no candidate, so it starts none; it is listed with the pass in force.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from .decision import ResolutionPass
from .names import Arrival, ServiceRecord

__all__ = ["ADDRESS_TYPES", "SERVICE_TYPES", "first_pass", "pass_of", "passes"]

ADDRESS_TYPES = frozenset({"A", "AAAA"})
SERVICE_TYPES = frozenset({"HTTPS", "SVCB"})

Services = Mapping[str, Sequence[ServiceRecord]]


def _gives_address(a: Arrival, services: Services | None) -> bool:
    if a.negative:
        return False
    if a.rtype in ADDRESS_TYPES:
        return True
    if a.rtype in SERVICE_TYPES and services is not None:
        return any(not r.alias and (r.ipv4hint or r.ipv6hint)
                   for r in services.get(a.name, ()))
    return False


def _adds(a: Arrival) -> bool:
    """Rule 3: does this answer add addresses or service records?"""
    return not a.negative and (a.rtype in ADDRESS_TYPES or a.rtype in SERVICE_TYPES)


def first_pass(arrivals: Sequence[Arrival], asked: Collection[tuple[str, str]],
               delay_ms: float, preferred: str = "AAAA", *,
               services: Services | None = None) -> tuple[float, str] | None:
    """(at_ms, trigger) of pass 1 computed from `arrivals` alone (Rule 1), or None while no
    address is known.

    `asked`: the (name, rtype) queries sent for the target: A and AAAA of the host, plus the
    HTTPS/SVCB query when one was sent (names as `Arrival.name`, lower case, no final dot).
    `delay_ms`: racing.resolutionDelay. `preferred`: "AAAA", or "A" when the policy prefers
    IPv4. `services`: the SVCB/HTTPS records by owner (Environment.svcb); only needed for
    address hints to count as a known address (without it a service answer gives none).

    For the runtime, called with the answers that have arrived so far: a result with
    at_ms <= now means "start pass 1 now" (and the result will not move: Rule 2); a result
    in the future means "wait until at_ms or the next arrival, whichever comes first, then
    ask again"; None means "no address yet: wait for the next arrival". Arrivals need not be
    sorted.
    """
    first: dict[tuple[str, str], float] = {}
    address_at: float | None = None
    address_from = ""
    for a in arrivals:
        key = (a.name, a.rtype)
        if key not in first or a.at_ms < first[key]:
            first[key] = a.at_ms
        if _gives_address(a, services) and (address_at is None or a.at_ms < address_at):
            address_at, address_from = a.at_ms, a.rtype
    if address_at is None:
        return None
    inf = float("inf")
    # (a) every asked query answered
    t_a = max((first.get(q, inf) for q in asked), default=address_at)
    # (b) the preferred family answered and no service query outstanding
    wanted = [q for q in asked if q[1] == preferred]
    service = [q for q in asked if q[1] in SERVICE_TYPES]
    t_b = max((first.get(q, inf) for q in (*wanted, *service)), default=inf) if wanted else inf
    # (c) resolutionDelay after the first address
    t_c = address_at + delay_ms
    best = min(t_a, t_b, t_c)
    at = max(address_at, best)
    if best == t_a:
        trigger = "every query answered"
    elif best == t_b:
        trigger = f"{preferred} answered" + (" and no service query outstanding"
                                             if service else "")
    else:
        trigger = f"resolutionDelay {delay_ms:g} ms after {address_from}"
        waiting = sorted((q for q in asked if first.get(q, inf) > at),
                         key=lambda q: (q[1] in SERVICE_TYPES, q[0], q[1]))
        if waiting:  # what held the pass, so an administrator can dig for it
            trigger += "; " + ", ".join(f"{rtype} {name}" for name, rtype in waiting) + \
                " not answered"
    if at > best:  # (a) or (b) held before any address was known: the address decided
        trigger = f"{address_from} answered ({trigger} before)"
    return at, trigger


def _describe(a: Arrival) -> str:
    what = "no records" if a.negative else "answered"
    ttl = f", ttl {a.ttl}" if a.ttl is not None else ""
    return f"{a.rtype} {a.name} {what} at {a.at_ms:g} ms{ttl}"


def passes(arrivals: Sequence[Arrival], asked: Collection[tuple[str, str]],
           delay_ms: float, preferred: str = "AAAA", *, services: Services | None = None,
           describe: Callable[[Arrival], str] = _describe) -> list[ResolutionPass]:
    """Every resolution pass the arrivals make (Rules 1 and 3), numbered from 1, with the
    answers each added (`describe(arrival)`, one line each). Empty while no address is
    known (no pass has started). Answers at or before pass 1 belong to it."""
    start = first_pass(arrivals, asked, delay_ms, preferred, services=services)
    if start is None:
        return []
    at1, trigger = start
    ordered = sorted(arrivals, key=lambda a: a.at_ms)  # stable: same-instant order kept
    early = [describe(a) for a in ordered if a.at_ms <= at1]
    out: list[tuple[float, str, list[str]]] = [(at1, trigger, early)]
    for a in ordered:
        if a.at_ms <= at1:
            continue
        if _adds(a):
            if out[-1][0] == a.at_ms and len(out) > 1:
                out[-1][2].append(describe(a))
                continue
            out.append((a.at_ms, f"{a.rtype} {a.name} answered", [describe(a)]))
        else:
            out[-1][2].append(describe(a))  # Rule 3: listed with the pass in force
    return [ResolutionPass(n, at, trig, tuple(lines))
            for n, (at, trig, lines) in enumerate(out, start=1)]


def pass_of(passes_: Sequence[ResolutionPass], at_ms: float) -> int:
    """The number of the pass in force at `at_ms` (1 for anything known by pass 1)."""
    number = 1
    for p in passes_:
        if p.at_ms <= at_ms:
            number = p.number
        else:
            break
    return number
