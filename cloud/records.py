"""One record delivery from the broker -> an accepted record with its readings, or a refusal.

No I/O: `check(delivery, registry)` parses the topic, parses and verifies the COSE_Sign1
with the gateway's protocol core (`parse_sign1`, `verify_parsed`, `decode_record_payload`:
one decoder for untrusted CBOR in the project), and resolves the SenML pack (RFC 8428
section 4.6: base name, base time and base unit apply to the record they appear in and
every later one until changed; name = bn + n, time = bt + t, unit = u or else bu).

Times: time base 0 -> Unix seconds as sent. Time base 1 (seconds since boot) -> the
gateway's `resolved-time` user property (one Unix time per pack entry, unsigned metadata:
used only if it has exactly one number per entry), else no time; the boot-relative value
is kept either way in `boot_time`.

Every refusal is a `Refused` with a reason label from REASONS; nothing from a record is
trusted before its signature verified against an active registry key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final, Protocol

from gateway.protocol import (
    TIME_BASE_BOOT,
    ProtocolError,
    decode_record_payload,
    parse_sign1,
    verify_parsed,
)
from gateway.protocol.record import (
    SENML_BN,
    SENML_BT,
    SENML_BU,
    SENML_N,
    SENML_S,
    SENML_T,
    SENML_U,
    SENML_V,
    SENML_VB,
    SENML_VS,
)
from gateway.registry import Device

MAX_SEQ: Final = 2**63 - 1  # BIGINT in both databases (the gateway's queue has the same bound)
MAX_NAME: Final = 256
MAX_RECORD: Final = 4096  # bytes; a record fits one serial frame (1024), so this is generous
_TOPIC: Final = re.compile(r"^citysense/v1/([A-Za-z0-9._-]{1,64})/([A-Za-z0-9._-]{1,64})/records$")

REASONS: Final = {
    "bad-topic": "the topic is not citysense/v1/<gateway>/<device>/records",
    "oversize": f"more than {MAX_RECORD} bytes (no record is that big)",
    "malformed": "not a COSE_Sign1 record the protocol accepts (or bad SenML inside)",
    "unknown-device": "no registry entry for the record's kid",
    "revoked": "the device's registry entry is revoked",
    "bad-signature": "the signature does not verify under the registered key",
    "topic-mismatch": "the record's kid is not the device named in its topic",
    "seq-conflict": "a validly signed record under a seq already stored with other bytes",
}
"""Every reason a record is refused, and what it means (docs/cloud.md lists them)."""


class Refused(Exception):
    """A delivery that is not stored as a record: `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str, device_id: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id


class Keys(Protocol):
    def get(self, device_id: str) -> Device | None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the broker handed us: topic, the bytes, the gateway's metadata, our clock."""

    topic: str
    payload: bytes
    received_at: float
    gw_received_ms: int | None = None
    resolved_time: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    idx: int
    time: float | None
    boot_time: float | None
    name: str
    unit: str | None
    value: float | None
    string: str | None
    boolean: bool | None
    sum: float | None

    def row(self, device_id: str, seq: int) -> tuple[Any, ...]:
        """The readings table's columns, in order."""
        return (
            device_id,
            seq,
            self.idx,
            self.time,
            self.boot_time,
            self.name,
            self.unit,
            self.value,
            self.string,
            self.boolean,
            self.sum,
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    device_id: str
    seq: int
    boot: int
    time_base: int
    gateway_id: str
    cose: bytes
    received_at: float
    gw_received_ms: int | None
    readings: tuple[Reading, ...]

    @property
    def seen_at(self) -> float:
        """When the device was last heard of: the gateway's receive time if it sent one."""
        return self.received_at if self.gw_received_ms is None else self.gw_received_ms / 1000


def parse_topic(topic: str) -> tuple[str, str]:
    m = _TOPIC.match(topic)
    if m is None:
        raise Refused("bad-topic", f"topic {topic[:120]!r}")
    return m.group(1), m.group(2)


def check(d: Delivery, keys: Keys) -> Accepted:
    """Verify and decode one delivery; Refused(reason) if it is not a storable record."""
    gateway_id, device_id = parse_topic(d.topic)
    if len(d.payload) > MAX_RECORD:
        raise Refused("oversize", f"{len(d.payload)} bytes", device_id)
    try:
        msg = parse_sign1(d.payload)
    except ProtocolError as exc:
        raise Refused("malformed", str(exc), device_id) from exc
    try:
        kid = msg.kid.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused("malformed", "kid is not UTF-8", device_id) from exc
    if kid != device_id:
        raise Refused(
            "topic-mismatch", f"kid {kid[:64]!r} on device {device_id}'s topic", device_id
        )
    device = keys.get(device_id)
    if device is None:
        raise Refused("unknown-device", f"device {device_id} is not in the registry", device_id)
    if not device.active:
        raise Refused("revoked", f"device {device_id} is revoked", device_id)
    try:
        verify_parsed(device.public_key, msg)
        rec = decode_record_payload(msg.payload)
    except ProtocolError as exc:
        raise Refused(exc.reason, str(exc), device_id) from exc
    if rec.seq > MAX_SEQ or rec.boot > MAX_SEQ:
        raise Refused("malformed", f"seq or boot above {MAX_SEQ}", device_id)
    resolved = (
        _resolved(d.resolved_time, len(rec.pack)) if rec.time_base == TIME_BASE_BOOT else None
    )
    try:
        readings = resolve_pack(rec.pack, rec.time_base == TIME_BASE_BOOT, resolved)
    except ValueError as exc:
        raise Refused("malformed", f"SenML: {exc}", device_id) from exc
    return Accepted(
        device_id,
        rec.seq,
        rec.boot,
        rec.time_base,
        gateway_id,
        d.payload,
        d.received_at,
        d.gw_received_ms,
        readings,
    )


def _resolved(text: str | None, n: int) -> list[float] | None:
    """The gateway's `resolved-time` property: n comma-separated Unix times, or None."""
    if not text:
        return None
    try:
        times = [float(t) for t in text.split(",", n)]
    except ValueError:
        return None
    if len(times) != n or not all(math.isfinite(t) for t in times):
        return None
    return times


def _number(entry: dict[int, Any], label: int, what: str) -> float | None:
    v = entry.get(label)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number")
    return float(v)


def _text(entry: dict[int, Any], label: int, what: str) -> str | None:
    v = entry.get(label)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > MAX_NAME or "\x00" in v:
        raise ValueError(f"{what} must be text of at most {MAX_NAME} chars, no NUL")
    return v


def resolve_pack(
    pack: list[dict[int, Any]], boot_relative: bool, resolved: list[float] | None
) -> tuple[Reading, ...]:
    """RFC 8428 resolution of a SenML pack; ValueError on a field of the wrong type."""
    out: list[Reading] = []
    bn: str | None = ""
    bt: float | None = 0.0
    bu: str | None = None
    for idx, entry in enumerate(pack):
        bn = _text(entry, SENML_BN, "bn") if SENML_BN in entry else bn
        bt = _number(entry, SENML_BT, "bt") if SENML_BT in entry else bt
        bu = _text(entry, SENML_BU, "bu") if SENML_BU in entry else bu
        name = (bn or "") + (_text(entry, SENML_N, "n") or "")
        if not name:
            raise ValueError(f"record {idx} has no name (bn + n is empty)")
        t = (bt or 0.0) + (_number(entry, SENML_T, "t") or 0.0)
        vb = entry.get(SENML_VB)
        if vb is not None and not isinstance(vb, bool):
            raise ValueError("vb must be a boolean")
        if boot_relative:
            time, boot_time = (None if resolved is None else resolved[idx]), t
        else:
            time, boot_time = t, None
        out.append(
            Reading(
                idx,
                time,
                boot_time,
                name,
                _text(entry, SENML_U, "u") or bu,
                _number(entry, SENML_V, "v"),
                _text(entry, SENML_VS, "vs"),
                vb,
                _number(entry, SENML_S, "s"),
            )
        )
    return tuple(out)
