"""What the status page knows about each node beyond the pipeline's device state.

Fed by one call after each group commit (`stored(records)`, records that were verified
and are now durable): records per minute for the last hour, the node's record cadence
(to tell "quiet" from "fine") and the latest `sys/...` and battery readings of its pack.
The pack of a device's newest record is decoded only when a snapshot asks for it (once
per second, not once per record).
Everything is bounded: 60 minute buckets and 8 gaps per device, at most MAX_DEVICES.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol import ProtocolError, decode_record_payload, parse_sign1
from ..protocol.record import SENML_N, SENML_V, SENML_VS

log = logging.getLogger("citysense.web")

MINUTES = 60
GAPS = 8
MIN_GAP_S = 0.5
"""Arrival gaps shorter than this are a node catching up (its buffered records back to
back), not its cadence: they are not learnt."""
MAX_DEVICES = 4096
READINGS = {
    # pack name -> page field
    "sys/heap": "heap_free",
    "sys/uptime": "uptime_s",
    "sys/reset": "reset",
    "sys/linkerr": "link_errors",
    "sys/dropped": "dropped",
    "battery": "battery_v",
}
OTA_NOTE = "sys/ota"
"""A firmware update's outcome (staged, trial, confirmed, rolled-back ..., refused ...),
in the one record after the event: every stored record is searched for it (a bytes
search, cheap), not only the newest one a snapshot decodes."""
_OTA_BYTES = OTA_NOTE.encode()


class Stored(Protocol):
    """A stored record as the pipeline has it (gateway.queue.NewRecord)."""

    @property
    def device_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def data(self) -> bytes: ...


@dataclass
class _Node:
    minutes: list[int] = field(default_factory=lambda: [0] * MINUTES)
    minute: int = 0  # the minute (since the epoch) minutes[minute % MINUTES] counts
    last_at: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=GAPS))
    readings: dict[str, Any] = field(default_factory=dict)
    newest: bytes = b""  # the newest stored record, decoded only when the page asks
    newest_seq: int = -1
    decoded_seq: int = -1
    ota_note: str | None = None
    ota_seq: int = -1


class NodeHistory:
    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.nodes: dict[str, _Node] = {}

    def _node(self, device_id: str) -> _Node | None:
        node = self.nodes.get(device_id)
        if node is None:
            if len(self.nodes) >= MAX_DEVICES:
                return None
            node = self.nodes[device_id] = _Node()
        return node

    def record(self, device_id: str, n: int) -> None:
        """`n` records of `device_id` were stored just now."""
        node = self._node(device_id)
        if node is None:
            return
        now = self.clock()
        _advance(node, int(now // 60))
        node.minutes[node.minute % MINUTES] += n
        if node.last_at is not None and now - node.last_at >= MIN_GAP_S:
            node.gaps.append(now - node.last_at)
        node.last_at = now

    def stored(self, records: Iterable[Stored]) -> None:
        """The pipeline's hook after a commit: counts, and the newest record's readings."""
        newest: dict[str, Stored] = {}
        counts: dict[str, int] = {}
        for rec in records:
            counts[rec.device_id] = counts.get(rec.device_id, 0) + 1
            if _OTA_BYTES in rec.data:
                self._ota(rec)
            prev = newest.get(rec.device_id)
            if prev is None or rec.seq > prev.seq:
                newest[rec.device_id] = rec
        for device_id, n in counts.items():
            self.record(device_id, n)
        for device_id, rec in newest.items():
            node = self.nodes.get(device_id)
            if node is not None and rec.seq > node.newest_seq:
                node.newest, node.newest_seq = rec.data, rec.seq

    def _ota(self, rec: Stored) -> None:
        node = self._node(rec.device_id)
        note = ota_note(rec.data)
        if node is not None and note is not None and rec.seq > node.ota_seq:
            node.ota_note, node.ota_seq = note, rec.seq

    def device(self, device_id: str) -> dict[str, Any]:
        """This device's page data: per-minute counts (oldest first), cadence, readings."""
        node = self.nodes.get(device_id)
        if node is None:
            return {"per_minute": [0] * MINUTES, "interval_s": None, "last_record_at": None}
        _advance(node, int(self.clock() // 60))
        if node.decoded_seq != node.newest_seq:  # at most one decode per snapshot
            node.readings.update(readings(node.newest))
            node.decoded_seq = node.newest_seq
        start = node.minute + 1
        per_minute = [node.minutes[(start + i) % MINUTES] for i in range(MINUTES)]
        interval = round(statistics.median(node.gaps), 3) if len(node.gaps) >= 2 else None
        return {
            "per_minute": per_minute,
            "interval_s": interval,
            "last_record_at": node.last_at,
            "ota_note": node.ota_note,
            **node.readings,
        }


def _advance(node: _Node, minute: int) -> None:
    """Zero the buckets of the minutes that passed without records."""
    if minute <= node.minute:
        return
    for m in range(max(node.minute + 1, minute - MINUTES + 1), minute + 1):
        node.minutes[m % MINUTES] = 0
    node.minute = minute


def _pack(signed: bytes) -> list[Any]:
    try:
        return decode_record_payload(parse_sign1(signed).payload).pack
    except ProtocolError:
        return []


def ota_note(signed: bytes) -> str | None:
    """The last sys/ota text of a stored record's pack (cut to 64 characters), if any."""
    note = None
    for entry in _pack(signed):
        value = entry.get(SENML_VS)
        if entry.get(SENML_N) == OTA_NOTE and isinstance(value, str):
            note = value[:64]
    return note


def readings(signed: bytes) -> dict[str, Any]:
    """The READINGS of a stored (already verified) record's SenML pack, newest last wins."""
    out: dict[str, Any] = {}
    for entry in _pack(signed):
        name = entry.get(SENML_N)
        key = READINGS.get(name) if isinstance(name, str) else None
        if key is None:
            continue
        value = entry.get(SENML_V, entry.get(SENML_VS))
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        out[key] = value[:32] if isinstance(value, str) else value
    return out
