"""Admission of a verified record: the delivery rules as a table, with no I/O.

The core sees one verified record's seq and what the gateway knows of its device (the
highest seq stored under the device's *current key*, the records waiting for the next
group commit, a busy hold, room in the queue, the plausible ceiling) and answers with a
`Verdict`. The pipeline does the I/O: it verifies before, and stores, ACKs or NACKs after.

Replay state belongs to (device, key): `H` below is the highest seq stored with the
device's active key, so a re-keyed device starts afresh above its enrollment floor and a
record accepted under an old key can never block the new one.

Rules, first match wins (`RULES`):
| rule        | when                                                  | verdict      |
|-------------|-------------------------------------------------------|--------------|
| too-big     | seq > MAX_SEQ (2**63-1, SQLite INTEGER)               | NACK malformed |
| ahead       | seq > ceiling (see `ceiling()`)                       | NACK seq-ahead |
| dup-stored  | seq == H, or seq < H and still queued                 | ACK H        |
| dup-pending | seq <= H' (H with the pending batch) and in the batch | (ACK after the commit) |
| lookup      | seq < H' and not known whether it is queued           | ask the store |
| replay      | seq < H' otherwise (forwarded, or never stored)       | NACK replay  |
| held        | a lower seq got NACK busy less than BUSY_HOLD s ago   | NACK busy    |
| full        | no room in the queue for it and the pending batch     | NACK busy, hold |
| store       | otherwise                                             | batch; ACK after commit |

`seq-ahead` is answered by the node like `busy` with a long floor: it keeps the record
and backs off (only an ACK deletes, a `replay` NACK is the one refusal it drops on). So
a record the gateway finds implausible is never lost by the node, and one validly signed
record with a seq near 2**63 cannot become the device's H for ever (finding: seq
poisoning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from .queue import MAX_SEQ

BUSY_HOLD: Final = 5.0
"""Seconds a device's later records are held back after one of its records got NACK busy."""

SEQ_AHEAD_MS: Final = 86_400_000
"""How far above the newest evidence a seq may be: one day of milliseconds.

Seqs start at the Unix ms of enrollment (the seq floor) and grow by one per record, so a
genuine seq stays below the Unix ms of the moment it is made as long as the node makes
fewer than 1,000 records a second. Evidence: the gateway's clock (once it is past
CLOCK_PLAUSIBLE_MS), the device's enrollment floor from the registry, and H. The day of
slack covers an enrollment laptop's clock running ahead of the gateway's."""

CLOCK_PLAUSIBLE_MS: Final = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SEQ_CAP: Final = 2**42
"""With no evidence at all (no plausible clock, no floor, nothing stored): Unix ms of the
year 2109. No seq that started at an enrollment time can be above it."""


class Verdict(Enum):
    TOO_BIG = "too-big"
    AHEAD = "ahead"
    DUP_STORED = "dup-stored"
    DUP_PENDING = "dup-pending"
    LOOKUP = "lookup"
    REPLAY = "replay"
    HELD = "held"
    FULL = "full"
    STORE = "store"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rules look at for one record (all of it known without I/O but `queued`)."""

    seq: int
    stored_high: int  # H: highest seq stored under the device's key, -1 if none
    pending_high: int  # highest seq in the pending batch, -1 if none
    in_pending: bool  # this very seq is in the pending batch
    queued: bool | None  # this seq's row is still in the queue; None = not looked up
    held: bool  # a busy hold for a lower seq of this device is active
    room: bool  # the queue has room for this record on top of the pending batch
    ceiling: int

    @property
    def high(self) -> int:
        return max(self.stored_high, self.pending_high)


def _dup_stored(f: Facts) -> bool:
    return f.seq <= f.stored_high and (f.seq == f.stored_high or f.queued is True)


def _dup_pending(f: Facts) -> bool:
    return f.seq <= f.high and (f.in_pending or f.seq == f.pending_high)


RULES: Final[tuple[tuple[Verdict, Callable[[Facts], bool]], ...]] = (
    (Verdict.TOO_BIG, lambda f: f.seq > MAX_SEQ),
    (Verdict.AHEAD, lambda f: f.seq > f.ceiling),
    (Verdict.DUP_STORED, _dup_stored),
    (Verdict.DUP_PENDING, _dup_pending),
    (Verdict.LOOKUP, lambda f: f.seq < f.stored_high and f.queued is None),
    (Verdict.REPLAY, lambda f: f.seq <= f.high),
    (Verdict.HELD, lambda f: f.held),
    (Verdict.FULL, lambda f: not f.room),
    (Verdict.STORE, lambda f: True),
)


def decide(f: Facts) -> Verdict:
    for verdict, when in RULES:
        if when(f):
            return verdict
    raise AssertionError("unreachable: the last rule always matches")  # pragma: no cover


def ceiling(now_ms: int, floor: int | None, stored_high: int) -> int:
    """The highest seq the gateway accepts now for a device (see SEQ_AHEAD_MS)."""
    evidence = max(
        now_ms if now_ms >= CLOCK_PLAUSIBLE_MS else -1,
        -1 if floor is None else floor,
        stored_high,
    )
    return SEQ_CAP if evidence < 0 else evidence + SEQ_AHEAD_MS


class Holds:
    """Busy holds: after NACK busy for seq s of a device, its seqs above s are NACKed busy
    too for BUSY_HOLD seconds, so they cannot be stored before s (after which s could
    only be refused as a replay). The hold ends when s is stored or on timeout (the node
    may have dropped s from a full buffer and never send it again)."""

    def __init__(self) -> None:
        self._floor: dict[str, tuple[int, float]] = {}

    def held(self, device: str, seq: int, mono: float) -> bool:
        floor = self._floor.get(device)
        if floor is None:
            return False
        if seq > floor[0] and mono - floor[1] < BUSY_HOLD:
            return True
        del self._floor[device]
        return False

    def hold(self, device: str, seq: int, mono: float) -> None:
        prev = self._floor.get(device)
        if prev is None or seq < prev[0]:
            self._floor[device] = (seq, mono)

    def __len__(self) -> int:
        return len(self._floor)
