"""The sans-I/O send queue: niceness, FIFO, lifetime, antecedents, exactly-once departure.

Every call takes an explicit `now`, so nothing here sleeps or opens a socket.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taps_post.core.messages import InMessage, OutMessage, Pending
from taps_post.core.outbox import SendQueue


def pend(msg: OutMessage, deadline: float | None = None) -> Pending:
    return Pending(msg, deadline)


def data(ps: list[Pending]) -> list[bytes]:
    return [p.message.data for p in ps]


# ---- messages ------------------------------------------------------------------------------


def test_outmessage_validates_and_copies_bytes() -> None:
    buf = bytearray(b"abc")
    m = OutMessage(buf)
    buf[0] = ord("z")
    assert m.data == b"abc" and type(m.data) is bytes
    assert m.state == "new"
    with pytest.raises(TypeError):
        OutMessage("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OutMessage(b"x", niceness=-1)
    with pytest.raises(ValueError):
        OutMessage(b"x", lifetime=-0.1)


def test_inmessage_is_bytes_with_metadata() -> None:
    m = InMessage(b"hi", remote=("127.0.0.1", 9), early=True)
    assert m == b"hi" and isinstance(m, bytes)
    assert m.remote == ("127.0.0.1", 9) and m.early and m.carrier is None


# ---- ordering ------------------------------------------------------------------------------


def test_niceness_orders_zero_first() -> None:
    q = SendQueue()
    for name, nice in ((b"n5", 5), (b"n0", 0), (b"n2", 2), (b"n1", 1)):
        q.push(pend(OutMessage(name, niceness=nice)))
    ready, expired = q.pop_ready(0.0)
    assert data(ready) == [b"n0", b"n1", b"n2", b"n5"]
    assert expired == [] and len(q) == 0 and q.queued_bytes == 0
    assert all(p.message.state == "sent" for p in ready)


def test_fifo_within_one_niceness() -> None:
    q = SendQueue()
    msgs = [OutMessage(bytes([i]), niceness=3) for i in range(20)]
    for m in msgs:
        q.push(pend(m))
    ready, _ = q.pop_ready(0.0)
    assert [p.message for p in ready] == msgs


def test_fifo_follows_queueing_order_not_creation_order() -> None:
    first_made = OutMessage(b"made-first")
    second_made = OutMessage(b"made-second")
    q = SendQueue()
    q.push(pend(second_made))  # queued first
    q.push(pend(first_made))
    ready, _ = q.pop_ready(0.0)
    assert data(ready) == [b"made-second", b"made-first"]


def test_pop_ready_limit_keeps_the_rest_in_order() -> None:
    q = SendQueue()
    for i in range(5):
        q.push(pend(OutMessage(bytes([i]), niceness=4 - i)))
    first, _ = q.pop_ready(0.0, limit=2)
    rest, _ = q.pop_ready(0.0)
    assert data(first) == [b"\x04", b"\x03"]
    assert data(rest) == [b"\x02", b"\x01", b"\x00"]


# ---- lifetime ------------------------------------------------------------------------------


def test_lifetime_expiry_is_never_returned_as_ready() -> None:
    q = SendQueue()
    keep = OutMessage(b"keep")
    late = OutMessage(b"late", lifetime=1.0)
    q.push(pend(late, deadline=1.0))
    q.push(pend(keep))
    assert q.next_deadline() == 1.0
    ready, expired = q.pop_ready(1.0)  # the deadline itself counts as passed
    assert data(ready) == [b"keep"]
    assert data(expired) == [b"late"] and late.state == "expired"
    assert q.next_deadline() is None and len(q) == 0 and q.queued_bytes == 0


def test_unexpired_message_is_sent_before_its_deadline() -> None:
    q = SendQueue()
    q.push(pend(OutMessage(b"soon", lifetime=1.0), deadline=1.0))
    ready, expired = q.pop_ready(0.999)
    assert data(ready) == [b"soon"] and expired == []


def test_expire_removes_only_passed_deadlines() -> None:
    q = SendQueue()
    q.push(pend(OutMessage(b"a"), deadline=1.0))
    q.push(pend(OutMessage(b"b"), deadline=3.0))
    assert data(q.expire(2.0)) == [b"a"]
    assert len(q) == 1 and q.next_deadline() == 3.0


# ---- antecedents ---------------------------------------------------------------------------


def test_antecedent_sent_first_even_with_lower_niceness() -> None:
    q = SendQueue()
    first = OutMessage(b"first", niceness=9)
    then = OutMessage(b"then", niceness=0, antecedents=[first])
    other = OutMessage(b"other", niceness=5)
    q.push(pend(then))
    q.push(pend(other))
    q.push(pend(first))
    ready, _ = q.pop_ready(0.0)
    order = data(ready)
    assert order.index(b"first") < order.index(b"then")
    # The blocked message does not block others: `other` (5) goes before `first` (9).
    assert order == [b"other", b"first", b"then"]


def test_message_waits_for_an_antecedent_that_is_not_queued_yet() -> None:
    q = SendQueue()
    first = OutMessage(b"first")
    then = OutMessage(b"then", antecedents=[first])
    q.push(pend(then))
    assert q.pop_ready(0.0) == ([], [])
    assert len(q) == 1
    q.push(pend(first))
    ready, _ = q.pop_ready(1.0)
    assert data(ready) == [b"first", b"then"]


def test_antecedent_already_sent_earlier_does_not_block() -> None:
    q = SendQueue()
    first = OutMessage(b"first")
    q.push(pend(first))
    q.pop_ready(0.0)
    q.push(pend(OutMessage(b"then", antecedents=[first])))
    assert data(q.pop_ready(1.0)[0]) == [b"then"]


def test_antecedent_expiry_cascades_transitively() -> None:
    q = SendQueue()
    a = OutMessage(b"a", lifetime=1.0)
    b = OutMessage(b"b", antecedents=[a])
    c = OutMessage(b"c", antecedents=[b])
    d = OutMessage(b"d")
    q.push(pend(c))
    q.push(pend(b))
    q.push(pend(d))
    q.push(pend(a, deadline=1.0))
    # No pop before `a`'s deadline: it expires unsent, and takes b and c with it.
    ready, expired = q.pop_ready(5.0)
    assert data(ready) == [b"d"]
    assert sorted(data(expired)) == [b"a", b"b", b"c"]
    assert all(m.state == "expired" for m in (a, b, c))
    assert len(q) == 0 and q.queued_bytes == 0


def test_cascade_when_antecedent_expires_while_blocked() -> None:
    q = SendQueue()
    never = OutMessage(b"never")  # never queued: `a` stays blocked
    a = OutMessage(b"a", antecedents=[never], lifetime=0.5)
    b = OutMessage(b"b", antecedents=[a])
    q.push(pend(a, deadline=0.5))
    q.push(pend(b))
    assert q.pop_ready(0.1) == ([], [])
    ready, expired = q.pop_ready(0.6)
    assert ready == [] and data(expired) == [b"a", b"b"]


def test_successor_of_an_already_expired_antecedent_leaves_the_queue() -> None:
    q = SendQueue()
    a = OutMessage(b"a", lifetime=0.0)
    q.push(pend(a, deadline=0.0))
    assert data(q.pop_ready(1.0)[1]) == [b"a"]
    q.push(pend(OutMessage(b"b", antecedents=[a])))
    ready, expired = q.pop_ready(2.0)
    assert ready == [] and data(expired) == [b"b"]
    assert len(q) == 0


# ---- once only -----------------------------------------------------------------------------


def test_a_message_cannot_be_queued_twice() -> None:
    q = SendQueue()
    m = OutMessage(b"m")
    q.push(pend(m))
    with pytest.raises(ValueError, match="already queued"):
        q.push(pend(m))
    q.pop_ready(0.0)
    with pytest.raises(ValueError, match="already sent"):
        q.push(pend(m))
    with pytest.raises(ValueError, match="sent once"):
        SendQueue().push(pend(m))  # not on another queue (carrier) either
    assert len(q) == 0


def test_an_expired_message_cannot_be_queued_again() -> None:
    q = SendQueue()
    m = OutMessage(b"m")
    q.push(pend(m, deadline=0.0))
    q.pop_ready(1.0)
    with pytest.raises(ValueError, match="already expired"):
        q.push(pend(m))


def test_drain_all_reports_everything_left() -> None:
    q = SendQueue()
    ms = [OutMessage(b"x" * i, niceness=i % 3) for i in range(1, 6)]
    for m in ms:
        q.push(pend(m, deadline=10.0))
    q.pop_ready(0.0, limit=2)
    left = q.drain_all()
    assert len(left) == 3 and len(q) == 0 and q.queued_bytes == 0
    assert q.next_deadline() is None
    assert all(p.message.state == "expired" for p in left)
    assert q.pop_ready(100.0) == ([], [])


# ---- property: every pushed message leaves exactly once ----------------------------------

push_op = st.tuples(
    st.just("push"),
    st.integers(0, 3),                                      # niceness
    st.one_of(st.none(), st.floats(0.0, 5.0)),              # lifetime
    st.lists(st.integers(0, 1000), max_size=3),             # antecedent picks
)
pop_op = st.tuples(st.just("pop"), st.one_of(st.none(), st.integers(1, 4)))
advance_op = st.tuples(st.just("advance"), st.floats(0.0, 2.0))
ops = st.lists(st.one_of(push_op, pop_op, advance_op), max_size=60)


def _check_pop(model: dict[int, OutMessage], ready: list[Pending], expired: list[Pending],
               now: float, sent_order: list[OutMessage], deadlines: dict[int, float]) -> None:
    """Reference model of one pop: expired first, then greedily the smallest
    (niceness, deadline or +inf, seq) among the messages whose antecedents have all been
    sent (issue 9: lifetime orders sending within a niceness class)."""
    for p in expired:
        assert p.message.seq in model, "a message left the queue twice"
        del model[p.message.seq]
    for p in ready:
        m = p.message
        assert m.seq in model, "a message left the queue twice (or was never pushed)"
        d = deadlines.get(m.seq)
        assert d is None or d > now, "an expired message was returned as ready"
        assert all(a.state == "sent" and a in sent_order for a in m.antecedents), \
            "sent before an antecedent"
        eligible = [x for x in model.values()
                    if all(a.state == "sent" and a in sent_order for a in x.antecedents)]
        best = min(eligible, key=lambda x: (x.niceness, deadlines.get(x.seq, float("inf")),
                                            x.seq))
        assert m is best, f"sent {m!r} while {best!r} was ready and nicer"
        del model[m.seq]
        sent_order.append(m)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_property_each_message_leaves_exactly_once(script: list[tuple]) -> None:
    q = SendQueue()
    now = 0.0
    pushed: list[OutMessage] = []
    model: dict[int, OutMessage] = {}       # still queued, by seq
    deadlines: dict[int, float] = {}
    sent_order: list[OutMessage] = []
    outcomes: dict[int, list[str]] = {}
    callbacks_sent: list[OutMessage] = []

    def record(ps: list[Pending], what: str) -> None:
        for p in ps:
            outcomes.setdefault(p.message.seq, []).append(what)

    for op in script:
        if op[0] == "push":
            _, nice, life, picks = op
            # Antecedents among earlier messages that have not expired yet (an already
            # expired antecedent is tested on its own above).
            pool = [m for m in pushed if m.state != "expired"]
            ante = list({id(pool[i % len(pool)]): pool[i % len(pool)]
                         for i in picks}.values()) if pool else []
            m = OutMessage(b"x" * (len(pushed) % 7), niceness=nice, lifetime=life,
                           antecedents=ante)
            deadline = None if life is None else now + life
            q.push(Pending(m, deadline, on_sent=callbacks_sent.append))
            pushed.append(m)
            model[m.seq] = m
            if deadline is not None:
                deadlines[m.seq] = deadline
        elif op[0] == "pop":
            ready, expired = q.pop_ready(now, limit=op[1])
            record(ready, "sent")
            record(expired, "expired")
            _check_pop(model, ready, expired, now, sent_order, deadlines)
        else:
            now += op[1]
        assert len(q) == len(model)
        assert q.queued_bytes == sum(len(m.data) for m in model.values())

    # Finally let every lifetime pass: whatever is left must leave now.
    now = math.inf
    ready, expired = q.pop_ready(now)
    record(ready, "sent")
    record(expired, "expired")
    _check_pop(model, ready, expired, now, sent_order, deadlines)
    assert len(q) == 0 and q.queued_bytes == 0 and q.next_deadline() is None
    for m in pushed:
        assert outcomes.get(m.seq) in (["sent"], ["expired"]), (m, outcomes.get(m.seq))
        assert m.state == outcomes[m.seq][0]
    # Antecedent order over the whole run.
    position = {m.seq: i for i, m in enumerate(sent_order)}
    for m in sent_order:
        for a in m.antecedents:
            assert position[a.seq] < position[m.seq]
    # A message whose antecedent expired never goes out.
    for m in pushed:
        if any(a.state == "expired" for a in m.antecedents):
            assert m.state == "expired"
