"""Gateway throughput and latency, end to end: pty -> verify -> SQLite -> Mosquitto PUBACK.

    python bench/bench_gateway.py [--records 5000] [--window 64] [--rss-million]

Prints:
- raw Ed25519 verify rate of `cryptography` on this machine, measured in the same run
  (the ceiling: the gateway verifies every record once);
- records/s from the first frame written to the pty until the consumer has them all
  (broker PUBACKed and delivered), and ACK latency p50/p99 (frame written -> ACK read),
  with the node keeping up to --window records un-ACKed (like a node's send window);
- with --rss-million: the agent's RSS with 1,000,000 records queued (broker unreachable).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "gateway")]

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from gwsupport import (  # noqa: E402
    Pty,
    Subscriber,
    make_node,
    mosquitto,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import free_port  # noqa: E402

from gateway.protocol import FrameType, decode_ack, parse_sign1  # noqa: E402
from gateway.queue import NewRecord, Queue  # noqa: E402


def verify_rate(seconds: float = 2.0) -> float:
    key = Ed25519PrivateKey.generate()
    msg = b"x" * 120
    sig = key.sign(msg)
    pub = key.public_key()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            pub.verify(sig, msg)
        n += 200
    return n / (time.perf_counter() - t0)


def end_to_end(tmp: Path, records: int, window: int) -> None:
    node = make_node("esp32-bench00000001")
    frames = [node.record_frame(s) for s in range(1, records + 1)]
    # check the signed record's size once, for the printout
    size = len(parse_sign1(node.record(1)).payload)
    with mosquitto(tmp / "broker") as broker:
        metrics_port = free_port()
        cfg = write_config(
            tmp / "gw.toml",
            url=f'"mqtt://127.0.0.1:{broker.port}"',
            max_bytes='"1GB"',
            listen=f'"127.0.0.1:{metrics_port}"',
        )
        write_entry(tmp / "registry", node)
        pty = Pty(tmp / "tty0")
        sub = Subscriber(broker.port, "citysense/+/+/+/records")
        log = tmp / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=port-open")
            wait_log(log, "event=uplink-connected")
            sent_at: dict[int, float] = {}
            latency: list[float] = []
            acked = 0
            next_seq = 1
            seen = 0
            t0 = time.perf_counter()
            while acked < records:
                while next_seq <= records and next_seq - acked <= window:
                    sent_at[next_seq] = time.perf_counter()
                    pty.write(frames[next_seq - 1])
                    next_seq += 1
                pty.poll()
                now = time.perf_counter()
                for f in pty.frames[seen:]:
                    if f.type == FrameType.ACK:
                        a = decode_ack(f.body)
                        for s in range(acked + 1, a + 1):
                            latency.append(now - sent_at[s])
                        acked = max(acked, a)
                if seen == len(pty.frames):
                    time.sleep(0.0005)
                seen = len(pty.frames)
            t_acked = time.perf_counter() - t0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                published = scrape(metrics_port)["citysense_records_published_total"]
                if published >= records:
                    break
                time.sleep(0.01)
            t_puback = time.perf_counter() - t0
            while len(sub.snapshot()) < records and time.monotonic() < deadline:
                time.sleep(0.005)
            t_all = time.perf_counter() - t0
            got = len(sub.snapshot())
        finally:
            sub.close()
            stop(gw)
            pty.close()
    latency.sort()
    p = lambda q: latency[min(len(latency) - 1, int(q * len(latency)))] * 1000  # noqa: E731
    print(f"records: {records} (payload {size} B, frame {len(frames[0])} B), window {window}")
    print(f"ACKed (stored+fsync'd): {records / t_acked:,.0f} records/s")
    print(f"PUBACKed by the broker (pty -> broker PUBACK): {records / t_puback:,.0f} records/s")
    print(f"end to end (pty -> broker -> consumer): {got / t_all:,.0f} records/s ({got} arrived)")
    print(f"ACK latency: p50 {p(0.50):.1f} ms, p99 {p(0.99):.1f} ms, "
          f"mean {statistics.fmean(latency) * 1000:.1f} ms")  # fmt: skip


def rss_million(tmp: Path) -> None:
    node = make_node("esp32-bench00000002")
    cfg = write_config(tmp / "gw.toml", url='"mqtt://127.0.0.1:1"', max_bytes='"4GB"')
    state = tmp / "state"
    q = Queue.open(state / "queue.sqlite3", 4 * 10**9)
    rec = node.record(1)
    t0 = time.perf_counter()
    batch: list[NewRecord] = []
    for s in range(1, 1_000_001):
        batch.append(NewRecord(node.device_id, s, int(time.time() * 1000), rec))
        if len(batch) == 20_000:
            q.store(batch)
            batch = []
    q.close()
    db_mb = (state / "queue.sqlite3").stat().st_size / 1e6
    print(f"filled 1,000,000 records in {time.perf_counter() - t0:.0f} s, database {db_mb:.0f} MB")
    log = tmp / "gw-rss.log"
    gw = start_gateway(cfg, log)
    try:
        wait_log(log, "event=ready", timeout=300)
        time.sleep(3)
        rss = 0
        for line in Path(f"/proc/{gw.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        print(f"agent RSS with 1,000,000 queued records: {rss / 1024:.1f} MiB")
    finally:
        stop(gw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--rss-million", action="store_true")
    args = ap.parse_args()
    print(f"cpu: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"raw Ed25519 verify (cryptography): {verify_rate():,.0f} /s (ceiling)")
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as d:
        end_to_end(Path(d), args.records, args.window)
    if args.rss_million:
        with tempfile.TemporaryDirectory(prefix="bench-gw-rss-") as d:
            rss_million(Path(d))


if __name__ == "__main__":
    main()
