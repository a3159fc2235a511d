"""HELLO/ACK/NACK/TIME bodies and the record payload: exact bytes and strict rejects."""

from __future__ import annotations

import cbor2
import pytest

from gateway.protocol import (
    Hello,
    MalformedError,
    NackReason,
    ProtocolError,
    RecordPayload,
    decode_ack,
    decode_hello,
    decode_nack,
    decode_record_payload,
    decode_time,
    encode_ack,
    encode_hello,
    encode_nack,
    encode_time,
    resolve_times,
)


def test_exact_bodies() -> None:
    assert encode_ack(7).hex() == "a10107"
    assert encode_nack(300, NackReason.BUSY).hex() == "a20119012c026462757379"
    assert encode_time(1_764_046_800_000).hex() == "a1011b0000019ab9620480"
    assert decode_ack(bytes.fromhex("a10107")) == 7
    assert decode_nack(bytes.fromhex("a20119012c026462757379")) == (300, NackReason.BUSY)
    assert decode_time(bytes.fromhex("a1011b0000019ab9620480")) == 1_764_046_800_000


def test_hello_round_trip_with_problem() -> None:
    h = Hello("esp32-a1b2c3d4e5f6", "0.1.0", 4, "power-on", 1234, 128, problem="config-missing")
    assert decode_hello(encode_hello(h)) == h
    plain = Hello("n1", "0.1.0", 1, "soft", 0, 0)
    assert decode_hello(encode_hello(plain)) == plain


def test_hello_protocol_1_still_decoded() -> None:
    """A node on protocol-1 firmware keeps delivering records; the gateway learns its
    version from HELLO and refuses COMMANDs for it (old-firmware)."""
    v1 = {1: 1, 2: "n", 3: "0.0.9", 4: 1, 5: "x", 6: 0, 7: 0}
    assert decode_hello(cbor2.dumps(v1)).protocol == 1
    assert decode_hello(encode_hello(Hello("n", "f", 1, "x", 0, 0))).protocol == 2


@pytest.mark.parametrize(
    "body",
    [
        {1: 3, 2: "n", 3: "f", 4: 0, 5: "x", 6: 0, 7: 0},
        {1: 0, 2: "n", 3: "f", 4: 0, 5: "x", 6: 0, 7: 0},
        {1: 1, 2: "", 3: "f", 4: 0, 5: "x", 6: 0, 7: 0},
        {1: 1, 2: "n", 3: "f", 4: -1, 5: "x", 6: 0, 7: 0},
        {1: 1, 2: "n", 3: "f", 4: 0, 5: "x", 6: 0},
        [1, 2, 3],
    ],
)
def test_hello_rejects(body: object) -> None:
    with pytest.raises(ProtocolError):
        decode_hello(cbor2.dumps(body))


def test_nack_unknown_reason() -> None:
    with pytest.raises(MalformedError):
        decode_nack(cbor2.dumps({1: 1, 2: "because"}))


@pytest.mark.parametrize(
    "payload",
    [
        {1: 1, 2: 1, 3: [], 4: 0},
        {1: 1, 2: 1, 3: [{2: 1.0}], 4: 2},
        {1: -1, 2: 1, 3: [{2: 1.0}], 4: 0},
        {1: 1, 2: 1, 3: [{99: 1.0}], 4: 0},
        {1: 1, 2: 1, 3: "pack", 4: 0},
    ],
)
def test_record_payload_rejects(payload: object) -> None:
    with pytest.raises(MalformedError):
        decode_record_payload(cbor2.dumps(payload))


def test_resolve_times() -> None:
    rec = RecordPayload(1, 1, [{-3: 100, 6: 0, 2: 1.0}, {6: 10, 2: 2.0}, {-3: 200, 2: 3.0}], 1)
    assert resolve_times(rec, None) is None
    assert resolve_times(rec, 1_000_000.0) == [1_000_100.0, 1_000_110.0, 1_000_200.0]
    unix = RecordPayload(1, 1, [{-3: 1_764_000_000, 6: 5, 2: 1.0}], 0)
    assert resolve_times(unix, None) == [1_764_000_005.0]
