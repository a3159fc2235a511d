"""The node's `/state/seq` file: the seq reservation limit L, `u64 LE || crc32(u64) LE`
(12 bytes; firmware/lib/citysense/state.py writes it, the node continues at L on boot).

`citysense-provision enroll` reads it and raises it to the seq floor; tests build it.
"""

from __future__ import annotations

import struct
import zlib

SIZE = 12
MAX_VALUE = 2**64 - 1
_U64 = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class StateSeqError(ValueError):
    """The bytes are not a /state/seq file (wrong length or crc)."""


def encode(value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
        raise StateSeqError(f"seq limit {value!r} out of range 0..2**64-1")
    raw = _U64.pack(value)
    return raw + _CRC.pack(zlib.crc32(raw))


def decode(raw: bytes) -> int:
    """L from the file's bytes; StateSeqError if the file is torn or corrupt (the node then
    falls back to the highest seq in its record buffer)."""
    if len(raw) != SIZE:
        raise StateSeqError(f"expected {SIZE} bytes, got {len(raw)}")
    (crc,) = _CRC.unpack_from(raw, 8)
    if crc != zlib.crc32(raw[:8]):
        raise StateSeqError("crc32 does not match")
    value: int = _U64.unpack_from(raw)[0]
    return value
