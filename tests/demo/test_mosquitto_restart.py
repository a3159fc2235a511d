"""The Mosquitto behaviour behind `[ingest] subscription = "plain"` (docs/cloud.md,
Sessions, item 5): Mosquitto 2.0.11 restores a persistent MQTT 5 session from its
persistence file but not the session's shared subscription, so what is published after
the restart and before its client subscribes again is dropped for it; a plain
subscription of the same kind of session keeps everything (what the demo's one ingest
instance relies on). If the shared case starts keeping its 10 messages, Mosquitto was
fixed and shared instances need no wait after a broker restart either."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from gwsupport import mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citysense_lab.broker import have_mosquitto
from citysense_lab.procs import wait_until

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")


class Session:
    """A persistent session (client id `ingest-like`, expiry 3600 s) that subscribes
    only when told to, counting what it receives on each topic filter's topics."""

    def __init__(self, port: int) -> None:
        self.got: list[str] = []
        self.present: list[bool] = []
        self._lock = threading.Lock()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="ingest-like", protocol=mqtt.MQTTv5
        )
        c.on_message = self._on_message
        c.on_connect = lambda _c, _u, flags, _rc, _p: self.present.append(flags.session_present)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        wait_until(lambda: bool(self.present), 15, "the session's CONNACK")
        self.client = c

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append(msg.topic)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(15), f"no SUBACK for {topic}"

    def count(self, topic: str) -> int:
        with self._lock:
            return self.got.count(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(port: int, topic: str, n: int) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for i in range(n):
            c.publish(topic, str(i), qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize(
    ("subscription", "restart", "kept"),
    [("$share/g/t/records", True, 0), ("$share/g/t/records", False, 10), ("t/records", True, 10)],
)
def test_a_restart_and_a_persistent_sessions_subscription(
    tmp_path: Path, subscription: str, restart: bool, kept: int
) -> None:
    with mosquitto(tmp_path / "broker", persistence=True) as broker:
        first = Session(broker.port)
        first.subscribe(subscription)
        first.close()
        if restart:
            broker.stop()
            broker.start()
        _publish(broker.port, "t/records", 10)  # the session is offline, its client away
        back = Session(broker.port)
        try:
            assert back.present == [True]  # the broker restored the session
            # a marker after the queue: once it is here, everything queued was delivered
            back.subscribe("t/marker")
            _publish(broker.port, "t/marker", 1)
            wait_until(lambda: back.count("t/marker") == 1, 15, "the marker")
            assert back.count("t/records") == kept
        finally:
            back.close()
