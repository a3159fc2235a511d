"""The real gateway upstream: node frames on a pty -> gateway -> Mosquitto -> ingest -> SQLite.

Boot-relative records (time base 1) come out with the gateway's resolved times; a
kill -9 of the gateway mid-stream (it may publish again what it had not yet deleted)
leaves every ACKed record stored once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from cloudsupport import cloud_config, start_ingest, wait_until
from gwsupport import (
    Pty,
    make_node,
    mosquitto,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)

from cloud.ledger import ledger
from cloud.store import open_store
from gateway.protocol import FrameType, decode_ack


def _acked(pty: Pty, seq: int) -> None:
    pty.wait_for(
        lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) >= seq for f in fs), 30
    )


def test_gateway_to_database_exactly_once_with_resolved_times(tmp_path: Path) -> None:
    node = make_node("esp32-00000000000e")
    db = f"sqlite:///{tmp_path}/cloud.sqlite3"
    with mosquitto(tmp_path / "broker") as broker:
        gw_cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        write_entry(tmp_path / "registry", node)
        cfg = cloud_config(tmp_path / "cloud.toml", broker.port, tmp_path / "registry", db)
        ingest = start_ingest(cfg, "e2e", tmp_path / "ingest.log")
        pty = Pty(tmp_path / "tty0")
        gw = start_gateway(gw_cfg, tmp_path / "gw.log")
        try:
            wait_log(tmp_path / "ingest.log", "event=ingest-subscribed")
            wait_log(tmp_path / "gw.log", "event=port-open")
            hello_at = time.time()
            pty.write(node.hello_frame(boot=1, uptime_ms=5000))
            pty.wait_for(lambda fs: any(f.type == FrameType.TIME for f in fs))
            for seq in range(1, 31):
                pty.write(node.record_frame(seq, time_base=1))
            _acked(pty, 30)
            gw.send_signal(signal.SIGKILL)
            gw.wait(10)
            gw = start_gateway(gw_cfg, tmp_path / "gw.log")
            wait_log(tmp_path / "gw.log", "event=port-open", count=2)
            pty.write(node.hello_frame(boot=1, uptime_ms=int((time.time() - hello_at + 5) * 1000)))
            for seq in range(31, 41):
                pty.write(node.record_frame(seq, time_base=1))
            _acked(pty, 40)
            store = open_store(db)
            wait_until(
                lambda: store.query("SELECT COUNT(*) FROM records")[0][0] == 40, 60, "40 stored"
            )
            rows = store.query(
                "SELECT r.seq, r.time, r.boot_time, c.gateway_id FROM readings r"
                " JOIN records c USING (device_id, seq) ORDER BY r.seq"
            )
            report = ledger(store)
            store.close()
        finally:
            stop(gw)
            stop(ingest)
            pty.close()
    assert [r[0] for r in rows] == list(range(1, 41))
    assert {r[3] for r in rows} == {"gw-test"}
    assert [r[2] for r in rows] == [float(s) for s in range(1, 41)]  # t = seq since boot
    starts = {round(t - bt, 3) for _, t, bt, _ in rows}
    assert len(starts) <= 2  # one boot start (two HELLOs may round it differently)
    assert all(abs(s - (hello_at - 5)) < 5 for s in starts)
    entry = report["devices"][node.device_id]
    assert (entry["records"], entry["gaps"], entry["rejected"]) == (40, [], {})
