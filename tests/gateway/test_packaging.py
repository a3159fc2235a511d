"""The systemd unit (verify clean, exposure <= 2.0), the udev rule and the example config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import REPO

from gateway.config import load_config

UNIT = REPO / "packaging" / "systemd" / "citysense-gateway.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


@needs_systemd
def test_unit_verify_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at a real executable in a copy
    exe = tmp_path / "citysense-gateway"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "citysense-gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/citysense-gateway", str(exe)))
    res = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "citysense-gateway.service" in ln]
    assert lines == []


@needs_systemd
def test_unit_exposure_at_most_2() -> None:
    res = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for citysense-gateway.service: (\d+\.\d+)", res.stdout)
    assert m is not None, res.stdout[-2000:] + res.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_essentials() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=always",
        "WatchdogSec=30",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=citysense",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "SupplementaryGroups=dialout",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyACM rw",
        "PrivateTmp=yes",
    ):
        assert line in text.splitlines(), line


def test_example_config_is_valid(tmp_path: Path) -> None:
    text = (REPO / "packaging" / "config" / "gateway.toml").read_text()
    for name in ("ca.pem", "gw-01.pem", "gw-01.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "operator.pub").write_text("00" * 32 + "\n")
    (tmp_path / "registry").mkdir()
    text = text.replace("/etc/citysense/tls/", f"{tmp_path}/").replace(
        "/etc/citysense/", f"{tmp_path}/"
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.gateway_id == "gw-01" and cfg.queue_max_bytes == 512_000_000
    assert cfg.uplink.tls and cfg.uplink.port == 8883
    assert [s.port for s in cfg.serial] == ["/dev/citysense/*", "/dev/serial/by-id/usb-*"]


def test_udev_rule_syntax() -> None:
    rules = (REPO / "packaging" / "udev" / "99-citysense-serial.rules").read_text()
    for line in rules.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith('SUBSYSTEM=="tty"') and 'GROUP="dialout"' in line
            assert 'SYMLINK+="citysense/' in line
