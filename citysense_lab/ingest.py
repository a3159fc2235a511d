"""The lab's cloud side: `citysense-cloud ingest` as a process, its ledger, its database.

The ingest runs with its own client certificate (CN `ingest`, which the lab's ACL lets
read the records and nothing else), a SQLite database in the lab's folder and the lab's
registry. `report()` is the completeness ledger exactly as `citysense-cloud report --json`
prints it; `peek()` reads the database read-only for a live view (cheap enough to run
every second, while the ingest writes). The ingest needs MQTT 5 (a shared subscription,
a session expiry): Mosquitto, not amqtt (MQTT 3.1.1 only).

Mosquitto 2.0.11 does not restore a persistent session's *shared* subscription from its
persistence file: after a broker restart the session is present, but nothing published
reaches it until its client subscribes again (measured: 0 of 10 messages published
before the reconnect, and 0 of 5 after it without a new SUBSCRIBE; a plain persistent
subscription kept all 10). The lab runs one ingest instance, so it subscribes plainly
(`[ingest] subscription = "plain"`): after a broker restart what the gateway publishes
before the ingest is back is queued for its session, and the demo lets the gateway back
at once (it used to wait for the ingest's new subscription: 7 records per node of 61 were
lost before it did).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .broker import BrokerTLS
from .procs import Proc, wait_until

INSTANCE = "lab"  # the ingest's --instance: its MQTT session is citysense-ingest-lab
SUBSCRIBED = "event=ingest-subscribed"
_LATEST = (
    "SELECT name, value, unit FROM readings WHERE device_id = ? AND seq ="
    " (SELECT MAX(seq) FROM records WHERE device_id = ?) ORDER BY idx"
)
_SHOWN = ("temperature", "temp", "humidity", "pressure")


@dataclass
class Peek:
    """What the database holds now (read-only): per device, distinct records stored,
    duplicates suppressed, the stored seqs; refusals in total; a latest reading."""

    records: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    seqs: dict[str, set[int]] = field(default_factory=dict)
    refused: int = 0
    latest: dict[str, str] = field(default_factory=dict)


def stored_seqs(device: dict[str, Any]) -> set[int]:
    """The seqs a `report --json` device entry says are stored (its `ranges`)."""
    out: set[int] = set()
    for first, last in device.get("ranges", []):
        out.update(range(int(first), int(last) + 1))
    return out


class CloudIngest:
    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        tls: BrokerTLS,
        registry: Path,
        tool: Callable[[str], str],
        env: dict[str, str],
    ) -> None:
        self.dir = workdir
        self.db = workdir / "cloud.sqlite3"
        self.log = workdir / "ingest.log"
        self.tool = tool
        self.env = env
        self.config = workdir / "ingest.toml"
        self.config.write_text(
            f"""[broker]
url = "mqtts://localhost:{broker_port}"
ca_file = "{tls.ca_file}"
cert_file = "{tls.cert_file}"
key_file = "{tls.key_file}"
[registry]
path = "{registry}"
[database]
url = "sqlite:///{self.db}"
[ingest]
subscription = "plain"  # one instance: survives a Mosquitto restart (docstring)
"""
        )
        self.proc: Proc | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> Proc:
        """Start it and wait until its shared subscription is granted."""
        self.starts += 1
        seen = self.subscriptions()
        self.proc = Proc(
            f"ingest-{self.starts}",
            [self.tool("citysense-cloud"), "--config", str(self.config), "ingest",
             "--instance", INSTANCE],
            self.log,
            env=self.env,
        ).start()  # fmt: skip
        proc = self.proc
        try:
            wait_until(lambda: self.subscriptions() > seen or not self.alive(), timeout,
                       "the cloud ingest's subscription")  # fmt: skip
            if not self.alive():
                tail = self.log.read_text(errors="replace")[-800:].strip()
                raise RuntimeError(f"citysense-cloud ingest exited at start: {tail}")
        except (AssertionError, RuntimeError):
            self.stop()  # not left running when the caller gives up on it
            raise
        return proc

    def subscriptions(self) -> int:
        """How often it has been granted its subscription (once per broker connection)."""
        try:
            return self.log.read_text(errors="replace").count(SUBSCRIBED)
        except FileNotFoundError:
            return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(timeout=10)
        self.proc = None
        return code

    def report(self) -> dict[str, Any]:
        """`citysense-cloud report --json` on the ingest's database, parsed."""
        res = subprocess.run(
            [self.tool("citysense-cloud"), "--config", str(self.config), "report", "--json"],
            env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"citysense-cloud report: {(res.stderr or res.stdout).strip()}")
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def peek(self) -> Peek:
        """The database read-only, now; empty until the ingest has created it."""
        out = Peek()
        if not self.db.exists():
            return out
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error:
            return out
        try:
            for dev, records, dups in conn.execute(
                "SELECT device_id, records, duplicates FROM ledger"
            ):
                out.records[dev], out.duplicates[dev] = int(records), int(dups)
            for dev, seq in conn.execute("SELECT device_id, seq FROM records"):
                out.seqs.setdefault(dev, set()).add(int(seq))
            out.refused = int(conn.execute("SELECT COALESCE(SUM(n), 0) FROM rejections")
                              .fetchone()[0])  # fmt: skip
            for dev in out.records:
                out.latest[dev] = _latest(conn, dev)
        except sqlite3.Error:
            return Peek()  # the schema is not there yet (first start): nothing stored
        finally:
            conn.close()
        return out


def _latest(conn: sqlite3.Connection, device: str) -> str:
    parts = []
    for name, value, unit in conn.execute(_LATEST, (device, device)):
        short = name.removeprefix(f"{device}/")  # the node's base name, resolved
        if short in _SHOWN and value is not None:
            parts.append(f"{short[:4]} {value:.1f}{unit or ''}")
    return ", ".join(parts[:2]) or "-"
