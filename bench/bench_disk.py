"""What the gateway writes to its disk (SD-card wear), from /proc/<pid>/io write_bytes.

    python bench/bench_disk.py [--idle 20] [--records 4000] [--devices 20]

Prints:
- an idle agent (one broker connected, one port open, no node sending): bytes written per
  second and per day, and how many of them the status file accounts for (its size times
  the rewrites counted by its inode changing (atomic rename), sampled every 50 ms);
- the queue alone (this process, no agent): bytes written per record stored and deleted,
  at several group-commit batch sizes, each record committed (fsync'd) before the next
  batch, as the committer does;
- the floor an append-only log would have: records appended and fdatasync'd per commit.
Every record is 400 fresh random bytes: the queue's zlib (gateway/queue.py, BATCH_FORMAT)
gains nothing on them, so these rows are its worst case (until 2026-12-04 one random body
was reused for every record, which compression would have turned into a few bytes).
Figures are for this machine's file system (ext4/overlay page granularity); compare the
rows of one run, not absolute values across machines.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "gateway")]

from gwsupport import Pty, mosquitto, start_gateway, stop, wait_log, write_config  # noqa: E402

from gateway.queue import NewRecord, Queue  # noqa: E402

DAY = 86400


def write_bytes(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/<pid>/io")


def idle_agent(tmp: Path, seconds: float) -> None:
    with mosquitto(tmp / "broker") as broker:
        cfg = write_config(tmp / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        pty = Pty(tmp / "tty0")
        log = tmp / "gw.log"
        gw = start_gateway(cfg, log)
        status = tmp / "state" / "status.json"
        try:
            wait_log(log, "event=port-open")
            wait_log(log, "event=uplink-connected")
            time.sleep(2.0)  # past the start-up writes (queue creation, reserve file)
            w0, t0 = write_bytes(gw.pid), time.monotonic()
            rewrites, sizes, last = 0, 0, status.stat().st_ino
            while time.monotonic() - t0 < seconds:
                try:
                    st = status.stat()
                except FileNotFoundError:
                    st = None
                if st is not None and st.st_ino != last:
                    rewrites, sizes, last = rewrites + 1, sizes + st.st_size, st.st_ino
                time.sleep(0.05)
            w1, t1 = write_bytes(gw.pid), time.monotonic()
        finally:
            stop(gw)
            pty.close()
    rate = (w1 - w0) / (t1 - t0)
    print(
        f"idle agent: {rate:,.0f} B/s written = {rate * DAY / 1e6:,.1f} MB/day "
        f"over {t1 - t0:.0f} s; status file rewritten {rewrites} times "
        f"({rewrites / (t1 - t0):.2f}/s, mean {sizes / max(1, rewrites):,.0f} B)"
    )


def queue_alone(
    tmp: Path, records: int, batch: int, page: int, delete_every: int, ckpt: int, secure: str
) -> float:
    """Bytes written per record: group commits of `batch`, the delivered rows deleted in
    one transaction every `delete_every` records (the uplink's flush), `page` B pages,
    a WAL checkpoint every `ckpt` pages (SQLite's default 1000), `PRAGMA secure_delete`."""
    d = tmp / f"q-{batch}-{page}-{delete_every}-{ckpt}-{secure}"
    q = Queue.open(d / "queue.sqlite3", 10**9, reserve_bytes=0, page_size=page)
    q.conn.execute(f"PRAGMA wal_autocheckpoint={ckpt}")
    q.conn.execute(f"PRAGMA secure_delete={secure}")
    w0 = write_bytes("self")
    seq = deleted = 0
    while seq < records:
        rows = [
            NewRecord(
                "esp32-bench0000001", s, int(time.time() * 1000), os.urandom(400), key_id="k1"
            )
            for s in range(seq + 1, seq + batch + 1)
        ]
        q.store(rows)
        seq += batch
        if seq - deleted >= delete_every:
            q.delete([r.id for r in q.peek(0, seq - deleted)])
            deleted = seq
    w1 = write_bytes("self")
    q.close()
    return (w1 - w0) / seq


def queue_devices(tmp: Path, records: int, devices: int, every: int, ckpt: int | None) -> float:
    """Bytes written per record in the comparison's steady state: commits of one record
    from each of `devices` devices (their seqs far apart, as enrolled nodes' are), all but
    the newest commit's rows deleted in one transaction every `every` records; `ckpt`
    pages of WAL per checkpoint (None: the queue's own setting). Measured after a warm-up
    of `records` records, so the file and its free pages are at their steady size."""
    d = tmp / f"qd-{devices}-{every}-{ckpt}"
    q = Queue.open(d / "queue.sqlite3", 10**9, reserve_bytes=0)
    if ckpt is not None:
        q.conn.execute(f"PRAGMA wal_autocheckpoint={ckpt}")
    names = [f"esp32-bench{i:07d}" for i in range(devices)]
    base = [1_764_000_000_000 + i * 7_777_777 for i in range(devices)]
    seq = stored = w0 = 0
    while stored < 2 * records:
        if stored == records:
            w0 = write_bytes("self")
        now = int(time.time() * 1000)
        q.store(
            [
                NewRecord(n, b + seq, now, os.urandom(400), key_id="k1")
                for n, b in zip(names, base, strict=True)
            ]
        )
        seq, stored = seq + 1, stored + devices
        if stored % every == 0:
            q.delete([r.id for r in q.peek(0, 10 * every)][:-devices])
    w1 = write_bytes("self")
    q.close()
    return (w1 - w0) / records


def append_floor(tmp: Path, records: int, batch: int) -> float:
    """Bytes written per record by an append-only file: `batch` records of 460 B (a
    400-byte record and its framing) appended and fdatasync'd per commit. The floor of a
    log-structured queue, for comparison with SQLite's rows."""
    path = tmp / f"append-{batch}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        w0 = write_bytes("self")
        for _ in range(records // batch):
            os.write(fd, os.urandom(460 * batch))
            os.fdatasync(fd)
        return (write_bytes("self") - w0) / (records // batch * batch)
    finally:
        os.close(fd)


LEVERS = [  # (commit batch, page size, delete every N records, checkpoint pages, secure_delete)
    (1, 4096, 1, 1000, "ON"),
    (4, 4096, 4, 1000, "ON"),
    (4, 4096, 200, 1000, "ON"),
    (4, 1024, 4, 1000, "ON"),
    (4, 1024, 200, 1000, "ON"),
    (4, 1024, 200, 10000, "ON"),
    (20, 4096, 200, 1000, "ON"),
    (20, 1024, 200, 1000, "ON"),
    (20, 1024, 200, 1000, "FAST"),
    (20, 1024, 200, 1000, "OFF"),
    (20, 1024, 200, 10000, "FAST"),
    (20, 1024, 200, 100000, "FAST"),
    (20, 4096, 200, 1000, "FAST"),
    (4, 1024, 200, 1000, "FAST"),
    (4, 4096, 200, 1000, "FAST"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle agent")
    ap.add_argument("--records", type=int, default=4096)
    ap.add_argument("--no-queue", action="store_true")
    ap.add_argument(
        "--devices", type=int, default=0, help="run only the N-device rows (0: the old rows)"
    )
    ap.add_argument("--no-idle", action="store_true", help="skip the idle agent")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-disk-", dir=REPO / ".cache") as d:
        if not args.no_idle:
            idle_agent(Path(d), args.idle)
        if args.devices:
            for every in (200, 100):
                for ckpt in (None, 1000, 4096, 16000):
                    per = queue_devices(Path(d), args.records, args.devices, every, ckpt)
                    print(
                        f"queue, {args.devices} devices per commit, delete every {every:>3}, "
                        f"checkpoint {'queue' if ckpt is None else ckpt:>5} pages: "
                        f"{per:,.0f} B/record"
                    )
        elif not args.no_queue:
            for batch, page, every, ckpt, secure in LEVERS:
                per = queue_alone(Path(d), args.records, batch, page, every, ckpt, secure)
                print(
                    f"queue alone: commit {batch:>2}, pages {page:>4} B, delete every "
                    f"{every:>3}, checkpoint {ckpt:>5} pages, secure_delete {secure:>4}: "
                    f"{per:,.0f} B/record"
                )
            for batch in (1, 4, 20):
                per = append_floor(Path(d), args.records, batch)
                print(f"append-only file, {batch:>2} records per fdatasync: {per:,.0f} B/record")


if __name__ == "__main__":
    main()
