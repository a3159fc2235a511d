"""The demo's closing table: what each node created against what the cloud stored.

With the cloud ingest (Mosquitto) the figures are the ingest's completeness ledger as
`citysense-cloud report --json` prints it: `records` (distinct (device, seq) stored),
`duplicates` (deliveries suppressed), `gaps`, `rejected`. The lab knows what the nodes
created (each node logs the seq of every record it signs, before it sends it), so `lost`
is the created seqs the ledger's `ranges` do not hold. With amqtt (MQTT 3.1.1, no
ingest) the same table comes from the lab's verifying consumer.

Read the ledger before the nodes' logs: then nothing the ledger holds is missing from the
logs, and a record created in between only shows as in flight (the caller reads again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from .consumer import Ledger
from .ingest import stored_seqs

COLUMNS = ("node", "created", "stored once", "duplicates suppressed", "gaps", "refused", "lost")


@dataclass(frozen=True, slots=True)
class Row:
    device: str
    created: int
    stored: int  # distinct (device, seq) stored
    duplicates: int
    gaps: list[list[int]]
    refused: int
    lost: int  # created, not stored

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.stored == self.created and self.refused == 0


def spans(gaps: list[list[int]]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in gaps) or "-"


def _gaps(seqs: set[int]) -> list[list[int]]:
    out, prev = [], None
    for seq in sorted(seqs):
        if prev is not None and seq > prev + 1:
            out.append([prev + 1, seq - 1])
        prev = seq
    return out


def ledger_rows(created: dict[str, list[int]], report: dict[str, Any]) -> list[Row]:
    """One row per node from a `report --json` dict and the nodes' created seqs."""
    rows = []
    for device, seqs in created.items():
        e = report["devices"].get(device, {})
        made = set(seqs)
        rows.append(
            Row(
                device=device,
                created=len(made),
                stored=int(e.get("records", 0)),
                duplicates=int(e.get("duplicates", 0)),
                gaps=[list(g) for g in e.get("gaps", [])],
                refused=sum(int(n) for n in e.get("rejected", {}).values()),
                lost=len(made - stored_seqs(e)),
            )
        )
    return rows


def consumer_rows(
    created: dict[str, list[int]], snapshot: dict[str, set[int]], ledger: Ledger
) -> list[Row]:
    """The same rows from the lab's consumer (amqtt: no ingest, no ledger); `snapshot`
    is its verified seqs per device, taken before `created` was read."""
    rows = []
    for device, seqs in created.items():
        made, got = set(seqs), snapshot.get(device, set())
        refused = sum(1 for bad in ledger.bad if f"/{device}/records:" in bad)
        gaps = _gaps(got)
        rows.append(
            Row(
                device,
                len(made),
                len(got),
                ledger.duplicates(device),
                gaps,
                refused,
                len(made - got),
            )
        )
    return rows


def table(rows: list[Row], title: str) -> Table:
    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col)
    for r in rows:
        t.add_row(r.device, str(r.created), str(r.stored), str(r.duplicates), spans(r.gaps),
                  str(r.refused), str(r.lost))  # fmt: skip
    return t
