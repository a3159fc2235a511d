"""citysense_formats.bundle: exact layout, round trip, and every refusal with its reason."""

from __future__ import annotations

import hashlib
import struct

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citysense_formats import bundle

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
FILES = [("citysense/app.mpy", b"A" * 300), ("citysense/ota.mpy", b"B" * 7), ("main.py", b"")]


def make(files: list[tuple[str, bytes]] = FILES, **kw: object) -> bytes:
    args: dict[str, object] = dict(
        version="1.4.0",
        seq=7,
        hardware="esp32",
        protocol=2,
        arch="xtensawin",
        signing_key=KEY,
        created_ms=1_764_047_000_123,
    )
    args.update(kw)
    return bundle.build(files, **args)  # type: ignore[arg-type]


def test_layout_is_magic_length_manifest_files() -> None:
    data = make()
    assert data[:4] == b"CSB1"
    (m,) = struct.unpack_from("<I", data, 4)
    manifest = data[8 : 8 + m]
    assert data[8 + m :] == b"A" * 300 + b"B" * 7
    tag = cbor2.loads(manifest)
    assert tag.tag == 18
    protected, unprotected, payload, signature = tag.value
    assert protected == b"\xa1\x01\x27" and unprotected == {4: b"release"}
    assert cbor2.loads(payload) == {
        1: "1.4.0",
        2: 7,
        3: "esp32",
        4: 2,
        5: "xtensawin",
        6: 307,
        7: [
            ["citysense/app.mpy", 300, hashlib.sha256(b"A" * 300).digest()],
            ["citysense/ota.mpy", 7, hashlib.sha256(b"B" * 7).digest()],
            ["main.py", 0, hashlib.sha256(b"").digest()],
        ],
        8: 1_764_047_000_123,
    }
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    KEY.public_key().verify(signature, sig_structure)  # an independent check of the signature
    assert bundle.bundle_id(data) == hashlib.sha256(manifest).hexdigest()


def test_verify_round_trip() -> None:
    data = make()
    b = bundle.verify(data, KEY.public_key())
    assert (b.version, b.seq, b.hardware, b.protocol, b.arch, b.total) == (
        "1.4.0",
        7,
        "esp32",
        2,
        "xtensawin",
        307,
    )
    assert [f.path for f in b.files] == ["citysense/app.mpy", "citysense/ota.mpy", "main.py"]
    assert b.contents == (b"A" * 300, b"B" * 7, b"")
    assert b.id == bundle.bundle_id(data) and len(b.id) == 64 and b.short_id == b.id[:16]
    assert b.size == len(data)


def _refusal(data: bytes, reason: str, *, signed: bool = True) -> str:
    with pytest.raises(bundle.BundleError) as info:
        if signed:
            bundle.verify(data, KEY.public_key())
        else:
            bundle.parse(data)
    assert info.value.reason == reason
    return str(info.value)


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 1
    return bytes(b)


def test_refusals_with_reasons() -> None:
    data = make()
    m = struct.unpack_from("<I", data, 4)[0]
    assert "header" in _refusal(data[:5], "truncated")
    assert "CSB1" in _refusal(b"CSB2" + data[4:], "bad-magic")
    assert "inside the manifest" in _refusal(data[: 8 + m - 1], "truncated")
    assert "end at 306 of 307" in _refusal(data[:-1], "truncated")
    assert "1 bytes after" in _refusal(data + b"x", "size-mismatch")
    assert "SHA-256" in _refusal(_flip(data, len(data) - 1), "hash-mismatch")
    other = make(signing_key=OTHER)
    assert "release key" in _refusal(other, "bad-signature")
    bundle.parse(other)  # shape is fine: only the signature is wrong
    _refusal(data[:4] + struct.pack("<I", 0) + data[8:], "malformed")
    _refusal(data[:4] + struct.pack("<I", 100_000) + data[8:], "malformed")


def _resigned(payload: object, key: Ed25519PrivateKey = KEY) -> bytes:
    raw = cbor2.dumps(payload)
    sig = key.sign(cbor2.dumps(["Signature1", b"\xa1\x01\x27", b"", raw]))
    manifest = cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x27", {4: b"release"}, raw, sig]))
    return b"CSB1" + struct.pack("<I", len(manifest)) + manifest


def _payload(**over: object) -> dict[int, object]:
    p: dict[int, object] = {
        1: "1.0",
        2: 1,
        3: "esp32",
        4: 2,
        5: "x",
        6: 0,
        7: [["a.py", 0, bytes(32)]],
        8: 0,
    }
    p.update({int(k[1:]): v for k, v in over.items()})
    return p


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"k6": 1}, "size-mismatch"),
        ({"k7": []}, "malformed"),
        ({"k7": [["../x.py", 0, bytes(32)]]}, "bad-path"),
        ({"k7": [["/abs.py", 0, bytes(32)]]}, "bad-path"),
        ({"k7": [["a.py", 0, bytes(32)], ["a.py", 0, bytes(32)]]}, "bad-path"),
        ({"k7": [["a.py", 0, bytes(31)]]}, "malformed"),
        ({"k1": "x" * 33}, "malformed"),
        ({"k2": -1}, "malformed"),
        ({"k4": True}, "malformed"),
        ({"k9": 0}, "malformed"),
    ],
)
def test_manifest_field_refusals(over: dict[str, object], reason: str) -> None:
    _refusal(_resigned(_payload(**over)), reason, signed=False)


def test_manifest_not_cose() -> None:
    raw = cbor2.dumps([1, 2])
    _refusal(b"CSB1" + struct.pack("<I", len(raw)) + raw, "malformed", signed=False)
    raw = b"\xff\xff"
    _refusal(b"CSB1" + struct.pack("<I", len(raw)) + raw, "malformed", signed=False)


def test_build_refuses_what_parse_refuses() -> None:
    with pytest.raises(bundle.BundleError) as info:
        make(files=[("../evil.py", b"")])
    assert info.value.reason == "bad-path"
    with pytest.raises(bundle.BundleError):
        make(version="")
