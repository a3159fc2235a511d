"""The completeness ledger (`citysense-cloud report`) and the readings (`export`).

Per device: `records` = distinct (device, seq) stored; `ranges` = the seqs received as
[first, last] runs; `gaps` = the seqs between the first and the last received that never
arrived (legal: a node skips seqs after a reset, but shown); `duplicates` = deliveries of
an already stored (device, seq), suppressed; `rejected` = refused deliveries by reason;
`last_seen` = the gateway's receive time of the newest delivery (Unix s). The top-level
`rejected` adds up every refusal, including those no device could be named for.
Balance: deliveries handed to the ingest = records + duplicates + all rejected.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from .config import CloudConfig
from .errors import UsageError
from .store import Store, open_store

_GAPS = (
    "SELECT device_id, prev + 1, seq - 1 FROM (SELECT device_id, seq, LAG(seq) OVER"
    " (PARTITION BY device_id ORDER BY seq) AS prev FROM records{where}) t"
    " WHERE seq > prev + 1 ORDER BY device_id, seq"
)
_BOUNDS = "SELECT device_id, MIN(seq), MAX(seq) FROM records{where} GROUP BY device_id"
_LEDGER = "SELECT device_id, records, duplicates, last_seen FROM ledger{where}"
_REJECTED = "SELECT device_id, reason, n FROM rejections{where}"
_EXPORT_COLUMNS = (
    "time",
    "device_id",
    "seq",
    "idx",
    "name",
    "unit",
    "value",
    "string",
    "bool",
    "sum",
    "boot_time",
    "gateway_id",
)
_EXPORT = (
    "SELECT r.time, r.device_id, r.seq, r.idx, r.name, r.unit, r.value, r.string, r.bool,"
    " r.sum, r.boot_time, c.gateway_id FROM readings r JOIN records c"
    " ON c.device_id = r.device_id AND c.seq = r.seq"
    " WHERE r.device_id = %s AND r.time >= %s AND r.time < %s ORDER BY r.time, r.seq, r.idx"
)


def _device_entry() -> dict[str, Any]:
    return {"records": 0, "duplicates": 0, "gaps": [], "ranges": [], "rejected": {}}


def ledger(store: Store, device: str | None = None) -> dict[str, Any]:
    """The report as a dict in the shape `report --json` prints."""
    where, params = ("", ()) if device is None else (" WHERE device_id = %s", (device,))
    devices: dict[str, dict[str, Any]] = {}
    for dev, records, dups, last_seen in store.query(_LEDGER.format(where=where), params):
        e = devices.setdefault(dev, _device_entry())
        e.update(records=int(records), duplicates=int(dups))
        e["last_seen"] = None if last_seen is None else int(last_seen)
    bounds = {
        d: (int(lo), int(hi)) for d, lo, hi in store.query(_BOUNDS.format(where=where), params)
    }
    for dev, first, last in store.query(_GAPS.format(where=where), params):
        devices.setdefault(dev, _device_entry())["gaps"].append([int(first), int(last)])
    total: dict[str, int] = {}
    for dev, reason, n in store.query(_REJECTED.format(where=where), params):
        total[reason] = total.get(reason, 0) + int(n)
        if dev:
            e = devices.setdefault(dev, _device_entry())
            e["rejected"][reason] = e["rejected"].get(reason, 0) + int(n)
    for dev, e in devices.items():
        e.setdefault("last_seen", None)
        if dev in bounds:
            e["ranges"] = _ranges(bounds[dev], e["gaps"])
    return {"devices": dict(sorted(devices.items())), "rejected": dict(sorted(total.items()))}


def _ranges(bounds: tuple[int, int], gaps: list[list[int]]) -> list[list[int]]:
    out, start = [], bounds[0]
    for first, last in gaps:
        out.append([start, first - 1])
        start = last + 1
    out.append([start, bounds[1]])
    return out


def _spans(spans: list[list[int]]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "-"


def print_text(report: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"{'device':<24} {'records':>8} {'dups':>6} {'refused':>8}  last seen (UTC)       gaps\n"
    )
    for dev, e in report["devices"].items():
        seen = e["last_seen"]
        when = (
            "-" if seen is None else datetime.fromtimestamp(seen, UTC).strftime("%Y-%m-%d %H:%M:%S")
        )
        refused = sum(e["rejected"].values())
        out.write(
            f"{dev:<24} {e['records']:>8} {e['duplicates']:>6} {refused:>8}  {when:<20}  "
            f"{_spans(e['gaps'])}\n"
        )
    reasons = ", ".join(f"{k}={v}" for k, v in report["rejected"].items()) or "none"
    out.write(f"refused by reason: {reasons}\n")


def cmd_report(args: argparse.Namespace, cfg: CloudConfig) -> int:
    store = open_store(cfg.need_database(), cfg.path.parent if cfg.path else None)
    try:
        report = ledger(store, args.device)
    finally:
        store.close()
    if args.json:
        json.dump(report, sys.stdout, indent=2 if sys.stdout.isatty() else None)
        sys.stdout.write("\n")
    else:
        print_text(report, sys.stdout)
    return 0


def parse_time(text: str, what: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC if it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(
            f"{what} {text[:40]!r}: expected Unix seconds or an ISO 8601 time"
        ) from exc
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def export_rows(store: Store, device: str, since: float, until: float) -> Iterator[dict[str, Any]]:
    for row in store.query(_EXPORT, (device, since, until)):
        item = dict(zip(_EXPORT_COLUMNS, row, strict=True))
        if item["bool"] is not None:
            item["bool"] = bool(item["bool"])
        yield item


def cmd_export(args: argparse.Namespace, cfg: CloudConfig) -> int:
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until") if args.until else 1e300
    if until <= since:
        raise UsageError("--until must be after --since")
    store = open_store(cfg.need_database(), cfg.path.parent if cfg.path else None)
    try:
        rows = export_rows(store, args.device, since, until)
        if args.format == "jsonl":
            for item in rows:
                sys.stdout.write(json.dumps(item, separators=(",", ":")) + "\n")
        else:
            w = csv.DictWriter(sys.stdout, fieldnames=_EXPORT_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    finally:
        store.close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="the completeness ledger per device")
    p.add_argument("--device", help="only this device")
    p.add_argument("--json", action="store_true", help="machine-readable (docs/cloud.md)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="a device's readings in a time range")
    p.add_argument("--device", required=True)
    p.add_argument("--since", required=True, help="Unix seconds or ISO 8601 (inclusive)")
    p.add_argument("--until", help="Unix seconds or ISO 8601 (exclusive; default: no end)")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.set_defaults(func=cmd_export)
