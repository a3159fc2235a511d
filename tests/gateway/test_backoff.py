"""Retry timing as computed sequences (gateway/backoff.py): no clocks, no sleeps."""

from __future__ import annotations

import pytest

from gateway.backoff import GRACE, HEALTHY_AFTER, Backoff, RetrySchedule


def upper(lo: float, hi: float) -> float:
    return hi


def lower(lo: float, hi: float) -> float:
    return lo


def delays(b: Backoff, now: float, n: int) -> list[float]:
    """n failed attempts in a row starting at `now`, each after the previous delay."""
    out = []
    for _ in range(n):
        d = b.next_delay(now)
        out.append(d)
        now += d
        b.lost(now)  # the attempt failed at once (connection refused)
    return out


def test_repeated_failures_double_to_the_15s_cap() -> None:
    b = Backoff(jitter=upper)
    assert delays(b, 0.0, 8) == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert delays(Backoff(jitter=lower), 0.0, 6) == [0.25, 0.5, 1.0, 2.0, 4.0, 7.5]


def test_losing_a_healthy_connection_retries_within_1s_then_doubles_again() -> None:
    b = Backoff(jitter=upper)
    delays(b, 0.0, 6)  # a long outage first: the delay has reached the cap
    b.connected(100.0)
    b.lost(100.0 + HEALTHY_AFTER)  # a connection that was up for a while, then lost
    t0 = 100.0 + HEALTHY_AFTER
    seq = delays(b, t0, int(GRACE) + 6)
    fast = seq[: int(GRACE)]
    assert fast == [1.0] * int(GRACE)  # every retry within the grace window: <= 1 s
    # the broker is still away after the window: doubling from 1 s to the cap again
    assert seq[int(GRACE) :] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    lo = Backoff(jitter=lower)
    lo.connected(0.0)
    lo.lost(HEALTHY_AFTER)
    assert lo.next_delay(HEALTHY_AFTER) == 0.5  # jittered from [0.5, 1.0]


def test_broker_restart_first_attempt_after_it_is_back_within_1s() -> None:
    """The issue-17 goal as a sequence: a broker down for 3 s after a healthy session.
    Old rule (0.5 s doubling, reset on connect): attempts at 0.5, 1.5, 3.5 s; the broker
    back at 3.0 s waited 0.5 s, and one back at 3.6 s waited 4 s more. New: every gap <= 1 s."""
    b = Backoff(jitter=upper)
    b.connected(0.0)
    b.lost(60.0)
    t, attempts = 60.0, []
    while t < 60.0 + 10:
        t += b.next_delay(t)
        attempts.append(t - 60.0)
        b.lost(t)
    gaps = [b2 - a for a, b2 in zip([0.0, *attempts], attempts, strict=False)]
    assert max(gaps) <= 1.0


def test_a_connection_that_drops_quickly_keeps_the_cap() -> None:
    """A broker that accepts and kicks us at once (wrong ACL, session takeover) is a
    repeated failure: no fast retries."""
    b = Backoff(jitter=upper)
    seq = []
    t = 0.0
    for _ in range(7):
        d = b.next_delay(t)
        seq.append(d)
        t += d
        b.connected(t)
        b.lost(t + 0.1)
    assert seq == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


def test_retry_schedule_doubles_per_record_and_bounds_memory() -> None:
    s: RetrySchedule[str] = RetrySchedule(limit=2, jitter=upper)
    assert s.failed(1, "a", 0.0) == 1.0
    assert s.take_due(0.5) == [] and s.next_due() == 1.0
    assert s.take_due(1.0) == ["a"]  # in flight now: not due again, not forgotten
    assert s.next_due() is None and 1 in s
    assert s.failed(1, "a", 1.0) == 2.0
    assert s.failed(1, "a", 3.0) == 4.0
    assert s.attempts(1) == 3
    assert not s.full
    s.failed(2, "b", 3.0)
    assert s.full and len(s) == 2
    s.done(1)
    assert not s.full and 1 not in s
    s.take_due(100.0)
    s.release(2, 50.0)  # the connection dropped before its PUBACK: due again at once
    assert s.take_due(50.0) == ["b"]
    s.release_all(60.0)  # a new connection: "b" was taken but never reported back
    assert s.take_due(60.0) == ["b"]


@pytest.mark.parametrize("attempts", [7, 8, 20])
def test_retry_schedule_caps_at_60s(attempts: int) -> None:
    s: RetrySchedule[str] = RetrySchedule(limit=4, jitter=upper)
    for i in range(attempts - 1):
        s.failed(9, "x", float(i))
    assert s.failed(9, "x", 0.0) == 60.0
