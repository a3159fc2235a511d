"""The ingest's systemd unit: verifies clean, exposure <= 2.0 like the gateway's, essentials."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import REPO

UNIT = REPO / "packaging" / "systemd" / "citysense-cloud-ingest.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


@needs_systemd
def test_unit_verify_clean(tmp_path: Path) -> None:
    exe = tmp_path / "citysense-cloud"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/citysense-cloud", str(exe)))
    res = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert [ln for ln in res.stderr.splitlines() if UNIT.name in ln] == []


@needs_systemd
def test_unit_exposure_at_most_2() -> None:
    res = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(rf"Overall exposure level for {re.escape(UNIT.name)}: (\d+\.\d+)", res.stdout)
    assert m is not None, res.stdout[-2000:] + res.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_essentials() -> None:
    lines = UNIT.read_text().splitlines()
    for line in (
        "Type=notify",
        "Restart=always",
        "DynamicUser=yes",
        "StateDirectory=citysense-cloud",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "KillSignal=SIGTERM",
    ):
        assert line in lines, line
    exec_start = next(ln for ln in lines if ln.startswith("ExecStart="))
    assert exec_start.endswith("ingest --instance %H")
