"""Registry, operator key and audit log, in-process."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning import audit, keys, registry
from provisioning.errors import ProvisionError, RegistryError

PUB_A = "11" * 32
PUB_B = "22" * 32


def test_registry_write_is_atomic_and_gateway_shaped(tmp_path: Path) -> None:
    entry = registry.new_entry("n-1", PUB_A, None)
    path = registry.save(tmp_path, entry)
    assert path == tmp_path / "n-1.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n-1.json"]  # no temp left over
    on_disk = json.loads(path.read_text())
    assert on_disk["public_key"] == PUB_A and on_disk["status"] == "active"
    assert registry.load(tmp_path, "n-1") == on_disk


def test_replace_keeps_history_and_revoke(tmp_path: Path) -> None:
    old = registry.new_entry("n-1", PUB_A, "ab" * 32)
    new = registry.replaced(old, PUB_B, None)
    assert (new["public_key"], new["status"], new["revoked_at"]) == (PUB_B, "active", None)
    assert [(k["public_key"], k["reason"]) for k in new["previous_keys"]] == [(PUB_A, "replaced")]
    assert new["previous_keys"][0]["revoked_at"] is not None
    registry.save(tmp_path, new)
    entry, changed = registry.revoke(tmp_path, "n-1")
    assert changed and entry["status"] == "revoked" and entry["revoked_at"]
    again, changed = registry.revoke(tmp_path, "n-1")
    assert not changed and again == entry


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("[]", "n-1.json: expected a JSON object; restore it from backup or re-enroll"),
        (
            '{"device_id": "n-1", "public_key": "xyz", "status": "active"}',
            "public_key: expected 64 lowercase hex chars",
        ),
        (
            '{"device_id": "n-1", "public_key": "' + "AB" * 32 + '", "status": "active"}',
            "public_key: expected 64 lowercase hex chars",
        ),
        (
            '{"device_id": "n-1", "public_key": "' + PUB_A + '", "status": "on"}',
            "status: expected 'active' or 'revoked', got 'on'",
        ),
        (
            '{"device_id": "n-2", "public_key": "' + PUB_A + '", "status": "active"}',
            "device_id 'n-2' does not match the file name 'n-1'.json",
        ),
        ("[" * 66000, "larger than 65536 bytes"),
    ],
)
def test_registry_rejects_bad_entries(tmp_path: Path, content: str, error: str) -> None:
    (tmp_path / "n-1.json").write_text(content)
    with pytest.raises(RegistryError, match=error):
        registry.load(tmp_path, "n-1")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "a b"])
def test_device_id_rules(bad: str) -> None:
    with pytest.raises(RegistryError, match="invalid device id"):
        registry.check_device_id(bad)


def test_fingerprint_is_sha256_of_raw_key() -> None:
    assert registry.fingerprint(PUB_A) == (
        __import__("hashlib").sha256(bytes.fromhex(PUB_A)).hexdigest()
    )


def test_operator_key(tmp_path: Path) -> None:
    out = tmp_path / "op.key"
    pub = keys.init_operator_key(out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    key = serialization.load_pem_private_key(out.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert Path(f"{out}.pub").read_text() == raw.hex() + "\n" == pub + "\n"
    assert keys.read_operator_pub(Path(f"{out}.pub")) == raw
    with pytest.raises(ProvisionError, match="refusing to overwrite"):
        keys.init_operator_key(out)
    with pytest.raises(
        ProvisionError,
        match=r"op\.key is a private key, not the public one, pass the operator \.pub file",
    ):
        keys.read_operator_pub(out)
    pem = tmp_path / "op.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert keys.read_operator_pub(pem) == raw


def test_audit_appends_json_lines(tmp_path: Path) -> None:
    log = audit.Audit(tmp_path / "state" / "audit.jsonl")
    log.check()
    log.record("enroll", device_id="n-1", public_key=PUB_A, firmware_sha256="ff" * 32)
    log.record("revoke", device_id="n-1", public_key=PUB_A)
    lines = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [x["what"] for x in lines] == ["enroll", "revoke"]
    assert lines[0]["key_fingerprint"] == registry.fingerprint(PUB_A)
    assert PUB_A not in json.dumps(lines)
    assert lines[0]["who"] and lines[0]["when"].endswith("+00:00")
    assert lines[0]["firmware_sha256"] == "ff" * 32


def test_audit_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CITYSENSE_AUDIT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert audit.default_path() == tmp_path / ".local/state/citysense/audit.jsonl"
    monkeypatch.setenv("CITYSENSE_AUDIT", "/x/y.jsonl")
    assert audit.default_path() == Path("/x/y.jsonl")
