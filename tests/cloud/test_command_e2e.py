"""`citysense-cloud command send` end to end: real firmware nodes in the emulator, the
real gateway, Mosquitto with the lab's ACL (citysense_lab.broker.acl_for) over mTLS.

A command signed for node A and republished on B's topic, an expired one and one for
another gateway are refused by the gateway before the line (and said so upwards); the
tool round-trips a command with a verified result; the ACL lets only the operator
publish commands. (The node's own refusals: tests/node/test_commands.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import REPO, free_port

sys.path[:0] = [str(REPO / "tests" / "gateway"), str(REPO / "tests" / "node")]

from gwsupport import (  # noqa: E402
    Node,
    Pty,
    make_pki,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from peer import OPERATOR_SEED, provision, public_key  # noqa: E402

from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for, have_mosquitto  # noqa: E402
from citysense_lab.procs import Proc, wait_until  # noqa: E402
from gateway.protocol import (  # noqa: E402
    Command,
    FrameType,
    Hello,
    encode_frame,
    encode_hello,
    sign_command,
)

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
GW = "gw-test"
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    dir: Path
    pki: dict[str, Path]
    port: int
    gw_log: Path
    old: Pty | None = None  # a node on protocol-1 firmware (a scripted pty)
    procs: list[Proc] = field(default_factory=list)

    def cloud_toml(self, identity: str = "operator") -> Path:
        path = self.dir / f"cloud-{identity}.toml"
        path.write_text(
            f"""[broker]
url = "mqtts://localhost:{self.port}"
ca_file = "{self.pki["ca"]}"
cert_file = "{self.pki[f"{identity}_cert"]}"
key_file = "{self.pki[f"{identity}_key"]}"
[registry]
path = "{self.dir / "registry"}"
[operator]
key_file = "{self.dir / "operator.key"}"
[state]
dir = "{self.dir / f"state-{identity}"}"
"""
        )
        return path

    def cloud(self, *argv: str, identity: str = "operator") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloud.cli", "--config", str(self.cloud_toml(identity)), *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def client(self, identity: str) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{identity}-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        c.tls_set(
            ca_certs=str(self.pki["ca"]),
            certfile=str(self.pki[f"{identity}_cert"]),
            keyfile=str(self.pki[f"{identity}_key"]),
        )
        return c


def _operator_files(d: Path) -> None:
    key = Ed25519PrivateKey.from_private_bytes(OPERATOR_SEED)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (d / "operator.key").write_bytes(pem)
    (d / "operator.key").chmod(0o600)
    (d / "operator.pub").write_text(public_key(OPERATOR_SEED).hex() + "\n")


def _node(d: Path, device_id: str, uid: str) -> Proc:
    seed = os.urandom(32)
    write_entry(d / "registry", Node(device_id, seed))
    flash = d / "flash" / device_id
    flash.mkdir(parents=True)
    provision(flash, device_id=device_id, interval=5)
    (flash / "config" / "device.key").write_bytes(seed)
    link = d / "links" / f"{device_id}.tty"
    argv = [str(BIN / "citysense-emulator"), "run", "--flash", str(flash), "--link", str(link),
            "--unique-id", uid]  # fmt: skip
    proc = Proc(device_id, argv, d / f"{device_id}.log").start()
    wait_until(link.exists, 30, f"the link pty of {device_id}")
    return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("command")
    pki = make_pki(d / "pki", GW)
    (d / "broker").mkdir()
    (d / "links").mkdir()
    (d / "registry").mkdir()
    tls = BrokerTLS(pki["ca"], pki["broker_cert"], pki["broker_key"])
    broker = Mosquitto(d / "broker", free_port(), tls, acl_for([GW]))
    broker.start()
    s = Stack(d, pki, broker.port, d / "gw.log")
    gw = None
    try:
        _operator_files(d)
        s.procs += [_node(d, "node-a", "02c17e000001"), _node(d, "node-b", "02c17e000002")]
        write_entry(d / "registry", Node("node-c", os.urandom(32)))  # enrolled, not on the line
        s.old = Pty(d / "links" / "node-old.tty")
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
        gw = start_gateway(cfg, s.gw_log)
        wait_log(s.gw_log, "event=uplink-connected", timeout=60)
        wait_log(s.gw_log, "event=hello device=node-a", timeout=60)
        wait_log(s.gw_log, "event=hello device=node-b", timeout=60)
        wait_log(s.gw_log, "event=port-open", count=3)
        # a HELLO is a claim: the gateway takes the node's protocol (and its route) once a
        # new verified record of it follows on the same port (gateway/routes.py)
        old = Node("node-old", os.urandom(32))
        write_entry(d / "registry", old)
        wait_log(s.gw_log, "event=registry-loaded device=node-old")
        hello = Hello("node-old", "0.0.9", 1, "power-on", 1000, 0, protocol=1)
        s.old.write(encode_frame(FrameType.HELLO, encode_hello(hello)) + old.record_frame(7))
        s.old.wait_for(lambda fs: any(f.type == FrameType.ACK for f in fs), timeout=30)
        yield s
    finally:
        if gw is not None:
            stop(gw)
        for p in s.procs:
            p.stop(timeout=5)
        if s.old is not None:
            s.old.close()
        broker.stop()


class Watch:
    """An MQTT 5 client of `identity` subscribed to `topic`, keeping what arrives."""

    def __init__(self, stack: Stack, identity: str, topic: str) -> None:
        self.got: list[bytes] = []
        self.c = stack.client(identity)
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = lambda c, u, m: self.got.append(bytes(m.payload))
        self.c.connect("localhost", stack.port)
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()
        assert ready.wait(15), "no SUBACK"

    def publish(self, topic: str, body: bytes) -> int:
        """QoS 1 publish; the PUBACK reason code."""
        codes: list[int] = []
        done = threading.Event()

        def on_publish(c: object, u: object, mid: int, rc: object, p: object = None) -> None:
            codes.append(int(getattr(rc, "value", 0)))
            done.set()

        self.c.on_publish = on_publish
        self.c.publish(topic, body, qos=1)
        assert done.wait(15), "no PUBACK"
        return codes[0]

    def wait_json(self, timeout: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while not self.got:
            assert time.monotonic() < deadline, "nothing arrived"
            time.sleep(0.05)
        obj = json.loads(self.got.pop(0))
        assert isinstance(obj, dict)
        return obj

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _signed(cid: int, device: str, gateway: str = GW, expires_in_ms: int = 60_000) -> bytes:
    expires = int(time.time() * 1000) + expires_in_ms
    return sign_command(OPERATOR_SEED, Command(cid, "sync_now", {}, device, gateway, expires))


APPLIED = re.compile(
    r"applied: node-a command (\d+) set_batch batch=2: batch=2"
    r" \(result signed by node-a, verified\)"
)


def test_send_round_trips_with_a_verified_result(stack: Stack) -> None:
    res = stack.cloud("command", "send", "--gateway", GW, "--device", "node-a",
                      "set_batch", "batch=2", "--wait", "30")  # fmt: skip
    assert (res.returncode, res.stderr) == (0, "")
    (line,) = res.stdout.splitlines()
    m = APPLIED.fullmatch(line)
    assert m, line
    cid = int(m.group(1))
    assert abs(cid - time.time() * 1000) < 120_000  # a time-based id
    js = stack.cloud("command", "send", "--gateway", GW, "--device", "node-a", "sync_now",
                     "--json", "--any-gateway")  # fmt: skip
    assert js.returncode == 0, js.stderr
    out = json.loads(js.stdout)
    assert (out["status"], out["by"], out["detail"]) == ("applied", "device", "sampling now")
    assert out["command_id"] > cid
    log = stack.cloud("command", "log", "--json")
    rows = [json.loads(x) for x in log.stdout.splitlines()]
    assert [(r["command_id"], r["action"], r["status"], r["by"]) for r in rows] == [
        (cid, "set_batch", "applied", "device"),
        (out["command_id"], "sync_now", "applied", "device"),
    ]
    text = stack.cloud("command", "log").stdout.splitlines()
    assert text[0].endswith(
        f" {GW}/node-a command {cid} set_batch batch=2 -> applied by device: batch=2"
    )


@pytest.mark.parametrize(
    ("what", "body_for", "refused"),
    [
        ("signed for A, republished on B's topic", lambda: _signed(11, "node-a"), "wrong-device"),
        ("expired", lambda: _signed(12, "node-b", expires_in_ms=-1), "expired"),
        ("for another gateway", lambda: _signed(13, "node-b", gateway="gw-other"),
         "wrong-gateway"),
    ],
)  # fmt: skip
def test_gateway_refuses_a_command_not_bound_to_it(
    stack: Stack, what: str, body_for: object, refused: str
) -> None:
    base = f"citysense/v1/{GW}/node-b"
    w = Watch(stack, "operator", f"{base}/command-results")
    try:
        body = body_for()  # type: ignore[operator]
        assert w.publish(f"{base}/commands", body) == 0
        answer = w.wait_json()
        assert (answer["gateway"], answer["refused"]) == (GW, refused)
        assert answer["command_id"] in (11, 12, 13)
    finally:
        w.close()
    wait_log(stack.gw_log, f"event=command device=node-b outcome={refused}")
    assert "event=command device=node-b outcome=delivered" not in stack.gw_log.read_text()


def test_old_firmware_gets_a_stated_refusal(stack: Stack) -> None:
    """A node that said HELLO version 1 cannot check a command's device or expiry: the
    gateway logs it and refuses its commands with a reason, never sends them."""
    wait_log(stack.gw_log, "event=old-protocol device=node-old")
    base = f"citysense/v1/{GW}/node-old"
    w = Watch(stack, "operator", f"{base}/command-results")
    try:
        assert w.publish(f"{base}/commands", _signed(14, "node-old")) == 0
        answer = w.wait_json()
    finally:
        w.close()
    assert answer["refused"] == "old-firmware" and answer["command_id"] == 14
    assert str(answer["detail"]).endswith("update its firmware")
    assert stack.old is not None
    stack.old.poll()
    assert [f.type for f in stack.old.frames if f.type == FrameType.COMMAND] == []


def test_exit_codes_name_the_problem(stack: Stack) -> None:
    send = ("command", "send", "--gateway", GW)
    no_route = stack.cloud(*send, "--device", "node-c", "reboot", "--wait", "20")
    assert no_route.returncode == 3
    assert no_route.stderr.splitlines() == [
        f"citysense-cloud: node-c command {_id(no_route.stderr)} reboot refused by gateway"
        f" {GW} (unsigned report): no-route: the device is not on this gateway's serial"
        " lines now"
    ]
    gone = stack.cloud("command", "send", "--gateway", "gw-gone", "--device", "node-a",
                       "sync_now", "--wait", "2")  # fmt: skip
    assert gone.returncode == 4 and "no result within 2 s" in gone.stderr
    refused = stack.cloud(*send, "--device", "node-a", "sync_now", identity="consumer")
    assert refused.returncode == 7
    assert refused.stderr.startswith("citysense-cloud: broker refused the publish to ")
    assert "(PUBACK Not authorized, 0x87): the broker ACL must let" in refused.stderr
    closed = stack.cloud("--broker", f"mqtt://127.0.0.1:{free_port()}", *send, "--device",
                         "node-a", "sync_now")  # fmt: skip
    assert closed.returncode == 5 and "unreachable" in closed.stderr
    bad = stack.cloud(*send, "--device", "node-a", "set_interval", "interval_s=0")
    assert (bad.returncode, bad.stderr) == (
        2,
        "citysense-cloud: bad value interval_s='0': expected a whole number 1..86400\n",
    )


def test_device_refusal_is_signed_and_exit_3(stack: Stack) -> None:
    """node-b has applied an id far above the clock: the tool's next id is a replay."""
    base = f"citysense/v1/{GW}/node-b"
    w = Watch(stack, "operator", f"{base}/command-results")
    try:
        assert w.publish(f"{base}/commands", _signed(2**62, "node-b")) == 0
        deadline = time.monotonic() + 20
        while not w.got:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        w.close()
    res = stack.cloud("command", "send", "--gateway", GW, "--device", "node-b", "sync_now")
    assert res.returncode == 3
    cid = _id(res.stderr)
    assert res.stderr == (
        f"citysense-cloud: node-b command {cid} sync_now refused by the device: rejected:"
        f" replay (id {cid} <= {2**62}) (signed, verified)\n"
    )


def test_acl_only_the_operator_publishes_commands(stack: Stack) -> None:
    """The lab's ACL: a gateway writes its records/status/results and reads its commands;
    it cannot publish commands (before, it had readwrite on its whole prefix)."""
    gw = Watch(stack, GW, f"citysense/v1/{GW}/+/commands")
    op = Watch(stack, "operator", f"citysense/v1/{GW}/+/command-results")
    try:
        body = _signed(99, "node-a")
        assert gw.publish(f"citysense/v1/{GW}/node-a/commands", body) == 0x87
        assert gw.publish("citysense/v1/gw-other/node-a/records", b"x") == 0x87
        assert gw.publish(f"citysense/v1/{GW}/node-z/command-results", b"{}") == 0
        assert op.publish(f"citysense/v1/{GW}/node-z/records", b"x") == 0x87
    finally:
        gw.close()
        op.close()


def _id(text: str) -> int:
    m = re.search(r" command (\d+) ", text)
    assert m, text
    return int(m.group(1))
