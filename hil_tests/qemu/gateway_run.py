"""The real gateway in the VM, end to end: node (host) -> guest virtio serial port ->
citysense-gateway (systemd, arm64) -> guest forward -> Mosquitto with mTLS (host
loopback) -> a verifying consumer (paho-mqtt + cryptography, host)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for
from citysense_lab.consumer import Consumer

from node import ProtocolNode
from pki import LabCA
from report import CheckFailed, passed
from vm import Vm

if TYPE_CHECKING:
    from check import Scenario

GATEWAY_ID = "gw-qemu"
GUEST_TLS = "/etc/citysense/tls"
GUEST_REGISTRY = "/etc/citysense/registry"
FLOW_TIMEOUT = 180.0


def _say(msg: str) -> None:
    print(f"qemu-check: {msg}", flush=True)


def _readable_by_mosquitto(key: Path, ca_file: Path) -> None:
    """Mosquitto started as root drops to the `mosquitto` user before it reads its files:
    it may pass through their (0700) directories, and own its key (0600)."""
    for folder in (key.parent, ca_file.parent):
        folder.chmod(0o711)
    if os.geteuid() == 0:
        try:
            shutil.chown(key, user="mosquitto")
        except LookupError:
            pass


class Flow:
    """The node, the broker and the consumer on the host."""

    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.ca = LabCA(work / "pki")
        broker = self.ca.issue("broker", server=True)
        _readable_by_mosquitto(broker.key, self.ca.ca_file)
        self.gateway = self.ca.issue(GATEWAY_ID)
        consumer = self.ca.issue("consumer")
        (work / "mosquitto").mkdir(exist_ok=True)
        self.broker = Mosquitto(
            work / "mosquitto",
            port,
            BrokerTLS(self.ca.ca_file, broker.cert, broker.key),
            acl=acl_for([GATEWAY_ID]),
        )
        seed = os.urandom(32)
        self.device_id = "esp32-" + os.urandom(6).hex()
        self.public = (
            Ed25519PrivateKey.from_private_bytes(seed)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        self.seed = seed
        self.consumer = Consumer(
            port,
            {self.device_id: self.public},
            BrokerTLS(self.ca.ca_file, consumer.cert, consumer.key),
        )
        self.node: ProtocolNode | None = None

    def registry_entry(self) -> bytes:
        entry = {
            "device_id": self.device_id,
            "public_key": self.public.hex(),
            "status": "active",
            "enrolled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "revoked_at": None,
            "firmware_sha256": None,
        }
        return json.dumps(entry).encode()

    def provision_guest(self, vm: Vm) -> None:
        vm.put_file(f"{GUEST_TLS}/ca.pem", self.ca.ca_file.read_bytes(), "0644")
        vm.put_file(f"{GUEST_TLS}/{GATEWAY_ID}.pem", self.gateway.cert.read_bytes(), "0644")
        # as docs/gateway.md says: the DynamicUser service reads its key through dialout
        key = self.gateway.key.read_bytes()
        vm.put_file(f"{GUEST_TLS}/{GATEWAY_ID}.key", key, "0640", group="dialout")
        vm.put_file(f"{GUEST_REGISTRY}/{self.device_id}.json", self.registry_entry(), "0644")
        vm.sh("sync")

    def delivered(self) -> set[int]:
        return self.consumer.snapshot().get(self.device_id, set())

    def wait_delivered(self, seqs: set[int], what: str, timeout: float = FLOW_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = seqs - self.delivered()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: {len(missing)} of {len(seqs)} records never reached the broker "
                    f"(first missing seq {min(missing)})"
                )
            time.sleep(0.5)

    def created(self) -> set[int]:
        assert self.node is not None
        return set(self.node.snapshot()[0])

    def check_identical(self) -> int:
        """Every record at the broker verified, and is byte for byte what the node made."""
        assert self.node is not None
        records, _ = self.node.snapshot()
        ledger = self.consumer.ledger
        if ledger.bad:
            raise AssertionError(f"the consumer rejected records: {ledger.bad[:3]}")
        for (device, seq), raw in sorted(ledger.raw.items()):
            if device != self.device_id or records.get(seq) != raw:
                raise AssertionError(f"record {device}/{seq} at the broker differs from the node's")
        return len(ledger.raw)

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        try:
            self.consumer.stop()
        except Exception:  # best effort on the way out
            pass
        self.broker.stop()


def run(scn: Scenario) -> None:
    flow = Flow(scn.work, scn.mqtt_port)
    try:
        _run(scn, flow)
    except AssertionError as exc:
        raise CheckFailed(str(exc)) from None
    finally:
        flow.close()


def _run(scn: Scenario, flow: Flow) -> None:
    flow.broker.start()
    flow.consumer.start()
    vm = scn.resume_snapshot()
    flow.provision_guest(vm)
    # The node is on the line before the gateway starts, as in the field: the guest's
    # port reads end of file while nobody holds the host side of the pty.
    flow.node = node = ProtocolNode(flow.device_id, flow.seed, vm.link_pty)
    node.start()
    time.sleep(2)
    scn.start_unit(vm)

    # 1. Records flow node -> guest gateway -> broker, byte-identical and verified.
    t0 = time.monotonic()
    deadline = t0 + FLOW_TIMEOUT
    while len(flow.delivered()) < 10:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {len(flow.delivered())} records reached the broker in "
                f"{FLOW_TIMEOUT:.0f} s (node acked {node.acked}, nacks {node.nacks[:3]})"
            )
        time.sleep(0.5)
    n = flow.check_identical()
    passed(
        f"records node -> guest gateway -> broker: {n} byte-identical, verified with "
        f"cryptography (first 10 in {time.monotonic() - t0:.1f} s)"
    )

    # 2. SIGKILL: systemd restarts it; nothing lost.
    scn.check_sigkill(vm)
    before = flow.created()
    flow.wait_delivered(before, "after SIGKILL")
    passed(f"after SIGKILL nothing lost: all {len(before)} records created so far delivered")

    # 3. Watchdog.
    scn.check_watchdog(vm)
    before = flow.created()
    flow.wait_delivered(before, "after the watchdog restart")
    passed(f"after the watchdog restart nothing lost: {len(before)} records delivered")

    scn.check_security(vm)
    scn.check_journal(vm, rf"event=hello device={flow.device_id} port=\S+ boot=")

    # 4. Power cut mid-stream with records only in the gateway's queue.
    flow.broker.stop()
    seen = max(flow.delivered())
    deadline = time.monotonic() + FLOW_TIMEOUT
    while node.acked < seen + 5:
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway stopped acking with the broker down ({node.acked})")
        time.sleep(0.2)
    queued = set(range(seen + 1, node.acked + 1))
    scn.power_cut()
    _say(f"power cut with {len(queued)} acked records only in the guest's queue")
    flow.broker.start()
    vm = scn.cold_boot()
    node.relink(vm.link_pty)
    time.sleep(2)
    scn.start_unit(vm)
    flow.wait_delivered(queued, "after the power cut")
    passed(f"power cut mid-stream: the queue was intact, {len(queued)} queued records drained")

    node.producing.clear()
    final = flow.created()
    flow.wait_delivered(final, "at the end")
    n = flow.check_identical()
    dups = flow.consumer.ledger.duplicates(flow.device_id)
    passed(
        f"end: all {len(final)} records the node created reached the broker "
        f"({n} unique, byte-identical; {dups} duplicate deliveries, deduped by seq)"
    )
