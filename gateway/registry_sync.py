"""The registry from the broker: operator-signed updates written into the state dir.

`citysense-cloud registry publish` sends the full set of registry entries as a
REGISTRY_UPDATE (gateway/protocol/registry_update.py), retained on citysense/v1/registry
(every gateway) or citysense/v1/<gw>/registry (one). Here a gateway:
- verifies the operator's signature (the same key that verifies COMMANDs; without one,
  it does not subscribe: the directory stays as it is, the local source of truth);
- applies only a version above the one it holds ("current": the same again, ignored;
  "stale": older, refused and counted, as is every other refusal);
- writes each entry whose bytes differ as `<device_id>.json` into `<state_dir>/registry`
  (SYNCED_DIR), by temp file + fsync + rename, so Registry.refresh() (every 0.5 s) never
  sees half a file; removes the files an earlier update wrote whose device the new set
  no longer holds; fsyncs the directory;
- then persists the held version, the files it wrote, every device an update ever named
  and the apply time in `registry-sync.json`, so a crash in between re-applies the
  retained update at the next connection.
The configured registry directory (`[gateway] registry`, /etc/citysense/registry under
the shipped systemd unit, which mounts /etc/citysense read-only) is never written: the
gateway reads both, and gateway/registry.py says which entry counts (the synced one,
unless the local file changed after the update was applied, or no update ever named the
device). Before this the updates were written into the configured directory, which the
unit's read-only /etc made fail (`write-failed`). A state file from then (no
`applied_at`) reads as applied at time 0: the files it wrote there count until the next
update lands in the state dir.
Counted in Metrics.registry_updates by outcome; the version is in the agent's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from citysense_formats.durable import fsync_dir, replace_file

from .logsafe import esc
from .metrics import Metrics
from .protocol import ProtocolError
from .protocol.registry_update import ALL_GATEWAYS, RegistryUpdate, decode_update, topic_for

log = logging.getLogger("citysense.registry_sync")

STATE_FILE: Final = "registry-sync.json"
SYNCED_DIR: Final = "registry"
ACCEPTED: Final = ("applied", "current")


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def synced_dir(state_dir: Path) -> Path:
    return state_dir / SYNCED_DIR


@dataclass(frozen=True, slots=True)
class SyncState:
    """What `registry-sync.json` holds: the version applied, the files it wrote, every
    device id an applied update named, and when it was applied (Unix s, this clock)."""

    version: int | None = None
    files: frozenset[str] = field(default_factory=frozenset)
    named: frozenset[str] = field(default_factory=frozenset)
    applied_at: float = 0.0


def load_state(state_dir: Path) -> SyncState:
    """The held state; empty if there is none. Unreadable: logged, and empty (any signed
    version is then accepted, and local files count as they are)."""
    path = state_path(state_dir)
    try:
        obj = json.loads(path.read_bytes())
        version, files = obj["version"], obj["files"]
        named = obj.get("named", [f.removesuffix(".json") for f in files])
        applied_at = obj.get("applied_at", 0.0)
        if (
            type(version) is not int
            or not all(isinstance(f, str) for f in [*files, *named])
            or type(applied_at) not in (int, float)
        ):
            raise ValueError("version, files, named or applied_at of the wrong type")
    except FileNotFoundError:
        return SyncState()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error(
            "event=registry-sync-state-unreadable file=%s error=%r: any signed version"
            " is accepted until one is applied",
            path,
            str(exc),
        )
        return SyncState()
    return SyncState(version, frozenset(files), frozenset(named), float(applied_at))


def _same(path: Path, data: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


class RegistrySync:
    def __init__(
        self,
        gateway_id: str,
        registry_dir: Path,
        state_dir: Path,
        metrics: Metrics,
        operator_key: bytes | None,
    ) -> None:
        self.gw = gateway_id
        self.local = registry_dir  # read by gateway/registry.py, never written here
        self.directory = synced_dir(state_dir)
        self.state_path = state_path(state_dir)
        self.metrics = metrics
        self.operator_key = operator_key
        held = load_state(state_dir)
        self.version: int | None = held.version
        self._files: set[str] = set(held.files)
        self._named: set[str] = set(held.named)
        self._lock = threading.Lock()  # a thread left over from a dropped session

    # -- held version ----------------------------------------------------------------
    def _save(self, version: int, files: set[str], named: set[str]) -> None:
        body = json.dumps(
            {
                "version": version,
                "files": sorted(files),
                "named": sorted(named),
                "applied_at": time.time(),
            }
        ).encode()
        replace_file(self.state_path, body, 0o600, sync_dir=False)
        self.version, self._files, self._named = version, files, named

    # -- MQTT side (called by the uplink) -------------------------------------------
    def topics(self) -> tuple[str, str]:
        return topic_for(ALL_GATEWAYS), topic_for(self.gw)

    def handles(self, topic: str) -> bool:
        return topic in self.topics()

    async def subscribe(self, client: Any) -> None:
        """Subscribe (QoS 1) to both topics if an operator key is set; a refused SUBACK
        (the broker ACL) is logged, the rest of the session goes on."""
        if self.operator_key is None:
            return
        for topic in self.topics():
            codes = await client.subscribe(topic, qos=1)
            refused = [c for c in codes if c >= 0x80]
            if refused:
                log.warning(
                    "event=registry-subscribe-refused topic=%s code=%s: the broker ACL"
                    " must let this gateway read it",
                    topic,
                    refused[0],
                )

    async def receive(self, payload: object) -> str:
        """One message from a registry topic: apply it (file writes in a thread)."""
        if isinstance(payload, bytes | bytearray):
            outcome = await asyncio.to_thread(self.apply, bytes(payload))
        else:
            outcome = "malformed"
        self.metrics.registry_updates[outcome] += 1
        return outcome

    # -- the update ------------------------------------------------------------------
    def apply(self, data: bytes) -> str:
        """The outcome: applied, current, or the reason it was refused."""
        with self._lock:
            return self._apply(data)

    def _apply(self, data: bytes) -> str:
        if not data:
            return "empty"  # a cleared retained message: nothing to apply
        if self.operator_key is None:
            return "no-operator-key"
        try:
            update = decode_update(self.operator_key, data)
        except ProtocolError as exc:
            log.warning(
                "event=registry-update-refused reason=%s error=%s", exc.reason, esc(str(exc), 200)
            )
            return exc.reason
        outcome = self._check(update)
        if outcome is None:
            try:
                outcome = self._write(update)
            except OSError as exc:
                log.error(
                    "event=registry-update-failed version=%d error=%r", update.version, str(exc)
                )
                return "write-failed"
        level = logging.INFO if outcome in ACCEPTED else logging.WARNING
        log.log(
            level,
            "event=registry-update outcome=%s version=%d scope=%s held=%s",
            outcome,
            update.version,
            esc(update.scope),
            self.version,
        )
        return outcome

    def _check(self, update: RegistryUpdate) -> str | None:
        if update.scope not in (ALL_GATEWAYS, self.gw):
            return "wrong-gateway"
        if self.version is not None and update.version < self.version:
            return "stale"
        if self.version is not None and update.version == self.version:
            return "current"
        return None

    def _write(self, update: RegistryUpdate) -> str:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        names = {f"{device}.json" for device in update.entries}
        written = 0
        for device, body in sorted(update.entries.items()):
            path = self.directory / f"{device}.json"  # device ids hold no '/' (devid rule)
            if not _same(path, body):
                replace_file(path, body, sync_dir=False)
                written += 1
        gone = sorted(self._files - names)
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        fsync_dir(self.directory)
        self._save(update.version, names, self._named | set(update.entries))
        log.info(
            "event=registry-written version=%d entries=%d written=%d removed=%d",
            update.version,
            len(names),
            written,
            len(gone),
        )
        return "applied"
