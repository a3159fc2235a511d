"""Reconnecting (issue 17): the first attempt within 1 s of the broker being back, however
long it was away; the backoff (cap 15 s) still spaces out a broker that takes the
connection and fails it.

Asserts what the gateway decided and logged (`retry_in=`, `probe_every=`, how many
attempts it made), never wall-clock durations; the measured delay from "broker listening
again" to "gateway connected" is printed (run with -s) for the record.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import socket
import threading
import time
from pathlib import Path

from gwsupport import (
    NodeSim,
    Pty,
    make_node,
    mosquitto,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import free_port

from gateway.backoff import HEALTHY_AFTER

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*event=uplink-connected", re.M)


def connected_times(text: str) -> list[float]:
    return [
        datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in _LOG_TIME.finditer(text)
    ]


def test_broker_restart_retries_within_1s(tmp_path: Path) -> None:
    node = make_node("esp32-0000000000c1")
    pty = Pty(tmp_path / "tty0")
    with mosquitto(tmp_path / "broker") as broker:
        metrics_port = free_port()
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{metrics_port}"',
        )
        write_entry(tmp_path / "registry", node)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=uplink-connected")
            time.sleep(HEALTHY_AFTER + 1)  # a healthy session
            broker.stop()
            wait_log(log, "event=uplink-lost")
            sim = NodeSim(node, pty)
            for _ in range(3):
                sim.new_record()
            sim.settle()  # stored while the broker is away
            time.sleep(4)  # a broker restart that takes a few seconds
            broker.start()
            back = time.time()
            wait_log(log, "event=uplink-connected", count=2, timeout=30)
            deadline = time.monotonic() + 30  # (a subscriber would race the reconnect)
            while scrape(metrics_port)["citysense_records_published_total"] < 3:
                assert time.monotonic() < deadline, "records stored in the outage not sent"
                time.sleep(0.1)
            text = log.read_text()
            lost = text.split("event=uplink-lost", 1)[1]
            # the port refused: no MQTT attempts, a probe at most every 1 s, no backoff
            assert text.count("event=uplink-lost") == 1, text
            assert re.search(
                r"broker=unreachable probe_error=.*Connection refused.* "
                r"retry=when-reachable probe_every=1.0s",
                lost,
            ), lost
            assert "retry_in=" not in lost
            assert "event=uplink-reachable" in lost
            delay = connected_times(text)[1] - back
            print(f"\nreconnect: broker listening -> gateway connected {delay:.3f} s")
        finally:
            stop(gw)
            pty.close()


def _probes(text: str) -> int:
    found = re.findall(r"event=uplink-reachable waited=[\d.]+s probes=(\d+)", text)
    assert len(found) == 1, text
    return int(found[0])


def test_a_long_outage_costs_no_backoff(tmp_path: Path) -> None:
    """The broker down from the start for 12 s: before the probes the delays had doubled
    to 4-8 s by then (0.5, 1, 2, 4, 8 s), so a broker back at 12 s waited up to 8 s."""
    with mosquitto(tmp_path / "broker") as broker:
        broker.stop()
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{free_port()}"',
        )
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=uplink-lost")
            time.sleep(12)
            broker.start()
            back = time.time()
            wait_log(log, "event=uplink-connected", timeout=30)
            text = log.read_text()
            assert text.count("event=uplink-lost") == 1, text  # one failed attempt only
            assert "retry_in=" not in text
            assert _probes(text) >= 12  # every <= 1 s through the 12 s
            delay = connected_times(text)[0] - back
            print(f"\nlong outage: broker listening -> gateway connected {delay:.3f} s")
        finally:
            stop(gw)


def test_a_broker_that_refuses_the_connect_gets_the_backoff(tmp_path: Path) -> None:
    """The port takes connections and refuses each CONNECT (CONNACK 0x87, as a broker
    with the wrong credentials does): the probe succeeds, so the delays double as before,
    not one per second."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = 0

    def serve() -> None:
        nonlocal accepted
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted += 1
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    if conn.recv(1024):  # the CONNECT (a probe sends nothing)
                        conn.sendall(b"\x20\x03\x00\x87\x00")  # CONNACK: not authorized

    threading.Thread(target=serve, daemon=True).start()
    cfg = write_config(
        tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{port}"', listen=f'"127.0.0.1:{free_port()}"'
    )
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    try:
        wait_log(log, "retry_in=", count=4, timeout=30)
        text = log.read_text()
        retries = [float(x) for x in re.findall(r"event=uplink-lost .*retry_in=([\d.]+)s", text)]
        assert "broker=unreachable" not in text
        assert accepted >= 8  # each attempt after a probe
        # 0.5, 1, 2, 4 s doubling, each drawn from [d/2, d]
        bounds = [(d / 2, d) for d in (0.5, 1, 2, 4)]
        assert [lo <= r <= hi for r, (lo, hi) in zip(retries[:4], bounds, strict=True)] == [
            True
        ] * 4, retries
    finally:
        stop(gw)
        listener.close()
