"""The cloud ingest at the end of the whole system (issue 14): emulated nodes (the real
firmware under micropython), the real gateway killed -9 a few times (it publishes again
what it had not yet deleted), Mosquitto with mTLS, and `citysense-cloud ingest` with the
consumer's certificate, storing into SQLite. Every record the nodes created is stored
once, and the ingest's ledger counts the same duplicates the independent consumer saw."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ledger import assert_balanced, settle

from citysense_lab.procs import wait_until
from citysense_lab.stack import Lab
from cloud.ledger import ledger
from cloud.store import open_store

MakeLab = Callable[..., Lab]
REPO = Path(__file__).resolve().parent.parent


def _config(lab: Lab, path: Path, db: str) -> Path:
    tls = lab.tls("consumer")
    path.write_text(
        f"""[broker]
url = "mqtts://127.0.0.1:{lab.broker_port}"
ca_file = "{tls.ca_file}"
cert_file = "{tls.cert_file}"
key_file = "{tls.key_file}"
[registry]
path = "{lab.registry}"
[database]
url = "{db}"
"""
    )
    return path


def test_10_cloud_ingest_exactly_once_behind_the_gateway(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(nodes=2)
    lab.run()
    assert lab.broker is not None and lab.consumer is not None
    if lab.broker.kind != "mosquitto":
        pytest.skip("the ingest needs MQTT 5 shared subscriptions (Mosquitto)")
    db = f"sqlite:///{tmp_path}/cloud.sqlite3"
    cfg = _config(lab, tmp_path / "cloud.toml", db)
    log = tmp_path / "ingest.log"
    ingest = subprocess.Popen(
        [sys.executable, "-m", "cloud.cli", "--config", str(cfg), "ingest", "--instance", "hil"],
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: "event=ingest-subscribed" in log.read_text(), 30, "ingest subscribed")
        rng = random.Random(14)
        for _ in range(3):
            time.sleep(rng.uniform(1.0, 3.0))
            lab.kill_gateway()
            time.sleep(rng.uniform(0.0, 1.0))
            lab.start_gateway()
        created = settle(lab, 120)
        assert_balanced(lab, created)
        for node in lab.nodes:
            lab.power_cut(node)
        wait_until(lambda: lab.gateway_status()["queue"]["depth"] == 0, 60, "gateway drained")
        delivered = lab.consumer.snapshot()
        store = open_store(db)

        def stored() -> dict[str, set[int]]:
            rows = store.query("SELECT device_id, seq FROM records")
            out: dict[str, set[int]] = {}
            for device, seq in rows:
                out.setdefault(device, set()).add(seq)
            return out

        wait_until(lambda: stored() == delivered, 60, "the ingest stored what was delivered")
        report = ledger(store)
        store.close()
    finally:
        ingest.terminate()
        ingest.wait(15)
    for device, seqs in created.items():
        e = report["devices"][device]
        assert set(seqs) <= delivered[device]
        assert e["records"] == len(delivered[device])
        assert e["duplicates"] == lab.consumer.ledger.duplicates(device), json.dumps(e)
        assert e["rejected"] == {}
    assert report["rejected"] == {}
    assert ingest.returncode == 0
