"""The status page's data: a whitelist of the agent's snapshot, with ages and node states.

Only fields named here reach the browser, so nothing the snapshot may one day carry (a
path to a key, a URL with a password) is shown by accident.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

QUIET_INTERVALS = 2.0
"""A node is "quiet" once it has been silent for this many of its record intervals."""
QUIET_UNLEARNT_S = 120.0
"""Until its interval is learnt (two gaps), a node is "quiet" after this many seconds."""

NODE_FIELDS = (
    "port",
    "firmware",
    "boot",
    "seq",
    "reset",
    "link_errors",
    "dropped",
    "battery_v",
    "heap_free",
    "uptime_s",
    "interval_s",
    "ota_note",
)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _age(now: float, at: Any) -> float | None:
    t = _num(at)
    return None if t is None or t <= 0 else round(max(0.0, now - t), 1)


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in sorted(value.items()) if _num(v) is not None}


def broker(url: Any) -> str:
    """scheme://host:port of the uplink URL, never its user or password."""
    if not isinstance(url, str):
        return ""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}" if parts.scheme else ""


def node_state(age: float | None, interval: float | None) -> str:
    if age is None:
        return "quiet"
    limit = QUIET_UNLEARNT_S if interval is None else QUIET_INTERVALS * interval
    return "quiet" if age > limit else "ok"


def transfer(value: Any) -> dict[str, Any] | None:
    """A firmware transfer under way: bundle id (16 hex), offset and size, or None."""
    if not isinstance(value, dict):
        return None
    bundle, offset, size = value.get("bundle"), _num(value.get("offset")), _num(value.get("size"))
    if not isinstance(bundle, str) or offset is None or size is None or size <= 0:
        return None
    return {"bundle": bundle[:16], "offset": int(offset), "size": int(size)}


def update_state(n: dict[str, Any]) -> str:
    """One line for the page: a transfer going on, a trial, or the last update outcome."""
    t = n["transfer"]
    if t is not None:
        pct = min(100, 100 * t["offset"] // t["size"])
        return f"fetching {t['bundle'][:8]} {pct} %"
    if n["trial"] is True:
        return "on trial"
    note = n["ota_note"]
    return note if isinstance(note, str) else ""


def node(device_id: str, d: dict[str, Any], now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"id": device_id}
    for key in NODE_FIELDS:
        value = d.get(key)
        out[key] = value if isinstance(value, str | int | float) or value is None else None
    out["last_seen_age_s"] = _age(now, d.get("last_seen"))
    out["last_record_age_s"] = _age(now, d.get("last_record_at"))
    per_minute = d.get("per_minute")
    out["per_minute"] = [int(n) for n in per_minute] if isinstance(per_minute, list) else []
    out["records_hour"] = sum(out["per_minute"])
    out["rejects"] = _counts(d.get("rejects"))
    out["state"] = node_state(out["last_seen_age_s"], _num(d.get("interval_s")))
    out["trial"] = d.get("trial") if isinstance(d.get("trial"), bool) else None
    out["transfer"] = transfer(d.get("transfer"))
    out["update"] = update_state(out)
    return out


def build(snap: dict[str, Any], now: float) -> dict[str, Any]:
    uplink = snap.get("uplink") or {}
    queue = snap.get("queue") or {}
    counters = snap.get("counters") or {}
    writes = snap.get("disk_writes") or {}
    devices = snap.get("devices") or {}
    refused = counters.get("publish_refused", {})
    return {
        "now": now,
        "gateway": {
            "id": snap.get("gateway_id"),
            "version": snap.get("version"),
            "uptime_s": _age(now, snap.get("started_at")),
            "clock_synchronised": snap.get("clock_synchronised"),
            "ports": [str(p) for p in snap.get("ports") or []],
            "accepted": snap.get("accepted"),
            "duplicates": counters.get("duplicates"),
            "rejects": _counts(snap.get("rejects")),
            "frame_errors": _counts(snap.get("frame_errors")),
            "registry_devices": (snap.get("registry") or {}).get("devices"),
        },
        "uplink": {
            "state": uplink.get("state"),
            "protocol": uplink.get("protocol"),
            "broker": broker(uplink.get("url")),
            "last_error": uplink.get("last_error"),
            "published": uplink.get("published"),
            "publish_errors": counters.get("publish_errors"),
            "refused": _counts(refused) if isinstance(refused, dict) else {"all": refused},
        },
        "queue": {
            "depth": queue.get("depth"),
            "bytes": queue.get("bytes"),
            "max_bytes": queue.get("max_bytes"),
            "oldest_age_s": _num(queue.get("oldest_age_s")),
            "moved_aside": bool(queue.get("moved_aside")),
        },
        "disk_writes": [{"day": k, "bytes": int(v)} for k, v in sorted(writes.items())],
        "nodes": [node(str(k), v, now) for k, v in sorted(devices.items()) if isinstance(v, dict)],
    }
