"""The RFC 8032 vectors the firmware tests use, checked against `cryptography`."""

from __future__ import annotations

import importlib.util

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support import REPO


def load_vectors() -> tuple[tuple[str, tuple[str, str, str, str]], ...]:
    path = REPO / "firmware" / "tests" / "rfc8032.py"
    spec = importlib.util.spec_from_file_location("rfc8032", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vectors: tuple[tuple[str, tuple[str, str, str, str]], ...] = module.VECTORS
    return vectors


def test_rfc8032_vectors_match_cryptography() -> None:
    vectors = load_vectors()
    assert [name for name, _ in vectors] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024"]
    lengths = []
    for _, (seed, pub, msg, sig) in vectors:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert raw.hex() == pub
        assert key.sign(bytes.fromhex(msg)).hex() == sig
        Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(sig), bytes.fromhex(msg))
        lengths.append(len(bytes.fromhex(msg)))
    assert lengths == [0, 1, 2, 1023]
