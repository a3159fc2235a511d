"""The ingest's MQTT session (cloud/session.py) against a real Mosquitto: keep alive
honoured when nothing arrives, a broker that goes silent detected and left, and the
session resumed once the broker answers again, nothing lost."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudsupport import Publisher, wait_until
from gwsupport import Mosquitto, Node, make_node

from cloud.config import BrokerConfig
from cloud.session import Incoming, Session

KEEPALIVE = 2  # s; Mosquitto drops a client silent for 1.5 times it


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker")
    m.start()
    try:
        yield m
    finally:
        try:
            if m.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGCONT)  # a test that stopped it and failed
        finally:
            m.stop()


def _session(port: int) -> Session:
    bc = BrokerConfig("mqtt://", "127.0.0.1", port, False, None, None, None, None)
    return Session(bc, "session-test", "g", 3600, 100, keepalive=KEEPALIVE)


def _drive(s: Session, seconds: float) -> list[Incoming]:
    """Run the session for `seconds` as the ingest does, acknowledging what it takes."""
    got: list[Incoming] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = s.take(50, 0.2, 0.02)
        s.ack(batch)
        got += batch
    return got


def _publish(port: int, node: Node, seqs: range) -> None:
    pub = Publisher(port)
    for seq in seqs:
        pub.publish("gw-1", node.device_id, node.record(seq))
    pub.flush()
    pub.close()


def test_keepalive_kept_while_idle(broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="citysense.cloud.ingest")
    s = _session(broker.port)
    try:
        _drive(s, 1.0)
        assert s.subscribed
        gen = s.gen
        _drive(s, 4 * KEEPALIVE)  # idle: only PINGREQs keep the broker from dropping us
        assert (s.connected, s.gen) == (True, gen)
        node = make_node("dev-1")
        _publish(broker.port, node, range(1, 11))
        got = _drive(s, 1.0)
        assert [m.delivery.topic for m in got] == ["citysense/v1/gw-1/dev-1/records"] * 10
        assert [m.delivery.payload for m in got] == [node.record(q) for q in range(1, 11)]
    finally:
        s.stop()
    assert "event=broker-lost" not in caplog.text


def test_silent_broker_left_then_session_resumed(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP freezes the broker with the TCP connection open: after 1.5 keep alives
    of silence the session drops it and retries; SIGCONT: it reconnects to its session
    (present) and gets what was queued meanwhile, once."""
    caplog.set_level("INFO", logger="citysense.cloud.ingest")
    assert broker.proc is not None
    s = _session(broker.port)
    node = make_node("dev-1")
    try:
        _drive(s, 1.0)
        assert s.subscribed
        os.kill(broker.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _drive(s, 2 * KEEPALIVE)
        assert "broker silent" in caplog.text
        assert not s.connected
        print(f"silence detected, connection left within {time.monotonic() - t0:.1f} s")
        os.kill(broker.proc.pid, signal.SIGCONT)
        got: list[Incoming] = []
        _publish(broker.port, node, range(1, 21))
        wait_until(lambda: bool(got.extend(_drive(s, 0.5))) or len(got) >= 20, 30, "20 records")
        assert sorted(m.delivery.payload for m in got) == sorted(
            node.record(q) for q in range(1, 21)
        )
        assert "session_present=True" in caplog.text.split("broker silent", 1)[1]
    finally:
        s.stop()
