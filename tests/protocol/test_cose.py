"""COSE_Sign1 on the gateway side: RFC 8032 vectors, exact layout, every forgery rejected."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.protocol import (
    Command,
    CommandResult,
    MalformedError,
    ProtocolError,
    RecordPayload,
    SignatureError,
    decode_command,
    decode_command_result,
    decode_record_payload,
    encode_record_payload,
    parse_sign1,
    sig_structure,
    sign1,
    sign_command,
    sign_command_result,
    verify1,
)

# RFC 8032 section 7.1, TEST 1-3: (secret key, public key, message, signature)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]

SEED = bytes(range(32))
KID = b"esp32-a1b2c3d4e5f6"


def pub_of(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


PUB = pub_of(SEED)
PAYLOAD = encode_record_payload(
    RecordPayload(
        seq=42, boot=3, pack=[{-2: "esp32-a1/", 0: "temp", 1: "Cel", 2: 21.5}], time_base=0
    )
)


@pytest.mark.parametrize(("sk", "pk", "msg", "sig"), RFC8032)
def test_rfc8032_vectors(sk: str, pk: str, msg: str, sig: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
    assert pub_of(bytes.fromhex(sk)).hex() == pk
    assert key.sign(bytes.fromhex(msg)).hex() == sig


def test_layout_is_exactly_design() -> None:
    data = sign1(SEED, KID, PAYLOAD)
    item = cbor2.loads(data)
    assert item.tag == 18
    protected, unprotected, payload, signature = item.value
    assert protected == b"\xa1\x01\x27"
    assert unprotected == {4: KID}
    assert payload == PAYLOAD
    tbs = cbor2.dumps(["Signature1", b"\xa1\x01\x27", b"", PAYLOAD])
    assert sig_structure(protected, payload) == tbs
    Ed25519PrivateKey.from_private_bytes(SEED).public_key().verify(signature, tbs)
    assert data[:5] == bytes.fromhex("d28443a101")


def test_round_trip() -> None:
    kid, payload = verify1(PUB, sign1(SEED, KID, PAYLOAD))
    assert (kid, payload) == (KID, PAYLOAD)
    rec = decode_record_payload(payload)
    assert (rec.seq, rec.boot, rec.time_base) == (42, 3, 0)


def verify_as_gateway(keys: dict[bytes, bytes], data: bytes) -> bytes:
    """What the gateway does: parse, look the kid up, verify with that device's key.

    The kid sits in the unprotected header (DESIGN.md), so a flipped kid bit is caught
    by the lookup (unknown device) or by the other device's key, not by the signature.
    """
    msg = parse_sign1(data)
    key = keys.get(msg.kid)
    if key is None:
        raise ProtocolError(f"unknown kid {msg.kid!r}", reason="unknown-device")
    return verify1(key, data)[1]


def test_every_single_bit_flip_is_rejected() -> None:
    data = sign1(SEED, KID, PAYLOAD)
    other = KID[:-1] + bytes([KID[-1] ^ 1])  # a registered neighbour one bit away
    keys = {KID: PUB, other: pub_of(bytes(range(1, 33)))}
    assert verify_as_gateway(keys, data) == PAYLOAD
    for i in range(len(data)):
        for bit in range(8):
            forged = bytearray(data)
            forged[i] ^= 1 << bit
            with pytest.raises(ProtocolError):
                verify_as_gateway(keys, bytes(forged))


@pytest.mark.parametrize("cut", [1, 5, 20, 40])
def test_truncated(cut: int) -> None:
    data = sign1(SEED, KID, PAYLOAD)
    with pytest.raises(MalformedError):
        verify1(PUB, data[:-cut])


def test_wrong_key_or_kid() -> None:
    data = sign1(SEED, KID, PAYLOAD)
    with pytest.raises(SignatureError):
        verify1(pub_of(bytes(32)), data)
    item = cbor2.loads(data)
    item.value[1] = {4: b"esp32-000000000000"}
    relabelled = cbor2.dumps(item)
    with pytest.raises(SignatureError):
        verify_as_gateway({b"esp32-000000000000": pub_of(bytes(32))}, relabelled)
    with pytest.raises(ProtocolError) as err:
        verify_as_gateway({KID: PUB}, relabelled)
    assert err.value.reason == "unknown-device"


def test_wrong_alg_is_rejected_before_crypto() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    protected = cbor2.dumps({1: -7})  # ES256 claimed
    sig = key.sign(cbor2.dumps(["Signature1", protected, b"", PAYLOAD]))
    data = cbor2.dumps(cbor2.CBORTag(18, [protected, {4: KID}, PAYLOAD, sig]))
    with pytest.raises(MalformedError) as err:
        verify1(PUB, data)
    assert err.value.reason == "alg"


@pytest.mark.parametrize(
    "item",
    [
        cbor2.CBORTag(98, []),
        [b"\xa1\x01\x27", {4: KID}, PAYLOAD, bytes(64)],
        cbor2.CBORTag(18, [b"\xa1\x01\x27", {4: KID}, None, bytes(64)]),
        cbor2.CBORTag(18, [b"\xa1\x01\x27", {}, PAYLOAD, bytes(64)]),
        cbor2.CBORTag(18, [b"\xa1\x01\x27", {4: "text-kid"}, PAYLOAD, bytes(64)]),
        cbor2.CBORTag(18, [b"\xa1\x01\x27", {4: KID}, PAYLOAD, bytes(63)]),
        cbor2.CBORTag(18, [b"\xa2\x01\x27\x04\x41\x00", {4: KID}, PAYLOAD, bytes(64)]),
    ],
)
def test_structural_rejects(item: object) -> None:
    with pytest.raises(MalformedError):
        parse_sign1(cbor2.dumps(item))


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(MalformedError):
        parse_sign1(sign1(SEED, KID, PAYLOAD) + b"\x00")


def test_command_round_trip_and_forgery() -> None:
    op_seed = bytes(range(100, 132))
    cmd = Command(7, "set_interval", {"s": 30}, "node-a", "*", 1764047000123)
    data = sign_command(op_seed, cmd)
    assert decode_command(pub_of(op_seed), data) == cmd
    with pytest.raises(SignatureError):
        decode_command(PUB, data)
    res = sign_command_result(SEED, KID, CommandResult(7, True, "interval=30"))
    assert decode_command_result(PUB, res) == CommandResult(7, True, "interval=30", KID)
