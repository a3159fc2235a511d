"""Re-keying a node (`enroll --new-key --replace`) with records still in its flash buffer,
with the real firmware in the emulator, the real gateway, broker and consumer.

Records signed with the replaced key would be NACKed `bad-signature` by the gateway for
good, and every newer record would wait behind them. So enrollment refuses while the
buffer holds records, naming both ways out, and both are taken here:
- let it drain: the node, still under its old key, is connected to the gateway until its
  records are ACKed; its buffer is then empty (the firmware deletes every segment once
  nothing is pending) and the re-key goes through;
- --drop-pending: the records are dropped and counted in the node's sys/dropped.
After each re-key the node's new records reach the gateway and the consumer, verified
with the new key, and the gateway rejected nothing.

The node samples once per boot here (interval 3600 s, batch 1): each boot makes exactly
one record, so what the buffer holds is known exactly when the gateway is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from citysense_lab.procs import wait_until
from citysense_lab.stack import Lab, LabError, Node

MakeLab = Callable[..., Lab]
REFUSED = "or let it drain: connect it to its gateway until its records are acknowledged"


def unplug(lab: Lab, node: Node) -> None:
    """Power cut, and the cable to the gateway out: its pty link must go, or the
    gateway's port scan would open whatever pty reuses its number (the REPL's)."""
    lab.power_cut(node)
    node.gateway_link.unlink(missing_ok=True)


def boot_once(lab: Lab, node: Node) -> int:
    """Power the node on until it has made its boot record, then cut the power."""
    before = len(node.created_seqs())
    lab.start_node(node)
    wait_until(lambda: len(node.created_seqs()) > before, 30, "the boot record")
    unplug(lab, node)
    return node.created_seqs()[-1]


def acked(node: Node) -> list[int]:
    return [int(e["seq"]) for e in node.events() if e.get("ev") == "ack"]


def buffer_files(node: Node) -> list[str]:
    data = node.flash / "data"
    return sorted(p.name for p in data.iterdir()) if data.exists() else []


def rekey(lab: Lab, node: Node, *extra: str) -> dict[str, Any]:
    _, summary = lab.repl_enroll(
        node.device_id, node.unique_id, node.device_id, "--new-key", "--replace", *extra
    )
    assert summary["key"] == "new"
    node.public_key = bytes.fromhex(summary["public_key"])
    assert lab.consumer is not None
    lab.consumer.keys[node.device_id] = node.public_key  # the cloud reads the registry
    return summary


def refused(lab: Lab, node: Node) -> str:
    key = lab.registry_key(node.device_id)
    with pytest.raises(LabError) as err:
        lab.repl_enroll(node.device_id, node.unique_id, node.device_id, "--new-key", "--replace")
    assert lab.registry_key(node.device_id) == key  # nothing changed
    return str(err.value)


def dropped_reading(lab: Lab, device: str, seq: int) -> int:
    assert lab.consumer is not None
    record = cbor2.loads(lab.consumer.ledger.raw[(device, seq)])
    pack = cbor2.loads(record.value[2])[3]
    return int(next(e[2] for e in pack if e.get(0) == "sys/dropped"))


def deliver(lab: Lab, node: Node) -> int:
    """With the gateway up: boot the node, wait until its boot record is ACKed (so every
    record it holds is) and verified at the consumer; returns its seq."""
    assert lab.consumer is not None
    consumer = lab.consumer
    before = len(node.created_seqs())
    lab.start_node(node)
    wait_until(lambda: len(node.created_seqs()) > before, 30, "the boot record")
    seq = node.created_seqs()[-1]
    wait_until(lambda: seq in acked(node), 60, f"the ACK of {seq}")
    wait_until(
        lambda: seq in consumer.snapshot().get(node.device_id, set()), 30, f"{seq} at the consumer"
    )
    unplug(lab, node)
    return seq


def test_rekey_with_pending_records_drain_or_drop(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=1, interval_s=3600)
    lab.start_broker()
    consumer = lab.start_consumer()
    node = lab.nodes[0]
    device = node.device_id
    _, kept = lab.repl_enroll(device, node.unique_id, device)  # one record per boot
    assert kept["key"] == "kept"

    # three boots with the gateway down: three records in the buffer, old key
    old = [boot_once(lab, node) for _ in range(3)]
    assert acked(node) == [] and buffer_files(node) != []
    msg = refused(lab, node)
    assert f"{device} has 3 records in its buffer" in msg and "--drop-pending" in msg, msg
    assert REFUSED in msg, msg

    # let it drain: connected to its gateway under the old key, everything is ACKed
    lab.start_gateway()
    old.append(deliver(lab, node))
    assert set(old) <= consumer.snapshot()[device]
    assert buffer_files(node) == []  # drained: the flash holds no record
    first = rekey(lab, node)
    assert (first["pending_records"], first["pending_dropped"]) == (0, None)
    new1 = deliver(lab, node)  # the new key's record reaches the gateway and the cloud
    assert new1 >= first["seq_floor"] > max(old)
    assert dropped_reading(lab, device, new1) == 0

    # two boots with the gateway down, then a re-key with --drop-pending. The gateway
    # goes once its queue is empty: a record left there would be published again after
    # its restart (at-least-once), signed with a key the consumer has replaced by then
    # (the queue database itself: the agent's status snapshot can be a second old)
    wait_until(lambda: lab.gateway_status()["queue_db"]["depth"] == 0, 30, "an empty queue")
    lab.kill_gateway()
    lost = [boot_once(lab, node) for _ in range(2)]
    msg = refused(lab, node)
    assert f"{device} has 2 records in its buffer" in msg and REFUSED in msg, msg
    second = rekey(lab, node, "--drop-pending")
    assert (second["pending_records"], second["pending_dropped"]) == (2, 2)
    assert buffer_files(node) == []
    lab.start_gateway()
    new2 = deliver(lab, node)  # not stuck behind the dropped records
    assert new2 >= second["seq_floor"] > max(lost)
    assert dropped_reading(lab, device, new2) == 2  # the drop is reported, not silent

    got = consumer.snapshot()[device]
    assert got == {*old, new1, new2} and not set(lost) & got
    assert consumer.ledger.bad == []
    status = lab.gateway_status()
    assert status["rejects"] == {}, status["rejects"]  # no bad-signature, no replay
    assert "event=record-rejected" not in (lab.dir / "gateway.log").read_text()  # all runs
