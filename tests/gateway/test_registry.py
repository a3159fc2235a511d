"""Registry directory: load, reload on change, bad files skipped, revocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gwsupport import make_node, write_entry

from gateway.registry import Registry


def test_load_reload_revoke_remove(tmp_path: Path) -> None:
    a, b = make_node("esp32-aa"), make_node("esp32-bb")
    write_entry(tmp_path, a)
    reg = Registry(tmp_path)
    assert reg.refresh() is True
    dev = reg.get("esp32-aa")
    assert dev is not None and dev.active and dev.public_key == a.public_key
    assert reg.get("esp32-bb") is None
    assert reg.refresh() is False  # nothing changed
    write_entry(tmp_path, b)
    write_entry(tmp_path, a, status="revoked")
    assert reg.refresh() is True
    assert reg.get("esp32-aa").active is False  # type: ignore[union-attr]
    assert reg.get("esp32-bb").active is True  # type: ignore[union-attr]
    (tmp_path / "esp32-bb.json").unlink()
    reg.refresh()
    assert reg.get("esp32-bb") is None
    assert len(reg) == 1


def test_bad_files_reported_and_skipped(tmp_path: Path) -> None:
    good = make_node("esp32-good")
    write_entry(tmp_path, good)
    (tmp_path / "esp32-junk.json").write_text("{not json")
    (tmp_path / "esp32-key.json").write_text(
        json.dumps({"device_id": "esp32-key", "public_key": "zz", "status": "active"})
    )
    (tmp_path / "esp32-name.json").write_text(
        json.dumps({"device_id": "other", "public_key": "00" * 32, "status": "active"})
    )
    (tmp_path / "esp32-st.json").write_text(
        json.dumps({"device_id": "esp32-st", "public_key": "00" * 32, "status": "paused"})
    )
    reg = Registry(tmp_path)
    reg.refresh()
    assert len(reg) == 1 and reg.get("esp32-good") is not None
    assert sorted(reg.bad_files) == [
        "esp32-junk.json",
        "esp32-key.json",
        "esp32-name.json",
        "esp32-st.json",
    ]
    assert reg.bad_files["esp32-key.json"] == (
        "public_key: expected 64 lowercase hex chars (raw Ed25519)"
    )
    assert reg.bad_files["esp32-st.json"] == "status: expected 'active' or 'revoked', got 'paused'"
    assert reg.bad_files["esp32-name.json"] == (
        "device_id 'other' does not match the file name 'esp32-name'.json"
    )
    # a bad rewrite of a good device removes it (no stale key stays trusted)
    (tmp_path / "esp32-good.json").write_text("[]")
    reg.refresh()
    assert reg.get("esp32-good") is None
    assert reg.bad_files["esp32-good.json"] == "expected a JSON object"


RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@pytest.mark.parametrize("device_id", ["esp32+a", "esp32#a", "esp32 a", "-esp32", "é32"])
def test_a_file_whose_id_breaks_the_rule_is_refused(tmp_path: Path, device_id: str) -> None:
    """An id with '+' or '#' is an MQTT wildcard: loaded, it made paho raise at publish
    and the exception ended the agent (issue 12, finding 5). Refused at load instead."""
    entry = {"device_id": device_id, "public_key": "ab" * 32, "status": "active"}
    (tmp_path / f"{device_id}.json").write_text(json.dumps(entry))
    reg = Registry(tmp_path)
    reg.refresh()
    assert len(reg) == 0 and reg.get(device_id) is None
    assert reg.bad_files == {f"{device_id}.json": f"device_id {device_id!r}: expected {RULE}"}


def test_slash_in_the_id_is_refused(tmp_path: Path) -> None:
    entry = {"device_id": "site/a", "public_key": "ab" * 32, "status": "active"}
    (tmp_path / "a.json").write_text(json.dumps(entry))
    reg = Registry(tmp_path)
    reg.refresh()
    assert len(reg) == 0
    assert reg.bad_files == {"a.json": f"device_id 'site/a': expected {RULE}"}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (
            '{"device_id": "n", "public_key": "' + "AB" * 32 + '", "status": "active"}',
            "public_key: expected 64 lowercase hex chars (raw Ed25519)",
        ),
        (
            '{"device_id": "n", "device_id": "n", "public_key": "' + "ab" * 32 + '"}',
            "key 'device_id' given twice",
        ),
        ("[" * 70000, "larger than 65536 bytes"),
        ("[" * 60000, "not valid JSON: maximum recursion depth exceeded while decoding"),
        (
            '{"device_id": "n", "public_key": "' + "ab" * 32 + '", "status": "active",'
            ' "seq_floor": -1}',
            "seq_floor: expected an integer 0..2**63-1, got -1",
        ),
    ],
)
def test_entries_provisioning_would_refuse_are_refused(
    tmp_path: Path, content: str, error: str
) -> None:
    """The gateway's loader is as strict as provisioning's (one format module)."""
    (tmp_path / "n.json").write_text(content)
    reg = Registry(tmp_path)
    reg.refresh()
    assert len(reg) == 0
    assert reg.bad_files["n.json"].startswith(error)


def test_seq_floor_and_key_id_are_loaded(tmp_path: Path) -> None:
    node = make_node("esp32-f")
    entry = {
        "device_id": "esp32-f",
        "public_key": node.public_key.hex(),
        "status": "active",
        "seq_floor": 1764047000123,
    }
    (tmp_path / "esp32-f.json").write_text(json.dumps(entry))
    reg = Registry(tmp_path)
    reg.refresh()
    dev = reg.get("esp32-f")
    assert dev is not None and dev.seq_floor == 1764047000123
    assert dev.key_id == __import__("hashlib").sha256(node.public_key).hexdigest()[:16]
