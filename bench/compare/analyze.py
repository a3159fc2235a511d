"""Figures from the sources' ACK log and the consumer's arrival log (pure functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Key = tuple[int, int]


def read_acks(path: Path) -> dict[Key, float]:
    """(source, seq) -> time of its first acknowledgement to the sender."""
    acks: dict[Key, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                acks.setdefault((int(parts[0]), int(parts[1])), float(parts[2]))
    return acks


def read_latency(path: Path) -> list[tuple[float, float]]:
    """(time of the acknowledgement, seconds since the message was last sent)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((float(parts[0]), float(parts[1])))
    return out


def quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(1000 * v[min(len(v) - 1, int(q * len(v)))], 2)


def read_arrivals(path: Path) -> list[tuple[int, int, float, int]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                out.append((int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3])))
    return out


def figures(
    acks: dict[Key, float],
    arrivals: list[tuple[int, int, float, int]],
    ev: dict[str, Any],
    snaps: list[dict[str, float]],
    rss: list[tuple[float, float]],
    latency: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    first: dict[Key, float] = {}
    dup_system = dup_consumer_leg = reordered = 0
    high: dict[int, int] = {}
    reorder_by_src: dict[int, int] = {}
    for src, seq, t, dup in arrivals:
        k = (src, seq)
        if k in first:
            if dup:
                dup_consumer_leg += 1
            else:
                dup_system += 1
            continue
        first[k] = t
        if seq < high.get(src, 0):
            reordered += 1
            reorder_by_src[src] = reorder_by_src.get(src, 0) + 1
        high[src] = max(high.get(src, 0), seq)
    lost = sorted(k for k in acks if k not in first)
    t0, steady_end = ev["t0"], ev["steady_end"]
    up, down = ev["cloud_up"], ev["cloud_down"]

    def delivered_between(a: float, b: float) -> int:
        return sum(1 for t in first.values() if a <= t < b)

    # backlog: acknowledged before the cloud came back, delivered after it
    backlog = [k for k, t in acks.items() if t < up and k in first and first[k] >= down]
    drained_at = max((first[k] for k in backlog), default=up)
    after_up = sorted(t for t in first.values() if t >= up)
    first_after_up = after_up[0] if after_up else None
    drain_rate = None
    if first_after_up is not None and drained_at > first_after_up:
        drain_rate = delivered_between(first_after_up, drained_at + 1e-6) / (
            drained_at - first_after_up
        )
    unique = len(first)
    s0, s1, s2 = snaps
    steady_n = delivered_between(t0, steady_end)
    kills = []
    prev = ev.get("kill_phase", 0.0)
    for k in ev["kills"]:
        tk = k["t"]
        acked_before = [key for key, t in acks.items() if t < tk]
        pending = [key for key in acked_before if first.get(key, 1e18) >= tk]
        window = [key for key, t in acks.items() if prev <= t < tk]
        kills.append(
            {
                "t_since_kill_phase_s": round(tk - ev["kill_phase"], 3),
                "acked_before_kill": len(acked_before),
                "acked_not_yet_delivered_at_kill": len(pending),
                "acked_since_previous_kill": len(window),
                "of_those_never_delivered": sum(1 for key in window if key not in first),
            }
        )
        prev = tk
    outage_lost = sum(1 for k, t in acks.items() if down <= t < up and k not in first)
    steady_rss = [r for t, r in rss if t0 <= t < steady_end]
    steady_lat = [d for t, d in latency or [] if t0 <= t < steady_end]
    return {
        "acked": len(acks),
        "delivered_unique": unique,
        "acked_never_delivered": len(lost),
        "acked_never_delivered_sample": [list(k) for k in lost[:20]],
        "acked_never_delivered_during_outage": outage_lost,
        "delivered_not_acked": sum(1 for k in first if k not in acks),
        "duplicates_delivered": dup_system,
        "redeliveries_cloud_to_consumer": dup_consumer_leg,
        "reordered": reordered,
        "reordered_max_per_source": max(reorder_by_src.values(), default=0),
        "steady_records_per_s": round(steady_n / max(1e-9, steady_end - t0), 1),
        "backlog_records": len(backlog),
        "reconnect_after_cloud_up_s": round(first_after_up - up, 2) if first_after_up else None,
        "backlog_drain_s": round(drained_at - up, 2) if backlog else None,
        "drain_throughput_records_per_s": round(drain_rate, 1) if drain_rate else None,
        "cpu_s_per_1000_steady": round(1000 * (s1["cpu"] - s0["cpu"]) / max(1, steady_n), 3),
        "cpu_s_per_1000_whole_run": round(1000 * (s2["cpu"] - s0["cpu"]) / max(1, unique), 3),
        "cpu_s_total": round(s2["cpu"], 2),
        "disk_bytes_per_record_steady": round(
            (s1["write_bytes"] - s0["write_bytes"]) / max(1, steady_n), 1
        ),
        "disk_bytes_per_record_whole_run": round(s2["write_bytes"] / max(1, unique), 1),
        "disk_write_bytes_total": s2["write_bytes"],
        "rss_steady_mean_bytes": round(sum(steady_rss) / len(steady_rss)) if steady_rss else None,
        "rss_max_sampled_bytes": max((r for _, r in rss), default=None),
        "ack_latency_steady_ms": {
            "n": len(steady_lat),
            "p50": quantile_ms(steady_lat, 0.50),
            "p99": quantile_ms(steady_lat, 0.99),
            "max": quantile_ms(steady_lat, 1.0),
        },
        "kills": kills,
        "warmup_s": ev.get("info", {}).get("warmup_s"),
        "timeline_s": {k: round(v - t0, 2) for k, v in ev.items() if isinstance(v, float)},
    }


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:.0f} MiB"


def _n(v: object, unit: str = "") -> str:
    return "n/a" if v is None else f"{v}{unit}"


ROWS = [
    ("acknowledged to the sender, never delivered", lambda s: _n(s["acked_never_delivered"])),
    (
        "  of which acknowledged during the cloud outage",
        lambda s: _n(s["acked_never_delivered_during_outage"]),
    ),
    (
        "  of which lost to the 5 kills",
        lambda s: _n(sum(k["of_those_never_delivered"] for k in s["kills"])),
    ),
    ("acknowledged / delivered (unique)", lambda s: f"{s['acked']} / {s['delivered_unique']}"),
    ("duplicates delivered", lambda s: _n(s["duplicates_delivered"])),
    (
        "reordered (per source, total / worst source)",
        lambda s: f"{s['reordered']} / {s['reordered_max_per_source']}",
    ),
    ("steady throughput (offered 200/s)", lambda s: _n(s["steady_records_per_s"], " rec/s")),
    (
        "throughput draining the backlog (unconstrained)",
        lambda s: _n(s["drain_throughput_records_per_s"], " rec/s"),
    ),
    ("time to drain the 60 s backlog", lambda s: _n(s["backlog_drain_s"], " s")),
    (
        "  of which reconnect delay after the cloud is back",
        lambda s: _n(s["reconnect_after_cloud_up_s"], " s"),
    ),
    (
        "CPU s per 1,000 records (steady / whole run)",
        lambda s: f"{s['cpu_s_per_1000_steady']} / {s['cpu_s_per_1000_whole_run']}",
    ),
    (
        "disk bytes written per record (steady / whole run)",
        lambda s: (
            f"{s['disk_bytes_per_record_steady']:.0f} / {s['disk_bytes_per_record_whole_run']:.0f}"
        ),
    ),
    (
        "ACK latency to the sender, steady (p50 / p99)",
        lambda s: f"{s['ack_latency_steady_ms']['p50']} / {s['ack_latency_steady_ms']['p99']} ms",
    ),
    (
        "resident memory (steady mean / peak)",
        lambda s: f"{_mib(s['rss_steady_mean_bytes'])} / {_mib(s['peak_rss_bytes'])}",
    ),
]


def table(result: dict[str, Any]) -> str:
    systems = result["systems"]
    names = list(systems)
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, fn in ROWS:
        cells = []
        for n in names:
            try:
                cells.append(fn(systems[n]))
            except (KeyError, TypeError):
                cells.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Per kill (acknowledged before the kill / of those not yet delivered at the kill /"
        " acknowledged since the previous kill that were never delivered):"
    )
    lines.append("")
    lines.append("| kill | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for i in range(max((len(systems[n].get("kills", [])) for n in names), default=0)):
        cells = []
        for n in names:
            ks = systems[n].get("kills", [])
            if i < len(ks):
                k = ks[i]
                cells.append(
                    f"{k['acked_before_kill']} / {k['acked_not_yet_delivered_at_kill']}"
                    f" / {k['of_those_never_delivered']}"
                )
            else:
                cells.append("n/a")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(a: object, b: object) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 2)


GOALS: list[tuple[str, str, str, str, float, bool]] = [
    # (label, figure, against: system name or "verify", bound, True if "at most")
    ("disk bytes/record, steady", "disk_bytes_per_record_steady", "tb", "x tb", 0.5, True),
    ("CPU/record, whole run", "cpu_s_per_1000_whole_run", "verify", "x raw verify", 3.0, True),
    ("CPU/record, whole run", "cpu_s_per_1000_whole_run", "tb", "x tb", 0.3, True),
    ("backlog drain rate", "drain_throughput_records_per_s", "bridge", "x bridge", 0.6, False),
    ("resident memory, steady", "rss_steady_mean_bytes", "tb", "x tb", 0.6, True),
]


def goals(result: dict[str, Any]) -> str:
    """citysense's figures as ratios to the peers and the raw verify cost of the same run,
    against issue 17's goals."""
    systems = result["systems"]
    cs = systems.get("citysense")
    if cs is None:
        return ""
    lines = [
        "| goal (issue 17) | citysense | against | ratio | bound | met |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, peer, unit, bound, at_most in GOALS:
        if peer == "verify":
            ref = result.get("verify_cpu_s_per_1000")
        else:
            ref = systems.get(peer, {}).get(key)
        r = _ratio(cs.get(key), ref)
        met = "n/a" if r is None else ("yes" if (r <= bound if at_most else r >= bound) else "NO")
        op = "<=" if at_most else ">="
        mine, theirs = cs.get(key), ref
        if key.startswith("rss"):
            mine, theirs = _mib(mine), _mib(theirs)  # type: ignore[arg-type]
        lines.append(f"| {label} | {mine} | {theirs} | {r} {unit} | {op} {bound} | {met} |")
    p99 = (cs.get("ack_latency_steady_ms") or {}).get("p99")
    met = "n/a" if p99 is None else ("yes" if p99 <= 50 else "NO")
    lines.append(f"| ACK latency p99, steady 200/s | {p99} ms | - | - | <= 50 ms | {met} |")
    return "\n".join(lines)
