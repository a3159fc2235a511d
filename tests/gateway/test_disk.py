"""The agent on a full file system (a 1 MiB tmpfs) and on a corrupt database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    write_config,
    write_entry,
)
from support import free_port

from gateway.queue import stored_keys


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30, check=False)


def test_disk_full_backpressure_no_corruption(tmp_path: Path, tiny_fs: Path) -> None:
    node = make_node("esp32-0000000000d1")
    cfg = write_config(
        tmp_path / "gw.toml",
        state_dir=f'"{tiny_fs / "state"}"',
        max_bytes='"100MB"',  # far above the file system: the disk fills first
    )
    write_entry(tmp_path / "registry", node)
    pty = Pty(tmp_path / "tty0")
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    sim = NodeSim(node, pty)
    try:
        wait_log(log, "event=port-open")
        deadline = time.monotonic() + 90
        while not any(r == "busy" for _, r in sim.nacks):
            assert time.monotonic() < deadline, "never got NACK busy"
            for _ in range(16):
                sim.new_record()
            end = time.monotonic() + 0.5
            while sim.unacked and time.monotonic() < end and not sim.nacks:
                time.sleep(0.01)
                sim.process()
        time.sleep(1)
        sim.process()
        assert gw.poll() is None  # still running
        assert {r for _, r in sim.nacks} == {"busy"}
        acked = set(sim.acked)
        assert len(acked) > 100
    finally:
        stop(gw)
        pty.close()
    conn = sqlite3.connect(tiny_fs / "state" / "queue.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    rows = {s for _, s in stored_keys(tiny_fs / "state" / "queue.sqlite3")}
    assert acked <= rows  # every ACKed record is in the database
    assert "event=record-rejected" in log.read_text() and "reason=busy" in log.read_text()


def test_agent_reports_corrupt_database(tmp_path: Path) -> None:
    metrics_port = free_port()
    cfg = write_config(tmp_path / "gw.toml", listen=f'"127.0.0.1:{metrics_port}"')
    state = tmp_path / "state"
    state.mkdir()
    (state / "queue.sqlite3").write_bytes(b"SQLite format 3\x00" + b"\xff" * 8000)
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    try:
        wait_log(log, "event=ready")
        text = log.read_text()
        assert "level=CRITICAL logger=citysense.queue event=queue-corrupt" in text
        moved = sorted(state.glob("queue.sqlite3.corrupt-*"))
        assert len(moved) == 1 and moved[0].read_bytes().startswith(b"SQLite format 3")
        assert scrape(metrics_port)["citysense_queue_corrupt_total"] == 1
        deadline = time.monotonic() + 10
        while not (state / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        status = json.loads((state / "status.json").read_text())
        assert status["queue"]["moved_aside"] == str(moved[0])
    finally:
        stop(gw)


def test_disk_full_does_not_stop_deleting_delivered_records(tmp_path: Path, tiny_fs: Path) -> None:
    """The disk fills while the broker is away; once it is back every ACKed record is
    delivered and deleted (the delete needs disk too: the queue's reserve), and the agent
    stays up. Before the reserve, the first delete on the full disk ended the uplink."""
    node = make_node("esp32-0000000000d2")
    metrics_port = free_port()
    # The consumer's session is made before the outage and kept by the broker across its
    # restart (persistence on), so the consumer connects only after the gateway drained
    # and deleted everything, and still gets every record: no race with the port probe,
    # which reconnects and drains within a second of the broker's start.
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    Subscriber(broker.port, "citysense/#", persistent=True).close()
    broker.stop()  # the outage
    cfg = write_config(
        tmp_path / "gw.toml",
        url=f'"mqtt://127.0.0.1:{broker.port}"',
        state_dir=f'"{tiny_fs / "state"}"',
        max_bytes='"100MB"',
        listen=f'"127.0.0.1:{metrics_port}"',
    )
    write_entry(tmp_path / "registry", node)
    pty = Pty(tmp_path / "tty0")
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    sim = NodeSim(node, pty)
    try:
        wait_log(log, "event=port-open")
        assert (tiny_fs / "state" / "queue.reserve").stat().st_size == 256 * 1024
        deadline = time.monotonic() + 90
        while not any(r == "busy" for _, r in sim.nacks):
            assert time.monotonic() < deadline, "never got NACK busy"
            for _ in range(16):
                sim.new_record()
            end = time.monotonic() + 0.5
            while sim.unacked and time.monotonic() < end and not sim.nacks:
                time.sleep(0.01)
                sim.process()
        acked = set(sim.acked)
        assert len(acked) > 100
        broker.start()
        deadline = time.monotonic() + 90
        while (depth := scrape(metrics_port)["citysense_queue_depth"]) != 0:
            assert gw.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{depth} records not delivered and deleted"
            time.sleep(0.2)
        sub = Subscriber(broker.port, "citysense/#", persistent=True)
        try:
            deadline = time.monotonic() + 30
            while not acked <= (got := {s for _, s in sub.records()}):
                assert time.monotonic() < deadline, (
                    f"{len(acked - got)} ACKed records deleted but never delivered"
                )
                time.sleep(0.2)
        finally:
            sub.close()
        assert gw.poll() is None
        text = log.read_text()
        assert "event=task-failed" not in text
        print(
            "\nreserve used:", text.count("event=queue-delete-disk-full"),
            "restored:", text.count("event=queue-reserve-restored"),
        )  # fmt: skip
    finally:
        stop(gw)
        pty.close()
        broker.stop()


def test_a_queue_filled_by_big_commits_still_deletes_on_the_full_disk(tiny_fs: Path) -> None:
    """Commits of 16 records fill the 1 MB disk with a WAL longer than the reserve frees.
    Before wal_pages() and the retry without a checkpoint, the first delete's checkpoint
    grew the file into the released reserve and every delete failed from then on (the
    queue could never shrink)."""
    from gateway.queue import NewRecord, Queue, QueueFullError

    q = Queue.open(tiny_fs / "state" / "queue.sqlite3", 10**9)
    stored = 0
    with pytest.raises(QueueFullError):
        for _ in range(10_000):
            q.store(
                [NewRecord("d1", stored + i, 0, os.urandom(300), None, "k") for i in range(1, 17)]
            )
            stored += 16
    assert stored > 500
    for _ in range(stored // 250 + 1):
        q.delete([r.id for r in q.peek(0, 250)])
    assert q.depth == 0
    q.store([NewRecord("d1", stored + 100, 0, os.urandom(300), None, "k")])  # room again
    assert q.reserve.held
    q.close()
