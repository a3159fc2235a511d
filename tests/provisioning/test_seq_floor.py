"""enroll writes the node's seq floor: /state/seq = max(what the node had, Unix ms at
enrollment), so a board replacing another under the same id continues above it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prov_support import NodeRepl, assert_one_line_error, run_cli
from test_enroll import deploy, enroll, operator_pub

from citysense_formats import state_seq
from provisioning import registry
from provisioning.enroll import MIN_CLOCK_MS, seq_floor
from provisioning.errors import ProvisionError


def ms() -> int:
    return time.time_ns() // 1_000_000


def seq_state(node: NodeRepl) -> int:
    """/state/seq as the node's SeqStore reads it: u64 LE || crc32 LE of those 8 bytes."""
    return state_seq.decode((node.flash / "state" / "seq").read_bytes())


def set_seq_state(node: NodeRepl, value: int | None, raw: bytes | None = None) -> None:
    (node.flash / "state").mkdir(exist_ok=True)
    if raw is None:
        assert value is not None
        raw = state_seq.encode(value)
    (node.flash / "state" / "seq").write_bytes(raw)


def test_enroll_raises_the_seq_state_to_the_floor_never_lowers_it(
    node_factory: Callable[[str, str], NodeRepl], tmp_path: Path, audit_log: Path
) -> None:
    registry_dir = tmp_path / "registry"
    node = node_factory("n", "0a0b0c0d0e0f")
    deploy(node)

    # a fresh board: no /state/seq yet -> exactly the enrollment time in ms
    t0 = ms()
    first = enroll(node, registry_dir, "--device-id", "kerb-7")
    t1 = ms()
    floor = first["seq_floor"]
    assert isinstance(floor, int) and t0 <= floor <= t1
    assert (first["seq_state_before"], first["seq_state"]) == (None, floor)
    assert seq_state(node) == floor
    # the registry entry carries the key's floor (the gateway's replay state per key)
    assert registry.get(registry_dir, "kerb-7")["seq_floor"] == floor
    audit = json.loads(audit_log.read_text().splitlines()[-1])
    assert (audit["what"], audit["seq_floor"], audit["seq_state"]) == ("enroll", floor, floor)

    # re-enrolling the same board (key kept) raises it to the new, later floor
    again = enroll(node, registry_dir, "--device-id", "kerb-7")
    assert again["key"] == "kept"
    assert again["seq_state_before"] == floor
    assert isinstance(again["seq_floor"], int) and again["seq_floor"] > floor
    assert seq_state(node) == again["seq_state"] == again["seq_floor"]

    # a node already above the floor (it made more records than ms have passed since):
    # kept, also on a key rotation
    high = ms() + 10**9
    set_seq_state(node, high)
    rotated = enroll(node, registry_dir, "--device-id", "kerb-7", "--new-key", "--replace")
    assert rotated["key"] == "new"
    assert isinstance(rotated["seq_floor"], int) and rotated["seq_floor"] < high
    assert (rotated["seq_state_before"], rotated["seq_state"]) == (high, high)
    assert seq_state(node) == high
    entry = registry.get(registry_dir, "kerb-7")
    assert entry["seq_floor"] == rotated["seq_floor"]  # the new key's, not the old one's
    assert "seq_floor" not in entry["previous_keys"][0]

    # a small value (a board enrolled before the floor existed) and a corrupt file: the
    # floor replaces them
    for raw in (None, b"\x01" * 12, b"\x05"):
        if raw is None:
            set_seq_state(node, 1000)
        else:
            set_seq_state(node, None, raw)
        t0 = ms()
        res = enroll(node, registry_dir, "--device-id", "kerb-7")
        assert res["seq_state_before"] == (1000 if raw is None else None)
        assert isinstance(res["seq_floor"], int) and t0 <= res["seq_floor"]
        assert seq_state(node) == res["seq_state"] == res["seq_floor"]
    assert not (node.flash / "state" / "seq.tmp").exists()


def test_replacement_board_starts_above_its_predecessor(
    node_factory: Callable[[str, str], NodeRepl], tmp_path: Path
) -> None:
    """The old board made records (its seq state moved on); the new one, enrolled under
    the same id with --replace, starts at its own enrollment time, above them."""
    registry_dir = tmp_path / "registry"
    old = node_factory("old", "0a0b0c0d0e0f")
    deploy(old)
    s_old = enroll(old, registry_dir, "--device-id", "kerb-7")
    assert isinstance(s_old["seq_floor"], int)
    used = s_old["seq_floor"] + 640  # ten reserved blocks: records made in the field
    set_seq_state(old, used)
    new = node_factory("new", "1a1b1c1d1e1f")
    deploy(new)
    assert not (new.flash / "state").exists()
    s_new = enroll(new, registry_dir, "--device-id", "kerb-7", "--replace")
    assert s_new["seq_state_before"] is None
    assert s_new["seq_state"] == s_new["seq_floor"] == seq_state(new)
    assert seq_state(new) > used  # > 1000 records/s since the old board's enrollment needed
    entry = registry.load(registry_dir, "kerb-7")
    assert entry is not None and entry["previous_keys"][0]["public_key"] == s_old["public_key"]


def test_enroll_refuses_a_clock_behind_the_registry(node: NodeRepl, tmp_path: Path) -> None:
    """A laptop clock behind the registry entry would give a floor below the id's old
    seqs: refused before anything is written to the node."""
    deploy(node)
    registry_dir = tmp_path / "registry"
    s = enroll(node, registry_dir, "--device-id", "kerb-7")
    entry = registry.load(registry_dir, "kerb-7")
    assert entry is not None
    entry["enrolled_at"] = "2099-01-01T00:00:00Z"  # enrolled by a laptop from the future
    registry.save(registry_dir, entry)
    before = seq_state(node)
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(registry_dir),
        "--device-id", "kerb-7", "--operator-pub", str(operator_pub(tmp_path)),
    )  # fmt: skip
    assert_one_line_error(
        res,
        "this computer's clock (",
        "is behind the registry entry of kerb-7 (enrolled_at 2099-01-01T00:00:00Z)",
        "set the date and time (NTP) and re-run",
    )
    assert seq_state(node) == before == s["seq_state"]


def test_seq_floor_rules() -> None:
    now = 1_795_598_999_822
    assert seq_floor(now, "n-1", None) == now
    entry = registry.new_entry("n-1", "11" * 32, None)
    entry["enrolled_at"] = "2026-11-25T09:29:59Z"  # 1795598999000
    old = registry.replaced(entry, "22" * 32, None)
    old["enrolled_at"] = "2026-11-25T09:29:58Z"
    old["previous_keys"][0]["revoked_at"] = "2026-11-25T09:29:58Z"
    assert seq_floor(now, "n-1", old) == now
    with pytest.raises(ProvisionError, match=r"before 2025: set the date and time"):
        seq_floor(MIN_CLOCK_MS - 1, "n-1", None)
    # a previous key's revocation time counts too
    old["previous_keys"][0]["revoked_at"] = "2026-11-25T09:30:00Z"
    with pytest.raises(ProvisionError, match=r"behind the registry entry of n-1 \(revoked_at"):
        seq_floor(now, "n-1", old)
    # unparsable or missing times are ignored (a hand-edited entry)
    old["previous_keys"][0]["revoked_at"] = "yesterday"
    old["revoked_at"] = None
    assert seq_floor(now, "n-1", old) == now


def test_enroll_refuses_firmware_with_32_bit_seqs(node: NodeRepl, tmp_path: Path) -> None:
    """Firmware from before the floor keeps a u32 seq per flash entry: a floored seq
    (> 2**32) would come back truncated after a reboot. Refused before anything is
    written; a deploy of the current firmware fixes it."""
    deploy(node)
    buffer_py = node.flash / "lib" / "citysense" / "buffer.py"
    text = buffer_py.read_text()
    assert "SEQ_BITS = const(64)" in text
    buffer_py.write_text(text.replace("SEQ_BITS = const(64)", "OLD_FIRMWARE = 1"))
    registry_dir = tmp_path / "registry"
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(registry_dir),
        "--operator-pub", str(operator_pub(tmp_path)),
    )  # fmt: skip
    assert_one_line_error(
        res, "the citysense firmware on the node stores seqs in 32 bits", "deploy first"
    )
    assert not (node.flash / "state").exists() and not (node.flash / "config").exists()
    assert list(registry_dir.glob("*.json")) == []
    deploy(node)
    assert enroll(node, registry_dir)["seq_state"] == seq_state(node)
