"""The delivery contract with every real part running (issue 6): emulated nodes (real
firmware under the real micropython), real ptys, the real gateway process, a real
Mosquitto with mTLS from citysense-provision certificates, and an independent consumer.

Each scenario asserts that every record created reaches the consumer exactly once after
dedup by (device, seq), that all signatures verify and per-device order is kept.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from ledger import FULL, assert_balanced, seconds, settle

from citysense_formats import registry_entry
from citysense_lab.hostile import HOSTILE_ID, HostileNode
from citysense_lab.noise import NoiseConfig, NoiseProxy
from citysense_lab.procs import wait_until
from citysense_lab.stack import Lab, tool
from gateway.protocol import decode_command_result

MakeLab = Callable[..., Lab]


def _status(lab: Lab) -> dict:  # type: ignore[type-arg]
    return lab.gateway_status()


def _wait_flowing(lab: Lab, timeout: float = 60) -> None:
    assert lab.consumer is not None
    wait_until(
        lambda: all(len(lab.consumer.snapshot().get(n.device_id, ())) >= 2 for n in lab.nodes),
        timeout,
        "records from every node at the consumer",
    )


def test_1_steady_state(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=5)
    lab.run()
    _wait_flowing(lab)
    time.sleep(seconds(30, 180))
    created = settle(lab, 60)
    assert_balanced(lab, created)
    for node in lab.nodes:
        lab.power_cut(node)
    assert lab.consumer is not None
    consumer = lab.consumer
    # status.json is rewritten at most once a second, so a read right after the power cut
    # may predate the last records the gateway accepted: wait (bounded) for the counters
    # of a snapshot taken after the queue drained to catch up, then compare them exactly
    seen: list[tuple[int, int, int]] = []

    def caught_up() -> bool:
        status = _status(lab)
        received = sum(len(s) for s in consumer.snapshot().values())
        seen.append((status["accepted"], status["uplink"]["published"], received))
        return status["queue"]["depth"] == 0 and status["accepted"] == received

    try:
        wait_until(caught_up, 30, "the gateway queue to drain and status.json to catch up")
    except AssertionError:
        raise AssertionError(f"(accepted, published, received) last read {seen[-1:]}") from None
    status = _status(lab)
    received = sum(len(s) for s in consumer.snapshot().values())
    assert status["accepted"] == status["uplink"]["published"] == received
    assert all(lab.consumer.ledger.duplicates(n.device_id) == 0 for n in lab.nodes)
    assert status["rejects"] == {}
    # the device key the node generated at enrollment is owner-only on the emulated flash
    for node in lab.nodes:
        assert (node.flash / "config" / "device.key").stat().st_mode & 0o777 == 0o600


def test_2_broker_outage_and_backpressure(make_lab: MakeLab) -> None:
    bound_kib = 64  # the gateway's smallest queue bound; 5 nodes fill it in ~40 s
    lab = make_lab(nodes=5, queue_max_bytes=f"{bound_kib}KiB")
    lab.run()
    _wait_flowing(lab)
    assert lab.broker is not None
    lab.broker.stop()
    time.sleep(seconds(30, 60))  # the "broker stopped for 30 s"
    lab.broker.start()
    _wait_flowing(lab)
    # a long outage with a queue bound small enough to push back into the nodes' flash
    lab.broker.stop()
    wait_until(lambda: _status(lab)["rejects"].get("busy", 0) > 0, seconds(120, 600),
               "the gateway to NACK busy once its queue is full")  # fmt: skip
    time.sleep(seconds(10, 600))
    status = _status(lab)
    assert status["queue"]["bytes"] <= bound_kib * 1024
    lab.broker.start()
    created = settle(lab, 180)
    assert_balanced(lab, created)


def test_3_gateway_kill9(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3)
    lab.run()
    _wait_flowing(lab)
    rng = random.Random(3)
    for _ in range(10 if FULL else 5):
        time.sleep(rng.uniform(0.5, 4.0))
        lab.kill_gateway()
        time.sleep(rng.uniform(0.0, 2.0))
        lab.start_gateway()
    created = settle(lab, 120)
    assert_balanced(lab, created)


def test_4_node_power_cuts(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3)
    lab.run()
    _wait_flowing(lab)
    rng = random.Random(4)
    for _ in range(10 if FULL else 5):
        time.sleep(rng.uniform(0.5, 3.0))
        node = rng.choice(lab.nodes)
        lab.power_cut(node)
        time.sleep(rng.uniform(0.0, 1.0))
        lab.start_node(node)
    created = settle(lab, 120)
    assert_balanced(lab, created, power_cuts=True)


def test_5_line_noise(make_lab: MakeLab) -> None:
    noise = NoiseConfig(flip=1e-3, drop=1e-3, baud=115200)
    lab = make_lab(nodes=3, noise=noise)
    lab.run()
    _wait_flowing(lab, 90)
    time.sleep(seconds(20, 120))
    flipped = sum(n.proxy.stats[d].flipped for n in lab.nodes if n.proxy for d in ("up", "down"))
    assert flipped > 0, "the noise proxy injected no bit flip: the scenario proved nothing"
    # At 2e-3 errors per byte about half of all 400-byte frames die, and stop-and-wait
    # with retransmit back-off moves fewer records than one per second: the backlog
    # waits in the nodes' flash. The line is then cleaned so that it drains.
    noise.flip = noise.drop = 0.0
    created = settle(lab, 180)
    assert_balanced(lab, created)
    status = _status(lab)
    assert sum(status["frame_errors"].values()) > 0
    assert status["rejects"] == {}, "a corrupted record got past the CRC"


def test_6_hostile_node(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3)
    seed = bytes(range(7, 39))
    pub = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    entry = {"device_id": HOSTILE_ID, "public_key": pub.hex(), "status": "active"}
    (lab.registry / f"{HOSTILE_ID}.json").write_bytes(registry_entry.encode(entry))
    lab.run()
    hostile = HostileNode(lab.links / "hostile.tty", seed)
    hostile.start()
    try:
        _wait_flowing(lab)
        time.sleep(seconds(20, 60))
        created = settle(lab, 60)
        assert_balanced(lab, created)
    finally:
        hostile.stop()
    status = _status(lab)
    rejects = status["rejects"]
    assert rejects.get("bad-signature", 0) > 0
    assert rejects.get("replay", 0) > 0
    assert rejects.get("unknown-device", 0) > 0
    assert sum(status["frame_errors"].values()) > 0
    assert lab.consumer is not None
    # its validly signed first copies are delivered; no replay (value 99.0) ever is
    hostile_seqs = lab.consumer.ledger.arrivals.get(HOSTILE_ID, [])
    assert hostile_seqs, "the hostile node's valid records were not delivered"
    for seq in set(hostile_seqs):
        payload = cbor2.loads(cbor2.loads(lab.consumer.ledger.raw[(HOSTILE_ID, seq)]).value[2])
        assert payload[3][0][2] == 1.0


def test_7_revocation(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=2)
    lab.run()
    _wait_flowing(lab)
    victim = lab.nodes[1]
    subprocess.run(
        [tool("citysense-provision"), "registry", "revoke", victim.device_id,
         "--registry", str(lab.registry)],
        env=lab.env, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    revoked_at = time.monotonic()
    wait_until(lambda: _status(lab)["rejects"].get("revoked", 0) > 0, 10,
               "the gateway to NACK the revoked device")  # fmt: skip
    assert lab.consumer is not None
    time.sleep(max(0.0, revoked_at + 2.5 - time.monotonic()))
    frozen = set(lab.consumer.snapshot().get(victim.device_id, set()))
    time.sleep(5)
    assert lab.consumer.snapshot().get(victim.device_id, set()) == frozen
    created = settle(lab_view(lab, [lab.nodes[0]]), 60)
    assert_balanced(lab_view(lab, [lab.nodes[0]]), created)


def lab_view(lab: Lab, nodes: list) -> Lab:  # type: ignore[type-arg]
    """The same lab, its ledger restricted to some nodes."""
    view = object.__new__(Lab)
    view.__dict__.update(lab.__dict__)
    view.nodes = nodes
    return view


def test_8_command_from_the_cloud(make_lab: MakeLab) -> None:
    """The operator's tool, with the operator's certificate (the only identity the
    broker's ACL lets publish commands): signed, delivered, applied, result verified."""
    lab = make_lab(nodes=2)
    lab.run()
    _wait_flowing(lab)
    target = lab.nodes[0]
    argv = [tool("citysense-cloud"), "--config", str(lab.cloud_config()), "command", "send",
            "--gateway", lab.opts.gateway_id, "--device", target.device_id,
            "set_interval", "interval_s=3", "--wait", "30"]  # fmt: skip
    res = subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"applied: {target.device_id} command ")
    assert line.endswith(
        f" set_interval interval_s=3: interval_s=3 (result signed by {target.device_id}, verified)"
    )
    assert lab.consumer is not None
    wait_until(lambda: bool(lab.consumer.ledger.results), 30, "the signed command result")
    device, raw = lab.consumer.ledger.results[0]
    assert device == target.device_id
    result = decode_command_result(target.public_key, raw)
    assert result.ok and result.detail == "interval_s=3"
    # applied: the node now samples every 3 s
    n0 = len(target.created_seqs())
    time.sleep(9.5)
    assert 2 <= len(target.created_seqs()) - n0 <= 4


def test_9_unplug_replug(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=2, noise=NoiseConfig(baud=0))
    lab.run()
    _wait_flowing(lab)
    node = lab.nodes[0]
    assert node.proxy is not None and lab.consumer is not None
    consumer = lab.consumer

    def delivered() -> int:
        return len(consumer.snapshot().get(node.device_id, set()))

    for _ in range(2):
        node.proxy.stop()  # the serial device disappears
        time.sleep(3)
        node.proxy = NoiseProxy(node.link, node.gateway_link, NoiseConfig(baud=0), 99)
        node.proxy.start()  # and comes back, as a new pty
        before = delivered()
        wait_until(
            lambda b=before: delivered() > b,  # type: ignore[misc]
            30,
            "records again after the replug",
        )
    created = settle(lab, 60)
    assert_balanced(lab, created)
