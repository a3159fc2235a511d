"""The device registry: one `<device_id>.json` per device, written atomically.

The gateway reads `public_key` and `status` of each entry. A replaced key is kept for the
record under `previous_keys` (each with its `revoked_at`), which the gateway ignores: only
`public_key` verifies, so an old key stops verifying as soon as the entry is rewritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import RegistryError

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PUBKEY_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_ENTRY_BYTES = 64 * 1024
Entry = dict[str, Any]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fingerprint(public_key_hex: str) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: safe to log and compare."""
    return hashlib.sha256(bytes.fromhex(public_key_hex)).hexdigest()


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.match(device_id):
        raise RegistryError(
            f"invalid device id {device_id!r}, use 1-64 letters, digits, '.', '_' or '-'"
            " starting with a letter or digit"
        )
    return device_id


def _entry_path(registry: Path, device_id: str) -> Path:
    return registry / f"{check_device_id(device_id)}.json"


def _validate(entry: Any, where: Path) -> Entry:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where} is not a JSON object, restore it from backup")
    pub = entry.get("public_key")
    if not isinstance(pub, str) or not PUBKEY_RE.match(pub):
        raise RegistryError(f"{where} has no valid public_key, restore it or re-enroll")
    if entry.get("status") not in ("active", "revoked"):
        raise RegistryError(f"{where} has an invalid status, restore it or re-enroll")
    if entry.get("device_id") != where.stem:
        raise RegistryError(f"{where} names another device_id, restore it from backup")
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
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot read {path} ({exc.strerror}), check permissions") from exc
    if len(raw) > MAX_ENTRY_BYTES:
        raise RegistryError(f"{path} is larger than {MAX_ENTRY_BYTES} bytes, restore it")
    try:
        entry = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc}), restore it from backup") from exc
    return _validate(entry, path)


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
    tmp = registry / f".{path.name}.tmp"
    data = (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(registry, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise RegistryError(
            f"cannot write {path} ({exc.strerror}), check that --registry is writable"
        ) from exc
    return path


def new_entry(device_id: str, public_key: str, firmware_sha256: str | None) -> Entry:
    return {
        "device_id": device_id,
        "public_key": public_key,
        "status": "active",
        "enrolled_at": utc_now(),
        "revoked_at": None,
        "firmware_sha256": firmware_sha256,
        "previous_keys": [],
    }


def replaced(old: Entry, public_key: str, firmware_sha256: str | None) -> Entry:
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
    entry = new_entry(old["device_id"], public_key, firmware_sha256)
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
