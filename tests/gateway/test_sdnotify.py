"""sd_notify on a real NOTIFY_SOCKET datagram socket, and the watchdog's health gate."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gwsupport import mosquitto, start_gateway, stop, write_config

from gateway.agent import Health, watchdog_loop
from gateway.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(0.2)
    try:
        yield s, path
    finally:
        s.close()


def drain(s: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    while time.monotonic() < until:
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_messages(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    n = Notifier(path)
    assert n.ready("ready: queue 0 records")
    assert n.watchdog() and n.status("uplink connected") and n.stopping()
    got = [s.recv(4096).decode() for _ in range(4)]
    assert got == [
        "READY=1\nSTATUS=ready: queue 0 records",
        "WATCHDOG=1",
        "STATUS=uplink connected",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_abstract_namespace() -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"citysense-test-{os.getpid()}-{time.monotonic_ns()}"
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        assert Notifier("@" + name).notify("READY=1")
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_disabled_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


class Beater:
    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self.hung = False

    async def run(self) -> None:
        while True:
            if self.hung:
                await asyncio.Event().wait()  # stuck forever, beats stop
            self.heartbeat = time.monotonic()
            await asyncio.sleep(0.05)


def test_watchdog_stops_when_a_task_hangs(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    received: list[str] = []

    async def main() -> None:
        ingest, uplink = Beater(), Beater()
        health = Health(stale_after=0.5)
        health.add("ingest", ingest)
        health.add("uplink", uplink)
        tasks = [asyncio.create_task(ingest.run()), asyncio.create_task(uplink.run())]
        wd = asyncio.create_task(watchdog_loop(Notifier(path), health, 0.1))
        loop = asyncio.get_running_loop()
        received.extend(await loop.run_in_executor(None, drain, s, time.monotonic() + 1.0))
        uplink.hung = True
        received.append("--hung--")
        received.extend(await loop.run_in_executor(None, drain, s, time.monotonic() + 2.0))
        for t in [*tasks, wd]:
            t.cancel()
        await asyncio.gather(*tasks, wd, return_exceptions=True)

    asyncio.run(main())
    cut = received.index("--hung--")
    assert received[:cut].count("WATCHDOG=1") >= 5
    after = received[cut + 1 :]
    # a few pings until the heartbeat goes stale (0.5 s), then one STATUS and silence
    assert after.count("STATUS=unhealthy: uplink not responding") == 1
    tail = after[after.index("STATUS=unhealthy: uplink not responding") :]
    assert tail == ["STATUS=unhealthy: uplink not responding"]


def test_agent_ready_watchdog_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    s, path = notify_socket
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        gw = start_gateway(
            cfg, tmp_path / "gw.log", {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
        )
        try:
            got = drain(s, time.monotonic() + 4)
            code = stop(gw)
            got += drain(s, time.monotonic() + 0.5)
        finally:
            stop(gw)
    assert code == 0
    ready = [m for m in got if m.startswith("READY=1\n")]
    assert ready == ["READY=1\nSTATUS=ready: queue 0 records, ports 0"]
    assert got.index(ready[0]) < got.index("WATCHDOG=1")
    assert got.count("WATCHDOG=1") >= 5
    assert "STOPPING=1\nSTATUS=stopping: draining" in got
    assert any(m.startswith("STATUS=uplink connected, queue 0 records") for m in got)
