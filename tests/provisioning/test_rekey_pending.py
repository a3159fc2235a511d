"""Re-keying a node whose flash buffer still holds records signed with the old key.

The records are written by the real firmware (citysense.buffer.Buffer, over mpremote, on
the emulator's REPL), exactly as the node app appends them. `enroll --new-key --replace`
refuses (one line with the count, naming --drop-pending and the drain) and changes
nothing; with --drop-pending the buffer is emptied and /state/dropped (the node's
sys/dropped) grows by exactly the count. The whole-system run, with the real gateway, is
hil_tests/test_rekey.py.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from prov_support import NodeRepl, assert_one_line_error, mpremote, run_cli
from test_enroll import deploy, enroll, operator_pub

# 7 records in 2 segments (4 entries of 15 + 1000 bytes fit a 4 KiB segment)
APPEND = """
import os
os.chdir('/')
from citysense.buffer import Buffer
from citysense import state
b = Buffer()
b.open()
for i in range(7):
    b.append(1800000000000 + i, bytes([i]) * 1000)
state.store('dropped', 5)
print(len(b), len(os.listdir('data')))
"""


def state_value(flash: Path, name: str) -> int:
    raw = (flash / "state" / name).read_bytes()
    value, crc = struct.unpack("<QI", raw)
    assert crc == zlib.crc32(raw[:8])
    return int(value)


def test_new_key_with_pending_records_refused_then_dropped(node: NodeRepl, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    deploy(node)
    first = enroll(node, registry, "--device-id", "kerb-9")
    assert (first["pending_records"], first["pending_dropped"]) == (0, None)  # a fresh board
    assert mpremote(node.port, "exec", APPEND).split() == ["7", "2"]

    # a key kept: its records verify, nothing to do about them
    kept = enroll(node, registry, "--device-id", "kerb-9")
    assert (kept["key"], kept["pending_records"], kept["pending_dropped"]) == ("kept", None, None)

    key_before = (node.flash / "config" / "device.key").read_bytes()
    entry_before = (registry / "kerb-9.json").read_text()
    seq_before = (node.flash / "state" / "seq").read_bytes()
    segs_before = sorted(p.name for p in (node.flash / "data").iterdir())
    args = ["enroll", "--port", str(node.port), "--registry", str(registry), "--json"]
    args += ["--device-id", "kerb-9", "--operator-pub", str(operator_pub(tmp_path))]
    res = run_cli(*args, "--new-key", "--replace")
    line = assert_one_line_error(
        res, "kerb-9 has 7 records in its buffer", "--drop-pending", "or let it drain: connect"
    )
    assert line.endswith("then enroll again")
    assert "  7 records pending in the node's buffer" in res.err.splitlines()
    # nothing changed: key, registry, seq state, buffer, drop counter
    assert (node.flash / "config" / "device.key").read_bytes() == key_before
    assert not (node.flash / "config" / "device.key.new").exists()
    assert (registry / "kerb-9.json").read_text() == entry_before
    assert (node.flash / "state" / "seq").read_bytes() == seq_before
    assert sorted(p.name for p in (node.flash / "data").iterdir()) == segs_before
    assert state_value(node.flash, "dropped") == 5

    res = run_cli(*args, "--new-key", "--replace", "--drop-pending")
    assert res.code == 0, res.err
    summary = json.loads(res.out)
    assert summary["key"] == "new" and summary["public_key"] != first["public_key"]
    assert (summary["pending_records"], summary["pending_dropped"]) == (7, 7)
    assert list((node.flash / "data").iterdir()) == []
    assert state_value(node.flash, "dropped") == 5 + 7
    assert "  dropped 7 records; the node's sys/dropped is now 12" in res.err.splitlines()

    # an empty buffer: the next new key needs neither a drain nor --drop-pending
    again = json.loads(run_cli(*args, "--new-key", "--replace").out)
    assert (again["key"], again["pending_records"], again["pending_dropped"]) == ("new", 0, None)
    assert state_value(node.flash, "dropped") == 12


def test_revoked_key_cannot_drain(node: NodeRepl, tmp_path: Path) -> None:
    """Records under a revoked key can never be accepted: only --drop-pending is offered."""
    registry = tmp_path / "registry"
    deploy(node)
    enroll(node, registry, "--device-id", "kerb-3")
    assert mpremote(node.port, "exec", APPEND).split() == ["7", "2"]
    revoke = run_cli("registry", "revoke", "kerb-3", "--registry", str(registry))
    assert revoke.code == 0, revoke.err
    args = ["enroll", "--port", str(node.port), "--registry", str(registry), "--json"]
    args += ["--device-id", "kerb-3", "--operator-pub", str(operator_pub(tmp_path))]
    line = assert_one_line_error(
        run_cli(*args, "--replace"), "kerb-3 has 7 records in its buffer", "not its active key"
    )
    assert line.endswith("re-run with --drop-pending to drop them (counted in sys/dropped)")
    assert "drain" not in line
    summary = json.loads(run_cli(*args, "--replace", "--drop-pending").out)
    assert (summary["key"], summary["pending_dropped"]) == ("new", 7)
    assert state_value(node.flash, "dropped") == 5 + 7
