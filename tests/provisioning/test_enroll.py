"""enroll / verify / registry against a node's REPL on a pty, mpremote as a second client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import serial
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prov_support import NodeRepl, assert_one_line_error, mpremote, run_cli

from gateway.protocol import (
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_hello,
    decode_record_payload,
    verify1,
)

SIGN_ON_DEVICE = (
    "from citysense import ed25519\n"
    "import binascii\n"
    "f = open('/config/device.key', 'rb'); s = f.read(); f.close()\n"
    "print(binascii.hexlify(ed25519.sign(s, b'citysense test message')).decode())\n"
)
MESSAGE = b"citysense test message"


def deploy(node: NodeRepl) -> None:
    res = run_cli("deploy", "--port", str(node.port))
    assert res.code == 0, res.err


def operator_pub(tmp: Path) -> Path:
    key = tmp / "operator.key"
    if not key.exists():
        assert run_cli("operator-key", "init", "--out", str(key)).code == 0
    return Path(f"{key}.pub")


def enroll(node: NodeRepl, registry: Path, *extra: str) -> dict[str, object]:
    op = operator_pub(registry.parent)
    res = run_cli(
        "enroll",
        "--port",
        str(node.port),
        "--registry",
        str(registry),
        "--json",
        "--operator-pub",
        str(op),
        *extra,
    )
    assert res.code == 0, res.err
    summary: dict[str, object] = json.loads(res.out)
    return summary


def device_signature(node: NodeRepl) -> bytes:
    return bytes.fromhex(mpremote(node.port, "exec", SIGN_ON_DEVICE).strip())


def registry_key(registry: Path, device_id: str) -> Ed25519PublicKey:
    entry = json.loads((registry / f"{device_id}.json").read_text())
    assert entry["status"] == "active"
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["public_key"]))


def test_enroll_key_made_on_device_matches_registry(
    node: NodeRepl, tmp_path: Path, audit_log: Path
) -> None:
    deploy(node)
    op = tmp_path / "operator.key"
    assert run_cli("operator-key", "init", "--out", str(op)).code == 0
    registry = tmp_path / "registry"
    res = run_cli(
        "enroll",
        "--port",
        str(node.port),
        "--registry",
        str(registry),
        "--operator-pub",
        f"{op}.pub",
        "--interval",
        "30",
        "--batch",
        "4",
        "--link-uart",
        "1",
        "--tx",
        "4",
        "--rx",
        "5",
        "--baud",
        "57600",
    )
    assert res.code == 0, res.err
    device_id = "esp32-a1b2c3d4e5f6"  # default id from hal.unique_id()
    entry = json.loads((registry / f"{device_id}.json").read_text())
    assert set(entry) >= {"device_id", "public_key", "status", "enrolled_at", "revoked_at"}
    assert (entry["device_id"], entry["status"], entry["revoked_at"]) == (device_id, "active", None)

    # the device signs with its stored seed; the registry's key verifies it
    registry_key(registry, device_id).verify(device_signature(node), MESSAGE)

    # config files as the node reads them (checked through mpremote, a second client)
    cfg = json.loads(mpremote(node.port, "fs", "cat", ":/config/device.json"))
    assert cfg == {
        "device_id": device_id,
        "interval_s": 30,
        "batch": 4,
        "link": {"uart": 1, "tx": 4, "rx": 5, "baud": 57600},
        "sensors": ["bme280", "battery"],
    }
    op_pub = (node.flash / "config" / "operator.pub").read_bytes()
    assert op_pub.hex() == Path(f"{op}.pub").read_text().strip()

    # the seed exists only on the device side
    seed = (node.flash / "config" / "device.key").read_bytes()
    assert len(seed) == 32
    assert not (node.flash / "config" / "device.key.new").exists()
    leaks = [res.out, res.err, audit_log.read_text()]
    leaks += [p.read_text() for p in registry.iterdir()]
    for text in leaks:
        assert seed.hex() not in text and seed.hex().upper() not in text
    for p in registry.rglob("*"):
        assert seed not in p.read_bytes()

    lines = [json.loads(x) for x in audit_log.read_text().splitlines()]
    assert [x["what"] for x in lines] == ["deploy", "operator-key-init", "enroll"]
    last = lines[-1]
    assert last["device_id"] == device_id
    assert last["who"] == "root" or last["who"]
    assert len(last["key_fingerprint"]) == 64 and last["key_fingerprint"] != entry["public_key"]
    assert last["firmware_sha256"] == entry["firmware_sha256"]
    assert len(entry["firmware_sha256"]) == 64


def test_reenroll_replace_revoke_list_verify(
    node_factory: Callable[[str, str], NodeRepl], tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    first = node_factory("first", "0a0b0c0d0e0f")
    deploy(first)
    s1 = enroll(first, registry, "--device-id", "kerb-7")
    assert s1["key"] == "new"

    # re-running enroll on the same node keeps its key (idempotent)
    again = enroll(first, registry, "--device-id", "kerb-7", "--interval", "120")
    assert (again["key"], again["public_key"]) == ("kept", s1["public_key"])

    # a replacement node under the same id is refused without --replace ...
    second = node_factory("second", "1a1b1c1d1e1f")
    deploy(second)
    before = (registry / "kerb-7.json").read_text()
    res = run_cli(
        "enroll",
        "--port",
        str(second.port),
        "--registry",
        str(registry),
        "--device-id",
        "kerb-7",
        "--operator-pub",
        str(operator_pub(tmp_path)),
    )
    assert_one_line_error(res, "kerb-7 is already enrolled with a different key", "--replace")
    assert (registry / "kerb-7.json").read_text() == before

    # ... and accepted with it: the new key is active, the old one kept as revoked history
    s2 = enroll(second, registry, "--device-id", "kerb-7", "--replace")
    assert s2["key"] == "new" and s2["public_key"] != s1["public_key"]
    entry = json.loads((registry / "kerb-7.json").read_text())
    assert entry["public_key"] == s2["public_key"] and entry["status"] == "active"
    assert [k["public_key"] for k in entry["previous_keys"]] == [s1["public_key"]]
    assert entry["previous_keys"][0]["reason"] == "replaced"
    registry_key(registry, "kerb-7").verify(device_signature(second), MESSAGE)
    old_sig = device_signature(first)
    try:
        registry_key(registry, "kerb-7").verify(old_sig, MESSAGE)
        raise AssertionError("the replaced node's signature still verifies")
    except Exception as exc:  # cryptography raises InvalidSignature
        assert type(exc).__name__ == "InvalidSignature"

    # verify: the new node passes, the replaced one fails with one line (exit 3)
    ok = run_cli("verify", "--port", str(second.port), "--registry", str(registry), "--json")
    assert ok.code == 0, ok.err
    report = json.loads(ok.out)
    assert (report["ok"], report["device_id"], report["problems"]) == (True, "kerb-7", [])
    assert report["public_key"] == s2["public_key"]
    bad = run_cli("verify", "--port", str(first.port), "--registry", str(registry))
    assert bad.code == 3
    assert_one_line_error(bad, "verify failed: the device's key does not match the registry")

    # revoke, list, show
    rv = run_cli("registry", "revoke", "kerb-7", "--registry", str(registry))
    assert rv.code == 0 and "kerb-7 revoked at" in rv.out
    listed = json.loads(run_cli("registry", "list", "--registry", str(registry), "--json").out)
    assert [(e["device_id"], e["status"]) for e in listed] == [("kerb-7", "revoked")]
    shown = json.loads(
        run_cli("registry", "show", "kerb-7", "--registry", str(registry), "--json").out
    )
    assert shown["revoked_at"] is not None and shown["public_key"] == s2["public_key"]
    human = run_cli("registry", "list", "--registry", str(registry))
    assert human.out.splitlines()[-1] == "1 device(s)"
    gone = run_cli("verify", "--port", str(second.port), "--registry", str(registry))
    assert_one_line_error(gone, "verify failed: device kerb-7 is revoked in the registry")
    # a revoked id takes a new key only with --replace
    res = run_cli(
        "enroll", "--port", str(second.port), "--registry", str(registry), "--device-id", "kerb-7"
    )
    assert_one_line_error(res, "kerb-7 is revoked in the registry", "--replace")

    # the replaced board, re-used under a new id: fresh key, and a note about its old id
    moved = enroll(first, registry, "--device-id", "kerb-9")
    assert (moved["key"], moved["previous_device_id"]) == ("new", "kerb-7")
    assert moved["public_key"] not in (s1["public_key"], s2["public_key"])


def test_node_app_runs_on_the_enrolled_flash(node: NodeRepl, tmp_path: Path) -> None:
    """The provisioned flash boots the real node app (`citysense-emulator run`): HELLO
    reports no config problem, and its records verify with the registry's key."""
    deploy(node)
    registry = tmp_path / "registry"
    summary = enroll(node, registry, "--interval", "1", "--batch", "1")
    node.stop()  # unplug from the laptop; power the node on its own
    link = tmp_path / "link.tty"
    exe = Path(sys.executable).parent / "citysense-emulator"
    run = [str(exe), "run", "--flash", str(node.flash), "--link", str(link)]
    run += ["--unique-id", node.uid]  # fmt: skip
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pub = bytes.fromhex(str(summary["public_key"]))
        hellos, records = [], []
        decoder = FrameDecoder()
        with serial.Serial(str(link), timeout=0.2) as port:
            while not records and time.monotonic() < deadline:
                decoder.feed(port.read(4096))
                while True:
                    try:
                        frame = decoder.next_frame()
                    except ProtocolError:
                        continue
                    if frame is None:
                        break
                    if frame.type == FrameType.HELLO:
                        hellos.append(decode_hello(frame.body))
                    elif frame.type == FrameType.RECORD:
                        records.append(verify1(pub, frame.body))
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert hellos and hellos[0].device_id == summary["device_id"]
    assert hellos[0].problem is None
    assert records and records[0][0] == str(summary["device_id"]).encode()
    # the node continues at the seq state enrollment wrote (the floor: Unix ms)
    first = decode_record_payload(records[0][1]).seq
    assert first == summary["seq_state"] == summary["seq_floor"]
    assert hellos[0].highest_seq == first - 1
