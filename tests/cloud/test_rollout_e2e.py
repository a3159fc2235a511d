"""`citysense-cloud rollout` end to end on the release side: `release build` -> `release
publish` (the real gateway caches it) -> `rollout start` sending signed `update` COMMANDs
through Mosquitto (mTLS, the lab's ACL) and the real gateway to three nodes on real ptys,
and reading their outcomes from the records the real cloud ingest stored in SQLite.

The nodes are scripted here, so that each outcome comes on cue (the real firmware's update
path end to end is hil_tests/test_ota_rollout.py): each
answers an `update` COMMAND with a COMMAND_RESULT signed by its device key, then sends
records (signed by the same key, through the gateway and the ingest) carrying the `sys/ota`
and `sys/fw` readings the OTA-SPEC fixes. What is checked is the operator's side: the
commands as the node receives them (bound to device, gateway, expiry; the bundle id), the
canary order, the halt, the outcomes read back from the store, the exit codes and state.
"""

from __future__ import annotations

import json
import shutil
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

from cloudsupport import start_ingest, wait_until  # noqa: E402
from gwsupport import (  # noqa: E402
    Node,
    Pty,
    make_node,
    make_pki,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)

from citysense_formats import bundle as fmt  # noqa: E402
from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for, have_mosquitto  # noqa: E402
from cloud.store import open_store  # noqa: E402
from gateway.protocol import (  # noqa: E402
    Command,
    CommandResult,
    FrameType,
    RecordPayload,
    decode_ack,
    decode_command,
    encode_frame,
    encode_record_payload,
    sign1,
    sign_command_result,
)
from provisioning import ca, keys  # noqa: E402

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
GW = "gw-r"
OPERATOR_SEED = bytes(range(40, 72))
VERSION = "1.4.0"


class ScriptedNode:
    """A node's side of the line, played by the test: HELLO, records, COMMAND answers."""

    def __init__(self, node: Node, pty: Pty) -> None:
        self.node, self.pty, self.seq = node, pty, 0
        self.commands_seen = 0

    def send(self, **readings: str) -> int:
        """One record with these string readings (name with '_' for '/'); its seq once ACKed."""
        self.seq += 1
        now = time.time()
        pack = [{-2: f"{self.node.device_id}/", -3: now, 0: "temp", 1: "Cel", 2: 21.5}]
        pack += [{0: k.replace("_", "/"), 3: v} for k, v in readings.items()]
        payload = encode_record_payload(RecordPayload(self.seq, 1, pack, 0))
        body = sign1(self.node.seed, self.node.device_id.encode(), payload)
        self.pty.write(encode_frame(FrameType.RECORD, body))
        seq = self.seq
        self.pty.wait_for(
            lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) >= seq for f in fs), 30
        )
        return seq

    def commands(self) -> list[bytes]:
        self.pty.poll()
        return [f.body for f in self.pty.frames if f.type == FrameType.COMMAND]

    def next_command(self, timeout: float = 60) -> Command:
        n = self.commands_seen
        self.pty.wait_for(lambda fs: sum(f.type == FrameType.COMMAND for f in fs) > n, timeout)
        self.commands_seen += 1
        return decode_command(_pub(OPERATOR_SEED), self.commands()[n])

    def answer(self, cmd: Command, ok: bool, detail: str) -> None:
        result = CommandResult(cmd.command_id, ok, detail)
        body = sign_command_result(self.node.seed, self.node.device_id.encode(), result)
        self.pty.write(encode_frame(FrameType.COMMAND_RESULT, body))


def _pub(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


@dataclass
class Site:
    dir: Path
    nodes: dict[str, ScriptedNode]
    bundle: bytes
    toml: Path
    db: str

    def cloud(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloud.cli", "--config", str(self.toml), *argv],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def rollout(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cloud.cli", "--config", str(self.toml), "rollout", *argv],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stored(self, device: str) -> int:
        store = open_store(self.db)
        try:
            rows = store.query("SELECT MAX(seq) FROM records WHERE device_id = %s", (device,))
        finally:
            store.close()
        return int(rows[0][0] or 0)

    def wait_stored(self, device: str, seq: int) -> None:
        wait_until(lambda: self.stored(device) >= seq, 60, f"{device} seq {seq} in the store")


def _files(d: Path, pki: dict[str, Path], port: int) -> tuple[Path, Path]:
    """The operator's and the ingest's cloud configs (each its own mTLS identity)."""
    key = Ed25519PrivateKey.from_private_bytes(OPERATOR_SEED)
    (d / "operator.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    (d / "operator.key").chmod(0o600)
    (d / "operator.pub").write_text(_pub(OPERATOR_SEED).hex() + "\n")
    db = f"sqlite:///{d}/cloud.sqlite3"
    out = []
    for who in ("operator", "ingest"):
        toml = d / f"cloud-{who}.toml"
        toml.write_text(
            f"""[broker]
url = "mqtts://localhost:{port}"
ca_file = "{pki["ca"]}"
cert_file = "{pki[f"{who}_cert"]}"
key_file = "{pki[f"{who}_key"]}"
[registry]
path = "{d / "registry"}"
[operator]
key_file = "{d / "operator.key"}"
[database]
url = "{db}"
[state]
dir = "{d / f"state-{who}"}"
"""
        )
        out.append(toml)
    return out[0], out[1]


def _firmware(d: Path) -> Path:
    fw = d / "firmware"
    shutil.copytree(REPO / "firmware", fw, ignore=shutil.ignore_patterns("__pycache__"))
    app = fw / "lib" / "citysense" / "app.py"
    text = app.read_text()
    old = next(line for line in text.splitlines() if line.startswith("VERSION = "))
    app.write_text(text.replace(old, f'VERSION = "{VERSION}"', 1))
    return fw


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("rollout")
    pki = make_pki(d / "pki", GW)
    ca.gateway_cert("ingest", d / "pki" / "ingest", d / "pki" / "ca")
    pki["ingest_cert"] = d / "pki" / "ingest" / "gateway.crt"
    pki["ingest_key"] = d / "pki" / "ingest" / "gateway.key"
    for sub in ("broker", "registry", "links"):
        (d / sub).mkdir()
    tls = BrokerTLS(pki["ca"], pki["broker_cert"], pki["broker_key"])
    broker = Mosquitto(d / "broker", free_port(), tls, acl_for([GW]))
    broker.start()
    op_toml, ingest_toml = _files(d, pki, broker.port)
    keys.init_release_key(d / "release.key")
    nodes = {}
    for i in range(1, 4):
        node = make_node(f"node-{i}")
        write_entry(d / "registry", node)
        nodes[node.device_id] = ScriptedNode(node, Pty(d / "links" / f"{node.device_id}.tty"))
    write_entry(d / "registry", make_node("node-silent"))  # enrolled, never reported
    cfg = write_config(
        d / "gw.toml",
        id=f'"{GW}"',
        port=f'"{d / "links"}/*.tty"',
        url=f'"mqtts://localhost:{broker.port}"',
        extra_uplink=(
            f'ca_file = "{pki["ca"]}"\ncert_file = "{pki[f"{GW}_cert"]}"\n'
            f'key_file = "{pki[f"{GW}_key"]}"\n'
        ),
        extra_gateway=f'operator_key = "{d / "operator.pub"}"',
    )
    with cfg.open("a") as f:
        f.write(f'\n[ota]\nrelease_key = "{d / "release.key.pub"}"\n')
    ingest = start_ingest(ingest_toml, "rollout", d / "ingest.log")
    gw = start_gateway(cfg, d / "gw.log")
    try:
        wait_log(d / "gw.log", "event=uplink-connected", timeout=60)
        wait_log(d / "gw.log", "event=port-open", count=3, timeout=60)
        wait_log(d / "ingest.log", "event=ingest-subscribed", timeout=60)
        out = d / "r.csb"
        res = subprocess.run(
            [sys.executable, "-m", "cloud.cli", "--config", str(op_toml), "release", "build",
             "--version", VERSION, "--seq", "3", "--firmware-dir", str(_firmware(d)),
             "--arch", "host", "--key", str(d / "release.key"), "--out", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        s = Site(d, nodes, out.read_bytes(), op_toml, f"sqlite:///{d}/cloud.sqlite3")
        for n in nodes.values():  # HELLO + a record: the gateway's route to the node
            n.pty.write(n.node.hello_frame())
            s.wait_stored(n.node.device_id, n.send(sys_fw="0.1.0"))
        yield s
    finally:
        stop(gw)
        ingest.terminate()
        ingest.wait(15)
        for n in nodes.values():
            n.pty.close()
        broker.stop()


def _check_update(cmd: Command, device: str, bundle_id: str) -> None:
    assert (cmd.action, cmd.args, cmd.device_id, cmd.gateway_id) == (
        "update", {"bundle": bundle_id}, device, GW,
    )  # fmt: skip
    left_s = cmd.expires_ms / 1000 - time.time()
    assert 25 * 60 < left_s <= 30 * 60  # --expires 30m (the default)


def _confirm(n: ScriptedNode, bundle_id: str, site: Site) -> None:
    cmd = n.next_command()
    _check_update(cmd, n.node.device_id, bundle_id)
    n.answer(cmd, True, f"staging bundle={bundle_id[:16]}")
    n.send(sys_ota=f"staged {VERSION}", sys_fw="0.1.0")
    n.send(sys_ota=f"trial {VERSION}", sys_fw=VERSION)
    site.wait_stored(n.node.device_id, n.send(sys_ota=f"confirmed {VERSION}", sys_fw=VERSION))


def test_publish_then_canary_then_the_rest_one_rolls_back(site: Site) -> None:
    bid = fmt.bundle_id(site.bundle)
    res = site.cloud("release", "publish", str(site.dir / "r.csb"), "--gateway", GW)
    assert res.returncode == 0, res.stderr
    assert (site.dir / "state" / "ota" / f"{bid}.csb").read_bytes() == site.bundle

    proc = site.rollout("start", "--release", VERSION, "--devices", "node-1,node-2,node-3",
                        "--canary", "1", "--wait", "240", "--json")  # fmt: skip
    try:
        n1, n2, n3 = (site.nodes[f"node-{i}"] for i in (1, 2, 3))
        cmd = n1.next_command()
        _check_update(cmd, "node-1", bid)
        n1.answer(cmd, True, f"staging bundle={bid[:16]}")
        n1.send(sys_ota=f"staged {VERSION}")
        time.sleep(2)  # the driver polls every second: the rest must still wait
        assert n2.commands() == [] and n3.commands() == []
        n1.send(sys_ota=f"trial {VERSION}", sys_fw=VERSION)
        site.wait_stored("node-1", n1.send(sys_ota=f"confirmed {VERSION}", sys_fw=VERSION))

        _confirm(n2, bid, site)
        cmd = n3.next_command()
        _check_update(cmd, "node-3", bid)
        n3.answer(cmd, True, f"staging bundle={bid[:16]}")
        n3.send(sys_ota=f"trial {VERSION}", sys_fw=VERSION)
        n3.send(sys_ota=f"rolled-back {VERSION}: import-error", sys_fw="0.1.0")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert err.strip().splitlines()[-1] == (
        f"citysense-cloud: rollout {json.loads(out)['id']} of {VERSION} done with 1 failed"
        f" device(s): node-3: rolled-back {VERSION}: import-error"
    )
    state = json.loads(out)
    got = {d["device"]: (d["wave"], d["state"], d["fw"]) for d in state["devices"]}
    assert got == {
        "node-1": (0, "confirmed", VERSION),
        "node-2": (1, "confirmed", VERSION),
        "node-3": (1, "failed", "0.1.0"),
    }
    assert (state["state"], state["counts"]) == ("done", {"confirmed": 2, "failed": 1})

    st = site.cloud("rollout", "status", "--json")
    assert st.returncode == 0 and json.loads(st.stdout)["devices"] == state["devices"]
    human = site.cloud("rollout", "status").stdout.splitlines()
    assert human[0] == f"rollout {state['id']}: release {VERSION} seq 3 bundle {bid[:16]}: done"
    assert human[1].split() == ["node-1", GW, "canary", "confirmed", "fw", VERSION,
                                "confirmed", VERSION]  # fmt: skip
    assert human[3].split()[:6] == ["node-3", GW, "wave", "1", "failed", "fw"]
    assert human[3].endswith(f"rolled-back {VERSION}: import-error")
    assert human[4].strip() == "2 confirmed, 1 failed"
    log = site.cloud("command", "log", "--json")
    rows = [json.loads(x) for x in log.stdout.splitlines()]
    assert [(r["device"], r["action"], r["status"], r["by"]) for r in rows] == [
        (f"node-{i}", "update", "applied", "device") for i in (1, 2, 3)
    ]


def test_canary_refused_halts_busy_resume_and_errors(site: Site) -> None:
    bid = fmt.bundle_id(site.bundle)
    n1, n3 = site.nodes["node-1"], site.nodes["node-3"]
    for n in (n1, site.nodes["node-2"]):  # back on 0.1.0 (reflashed by USB, say)
        site.wait_stored(n.node.device_id, n.send(sys_fw="0.1.0"))
    before_n1 = len(n1.commands())
    proc = site.rollout("start", "--release", VERSION, "--devices", "node-3,node-1",
                        "--canary", "1", "--halt-on-failure", "--wait", "120")  # fmt: skip
    try:
        cmd = n3.next_command()
        _check_update(cmd, "node-3", bid)
        busy = site.cloud("rollout", "resume", "--wait", "1")  # while that driver runs
        assert busy.returncode == 9 and "is being driven" in busy.stderr, busy.stderr
        n3.answer(cmd, False, "no-bundle: the gateway has no such bundle")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert err.strip().endswith(
        "halted: canary node-3 failed: refused by the device: no-bundle: the gateway has no"
        " such bundle"
    )
    assert "node-1" in out and "not sent: the rollout halted" in out
    time.sleep(1)
    assert len(n1.commands()) == before_n1  # nothing sent after the canary failed

    # a rollout still running after --wait: exit 4; a second start: 9; halt, resume: 3
    res = site.cloud("rollout", "start", "--release", VERSION, "--devices", "node-2",
                     "--wait", "0")  # fmt: skip
    assert res.returncode == 4, res.stderr
    assert "still running after --wait" in res.stderr and "rollout resume" in res.stderr
    site.nodes["node-2"].next_command()  # it was sent (and never answered)
    res = site.cloud("rollout", "start", "--release", VERSION, "--all")
    assert res.returncode == 9 and "is running (1 sent)" in res.stderr, res.stderr
    assert site.cloud("rollout", "halt").returncode == 0
    assert "halt requested" in site.cloud("rollout", "status").stdout
    res = site.cloud("rollout", "resume", "--wait", "5")
    assert res.returncode == 3
    assert res.stderr.strip().endswith("halted: halted by the operator (rollout halt)")

    # one-line refusals, exit 2
    for argv, text in [
        (["--release", "9.9.9", "--all"], "no release '9.9.9' was built from the state dir"),
        (["--release", VERSION, "--all"], "no record stored yet from node-silent"),
        (["--release", VERSION, "--devices", "node-1,node-1"], "give each device id once"),
        (["--release", VERSION, "--devices", "node-9"], "'node-9' is not in the registry"),
        (["--release", VERSION, "--devices", "node-1", "--canary", "2"], "bad --canary 2"),
    ]:
        res = site.cloud("rollout", "start", *argv)
        assert res.returncode == 2, (argv, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (argv, res.stderr)
