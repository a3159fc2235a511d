"""The real gateway in the VM, end to end: the firmware node (`citysense-emulator run`
on the host) -> pty bridge with a tap -> the guest's PCI UART (QEMU pty) ->
citysense-gateway (systemd, arm64) -> guest forward -> Mosquitto with mTLS (host
loopback) -> a verifying consumer (paho-mqtt + cryptography, host)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from citysense_formats import registry_entry
from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for
from citysense_lab.consumer import Consumer
from gateway.protocol.registry_update import ALL_GATEWAYS, RegistryUpdate, sign_update, topic_for

from node import EmulatedNode
from pki import LabCA
from report import CheckFailed, passed
from vm import Vm

if TYPE_CHECKING:
    from check import Scenario

GATEWAY_ID = "gw-qemu"
GUEST_TLS = "/etc/citysense/tls"
GUEST_REGISTRY = "/etc/citysense/registry"
GUEST_OPERATOR = "/etc/citysense/operator.pub"  # the guest's gateway.toml names it
GUEST_SYNCED = "/var/lib/private/citysense/registry"  # StateDirectory= of a DynamicUser
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
        self.operator_pair = self.ca.issue("operator")
        self.operator_seed = os.urandom(32)
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
        vm.put_file(GUEST_OPERATOR, (self.operator_pub().hex() + "\n").encode(), "0644")
        vm.sh("sync")

    def operator_pub(self) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.from_private_bytes(self.operator_seed)
        return key.public_key().public_bytes_raw()

    def publish_revocation(self) -> int:
        """`citysense-cloud registry publish`'s message, as the operator: the node's entry
        revoked, signed, retained for every gateway. Returns its version."""
        obj = json.loads(self.node.registry_entry())
        obj.update(status="revoked", revoked_at="2026-12-02T00:00:00Z")
        entries = {self.device_id: registry_entry.encode(obj)}
        version = int(time.time())
        body = sign_update(self.operator_seed, RegistryUpdate(version, ALL_GATEWAYS, entries, 0))
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv5
        )
        c.tls_set(str(self.ca.ca_file), str(self.operator_pair.cert), str(self.operator_pair.key))
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        try:
            info = c.publish(topic_for(ALL_GATEWAYS), body, qos=1, retain=True)
            info.wait_for_publish(30)
            if not info.is_published():
                raise AssertionError("the broker did not acknowledge the registry update")
        finally:
            c.disconnect()
            c.loop_stop()
        return version

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

    # 5. A registry update from the broker under the real unit, whose /etc/citysense is
    # read-only: applied into the state directory, the revocation in force.
    check_registry_sync(vm, flow)


def check_registry_sync(vm: Vm, flow: Flow) -> None:
    local = f"{GUEST_REGISTRY}/{flow.device_id}.json"
    before = hashlib.sha256(flow.node.registry_entry()).hexdigest()
    t0 = time.monotonic()
    version = flow.publish_revocation()
    written = f"event=registry-written version={version} entries=1"
    show = f"citysense-gateway device show {flow.device_id} --config /etc/citysense/gateway.toml"
    grep = "journalctl -u citysense-gateway -o cat --no-pager | grep -E 'registry-(written|update)'"
    deadline = t0 + 60
    while True:
        _, journal = vm.sh(f"{grep} | tail -n 5", timeout=60, check=False)
        if written in journal:
            break
        if "registry-update-failed" in journal or time.monotonic() > deadline:
            raise AssertionError(f"registry update {version} not applied: {journal.strip()!r}")
        time.sleep(1.0)
    _, info = vm.sh(f"{show} --json", timeout=60)
    shown, _ = json.JSONDecoder().raw_decode(info[info.index("{") :])
    status = (shown.get("registry") or {}).get("status")
    if status != "revoked":
        raise AssertionError(f"after registry update {version} the node is {status!r}")
    _, synced = vm.sh(f"sha256sum {GUEST_SYNCED}/{flow.device_id}.json {local}", timeout=60)
    sums = [line.split()[0] for line in synced.splitlines() if line.strip()]
    if len(sums) != 2 or sums[1] != before or sums[0] == before:
        raise AssertionError(f"synced copy and /etc entry: {synced.strip()!r}")
    passed(
        f"registry update {version} from the broker applied under the unit's read-only "
        f"/etc/citysense in {time.monotonic() - t0:.1f} s: written to {GUEST_SYNCED}, the "
        f"node revoked (device show), {local} untouched"
    )
