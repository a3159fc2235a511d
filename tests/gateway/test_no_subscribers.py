"""PUBACK 0x10 (No matching subscribers) with `[uplink] require_subscriber = true`.

Mosquitto 2.0 answers an MQTT 5 publish that no subscription matches with 0x10, a
success code: the broker has thrown the message away. Where a citysense-cloud ingest
holds the records subscription, that happens in the window after a broker restart
before the ingest subscribes again (docs/cloud.md). With require_subscriber the gateway
keeps such a record and sends it again on its retry backoff until a subscriber takes it;
without it (the default) the record is deleted, which this test shows too.
"""

from __future__ import annotations

import time
from pathlib import Path

from gwsupport import (
    Mosquitto,
    NodeSim,
    Pty,
    Subscriber,
    make_node,
    scrape,
    start_gateway,
    stop,
    wait_log,
    wait_metric,
    write_config,
    write_entry,
)
from support import free_port

NO_SUB = 'citysense_publish_refused_total{reason="no-matching-subscribers"}'


def _run(tmp_path: Path, require: bool) -> None:
    node = make_node("esp32-0000000000f2")
    metrics_port = free_port()
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{metrics_port}"',
            extra_uplink=f"require_subscriber = {'true' if require else 'false'}\n",
        )
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        sub = None
        try:
            wait_log(log, "event=uplink-connected")
            sim = NodeSim(node, pty)
            for _ in range(3):
                sim.new_record()
            sim.settle()
            if not require:  # the broker said "delivered to nobody": deleted, lost
                m = wait_metric(metrics_port, "citysense_records_published_total", 3)
                assert m.get(NO_SUB, 0) == 0
                return
            m = wait_metric(metrics_port, NO_SUB, 3)
            assert m["citysense_records_published_total"] == 0
            assert m["citysense_queue_depth"] == 3
            text = log.read_text()
            assert (
                f"event=publish-refused reason=no-matching-subscribers "
                f"topic=citysense/v1/gw-test/{node.device_id}/records detail=PUBACK 0x10 "
                "record seq=1 retry_in="
            ) in text
            assert "check that citysense-cloud ingest runs and is subscribed" in text
            sub = Subscriber(broker.port, "citysense/+/+/+/records")
            got = sub.wait_count("/records", 3, timeout=120)
            assert {p for _, p, _ in got} == {node.record(s) for s in range(1, 4)}
            wait_metric(metrics_port, "citysense_records_published_total", 3)
            deadline = time.monotonic() + 30
            while scrape(metrics_port)["citysense_queue_depth"] != 0:
                assert time.monotonic() < deadline, "delivered records were not deleted"
                time.sleep(0.2)
        finally:
            stop(gw)
            pty.close()
            if sub is not None:
                sub.close()
    finally:
        broker.stop()


def test_require_subscriber_keeps_records_nobody_received(tmp_path: Path) -> None:
    _run(tmp_path, require=True)


def test_default_deletes_on_0x10(tmp_path: Path) -> None:
    _run(tmp_path, require=False)
