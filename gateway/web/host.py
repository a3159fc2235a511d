"""Facts about the gateway host for the status page: bytes written per day, the version.
(Whether the clock is synchronised comes from gateway/clock.py.)"""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path

DAYS = 7


def version() -> str:
    try:
        return metadata.version("citysense")
    except metadata.PackageNotFoundError:
        return "unknown"


class DiskWrites:
    """Bytes this process made the kernel write to storage, per UTC day (the SD card's
    wear): /proc/self/io write_bytes minus cancelled_write_bytes, sampled by the caller."""

    def __init__(self, io_file: Path = Path("/proc/self/io")) -> None:
        self.io_file = io_file
        self.days: dict[str, int] = {}
        self.total = 0  # since the agent started (citysense_disk_written_bytes_total)
        self.started = time.monotonic()
        self.last = self._read()

    def _read(self) -> int | None:
        try:
            fields = dict(
                line.split(":", 1) for line in self.io_file.read_text().splitlines() if ":" in line
            )
            return int(fields["write_bytes"]) - int(fields.get("cancelled_write_bytes", 0))
        except (OSError, KeyError, ValueError):
            return None

    def sample(self) -> dict[str, int]:
        now = self._read()
        day = time.strftime("%Y-%m-%d", time.gmtime())
        self.days.setdefault(day, 0)
        if now is not None and self.last is not None and now >= self.last:
            self.days[day] += now - self.last
            self.total += now - self.last
        self.last = now
        for old in sorted(self.days)[:-DAYS]:
            del self.days[old]
        return dict(self.days)


def wear(total: int, seconds: float, endurance: int) -> dict[str, float | int | None]:
    """Bytes written per day at the rate measured since start, and the share of the
    storage's rated endurance that a year at that rate uses (1.0 = worn out in a year)."""
    if seconds < 60:
        return {"per_day": None, "endurance_bytes": endurance, "share_per_year": None}
    per_day = total / seconds * 86400
    return {
        "per_day": round(per_day),
        "endurance_bytes": endurance,
        "share_per_year": round(per_day * 365 / endurance, 6),
    }
