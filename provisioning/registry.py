"""The device registry: one `<device_id>.json` per device, written atomically.

The gateway reads `public_key` and `status` of each entry. A replaced key is kept for the
record under `previous_keys` (each with its `revoked_at`), which the gateway ignores: only
`public_key` verifies, so an old key stops verifying as soon as the entry is rewritten.
The format, read and written, is citysense_formats.registry_entry's (the gateway's too).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from citysense_formats import devid, registry_entry
from citysense_formats.durable import replace_file

from .errors import RegistryError

MAX_ENTRY_BYTES = registry_entry.MAX_BYTES
Entry = dict[str, Any]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fingerprint(public_key_hex: str) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: safe to log and compare."""
    return registry_entry.fingerprint(bytes.fromhex(public_key_hex))


def check_device_id(device_id: str, what: str = "device id") -> str:
    try:
        return devid.check(device_id, what)
    except devid.DeviceIdError as exc:
        raise RegistryError(str(exc)) from None


def _entry_path(registry: Path, device_id: str) -> Path:
    return registry / f"{check_device_id(device_id)}.json"


def _parse(raw: bytes, where: Path) -> Entry:
    try:
        entry = registry_entry.loads(raw)
        registry_entry.check(entry, where.stem)
    except registry_entry.RegistryEntryError as exc:
        raise RegistryError(f"{where}: {exc}; restore it from backup or re-enroll") from exc
    return entry


def require_dir(registry: Path, create: bool = False) -> Path:
    if create:
        try:
            registry.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(
                f"cannot create the registry directory {registry} ({exc.strerror}),"
                " pass a writable --registry"
            ) from exc
    if not registry.is_dir():
        raise RegistryError(f"registry directory {registry} does not exist, check --registry")
    return registry


def load(registry: Path, device_id: str) -> Entry | None:
    path = _entry_path(registry, device_id)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_ENTRY_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot read {path} ({exc.strerror}), check permissions") from exc
    return _parse(raw, path)


def get(registry: Path, device_id: str) -> Entry:
    entry = load(require_dir(registry), device_id)
    if entry is None:
        raise RegistryError(
            f"device {device_id} is not in the registry {registry},"
            " check the id (citysense-provision registry list)"
        )
    return entry


def entries(registry: Path) -> list[Entry]:
    require_dir(registry)
    return [
        e
        for p in sorted(registry.glob("*.json"))
        if not p.name.startswith(".") and (e := load(registry, p.stem)) is not None
    ]


def save(registry: Path, entry: Entry) -> Path:
    """Write the entry atomically: temp file in the same dir, fsync, rename, fsync dir."""
    path = _entry_path(registry, entry["device_id"])
    try:
        data = registry_entry.encode(entry)
    except registry_entry.RegistryEntryError as exc:
        raise RegistryError(f"refusing to write {path}: {exc} (a bug: please report it)") from exc
    try:
        replace_file(path, data, 0o644)
    except OSError as exc:
        raise RegistryError(
            f"cannot write {path} ({exc.strerror}), check that --registry is writable"
        ) from exc
    return path


def new_entry(
    device_id: str, public_key: str, firmware_sha256: str | None, seq_floor: int | None = None
) -> Entry:
    entry: Entry = {
        "device_id": device_id,
        "public_key": public_key,
        "status": "active",
        "enrolled_at": utc_now(),
        "revoked_at": None,
        "firmware_sha256": firmware_sha256,
        "previous_keys": [],
    }
    if seq_floor is not None:
        entry["seq_floor"] = seq_floor
    return entry


def replaced(
    old: Entry, public_key: str, firmware_sha256: str | None, seq_floor: int | None = None
) -> Entry:
    """A new active entry for the same id; the old key is kept as revoked history."""
    now = utc_now()
    history = list(old.get("previous_keys") or [])
    history.append(
        {
            "public_key": old["public_key"],
            "enrolled_at": old.get("enrolled_at"),
            "revoked_at": old.get("revoked_at") or now,
            "reason": "replaced",
        }
    )
    entry = new_entry(old["device_id"], public_key, firmware_sha256, seq_floor)
    entry["previous_keys"] = history
    return entry


def revoke(registry: Path, device_id: str) -> tuple[Entry, bool]:
    """Mark the entry revoked; returns (entry, changed)."""
    entry = get(registry, device_id)
    if entry["status"] == "revoked":
        return entry, False
    entry["status"] = "revoked"
    entry["revoked_at"] = utc_now()
    save(registry, entry)
    return entry, True
