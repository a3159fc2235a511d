"""Durable queue: unique rows, bound, disk full, corrupt database moved aside."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.queue import (
    PAGE_SIZE,
    ROW_OVERHEAD,
    NewRecord,
    Queue,
    QueueFullError,
    read_only_stats,
    stored_keys,
)


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
    q = Queue.open(path, 10**9, max_page_count=40 * 1024 // PAGE_SIZE)
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
    conn.close()
    assert len(stored_keys(path)) == stored - 20 + 1


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


def test_pre_upgrade_replay_state_goes_to_the_first_key_stored(tmp_path: Path) -> None:
    """Rows of the old per-device table become key "*": they bound the first key the
    device stores under after the upgrade, then belong to it (a later re-key is fresh)."""
    import sqlite3

    path = tmp_path / "q.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, high_seq INTEGER NOT NULL)")
    conn.execute("INSERT INTO devices VALUES ('d1', 500)")
    conn.commit()
    conn.close()
    q = Queue.open(path, 10**6)
    assert q.high_seq("d1", "k1") == 500  # the legacy state applies to any key at first
    q.store([NewRecord("d1", 501, 0, b"x", None, "k1")])
    assert q.replay_state() == {("d1", "k1"): 501}
    assert q.high_seq("d1", "k2") is None  # a new key after that starts afresh
    q.close()
    q = Queue.open(path, 10**6)  # and so it stays on disk
    assert q.replay_state() == {("d1", "k1"): 501}
    q.close()


def page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def old_queue(path: Path) -> list[tuple[int, str, int, bytes]]:
    """A queue file as the versions before batch rows made it (per-record rows, 4 KiB
    pages as before 1 KiB pages), with records of two devices, one under a key and one
    with pre-upgrade replay state, the first five delivered (ids do not start at 1)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL, seq INTEGER NOT NULL, received_ms INTEGER NOT NULL,
        meta TEXT, data BLOB NOT NULL, UNIQUE (device_id, seq));
        CREATE TABLE replay (device_id TEXT NOT NULL, key_id TEXT NOT NULL,
        high_seq INTEGER NOT NULL, PRIMARY KEY (device_id, key_id));"""
    )
    with conn:
        conn.executemany(
            "INSERT INTO records (device_id, seq, received_ms, meta, data) VALUES (?, ?, ?, ?, ?)",
            [("d1", s, 1_000 + s, None, bytes([s]) * 300) for s in range(1, 40)]
            + [("d2", 7, 1_007, None, bytes([7]) * 100)],
        )
        conn.execute("DELETE FROM records WHERE id <= 5")
        conn.executemany(
            "INSERT INTO replay VALUES (?, ?, ?)",
            [("d1", "k1", 39), ("d2", "*", 7), ("d3", "*", 99)],
        )
    rows = [
        (i, d, s, bytes(b))
        for i, d, s, b in conn.execute("SELECT id, device_id, seq, data FROM records ORDER BY id")
    ]
    conn.close()
    assert page_size(path) == 4096
    return rows


def test_an_old_queue_file_is_rebuilt_with_small_pages_keeping_every_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite3"
    rows = old_queue(path)
    q = Queue.open(path, 10**9)
    assert page_size(path) == PAGE_SIZE
    assert [(r.id, r.device_id, r.seq, r.data) for r in q.peek(0, 100)] == rows
    assert q.depth == 35 and q.bytes == 34 * (300 + ROW_OVERHEAD) + 100 + ROW_OVERHEAD
    assert q.replay_state() == {("d1", "k1"): 39, ("d2", "*"): 7, ("d3", "*"): 99}
    assert q.high_seq("d3", "k9") == 99  # the pre-upgrade rule still applies
    q.store([NewRecord("d1", 40, 2_000, b"x", None, "k1")])
    new = q.peek(rows[-1][0], 10)  # a batch row now, after every row of the old table
    assert [(r.device_id, r.seq) for r in new] == [("d1", 40)] and new[0].id > rows[-1][0]
    assert q.peek(0, 100)[:-1] == q.peek(0, 35)
    q.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_a_big_old_queue_file_keeps_its_pages_until_smaller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.sqlite3"
    rows = old_queue(path)
    monkeypatch.setattr("gateway.queue.MIGRATE_MAX_BYTES", 4096)
    q = Queue.open(path, 10**9)
    assert page_size(path) == 4096
    assert "event=queue-page-size-kept" in caplog.text
    assert [(r.id, r.device_id, r.seq, r.data) for r in q.peek(0, 100)] == rows
    q.close()


def test_deletes_do_not_zero_every_freed_page(tmp_path: Path) -> None:
    """secure_delete FAST, not the ON that Debian's SQLite is built with (see
    gateway/queue.py SECURE_DELETE): 2 = FAST."""
    q = Queue.open(tmp_path / "q.sqlite3", 10**9)
    assert q.conn.execute("PRAGMA secure_delete").fetchone() == (2,)
    q.close()


_KILLED_WRITER = """
import os
import sys
from pathlib import Path
from gateway.queue import NewRecord, Queue
q = Queue.open(Path(sys.argv[1]), 10**9, reserve_bytes=0)
for n in range(10**6):
    q.store([NewRecord(f"d{d}", n, 1_000 + n, os.urandom(400), None, "k1")
             for d in range(20)])
    if n % 2 == 1:
        q.delete([r.id for r in q.peek(0, 100)][:-20])
    print(n, flush=True)  # committed: the pipeline would ACK these now
"""


def test_kill_9_with_a_long_wal_keeps_every_committed_record(tmp_path: Path) -> None:
    """WAL_CHECKPOINT_PAGES: the WAL grows past SQLite's default 1000 pages before a
    checkpoint; a kill -9 there loses no committed record, and the file stays sound."""
    import signal
    import subprocess
    import sys

    from gateway.queue import WAL_CHECKPOINT_PAGES

    path = tmp_path / "q.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    wal = path.with_name(path.name + "-wal")
    last = -1
    try:
        for line in child.stdout:
            last = int(line)
            if last >= 400 or (wal.exists() and wal.stat().st_size > 1500 * 1024):
                break
    finally:  # also when the loop fails: the writer is never left running
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert 1500 * 1024 < wal.stat().st_size <= (WAL_CHECKPOINT_PAGES + 200) * 1048
    q = Queue.open(path, 10**9, reserve_bytes=0)
    assert q.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert q.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (WAL_CHECKPOINT_PAGES,)
    for d in range(20):
        assert q.high_seq(f"d{d}", "k1") >= last
        assert q.contains(f"d{d}", last)  # the newest commit is never deleted by the child
    q.close()


def test_a_commit_is_one_batch_row_and_partial_delivery_survives_a_restart(
    tmp_path: Path,
) -> None:
    """One store() is one row of `batches`; records of it PUBACKed before a restart are
    neither counted nor published again after it, and the row goes with the last one."""
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 10**9)
    q.store([rec(s, f"d{s % 3}") for s in range(1, 21)])
    q.store([rec(21, "d9")])
    assert q.conn.execute("SELECT count(*), sum(n) FROM batches").fetchone() == (2, 21)
    rows = q.peek(0, 100)
    q.delete([r.id for r in rows[:5]] + [rows[7].id])
    q.delete([rows[0].id])  # a retried delete changes nothing
    assert (q.depth, q.bytes) == (15, 15 * (100 + ROW_OVERHEAD))
    q.close()
    q = Queue.open(path, 10**9)
    assert (q.depth, q.bytes) == (15, 15 * (100 + ROW_OVERHEAD))
    left = [r for r in rows if r not in rows[:5] and r != rows[7]]
    assert q.peek(0, 100) == left
    assert q.peek(rows[5].id, 3) == left[1:4]
    assert read_only_stats(path)["depth"] == 15
    assert read_only_stats(path)["devices"]["d1"]["queued"] == 5  # of 7, 1 and 4 went
    assert stored_keys(path) == [(r.device_id, r.seq) for r in left]
    assert not q.contains("d1", 1) and q.contains("d2", 11) and not q.contains("d2", 8)
    q.delete([r.id for r in left[:-1]])
    assert q.conn.execute("SELECT count(*) FROM batches").fetchone() == (1,)
    assert q.conn.execute("SELECT count(*) FROM delivered").fetchone() == (0,)
    assert q.peek(0, 100) == left[-1:] and q.depth == 1
    q.close()


def test_old_rows_and_batches_are_read_and_deleted_together(tmp_path: Path) -> None:
    """A queue file of an older version: its rows go first, new records follow as batch
    rows, a delete may mix both, and a restart in between keeps the state."""
    path = tmp_path / "q.sqlite3"
    rows = old_queue(path)
    q = Queue.open(path, 10**9)
    q.store([NewRecord("d1", 40 + i, 2_000, b"y" * 50, None, "k1") for i in range(3)])
    every = q.peek(0, 100)
    assert [r.id for r in every[:-3]] == [r[0] for r in rows] and len(every) == 38
    q.delete([every[0].id, every[-1].id])
    q.close()
    q = Queue.open(path, 10**9)
    assert q.peek(0, 100) == every[1:-1] and q.depth == 36
    q.delete([r.id for r in every[1:-1]])
    assert q.depth == 0 and q.bytes == 0 and q.peek(0, 100) == []
    assert q.conn.execute("SELECT count(*) FROM records").fetchone() == (0,)
    assert q.high_seq("d1", "k1") == 42
    with pytest.raises(sqlite3.IntegrityError):
        q.store([NewRecord("d1", 42, 2_000, b"z", None, "k1")])  # stored before
    q.close()


def test_contains_stops_at_the_first_batch_below_the_seq(tmp_path: Path) -> None:
    q = Queue.open(tmp_path / "q.sqlite3", 10**9)
    for s in range(1, 30):
        q.store([rec(s, "d1"), rec(s, "d2")])
    assert q.contains("d1", 29) and q.contains("d2", 1)
    assert not q.contains("d3", 1)
    q.delete([r.id for r in q.peek(0, 4)])  # d1 1, d2 1, d1 2, d2 2
    assert not q.contains("d1", 2) and q.contains("d1", 3)
    q.close()


def replay_table(path: Path) -> tuple[dict[tuple[str, str], int], int | None]:
    """The `replay` rows and `replay_upto` of a queue file, as another process sees them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = {(d, k): s for d, k, s in conn.execute("SELECT * FROM replay")}
        upto = conn.execute("SELECT batch_id FROM replay_upto").fetchone()
    finally:
        conn.close()
    return rows, None if upto is None else upto[0]


_STORE_THEN_KILLED = """
import os
import signal
import sys
from pathlib import Path
from gateway.queue import NewRecord, Queue
q = Queue.open(Path(sys.argv[1]), 10**9, reserve_bytes=0)
for n in range(int(sys.argv[2])):
    q.store([NewRecord("d1", 100 + n, 1_000, b"r", None, "k1"),
             NewRecord("d2", 7_000 + n, 1_000, b"r", None, "k2")])
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no delete: the replay table is behind
"""


def killed_after(path: Path, batches: int) -> None:
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-c", _STORE_THEN_KILLED, str(path), str(batches)],
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=False,
    )


def test_replay_state_between_its_writes_survives_a_kill_9(tmp_path: Path) -> None:
    """REPLAY_EVERY: the `replay` table is not written with every commit; a kill -9 before
    it was still refuses every record stored, from the batches' summaries."""
    from gateway.queue import REPLAY_EVERY

    path = tmp_path / "q.sqlite3"
    killed_after(path, 10)
    assert replay_table(path) == ({}, None)  # nothing written to it yet
    q = Queue.open(path, 10**9)
    assert q.replay_state() == {("d1", "k1"): 109, ("d2", "k2"): 7_009}
    for stored in (
        NewRecord("d1", 109, 0, b"x", None, "k1"),
        NewRecord("d2", 7_005, 0, b"x", None, "k2"),
    ):
        with pytest.raises(sqlite3.IntegrityError):
            q.store([stored])
    assert read_only_stats(path)["devices"]["d1"]["high_seq"] == 109
    q.close()
    killed_after(tmp_path / "q2.sqlite3", REPLAY_EVERY + 5)
    rows, upto = replay_table(tmp_path / "q2.sqlite3")
    assert rows == {("d1", "k1"): 100 + REPLAY_EVERY - 1, ("d2", "k2"): 7_000 + REPLAY_EVERY - 1}
    assert upto == REPLAY_EVERY
    q = Queue.open(tmp_path / "q2.sqlite3", 10**9)
    assert q.replay_state() == {
        ("d1", "k1"): 100 + REPLAY_EVERY + 4,
        ("d2", "k2"): 7_000 + REPLAY_EVERY + 4,
    }
    q.close()


def test_batch_ids_stay_above_the_replay_tables_batch_once_all_are_delivered(
    tmp_path: Path,
) -> None:
    """Every delete writes the replay table as of the newest batch; when that took the
    last batch row, a restart must still number new batches above it, or a kill -9 before
    the next write of the table would forget their seqs (and take their resend twice)."""
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 10**9)
    for n in range(3):
        q.store([NewRecord("d1", 10 + n, 1_000, b"r", None, "k1")])
    q.delete([r.id for r in q.peek(0, 10)])
    q.close()
    assert replay_table(path) == ({("d1", "k1"): 12}, 3)
    killed_after(path, 2)  # seqs 100 and 101 in two new batches, then kill -9
    q = Queue.open(path, 10**9)
    assert q.high_seq("d1", "k1") == 101
    with pytest.raises(sqlite3.IntegrityError):
        q.store([NewRecord("d1", 100, 0, b"again", None, "k1")])
    assert stored_keys(path) == [("d1", 100), ("d2", 7_000), ("d1", 101), ("d2", 7_001)]
    q.close()


def test_reset_replay_writes_the_whole_state_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 10**9)
    q.store([NewRecord("d1", s, 1_000, b"r", None, "k1") for s in (5, 6)])
    q.store([NewRecord("d2", 70, 1_000, b"r", None, "k2")])
    q.delete([q.peek(0, 1)[0].id])  # d1 5 went: its batch is partly delivered
    q.store([NewRecord("d1", 900, 1_000, b"r", None, "k1")])
    q.delete([q.peek(0, 10)[-1].id])  # and 900, a batch of its own
    assert q.reset_replay("d1") == {"k1": 900, "queued_max": 6}
    q.close()
    q = Queue.open(path, 10**9)
    assert q.replay_state() == {("d1", "k1"): 6, ("d2", "k2"): 70}
    q.store([NewRecord("d1", 7, 1_000, b"r", None, "k1")])  # what a reset is for
    q.close()


def old_batches(path: Path) -> None:
    """A queue file as the batch rows of 2026-12-03 made it: plain CBOR records and a
    device-keyed summary, the replay state written with every batch."""
    import cbor2

    Queue.open(path, 10**9).close()  # today's schema; rows as the old version wrote them
    conn = sqlite3.connect(path)
    with conn:
        for batch_id, seqs in ((1, (1, 2)), (2, (3,))):
            data = cbor2.dumps([["d1", s, 1_000 + s, None, bytes([s]) * 100] for s in seqs])
            summary = cbor2.dumps({"d1": [len(seqs), min(seqs), max(seqs)]})
            conn.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    len(seqs),
                    len(seqs) * (100 + ROW_OVERHEAD),
                    1_000 + seqs[0],
                    summary,
                    data,
                ),
            )
        conn.execute("INSERT INTO replay VALUES ('d1', 'k1', 3)")
    conn.close()


def test_batches_of_the_first_batch_format_are_read_and_deleted(tmp_path: Path) -> None:
    from gateway.queue import BATCH_FORMAT

    path = tmp_path / "q.sqlite3"
    old_batches(path)
    q = Queue.open(path, 10**9)
    assert (q.depth, q.bytes, q.high_seq("d1", "k1")) == (3, 3 * (100 + ROW_OVERHEAD), 3)
    q.store([NewRecord("d1", 4, 1_004, bytes([4]) * 100, None, "k1")])
    rows = q.peek(0, 10)
    assert [(r.seq, r.received_ms, r.data) for r in rows] == [
        (s, 1_000 + s, bytes([s]) * 100) for s in (1, 2, 3, 4)
    ]
    assert q.contains("d1", 2) and not q.contains("d1", 5)
    assert q.conn.execute("SELECT substr(data, 1, 1) FROM batches WHERE id = 3").fetchone() == (
        bytes([BATCH_FORMAT]),
    )
    q.delete([rows[0].id, rows[3].id])
    q.close()
    assert read_only_stats(path)["devices"]["d1"] | {"keys": None} == {
        "queued": 2,
        "min_seq": 2,
        "max_seq": 3,
        "high_seq": 4,
        "keys": None,
    }
    assert stored_keys(path) == [("d1", 2), ("d1", 3)]


def test_a_batch_is_compressed_and_a_damaged_one_is_reported_corrupt(tmp_path: Path) -> None:
    """BATCH_FORMAT: zlib over the batch; random bytes cost no more than stored plainly."""
    import os

    from gateway.queue import QueueCorruptError

    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 10**9)
    q.store(
        [
            NewRecord(
                f"esp32-{d:012d}", 1_764_000_000_000 + d, 1_000, b"temp 21.5 Cel " * 28, None, "k1"
            )
            for d in range(20)
        ]
    )
    noise = [os.urandom(400) for _ in range(20)]
    q.store(
        [
            NewRecord(f"esp32-{d:012d}", 1_764_000_000_100 + d, 1_000, noise[d], None, "k1")
            for d in range(20)
        ]
    )
    (text,), (rand,) = q.conn.execute("SELECT length(data) FROM batches ORDER BY id").fetchall()
    assert text < 20 * 392 // 10 and 20 * 400 < rand < 20 * 400 + 200
    assert [r.data for r in q.peek(0, 100)[20:]] == noise
    q.conn.execute("UPDATE batches SET data = substr(data, 1, 50) WHERE id = 2")
    q.conn.commit()
    q.close()
    q = Queue.open(path, 10**9)
    with pytest.raises(QueueCorruptError, match="batch 2"):
        q.peek(0, 100)
    q.close()


def test_a_seq_stored_again_after_reset_replay_is_remembered_across_a_restart(
    tmp_path: Path,
) -> None:
    """reset_replay() writes the replay table; the next writes compare with what it wrote,
    not with what was there before, or a seq equal to the old high would never reach the
    table and a restart would take its resend twice."""
    path = tmp_path / "q.sqlite3"
    q = Queue.open(path, 10**9)
    q.store([NewRecord("d1", s, 1_000, b"r", None, "k1") for s in (5, 6)])
    q.store([NewRecord("d1", 900, 1_000, b"r", None, "k1")])
    q.delete([q.peek(0, 10)[-1].id])  # the poisoned 900 went up; the table says 900
    assert q.reset_replay("d1") == {"k1": 900, "queued_max": 6}
    q.store([NewRecord("d1", 900, 1_000, b"r", None, "k1")])  # a genuine 900 this time
    q.delete([r.id for r in q.peek(0, 10)])
    q.close()
    q = Queue.open(path, 10**9)
    assert q.high_seq("d1", "k1") == 900
    with pytest.raises(sqlite3.IntegrityError):
        q.store([NewRecord("d1", 900, 1_000, b"again", None, "k1")])
    q.close()
