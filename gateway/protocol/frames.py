"""Serial link framing: `COBS(type || body || crc32_be) || 0x00`, sans-I/O.

The decoder is fed raw bytes as they arrive and hands out whole frames. A bad frame is
reported once, as a `ProtocolError`, and decoding resumes at the next 0x00 delimiter.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .cobs import cobs_decode, cobs_encode
from .errors import CrcError, FramingError, OversizeError, ProtocolError, UnknownFrameTypeError

MAX_FRAME: Final = 1024
"""Largest frame (type + body + crc) before COBS, in bytes."""

MAX_ENCODED: Final = MAX_FRAME + (MAX_FRAME + 253) // 254
"""Largest COBS encoding of a MAX_FRAME frame, without the delimiter."""

_MIN_FRAME: Final = 1 + 4
_DELIMITER: Final = 0


class FrameType(IntEnum):
    HELLO = 0x01
    RECORD = 0x02
    ACK = 0x03
    NACK = 0x04
    TIME = 0x05
    COMMAND = 0x06
    COMMAND_RESULT = 0x07
    OTA_OFFER = 0x08
    OTA_GET = 0x09
    OTA_CHUNK = 0x0A


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    body: bytes


def encode_frame(ftype: int, body: bytes) -> bytes:
    """Wire bytes of one frame, delimiter included."""
    frame = bytes((int(ftype),)) + body
    if len(frame) + 4 > MAX_FRAME:
        raise OversizeError(f"frame of {len(frame) + 4} bytes exceeds {MAX_FRAME}")
    frame += zlib.crc32(frame).to_bytes(4, "big")
    return cobs_encode(frame) + b"\x00"


def decode_frame(encoded: bytes) -> Frame:
    """Decode one COBS block (no delimiter) into a checked Frame."""
    if len(encoded) > MAX_ENCODED:
        raise OversizeError(f"encoded frame of {len(encoded)} bytes exceeds {MAX_ENCODED}")
    raw = cobs_decode(encoded)
    if len(raw) < _MIN_FRAME:
        raise FramingError(f"frame of {len(raw)} bytes is shorter than {_MIN_FRAME}")
    if len(raw) > MAX_FRAME:
        raise OversizeError(f"frame of {len(raw)} bytes exceeds {MAX_FRAME}")
    want = int.from_bytes(raw[-4:], "big")
    got = zlib.crc32(raw[:-4])
    if want != got:
        raise CrcError(f"crc mismatch: frame says {want:08x}, computed {got:08x}")
    try:
        ftype = FrameType(raw[0])
    except ValueError as exc:
        raise UnknownFrameTypeError(f"unknown frame type 0x{raw[0]:02x}") from exc
    return Frame(ftype, raw[1:-4])


class _Oversize:
    """Marker queued in place of a frame that was discarded for its length."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length


class FrameDecoder:
    """Splits a byte stream on 0x00 and decodes frames.

    Memory: the partial frame never grows beyond MAX_ENCODED bytes; bytes of an overlong
    frame are dropped as they arrive, up to its delimiter. Completed frames wait in a
    queue until `next_frame()` takes them, so a caller that feeds chunks of at most N
    bytes and drains the queue between feeds holds at most N + MAX_ENCODED bytes.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self._discarding = 0  # bytes dropped so far from an overlong frame
        self._ready: deque[bytes | _Oversize] = deque()

    @property
    def buffered(self) -> int:
        """Bytes held: the partial frame plus complete frames not yet taken."""
        held = len(self._partial)
        for item in self._ready:
            held += len(item) if isinstance(item, bytes) else 0
        return held

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        start = 0
        n = len(view)
        while start < n:
            end = data.find(b"\x00", start)
            stop = n if end < 0 else end
            self._take(view[start:stop])
            if end < 0:
                break
            self._close()
            start = end + 1

    def _take(self, chunk: memoryview) -> None:
        if self._discarding:
            self._discarding += len(chunk)
            return
        room = MAX_ENCODED - len(self._partial)
        if len(chunk) <= room:
            self._partial += chunk
            return
        self._discarding = len(self._partial) + len(chunk)
        self._partial.clear()

    def _close(self) -> None:
        if self._discarding:
            self._ready.append(_Oversize(self._discarding))
            self._discarding = 0
        elif self._partial:
            self._ready.append(bytes(self._partial))
            self._partial.clear()
        # an empty segment (a run of 0x00) is idle fill, not an error

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more input is needed.

        Raises a ProtocolError subclass for a bad frame; the frame is consumed, so the
        next call goes on with the following one.
        """
        if not self._ready:
            return None
        item = self._ready.popleft()
        if isinstance(item, _Oversize):
            raise OversizeError(f"discarded {item.length} bytes of an overlong frame")
        return decode_frame(item)

    def frames(self) -> list[Frame | ProtocolError]:
        """Drain everything ready: frames and the errors of bad frames, in order."""
        out: list[Frame | ProtocolError] = []
        while self._ready:
            try:
                frame = self.next_frame()
            except ProtocolError as exc:
                out.append(exc)
                continue
            if frame is not None:
                out.append(frame)
        return out
