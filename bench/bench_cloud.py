"""Cloud ingest throughput: broker -> verify -> dedup -> commit into PostgreSQL.

    python bench/bench_cloud.py [--records 20000] [--devices 20] [--batch 500]

One run measures, on this machine:
- the raw Ed25519 verify rate of `cryptography` (the ceiling: every record is verified
  once), per CPU second (a core fully ours) and per wall second (what a loaded machine
  gives one process);
- what the MQTT client alone costs: records received from a broker backlog and PUBACKed
  in batches, nothing else done, per CPU second, for the ingest's own session
  (cloud/session.py) and for paho 2 (the client it replaced: the baseline);
- records/s stored by one and by two `citysense-cloud ingest` instances sharing the
  subscription, each into a fresh PostgreSQL database. The records (real signed records,
  one SenML reading each, as tests/gateway/gwsupport.Node makes them) are queued in
  Mosquitto for the instances' sessions first, so the figure is the ingest's alone (the
  publisher does not compete for the CPU); the clock runs from the first record committed
  to the last (process start-up excluded);
- CPU seconds of the ingest processes, of PostgreSQL and of Mosquitto in that interval,
  so the rate per ingest core can be set against the verify ceiling per core.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "gateway")]
sys.path.insert(0, str(REPO / "tests" / "cloud"))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from bench_gateway import verify_rate  # noqa: E402
from cloudsupport import Postgres, Publisher, cloud_config, start_ingest  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from gwsupport import make_node, mosquitto, stop, wait_log, write_entry  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from cloud.config import BrokerConfig  # noqa: E402
from cloud.session import Session, client_id  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_of_tree(root: int) -> float:
    """CPU seconds of `root` and its live children (PostgreSQL's backends)."""
    total, parents = 0.0, {root}
    stats = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    for pid, st in stats.items():
        if st is not None and (pid == root or st[0] in parents):
            total += st[1]
    return total


def verify_rate_cpu(n: int = 6000) -> float:
    key = Ed25519PrivateKey.generate()
    msg = b"x" * 120
    sig = key.sign(msg)
    pub = key.public_key()
    t0 = time.process_time()
    for _ in range(n):
        pub.verify(sig, msg)
    return n / (time.process_time() - t0)


def _backlog(port: int, payloads: list[tuple[str, bytes]]) -> None:
    pub = Publisher(port)
    for device, data in payloads:
        pub.publish("gw-1", device, data)
    pub.flush(300)
    pub.close()


def _queue_for(port: int, client: str, payloads: list[tuple[str, bytes]]) -> None:
    """Make the persistent session `client` subscribed, offline, holding `payloads`."""
    bc = BrokerConfig("mqtt://", "127.0.0.1", port, False, None, None, None, None)
    s = Session(bc, client, "bench", 3600, 1000)
    deadline = time.monotonic() + 30
    while not s.subscribed and time.monotonic() < deadline:
        s.service(0.05)
    s.stop()
    _backlog(port, payloads)


def session_rate_cpu(tmp: Path, records: int) -> float:
    """Records/s per CPU second of the ingest's own MQTT session (cloud/session.py):
    receive from a backlog, PUBACK per 500, nothing else."""
    node = make_node("dev-mqtt")
    payloads = [(node.device_id, node.record(seq)) for seq in range(1, records + 1)]
    with mosquitto(tmp / "broker-session") as broker:
        _queue_for(broker.port, "session-bench", payloads)
        bc = BrokerConfig("mqtt://", "127.0.0.1", broker.port, False, None, None, None, None)
        s = Session(bc, "session-bench", "bench", 3600, 1000)
        t0 = time.process_time()
        got = 0
        deadline = time.monotonic() + 120
        while got < records and time.monotonic() < deadline:
            batch = s.take(500, 1.0, 0.02)
            got += len(batch)
            s.ack(batch)
        cpu = time.process_time() - t0
        s.stop()
    if got != records:
        raise RuntimeError(f"session bench: {got} of {records} received")
    return records / cpu


def paho_rate_cpu(tmp: Path, records: int) -> float:
    """The same with paho 2 (manual_ack, on_message into a queue, the receive path the
    ingest used before cloud/session.py): the baseline for the MQTT client's cost."""
    node = make_node("dev-paho")
    payloads = [(node.device_id, node.record(seq)) for seq in range(1, records + 1)]
    with mosquitto(tmp / "broker-paho") as broker:
        _queue_for(broker.port, "paho-bench", payloads)
        inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id("paho-bench"),
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        c.on_message = lambda _c, _u, msg: inbox.put(msg)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 1000
        t0 = time.process_time()
        c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.loop_start()
        batch: list[mqtt.MQTTMessage] = []
        for got in range(1, records + 1):
            batch.append(inbox.get(timeout=60))
            if len(batch) == 500 or got == records:
                for m in batch:
                    c.ack(m.mid, m.qos)
                batch = []
        cpu = time.process_time() - t0
        c.disconnect()
        c.loop_stop()
    return records / cpu


def run(tmp: Path, instances: int, records: int, devices: int, batch: int) -> dict[str, float]:
    registry = tmp / "registry"
    registry.mkdir()
    nodes = [make_node(f"dev-{i:03d}") for i in range(devices)]
    for n in nodes:
        write_entry(registry, n)
    per = records // devices
    payloads = [(n.device_id, n.record(seq)) for seq in range(1, per + 1) for n in nodes]
    with mosquitto(tmp / "broker") as broker:
        pg = Postgres()
        try:
            pg.start()
            cfg = cloud_config(tmp / "cloud.toml", broker.port, registry, pg.url)
            cfg.write_text(cfg.read_text().replace("batch = 200", f"batch = {batch}"))
            names = [f"bench-{i}" for i in range(instances)]
            procs = [start_ingest(cfg, name, tmp / f"{name}.log") for name in names]
            for name in names:  # sessions made; now stop them so the broker queues for them
                wait_log(tmp / f"{name}.log", "event=ingest-subscribed", 30)
            for p in procs:
                stop(p)
            _backlog(broker.port, payloads)
            return _measure(
                tmp, cfg, names, pg, broker.proc.pid if broker.proc else 0, len(payloads)
            )
        finally:
            pg.cleanup()


def _measure(
    tmp: Path, cfg: Path, names: list[str], pg: Postgres, broker_pid: int, total: int
) -> dict[str, float]:
    conn = psycopg.connect(pg.url, autocommit=True)
    procs = [start_ingest(cfg, name, tmp / f"{name}.log") for name in names]
    try:
        deadline = time.monotonic() + 600
        first = 0
        while (first := _count(conn)) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        t0 = time.perf_counter()
        pg_pid = pg.pid() or 0
        cpu0 = [cpu_of_tree(p.pid) for p in procs], cpu_of_tree(pg_pid), cpu_of_tree(broker_pid)
        while (n := _count(conn)) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu1 = [cpu_of_tree(p.pid) for p in procs], cpu_of_tree(pg_pid), cpu_of_tree(broker_pid)
        if n != total:
            raise RuntimeError(f"only {n} of {total} records stored")
        dups = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT (device_id, seq)) FROM records")
        if dups.fetchone() != (0,):
            raise RuntimeError("a record was stored twice")
    finally:
        for p in procs:
            stop(p)
        conn.close()
    ingest_cpu = sum(b - a for a, b in zip(cpu0[0], cpu1[0], strict=True))
    return {
        "rate": (total - first) / elapsed,
        "elapsed": elapsed,
        "ingest_cpu": ingest_cpu,
        "pg_cpu": cpu1[1] - cpu0[1],
        "broker_cpu": cpu1[2] - cpu0[2],
        "measured": total - first,
    }


def _count(conn: psycopg.Connection[tuple[int]]) -> int:
    row = conn.execute("SELECT COUNT(*) FROM records").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary dir)")
    args = ap.parse_args()
    print(f"cpu: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    ceiling = verify_rate_cpu()
    print(
        f"raw Ed25519 verify (cryptography): {ceiling:,.0f} /s per CPU second"
        f" ({verify_rate():,.0f} /s per wall second on this machine now)"
    )
    with tempfile.TemporaryDirectory(prefix="citysense-bench-mqtt-") as t:
        own = session_rate_cpu(Path(t), args.records // 2)
        paho = paho_rate_cpu(Path(t), args.records // 2)
    print(
        f"MQTT receive + PUBACK only: cloud/session.py {own:,.0f} messages/s per CPU second"
        f" ({ceiling / own:.2f} verifies per record); paho 2 (the baseline)"
        f" {paho:,.0f} /s ({ceiling / paho:.2f} verifies per record)"
    )
    for instances in (1, 2):
        if args.workdir:
            d = args.workdir / f"{instances}-instances"
            d.mkdir(parents=True)
            r = run(d, instances, args.records, args.devices, args.batch)
        else:
            with tempfile.TemporaryDirectory(prefix="citysense-bench-cloud-") as t:
                r = run(Path(t), instances, args.records, args.devices, args.batch)
        cores = r["ingest_cpu"] / r["elapsed"]
        per_core = r["measured"] / r["ingest_cpu"] if r["ingest_cpu"] else float("nan")
        print(
            f"{instances} instance(s): {r['rate']:,.0f} records/s stored"
            f" ({r['measured']:.0f} in {r['elapsed']:.2f} s, batch {args.batch});"
            f" ingest CPU {r['ingest_cpu']:.2f} s ({cores:.2f} cores),"
            f" PostgreSQL {r['pg_cpu']:.2f} s, Mosquitto {r['broker_cpu']:.2f} s"
        )
        print(
            f"  per ingest CPU second: {per_core:,.0f} records = {per_core / ceiling:.2f}x the"
            f" verify ceiling (verify + receive alone would allow"
            f" {1 / (1 / ceiling + 1 / own) / ceiling:.2f}x; with paho"
            f" {1 / (1 / ceiling + 1 / paho) / ceiling:.2f}x)"
        )


if __name__ == "__main__":
    main()
