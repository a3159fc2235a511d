"""citysense-demo: the whole system on this machine, live, with a broker outage.

Starts a broker (Mosquitto with mTLS and an ACL when installed, else the PyPI broker
amqtt), a throwaway CA and certificates, three emulated nodes enrolled through their REPL
with citysense-provision, the gateway and the cloud side: `citysense-cloud ingest` into
SQLite (with Mosquitto; the ingest needs MQTT 5 shared subscriptions), or with amqtt
(MQTT 3.1.1 only) the lab's verifying consumer. Halfway it stops the broker for 20 s (or,
with --cut line, only the line between gateway and broker, as in a cellular outage): the
gateway's queue fills, then drains, and the closing table (the ingest's ledger, from
`citysense-cloud report --json`) shows nothing was lost.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from . import summary
from .broker import have_mosquitto
from .stack import Lab, LabError, LabOptions

PROG = "citysense-demo"
AMQTT_NOTE = (
    "note: amqtt speaks MQTT 3.1.1 only and the cloud ingest needs MQTT 5 shared "
    "subscriptions, so this run's cloud side is the lab's verifying consumer; for "
    "citysense-cloud ingest install Mosquitto (apt-get install mosquitto)"
)
DRAIN_S = 90.0


@dataclass
class Cloud:
    """What the cloud side holds now, for the live view."""

    stored: dict[str, set[int]]
    latest: dict[str, str]
    duplicates: int
    refused: int
    state: str


def _consumer_latest(lab: Lab, device: str) -> str:
    """The newest temperature/humidity the consumer verified for `device`."""
    assert lab.consumer is not None
    ledger = lab.consumer.ledger
    seqs = ledger.arrivals.get(device)
    raw = ledger.raw.get((device, max(seqs))) if seqs else None
    if raw is None:
        return "-"
    payload = cbor2.loads(cbor2.loads(raw).value[2])
    out = []
    for rec in payload[3]:
        name = str(rec.get(0, ""))
        if name in ("temperature", "temp", "humidity", "pressure") and 2 in rec:
            out.append(f"{name[:4]} {rec[2]:.1f}{rec.get(1, '')}")
    return ", ".join(out[:2]) or f"{len(payload[3])} readings"


def _cloud(lab: Lab) -> Cloud:
    if lab.ingest is not None:
        peek = lab.ingest.peek()
        state = "citysense-cloud ingest " + ("running" if lab.ingest.alive() else "EXITED")
        return Cloud(peek.seqs, peek.latest, sum(peek.duplicates.values()), peek.refused, state)
    assert lab.consumer is not None
    snap = lab.consumer.snapshot()
    latest = {n.device_id: _consumer_latest(lab, n.device_id) for n in lab.nodes}
    dups = sum(lab.consumer.ledger.duplicates(n.device_id) for n in lab.nodes)
    return Cloud(snap, latest, dups, len(lab.consumer.ledger.bad), "the lab's consumer")


def _view(lab: Lab, phase: str, status: dict[str, Any]) -> Group:
    cloud = _cloud(lab)
    nodes = Table(title="nodes → gateway → broker → cloud", expand=True)
    for col in ("node", "created", "stored at the cloud", "in flight", "latest reading"):
        nodes.add_column(col)
    for node in lab.nodes:
        created = len(node.created_seqs())
        got = len(cloud.stored.get(node.device_id, ()))
        nodes.add_row(node.device_id, str(created), str(got), str(max(0, created - got)),
                      cloud.latest.get(node.device_id, "-"))  # fmt: skip
    queue = status.get("queue", {})
    uplink = status.get("uplink", {})
    gw = Table.grid(padding=(0, 2))
    gw.add_row("phase", phase)
    gw.add_row("uplink", str(uplink.get("state", "?")))
    gw.add_row("gateway queue", f"{queue.get('depth', '?')} records, {queue.get('bytes', '?')} B")
    gw.add_row(
        "accepted / published", f"{status.get('accepted', 0)} / {uplink.get('published', 0)}"
    )
    gw.add_row("cloud", cloud.state)
    gw.add_row("duplicates suppressed / refused", f"{cloud.duplicates} / {cloud.refused}")
    return Group(Panel(gw, title="gateway"), nodes)


def _status(lab: Lab) -> dict[str, Any]:
    try:
        return lab.gateway_status()
    except (LabError, ValueError, OSError):
        return {}


def _created(lab: Lab) -> dict[str, list[int]]:
    return {n.device_id: n.created_seqs() for n in lab.nodes}


def _delivered(lab: Lab) -> bool:
    """Every record created so far is stored at the cloud (the live, cheap check)."""
    stored = _cloud(lab).stored  # read before the nodes' logs (summary.py)
    return all(set(seqs) <= stored.get(d, set()) for d, seqs in _created(lab).items())


def _rows(lab: Lab) -> tuple[list[summary.Row], bool, dict[str, Any] | None]:
    """The closing rows (the cloud read first, then the nodes' logs: summary.py), whether
    nothing was refused, and the ingest's report they come from."""
    if lab.ingest is None:
        assert lab.consumer is not None
        snap = lab.consumer.snapshot()
        rows = summary.consumer_rows(_created(lab), snap, lab.consumer.ledger)
        return rows, not lab.consumer.ledger.bad, None
    try:
        report = lab.ingest.report()
    except RuntimeError as exc:
        raise LabError(str(exc)) from exc
    return summary.ledger_rows(_created(lab), report), not report["rejected"], report


def _closing(lab: Lab, deadline: float) -> tuple[Table, bool]:
    """The closing table and whether nothing is missing, read again until it shows every
    record created stored once or the deadline passes. With the ingest the figures are
    `citysense-cloud report --json` (kept as report.json in the lab's folder)."""
    while True:
        rows, clean, report = _rows(lab)
        ok = clean and all(r.ok for r in rows)
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if report is None:
        return summary.table(rows, "summary: the lab's consumer (amqtt, no cloud ingest)"), ok
    (lab.dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return summary.table(rows, "summary: the cloud ingest's ledger (citysense-cloud report)"), ok


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="citysense-demo-") as tmp:
            yield Path(tmp)
        return
    if keep.exists() and any(keep.iterdir()):
        raise LabError(f"--keep {keep}: not empty; give a new or empty folder")
    keep.mkdir(parents=True, exist_ok=True)
    yield keep.resolve()


def run(args: argparse.Namespace, console: Console) -> int:
    kind = args.broker
    if kind == "auto":
        kind = "mosquitto" if have_mosquitto() else "amqtt"
    if kind == "mosquitto" and not have_mosquitto():
        console.print(
            f"{PROG}: mosquitto not installed: apt-get install mosquitto, or --broker amqtt"
        )
        return 2
    cloud = "ingest" if kind == "mosquitto" else "consumer"
    opts = LabOptions(nodes=3, interval_s=2, batch=1, broker=kind, uplink_relay=True, cloud=cloud)
    try:
        with _workdir(args.keep) as workdir:
            lab = Lab(workdir, opts, say=lambda m: console.print(f"[dim]{m}[/dim]"))
            if cloud == "consumer":
                console.print(AMQTT_NOTE)
            try:
                lab.up()
                return _live(lab, args, console)
            finally:
                lab.close()
    except LabError as exc:
        console.print(f"{PROG}: {exc}")
        return 1


def _outage_step(lab: Lab, args: argparse.Namespace, t: float, down: bool) -> bool:
    """Start or end the outage at its time; whether it is on."""
    assert lab.relay is not None and lab.broker is not None
    outage = (args.duration / 2, args.duration / 2 + args.outage)
    if not args.forever and outage[0] <= t < outage[1] and not down:
        lab.relay.cut()  # the gateway sees the broker vanish at once
        if args.cut == "broker":
            lab.broker.stop()
        return True
    if down and t >= outage[1]:
        if args.cut == "broker":
            _restart_broker(lab)
        lab.relay.restore()
        return False
    return down


def _restart_broker(lab: Lab) -> None:
    """Start the broker again; with amqtt wait for the lab's consumer to subscribe again
    before the gateway comes back (a restarted amqtt keeps no sessions). The cloud ingest
    needs no wait: its plain subscription is restored with its session
    (citysense_lab/ingest.py), so what the gateway publishes first is queued for it."""
    assert lab.broker is not None
    lab.broker.start()
    if lab.consumer is not None:
        lab.consumer.wait_subscribed(30)


def _live(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    start = time.monotonic()
    down = False
    peak = 0
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            t = time.monotonic() - start
            down = _outage_step(lab, args, t, down)
            if not args.forever and t >= args.duration:
                break
            phase = f"{args.cut} DOWN: the gateway queues" if down else "running"
            status = _status(lab)
            depth = status.get("queue", {}).get("depth", 0)
            peak = max(peak, depth if isinstance(depth, int) else 0)
            live.update(_view(lab, f"{phase} ({t:.0f}s)", status))
            time.sleep(1)
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not _delivered(lab):
            live.update(_view(lab, "draining", _status(lab)))
            time.sleep(1)
        live.update(_view(lab, "closing", _status(lab)))
    table, ok = _closing(lab, max(deadline, time.monotonic() + 10))
    console.print(table)
    if not args.forever:
        console.print(
            f"{args.cut} down for {args.outage:.0f} s: the gateway queue peaked at {peak} records"
        )
    if lab.ingest is None:
        console.print(AMQTT_NOTE)
    elif args.keep is not None:
        console.print(
            f"the ingest's database: citysense-cloud --database sqlite:///{lab.ingest.db} report"
        )
    console.print("nothing lost, every signature verified" if ok else "RECORDS MISSING")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--duration", type=float, default=80.0, help="seconds of running (80)")
    p.add_argument("--outage", type=float, default=20.0, help="seconds of outage (20)")
    p.add_argument(
        "--cut",
        choices=("broker", "line"),
        default="broker",
        help="stop the broker (default), or cut only the line from gateway to broker",
    )
    p.add_argument("--forever", action="store_true", help="run until Ctrl-C, no outage")
    p.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="auto: Mosquitto when installed (then the cloud side is citysense-cloud ingest)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the lab in DIR (new or empty): the ingest's database, logs, report.json",
    )
    args = p.parse_args(argv)
    console = Console()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        return run(args, console)
    except KeyboardInterrupt:
        console.print(f"{PROG}: interrupted; everything stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
