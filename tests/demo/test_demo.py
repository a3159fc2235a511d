"""The README's demo, end to end, on both brokers: an outage, nothing lost.

With Mosquitto the cloud side is `citysense-cloud ingest` and the closing table is its
ledger: the test keeps the lab (`--keep`), and checks every figure of the table against
the `report --json` the demo kept, that report against the database's final ledger and
the nodes' own logs, and that nothing the demo started is still running after it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from citysense_lab.ingest import stored_seqs
from citysense_lab.summary import spans

BIN = Path(sys.executable).parent
ROW = re.compile(r"│ (node-\d) +│ (\d+) +│ (\d+) +│ (\d+) +│ (\S+) +│ (\d+) +│ (\d+) +│")


def _demo(broker: str, cut: str, keep: Path) -> subprocess.CompletedProcess[str]:
    argv = ["--duration", "24", "--outage", "10", "--broker", broker, "--cut", cut]
    return subprocess.run(
        [str(BIN / "citysense-demo"), *argv, "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=dict(os.environ, COLUMNS="120"),
    )


def _processes_under(path: Path) -> list[str]:
    """Command lines of running processes that name `path` (every process the lab starts
    has a file of its folder in its arguments)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmd:
            out.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return out


def _created(log: Path) -> list[int]:
    seqs = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("ev") == "record":
                seqs.append(int(event["seq"]))
    return seqs


def _final_ledger(keep: Path) -> dict[str, Any]:
    res = subprocess.run(
        [str(BIN / "citysense-cloud"), "--database", f"sqlite:///{keep}/cloud.sqlite3",
         "report", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def _assert_rows_are_the_ledger(rows: list[tuple[str, ...]], keep: Path) -> None:
    report = json.loads((keep / "report.json").read_text())
    final = _final_ledger(keep)  # after the demo: the ingest may have stored more since
    assert report["rejected"] == {} and final["rejected"] == {}
    assert sorted(report["devices"]) == ["node-1", "node-2", "node-3"]
    for node, created, stored, dups, gaps, refused, lost in rows:
        e = report["devices"][node]
        assert (int(stored), int(dups), gaps) == (e["records"], e["duplicates"], spans(e["gaps"]))
        assert e["rejected"] == {} and refused == "0" and lost == "0"
        seqs = stored_seqs(e)
        assert len(seqs) == e["records"] == int(created) >= 8  # 24 s, a record per 2 s
        # exactly the node's own records up to the newest stored, each once
        assert {s for s in _created(keep / f"{node}.log") if s <= max(seqs)} == seqs
        f = final["devices"][node]
        assert seqs <= stored_seqs(f) and f["duplicates"] >= e["duplicates"]


@pytest.mark.parametrize(("broker", "cut"), [("amqtt", "broker"), ("mosquitto", "broker")])
def test_demo_loses_nothing_across_an_outage(broker: str, cut: str, tmp_path: Path) -> None:
    if (
        broker == "mosquitto"
        and shutil.which("mosquitto") is None
        and not Path("/usr/sbin/mosquitto").exists()
    ):
        pytest.skip("mosquitto not installed (scripts/setup.sh dev installs it)")
    keep = tmp_path / "lab"
    res = _demo(broker, cut, keep)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert _processes_under(keep) == []
    assert "nothing lost, every signature verified" in res.stdout
    summary = ROW.findall(res.stdout)[-3:]
    assert [r[0] for r in summary] == ["node-1", "node-2", "node-3"]
    peak = re.search(rf"{cut} down for 10 s: the gateway queue peaked at (\d+) records", res.stdout)
    assert peak is not None and int(peak.group(1)) >= 3  # the cut really queued records
    if broker == "mosquitto":
        assert "summary: the cloud ingest's ledger (citysense-cloud report)" in res.stdout
        assert "amqtt speaks MQTT 3.1.1" not in res.stdout
        _assert_rows_are_the_ledger(summary, keep)
        conf = (keep / "broker" / "mosquitto.conf").read_text()
        assert "max_queued_messages 100000\n" in conf and "persistence true\n" in conf
        acl = (keep / "broker" / "acl").read_text()
        assert "user ingest\ntopic read citysense/v1/+/+/records\n" in acl
        # stopped by SIGTERM: its last words are the closing stats, after the disconnect
        last = (keep / "ingest.log").read_text().strip().splitlines()[-1]
        assert "event=ingest-stats instance=lab" in last
        return
    assert "summary: the lab's consumer (amqtt, no cloud ingest)" in res.stdout
    assert res.stdout.count("note: amqtt speaks MQTT 3.1.1 only") == 2  # at start and end
    assert not (keep / "cloud.sqlite3").exists() and not (keep / "ingest.log").exists()
    for _node, created, stored, _dups, _gaps, refused, lost in summary:
        assert int(created) >= 8
        assert stored == created and (refused, lost) == ("0", "0")
