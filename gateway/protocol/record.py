"""The signed record's payload: {1: seq, 2: boot count, 3: SenML pack, 4: time base}."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from .cbor import dumps, get_uint, loads_strict, require_map
from .errors import MalformedError

TIME_BASE_UNIX: Final = 0
TIME_BASE_BOOT: Final = 1

# RFC 8428 CBOR labels
SENML_BN: Final = -2
SENML_BT: Final = -3
SENML_BU: Final = -4
SENML_N: Final = 0
SENML_U: Final = 1
SENML_V: Final = 2
SENML_VS: Final = 3
SENML_VB: Final = 4
SENML_S: Final = 5
SENML_T: Final = 6
SENML_UT: Final = 7
_SENML_LABELS: Final = frozenset(range(-4, 8)) - {-1}
MAX_PACK: Final = 256


@dataclass(frozen=True, slots=True)
class RecordPayload:
    seq: int
    boot: int
    pack: list[dict[int, Any]]
    time_base: int


def decode_record_payload(payload: bytes) -> RecordPayload:
    m = require_map(loads_strict(payload, "record payload"), "record payload")
    seq = get_uint(m, 1, "record payload")
    boot = get_uint(m, 2, "record payload")
    time_base = get_uint(m, 4, "record payload")
    if time_base not in (TIME_BASE_UNIX, TIME_BASE_BOOT):
        raise MalformedError(f"record payload: unknown time base {time_base}")
    pack = m.get(3)
    if not isinstance(pack, list) or not 0 < len(pack) <= MAX_PACK:
        raise MalformedError(f"record payload: key 3 must be a SenML pack of 1..{MAX_PACK}")
    for entry in pack:
        if not isinstance(entry, dict) or not set(entry) <= _SENML_LABELS:
            raise MalformedError("record payload: SenML record with unknown labels")
    return RecordPayload(seq, boot, pack, time_base)


def encode_record_payload(rec: RecordPayload) -> bytes:
    return dumps({1: rec.seq, 2: rec.boot, 3: rec.pack, 4: rec.time_base})


MAX_TIME: Final = 1e13
"""Largest magnitude (seconds) of a SenML time or base time that is resolved; valid CBOR
may carry integers of any size (2**1100 made float() raise) and floats may be inf/NaN."""


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return float(value) if -MAX_TIME <= value <= MAX_TIME else None
    return value if math.isfinite(value) and abs(value) <= MAX_TIME else None


def resolve_times(rec: RecordPayload, boot_started_unix: float | None) -> list[float] | None:
    """Unix times of the pack's records, or None when they cannot be known.

    SenML: a record's time is bt (base time, carried forward) + t. For time base 1 the
    times count seconds since the boot the record was made in; `boot_started_unix` is
    that boot's start on the gateway's clock (from its HELLO), if the gateway saw it.
    A time that is not a finite number within MAX_TIME makes the whole pack unresolved
    (None): the record is still stored and forwarded, byte for byte, just without
    resolved times. Never raises on a pack that decode_record_payload accepted.
    """
    offset = 0.0
    if rec.time_base == TIME_BASE_BOOT:
        if boot_started_unix is None:
            return None
        offset = boot_started_unix
    out: list[float] = []
    base = 0.0
    for entry in rec.pack:
        if SENML_BT in entry:
            bt = _seconds(entry[SENML_BT])
            if bt is None:
                return None
            base = bt
        t = _seconds(entry.get(SENML_T, 0))
        if t is None:
            return None
        out.append(offset + base + t)
    return out
