"""The ingest under systemd's notify protocol (Type=notify, WatchdogSec): a real
NOTIFY_SOCKET datagram socket receives READY, the subscription status, watchdog pings
and STOPPING."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cloudsupport import cloud_config
from gwsupport import make_node, mosquitto, stop, write_entry
from support import REPO


def _recv_until(s: socket.socket, want: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(s.recv(4096).decode())
        except TimeoutError:
            continue
        if any(want in m for m in got):
            return got
    raise TimeoutError(f"never got {want!r}; got {got}")


def test_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    (tmp_path / "registry").mkdir()
    write_entry(tmp_path / "registry", make_node("dev-1"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    with mosquitto(tmp_path / "broker") as broker:
        cfg = cloud_config(
            tmp_path / "cloud.toml",
            broker.port,
            tmp_path / "registry",
            f"sqlite:///{tmp_path}/c.db",
        )
        env = dict(
            os.environ,
            NOTIFY_SOCKET=str(tmp_path / "notify"),
            WATCHDOG_USEC="400000",  # a ping every 0.2 s
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.cli", "--config", str(cfg), "ingest", "--instance", "n"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            got = _recv_until(sock, "STATUS=subscribed", 30)
            assert got[0] == "READY=1\nSTATUS=connecting to 127.0.0.1"
            pings = _recv_until(sock, "WATCHDOG=1", 5)
            assert "WATCHDOG=1" in pings
        finally:
            assert stop(proc) == 0
            sock.settimeout(2)
            tail = _recv_until(sock, "STOPPING=1", 5)
            sock.close()
    assert tail[-1] == "STOPPING=1\nSTATUS=stopping"
