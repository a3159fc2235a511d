"""The result ledger of a scenario: what each node created (its own log of seqs) against
what the independent consumer received, verified, after dedup by (device, seq)."""

from __future__ import annotations

import os
import time

from citysense_lab.stack import Lab

FULL = os.environ.get("CITYSENSE_HIL_FULL") == "1"


def seconds(ci: float, full: float) -> float:
    """CI-short duration, or the issue's full one with CITYSENSE_HIL_FULL=1."""
    return full if FULL else ci


def settle(lab: Lab, timeout: float) -> dict[str, list[int]]:
    """Wait until every record the nodes have created so far reached the consumer.

    Returns the created seqs per device that were checked. Raises AssertionError with
    the missing seqs after `timeout` seconds.
    """
    assert lab.consumer is not None
    deadline = time.monotonic() + timeout
    while True:
        created = {n.device_id: n.created_seqs() for n in lab.nodes}
        got = lab.consumer.snapshot()
        missing = {d: sorted(set(s) - got.get(d, set())) for d, s in created.items()}
        missing = {d: m for d, m in missing.items() if m}
        if not missing:
            return created
        if time.monotonic() > deadline:
            short = {d: (len(m), m[:10]) for d, m in missing.items()}
            raise AssertionError(f"records created but not delivered after {timeout}s: {short}")
        time.sleep(0.25)


def assert_balanced(lab: Lab, created: dict[str, list[int]], *, power_cuts: bool = False) -> None:
    """Exactly-once after dedup, every signature verified, per-device order kept, no seq
    reused. With power cuts a record may reach the cloud whose creation the node had no
    time to log; it must still be a seq that no other record of that node used."""
    assert lab.consumer is not None
    ledger = lab.consumer.ledger
    assert ledger.bad == [], ledger.bad[:5]
    got = lab.consumer.snapshot()
    for device, seqs in created.items():
        assert seqs, f"{device} created no record"
        assert len(seqs) == len(set(seqs)), f"{device} reused a seq"
        assert seqs == sorted(seqs), f"{device}: seq not strictly increasing"
        delivered = got.get(device, set())
        assert set(seqs) <= delivered
        extra = delivered - set(seqs)
        if not power_cuts:
            # anything extra must be newer than what was logged when we looked
            assert all(s > max(seqs) for s in extra), f"{device}: unknown seqs {sorted(extra)[:5]}"
        assert ledger.order_violations(device) == 0, f"{device}: order not kept"
