"""Enroll a node: key generated ON the device, config written, registry entry saved.

Order (nothing is lost if the cable is pulled at any step): the new seed goes to
/config/device.key.new on the device (the old key stays intact), then the registry entry
is written atomically, then the device renames the new seed over the old one. A re-run
finds a pending seed whose public key the registry already has and completes the rename.

The seq floor. Consumers dedupe by (device_id, seq) and the gateway refuses a seq below
the highest it stored for the id (NACK `replay`, and the node then drops the record), so
a board that replaces another under the same id must not start its seqs again at 1.
Before the registry entry is written, enrollment raises the node's seq reservation
limit (/state/seq, where the node continues on boot) to the Unix time in milliseconds,
never lowering it. The predecessor, enrolled the same way at an earlier time T0, can
only have gone past that floor by creating more than 1000 records per second on average
since T0 (a sensor node makes about one a minute), so the replacement's seqs continue
above every seq its id has used. The floor comes from this computer's clock: a clock
before 2025 or behind the time the registry entry records is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citysense_formats import node_config

from . import registry
from .deploy import device_firmware_hash
from .device import (
    CONFIG_PATH,
    KEY_NEW_PATH,
    KEY_PATH,
    OPERATOR_PATH,
    RELEASE_PATH,
    SEQ_PATH,
    Device,
    Progress,
)
from .errors import DeviceError, ProvisionError, RegistryError

MIN_CLOCK_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: a clock before it is wrong
BAUDS = node_config.BAUDS
# option -> (the node_config field, its limits table)
_OPTION_LIMITS = {
    "--link-uart": ("uart", node_config.LINK_LIMITS),
    "--tx": ("tx", node_config.LINK_LIMITS),
    "--rx": ("rx", node_config.LINK_LIMITS),
    "--interval": ("interval_s", node_config.LIMITS),
    "--batch": ("batch", node_config.LIMITS),
}


@dataclass
class EnrollOptions:
    registry: Path
    device_id: str | None = None
    operator_pub: bytes | None = None
    release_pub: bytes | None = None
    interval_s: int | None = None
    batch: int | None = None
    link: dict[str, int | None] = field(default_factory=dict)
    sensors: list[str] | None = None
    replace: bool = False
    new_key: bool = False
    drop_pending: bool = False


def _check_range(name: str, value: int) -> int:
    field, limits = _OPTION_LIMITS[name]
    low, high = limits[field]
    if not low <= value <= high:
        raise ProvisionError(f"{name} {value} is out of range, use {low}..{high}")
    return value


def build_config(device_id: str, old: dict[str, Any] | None, opts: EnrollOptions) -> dict[str, Any]:
    """device.json: explicit options, else what the device had, else the defaults."""
    base = node_config.defaults()
    if old:
        base.update({k: old[k] for k in node_config.DEFAULTS if k in old})
    link = dict(node_config.DEFAULTS["link"])
    if isinstance(base.get("link"), dict):
        link.update({k: v for k, v in base["link"].items() if k in link and isinstance(v, int)})
    link.update({k: v for k, v in opts.link.items() if v is not None})
    _check_range("--link-uart", link["uart"])
    _check_range("--tx", link["tx"])
    _check_range("--rx", link["rx"])
    if link["baud"] not in BAUDS:
        raise ProvisionError(f"--baud {link['baud']} is not a standard rate, use one of {BAUDS}")
    interval = opts.interval_s if opts.interval_s is not None else int(base["interval_s"])
    batch = opts.batch if opts.batch is not None else int(base["batch"])
    sensors = opts.sensors if opts.sensors is not None else list(base["sensors"])
    return {
        "device_id": device_id,
        "interval_s": _check_range("--interval", interval),
        "batch": _check_range("--batch", batch),
        "link": link,
        "sensors": sensors,
    }


def _config_bytes(config: dict[str, Any]) -> bytes:
    """device.json as the node will accept it (node_config), or a one-line refusal."""
    try:
        return node_config.encode(config)
    except node_config.NodeConfigError as exc:
        raise ProvisionError(
            f"the node would refuse this configuration ({exc}), fix the options"
        ) from exc


def read_device_config(device: Device) -> dict[str, Any] | None:
    text = device.read_text(CONFIG_PATH)
    if text is None:
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError:
        return None
    return cfg if isinstance(cfg, dict) else None


def default_device_id(device: Device) -> str:
    try:
        uid = device.unique_id()
    except DeviceError as exc:
        raise ProvisionError(
            f"cannot read the node's unique id ({exc.exc_line}), pass --device-id"
        ) from exc
    return f"esp32-{uid.lower()}"


def unix_ms() -> int:
    """This computer's clock, Unix time in milliseconds (the seq floor)."""
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_times(entry: registry.Entry | None) -> list[tuple[int, str]]:
    """(Unix ms, "field value") of every timestamp the registry entry records."""
    if entry is None:
        return []
    stamps: list[tuple[str, object]] = []
    for item in [entry, *(entry.get("previous_keys") or [])]:
        if isinstance(item, dict):
            stamps += [(k, item.get(k)) for k in ("enrolled_at", "revoked_at")]
    out: list[tuple[int, str]] = []
    for name, value in stamps:
        if not isinstance(value, str):
            continue
        try:
            when = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        out.append((int(when.timestamp() * 1000), f"{name} {value}"))
    return out


def seq_floor(now_ms: int, device_id: str, old: registry.Entry | None) -> int:
    """The seq floor for an enrollment at `now_ms`: now_ms itself, once the clock is
    plausible (not before 2025, not behind any time the id's registry entry records)."""
    if now_ms < MIN_CLOCK_MS:
        raise ProvisionError(
            f"this computer's clock says {_iso(now_ms)}, before 2025: set the date and time"
            " (NTP) and re-run; the node's seq floor is taken from this clock"
        )
    for when, what in _entry_times(old):
        if now_ms < when:
            raise ProvisionError(
                f"this computer's clock ({_iso(now_ms)}) is behind the registry entry of"
                f" {device_id} ({what}): set the date and time (NTP) and re-run; the node's"
                " seq floor is taken from this clock"
            )
    return now_ms


def _conflict(device_id: str, old: registry.Entry) -> RegistryError:
    fp = registry.fingerprint(old["public_key"])[:16]
    if old["status"] == "revoked":
        return RegistryError(
            f"device {device_id} is revoked in the registry (key {fp}), re-run with --replace"
            " to enroll a new key under this id"
        )
    return RegistryError(
        f"device {device_id} is already enrolled with a different key (key {fp}), re-run"
        " with --replace if this node replaces it (the old key is revoked)"
    )


def pending_before_rekey(
    device: Device, device_id: str, drop: bool, drainable: bool, progress: Progress
) -> tuple[int, int | None]:
    """The records in the node's buffer when it gets a new key: (pending, dropped).

    They are signed with the key being replaced, which the gateway stops trusting once
    the registry has the new one: it would NACK them `bad-signature`, the node would keep
    and resend them, and every newer record would wait behind them. So a new key needs
    an empty buffer: drained through the gateway while the old key is still valid, or
    dropped here (`--drop-pending`), counted in the node's sys/dropped. `drainable`:
    the node's key is the id's active registry key (else the gateway refuses them now).
    """
    pending = device.pending_records()
    progress(f"{pending} records pending in the node's buffer")
    if not pending:
        return 0, None
    if not drop and not drainable:
        raise ProvisionError(
            f"{device_id} has {pending} records in its buffer signed with a key that is not"
            " its active key in the registry, so its gateway refuses them and newer records"
            " would wait behind them: re-run with --drop-pending to drop them (counted in"
            " sys/dropped)"
        )
    if not drop:
        raise ProvisionError(
            f"{device_id} has {pending} records in its buffer signed with the key a new key"
            " replaces (the gateway would refuse them and newer records would wait behind"
            " them): re-run with --drop-pending to drop them (counted in sys/dropped), or"
            " let it drain: connect it to its gateway until its records are acknowledged,"
            " then enroll again"
        )
    dropped, counter = device.drop_pending()
    progress(f"dropped {dropped} records; the node's sys/dropped is now {counter}")
    return pending, dropped


def _key_fingerprint(key_hex: str | None) -> str | None:
    return registry.fingerprint(key_hex) if key_hex and len(key_hex) == 64 else None


def check_signing_keys(device: Device, device_id: str, opts: EnrollOptions) -> None:
    """The node needs an operator key (else it refuses every COMMAND), and its release key
    (optional: without one it refuses every update) must not be the operator key: a
    leaked command key must not also install firmware."""
    operator = opts.operator_pub.hex() if opts.operator_pub else device.read_hex(OPERATOR_PATH)
    if operator is None:
        raise ProvisionError(
            f"{device_id} has no operator key, pass --operator-pub OPERATOR.pub"
            " (create one with citysense-provision operator-key init)"
        )
    release = opts.release_pub.hex() if opts.release_pub else device.read_hex(RELEASE_PATH)
    if release is not None and release == operator:
        raise ProvisionError(
            "the release key and the operator key are the same key, they must be separate:"
            " pass the release .pub to --release-pub (create one with"
            " citysense-provision release-key --out FILE)"
        )


def enroll(device: Device, opts: EnrollOptions, progress: Progress) -> dict[str, Any]:
    reg = registry.require_dir(opts.registry, create=True)
    if not os.access(reg, os.W_OK):
        raise RegistryError(f"registry directory {reg} is not writable, check --registry")
    device_id = registry.check_device_id(opts.device_id or default_device_id(device))
    old = registry.load(reg, device_id)
    progress(f"enrolling {device_id}")
    current = device.public_key_of(KEY_PATH)
    pending = device.public_key_of(KEY_NEW_PATH)
    if pending is not None and old is not None and pending == old["public_key"]:
        progress("completing an interrupted enrollment")
        device.rename(KEY_NEW_PATH, KEY_PATH)
        current, pending = pending, None
    if pending is not None:
        device.remove(KEY_NEW_PATH)
    keep = (
        old is not None
        and current == old["public_key"]
        and old["status"] == "active"
        and not opts.new_key
    )
    if old is not None and not keep and not opts.replace:
        raise _conflict(device_id, old)
    floor = seq_floor(unix_ms(), device_id, old)
    if device.firmware_seq_bits() < 64:
        raise ProvisionError(
            "the citysense firmware on the node stores seqs in 32 bits, too few for the seq"
            " floor: run citysense-provision deploy first, then enroll again"
        )
    check_signing_keys(device, device_id, opts)
    buffered: int | None = None  # not looked at when the key stays: its records verify
    dropped: int | None = None
    if keep:
        public_key = str(current)
    else:
        drainable = old is not None and old["status"] == "active" and current == old["public_key"]
        buffered, dropped = pending_before_rekey(
            device, device_id, opts.drop_pending, drainable, progress
        )
        progress("generating the device key on the device")
        public_key = device.generate_key(KEY_NEW_PATH)
    progress("writing the configuration")
    previous = read_device_config(device)
    previous_id = previous.get("device_id") if previous else None
    config = build_config(device_id, previous, opts)
    device.put(CONFIG_PATH, _config_bytes(config))
    if opts.operator_pub is not None:
        device.put(OPERATOR_PATH, opts.operator_pub)
    if opts.release_pub is not None:
        device.put(RELEASE_PATH, opts.release_pub)
    # before the registry makes the key valid: the node never signs a seq below the floor
    progress(f"writing the seq floor {floor} to {SEQ_PATH}")
    seq_before, seq_state = device.raise_seq_floor(floor)
    if seq_state > floor:
        progress(f"the node's seq state {seq_state} is above the floor: kept")
    operator = device.read_hex(OPERATOR_PATH)
    release = device.read_hex(RELEASE_PATH)
    firmware = device_firmware_hash(device)
    if old is None:
        entry = registry.new_entry(device_id, public_key, firmware, floor)
    elif keep:
        entry = dict(old, firmware_sha256=firmware)
    else:
        entry = registry.replaced(old, public_key, firmware, floor)
    path = registry.save(reg, entry)
    if not keep:
        device.rename(KEY_NEW_PATH, KEY_PATH)
    if device.public_key_of(KEY_PATH) != public_key:
        raise DeviceError(
            f"the key on {device_id} does not match the registry after enrolling,"
            " re-run enroll with --replace"
        )
    return {
        "device_id": device_id,
        "public_key": public_key,
        "key_fingerprint": registry.fingerprint(public_key),
        "key": "kept" if keep else "new",
        "replaced_key_fingerprint": (
            registry.fingerprint(old["public_key"]) if old is not None and not keep else None
        ),
        "registry_file": str(path),
        "firmware_sha256": firmware,
        "operator_key_fingerprint": _key_fingerprint(operator),
        "release_key_fingerprint": _key_fingerprint(release),
        "config": config,
        "target": "emulator" if device.is_emulator else "esp32",
        "previous_device_id": previous_id if previous_id != device_id else None,
        "seq_floor": floor,
        "seq_state_before": seq_before,
        "seq_state": seq_state,
        "pending_records": buffered,
        "pending_dropped": dropped,
    }


def verify(
    device: Device, reg: Path, operator_pub: bytes | None, release_pub: bytes | None = None
) -> dict[str, Any]:
    """Compare what the device holds with the registry; `problems` empty = all good."""
    problems: list[str] = []
    config = read_device_config(device)
    device_id = config.get("device_id") if config else None
    if not isinstance(device_id, str):
        problems.append(f"{CONFIG_PATH} is missing or invalid on the device")
    public_key = device.public_key_of(KEY_PATH)
    if public_key is None:
        problems.append(f"{KEY_PATH} is missing on the device")
    entry = registry.load(registry.require_dir(reg), device_id) if device_id else None
    if device_id and entry is None:
        problems.append(f"device {device_id} is not in the registry")
    if entry is not None:
        if entry["status"] != "active":
            problems.append(f"device {device_id} is revoked in the registry")
        if public_key is not None and entry["public_key"] != public_key:
            problems.append("the device's key does not match the registry")
    operator = device.read_hex(OPERATOR_PATH)
    if operator is None:
        problems.append(f"{OPERATOR_PATH} is missing: the node will refuse every COMMAND")
    elif operator_pub is not None and operator != operator_pub.hex():
        problems.append("the device's operator key differs from --operator-pub")
    release = device.read_hex(RELEASE_PATH)
    if release_pub is not None and release != release_pub.hex():
        what = "is missing" if release is None else "differs from --release-pub"
        problems.append(f"the device's release key {what}: it would refuse that release's updates")
    firmware = device_firmware_hash(device)
    return {
        "ok": not problems,
        "release_key_fingerprint": _key_fingerprint(release),
        "problems": problems,
        "device_id": device_id,
        "public_key": public_key,
        "key_fingerprint": registry.fingerprint(public_key) if public_key else None,
        "registry_status": entry["status"] if entry else None,
        "firmware_sha256": firmware,
        "firmware_matches_enrollment": bool(entry and entry.get("firmware_sha256") == firmware),
        "config": config,
    }
