"""Hypothesis properties of the firmware codec, run under CPython (the same source the
node runs): the frame decoder and the CBOR decoder never crash, raise only the promised
errors and stay within their memory bound."""

from __future__ import annotations

import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support import FIRMWARE_LIB

if str(FIRMWARE_LIB) not in sys.path:
    sys.path.append(str(FIRMWARE_LIB))

from citysense import cbor, cobs, frame  # type: ignore[import-not-found]
from citysense.errors import FrameError  # type: ignore[import-not-found]

import gateway.protocol as gp

frames = st.tuples(st.integers(1, 7), st.binary(max_size=300))
chunks = st.lists(st.integers(1, 200), min_size=1, max_size=40)


def drain(dec: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            item = dec.next_frame()
        except FrameError as exc:
            out.append("!" + exc.reason)
            continue
        if item is None:
            return out
        out.append(item)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), chunks)
def test_decoder_on_noise_raises_only_frame_errors(data: bytes, sizes: list[int]) -> None:
    dec = frame.Decoder()
    pos = 0
    i = 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        dec.feed(data[pos : pos + step])
        assert dec.buffered <= frame.MAX_ENCODED
        drain(dec)
        pos += step
        i += 1


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, max_size=6), st.lists(st.binary(max_size=50), max_size=6), chunks)
def test_frames_survive_garbage_and_splits(
    items: list[tuple[int, bytes]], junk: list[bytes], sizes: list[int]
) -> None:
    stream = bytearray()
    for k, (ftype, body) in enumerate(items):
        if k < len(junk):
            stream += junk[k] + b"\x00"  # garbage, closed by a delimiter
        stream += frame.encode(ftype, body)
    dec = frame.Decoder()
    got: list[Any] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = sizes[i % len(sizes)]
        dec.feed(bytes(stream[pos : pos + step]))
        got += drain(dec)
        pos += step
        i += 1
    good = [g for g in got if not isinstance(g, str)]
    # every real frame arrives, in order; garbage yields only counted errors (a piece of
    # garbage can, rarely, be a valid frame itself: then it shows up as an extra frame)
    it = iter(good)
    assert all(any(g == want for g in it) for want in items)
    assert dec.errors == sum(1 for g in got if isinstance(g, str))


@settings(max_examples=200, deadline=None)
@given(frames)
def test_encoder_matches_gateway(item: tuple[int, bytes]) -> None:
    ftype, body = item
    assert frame.encode(ftype, body) == gp.encode_frame(ftype, body)
    assert cobs.encode(body) == gp.cobs_encode(body)
    assert cobs.decode(cobs.encode(body)) == body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_cbor_loads_raises_only_value_error(data: bytes) -> None:
    try:
        cbor.loads(data)
    except ValueError:
        pass


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(width=32, allow_nan=False)
    | st.binary(max_size=20)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.integers(-100, 100) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_cbor_roundtrip_and_agrees_with_cbor2(value: Any) -> None:
    import cbor2

    data = cbor.dumps(value)
    assert cbor.loads(data) == value
    assert cbor2.loads(data) == value
    assert cbor.loads(cbor2.dumps(value, canonical=True)) == value
