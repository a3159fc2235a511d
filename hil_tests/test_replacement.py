"""Replacing a broken node under the same device id, with every real part running.

Node A (enrolled through its REPL, as every lab node) reports through the real gateway
and broker to the consumer; then it dies. A fresh board B (a new flash folder: new
hardware) is deployed and enrolled under A's id with `enroll --replace`, as
docs/provisioning.md's replacement procedure says, and takes A's place on the line.
Enrollment gave B a seq floor (Unix ms), so every record of B is above what the gateway
holds for the id: all of them reach the consumer, none is NACKed `replay` (which the node
answers by deleting the record), and (device_id, seq) stays unique at the cloud.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger import settle

from citysense_lab.procs import wait_until
from citysense_lab.stack import Lab, Node

MakeLab = Callable[..., Lab]
NEW_UID = "02c17e0000ff"


def enroll_replacement(lab: Lab, old: Node, uid: str) -> tuple[Node, dict[str, Any]]:
    """Deploy and enroll a fresh board under `old`'s id through its REPL (--replace)."""
    name = f"{old.device_id}-{uid}"
    flash, summary = lab.repl_enroll(name, uid, old.device_id, "--replace")
    new = Node(
        index=old.index,
        device_id=old.device_id,
        unique_id=uid,
        flash=flash,
        link=old.link,  # plugged into the same serial port of the gateway
        gateway_link=old.gateway_link,
        log=lab.dir / f"{name}.log",
        public_key=bytes.fromhex(summary["public_key"]),
    )
    return new, summary


def test_replaced_node_delivers_everything(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=1)
    lab.run()
    consumer = lab.consumer
    assert consumer is not None
    old = lab.nodes[0]
    device = old.device_id

    def delivered() -> set[int]:
        return consumer.snapshot().get(device, set())

    wait_until(lambda: len(delivered()) >= 3, 60, "records of the first node at the consumer")
    lab.power_cut(old)  # the node breaks, and is unplugged: its pty link must go, or the
    # gateway's port scan would open whatever pty reuses its number (B's REPL, below)
    old.gateway_link.unlink()
    # what the gateway took from A has been published and reached the consumer (checked
    # with A's key) before the consumer learns B's key
    wait_until(
        lambda: (
            (s := lab.gateway_status())["queue"]["depth"] == 0 and len(delivered()) == s["accepted"]
        ),
        30,
        "the first node's records to drain to the consumer",
    )
    from_old = delivered()

    new, summary = enroll_replacement(lab, old, NEW_UID)
    assert summary["key"] == "new" and summary["replaced_key_fingerprint"]
    floor = summary["seq_floor"]
    assert summary["seq_state_before"] is None and summary["seq_state"] == floor
    assert floor > max(from_old)
    consumer.keys[device] = new.public_key  # the cloud reads the new key from the registry
    lab.nodes[0] = new
    lab.start_node(new)

    wait_until(lambda: len(delivered() - from_old) >= 5, 60, "records of the new node")
    created = settle(lab, 30)[device]  # every record B created so far reached the consumer
    assert created[0] == floor  # B continues at its floor
    assert created == sorted(set(created))

    ledger = consumer.ledger
    assert ledger.bad == []
    got = delivered()
    assert from_old | set(created) <= got
    assert all(s > created[-1] for s in got - from_old - set(created))  # B's newer ones
    assert ledger.order_violations(device) == 0
    status = lab.gateway_status()
    assert status["rejects"] == {}, status["rejects"]  # no replay (nor anything else)
    log = (lab.dir / "gateway.log").read_text()
    assert "event=replay" not in log and "event=seq-behind" not in log
    acked = [e["seq"] for e in new.events() if e.get("ev") == "ack"]
    assert acked and min(acked) >= floor
