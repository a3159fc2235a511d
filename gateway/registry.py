"""The device registry: a directory of `<device_id>.json`, re-read when a file changes."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("citysense.registry")

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    public_key: bytes
    active: bool


class Registry:
    """Devices by id. `refresh()` re-reads changed files (cheap: one stat per file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._devices: dict[str, Device] = {}
        self._stamps: dict[Path, tuple[int, int, int]] = {}
        self._by_file: dict[Path, str] = {}
        self.bad_files: dict[str, str] = {}

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)

    def refresh(self) -> bool:
        """Re-read new/changed files, forget removed ones; True if anything changed."""
        try:
            paths = {p for p in self.directory.glob("*.json") if not p.name.startswith(".")}
        except OSError as exc:
            log.error("event=registry-unreadable dir=%s error=%s", self.directory, exc)
            return False
        changed = False
        for gone in set(self._stamps) - paths:
            self._forget(gone)
            changed = True
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if self._stamps.get(path) == stamp:
                continue
            self._stamps[path] = stamp
            self._load(path)
            changed = True
        return changed

    def _forget(self, path: Path) -> None:
        self._stamps.pop(path, None)
        self.bad_files.pop(path.name, None)
        device_id = self._by_file.pop(path, None)
        if device_id is not None:
            self._devices.pop(device_id, None)
            log.info("event=registry-removed device=%s", device_id)

    def _load(self, path: Path) -> None:
        try:
            device = parse_entry(path.read_bytes(), path.stem)
        except (OSError, ValueError) as exc:
            self.bad_files[path.name] = str(exc)
            old = self._by_file.pop(path, None)
            if old is not None:
                self._devices.pop(old, None)
            log.error("event=registry-bad-file file=%s error=%s", path.name, exc)
            return
        self.bad_files.pop(path.name, None)
        self._by_file[path] = device.device_id
        previous = self._devices.get(device.device_id)
        self._devices[device.device_id] = device
        if previous != device:
            log.info(
                "event=registry-loaded device=%s status=%s",
                device.device_id,
                "active" if device.active else "revoked",
            )


def parse_entry(data: bytes, stem: str) -> Device:
    """One registry file -> Device; ValueError naming the problem."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    device_id = obj.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise ValueError("device_id: expected a non-empty string")
    if device_id != stem:
        raise ValueError(f"device_id {device_id!r} does not match the file name {stem!r}.json")
    key = obj.get("public_key")
    if not isinstance(key, str) or not _HEX64.match(key):
        raise ValueError("public_key: expected 64 hex chars (raw Ed25519)")
    status = obj.get("status")
    if status not in ("active", "revoked"):
        raise ValueError(f"status: expected 'active' or 'revoked', got {status!r}")
    return Device(device_id, bytes.fromhex(key), status == "active")
