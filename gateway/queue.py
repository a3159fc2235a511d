"""The durable record queue: SQLite, WAL, synchronous=FULL, group commit, bounded.

Not thread-safe; the agent drives it from one worker thread. A record's row is written
before its ACK goes out and deleted only after the broker's PUBACK. UNIQUE(device_id, seq)
makes a duplicate insert impossible even if replay bookkeeping were wrong.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("citysense.queue")

ROW_OVERHEAD = 64
"""Bytes counted per row on top of the record bytes (keys, timestamps, index)."""

MAX_SEQ = 2**63 - 1
"""The largest seq the queue can store (SQLite INTEGER is a signed 64-bit integer). Seqs
start at Unix ms (~2**41) at enrollment, so a genuine node stays far below it; the
pipeline NACKs a higher one `malformed` before it could fail a group commit."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    meta TEXT,
    data BLOB NOT NULL,
    UNIQUE (device_id, seq)
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    high_seq INTEGER NOT NULL
);
"""


class QueueFullError(Exception):
    """The queue is at its bound or the disk is full: answer NACK busy."""


class QueueCorruptError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class NewRecord:
    device_id: str
    seq: int
    received_ms: int
    data: bytes
    meta: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedRecord:
    id: int
    device_id: str
    seq: int
    received_ms: int
    data: bytes
    meta: str | None


class Queue:
    def __init__(self, conn: sqlite3.Connection, path: Path, max_bytes: int) -> None:
        self.conn = conn
        self.path = path
        self.max_bytes = max_bytes
        self.moved_aside: Path | None = None
        self._high: dict[str, int] = dict(conn.execute("SELECT device_id, high_seq FROM devices"))
        depth, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM records"
        ).fetchone()
        self.depth = int(depth)
        self.bytes = int(size) + ROW_OVERHEAD * self.depth

    # -- open / close -------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, max_bytes: int, *, max_page_count: int | None = None) -> Queue:
        """Open (or create) the queue. A corrupt database is renamed aside, not emptied."""
        path.parent.mkdir(parents=True, exist_ok=True)
        moved: Path | None = None
        try:
            conn = _connect(path, max_page_count)
        except (sqlite3.DatabaseError, QueueCorruptError) as exc:
            if not _is_corrupt(exc):
                raise  # e.g. unreadable, locked by another instance: not ours to move
            moved = move_aside(path)
            log.critical(
                "event=queue-corrupt path=%s moved_to=%s error=%s "
                "action='records in the moved file were NOT forwarded; keep it for recovery'",
                path,
                moved,
                exc,
            )
            conn = _connect(path, max_page_count)
        q = cls(conn, path, max_bytes)
        q.moved_aside = moved
        return q

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()

    # -- ingest side --------------------------------------------------------------
    def high_seq(self, device_id: str) -> int | None:
        return self._high.get(device_id)

    def contains(self, device_id: str, seq: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM records WHERE device_id = ? AND seq = ?", (device_id, seq)
        ).fetchone()
        return row is not None

    def room_for(self, nbytes: int) -> bool:
        return self.bytes + nbytes + ROW_OVERHEAD <= self.max_bytes

    def store(self, records: list[NewRecord]) -> None:
        """Insert all records in one transaction and commit (fsync) it.

        Raises QueueFullError (disk full, nothing stored) or QueueCorruptError.
        """
        if not records:
            return
        high = dict(self._high)
        for r in records:
            high[r.device_id] = max(high.get(r.device_id, -1), r.seq)
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO records (device_id, seq, received_ms, meta, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(r.device_id, r.seq, r.received_ms, r.meta, r.data) for r in records],
                )
                self.conn.executemany(
                    "INSERT INTO devices (device_id, high_seq) VALUES (?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET high_seq = excluded.high_seq",
                    [(d, high[d]) for d in {r.device_id for r in records}],
                )
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
                raise QueueFullError(f"disk full: {exc}") from exc
            raise
        except sqlite3.IntegrityError:
            raise  # a duplicate (device_id, seq): the batch rolled back
        except sqlite3.DatabaseError as exc:
            raise QueueCorruptError(str(exc)) from exc
        self._high = high
        self.depth += len(records)
        self.bytes += sum(len(r.data) + ROW_OVERHEAD for r in records)

    # -- uplink side --------------------------------------------------------------
    def peek(self, after_id: int, limit: int) -> list[QueuedRecord]:
        rows = self.conn.execute(
            "SELECT id, device_id, seq, received_ms, data, meta FROM records "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [QueuedRecord(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.conn:
            sizes = self.conn.execute(
                f"SELECT coalesce(sum(length(data)), 0), count(*) FROM records "
                f"WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchone()
            self.conn.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in ids])
        self.depth -= int(sizes[1])
        self.bytes -= int(sizes[0]) + ROW_OVERHEAD * int(sizes[1])

    def oldest_ms(self) -> int | None:
        row = self.conn.execute("SELECT min(received_ms) FROM records").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def stats(self) -> dict[str, object]:
        oldest = self.oldest_ms()
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_s": None if oldest is None else round(time.time() - oldest / 1000, 3),
            "devices": len(self._high),
        }

    def all_keys(self) -> list[tuple[str, int]]:
        return [(d, s) for d, s in self.conn.execute("SELECT device_id, seq FROM records")]


def _connect(path: Path, max_page_count: int | None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        result = conn.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise QueueCorruptError(f"quick_check: {result[0] if result else 'no answer'}")
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, QueueCorruptError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    return code is None and not isinstance(exc, sqlite3.OperationalError)


def move_aside(path: Path) -> Path:
    """Rename the database (and its -wal/-shm) to `<name>.corrupt-<UTC time>`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


def read_only_stats(path: Path) -> dict[str, object]:
    """Queue figures for `status`/`queue stats` without disturbing the running agent."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        depth, size, oldest = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0), min(received_ms) FROM records"
        ).fetchone()
        per_device = conn.execute(
            "SELECT device_id, count(*), min(seq), max(seq) FROM records GROUP BY device_id"
        ).fetchall()
        highs = dict(conn.execute("SELECT device_id, high_seq FROM devices").fetchall())
    finally:
        conn.close()
    return {
        "depth": int(depth),
        "bytes": int(size) + ROW_OVERHEAD * int(depth),
        "oldest_age_s": None if oldest is None else round(time.time() - oldest / 1000, 3),
        "devices": {
            d: {"queued": n, "min_seq": lo, "max_seq": hi, "high_seq": highs.get(d)}
            for d, n, lo, hi in per_device
        }
        | {
            d: {"queued": 0, "high_seq": h}
            for d, h in highs.items()
            if d not in {p[0] for p in per_device}
        },
    }
