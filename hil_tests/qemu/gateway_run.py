"""The real gateway in the VM, end to end: the firmware node (`citysense-emulator run`
on the host) -> pty bridge with a tap -> the guest's PCI UART (QEMU pty) ->
citysense-gateway (systemd, arm64) -> guest forward -> Mosquitto with mTLS (host
loopback) -> a verifying consumer (paho-mqtt + cryptography, host)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for
from citysense_lab.consumer import Consumer

from node import EmulatedNode
from pki import LabCA
from report import CheckFailed, passed
from vm import Vm

if TYPE_CHECKING:
    from check import Scenario

GATEWAY_ID = "gw-qemu"
GUEST_TLS = "/etc/citysense/tls"
GUEST_REGISTRY = "/etc/citysense/registry"
FLOW_TIMEOUT = 300.0


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
        self.consumer_pair = self.ca.issue("consumer")
        (work / "mosquitto").mkdir(exist_ok=True)
        self.broker = Mosquitto(
            work / "mosquitto",
            port,
            BrokerTLS(self.ca.ca_file, broker.cert, broker.key),
            acl=acl_for([GATEWAY_ID]),
        )
        self.port = port
        self.node = EmulatedNode(work / "node")
        self.consumer: Consumer | None = None

    @property
    def device_id(self) -> str:
        return self.node.device_id

    def enroll(self) -> None:
        """The node enrolled through its REPL; the consumer knows its registered key."""
        t0 = time.monotonic()
        self.node.enroll()
        self.consumer = Consumer(
            self.port,
            {self.device_id: self.node.public_key},  # from the registry entry
            BrokerTLS(self.ca.ca_file, self.consumer_pair.cert, self.consumer_pair.key),
        )
        _say(
            f"node {self.device_id} enrolled through citysense-emulator repl "
            f"(deploy + enroll) in {time.monotonic() - t0:.1f} s"
        )

    def provision_guest(self, vm: Vm) -> None:
        vm.put_file(f"{GUEST_TLS}/ca.pem", self.ca.ca_file.read_bytes(), "0644")
        vm.put_file(f"{GUEST_TLS}/{GATEWAY_ID}.pem", self.gateway.cert.read_bytes(), "0644")
        # as docs/gateway.md says: the DynamicUser service reads its key through dialout
        key = self.gateway.key.read_bytes()
        vm.put_file(f"{GUEST_TLS}/{GATEWAY_ID}.key", key, "0640", group="dialout")
        # the registry entry `citysense-provision enroll` wrote, unchanged
        entry = self.node.registry_entry()
        vm.put_file(f"{GUEST_REGISTRY}/{self.device_id}.json", entry, "0644")
        vm.sh("sync")

    def delivered(self) -> set[int]:
        assert self.consumer is not None
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
                    f"(first missing seq {min(missing)}; node acked up to {self.node.acked()})"
                    f"\nnode log tail:\n{self.node.log_tail()}"
                )
            time.sleep(0.5)

    def created(self) -> set[int]:
        """Every seq the node logged as created; none may have been dropped unsent."""
        dropped = self.node.dropped()
        if dropped:
            raise AssertionError(f"the node's buffer dropped {dropped} unacked records")
        return self.node.created()

    def check_identical(self) -> int:
        """Every record at the broker verified, and is byte for byte the body of a RECORD
        frame the node wrote on its link (the bridge's tap)."""
        assert self.consumer is not None
        written = self.node.written()
        assert self.node.bridge is not None
        if self.node.bridge.conflicts:
            raise AssertionError(
                f"the node wrote different bytes for seq {self.node.bridge.conflicts[:3]}"
            )
        ledger = self.consumer.ledger
        if ledger.bad:
            raise AssertionError(f"the consumer rejected records: {ledger.bad[:3]}")
        for (device, seq), raw in sorted(ledger.raw.items()):
            if device != self.device_id or written.get(seq) != raw:
                raise AssertionError(
                    f"record {device}/{seq} at the broker differs from what the node wrote"
                )
        return len(ledger.raw)

    def close(self) -> None:
        self.node.stop()
        if self.consumer is not None:
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
    flow.enroll()
    flow.broker.start()
    assert flow.consumer is not None
    flow.consumer.start()
    vm = scn.resume_snapshot()
    flow.provision_guest(vm)
    # The node is on the line before the gateway starts, as in the field: the guest's
    # port reads end of file while nobody holds the host side of the pty.
    node = flow.node
    node.start(vm.link_pty)
    time.sleep(2)
    scn.start_unit(vm)

    # 1. Records flow node -> guest gateway -> broker, byte-identical and verified.
    t0 = time.monotonic()
    deadline = t0 + FLOW_TIMEOUT
    while len(flow.delivered()) < 10:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {len(flow.delivered())} records reached the broker in "
                f"{FLOW_TIMEOUT:.0f} s (node created {len(node.created())}, acked up to "
                f"{node.acked()})\nnode log tail:\n{node.log_tail()}"
            )
        time.sleep(0.5)
    n = flow.check_identical()
    passed(
        f"records firmware node -> guest gateway -> broker: {n} byte-identical to the "
        f"RECORD frames the node wrote, verified with cryptography "
        f"(first 10 in {time.monotonic() - t0:.1f} s)"
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
    while node.acked() < seen + 5:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the gateway stopped acking with the broker down (acked up to "
                f"{node.acked()}, last delivered {seen})"
            )
        time.sleep(0.2)
    acked = node.acked()
    queued = {s for s in flow.created() if seen < s <= acked}
    scn.power_cut()
    _say(f"power cut with {len(queued)} acked records only in the guest's queue")
    flow.broker.start()
    vm = scn.cold_boot()
    node.relink(vm.link_pty)
    time.sleep(2)
    scn.start_unit(vm)
    flow.wait_delivered(queued, "after the power cut")
    passed(f"power cut mid-stream: the queue was intact, {len(queued)} queued records drained")

    # The node keeps making records: everything it had made by now must arrive.
    final = flow.created()
    flow.wait_delivered(final, "at the end")
    n = flow.check_identical()
    dups = flow.consumer.ledger.duplicates(flow.device_id)
    assert node.bridge is not None
    passed(
        f"end: all {len(final)} records the node created reached the broker "
        f"({n} unique, byte-identical; {dups} duplicate deliveries, deduped by seq; "
        f"{node.bridge.dropped} node bytes dropped while the VM was off)"
    )
