"""The admission rules (gateway/admission.py) as a table: facts in, verdict out (h11-style).

No asyncio, no SQLite: each row is one situation a record can meet, with the verdict the
delivery contract demands."""

from __future__ import annotations

import pytest

from gateway.admission import (
    BUSY_HOLD,
    CLOCK_PLAUSIBLE_MS,
    SEQ_AHEAD_MS,
    SEQ_CAP,
    Facts,
    Holds,
    Verdict,
    ceiling,
    decide,
)
from gateway.queue import MAX_SEQ

NOW = 1_780_000_000_000  # a plausible gateway clock (2026)
CEIL = NOW + SEQ_AHEAD_MS


def facts(seq: int, **kw: object) -> Facts:
    base: dict[str, object] = {
        "seq": seq,
        "stored_high": -1,
        "pending_high": -1,
        "in_pending": False,
        "queued": None,
        "held": False,
        "room": True,
        "ceiling": CEIL,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


CASES = [
    # (what, facts, verdict)
    ("first record of a key", facts(NOW - 5), Verdict.STORE),
    ("above H", facts(101, stored_high=100), Verdict.STORE),
    ("gap above H is legal", facts(10_000, stored_high=100), Verdict.STORE),
    ("seq == H: its ACK was lost", facts(100, stored_high=100), Verdict.DUP_STORED),
    ("below H, not looked up yet", facts(99, stored_high=100), Verdict.LOOKUP),
    ("below H, still queued", facts(99, stored_high=100, queued=True), Verdict.DUP_STORED),
    (
        "below H, gone (forwarded or never stored)",
        facts(99, stored_high=100, queued=False),
        Verdict.REPLAY,
    ),
    (
        "in the pending batch",
        facts(105, stored_high=100, pending_high=106, in_pending=True),
        Verdict.DUP_PENDING,
    ),
    (
        "highest of the pending batch",
        facts(106, stored_high=100, pending_high=106),
        Verdict.DUP_PENDING,
    ),
    (
        "below the pending batch, not in it",
        facts(104, stored_high=100, pending_high=106),
        Verdict.REPLAY,
    ),
    ("busy hold for a lower seq", facts(101, stored_high=100, held=True), Verdict.HELD),
    ("queue full", facts(101, stored_high=100, room=False), Verdict.FULL),
    (
        "duplicates are ACKed even when full",
        facts(100, stored_high=100, room=False),
        Verdict.DUP_STORED,
    ),
    ("at the ceiling", facts(CEIL), Verdict.STORE),
    ("one above the ceiling", facts(CEIL + 1), Verdict.AHEAD),
    ("seq poisoning: near 2**63", facts(2**63 - 1), Verdict.AHEAD),
    ("beyond SQLite's integer", facts(MAX_SEQ + 1, ceiling=2**64), Verdict.TOO_BIG),
    (
        "ahead is refused before a replay check",
        facts(CEIL + 1, stored_high=CEIL + 5),
        Verdict.AHEAD,
    ),
]


@pytest.mark.parametrize(("what", "f", "verdict"), CASES, ids=[c[0] for c in CASES])
def test_rules(what: str, f: Facts, verdict: Verdict) -> None:
    assert decide(f) is verdict


def test_ceiling_evidence() -> None:
    floor = NOW - 86_400_000 * 30  # enrolled a month ago
    assert ceiling(NOW, floor, -1) == NOW + SEQ_AHEAD_MS
    # a Pi without a real-time clock boots in 1970: the floor and H still bound it
    assert ceiling(0, floor, -1) == floor + SEQ_AHEAD_MS
    assert ceiling(0, floor, floor + 500) == floor + 500 + SEQ_AHEAD_MS
    assert ceiling(CLOCK_PLAUSIBLE_MS - 1, None, -1) == SEQ_CAP  # no evidence at all
    # H bounds the step, so even the device's own key cannot jump near 2**63 at once
    assert ceiling(0, None, 5) == 5 + SEQ_AHEAD_MS


def test_busy_hold_ends_on_timeout_or_with_the_held_seq() -> None:
    h = Holds()
    h.hold("d", 10, 100.0)
    h.hold("d", 12, 100.5)  # a higher one does not move the floor
    assert h.held("d", 11, 101.0) and h.held("d", 12, 101.0)
    assert not h.held("d", 10, 101.0)  # the held seq itself may come: the hold ends
    assert not h.held("d", 11, 101.0)
    h.hold("d", 10, 200.0)
    assert not h.held("d", 11, 200.0 + BUSY_HOLD)  # expired
    assert len(h) == 0
