"""The release signing key: `release-key` creates it, `enroll --release-pub` puts its public
half on the node as /config/release.pub (32 raw bytes, as operator.pub), re-enrollment
changes it, and it is refused when it is the operator key."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prov_support import NodeRepl, assert_one_line_error, run_cli
from test_enroll import deploy, enroll, operator_pub

from citysense_formats import operator_key


def release_key(tmp: Path, name: str = "release.key") -> Path:
    key = tmp / name
    res = run_cli("release-key", "--out", str(key))
    assert res.code == 0, res.err
    return key


def test_release_key_files_modes_and_refusals(tmp_path: Path, audit_log: Path) -> None:
    key = release_key(tmp_path)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(f"{key}.pub").st_mode) == 0o644
    priv = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(priv, Ed25519PrivateKey)
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub_text = Path(f"{key}.pub").read_text()
    assert pub_text == raw.hex() + "\n"  # the operator .pub format, read by the same parser
    assert operator_key.parse(pub_text) == raw
    # the `init` spelling of operator-key works too, and both refuse to overwrite
    before = key.read_bytes()
    res = run_cli("release-key", "init", "--out", str(key))
    assert_one_line_error(res, f"{key} already exists, refusing to overwrite a release key")
    assert key.read_bytes() == before
    (tmp_path / "only.key.pub").write_text("x")
    res = run_cli("release-key", "--out", str(tmp_path / "only.key"))
    assert_one_line_error(res, "only.key.pub already exists, refusing to overwrite")
    assert not (tmp_path / "only.key").exists()
    res = run_cli("release-key", "--out", str(tmp_path / "missing" / "r.key"))
    assert_one_line_error(res, "cannot create", "check the path")
    lines = [json.loads(x) for x in audit_log.read_text().splitlines()]
    assert [x["what"] for x in lines] == ["release-key-init"]
    assert lines[0]["key_fingerprint"] == hashlib.sha256(raw).hexdigest()
    assert (
        priv.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ).hex()
        not in audit_log.read_text()
    )


def test_enroll_writes_and_reenroll_changes_release_pub(node: NodeRepl, tmp_path: Path) -> None:
    deploy(node)
    registry = tmp_path / "registry"
    rel_a = release_key(tmp_path, "a.key")
    s1 = enroll(node, registry, "--device-id", "kerb-1", "--release-pub", f"{rel_a}.pub")
    on_node = node.flash / "config" / "release.pub"
    assert on_node.read_bytes().hex() == Path(f"{rel_a}.pub").read_text().strip()
    assert s1["release_key_fingerprint"] is not None

    # a re-enrollment without --release-pub keeps it; with one it replaces it (PEM accepted)
    s2 = enroll(node, registry, "--device-id", "kerb-1")
    assert (s2["key"], s2["release_key_fingerprint"]) == ("kept", s1["release_key_fingerprint"])
    rel_b = release_key(tmp_path, "b.key")
    priv = serialization.load_pem_private_key(rel_b.read_bytes(), None)
    assert isinstance(priv, Ed25519PrivateKey)
    pem = tmp_path / "b.pem"
    pem.write_bytes(
        priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    s3 = enroll(node, registry, "--device-id", "kerb-1", "--release-pub", str(pem))
    assert on_node.read_bytes().hex() == Path(f"{rel_b}.pub").read_text().strip()
    assert s3["release_key_fingerprint"] not in (None, s1["release_key_fingerprint"])

    # verify compares it when asked
    ok = run_cli(
        "verify", "--port", str(node.port), "--registry", str(registry),
        "--release-pub", f"{rel_b}.pub", "--json",
    )  # fmt: skip
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["release_key_fingerprint"] == s3["release_key_fingerprint"]
    bad = run_cli(
        "verify", "--port", str(node.port), "--registry", str(registry),
        "--release-pub", f"{rel_a}.pub",
    )  # fmt: skip
    assert bad.code == 3
    assert_one_line_error(bad, "verify failed: the device's release key differs from --release-pub")


def test_enroll_refuses_the_operator_key_as_release_key(node: NodeRepl, tmp_path: Path) -> None:
    deploy(node)
    registry = tmp_path / "registry"
    op = operator_pub(tmp_path)
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(registry),
        "--device-id", "kerb-2", "--operator-pub", str(op), "--release-pub", str(op),
    )  # fmt: skip
    assert_one_line_error(
        res, "the release key and the operator key are the same key", "--release-pub"
    )
    assert not (node.flash / "config" / "release.pub").exists()
    assert not (registry / "kerb-2.json").exists()
    # the private file by mistake: the parser's refusal, naming the option
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(registry),
        "--operator-pub", str(op), "--release-pub", str(op).removesuffix(".pub"),
    )  # fmt: skip
    assert_one_line_error(res, "is a private key, not the public one", "--release-pub")
