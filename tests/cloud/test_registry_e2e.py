"""`citysense-cloud registry publish` to two real gateways through Mosquitto with the
lab's ACL (citysense_lab.broker.acl_for) over mTLS; scripted nodes on real ptys.

- gw-a is connected when version 1 is published; gw-b starts afterwards and catches up
  from the retained message (its status reports the version);
- a revocation published while both are connected: the next record of the device gets
  NACK revoked on both, within 5 s of the broker's PUBACK to the tool;
- an update signed by another key and an older version are refused and counted on both,
  and leave each registry directory as the last good version wrote it;
- the ACL: a gateway may not publish a registry update.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import REPO, free_port

sys.path[:0] = [str(REPO / "tests" / "gateway")]

from cloudsupport import raw_publish  # noqa: E402
from gwsupport import (  # noqa: E402
    Node,
    Pty,
    make_node,
    make_pki,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)

from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for, have_mosquitto  # noqa: E402
from gateway.protocol import FrameType, NackReason, decode_ack, decode_nack  # noqa: E402
from gateway.protocol.registry_update import RegistryUpdate, sign_update  # noqa: E402
from provisioning import ca  # noqa: E402

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
OPERATOR_SEED = bytes(range(100, 132))
GWS = ("gw-a", "gw-b")


@dataclass
class Gateway:
    name: str
    dir: Path
    config: Path
    metrics_port: int
    pty: Pty
    proc: subprocess.Popen[bytes] | None = None
    seq: int = 0

    @property
    def log(self) -> Path:
        return self.dir / "gw.log"

    def status(self) -> dict[str, object]:
        path = self.dir / "state" / "status.json"
        try:
            obj: dict[str, object] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return obj

    def send(self, node: Node, timeout: float = 10) -> tuple[str, int]:
        """One new record of `node`; ("ack", seq) or ("nack", reason)."""
        self.seq += 1
        before = len(self.pty.frames)
        self.pty.write(node.record_frame(self.seq))
        frames = self.pty.wait_for(
            lambda fs: any(f.type in (FrameType.ACK, FrameType.NACK) for f in fs[before:]),
            timeout,
        )
        f = next(f for f in frames[before:] if f.type in (FrameType.ACK, FrameType.NACK))
        if f.type == FrameType.ACK:
            return "ack", decode_ack(f.body)
        return "nack", decode_nack(f.body)[1]

    def counter(self, outcome: str) -> float:
        key = f'citysense_registry_updates_total{{outcome="{outcome}"}}'
        return scrape(self.metrics_port).get(key, 0.0)


@dataclass
class Fleet:
    dir: Path
    pki: dict[str, Path]
    port: int
    gws: dict[str, Gateway]
    nodes: list[Node]

    def cloud(self, *argv: str) -> subprocess.CompletedProcess[str]:
        toml = self.dir / "cloud.toml"
        toml.write_text(
            f"""[broker]
url = "mqtts://localhost:{self.port}"
ca_file = "{self.pki["ca"]}"
cert_file = "{self.pki["operator_cert"]}"
key_file = "{self.pki["operator_key"]}"
[registry]
path = "{self.dir / "registry"}"
[operator]
key_file = "{self.dir / "operator.key"}"
[state]
dir = "{self.dir / "cloud-state"}"
"""
        )
        return subprocess.run(
            [sys.executable, "-m", "cloud.cli", "--config", str(toml), *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def publish(self) -> int:
        out = self.cloud("registry", "publish", "--json")
        assert out.returncode == 0, out.stderr
        version: int = json.loads(out.stdout)["version"]
        return version

    def start(self, gw: Gateway) -> None:
        gw.proc = start_gateway(gw.config, gw.log)
        wait_log(gw.log, "event=uplink-connected", timeout=60)
        wait_log(gw.log, "event=port-open", timeout=60)

    def raw_publish(self, identity: str, topic: str, body: bytes) -> int:
        """QoS 1, not retained, as `identity`; the PUBACK reason code."""
        return raw_publish(self.port, self.pki, identity, topic, body)


def _pki(d: Path) -> dict[str, Path]:
    pki = make_pki(d, GWS[0])
    for gw in GWS[1:]:
        ca.gateway_cert(gw, d / gw, d / "ca")
        pki[f"{gw}_cert"], pki[f"{gw}_key"] = d / gw / "gateway.crt", d / gw / "gateway.key"
    return pki


def _operator_files(d: Path) -> Path:
    key = Ed25519PrivateKey.from_private_bytes(OPERATOR_SEED)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (d / "operator.key").write_bytes(pem)
    (d / "operator.key").chmod(0o600)
    (d / "operator.pub").write_text(key.public_key().public_bytes_raw().hex() + "\n")
    return d / "operator.pub"


def _gateway(d: Path, name: str, pki: dict[str, Path], port: int, operator: Path) -> Gateway:
    gd = d / name
    gd.mkdir()
    metrics_port = free_port()
    cfg = write_config(
        gd / "gw.toml",
        id=f'"{name}"',
        url=f'"mqtts://localhost:{port}"',
        listen=f'"127.0.0.1:{metrics_port}"',
        extra_uplink=(
            f'ca_file = "{pki["ca"]}"\ncert_file = "{pki[f"{name}_cert"]}"\n'
            f'key_file = "{pki[f"{name}_key"]}"\n'
        ),
        extra_gateway=f'operator_key = "{operator}"',
    )
    return Gateway(name, gd, cfg, metrics_port, Pty(gd / "tty0"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    d = tmp_path_factory.mktemp("regsync")
    pki = _pki(d / "pki")
    (d / "broker").mkdir()
    (d / "registry").mkdir()
    tls = BrokerTLS(pki["ca"], pki["broker_cert"], pki["broker_key"])
    broker = Mosquitto(d / "broker", free_port(), tls, acl_for(list(GWS)))
    broker.start()
    operator = _operator_files(d)
    gws = {name: _gateway(d, name, pki, broker.port, operator) for name in GWS}
    nodes = [make_node("node-1"), make_node("node-2")]
    for node in nodes:
        write_entry(d / "registry", node)
    try:
        yield Fleet(d, pki, broker.port, gws, nodes)
    finally:
        for gw in gws.values():
            if gw.proc is not None:
                stop(gw.proc)
            gw.pty.close()
        broker.stop()


def _registry_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.json"))}


def _wait_status_version(gw: Gateway, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while gw.status().get("registry_version") != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gw.name} status: {gw.status().get('registry_version')}")
        time.sleep(0.1)


def test_publish_catch_up_revoke_refuse(fleet: Fleet) -> None:
    a, b = fleet.gws["gw-a"], fleet.gws["gw-b"]
    node1, node2 = fleet.nodes
    fleet.start(a)
    v1 = fleet.publish()
    wait_log(a.log, f"event=registry-written version={v1} entries=2")
    _wait_status_version(a, v1)
    a.pty.write(node1.hello_frame())
    assert a.send(node1) == ("ack", 1)

    # gw-b was offline at the publish: the retained message brings it the registry
    fleet.start(b)
    wait_log(b.log, f"event=registry-written version={v1} entries=2")
    _wait_status_version(b, v1)
    # written into its state dir (its configured registry dir is never written)
    assert _registry_files(b.dir / "state" / "registry") == _registry_files(fleet.dir / "registry")
    b.pty.write(node1.hello_frame())
    assert b.send(node1) == ("ack", 1)

    # a revocation while both are connected: enforced on both within 5 s of the PUBACK
    write_entry(fleet.dir / "registry", node1, status="revoked")
    v2 = fleet.publish()
    published = time.monotonic()
    assert v2 > v1
    for gw in (a, b):
        while (got := gw.send(node1, timeout=5)) != ("nack", NackReason.REVOKED):
            assert got[0] == "ack"
            assert time.monotonic() - published < 5.0, f"{gw.name} still ACKs node-1"
        print(f"{gw.name}: revoked enforced {time.monotonic() - published:.2f} s after PUBACK")
    for gw in (a, b):
        _wait_status_version(gw, v2)
    good = _registry_files(fleet.dir / "registry")

    # forged (another key, a higher version) and older (the operator's, version 1): refused
    forged_key = bytes(range(1, 33))
    entries_all_revoked = {
        n.device_id: (fleet.dir / "registry" / f"{n.device_id}.json").read_bytes()
        for n in fleet.nodes
    }
    forged = sign_update(forged_key, RegistryUpdate(v2 + 100, "*", entries_all_revoked, 0))
    assert fleet.raw_publish("operator", "citysense/v1/registry", forged) == 0
    older = sign_update(OPERATOR_SEED, RegistryUpdate(v1, "*", entries_all_revoked, 0))
    assert fleet.raw_publish("operator", "citysense/v1/gw-b/registry", older) == 0
    assert fleet.raw_publish("operator", "citysense/v1/gw-a/registry", older) == 0
    for gw in (a, b):
        wait_log(gw.log, "event=registry-update outcome=stale")
        assert gw.counter("bad-signature") == 1
        assert gw.counter("stale") == 1
        assert gw.counter("applied") == 2
        assert gw.status().get("registry_version") == v2
        assert _registry_files(gw.dir / "state" / "registry") == good
        assert gw.send(node2)[0] == "ack"  # node-2 stays active: the forgery changed nothing

    # the ACL: a gateway cannot publish a registry update (v5 PUBACK 0x87)
    body = sign_update(OPERATOR_SEED, RegistryUpdate(v2 + 1, "*", entries_all_revoked, 0))
    assert fleet.raw_publish("gw-a", "citysense/v1/registry", body) == 0x87
    assert fleet.raw_publish("gw-a", "citysense/v1/gw-a/registry", body) == 0x87


def test_publish_refuses_a_bad_registry_file(fleet: Fleet, tmp_path: Path) -> None:
    bad = fleet.dir / "registry" / "node-9.json"
    bad.write_text('{"device_id": "node-9"}')
    try:
        out = fleet.cloud("registry", "publish")
    finally:
        bad.unlink()
    assert out.returncode == 2
    assert out.stderr.startswith("citysense-cloud: ") and "node-9.json" in out.stderr
    assert "nothing published" in out.stderr
    assert out.stdout == ""
