"""`citysense-cloud command`: bad input is one line naming the problem and the fix, before
anything is sent; ids never repeat for a device; the audit file is append-only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud import command_ids
from cloud.audit import AuditLog
from cloud.cli import main


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    reg = tmp_path / "registry"
    reg.mkdir()
    entry = {"device_id": "node-a", "public_key": "ab" * 32, "status": "active"}
    (reg / "node-a.json").write_text(json.dumps(entry))
    (reg / "node-r.json").write_text(json.dumps({**entry, "device_id": "node-r",
                                                 "status": "revoked"}))  # fmt: skip
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    (tmp_path / "op.key").write_bytes(key)
    (tmp_path / "op.key").chmod(0o600)
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n[registry]\npath = "registry"\n'
        '[operator]\nkey_file = "op.key"\n'
    )
    return cfg


BASE = ["command", "send", "--gateway", "gw-01", "--device", "node-a"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["self_destruct"], "unknown action 'self_destruct': use one of reboot, set_batch,"
         " set_interval, sync_now, update"),
        (["set_interval"], "missing argument interval_s (set_interval takes"
         " interval_s=1..86400)"),
        (["set_interval", "interval_s"], "bad argument 'interval_s': write NAME=VALUE"
         " (set_interval takes interval_s=1..86400)"),
        (["set_interval", "interval_s=1.5"], "bad value interval_s='1.5': expected a whole"
         " number 1..86400"),
        (["set_batch", "batch=65"], "bad value batch='65': expected a whole number 1..64"),
        (["set_batch", "size=3"], "unknown argument 'size' for set_batch (set_batch takes"
         " batch=1..64)"),
        (["reboot", "now=1"], "unknown argument 'now' for reboot (reboot takes no arguments)"),
        (["reboot", "--expires", "soon"], "bad --expires 'soon': write e.g. 90s, 10m, 2h"
         " (1 s to 604800 s)"),
        (["reboot", "--expires", "8d"], "bad --expires '8d': write e.g. 90s, 10m, 2h"
         " (1 s to 604800 s)"),
        (["reboot", "--wait", "0"], "bad --wait 0: seconds, 1..3600"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(
    setup: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    assert main(["--config", str(setup), *BASE, *argv]) == 2
    assert capsys.readouterr().err == f"citysense-cloud: {line}\n"
    assert not (setup.parent / "command-audit.jsonl").exists()  # nothing was sent


def test_bad_device_gateway_and_key(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = setup.parent

    def err(*argv: str) -> str:
        assert main(["--config", str(setup), "command", "send", *argv]) == 2
        return capsys.readouterr().err

    assert err("--gateway", "gw/+", "--device", "node-a", "reboot") == (
        "citysense-cloud: bad --gateway 'gw/+': 1-64 letters, digits, '.', '_', ':' or '-'"
        " (no '/', '+', '#')\n"
    )
    assert err("--gateway", "gw-01", "--device", "node-x", "reboot") == (
        f"citysense-cloud: device 'node-x' is not in the registry {d / 'registry'}:"
        " check --device\n"
    )
    assert err("--gateway", "gw-01", "--device", "node-r", "reboot") == (
        "citysense-cloud: device 'node-r' is revoked in the registry: nothing to command\n"
    )
    (d / "op.key").chmod(0o644)
    assert err(*BASE[2:], "reboot") == (
        f"citysense-cloud: operator key {d / 'op.key'} is readable by others (mode 644):"
        f" chmod 600 {d / 'op.key'}\n"
    )
    (d / "op.key").write_text("not a key")
    (d / "op.key").chmod(0o600)
    assert err(*BASE[2:], "reboot") == (
        f"citysense-cloud: {d / 'op.key'} is not an unencrypted PEM private key: use the"
        " file written by citysense-provision operator-key init\n"
    )
    (d / "op.key").unlink()
    assert err(*BASE[2:], "reboot") == (
        f"citysense-cloud: config: operator.key_file: file not found: {d / 'op.key'}\n"
    )


def test_ids_never_repeat_even_when_the_clock_steps_back(tmp_path: Path) -> None:
    now = 1_764_047_000_000
    a = command_ids.next_id(tmp_path, "node-a", now)
    b = command_ids.next_id(tmp_path, "node-a", now)  # same millisecond
    c = command_ids.next_id(tmp_path, "node-a", now - 3_600_000)  # clock an hour back
    d = command_ids.next_id(tmp_path, "node-b", now - 3_600_000)  # per device
    assert (a, b, c, d) == (now, now + 1, now + 2, now - 3_600_000)
    assert json.loads((tmp_path / "command-ids.json").read_text()) == {
        "node-a": now + 2,
        "node-b": now - 3_600_000,
    }
    assert (tmp_path / "command-ids.json").stat().st_mode & 0o777 == 0o600


def test_audit_is_append_only_and_survives_a_torn_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(tmp_path / "command-audit.jsonl")
    sent = {"event": "send", "gateway": "gw-01", "device": "node-a", "command_id": 5,
            "action": "set_batch", "args": {"batch": 2}, "expires_ms": 1}  # fmt: skip
    log.append(sent)
    with open(log.path, "ab") as f:
        f.write(b'{"event": "answ')  # a crash mid-line
    log.append({"event": "answer", "device": "node-a", "command_id": 5, "status": "applied",
                "by": "device", "detail": "batch=2"})  # fmt: skip
    assert os.stat(log.path).st_mode & 0o777 == 0o600
    events, torn = log.read()
    assert [e["event"] for e in events] == ["send", "answer"] and torn == 1
    assert main(["--state-dir", str(tmp_path), "command", "log"]) == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert line.endswith(" gw-01/node-a command 5 set_batch batch=2 -> applied by device: batch=2")
    assert err == "citysense-cloud: 1 unreadable line(s) skipped in the audit file\n"
