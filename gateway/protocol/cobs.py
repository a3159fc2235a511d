"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999), no trailing delimiter."""

from __future__ import annotations

from .errors import FramingError


def cobs_encode(data: bytes) -> bytes:
    """Encode `data` so that the result holds no 0x00 byte.

    A run of 254 non-zero bytes that ends the data is not followed by an empty block
    (the usual convention: 254 bytes 01..FE encode as FF 01..FE).
    """
    out = bytearray(b"\x00")
    code_pos = 0
    code = 1
    last = len(data) - 1
    for i, byte in enumerate(data):
        if byte == 0:
            out[code_pos] = code
            code_pos = len(out)
            out.append(0)
            code = 1
            continue
        out.append(byte)
        code += 1
        if code == 0xFF:
            out[code_pos] = code
            if i == last:
                return bytes(out)
            code_pos = len(out)
            out.append(0)
            code = 1
    out[code_pos] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block (without the 0x00 delimiter); FramingError if malformed."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError("cobs: zero byte inside a frame")
        end = i + code
        if end > n:
            raise FramingError("cobs: block runs past the end of the frame")
        chunk = data[i + 1 : end]
        if 0 in chunk:
            raise FramingError("cobs: zero byte inside a frame")
        out += chunk
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
