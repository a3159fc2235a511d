"""A broker that refuses MQTT 5 (amqtt speaks 3.1.1 only): the gateway falls back."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from gwsupport import (
    NodeSim,
    Pty,
    make_node,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import free_port

AMQTT = shutil.which("amqtt")


@pytest.mark.skipif(AMQTT is None, reason="amqtt (citysense[demo]) not installed")
def test_falls_back_to_311(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    broker = subprocess.Popen(
        [str(AMQTT), "-c", str(conf)],
        stdout=(tmp_path / "amqtt.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    node = make_node("esp32-0000000000e1")
    pty = Pty(tmp_path / "tty0")
    got: list[bytes] = []
    consumer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    consumer.on_message = lambda c, u, m: got.append(bytes(m.payload))
    gw = None
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert time.monotonic() < deadline, "amqtt did not start"
            time.sleep(0.1)
        consumer.connect("127.0.0.1", port)
        consumer.subscribe("citysense/+/+/+/records", qos=1)
        consumer.loop_start()
        cfg = write_config(
            tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{port}"', extra_uplink="timeout = 3"
        )
        write_entry(tmp_path / "registry", node)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        wait_log(log, "event=port-open")
        wait_log(log, f"event=uplink-connected host=127.0.0.1 port={port} protocol=V311")
        assert "event=uplink-protocol-fallback protocol=V311" in log.read_text()
        sim = NodeSim(node, pty)
        for _ in range(5):
            sim.new_record()
        sim.settle()
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [node.record(s) for s in range(1, 6)]
    finally:
        consumer.loop_stop()
        if gw is not None:
            stop(gw)
        pty.close()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)
