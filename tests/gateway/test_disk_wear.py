"""Issue 17's wear figures: bytes written (from /proc/self/io), per day, and the share
of the storage's rated endurance a year at that rate uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from gwsupport import write_config

from gateway.config import DEFAULT_ENDURANCE, ConfigError, load_config
from gateway.metrics import Metrics
from gateway.web.host import DiskWrites, wear


def test_disk_writes_total_and_the_metric(tmp_path: Path) -> None:
    io = tmp_path / "io"
    io.write_text("rchar: 1\nwrite_bytes: 1000\ncancelled_write_bytes: 100\n")
    d = DiskWrites(io)
    io.write_text("rchar: 1\nwrite_bytes: 5096\ncancelled_write_bytes: 100\n")
    d.sample()
    io.write_text("rchar: 1\nwrite_bytes: 9192\ncancelled_write_bytes: 100\n")
    d.sample()
    assert d.total == 8192 and sum(d.days.values()) == 8192
    m = Metrics()
    m.disk_written = d.total
    assert "citysense_disk_written_bytes_total 8192.0" in m.render()


def test_wear_projection() -> None:
    # 1 GB in 864 s is 100 GB a day: a year of it is 36.5 TB, 0.312 of a 117 TB card
    w = wear(10**9, 864.0, DEFAULT_ENDURANCE)
    assert w == {"per_day": 10**11, "endurance_bytes": 117 * 10**12, "share_per_year": 0.311966}
    assert wear(10**6, 30.0, DEFAULT_ENDURANCE)["per_day"] is None  # too early to tell


def test_endurance_setting(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gw.toml", extra_gateway='storage_endurance = "40TB"')
    assert load_config(cfg).storage_endurance == 40 * 10**12
    assert load_config(write_config(tmp_path / "gw2.toml")).storage_endurance == 117 * 10**12
    bad = write_config(tmp_path / "gw3.toml", extra_gateway='storage_endurance = "lots"')
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert ei.value.problems == [
        "gateway.storage_endurance: expected a size such as '512MB' or '64MiB', got 'lots'"
        " (the card's TBW rating, e.g. '117TB')"
    ]
