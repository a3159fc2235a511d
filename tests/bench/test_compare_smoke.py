"""Keeps bench/compare/compare.py working: the ~20 s smoke run completes for every system
and writes well-formed figures. It asserts no performance numbers (see docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

SCRIPT = REPO / "bench" / "compare" / "compare.py"
SYSTEMS = ("citysense", "bridge", "tb")
COUNTS = (
    "acked",
    "delivered_unique",
    "acked_never_delivered",
    "duplicates_delivered",
    "reordered",
    "backlog_records",
)
NUMBERS = (
    "steady_records_per_s",
    "cpu_s_per_1000_steady",
    "cpu_s_per_1000_whole_run",
    "disk_bytes_per_record_whole_run",
    "peak_rss_bytes",
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    setup = subprocess.run(
        [sys.executable, str(SCRIPT), "--setup-only"], capture_output=True, text=True, timeout=600
    )
    if setup.returncode != 0:
        pytest.skip(f"peers could not be installed here: {setup.stderr.strip()[-300:]}")
    out = tmp_path_factory.mktemp("compare") / "result.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "| figure |" in run.stdout
    return dict(json.loads(out.read_text()))


def test_every_system_completed(result: dict[str, object]) -> None:
    systems = result["systems"]
    assert isinstance(systems, dict)
    assert sorted(systems) == sorted(SYSTEMS)


@pytest.mark.parametrize("name", SYSTEMS)
def test_figures_well_formed(result: dict[str, object], name: str) -> None:
    s = result["systems"][name]  # type: ignore[index]
    for key in COUNTS:
        assert isinstance(s[key], int) and s[key] >= 0, key
    for key in NUMBERS:
        assert isinstance(s[key], int | float) and s[key] >= 0, key
    assert s["acked"] > 0 and s["delivered_unique"] > 0
    assert s["acked_never_delivered"] <= s["acked"]
    assert len(s["kills"]) == 5
    for k in s["kills"]:
        assert 0 <= k["of_those_never_delivered"] <= k["acked_since_previous_kill"]
    assert s["processes"][s["own_process"]]["instances"] == 6  # first start + 5 restarts
