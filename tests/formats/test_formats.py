"""citysense_formats: each shared format's exact bytes and exact refusals. The firmware's
side of node_config and state_seq is held against these in tests/node/test_formats_cross.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from citysense_formats import devid, node_config, operator_key, registry_entry, state_seq

RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@pytest.mark.parametrize("good", ["a", "esp32-0a1b2c", "A.b_c-9", "9" * 64, "x.json"])
def test_device_ids_that_follow_the_rule(good: str) -> None:
    assert devid.is_valid(good) and devid.check(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 65, "a+b", "a#b", "a/b", "a b", ".a", "_a", "-a", "a\n", "a\x00", "é", 5, None],
)
def test_device_ids_that_break_the_rule(bad: object) -> None:
    assert not devid.is_valid(bad)
    with pytest.raises(devid.DeviceIdError) as info:
        devid.check(bad, "gateway id")
    assert str(info.value) == f"invalid gateway id {bad!r}: use {RULE}"


def test_state_seq_bytes() -> None:
    raw = state_seq.encode(1_764_047_000_123)
    assert raw == struct.pack("<Q", 1_764_047_000_123) + struct.pack(
        "<I", zlib.crc32(struct.pack("<Q", 1_764_047_000_123))
    )
    assert raw.hex() == "3b1265b99a010000de8215db"
    for value in (0, 1, 2**32, 2**63, 2**64 - 1):
        assert state_seq.decode(state_seq.encode(value)) == value


@pytest.mark.parametrize("value", [-1, 2**64, True, 1.0])
def test_state_seq_refuses_values_out_of_range(value: object) -> None:
    with pytest.raises(state_seq.StateSeqError, match=r"out of range 0..2\*\*64-1"):
        state_seq.encode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "expected 12 bytes, got 0"),
        (b"\x01" * 11, "expected 12 bytes, got 11"),
        (b"\x01" * 13, "expected 12 bytes, got 13"),
        (b"\x01" * 12, "crc32 does not match"),
    ],
)
def test_state_seq_refuses_torn_or_corrupt_files(raw: bytes, error: str) -> None:
    with pytest.raises(state_seq.StateSeqError, match=error):
        state_seq.decode(raw)
    good = bytearray(state_seq.encode(77))
    for i in range(12):  # every single-bit flip is caught by the crc
        good[i] ^= 0x10
        with pytest.raises(state_seq.StateSeqError):
            state_seq.decode(bytes(good))
        good[i] ^= 0x10


def _ed25519() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_operator_key_hex_and_pem_give_the_raw_key() -> None:
    key, raw = _ed25519()
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert operator_key.parse(pem) == raw
    assert operator_key.parse(pem.decode().replace("\n", "\r\n") + "\n\n") == raw
    assert operator_key.parse(raw.hex().encode() + b"\n") == raw
    assert operator_key.parse(raw.hex().upper()) == raw
    assert operator_key.encode_hex(raw) == raw.hex() + "\n"
    assert operator_key.parse(operator_key.encode_hex(raw)) == raw


def _refusal(data: bytes | str) -> str:
    with pytest.raises(operator_key.OperatorKeyError) as info:
        operator_key.parse(data)
    return str(info.value)


def test_operator_key_refusals() -> None:
    key, raw = _ed25519()
    expected = "is not 64 hex chars (the .pub file) or an Ed25519 PEM public key"
    assert _refusal(raw.hex()[:-1]) == expected
    assert _refusal(raw.hex() + "0") == expected
    assert _refusal(b"\xff" * 64) == f"is not text, not {expected[7:]}"
    assert _refusal(b"a" * 5000) == (
        "is larger than 4096 bytes, not 64 hex chars (the .pub file) or an Ed25519 PEM public key"
    )
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    assert _refusal(private) == "is a private key, not the public one"
    ec = generate_private_key(SECP256R1()).public_key()
    ec_pem = ec.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert _refusal(ec_pem) == "is a PEM public key but not an Ed25519 one"
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    lines = pem.splitlines()
    assert _refusal("\n".join([lines[0], lines[1][:-2] + "!!", lines[2]])).startswith(
        "has broken base64 in its PEM block"
    )
    # a valid header with one byte more (DER is canonical: one encoding only)
    import base64

    der = base64.b64decode(lines[1]) + b"\x00"
    longer = f"{lines[0]}\n{base64.b64encode(der).decode()}\n{lines[2]}\n"
    assert _refusal(longer) == "is a PEM public key but not an Ed25519 one"


ENTRY = {
    "device_id": "esp32-aa",
    "public_key": "ab" * 32,
    "status": "active",
    "enrolled_at": "2026-11-25T05:00:00Z",
    "revoked_at": None,
    "firmware_sha256": None,
    "previous_keys": [],
    "seq_floor": 1_764_047_000_123,
}


def test_registry_entry_round_trip() -> None:
    data = registry_entry.encode(ENTRY)
    assert data == (json.dumps(ENTRY, indent=2, sort_keys=True) + "\n").encode()
    entry = registry_entry.parse(data, "esp32-aa")
    assert entry == registry_entry.RegistryEntry(
        "esp32-aa", bytes.fromhex("ab" * 32), True, 1_764_047_000_123, 1_795_582_800_000
    )
    assert entry.floor == 1_764_047_000_123  # seq_floor wins over enrolled_at
    no_floor = {k: v for k, v in ENTRY.items() if k != "seq_floor"}
    assert registry_entry.parse(registry_entry.encode(no_floor)).floor == 1_795_582_800_000
    odd = {**no_floor, "enrolled_at": "last tuesday"}
    assert registry_entry.parse(registry_entry.encode(odd)).floor is None
    assert registry_entry.loads(data) == ENTRY
    assert entry.key_id == hashlib.sha256(bytes.fromhex("ab" * 32)).hexdigest()[:16]
    assert (
        registry_entry.fingerprint(entry.public_key) == hashlib.sha256(entry.public_key).hexdigest()
    )
    old = dict(ENTRY, status="revoked")
    del old["seq_floor"]
    assert registry_entry.parse(registry_entry.encode(old)).seq_floor is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"device_id": ""}, "device_id: expected a non-empty string"),
        ({"device_id": 7}, "device_id: expected a non-empty string"),
        ({"device_id": "a+b"}, f"device_id 'a+b': expected {RULE}"),
        ({"public_key": "AB" * 32}, "public_key: expected 64 lowercase hex chars (raw Ed25519)"),
        ({"public_key": "ab" * 31}, "public_key: expected 64 lowercase hex chars (raw Ed25519)"),
        ({"status": "on"}, "status: expected 'active' or 'revoked', got 'on'"),
        ({"seq_floor": True}, "seq_floor: expected an integer 0..2**63-1, got True"),
        ({"seq_floor": 2**63}, f"seq_floor: expected an integer 0..2**63-1, got {2**63}"),
        ({"seq_floor": "1"}, "seq_floor: expected an integer 0..2**63-1, got '1'"),
        ({"previous_keys": "x"}, "previous_keys: expected a list of objects"),
    ],
)
def test_registry_entry_refusals(change: dict[str, object], error: str) -> None:
    obj = dict(ENTRY, **change)
    data = (json.dumps(obj) + "\n").encode()
    with pytest.raises(registry_entry.RegistryEntryError) as info:
        registry_entry.parse(data)
    assert str(info.value) == error
    with pytest.raises(registry_entry.RegistryEntryError):
        registry_entry.encode(obj)


def test_registry_entry_file_name_and_size() -> None:
    data = registry_entry.encode(ENTRY)
    with pytest.raises(registry_entry.RegistryEntryError) as info:
        registry_entry.parse(data, "esp32-bb")
    assert str(info.value) == "device_id 'esp32-aa' does not match the file name 'esp32-bb'.json"
    padded = data[:-2] + b" " * (registry_entry.MAX_BYTES - len(data)) + data[-2:]
    assert len(padded) == registry_entry.MAX_BYTES
    assert registry_entry.parse(padded).device_id == "esp32-aa"
    with pytest.raises(registry_entry.RegistryEntryError, match="larger than 65536 bytes"):
        registry_entry.parse(padded + b" ")
    with pytest.raises(registry_entry.RegistryEntryError, match="larger than 65536 bytes"):
        registry_entry.encode(dict(ENTRY, note="x" * registry_entry.MAX_BYTES))


def _config(**change: object) -> dict[str, object]:
    return {"device_id": "esp32-aa", **node_config.defaults(), **change}


def test_node_config_defaults_and_bytes() -> None:
    assert node_config.DEFAULTS == {
        "interval_s": 60,
        "batch": 5,
        "link": {"uart": 1, "tx": 17, "rx": 16, "baud": 115200},
        "sensors": ["bme280", "battery"],
    }
    fresh = node_config.defaults()
    fresh["link"]["baud"] = 9600
    assert node_config.DEFAULTS["link"]["baud"] == 115200  # a copy, not the table
    assert node_config.encode(_config()) == (json.dumps(_config()) + "\n").encode()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"interval_s": 0}, "interval_s: 0 is out of range, use 1..86400"),
        ({"interval_s": 86401}, "interval_s: 86401 is out of range, use 1..86400"),
        ({"interval_s": True}, "interval_s: True is out of range, use 1..86400"),
        ({"batch": 0}, "batch: 0 is out of range, use 1..64"),
        ({"batch": 65}, "batch: 65 is out of range, use 1..64"),
        ({"batch": 5.0}, "batch: 5.0 is out of range, use 1..64"),
        ({"device_id": "a/b"}, f"device_id: invalid device id 'a/b': use {RULE}"),
        ({"sensors": "bme280"}, "sensors: expected a list of sensor names"),
        ({"sensors": [""]}, "sensors: expected a list of sensor names"),
        (
            {"link": {"uart": 3, "tx": 17, "rx": 16, "baud": 115200}},
            "uart: 3 is out of range, use 1..2",
        ),
        (
            {"link": {"uart": 1, "tx": 40, "rx": 16, "baud": 115200}},
            "tx: 40 is out of range, use 0..39",
        ),
        (
            {"link": {"uart": 1, "tx": 17, "rx": 16, "baud": 1234}},
            "baud: 1234 is not a standard rate",
        ),
        ({"link": {"uart": 1}}, "link: expected an object with ['baud', 'rx', 'tx', 'uart']"),
    ],
)
def test_node_config_refusals(change: dict[str, object], error: str) -> None:
    with pytest.raises(node_config.NodeConfigError) as info:
        node_config.validate(_config(**change))
    assert str(info.value).startswith(error)


def test_node_config_limits_are_inclusive() -> None:
    for field, (low, high) in node_config.LIMITS.items():
        assert node_config.validate(_config(**{field: low}))[field] == low
        assert node_config.validate(_config(**{field: high}))[field] == high
    with pytest.raises(node_config.NodeConfigError, match="missing"):
        node_config.validate({"device_id": "esp32-aa"})


def test_node_config_size_limit() -> None:
    base = len(node_config.encode(_config(sensors=[])))
    # each extra sensor name "x...x" costs len + 4 bytes ('"', '"', ', ')
    fits = _config(sensors=["s" * (node_config.MAX_BYTES - base - 2)])
    assert len(node_config.encode(fits)) == node_config.MAX_BYTES
    over = _config(sensors=["s" * (node_config.MAX_BYTES - base - 1)])
    with pytest.raises(node_config.NodeConfigError) as info:
        node_config.encode(over)
    assert str(info.value) == "config: 2049 bytes, the node reads at most 2048"
