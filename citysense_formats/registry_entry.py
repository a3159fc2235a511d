"""One device-registry entry: the file `<device_id>.json` in the registry directory.

A JSON object, at most MAX_BYTES, no key given twice. The gateway uses:
  device_id   the device-id rule (`devid`), equal to the file name's stem
  public_key  64 lowercase hex chars: the raw Ed25519 key that verifies its records
  status      "active" or "revoked"
  seq_floor   optional: the seq floor enrollment wrote to the node for this key (Unix ms
              at enrollment), an integer 0..2**63-1; absent in entries written before it
  enrolled_at optional: UTC time of the enrollment, "YYYY-MM-DDTHH:MM:SSZ"; stands in for
              seq_floor where that is absent (read leniently: unreadable = unknown)
Provisioning also keeps enrolled_at, revoked_at, firmware_sha256 and previous_keys (a
list of objects: keys this id had before, kept for the record, never verifying).
Other keys are kept as they are and ignored.

Lowercase hex only: provisioning writes lowercase and compares keys as text, so an
entry a hand edit left in capitals is refused by every reader alike, never half-used.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from . import devid

MAX_BYTES = 64 * 1024
MAX_SEQ_FLOOR = 2**63 - 1
STATUSES = ("active", "revoked")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class RegistryEntryError(ValueError):
    """Not a usable registry entry; the message names the field and what it expected."""


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    device_id: str
    public_key: bytes
    active: bool
    seq_floor: int | None = None
    enrolled_ms: int | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def floor(self) -> int | None:
        """The lowest seq this key's records start at, as far as the entry tells: its
        seq_floor, else the Unix ms of enrolled_at (the floor is that clock's ms, within
        the second); None when unknown. The gateway's seq ceiling builds on it."""
        return self.enrolled_ms if self.seq_floor is None else self.seq_floor


def fingerprint(public_key: bytes) -> str:
    """SHA-256 (hex, 64 chars) of the raw 32-byte key: safe to log and compare."""
    return hashlib.sha256(public_key).hexdigest()


def key_id(public_key: bytes) -> str:
    """The key's short name: the first 16 hex chars of its fingerprint (64 bits)."""
    return fingerprint(public_key)[:16]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RegistryEntryError(f"key {key!r} given twice")
        out[key] = value
    return out


def loads(data: bytes) -> dict[str, Any]:
    """The entry's JSON object with every key kept (not yet checked: see `check`)."""
    if len(data) > MAX_BYTES:
        raise RegistryEntryError(f"larger than {MAX_BYTES} bytes")
    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicates)
    except RegistryEntryError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError too
        raise RegistryEntryError(f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RegistryEntryError("expected a JSON object")
    return obj


def _seq_floor(obj: dict[str, Any]) -> int | None:
    floor = obj.get("seq_floor")
    if floor is None:
        return None
    if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= MAX_SEQ_FLOOR:
        raise RegistryEntryError(f"seq_floor: expected an integer 0..2**63-1, got {floor!r}")
    return floor


def _enrolled_ms(obj: dict[str, Any]) -> int | None:
    text = obj.get("enrolled_at")
    if not isinstance(text, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def check(obj: dict[str, Any], stem: str | None = None) -> RegistryEntry:
    """The fields the gateway uses; `stem` (the file name without .json) must match."""
    device_id = obj.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise RegistryEntryError("device_id: expected a non-empty string")
    if not devid.is_valid(device_id):
        raise RegistryEntryError(f"device_id {device_id!r}: expected {devid.RULE}")
    if stem is not None and device_id != stem:
        raise RegistryEntryError(
            f"device_id {device_id!r} does not match the file name {stem!r}.json"
        )
    key = obj.get("public_key")
    if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
        raise RegistryEntryError("public_key: expected 64 lowercase hex chars (raw Ed25519)")
    status = obj.get("status")
    if status not in STATUSES:
        raise RegistryEntryError(f"status: expected 'active' or 'revoked', got {status!r}")
    history = obj.get("previous_keys")
    if history is not None and (
        not isinstance(history, list) or not all(isinstance(k, dict) for k in history)
    ):
        raise RegistryEntryError("previous_keys: expected a list of objects")
    return RegistryEntry(
        device_id, bytes.fromhex(key), status == "active", _seq_floor(obj), _enrolled_ms(obj)
    )


def parse(data: bytes, stem: str | None = None) -> RegistryEntry:
    """One registry file's bytes -> RegistryEntry; RegistryEntryError naming the problem."""
    return check(loads(data), stem)


def encode(obj: dict[str, Any]) -> bytes:
    """The file's bytes for an entry (checked first): sorted keys, 2-space indent."""
    check(obj)
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    if len(data) > MAX_BYTES:
        raise RegistryEntryError(f"larger than {MAX_BYTES} bytes")
    return data
