"""Durable queue: unique rows, bound, disk full, corrupt database moved aside."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.queue import ROW_OVERHEAD, NewRecord, Queue, QueueFullError, read_only_stats


def rec(seq: int, device: str = "d1", size: int = 100) -> NewRecord:
    return NewRecord(device, seq, 1_000 + seq, bytes([seq % 256]) * size)


def test_store_peek_delete_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 1_000_000)
    q.store([rec(1), rec(2), rec(5, "d2")])
    assert (q.depth, q.bytes) == (3, 3 * (100 + ROW_OVERHEAD))
    assert q.high_seq("d1") == 2 and q.high_seq("d2") == 5 and q.high_seq("d3") is None
    rows = q.peek(0, 10)
    assert [(r.device_id, r.seq) for r in rows] == [("d1", 1), ("d1", 2), ("d2", 5)]
    q.delete([rows[0].id])
    assert q.contains("d1", 2) and not q.contains("d1", 1)
    q.close()
    q = Queue.open(path, 1_000_000)
    assert (q.depth, q.bytes) == (2, 2 * (100 + ROW_OVERHEAD))
    assert q.high_seq("d1") == 2  # survives deletion of the rows and a restart
    assert q.moved_aside is None
    stats = read_only_stats(path)
    assert stats["depth"] == 2
    q.close()


def test_duplicate_row_impossible(tmp_path: Path) -> None:
    q = Queue.open(tmp_path / "q.sqlite3", 1_000_000)
    q.store([rec(1)])
    with pytest.raises(sqlite3.IntegrityError):
        q.store([rec(2), rec(1)])
    assert q.all_keys() == [("d1", 1)]  # the whole batch rolled back
    assert q.high_seq("d1") == 1 and q.depth == 1
    q.close()


def test_room_for_bound(tmp_path: Path) -> None:
    q = Queue.open(tmp_path / "q.sqlite3", 3 * (100 + ROW_OVERHEAD))
    q.store([rec(1), rec(2)])
    assert q.room_for(100)
    q.store([rec(3)])
    assert not q.room_for(1)
    q.delete([r.id for r in q.peek(0, 1)])
    assert q.room_for(100)
    q.close()


def test_disk_full_is_queue_full_and_no_corruption(tmp_path: Path) -> None:
    """A size-capped database (max_page_count) stands in for a full file system."""
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 10**9, max_page_count=40)
    stored = 0
    with pytest.raises(QueueFullError):
        for i in range(1, 1000):
            q.store([rec(i, size=1000)])
            stored = i
    assert stored > 10
    assert q.depth == stored and q.high_seq("d1") == stored
    # after deleting some rows, storing works again
    q.delete([r.id for r in q.peek(0, 20)])
    q.store([rec(stored + 1, size=1000)])
    q.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*) FROM records").fetchone() == (stored - 20 + 1,)
    conn.close()


def test_corrupt_database_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 1_000_000)
    q.store([rec(i, size=3000) for i in range(1, 50)])
    q.close()
    data = bytearray(path.read_bytes())
    data[4096 : 4096 * 3] = b"\xff" * 8192  # smash b-tree pages
    path.write_bytes(bytes(data))
    q = Queue.open(path, 1_000_000)
    assert q.moved_aside is not None
    assert q.moved_aside.name.startswith("q.sqlite3.corrupt-")
    assert q.moved_aside.read_bytes() == bytes(data)  # kept as it was, for recovery
    assert q.depth == 0
    q.store([rec(1)])
    q.close()


def test_not_a_database_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    q = Queue.open(path, 1_000_000)
    assert q.moved_aside is not None and q.moved_aside.exists()
    q.close()


def test_unreadable_database_is_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    Queue.open(path, 1_000_000).close()
    conn = sqlite3.connect(path)
    conn.execute("BEGIN EXCLUSIVE")  # another process holds it: locked, not corrupt
    try:
        with pytest.raises(sqlite3.OperationalError):
            q = Queue.open(path, 1_000_000)
            q.conn.execute("PRAGMA busy_timeout=0")
            q.store([rec(1)])
    finally:
        conn.rollback()
        conn.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []


def test_queue_stats_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gwsupport import write_config
    from support import REPO

    cfg = write_config(tmp_path / "gw.toml")
    q = Queue.open(tmp_path / "state" / "queue.sqlite3", 1_000_000)
    q.store([rec(1), rec(2), rec(7, "d2")])
    q.close()
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "queue", "stats", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(
        f"queue {tmp_path / 'state' / 'queue.sqlite3'}: 3 records, {3 * (100 + ROW_OVERHEAD)} "
        "bytes (max 4000000), oldest "
    )
    assert lines[1:] == [
        "  d1                       queued 2  high_seq 2",
        "  d2                       queued 1  high_seq 7",
    ]
