"""A broker whose ACL refuses the gateway (Mosquitto 2.0, MQTT 5: PUBACK 0x87).

The gateway's certificate says CN=gw-other while gateway.id is gw-test, so the ACL
(`pattern readwrite citysense/v1/%u/#`) denies its records and command results (its
status topic is let through, so that records are tried at all: Mosquitto 2.0.11 closes
the connection right after each refusing PUBACK, so one refusal per connection). Records
and a command result must stay queued, be counted and logged with what to check, and
`status` must show it; once the ACL is fixed (SIGHUP reloads it) the same records arrive
and only then leave the queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gwsupport import (
    Mosquitto,
    NodeSim,
    Pty,
    Subscriber,
    make_node,
    make_pki,
    scrape,
    start_gateway,
    stop,
    wait_log,
    wait_metric,
    write_config,
    write_entry,
)
from support import REPO, free_port

from gateway.protocol import CommandResult, FrameType, encode_frame, sign_command_result

REFUSED = 'citysense_publish_refused_total{reason="not-authorized"}'


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--config", str(cfg)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_refused_publish_stays_queued_until_the_acl_allows_it(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "gw-other")  # the CN the ACL will see
    node = make_node("esp32-0000000000f1")
    metrics_port = free_port()
    broker = Mosquitto(tmp_path / "broker", tls=pki)
    acl = tmp_path / "broker" / "acl"
    acl.write_text(acl.read_text() + "\nuser gw-other\ntopic write citysense/v1/gw-test/status\n")
    broker.start()
    try:
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtts://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{metrics_port}"',
            # window = 1: Mosquitto 2.0.11 closes the connection after a refusing PUBACK;
            # with more publishes in flight it has unread data, the close becomes a TCP
            # RST, and the RST can discard the PUBACK before the gateway reads it (the
            # record is then simply retried, but the test wants to see each refusal)
            extra_uplink=(
                f'ca_file = "{pki["ca"]}"\ncert_file = "{pki["gw-other_cert"]}"\n'
                f'key_file = "{pki["gw-other_key"]}"\nwindow = 1\n'
            ),
        )
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, "citysense/#", tls=pki)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=uplink-connected")
            sim = NodeSim(node, pty)
            for _ in range(3):
                sim.new_record()
            sim.settle()
            # 3 records, each refused at least once (one per connection)
            m = wait_metric(metrics_port, REFUSED, 3, timeout=60)
            assert m["citysense_records_published_total"] == 0
            assert m["citysense_queue_depth"] == 3
            text = log.read_text()
            topic = f"citysense/v1/gw-test/{node.device_id}/records"
            assert (
                f"event=publish-refused reason=not-authorized topic={topic} detail=PUBACK 0x87 "
                "record seq=1 retry_in="
            ) in text
            assert (
                "action='check the broker ACL for this topic and that the gateway certificate "
                "CN (or username) matches gateway.id (gw-test)'"
            ) in text
            assert sub.records() == []

            deadline = time.monotonic() + 15  # status.json is rewritten every second
            while (st := json.loads(cli(cfg, "status", "--json").stdout))["uplink"]["refused"] < 3:
                assert time.monotonic() < deadline, st["uplink"]
                time.sleep(0.5)
            assert st["uplink"]["last_refusal"]["reason"] == "not-authorized"
            assert st["queue"]["depth"] == 3
            human = cli(cfg, "status").stdout
            assert "REFUSED" in human and "not-authorized on citysense/v1/gw-test/" in human

            # a command result from the node: refused too, kept for retry
            kid = node.device_id.encode()
            pty.write(
                encode_frame(
                    FrameType.COMMAND_RESULT,
                    sign_command_result(node.seed, kid, CommandResult(7, True, "done")),
                )
            )
            wait_log(log, "/command-results detail=PUBACK 0x87 command-result attempt=1 kept=yes")

            # fix the ACL: the broker reloads it on SIGHUP; the retries now get through
            acl.write_text(acl.read_text() + "topic write citysense/#\n")
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGHUP)
            got = sub.wait_count("/records", 3, timeout=120)
            # a refused record retries on its own backoff, so order may change (consumers
            # dedupe by (device, seq)); every byte of every record arrives
            assert {p for _, p, _ in got} == {node.record(s) for s in range(1, 4)}
            sub.wait_count("/command-results", 1, timeout=120)
            wait_metric(metrics_port, "citysense_records_published_total", 3)
            deadline = time.monotonic() + 30
            while scrape(metrics_port)["citysense_queue_depth"] != 0:
                assert time.monotonic() < deadline, "delivered records were not deleted"
                time.sleep(0.2)
            assert sorted(set(sub.records())) == [(node.device_id, s) for s in range(1, 4)]
        finally:
            stop(gw)
            pty.close()
            sub.close()
    finally:
        broker.stop()
