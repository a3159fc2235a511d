"""The device registry: a directory of `<device_id>.json`, re-read when a file changes.

The entry format (and the device-id rule a file must follow) is
citysense_formats.registry_entry's, shared with provisioning.

A gateway that takes registry updates from the broker (gateway/registry_sync.py) has two
sources: the configured directory (`[gateway] registry`, e.g. /etc/citysense/registry,
written by citysense-provision, read-only to the service under its systemd unit) and the
synced copy the updates write into its state directory (`<state_dir>/registry`, with the
held version and its apply time in `registry-sync.json`). Which entry counts, per device:

| the configured directory's file   | the synced set          | counts        |
|-----------------------------------|-------------------------|---------------|
| changed after the update applied  | any                     | the local one |
| older, or none                    | names the device        | the synced one|
| present                           | no update ever named it | the local one |
| older                             | named once, not now     | none (dropped)|

So the operator's signed set wins over what was there when it was applied; an edit on
site after that (a local revocation, a re-key) wins until the next applied update; a
device only ever enrolled on site stays. "Changed after" compares the file's mtime with
the apply time, both from the gateway's clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from citysense_formats import registry_entry
from citysense_formats.registry_entry import RegistryEntry as Device

from .registry_sync import SyncState, load_state, state_path, synced_dir

log = logging.getLogger("citysense.registry")

__all__ = ["Device", "Registry"]


@dataclass(frozen=True, slots=True)
class _Loaded:
    device: Device
    mtime_ns: int


class _Dir:
    """One directory's entry files, each re-read when its (mtime, size, inode) changes."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        self.label = label  # prefix of bad file names from this directory ("" or "synced/")
        self.devices: dict[str, _Loaded] = {}
        self.bad_files: dict[str, str] = {}
        self._stamps: dict[Path, tuple[int, int, int]] = {}
        self._by_file: dict[Path, str] = {}

    def refresh(self) -> bool:
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
            self._load(path, st.st_mtime_ns)
            changed = True
        return changed

    def _forget(self, path: Path) -> None:
        self._stamps.pop(path, None)
        self.bad_files.pop(self.label + path.name, None)
        device_id = self._by_file.pop(path, None)
        if device_id is not None:
            self.devices.pop(device_id, None)

    def _load(self, path: Path, mtime_ns: int) -> None:
        try:
            device = _read(path)
        except (OSError, ValueError) as exc:
            self.bad_files[self.label + path.name] = str(exc)
            old = self._by_file.pop(path, None)
            if old is not None:
                self.devices.pop(old, None)
            log.error("event=registry-bad-file file=%r error=%r", self.label + path.name, str(exc))
            return
        self.bad_files.pop(self.label + path.name, None)
        self._by_file[path] = device.device_id
        self.devices[device.device_id] = _Loaded(device, mtime_ns)


def choose(
    local: _Loaded | None, synced: Device | None, named: bool, applied_ns: int
) -> Device | None:
    """The module docstring's table, for one device."""
    if local is not None and local.mtime_ns > applied_ns:
        return local.device
    if synced is not None:
        return synced
    if local is not None and not named:
        return local.device
    return None


class Registry:
    """Devices by id. `refresh()` re-reads changed files (cheap: one stat per file).
    With `state_dir`, the synced copy there is merged in (the module docstring)."""

    def __init__(self, directory: Path, state_dir: Path | None = None) -> None:
        self.directory = directory
        self._local = _Dir(directory, "")
        self._state_dir = state_dir
        self._synced = _Dir(synced_dir(state_dir), "synced/") if state_dir else None
        self._state = SyncState()
        self._state_stamp: tuple[int, int, int] | None = None
        self._devices: dict[str, Device] = {}

    @property
    def bad_files(self) -> dict[str, str]:
        if self._synced is None:
            return self._local.bad_files
        return {**self._local.bad_files, **self._synced.bad_files}

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)

    def refresh(self) -> bool:
        """Re-read new/changed files, forget removed ones; True if anything changed."""
        changed = self._local.refresh()
        if self._synced is not None and self._state_dir is not None:
            changed = self._synced.refresh() | self._reload_state(self._state_dir) | changed
        if changed:
            self._merge()
        return changed

    def _reload_state(self, state_dir: Path) -> bool:
        try:
            st = state_path(state_dir).stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._state_stamp:
            return False
        self._state_stamp = stamp
        self._state = load_state(state_dir)
        return True

    def _merge(self) -> None:
        local = self._local.devices
        synced = self._synced.devices if self._synced is not None else {}
        applied_ns = int(self._state.applied_at * 1e9)
        merged: dict[str, Device] = {}
        for device_id in local.keys() | synced.keys():
            s = synced.get(device_id)
            named = device_id in self._state.named
            device = choose(local.get(device_id), s.device if s else None, named, applied_ns)
            if device is not None:
                merged[device_id] = device
        for device_id in self._devices.keys() - merged.keys():
            log.info("event=registry-removed device=%s", device_id)
        for device_id, device in sorted(merged.items()):
            if self._devices.get(device_id) != device:
                log.info(
                    "event=registry-loaded device=%s status=%s",
                    device_id,
                    "active" if device.active else "revoked",
                )
        self._devices = merged


def _read(path: Path) -> Device:
    """One registry file -> Device; OSError, or ValueError naming the problem."""
    with path.open("rb") as f:
        data = f.read(registry_entry.MAX_BYTES + 1)
    return registry_entry.parse(data, path.stem)
