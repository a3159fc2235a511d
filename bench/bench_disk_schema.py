"""Schema and connection levers for the queue's SD-card writes, measured on plain SQLite.

    python bench/bench_disk_schema.py [--records 20000]

The comparison's steady workload (as `bench_disk.py --devices 20`): commits of one
400-byte record from each of 20 devices plus their replay rows, the PUBACKed rows (all
but the newest commit's) deleted every 200 records, 1 KiB pages, WAL, synchronous=FULL,
secure_delete=FAST; bytes written per record from /proc/self/io write_bytes after a
warm-up. Each row changes one thing against the queue's schema of 2026-12-02 (or the
combination named), to see what a change would save before building it: AUTOINCREMENT
dropped (no sqlite_sequence page per commit), locking_mode=EXCLUSIVE (no -shm pages),
the replay table WITHOUT ROWID, an integer device column in the (device, seq) index
instead of the 18-character device id, the checkpoint size and the delete interval.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Lever:
    name: str
    ckpt: int = 1000
    autoincrement: bool = True
    exclusive: bool = False
    replay_without_rowid: bool = False
    int_device: bool = False
    every: int = 200


LEVERS = [
    Lever("queue of 2026-12-02 (checkpoint 1000 pages)"),
    Lever("no AUTOINCREMENT", autoincrement=False),
    Lever("locking_mode=EXCLUSIVE", exclusive=True),
    Lever("replay WITHOUT ROWID", replay_without_rowid=True),
    Lever("integer device in the index", int_device=True),
    Lever("checkpoint 4096 pages", ckpt=4096),
    Lever("checkpoint 4096 + delete every 100", ckpt=4096, every=100),
    Lever("checkpoint 4096 + no AUTOINCREMENT", ckpt=4096, autoincrement=False),
    Lever("checkpoint 4096 + integer device", ckpt=4096, int_device=True),
    Lever(
        "checkpoint 4096 + no AUTOINCREMENT + integer device + delete every 100",
        ckpt=4096,
        autoincrement=False,
        int_device=True,
        every=100,
    ),
]


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def measure(tmp: Path, lever: Lever, records: int, devices: int = 20) -> float:
    d = Path(tempfile.mkdtemp(dir=tmp))
    conn = sqlite3.connect(d / "q.sqlite3", isolation_level="DEFERRED")
    for pragma in ("page_size=1024", "journal_mode=WAL", "synchronous=FULL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("PRAGMA secure_delete=FAST")
    conn.execute(f"PRAGMA wal_autocheckpoint={lever.ckpt}")
    if lever.exclusive:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    auto = "AUTOINCREMENT" if lever.autoincrement else ""
    device_type = "INTEGER" if lever.int_device else "TEXT"
    without = "WITHOUT ROWID" if lever.replay_without_rowid else ""
    conn.executescript(
        f"""CREATE TABLE records (id INTEGER PRIMARY KEY {auto}, device_id {device_type}
        NOT NULL, seq INTEGER NOT NULL, received_ms INTEGER NOT NULL, meta TEXT,
        data BLOB NOT NULL, UNIQUE (device_id, seq));
        CREATE TABLE replay (device_id TEXT NOT NULL, key_id TEXT NOT NULL,
        high_seq INTEGER NOT NULL, PRIMARY KEY (device_id, key_id)) {without};"""
    )
    names = [f"esp32-bench{i:07d}" for i in range(devices)]
    keys: list[object] = list(range(devices)) if lever.int_device else list(names)
    base = [1_764_000_000_000 + i * 7_777_777 for i in range(devices)]
    body = os.urandom(400)
    seq = stored = w0 = 0
    while stored < 2 * records:
        if stored == records:
            w0 = write_bytes()
        now = int(time.time() * 1000)
        with conn:
            conn.executemany(
                "INSERT INTO records (device_id, seq, received_ms, meta, data) "
                "VALUES (?, ?, ?, NULL, ?)",
                [(k, b + seq, now, body) for k, b in zip(keys, base, strict=True)],
            )
            conn.executemany(
                "INSERT INTO replay VALUES (?, 'k1', ?) ON CONFLICT (device_id, key_id) "
                "DO UPDATE SET high_seq = excluded.high_seq",
                [(n, b + seq) for n, b in zip(names, base, strict=True)],
            )
        seq, stored = seq + 1, stored + devices
        if stored % lever.every == 0:
            ids = [r[0] for r in conn.execute("SELECT id FROM records ORDER BY id")]
            with conn:
                conn.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in ids[:-devices]])
    per = (write_bytes() - w0) / records
    conn.close()
    shutil.rmtree(d)
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    args = ap.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-schema-", dir=REPO / ".cache") as tmp:
        for lever in LEVERS:
            per = measure(Path(tmp), lever, args.records)
            print(f"{lever.name}: {per:,.0f} B/record")


if __name__ == "__main__":
    main()
