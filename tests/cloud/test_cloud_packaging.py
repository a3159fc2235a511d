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


_WITHOUT_PAHO = """
import sys
sys.modules["paho"] = None  # as in a citysense[provision] install: no paho-mqtt
from cloud.cli import build_parser
from cloud.command_mqtt import CommandLink
from cloud.config import BrokerConfig
from cloud.errors import ConfigError
build_parser()  # every subcommand registers
try:
    broker = BrokerConfig("mqtt://127.0.0.1:1", "127.0.0.1", 1, False, None, None, None, None)
    CommandLink(broker, None)
except ConfigError as exc:
    print(exc)
"""


def test_the_cloud_tool_starts_without_paho_and_says_what_a_broker_command_needs() -> None:
    """`citysense-cloud release build` runs from a citysense[provision] install (the wheel
    check does it); paho comes with citysense[cloud] only (since the gateway dropped
    aiomqtt, nothing else brings it)."""
    import sys

    res = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PAHO],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        "talking to the broker needs paho-mqtt, which citysense[cloud] installs: pip install"
        " 'citysense[cloud]'\n"
    )
