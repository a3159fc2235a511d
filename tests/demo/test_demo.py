"""The README's demo, end to end, on both brokers: an outage, nothing lost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _demo(broker: str, cut: str) -> subprocess.CompletedProcess[str]:
    argv = ["--duration", "24", "--outage", "10", "--broker", broker, "--cut", cut]
    return subprocess.run(
        [str(BIN / "citysense-demo"), *argv],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=dict(os.environ, COLUMNS="120"),
    )


@pytest.mark.parametrize(("broker", "cut"), [("amqtt", "broker"), ("mosquitto", "line")])
def test_demo_loses_nothing_across_an_outage(broker: str, cut: str) -> None:
    if (
        broker == "mosquitto"
        and shutil.which("mosquitto") is None
        and not Path("/usr/sbin/mosquitto").exists()
    ):
        pytest.skip("mosquitto not installed (scripts/setup.sh dev installs it)")
    res = _demo(broker, cut)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "nothing lost, every signature verified" in res.stdout
    rows = re.findall(r"│ (node-\d) +│ (\d+) +│ (\d+) +│ (\d+) +│ (\d+) +│", res.stdout)
    summary = rows[-3:]
    assert [r[0] for r in summary] == ["node-1", "node-2", "node-3"]
    for _node, created, delivered, _dups, lost in summary:
        assert int(created) >= 8  # 24 s at one record per 2 s, minus boot
        assert delivered == created and lost == "0"
    peak = re.search(rf"{cut} down for 10 s: the gateway queue peaked at (\d+) records", res.stdout)
    assert peak is not None and int(peak.group(1)) >= 3  # the cut really queued records
