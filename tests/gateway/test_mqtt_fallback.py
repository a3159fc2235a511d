"""The MQTT version is only ever the configured one: no fallback to 3.1.1.

- A broker that refuses MQTT 5 (amqtt speaks 3.1.1 only) gets a clear error line telling
  the operator to set `[uplink] protocol`; nothing is published, nothing deleted.
- `protocol = "3.1.1"` set explicitly works against it, and check-config says what it costs.
- A v5 CONNECT that times out (a broker that accepts TCP and says nothing) does not switch
  the gateway to 3.1.1: once the broker answers, it connects with MQTT 5.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gwsupport import (
    CuttableProxy,
    NodeSim,
    Pty,
    Subscriber,
    make_node,
    mosquitto,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import REPO, free_port

AMQTT = shutil.which("amqtt")
needs_amqtt = pytest.mark.skipif(AMQTT is None, reason="amqtt (citysense[demo]) not installed")


@contextlib.contextmanager
def amqtt_broker(d: Path) -> Iterator[int]:
    port = free_port()
    conf = d / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    broker = subprocess.Popen(
        [str(AMQTT), "-c", str(conf)],
        stdout=(d / "amqtt.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert time.monotonic() < deadline, "amqtt did not start"
            time.sleep(0.1)
        yield port
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)


def status(cfg: Path) -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--json", "--config", str(cfg)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert isinstance(out, dict)
    return out


@needs_amqtt
def test_v5_refused_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    node = make_node("esp32-0000000000e1")
    pty = Pty(tmp_path / "tty0")
    with amqtt_broker(tmp_path) as port:
        cfg = write_config(
            tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{port}"', extra_uplink="timeout = 3"
        )
        write_entry(tmp_path / "registry", node)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=port-open")
            sim = NodeSim(node, pty)
            for _ in range(3):
                sim.new_record()
            sim.settle()
            # amqtt 0.12 answers a bare v5 CONNECT "unsupported protocol version" and
            # the gateway's (with a will) not at all: either way one clear line
            wait_log(log, "protocol=5 error=", timeout=30)
            wait_log(log, "event=uplink-lost", count=3, timeout=30)  # still retrying, as v5
            text = log.read_text()
            assert (
                "action='the broker did not accept an MQTT 5 CONNECT; if it speaks only MQTT "
                '3.1.1 set [uplink] protocol = "3.1.1"'
            ) in text
            assert "protocol=V311" not in text and "fallback" not in text
            assert "event=uplink-connected" not in text
            st = status(cfg)
            up = st["uplink"]
            assert isinstance(up, dict) and up["protocol"] == "V5"
            assert "set [uplink] protocol explicitly" in str(up["last_error"])
            q = st["queue"]
            assert isinstance(q, dict) and q["depth"] == 3  # nothing published, nothing lost
        finally:
            stop(gw)
            pty.close()


@needs_amqtt
def test_explicit_311_works_and_check_config_warns(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    node = make_node("esp32-0000000000e2")
    pty = Pty(tmp_path / "tty0")
    got: list[bytes] = []
    consumer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    consumer.on_message = lambda c, u, m: got.append(bytes(m.payload))
    with amqtt_broker(tmp_path) as port:
        consumer.connect("127.0.0.1", port)
        consumer.subscribe("citysense/+/+/+/records", qos=1)
        consumer.loop_start()
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{port}"',
            extra_uplink='timeout = 3\nprotocol = "3.1.1"',
        )
        write_entry(tmp_path / "registry", node)
        check = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check-config", "--config", str(cfg)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert check.returncode == 0
        assert check.stdout.endswith("(MQTT 3.1.1)\n")
        assert (
            f'citysense-gateway: {cfg}: warning: uplink.protocol = "3.1.1": MQTT 3.1.1 has no '
            "PUBACK reason codes, so a broker that denies a publish"
        ) in check.stderr
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=port-open")
            wait_log(log, f"event=uplink-connected host=127.0.0.1 port={port} protocol=V311")
            assert "event=uplink-protocol-311" in log.read_text()
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
            stop(gw)
            pty.close()


def test_connect_timeout_keeps_v5(tmp_path: Path) -> None:
    node = make_node("esp32-0000000000e3")
    pty = Pty(tmp_path / "tty0")
    with mosquitto(tmp_path / "broker") as broker:
        proxy = CuttableProxy(broker.port)
        proxy.stall = True  # TCP accepted, CONNECT never answered
        sub = Subscriber(broker.port, "citysense/#")
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{proxy.port}"',
            extra_uplink="timeout = 1",
        )
        write_entry(tmp_path / "registry", node)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=uplink-connect-no-answer protocol=5", timeout=30)
            wait_log(log, "event=uplink-lost", count=2, timeout=30)
            proxy.stall = False
            wait_log(log, "event=uplink-connected", timeout=30)
            text = log.read_text()
            assert f"event=uplink-connected host=127.0.0.1 port={proxy.port} protocol=V5" in text
            assert "V311" not in text
            assert proxy.stalled >= 2
            sim = NodeSim(node, pty)
            sim.new_record()
            sim.settle()
            (_, payload, props) = sub.wait_count("/records", 1)[0]
            assert payload == node.record(1)
            assert props.ContentType == 'application/cose; cose-type="cose-sign1"'  # type: ignore[attr-defined]
        finally:
            stop(gw)
            pty.close()
            sub.close()
            proxy.close()
