"""The node's configuration file `config/device.json` (written by `citysense-provision
enroll`, read once per boot by firmware/lib/citysense/config.py).

The node refuses (HELLO problem `config-invalid`) a file that breaks NODE_RULES, and one
larger than MAX_BYTES (`config-corrupt`); a key it does not know is ignored, a key left
out takes its value from DEFAULTS. Enrollment also holds the link to the ESP32's
hardware (LINK_LIMITS, BAUDS), which the node itself checks only as integers >= 0.
`set_interval` / `set_batch` COMMANDs take the same LIMITS.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from . import devid

MAX_BYTES = 2048  # the node reads no bigger file (firmware config._read)
DEFAULTS: dict[str, Any] = {
    "interval_s": 60,
    "batch": 5,
    "link": {"uart": 1, "tx": 17, "rx": 16, "baud": 115200},
    "sensors": ["bme280", "battery"],
}
# field -> (lowest, highest) accepted, both included
LIMITS: dict[str, tuple[int, int]] = {"interval_s": (1, 86400), "batch": (1, 64)}
LINK_LIMITS: dict[str, tuple[int, int]] = {"uart": (1, 2), "tx": (0, 39), "rx": (0, 39)}
BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class NodeConfigError(ValueError):
    """A value the node (or its board) would refuse; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def defaults() -> dict[str, Any]:
    """A fresh copy of DEFAULTS (nested dicts and lists included)."""
    return copy.deepcopy(DEFAULTS)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_limit(field: str, value: object, limits: dict[str, tuple[int, int]] = LIMITS) -> int:
    low, high = limits[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise NodeConfigError(field, f"{value!r} is out of range, use {low}..{high}")
    return value


def check_link(link: object) -> dict[str, int]:
    if not isinstance(link, dict) or set(link) != set(DEFAULTS["link"]):
        raise NodeConfigError("link", f"expected an object with {sorted(DEFAULTS['link'])}")
    for field in LINK_LIMITS:
        check_limit(field, link[field], LINK_LIMITS)
    if link["baud"] not in BAUDS or not _int(link["baud"]):
        raise NodeConfigError("baud", f"{link['baud']!r} is not a standard rate, use {BAUDS}")
    return link


def validate(cfg: object) -> dict[str, Any]:
    """A complete device.json object as enrollment writes it; NodeConfigError otherwise."""
    if not isinstance(cfg, dict):
        raise NodeConfigError("config", "expected a JSON object")
    missing = sorted({"device_id", *DEFAULTS} - set(cfg))
    if missing:
        raise NodeConfigError(missing[0], "missing")
    try:
        devid.check(cfg["device_id"])
    except devid.DeviceIdError as exc:
        raise NodeConfigError("device_id", str(exc)) from None
    for field in LIMITS:
        check_limit(field, cfg[field])
    check_link(cfg["link"])
    sensors = cfg["sensors"]
    if not isinstance(sensors, list) or not all(isinstance(s, str) and s for s in sensors):
        raise NodeConfigError("sensors", "expected a list of sensor names")
    return cfg


def encode(cfg: dict[str, Any]) -> bytes:
    """device.json's bytes (validated, at most MAX_BYTES: the node reads no more)."""
    data = (json.dumps(validate(cfg)) + "\n").encode()
    if len(data) > MAX_BYTES:
        raise NodeConfigError("config", f"{len(data)} bytes, the node reads at most {MAX_BYTES}")
    return data
