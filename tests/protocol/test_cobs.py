"""COBS edge cases: exact encodings and round trips."""

from __future__ import annotations

import pytest

from gateway.protocol import FramingError, cobs_decode, cobs_encode

CASES = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), CASES)
def test_known_encodings(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_all_zeros() -> None:
    raw = bytes(300)
    enc = cobs_encode(raw)
    assert enc == b"\x01" * 301
    assert cobs_decode(enc) == raw


@pytest.mark.parametrize("n", [253, 254, 255, 256, 508, 509])
def test_long_runs_without_zeros(n: int) -> None:
    raw = bytes((i % 255) + 1 for i in range(n))
    enc = cobs_encode(raw)
    assert b"\x00" not in enc
    assert len(enc) == {253: 254, 254: 255, 255: 257, 256: 258, 508: 510, 509: 512}[n]
    assert cobs_decode(enc) == raw


def test_254_run_exact_layout() -> None:
    raw = bytes(range(1, 255))  # 254 non-zero bytes
    assert cobs_encode(raw) == b"\xff" + raw
    assert cobs_encode(b"\x00" + raw) == b"\x01\xff" + raw
    assert cobs_encode(raw + b"\xff") == b"\xff" + raw + b"\x02\xff"
    assert cobs_encode(raw[1:] + b"\xff\x00") == b"\xff" + raw[1:] + b"\xff\x01\x01"
    assert cobs_encode(raw[2:] + b"\xff\x00\x01") == b"\xfe" + raw[2:] + b"\xff\x02\x01"


@pytest.mark.parametrize("bad", [b"\x00", b"\x05\x01\x02", b"\x03\x01\x00"])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(FramingError):
        cobs_decode(bad)
