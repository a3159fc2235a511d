"""citysense vs a Mosquitto bridge vs ThingsBoard IoT Gateway: same workload, same faults.

    nice python bench/compare/compare.py                  # full run, ~12 min
    python bench/compare/compare.py --smoke               # ~20 s of workload per system (CI)
    python bench/compare/compare.py --setup-only          # install the peers and exit

Per system, one after another (so they never share the 2 cores): 20 sources x 1 record
of ~400 bytes per 100 ms; phases: steady (60 s), cloud broker down (60 s) and back until
the backlog drains, kill -9 of the system's own gateway process 5 times at random moments
(same seeded moments for every system) with an immediate restart, then sources stop and
the system drains. Writes bench/results/compare-<UTC>.json (raw figures, per-kill table,
configs) and prints a Markdown table. Everything started is stopped at the end, also on
Ctrl-C or failure. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analyze
import procs
from systems import MOSQUITTO, REPO, SYSTEMS, TB_VENV, System, cloud_conf, tb_installed

HERE = Path(__file__).resolve().parent
KILLS = 5


def setup() -> None:
    """Install the peers: thingsboard-gateway into its own venv (not the project's)."""
    if not Path(MOSQUITTO).exists():
        raise SystemExit(
            "compare: mosquitto not found at /usr/sbin/mosquitto; apt-get install mosquitto"
        )
    if tb_installed():
        return
    print("compare: installing thingsboard-gateway into .cache/bench-venv ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TB_VENV)], check=True)
    r = subprocess.run(
        [str(TB_VENV / "bin" / "pip"), "install", "-q", "thingsboard-gateway"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"compare: pip install thingsboard-gateway failed: {r.stderr[-500:]}")


class Phases:
    def __init__(self, scale: float) -> None:
        self.warmup = 5 * scale
        self.steady = 60 * scale
        self.outage = 60 * scale
        self.kill_window = 60 * scale
        # bounded waits; at full scale far longer than a reconnect backoff (citysense's is
        # capped at 15 s) so a system that is merely waiting to reconnect is not cut off
        self.recover_max = max(10.0, 180 * scale)
        self.settle_max = max(10.0, 180 * scale)
        self.quiet = max(5.0, 70 * scale)


class Sampler(threading.Thread):
    def __init__(self, system: System) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.stop_ev = threading.Event()
        self.rss: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self.stop_ev.wait(0.5):
            tot = sum(t.sample()["rss"] for t in self.system.tracked())
            self.rss.append((time.monotonic(), tot))

    def totals(self) -> dict[str, float]:
        cpu = wb = 0.0
        for t in self.system.tracked():
            s = t.sample()
            cpu += s["cpu"]
            wb += s["write_bytes"]
        return {"t": time.monotonic(), "cpu": cpu, "write_bytes": wb}


def read_status(d: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((d / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def wait_until(pred: Any, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def verify_cpu_s_per_1000(seconds: float = 2.0, library: str = "nacl") -> float:
    """CPU seconds per 1,000 raw Ed25519 verifies of a 400-byte message with what the
    gateway calls once per record (PyNaCl since 2026-12-03, `library="nacl"`): the floor
    of citysense's CPU per record. `library="cryptography"`: what it called before."""
    msg = os.urandom(400)
    if library == "nacl":
        from nacl.signing import SigningKey

        skey = SigningKey.generate()
        sig, vkey = skey.sign(msg).signature, skey.verify_key

        def verify() -> None:
            vkey.verify(msg, sig)
    else:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        sig, pub = key.sign(msg), key.public_key()

        def verify() -> None:
            pub.verify(sig, msg)

    n, c0 = 0, time.process_time()
    while time.process_time() - c0 < seconds:
        for _ in range(200):
            verify()
        n += 200
    return 1000 * (time.process_time() - c0) / n


def run_system(name: str, root: Path, ph: Phases, seed: int, sources: int) -> dict[str, Any]:
    d = root / name
    cloud_port = procs.free_port()
    cloud_dir = d / "cloud"
    conf = cloud_conf(cloud_dir, cloud_port)
    system: System = SYSTEMS[name](d, cloud_port)
    src_dir, con_dir = d / "sources", d / "consumer"
    src_dir.mkdir(parents=True, exist_ok=True)
    events: dict[str, Any] = {"kills": []}

    def start_cloud() -> subprocess.Popen[bytes]:
        p = procs.spawn([MOSQUITTO, "-c", str(conf)], cloud_dir / "cloud.log")
        procs.wait_port(cloud_port, proc=p)
        return p

    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(REPO))
    print(f"== {name}", flush=True)
    cloud = start_cloud()
    consumer = procs.spawn(
        [
            py,
            str(HERE / "consumer.py"),
            "--port",
            str(cloud_port),
            "--dir",
            str(con_dir),
            "--kind",
            system.consumer_kind,
        ],
        d / "consumer.out",
        env=env,
    )
    wait_until(lambda: read_status(con_dir).get("connected"), 20)
    argv = [
        py,
        str(HERE / "sources.py"),
        system.source_mode,
        "--dir",
        str(src_dir),
        "--sources",
        str(sources),
    ]
    if system.source_mode == "pty":
        argv = [
            py,
            str(HERE / "sources.py"),
            "pty",
            "--dir",
            str(system.dir / "nodes"),
            "--registry",
            str(system.dir / "registry"),
            "--sources",
            str(sources),
        ]
        src_dir = system.dir / "nodes"
    sampler = Sampler(system)
    src: subprocess.Popen[bytes] | None = None
    try:
        if system.source_mode == "pty":
            src = procs.spawn(argv, d / "sources.out", env=env)
            if not wait_until(lambda: (src_dir / "ready").exists(), 30):
                raise RuntimeError("pty sources did not start")
            system.start()
            log = system.own.log
            if not wait_until(
                lambda: log.read_text(errors="replace").count("event=port-open") >= sources, 60
            ):
                raise RuntimeError(f"citysense gateway did not open the ports; see {log}")
        else:
            system.start()
            time.sleep(2.0 if name == "tb" else 0.2)
            src = procs.spawn(
                [*argv, "--port", str(system.source_port)], d / "sources.out", env=env
            )
        sampler.start()
        # warm-up: the steady phase starts once records reach the cloud (TB waits for its
        # session-configuration request to time out before it sends anything)
        w0 = time.monotonic()
        wait_until(lambda: read_status(con_dir).get("unique", 0) > 0, 120)
        time.sleep(ph.warmup)
        events["info"] = {"warmup_s": round(time.monotonic() - w0, 2)}
        print(f"   warm-up {events['info']['warmup_s']:.1f} s", flush=True)
        events["t0"] = time.monotonic()
        snap0 = sampler.totals()
        print(f"   steady {ph.steady:.0f} s", flush=True)
        time.sleep(ph.steady)
        snap1 = sampler.totals()
        events["steady_end"] = snap1["t"]

        print(f"   cloud down {ph.outage:.0f} s", flush=True)
        events["cloud_down"] = time.monotonic()
        procs.stop(cloud)
        time.sleep(ph.outage)
        cloud = start_cloud()
        events["cloud_up"] = time.monotonic()
        acked_at_up = read_status(src_dir).get("acked", 0)
        wait_until(lambda: read_status(con_dir).get("unique", 0) >= acked_at_up, ph.recover_max)
        events["recovered"] = time.monotonic()
        print(
            f"   backlog drained after {events['recovered'] - events['cloud_up']:.1f} s", flush=True
        )

        rng = random.Random(seed)
        offsets = sorted(rng.uniform(0.05, 0.95) * ph.kill_window for _ in range(KILLS))
        start = time.monotonic()
        events["kill_phase"] = start
        for off in offsets:
            time.sleep(max(0.0, start + off - time.monotonic()))
            t = time.monotonic()
            system.own.kill9()
            events["kills"].append({"t": t, "acked_status": read_status(src_dir).get("acked", 0)})
            system.restart_own()
            print(f"   kill -9 {system.own.name} at +{t - start:.1f} s, restarted", flush=True)
        time.sleep(max(0.0, start + ph.kill_window - time.monotonic()))

        procs.stop(src)
        events["sources_stopped"] = time.monotonic()
        last = [-1, time.monotonic()]

        def settled() -> bool:
            u = read_status(con_dir).get("unique", 0)
            if u != last[0]:
                last[:] = [u, time.monotonic()]
            acked = read_status(src_dir).get("acked", 0)
            return u >= acked or time.monotonic() - last[1] > ph.quiet

        wait_until(settled, ph.settle_max)
        events["end"] = time.monotonic()
        snap2 = sampler.totals()
    finally:
        sampler.stop_ev.set()
        system.stop()
        if src is not None:
            procs.stop(src)
        procs.stop(consumer)
        procs.stop(cloud)
    acks = analyze.read_acks(src_dir / "acks.log")
    arrivals = analyze.read_arrivals(con_dir / "arrivals.log")
    latency = analyze.read_latency(src_dir / "latency.log")
    res = analyze.figures(acks, arrivals, events, [snap0, snap1, snap2], sampler.rss, latency)
    res["system"] = name
    res["own_process"] = system.own.name
    res["processes"] = {
        t.name: {"instances": t.instances, "peak_rss_bytes": t.peak_rss} for t in system.tracked()
    }
    res["peak_rss_bytes"] = sum(t.peak_rss for t in system.tracked())
    res["source_status"] = read_status(src_dir)
    res["consumer_status"] = read_status(con_dir)
    res["settings"] = system.settings()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--systems", default="citysense,bridge,tb")
    ap.add_argument("--duration-scale", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help="the 20-second CI version")
    ap.add_argument("--sources", type=int, default=20)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument(
        "--out", default=None, help="result JSON (default bench/results/compare-<UTC>.json)"
    )
    ap.add_argument(
        "--workdir", default=None, help="keep logs and state here (default: a temp dir)"
    )
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--table", metavar="JSON", help="print the table of an earlier result and exit")
    args = ap.parse_args()
    if args.table:
        earlier = json.loads(Path(args.table).read_text())
        print(analyze.table(earlier))
        print()
        print(analyze.goals(earlier))
        return 0
    scale = 0.05 if args.smoke else args.duration_scale
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    for n in names:
        if n not in SYSTEMS:
            raise SystemExit(f"compare: unknown system {n!r}; choose from {', '.join(SYSTEMS)}")
    setup()
    if args.setup_only:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = (
        Path(args.workdir)
        if args.workdir
        else Path(tempfile.mkdtemp(prefix="citysense-compare-", dir=REPO / ".cache"))
    )
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    # Mosquitto drops root for its own user: it must reach its persistence directories
    root.chmod(0o755)
    ph = Phases(scale)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"compare-{stamp}.json"
    result: dict[str, Any] = {
        "command": " ".join(["python", "bench/compare/compare.py", *sys.argv[1:]]),
        "started_utc": stamp,
        "duration_scale": scale,
        "sources": args.sources,
        "interval_s": 0.1,
        "record_bytes": 400,
        "seed": args.seed,
        "phases_s": vars(ph),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "systems": {},
    }
    result["verify_cpu_s_per_1000"] = round(verify_cpu_s_per_1000(), 4)
    result["verify_cryptography_cpu_s_per_1000"] = round(
        verify_cpu_s_per_1000(library="cryptography"), 4
    )
    try:
        for n in names:
            result["systems"][n] = run_system(n, root, ph, args.seed, args.sources)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
    except KeyboardInterrupt:
        print("compare: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(analyze.table(result))
    print()
    print(
        f"raw Ed25519 verify: {result['verify_cpu_s_per_1000']} CPU s per 1,000 (PyNaCl, as"
        f" the gateway; cryptography {result['verify_cryptography_cpu_s_per_1000']}; same run)"
    )
    print(analyze.goals(result))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
