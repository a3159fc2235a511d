"""Registry directory: load, reload on change, bad files skipped, revocation."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert reg.bad_files["esp32-key.json"] == "public_key: expected 64 hex chars (raw Ed25519)"
    assert reg.bad_files["esp32-st.json"] == "status: expected 'active' or 'revoked', got 'paused'"
    assert reg.bad_files["esp32-name.json"] == (
        "device_id 'other' does not match the file name 'esp32-name'.json"
    )
    # a bad rewrite of a good device removes it (no stale key stays trusted)
    (tmp_path / "esp32-good.json").write_text("[]")
    reg.refresh()
    assert reg.get("esp32-good") is None
    assert reg.bad_files["esp32-good.json"] == "expected a JSON object"
