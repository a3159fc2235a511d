"""citysense-demo: the whole system on this machine, live, with a broker outage.

Starts a broker (Mosquitto with mTLS and an ACL when installed, else the PyPI broker
amqtt), a throwaway CA and certificates, three emulated nodes enrolled through their REPL
with citysense-provision, the gateway and a verifying consumer. Halfway it stops the
broker for 20 s (or, with --cut line, only the line between gateway and broker, as in a
cellular outage): the gateway's queue fills, then drains, and the summary shows nothing
was lost.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from .stack import Lab, LabError, LabOptions

PROG = "citysense-demo"


def _last_reading(lab: Lab, device: str) -> str:
    """The newest temperature/humidity the consumer verified for `device`."""
    assert lab.consumer is not None
    ledger = lab.consumer.ledger
    seqs = ledger.arrivals.get(device)
    if not seqs:
        return "-"
    raw = ledger.raw.get((device, max(seqs)))
    if raw is None:
        return "-"
    payload = cbor2.loads(cbor2.loads(raw).value[2])
    out = []
    for rec in payload[3]:
        name = str(rec.get(0, ""))
        if name in ("temperature", "temp", "humidity", "pressure") and 2 in rec:
            out.append(f"{name[:4]} {rec[2]:.1f}{rec.get(1, '')}")
    return ", ".join(out[:2]) or f"{len(payload[3])} readings"


def _view(lab: Lab, phase: str, status: dict[str, Any]) -> Group:
    assert lab.consumer is not None
    snap = lab.consumer.snapshot()
    nodes = Table(title="nodes → gateway → broker → consumer", expand=True)
    for col in ("node", "created", "verified at the cloud", "in flight", "latest reading"):
        nodes.add_column(col)
    for node in lab.nodes:
        created = len(node.created_seqs())
        got = len(snap.get(node.device_id, ()))
        nodes.add_row(node.device_id, str(created), str(got), str(max(0, created - got)),
                      _last_reading(lab, node.device_id))  # fmt: skip
    queue = status.get("queue", {})
    uplink = status.get("uplink", {})
    gw = Table.grid(padding=(0, 2))
    gw.add_row("phase", phase)
    gw.add_row("uplink", str(uplink.get("state", "?")))
    gw.add_row("gateway queue", f"{queue.get('depth', '?')} records, {queue.get('bytes', '?')} B")
    gw.add_row(
        "accepted / published", f"{status.get('accepted', 0)} / {uplink.get('published', 0)}"
    )
    gw.add_row("bad signatures at the cloud", str(len(lab.consumer.ledger.bad)))
    return Group(Panel(gw, title="gateway"), nodes)


def _status(lab: Lab) -> dict[str, Any]:
    try:
        return lab.gateway_status()
    except (LabError, ValueError, OSError):
        return {}


def _summary(lab: Lab) -> tuple[Table, bool]:
    assert lab.consumer is not None
    snap = lab.consumer.snapshot()
    table = Table(title="summary")
    for col in ("node", "created", "delivered (unique)", "duplicates", "lost"):
        table.add_column(col)
    ok = not lab.consumer.ledger.bad
    for node in lab.nodes:
        created = set(node.created_seqs())
        got = snap.get(node.device_id, set())
        lost = len(created - got)
        ok = ok and lost == 0
        table.add_row(node.device_id, str(len(created)), str(len(got & created)),
                      str(lab.consumer.ledger.duplicates(node.device_id)), str(lost))  # fmt: skip
    return table, ok


def run(args: argparse.Namespace, console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="citysense-demo-") as tmp:
        lab = Lab(
            Path(tmp),
            LabOptions(nodes=3, interval_s=2, batch=1, broker=args.broker, uplink_relay=True),
            say=lambda m: console.print(f"[dim]{m}[/dim]"),
        )
        try:
            lab.up()
            return _live(lab, args, console)
        except LabError as exc:
            console.print(f"{PROG}: {exc}")
            return 1
        finally:
            lab.close()


def _live(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    start = time.monotonic()
    half = args.duration / 2
    outage = (half, half + args.outage)
    broker_down = False
    assert lab.relay is not None and lab.broker is not None and lab.consumer is not None
    peak = 0
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            t = time.monotonic() - start
            if not args.forever and outage[0] <= t < outage[1] and not broker_down:
                lab.relay.cut()  # the gateway sees the broker vanish at once
                if args.cut == "broker":
                    lab.broker.stop()
                broker_down = True
            elif broker_down and t >= outage[1]:
                if args.cut == "broker":
                    lab.broker.start()
                    # The consumer stands for the cloud's subscribers, which are there
                    # before the gateway comes back (a restarted amqtt keeps no sessions).
                    lab.consumer.wait_subscribed(30)
                lab.relay.restore()
                broker_down = False
            if not args.forever and t >= args.duration:
                break
            phase = f"{args.cut} DOWN: the gateway queues" if broker_down else "running"
            status = _status(lab)
            depth = status.get("queue", {}).get("depth", 0)
            peak = max(peak, depth if isinstance(depth, int) else 0)
            live.update(_view(lab, f"{phase} ({t:.0f}s)", status))
            time.sleep(1)
        live.update(_view(lab, "draining", _status(lab)))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _, ok = _summary(lab)
            if ok:
                break
            live.update(_view(lab, "draining", _status(lab)))
            time.sleep(1)
    table, ok = _summary(lab)
    console.print(table)
    if not args.forever:
        console.print(
            f"{args.cut} down for {args.outage:.0f} s: the gateway queue peaked at {peak} records"
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
    p.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
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
