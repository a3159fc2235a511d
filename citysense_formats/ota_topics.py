"""Where firmware bundles travel over MQTT, and the gateway's report on each one.

| topic | who writes | retained | payload |
|---|---|---|---|
| `citysense/v1/ota` | operator (`release publish --all`) | yes | a bundle file (`*.csb`) |
| `citysense/v1/<gw>/ota` | operator (`release publish --gateway GW`) | yes | a bundle file |
| `citysense/v1/<gw>/ota-report` | gateway GW | no | the JSON report below |

They mirror the registry's topics (`citysense/v1/registry`, `citysense/v1/<gw>/registry`):
one level after the gateway id, so they never meet a device's topics (two levels). Retained,
so a gateway that was offline gets the latest bundle when it connects; the cache stores a
bundle once (by id) however often it arrives. An empty retained message clears a topic and
is ignored by the gateway.

The report, one JSON object per bundle received (not retained: `release publish` subscribes
before it publishes):
`{"gateway": GW, "bundle": ID or null, "version": V or null, "seq": N or null,
"status": "accepted" | "refused", "reason": R or null, "detail": TEXT}` where `reason` is a
`citysense_formats.bundle.BundleError.reason` ("bad-signature", "hash-mismatch", ...) or
"no-release-key" / "write-failed", and `bundle` is null only when the bytes have no
readable manifest. The gateway holds no signing key: the report is unsigned, the
operator's evidence that a gateway has a bundle, not the node's outcome (that comes signed
in the node's records, `sys/ota`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Final

ALL: Final = "citysense/v1/ota"
MAX_REPORT: Final = 2048
STATUSES: Final = ("accepted", "refused")


def bundle_topic(gateway_id: str | None) -> str:
    """The bundle topic of one gateway, or of every gateway (None)."""
    return ALL if gateway_id is None else f"citysense/v1/{gateway_id}/ota"


def report_topic(gateway_id: str) -> str:
    return f"citysense/v1/{gateway_id}/ota-report"


@dataclass(frozen=True, slots=True)
class Report:
    gateway: str
    bundle: str | None
    version: str | None
    seq: int | None
    status: str
    reason: str | None
    detail: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()


def _opt(obj: dict[str, Any], key: str, kind: type) -> Any:
    v = obj.get(key)
    if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
        raise ValueError(f"report field {key!r} has the wrong type")
    return v


def decode_report(data: bytes) -> Report:
    """A gateway's report; ValueError (one line) for anything else."""
    if len(data) > MAX_REPORT:
        raise ValueError(f"report larger than {MAX_REPORT} bytes")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError("report is not JSON") from exc
    if not isinstance(obj, dict) or obj.get("status") not in STATUSES:
        raise ValueError("report has no status accepted/refused")
    gateway, detail = obj.get("gateway"), obj.get("detail", "")
    if not isinstance(gateway, str) or not isinstance(detail, str):
        raise ValueError("report gateway/detail must be text")
    return Report(
        gateway,
        _opt(obj, "bundle", str),
        _opt(obj, "version", str),
        _opt(obj, "seq", int),
        obj["status"],
        _opt(obj, "reason", str),
        detail,
    )
