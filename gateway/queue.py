"""The durable record queue: SQLite, WAL, synchronous=FULL, group commit, bounded.

Not thread-safe: call it from one thread at a time. In the agent that is the store's
single worker thread (gateway/store.py), which also keeps the loop-side copies of the
counters from what `store()` and `delete()` return. A record's row is written before its
ACK goes out and deleted only after the broker's PUBACK. UNIQUE(device_id, seq) makes a
duplicate insert impossible even if replay bookkeeping were wrong.

Replay state (table `replay`) is the highest seq stored per (device, key id): a device
re-keyed by `citysense-provision enroll --new-key` starts afresh under its new key. Rows
from the per-device table of older versions (`devices`) are kept as key id "*" and
belong to whichever key the device stores under first after the upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

RESERVE_BYTES = 256 * 1024
"""Disk space held back for deletes, as a file next to the database (`queue.reserve`).
A delete writes too (WAL frames), so on a disk filled by inserts the deletion of
delivered records would fail and the queue could never shrink. When SQLite reports
SQLITE_FULL on a delete, the reserve is released, the WAL checkpointed and the delete
retried in small chunks; once a delete has gone through, the WAL is truncated and the
reserve taken back (tried at most every RESERVE_RETRY_S). 256 KiB is several times what a
delete of 128 rows writes (~30 WAL frames of 4 KiB)."""
RESERVE_RETRY_S = 5.0
PAGE_SIZE = 1024
"""SQLite page size of the queue file. Every commit writes each page it dirtied (the
records' leaf, the (device_id, seq) index leaf, the replay row, sqlite_sequence) to the
WAL and, at a checkpoint, to the file, so a smaller page writes less per commit: 4.2 KB
per record against 7.7 KB with 4 KiB pages at 4 records per commit (bench/bench_disk.py).
A file made with another page size (every queue before this) is rebuilt with this one
when it is opened and holds at most MIGRATE_MAX_BYTES (VACUUM: the same rows, ids and
replay state); a bigger one keeps its page size until a later start finds it smaller."""
MIGRATE_MAX_BYTES = 64 * 1024 * 1024
SECURE_DELETE = "FAST"
"""`PRAGMA secure_delete` of the connection. Debian's SQLite is built with it ON: a delete
overwrites the deleted rows with zeros, i.e. writes every page they were on once more
(and every freed page) through the WAL. FAST zeroes them only in pages the delete writes
anyway: 1.36 KB written per record against 1.93 KB at 20 per commit (bench/bench_disk.py).
A delivered record's bytes may stay in a free page until it is reused; they were published
to the broker already, and the queue holds them in plain text while queued anyway."""
WAL_CHECKPOINT_PAGES = 4096
"""`PRAGMA wal_autocheckpoint` of the connection (SQLite's default is 1000 pages). A
checkpoint copies the newest version of every page in the WAL into the file. The queue's
pages are few and hot (the records' leaves are freed and reused, the index and replay
leaves rewritten at every commit), so a longer WAL copies each of them once for many more
commits: at 20 devices per commit (bench/bench_disk.py --devices 20) 1,534 B written per
record with 1000 pages, 1,422 with 4096, 1,396 with 16000. The WAL file then grows to
about 4 MiB of 1 KiB pages (on disk next to the queue, not counted in `max_bytes`); it is
truncated at close. Every commit is still fsync'd in the WAL before it returns, and a
kill -9 or power cut replays the WAL at the next open as before."""
_DELETE_CHUNK = 32

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
CREATE TABLE IF NOT EXISTS replay (
    device_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    high_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, key_id)
);
INSERT OR IGNORE INTO replay (device_id, key_id, high_seq)
    SELECT device_id, '*', high_seq FROM devices;
DELETE FROM devices;
"""
LEGACY_KEY = "*"
"""Key id of replay state carried over from the per-device table of older versions."""

Highs = dict[tuple[str, str], int]
"""Replay state: (device id, key id) -> highest stored seq."""


def high_of(highs: Highs, device_id: str, key_id: str) -> int | None:
    """Highest seq stored for the device under `key_id`, else its pre-upgrade state."""
    high = highs.get((device_id, key_id))
    return highs.get((device_id, LEGACY_KEY)) if high is None else high


def raised(highs: Highs, records: list[NewRecord]) -> tuple[Highs, set[str]]:
    """The replay state once `records` are stored, and the devices whose pre-upgrade
    state the batch consumed (it now belongs to the key they stored under)."""
    out = dict(highs)
    legacy: set[str] = set()
    for r in records:
        k = (r.device_id, r.key_id)
        out[k] = max(out.get(k, -1), r.seq)
        if r.key_id != LEGACY_KEY and out.pop((r.device_id, LEGACY_KEY), None) is not None:
            legacy.add(r.device_id)
    return out, legacy


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
    key_id: str = LEGACY_KEY


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
        self.reserve = Reserve(path.with_name(path.stem + ".reserve"), 0)
        self.reserve_used = 0
        self._reserve_tried = float("-inf")
        self._high: Highs = {
            (d, k): s for d, k, s in conn.execute("SELECT device_id, key_id, high_seq FROM replay")
        }
        depth, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM records"
        ).fetchone()
        self.depth = int(depth)
        self.bytes = int(size) + ROW_OVERHEAD * self.depth

    # -- open / close -------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: Path,
        max_bytes: int,
        *,
        max_page_count: int | None = None,
        reserve_bytes: int = RESERVE_BYTES,
        page_size: int = PAGE_SIZE,
    ) -> Queue:
        """Open (or create) the queue. A corrupt database is renamed aside, not emptied.
        The delete reserve (RESERVE_BYTES) is made now if there is room, else later."""
        path.parent.mkdir(parents=True, exist_ok=True)
        moved: Path | None = None
        try:
            conn = _connect(path, max_page_count, page_size)
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
            conn = _connect(path, max_page_count, page_size)
        q = cls(conn, path, max_bytes)
        q.moved_aside = moved
        q.reserve = Reserve(path.with_name(path.stem + ".reserve"), reserve_bytes)
        if not q.reserve.ensure():
            log.warning(
                "event=queue-reserve-missing path=%s bytes=%d action='free disk space in the "
                "state directory; deletes on a full disk may fail until then'",
                q.reserve.path,
                reserve_bytes,
            )
        return q

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()

    # -- ingest side --------------------------------------------------------------
    def high_seq(self, device_id: str, key_id: str = LEGACY_KEY) -> int | None:
        """Highest seq stored for the device under `key_id` (or its pre-upgrade state)."""
        return high_of(self._high, device_id, key_id)

    def replay_state(self) -> Highs:
        return dict(self._high)

    def reset_replay(self, device_id: str) -> dict[str, int | None]:
        """Forget the device's replay state, down to its highest still-queued seq (a lower
        H would let a resent queued record fail the UNIQUE key). Returns old -> new."""
        (queued,) = self.conn.execute(
            "SELECT max(seq) FROM records WHERE device_id = ?", (device_id,)
        ).fetchone()
        old = {k: s for (d, k), s in self._high.items() if d == device_id}
        with self.conn:
            self.conn.execute("DELETE FROM replay WHERE device_id = ?", (device_id,))
            for key in old:
                self._high.pop((device_id, key), None)
            if queued is not None:
                for key in old or {LEGACY_KEY: 0}:
                    self.conn.execute(
                        "INSERT INTO replay (device_id, key_id, high_seq) VALUES (?, ?, ?)",
                        (device_id, key, queued),
                    )
                    self._high[(device_id, key)] = int(queued)
        return {k: v for k, v in old.items()} | {"queued_max": queued}

    def contains(self, device_id: str, seq: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM records WHERE device_id = ? AND seq = ?", (device_id, seq)
        ).fetchone()
        return row is not None

    def room_for(self, nbytes: int) -> bool:
        return self.bytes + nbytes + ROW_OVERHEAD <= self.max_bytes

    def store(self, records: list[NewRecord]) -> tuple[int, int]:
        """Insert all records in one transaction and commit (fsync) it; returns (rows,
        counted bytes) added.

        Raises QueueFullError (disk full, nothing stored) or QueueCorruptError.
        """
        if not records:
            return 0, 0
        high, legacy = raised(self._high, records)
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO records (device_id, seq, received_ms, meta, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(r.device_id, r.seq, r.received_ms, r.meta, r.data) for r in records],
                )
                self.conn.executemany(
                    "INSERT INTO replay (device_id, key_id, high_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT(device_id, key_id) DO UPDATE SET high_seq = excluded.high_seq",
                    [(d, k, high[(d, k)]) for d, k in {(r.device_id, r.key_id) for r in records}],
                )
                self.conn.executemany(
                    "DELETE FROM replay WHERE device_id = ? AND key_id = ?",
                    [(d, LEGACY_KEY) for d in legacy],
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
        added = sum(len(r.data) + ROW_OVERHEAD for r in records)
        self.depth += len(records)
        self.bytes += added
        return len(records), added

    # -- uplink side --------------------------------------------------------------
    def peek(self, after_id: int, limit: int) -> list[QueuedRecord]:
        rows = self.conn.execute(
            "SELECT id, device_id, seq, received_ms, data, meta FROM records "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [QueuedRecord(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def delete(self, ids: list[int]) -> tuple[int, int]:
        """Delete delivered rows (ids not present are ignored, so a retry is harmless);
        returns (rows, counted bytes) removed. On a full disk: release the reserve and
        retry (see RESERVE_BYTES); raises QueueFullError only when even that fails."""
        if not ids:
            return 0, 0
        try:
            removed = self._delete(ids)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            removed = self._delete_on_full_disk(ids, exc)
        if not self.reserve.held:
            self._retake_reserve()
        return removed

    def _delete(self, ids: list[int]) -> tuple[int, int]:
        with self.conn:
            sizes = self.conn.execute(
                f"SELECT coalesce(sum(length(data)), 0), count(*) FROM records "
                f"WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchone()
            self.conn.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in ids])
        removed = int(sizes[0]) + ROW_OVERHEAD * int(sizes[1])
        self.depth -= int(sizes[1])
        self.bytes -= removed
        return int(sizes[1]), removed

    def _delete_on_full_disk(
        self, ids: list[int], exc: sqlite3.OperationalError
    ) -> tuple[int, int]:
        released = self.reserve.release()
        self.reserve_used += 1
        log.error(
            "event=queue-delete-disk-full rows=%d reserve_released=%s error=%s "
            "action='free disk space in the state directory; new records get NACK busy'",
            len(ids),
            released,
            exc,
        )
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(RESTART)")
        rows = nbytes = 0
        for start in range(0, len(ids), _DELETE_CHUNK):
            try:
                n, b = self._delete(ids[start : start + _DELETE_CHUNK])
            except sqlite3.OperationalError as again:
                if _is_full(again):
                    raise QueueFullError(f"disk full even for a delete: {again}") from again
                raise
            rows, nbytes = rows + n, nbytes + b
        return rows, nbytes

    def _retake_reserve(self) -> None:
        now = time.monotonic()
        if now - self._reserve_tried < RESERVE_RETRY_S:
            return
        self._reserve_tried = now
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # give the WAL's space back
        if self.reserve.ensure():
            log.info("event=queue-reserve-restored path=%s", self.reserve.path)

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
            "devices": len({d for d, _ in self._high}),
        }

    def all_keys(self) -> list[tuple[str, int]]:
        return [(d, s) for d, s in self.conn.execute("SELECT device_id, seq FROM records")]


def _connect(path: Path, max_page_count: int | None, page_size: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    try:
        conn.execute(f"PRAGMA page_size={int(page_size)}")  # a new file only
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA secure_delete={SECURE_DELETE}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        result = conn.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise QueueCorruptError(f"quick_check: {result[0] if result else 'no answer'}")
        conn.executescript(_SCHEMA)
        _set_page_size(conn, path, page_size)
    except BaseException:
        conn.close()
        raise
    return conn


def _set_page_size(conn: sqlite3.Connection, path: Path, page_size: int) -> None:
    """Rebuild a queue file made with another page size (see PAGE_SIZE). VACUUM runs in
    rollback-journal mode, as one transaction: a crash or a full disk leaves the file as it
    was (a full disk is logged and the old page size kept)."""
    (current,) = conn.execute("PRAGMA page_size").fetchone()
    if current == page_size:
        return
    size = path.stat().st_size
    if size > MIGRATE_MAX_BYTES:
        log.warning(
            "event=queue-page-size-kept path=%s page_size=%d bytes=%d "
            "detail='rebuilt with %d-byte pages at a start that finds it under %d bytes'",
            path,
            current,
            size,
            page_size,
            MIGRATE_MAX_BYTES,
        )
        return
    t0 = time.monotonic()
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        log.warning("event=queue-page-size-kept path=%s page_size=%d error=%s", path, current, exc)
    finally:
        conn.execute("PRAGMA journal_mode=WAL")
    log.info(
        "event=queue-page-size path=%s from=%d to=%d bytes=%d seconds=%.2f",
        path,
        current,
        conn.execute("PRAGMA page_size").fetchone()[0],
        size,
        time.monotonic() - t0,
    )


def _is_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class Reserve:
    """A file of `size` zero bytes that can be given back to the file system at once."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.size == 0 or self.path.stat().st_size >= self.size
        except OSError:
            return False

    def ensure(self) -> bool:
        """Make the file if it is missing or short; False (and no partial file) when the
        disk has no room for it."""
        if self.held:
            return True
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                block = bytes(64 * 1024)
                for _ in range(0, self.size, len(block)):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def release(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


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
        highs: dict[str, int] = {}
        keys: dict[str, dict[str, int]] = {}
        for d, k, s in _replay_rows(conn):
            highs[d] = max(highs.get(d, s), s)
            keys.setdefault(d, {})[k] = s
    finally:
        conn.close()
    return {
        "depth": int(depth),
        "bytes": int(size) + ROW_OVERHEAD * int(depth),
        "oldest_age_s": None if oldest is None else round(time.time() - oldest / 1000, 3),
        "devices": {
            d: {
                "queued": n,
                "min_seq": lo,
                "max_seq": hi,
                "high_seq": highs.get(d),
                "keys": keys.get(d, {}),
            }
            for d, n, lo, hi in per_device
        }
        | {
            d: {"queued": 0, "high_seq": h, "keys": keys.get(d, {})}
            for d, h in highs.items()
            if d not in {p[0] for p in per_device}
        },
    }


def _replay_rows(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(device, key id, high) rows; a file no new version has opened yet has only the
    per-device table (its rows count as LEGACY_KEY)."""
    try:
        return list(conn.execute("SELECT device_id, key_id, high_seq FROM replay"))
    except sqlite3.OperationalError:
        return [
            (d, LEGACY_KEY, s) for d, s in conn.execute("SELECT device_id, high_seq FROM devices")
        ]
