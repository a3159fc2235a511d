"""The durable record queue: SQLite, WAL, synchronous=FULL, group commit, bounded.

Not thread-safe: call it from one thread at a time. In the agent that is the store's
single worker thread (gateway/store.py), which also keeps the loop-side copies of the
counters from what `store()` and `delete()` return. A record is written before its ACK
goes out and deleted only after the broker's PUBACK.

One group commit is one row of `batches` (issue 17, what the SD card is written for):
the commit's records CBOR-encoded and zlib-compressed in one BLOB (BATCH_FORMAT), with a
summary beside it: per (device, key id), the count and the lowest and highest seq. A
record's id is `batch id << BATCH_SHIFT | its index`, so ids grow in storage order as the
uplink's cursor needs. A batch row is deleted once every record of it was PUBACKed; which
records of a partly delivered batch were is written in the same delete transaction
(table `delivered`). Rows of the per-record table of older versions (`records`) are
still read, published and deleted as before, ahead of every batch, and never written.

Replay state is the highest seq stored per (device, key id): a device re-keyed by
`citysense-provision enroll --new-key` starts afresh under its new key. Rows from the
per-device table of older versions (`devices`) are kept as key id "*" and belong to
whichever key the device stores under first after the upgrade. It is what makes a
duplicate impossible: `store()` refuses (sqlite3.IntegrityError, nothing stored) a record
whose seq is not above its (device, key)'s stored high, or one that appears twice in a
batch. (Before batches, a UNIQUE (device_id, seq) index did; its leaves were a quarter of
the pages every commit wrote.) On disk it is the table `replay` as of batch `replay_upto`
plus the summaries of the batches after it, which `open()` folds in; the table is
rewritten in every delete transaction and at least every REPLAY_EVERY batches (see there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cbor2

log = logging.getLogger("citysense.queue")

ROW_OVERHEAD = 64
"""Bytes counted per record on top of its bytes (keys, timestamps, its share of the row)."""


def counted(data: bytes) -> int:
    """What a record of `data` counts against the queue's `max_bytes`."""
    return len(data) + ROW_OVERHEAD


MAX_SEQ = 2**63 - 1
"""The largest seq the queue can store (SQLite INTEGER is a signed 64-bit integer). Seqs
start at Unix ms (~2**41) at enrollment, so a genuine node stays far below it; the
pipeline NACKs a higher one `malformed` before it could fail a group commit."""

RESERVE_BYTES = 256 * 1024
"""Disk space held back for deletes, as a file next to the database (`queue.reserve`).
A delete writes too (WAL frames), so on a disk filled by inserts the deletion of
delivered records would fail and the queue could never shrink. When SQLite reports
SQLITE_FULL on a delete, the reserve is released and the delete retried in small chunks
(appended to the WAL: a checkpoint first would spend the space on the file, see
wal_pages()); once a delete has gone through, the WAL is checkpointed and truncated and
the reserve taken back (tried at most every RESERVE_RETRY_S). 256 KiB is many times what
a delete writes (a few pages per batch row)."""
RESERVE_RETRY_S = 5.0
PAGE_SIZE = 512
"""SQLite page size of the queue file. Every commit writes each page it dirtied to the
WAL (and, at a checkpoint, to the file): a batch's BLOB fills its pages, and the pages
that only change (the batches' leaf, the replay leaf, page 1, the freelist) cost a whole
page each, so a smaller page writes less per commit: 932 B per record with 512-byte
pages, 1,013 with 1 KiB, 1,332 with 2 KiB, at 20 records of ~460 bytes per commit
(bench/bench_disk.py). A file made with another page size (every queue before this) is
rebuilt with this one when it is opened and holds at most MIGRATE_MAX_BYTES (VACUUM: the
same rows, ids and replay state); a bigger one keeps its page size until a later start
finds it smaller."""
MIGRATE_MAX_BYTES = 64 * 1024 * 1024
SECURE_DELETE = "FAST"
"""`PRAGMA secure_delete` of the connection. Debian's SQLite is built with it ON: a delete
overwrites the deleted rows with zeros, i.e. writes every page they were on once more
(and every freed page) through the WAL. FAST zeroes them only in pages the delete writes
anyway: 1.36 KB written per record against 1.93 KB at 20 per commit (bench/bench_disk.py,
per-record rows). A delivered record's bytes may stay in a free page until it is reused;
they were published to the broker already, and the queue holds them in plain text while
queued anyway."""
WAL_CHECKPOINT_PAGES = 8192
"""`PRAGMA wal_autocheckpoint` of the connection (SQLite's default is 1000 pages). A
checkpoint copies the newest version of every page in the WAL into the file. The queue's
pages are few and hot (a delivered batch's pages are freed and reused a second later,
the leaves rewritten at every commit), so a longer WAL copies each of them once for many
more commits. The WAL file then grows to about 4 MiB of 512-byte pages (on disk next to
the queue, not counted in `max_bytes`); it is truncated at close. Every commit is still
fsync'd in the WAL before it returns, and a kill -9 or power cut replays the WAL at the
next open as before."""
BATCH_SHIFT = 12
"""A record's id is `batch id << BATCH_SHIFT | index`: at most 4096 records per batch row
(a longer `store()` writes several rows in its one transaction)."""
_BATCH_MAX = 1 << BATCH_SHIFT
CONTAINS_SCAN_BATCHES = 512
"""`contains()` reads the summaries of at most this many batches, newest first (a device's
seqs grow with the batch id, so it stops at the first batch below the seq). The answer
only chooses between two NACK-free outcomes the node handles alike: a record it resent
that is still queued gets ACK (dup), one that is not gets NACK replay; both make it delete
the record, which the gateway holds or held. A resend older than the scan is logged as a
replay."""
_DELETE_CHUNK = 32
BATCH_FORMAT = 2
"""The first byte of a batch's data BLOB: zlib (level 1) of the CBOR array of its records,
each [summary entry, seq - the entry's lowest seq, received_ms - oldest_ms, meta, data],
so a device id and a 6-byte seq are written once per batch, not once per record (the
array is [oldest_ms, records]). A BLOB
that starts with a CBOR array instead is the format of 2026-12-03 (no compression, each
record [device, seq, received_ms, meta, data]); both are read. zlib level 1 takes ~0.1 ms
per 20-record batch here; on the comparison's records (signed SenML with text padding) it
saves ~30 % of the bytes, on random bytes nothing (zlib then stores them as they are,
5 bytes more per 16 KiB)."""
REPLAY_EVERY = 64
"""Batches stored at most between two writes of the `replay` table. Writing it in every
commit cost its leaves (2-3 pages for 20 devices) each time, ~50 B per record at 20
records per commit; the batches' summaries hold the same highs, so the table is written
with every delete (once a second while the uplink delivers) and, while nothing is
delivered (an outage), every REPLAY_EVERY batches, so that `open()` folds in at most that
many summaries plus the ones no delete has passed."""
_CACHE_BATCHES = 8
"""Decoded batches kept in memory: the uplink reads on from the middle of a batch, and
a window reaches over several."""

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
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    summary BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    batch_id INTEGER PRIMARY KEY,
    done BLOB NOT NULL
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
CREATE TABLE IF NOT EXISTS replay_upto (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    batch_id INTEGER NOT NULL
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


def fold(highs: Highs, stored: Iterable[tuple[str, str, int]]) -> Highs:
    """`highs` once records (device, key id, seq) are stored, in place: a device's
    pre-upgrade state belongs to the first key it stores under and goes."""
    for device_id, key_id, seq in stored:
        k = (device_id, key_id)
        highs[k] = max(highs.get(k, -1), seq)
        if key_id != LEGACY_KEY:
            highs.pop((device_id, LEGACY_KEY), None)
    return highs


def raised(highs: Highs, records: list[NewRecord]) -> Highs:
    """The replay state once `records` are stored (a new dict)."""
    return fold(dict(highs), ((r.device_id, r.key_id, r.seq) for r in records))


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


Summary = dict[tuple[str, str | None], list[int]]
"""A batch's records by (device id, key id) -> [count, lowest seq, highest seq], in the
order of their first record. The key id is None in a summary of the format of 2026-12-03
(it had none: those batches' replay state was written with them)."""


def summarize(stored: Iterable[tuple[str, str | None, int]]) -> Summary:
    """The summary of records given as (device id, key id, seq)."""
    summary: Summary = {}
    for device_id, key_id, seq in stored:
        s = summary.get((device_id, key_id))
        if s is None:
            summary[(device_id, key_id)] = [1, seq, seq]
        else:
            s[0] += 1
            s[1] = min(s[1], seq)
            s[2] = max(s[2], seq)
    return summary


def per_device(summary: Summary) -> dict[str, list[int]]:
    """device id -> [count, lowest seq, highest seq] over all its keys."""
    out: dict[str, list[int]] = {}
    for (device_id, _), (n, lo, hi) in summary.items():
        p = out.get(device_id)
        if p is None:
            out[device_id] = [n, lo, hi]
        else:
            p[0], p[1], p[2] = p[0] + n, min(p[1], lo), max(p[2], hi)
    return out


def encode_batch(records: list[NewRecord]) -> tuple[bytes, bytes, int]:
    """(data, summary, oldest_ms) of a batch row, in BATCH_FORMAT. The summary is a CBOR
    array of [device, key id, count, lowest seq, highest - lowest]."""
    summary = summarize((r.device_id, r.key_id, r.seq) for r in records)
    entry = {k: (i, s[1]) for i, (k, s) in enumerate(summary.items())}
    oldest = min(r.received_ms for r in records)
    items = []
    for r in records:
        i, lo = entry[(r.device_id, r.key_id)]
        items.append([i, r.seq - lo, r.received_ms - oldest, r.meta, r.data])
    data = bytes([BATCH_FORMAT]) + zlib.compress(cbor2.dumps([oldest, items]), 1)
    entries = [[d, k, n, lo, hi - lo] for (d, k), (n, lo, hi) in summary.items()]
    return data, cbor2.dumps(entries), oldest


def decode_batch(batch_id: int, data: bytes, summary: bytes) -> list[QueuedRecord]:
    """The records of a batch row (its data and summary BLOBs, either format); a
    malformed one raises QueueCorruptError."""
    base = batch_id << BATCH_SHIFT
    try:
        if data[:1] != bytes([BATCH_FORMAT]):  # the format of 2026-12-03
            return [
                QueuedRecord(base + i, str(d), int(s), int(ms), bytes(b), m)
                for i, (d, s, ms, m, b) in enumerate(cbor2.loads(data))
            ]
        entries = list(decode_summary(summary).items())
        oldest, items = cbor2.loads(zlib.decompress(data[1:]))
        out = []
        for i, (e, ds, dms, m, b) in enumerate(items):
            (device_id, _), (_, lo, _) = entries[e]
            out.append(QueuedRecord(base + i, device_id, lo + ds, oldest + dms, bytes(b), m))
        return out
    except (ValueError, TypeError, IndexError, zlib.error, cbor2.CBORDecodeError) as exc:
        raise QueueCorruptError(f"batch {batch_id}: {exc}") from exc


def decode_summary(blob: bytes) -> Summary:
    """A summary of either format (see Summary); a malformed one raises QueueCorruptError."""
    try:
        out = cbor2.loads(blob)
        if isinstance(out, dict):  # the format of 2026-12-03: device -> [n, lo, hi]
            return {(str(d), None): [int(n), int(lo), int(hi)] for d, (n, lo, hi) in out.items()}
        return {
            (str(d), str(k)): [int(n), int(lo), int(lo) + int(span)] for d, k, n, lo, span in out
        }
    except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
        raise QueueCorruptError(f"batch summary: {exc}") from exc


@dataclass(slots=True)
class _Open:
    """A batch the uplink has read: its records' counted sizes and which were delivered."""

    sizes: list[int]
    delivered: set[int]


class Queue:
    def __init__(self, conn: sqlite3.Connection, path: Path, max_bytes: int) -> None:
        self.conn = conn
        self.path = path
        self.max_bytes = max_bytes
        self.moved_aside: Path | None = None
        self.reserve = Reserve(path.with_name(path.stem + ".reserve"), 0)
        self.reserve_used = 0
        self._reserve_tried = float("-inf")
        self._saved: Highs = {(d, k): s for d, k, s in _replay_rows(conn)}
        self._saved_upto = _replay_upto(conn)
        self._high = _folded(
            self._saved,
            (
                blob
                for (blob,) in conn.execute(
                    "SELECT summary FROM batches WHERE id > ? ORDER BY id", (self._saved_upto,)
                )
            ),
        )
        depth, size, top = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(id), 0) FROM records"
        ).fetchone()
        self.legacy = int(depth)  # rows left in the table of older versions
        self._legacy_top = int(top)  # its highest id: every batch's record ids are above
        n, size_b, last = conn.execute(
            "SELECT coalesce(sum(n), 0), coalesce(sum(bytes), 0), coalesce(max(id), 0) FROM batches"
        ).fetchone()
        self.depth = int(depth) + int(n)
        self.bytes = int(size) + ROW_OVERHEAD * int(depth) + int(size_b)
        # never below an id handed out before in this process (a reused id would be
        # skipped by the uplink's cursor), and above every id of the legacy table
        # and above `replay_upto` (the summaries of batches at or below it are not folded
        # into the replay state at open: a new batch there would be forgotten)
        self._next_batch = max(int(last), self._saved_upto, (int(top) >> BATCH_SHIFT)) + 1
        self._open: dict[int, _Open] = {}
        self._cached: dict[int, list[QueuedRecord]] = {}  # batch id -> records, oldest first
        for batch_id, summary, data, done in _delivered_rows(conn):
            sizes = [counted(r.data) for r in decode_batch(batch_id, data, summary)]
            self._open[batch_id] = _Open(sizes, done)
            self.depth -= len(done)
            self.bytes -= sum(sizes[i] for i in done if i < len(sizes))

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
        H would let a resent queued record be stored twice). Returns old -> new."""
        queued = self._queued_max(device_id)
        old = {k: s for (d, k), s in self._high.items() if d == device_id}
        high = {k: s for k, s in self._high.items() if k[0] != device_id}
        if queued is not None:
            for key in old or {LEGACY_KEY: 0}:
                high[(device_id, key)] = queued
        with self.conn:
            self._save_replay(high, self._next_batch - 1)
        self._saved_replay(high, self._next_batch - 1)
        self._high = high
        return {k: v for k, v in old.items()} | {"queued_max": queued}

    def _queued_max(self, device_id: str) -> int | None:
        """The device's highest seq still queued (of a partly delivered batch, what is
        left of it: a reset after a poisoned seq went up goes below it). open() folds no
        such batch into the replay state again: reset_replay() writes the table as of the
        newest batch."""
        (top,) = self.conn.execute(
            "SELECT max(seq) FROM records WHERE device_id = ?", (device_id,)
        ).fetchone()
        seqs = [] if top is None else [int(top)]
        for batch_id, blob in self.conn.execute("SELECT id, summary FROM batches"):
            s = per_device(decode_summary(blob)).get(device_id)
            if s is None:
                continue
            o = self._open.get(batch_id)
            if o is None or not o.delivered:
                seqs.append(s[2])
            else:  # partly delivered: what is left of it
                seqs += [
                    r.seq
                    for r in self._batch(batch_id)
                    if r.device_id == device_id and not self._delivered(r.id)
                ]
        return max(seqs, default=None)

    def _save_replay(self, high: Highs, upto: int) -> None:
        """Write the replay state `high`, as of batch `upto` (the newest), in the caller's
        transaction (see REPLAY_EVERY); what changed since the last write only."""
        self.conn.executemany(
            "INSERT INTO replay (device_id, key_id, high_seq) VALUES (?, ?, ?) "
            "ON CONFLICT(device_id, key_id) DO UPDATE SET high_seq = excluded.high_seq",
            [(d, k, v) for (d, k), v in high.items() if self._saved.get((d, k)) != v],
        )
        self.conn.executemany(
            "DELETE FROM replay WHERE device_id = ? AND key_id = ?",
            [k for k in self._saved if k not in high],
        )
        if upto != self._saved_upto:
            self.conn.execute(
                "INSERT OR REPLACE INTO replay_upto (id, batch_id) VALUES (0, ?)", (upto,)
            )

    def _saved_replay(self, high: Highs, upto: int) -> None:
        """After the commit that _save_replay() wrote in."""
        self._saved = dict(high)
        self._saved_upto = upto

    def contains(self, device_id: str, seq: int) -> bool:
        """Whether the device's record `seq` is still queued (see CONTAINS_SCAN_BATCHES)."""
        if self.legacy:
            row = self.conn.execute(
                "SELECT 1 FROM records WHERE device_id = ? AND seq = ?", (device_id, seq)
            ).fetchone()
            if row is not None:
                return True
        rows = self.conn.execute(
            "SELECT id, summary FROM batches ORDER BY id DESC LIMIT ?", (CONTAINS_SCAN_BATCHES,)
        )
        for batch_id, blob in rows:
            s = per_device(decode_summary(blob)).get(device_id)
            if s is None or s[2] < seq:
                if s is not None:
                    return False  # older batches hold only lower seqs of this device
                continue
            if s[1] <= seq:
                return any(
                    r.device_id == device_id and r.seq == seq and not self._delivered(r.id)
                    for r in self._batch(batch_id)
                )
        return False

    def room_for(self, nbytes: int) -> bool:
        return self.bytes + nbytes + ROW_OVERHEAD <= self.max_bytes

    def store(self, records: list[NewRecord]) -> tuple[int, int]:
        """Write all records in one transaction (one batch row per BATCH_SHIFT records)
        and commit (fsync) it; returns (rows, counted bytes) added.

        Raises sqlite3.IntegrityError (a record not above its stored high, or twice in the
        batch: nothing stored), QueueFullError (disk full, nothing stored) or
        QueueCorruptError.
        """
        if not records:
            return 0, 0
        seen: set[tuple[str, int]] = set()
        for r in records:
            top = high_of(self._high, r.device_id, r.key_id)
            if (top is not None and r.seq <= top) or (r.device_id, r.seq) in seen:
                raise sqlite3.IntegrityError(
                    f"record {r.device_id!r} seq {r.seq} is already stored (replay state"
                    f" {top}): batch not stored"
                )
            seen.add((r.device_id, r.seq))
        high = raised(self._high, records)
        first = self._next_batch
        rows: list[tuple[int, int, int, int, bytes, bytes]] = []
        for i in range(0, len(records), _BATCH_MAX):
            part = records[i : i + _BATCH_MAX]
            data, summary, oldest = encode_batch(part)
            size = sum(counted(r.data) for r in part)
            rows.append((first + len(rows), len(part), size, oldest, summary, data))
        last = first + len(rows) - 1
        save = last - self._saved_upto >= REPLAY_EVERY
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO batches (id, n, bytes, oldest_ms, summary, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if save:
                    self._save_replay(high, last)
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise QueueFullError(f"disk full: {exc}") from exc
            raise
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise QueueCorruptError(str(exc)) from exc
        self._next_batch = last + 1
        self._high = high
        if save:
            self._saved_replay(high, last)
        added = sum(r[2] for r in rows)
        self.depth += len(records)
        self.bytes += added
        return len(records), added

    # -- uplink side --------------------------------------------------------------
    def peek(self, after_id: int, limit: int) -> list[QueuedRecord]:
        """Up to `limit` queued records with an id above `after_id`, in id order."""
        out: list[QueuedRecord] = []
        if self.legacy:
            rows = self.conn.execute(
                "SELECT id, device_id, seq, received_ms, data, meta FROM records "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            out = [QueuedRecord(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]
        start = after_id >> BATCH_SHIFT
        o = self._open.get(start)
        if o is not None and (after_id & (_BATCH_MAX - 1)) >= len(o.sizes) - 1:
            start += 1  # the uplink's cursor is at the end of a batch: nothing left in it
        while len(out) < limit:
            # one batch per query: the uplink's next peek starts where this one ended, so
            # reading further batches' BLOBs ahead would mostly be thrown away
            row = self.conn.execute(
                "SELECT id, summary, data FROM batches WHERE id >= ? ORDER BY id LIMIT 1",
                (start,),
            ).fetchone()
            if row is None:
                break
            batch_id = int(row[0])
            for r in self._decoded(batch_id, row[2], row[1]):
                if r.id > after_id and not self._delivered(r.id):
                    out.append(r)
            start = batch_id + 1
        return out[:limit]

    def _batch(self, batch_id: int) -> list[QueuedRecord]:
        """A batch's records (none if it is gone), through the cache of `_decoded`."""
        records = self._cached.get(batch_id)
        if records is not None:
            return records
        row = self.conn.execute(
            "SELECT data, summary FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        return [] if row is None else self._decoded(batch_id, row[0], row[1])

    def _decoded(self, batch_id: int, data: bytes, summary: bytes) -> list[QueuedRecord]:
        """The records of the batch row `batch_id` (its BLOBs), decoded once while it is
        among the last _CACHE_BATCHES read, and its entry in `_open` for delete()."""
        records = self._cached.get(batch_id)
        if records is None:
            records = decode_batch(batch_id, data, summary)
            self._cached[batch_id] = records
            if len(self._cached) > _CACHE_BATCHES:
                del self._cached[next(iter(self._cached))]
        if records and batch_id not in self._open:
            self._open[batch_id] = _Open([counted(r.data) for r in records], set())
        return records

    def _delivered(self, record_id: int) -> bool:
        o = self._open.get(record_id >> BATCH_SHIFT)
        return o is not None and (record_id & (_BATCH_MAX - 1)) in o.delivered

    def delete(self, ids: list[int]) -> tuple[int, int]:
        """Delete delivered records (ids not present are ignored, so a retry is harmless);
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
        legacy = [i for i in ids if i <= self._legacy_top]
        marks: dict[int, set[int]] = {}
        for i in ids:
            if i > self._legacy_top:
                marks.setdefault(i >> BATCH_SHIFT, set()).add(i & (_BATCH_MAX - 1))
        plan: list[tuple[int, _Open, set[int]]] = []
        for batch_id, idx in marks.items():
            o = self._open.get(batch_id)
            if o is None:
                self._batch(batch_id)  # read it once (a delete without a peek: tests)
                o = self._open.get(batch_id)
                if o is None:
                    continue  # deleted already
            new = {i for i in idx if i < len(o.sizes)} - o.delivered
            plan.append((batch_id, o, new))
        done = [b for b, o, new in plan if len(o.delivered) + len(new) == len(o.sizes)]
        with self.conn:
            rows = nbytes = 0
            if legacy:
                n, size = self.conn.execute(
                    f"SELECT count(*), coalesce(sum(length(data)), 0) FROM records "
                    f"WHERE id IN ({','.join('?' * len(legacy))})",
                    legacy,
                ).fetchone()
                self.conn.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in legacy])
                rows, nbytes = int(n), int(size) + ROW_OVERHEAD * int(n)
            self.conn.executemany("DELETE FROM batches WHERE id = ?", [(b,) for b in done])
            self.conn.executemany("DELETE FROM delivered WHERE batch_id = ?", [(b,) for b in done])
            self.conn.executemany(
                "INSERT OR REPLACE INTO delivered (batch_id, done) VALUES (?, ?)",
                [
                    (b, cbor2.dumps(sorted(o.delivered | new)))
                    for b, o, new in plan
                    if new and b not in done
                ],
            )
            self._save_replay(self._high, self._next_batch - 1)
        self._saved_replay(self._high, self._next_batch - 1)
        self.legacy -= rows
        for _, o, new in plan:
            rows += len(new)
            nbytes += sum(o.sizes[i] for i in new)
            o.delivered |= new
        for batch_id in done:
            del self._open[batch_id]
            self._cached.pop(batch_id, None)
        self.depth -= rows
        self.bytes -= nbytes
        return rows, nbytes

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
        # no checkpoint first: on a full disk it grows the file until the disk is full
        # again (it writes every page the WAL holds) and the delete then fails too
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
        """Receive time of the oldest queued record (of a partly delivered batch: its
        oldest record, delivered or not)."""
        legacy = (
            self.conn.execute("SELECT min(received_ms) FROM records").fetchone()[0]
            if self.legacy
            else None
        )
        row = self.conn.execute("SELECT oldest_ms FROM batches ORDER BY id LIMIT 1").fetchone()
        found = [int(v) for v in (legacy, row[0] if row else None) if v is not None]
        return min(found) if found else None

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
        """(device, seq) of every queued record, in id order."""
        return [(r.device_id, r.seq) for r in self.peek(0, 2**62)]


def wal_pages(path: Path, page_size: int) -> int:
    """The WAL's checkpoint size: WAL_CHECKPOINT_PAGES, but never more than an eighth of
    the file system's free space at open, and so at most what the delete reserve
    (RESERVE_BYTES) gives back on a small disk. A checkpoint writes every page of the WAL
    into the file; on a disk that filled up while the WAL was longer than the space the
    reserve frees, it could never complete and the WAL never be reused."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return WAL_CHECKPOINT_PAGES
    return max(64, min(WAL_CHECKPOINT_PAGES, st.f_bavail * st.f_frsize // 8 // page_size))


def _connect(path: Path, max_page_count: int | None, page_size: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    try:
        conn.execute(f"PRAGMA page_size={int(page_size)}")  # a new file only
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA secure_delete={SECURE_DELETE}")
        conn.execute(f"PRAGMA wal_autocheckpoint={wal_pages(path, page_size)}")
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
    """Queue figures for `status`/`queue stats` without disturbing the running agent.
    A batch the agent has partly delivered counts whole (the file does not say which of
    its records were PUBACKed; a restart would publish them again)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        depth, size, oldest = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0), min(received_ms) FROM records"
        ).fetchone()
        per: dict[str, list[int]] = {
            d: [n, lo, hi]
            for d, n, lo, hi in conn.execute(
                "SELECT device_id, count(*), min(seq), max(seq) FROM records GROUP BY device_id"
            )
        }
        depth, size = int(depth), int(size) + ROW_OVERHEAD * int(depth)
        partial = {batch_id: (data, done) for batch_id, _, data, done in _delivered_rows(conn)}
        batches = _batch_rows(conn)
        for batch_id, n, batch_bytes, first, blob in batches:
            oldest = first if oldest is None else min(oldest, first)
            if batch_id in partial:
                data, done = partial[batch_id]
                left = [
                    r
                    for r in decode_batch(batch_id, data, blob)
                    if r.id & (_BATCH_MAX - 1) not in done
                ]
                depth += len(left)
                size += sum(counted(r.data) for r in left)
                mine = per_device(summarize((r.device_id, None, r.seq) for r in left))
            else:
                depth, size = depth + n, size + batch_bytes
                mine = per_device(decode_summary(blob))
            for d, (count, lo, hi) in mine.items():
                p = per.setdefault(d, [0, lo, hi])
                p[0], p[1], p[2] = p[0] + count, min(p[1], lo), max(p[2], hi)
        saved = {(d, k): s for d, k, s in _replay_rows(conn)}
        upto = _replay_upto(conn)
        highs: dict[str, int] = {}
        keys: dict[str, dict[str, int]] = {}
        for (d, k), s in _folded(saved, (b for i, _, _, _, b in batches if i > upto)).items():
            highs[d] = max(highs.get(d, s), s)
            keys.setdefault(d, {})[k] = s
    finally:
        conn.close()
    return {
        "depth": depth,
        "bytes": size,
        "oldest_age_s": None if oldest is None else round(time.time() - oldest / 1000, 3),
        "devices": {
            d: {
                "queued": n,
                "min_seq": lo,
                "max_seq": hi,
                "high_seq": highs.get(d),
                "keys": keys.get(d, {}),
            }
            for d, (n, lo, hi) in sorted(per.items())
        }
        | {
            d: {"queued": 0, "high_seq": h, "keys": keys.get(d, {})}
            for d, h in highs.items()
            if d not in per
        },
    }


def _batch_rows(conn: sqlite3.Connection) -> list[tuple[int, int, int, int, bytes]]:
    """(id, n, counted bytes, oldest_ms, summary) of every batch; none in a file that only
    an older version has written."""
    try:
        return list(
            conn.execute("SELECT id, n, bytes, oldest_ms, summary FROM batches ORDER BY id")
        )
    except sqlite3.OperationalError:
        return []


def _delivered_rows(conn: sqlite3.Connection) -> list[tuple[int, bytes, bytes, set[int]]]:
    """(batch id, summary, data, delivered indices) of every partly delivered batch."""
    try:
        rows = list(
            conn.execute(
                "SELECT b.id, b.summary, b.data, d.done "
                "FROM delivered d JOIN batches b ON b.id = d.batch_id"
            )
        )
    except sqlite3.OperationalError:
        return []
    return [(int(i), summary, data, _done_set(done)) for i, summary, data, done in rows]


def _replay_upto(conn: sqlite3.Connection) -> int:
    """The batch id the `replay` table is written as of (0: none, or a file of an older
    version, whose batches' replay state was written with them)."""
    try:
        row = conn.execute("SELECT batch_id FROM replay_upto WHERE id = 0").fetchone()
    except sqlite3.OperationalError:
        return 0
    return 0 if row is None else int(row[0])


def _folded(saved: Highs, summaries: Iterable[bytes]) -> Highs:
    """The replay state: the `replay` table's rows (`saved`) with the summaries of the
    batches after `replay_upto`, in storage order, folded in (see REPLAY_EVERY)."""
    high = dict(saved)
    for blob in summaries:
        summary = decode_summary(blob).items()
        fold(high, ((d, k, hi) for (d, k), (_, _, hi) in summary if k is not None))
    return high


def _done_set(blob: bytes) -> set[int]:
    try:
        return {int(i) for i in cbor2.loads(blob)}
    except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
        raise QueueCorruptError(f"delivered marks: {exc}") from exc


def stored_keys(path: Path) -> list[tuple[str, int]]:
    """(device, seq) of every queued record in a queue file, in id order (for tests and
    recovery)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        out = [
            (d, int(s)) for d, s in conn.execute("SELECT device_id, seq FROM records ORDER BY id")
        ]
        try:
            batches = list(conn.execute("SELECT id, data, summary FROM batches ORDER BY id"))
        except sqlite3.OperationalError:
            batches = []
        done = {i: d for i, _, _, d in _delivered_rows(conn)}
    finally:
        conn.close()
    for batch_id, data, summary in batches:
        gone = done.get(batch_id, set())
        out += [
            (r.device_id, r.seq)
            for r in decode_batch(batch_id, data, summary)
            if r.id & (_BATCH_MAX - 1) not in gone
        ]
    return out


def _replay_rows(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(device, key id, high) rows; a file no new version has opened yet has only the
    per-device table (its rows count as LEGACY_KEY)."""
    try:
        return list(conn.execute("SELECT device_id, key_id, high_seq FROM replay"))
    except sqlite3.OperationalError:
        return [
            (d, LEGACY_KEY, s) for d, s in conn.execute("SELECT device_id, high_seq FROM devices")
        ]
