"""Frame decoder: whole input, byte by byte, random splits, garbage, oversize; properties."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import (
    MAX_ENCODED,
    MAX_FRAME,
    CrcError,
    Frame,
    FrameDecoder,
    FrameType,
    FramingError,
    OversizeError,
    ProtocolError,
    UnknownFrameTypeError,
    cobs_encode,
    encode_ack,
    encode_frame,
)

FRAMES = [
    Frame(FrameType.ACK, encode_ack(7)),
    Frame(FrameType.RECORD, bytes(range(256)) * 3),
    Frame(FrameType.TIME, b"\xa1\x01\x1b\x00\x00\x01\x9a\xb2\x3c\x4d\x5e"),
    Frame(FrameType.HELLO, b""),
]
WIRE = b"".join(encode_frame(f.type, f.body) for f in FRAMES)


def drain(dec: FrameDecoder) -> list[Frame | str]:
    out: list[Frame | str] = []
    for item in dec.frames():
        out.append(item.reason if isinstance(item, ProtocolError) else item)
    return out


def test_exact_encoding_of_an_ack() -> None:
    # type 03, body a1 01 07, crc32(03 a1 01 07) big-endian, then COBS and 00
    raw = b"\x03\xa1\x01\x07" + zlib.crc32(b"\x03\xa1\x01\x07").to_bytes(4, "big")
    assert encode_frame(FrameType.ACK, encode_ack(7)) == cobs_encode(raw) + b"\x00"
    assert encode_frame(FrameType.ACK, encode_ack(7)).hex() == "09" + raw.hex() + "00"


def test_whole_input() -> None:
    dec = FrameDecoder()
    dec.feed(WIRE)
    assert drain(dec) == FRAMES
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_one_byte_at_a_time() -> None:
    dec = FrameDecoder()
    got: list[Frame | str] = []
    for b in WIRE:
        dec.feed(bytes([b]))
        got += drain(dec)
    assert got == FRAMES


@pytest.mark.parametrize("seed", range(20))
def test_random_split_points(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(WIRE)), 12))
    dec = FrameDecoder()
    got: list[Frame | str] = []
    prev = 0
    for cut in [*cuts, len(WIRE)]:
        dec.feed(WIRE[prev:cut])
        prev = cut
        got += drain(dec)
    assert got == FRAMES


def test_garbage_and_zero_runs_between_frames() -> None:
    ack = encode_frame(FrameType.ACK, encode_ack(1))
    stream = b"\x00\x00\x00" + ack + b"\x13\x37garbage\x00" + b"\x00" * 10 + ack + b"\x00\x00"
    dec = FrameDecoder()
    dec.feed(stream)
    assert drain(dec) == [
        Frame(FrameType.ACK, encode_ack(1)),
        "framing",
        Frame(FrameType.ACK, encode_ack(1)),
    ]


def test_crc_mismatch_is_counted_and_skipped() -> None:
    good = encode_frame(FrameType.ACK, encode_ack(5))
    raw = bytearray(b"\x03\xa1\x01\x05" + zlib.crc32(b"\x03\xa1\x01\x05").to_bytes(4, "big"))
    raw[2] ^= 0x04
    bad = cobs_encode(bytes(raw)) + b"\x00"
    dec = FrameDecoder()
    dec.feed(bad + good)
    with pytest.raises(CrcError):
        dec.next_frame()
    assert dec.next_frame() == Frame(FrameType.ACK, encode_ack(5))


def test_unknown_type_and_short_frame() -> None:
    raw = b"\x42\x01" + zlib.crc32(b"\x42\x01").to_bytes(4, "big")
    dec = FrameDecoder()
    dec.feed(cobs_encode(raw) + b"\x00" + cobs_encode(b"\x01\x02\x03") + b"\x00")
    with pytest.raises(UnknownFrameTypeError):
        dec.next_frame()
    with pytest.raises(FramingError):
        dec.next_frame()


def test_oversize_input_discarded_to_next_delimiter() -> None:
    good = encode_frame(FrameType.ACK, encode_ack(9))
    dec = FrameDecoder()
    dec.feed(b"\x01" * (MAX_ENCODED + 500))
    assert dec.buffered <= MAX_ENCODED
    dec.feed(b"\x01" * 5000 + b"\x00" + good)
    assert drain(dec) == ["oversize", Frame(FrameType.ACK, encode_ack(9))]


def test_largest_frame_passes_and_one_more_byte_is_refused() -> None:
    body = b"\x55" * (MAX_FRAME - 5)
    dec = FrameDecoder()
    dec.feed(encode_frame(FrameType.RECORD, body))
    assert drain(dec) == [Frame(FrameType.RECORD, body)]
    with pytest.raises(OversizeError):
        encode_frame(FrameType.RECORD, body + b"\x55")
    raw = b"\x02" + body + b"\x55"
    raw += zlib.crc32(raw).to_bytes(4, "big")
    dec.feed(cobs_encode(raw) + b"\x00")
    assert drain(dec) == ["oversize"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=2100), max_size=12))
def test_property_arbitrary_chunks_never_crash(chunks: list[bytes]) -> None:
    dec = FrameDecoder()
    for chunk in chunks:
        dec.feed(chunk)
        assert dec.buffered <= MAX_ENCODED + len(chunk)
        while True:
            try:
                frame = dec.next_frame()
            except ProtocolError:
                continue
            if frame is None:
                break
            assert len(frame.body) <= MAX_FRAME - 5
        assert dec.buffered <= MAX_ENCODED


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(list(FrameType)), st.binary(max_size=300)), max_size=6),
    st.binary(max_size=64),
    st.data(),
)
def test_property_valid_frames_survive_garbage(
    frames: list[tuple[FrameType, bytes]], garbage: bytes, data: st.DataObject
) -> None:
    wire = b""
    for ftype, body in frames:
        wire += b"\x00" + garbage + b"\x00" + encode_frame(ftype, body)
    dec = FrameDecoder()
    pos = 0
    got: list[Frame] = []
    while pos < len(wire):
        step = data.draw(st.integers(min_value=1, max_value=len(wire) - pos))
        dec.feed(wire[pos : pos + step])
        pos += step
        got += [f for f in dec.frames() if isinstance(f, Frame)]
    expected = [Frame(t, b) for t, b in frames]
    # garbage may itself decode as a valid frame only if its CRC matches by chance;
    # every real frame must come out, in order
    it = iter(got)
    assert all(any(g == e for g in it) for e in expected)
