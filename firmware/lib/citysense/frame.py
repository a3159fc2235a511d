"""Serial link framing, sans-I/O: on the wire `COBS(type || body || crc32_be) || 0x00`.

`encode(ftype, body)` returns the wire bytes of one frame. `Encoder` does the same into
buffers allocated once (for the send loop). `Decoder` is fed raw bytes as they arrive
(`feed`) and hands out `(ftype, body)` tuples (`next_frame`); a bad frame raises one
`FrameError` (reason framing, crc, oversize or unknown-type) from `next_frame`, is
counted in `Decoder.errors`, and decoding goes on after the next 0x00.

The decoder holds one preallocated buffer of MAX_ENCODED bytes; a segment longer than
that is dropped as it arrives, up to its delimiter, so memory stays bounded whatever the
input. Complete frames wait in a short list until `next_frame()` takes them: feed
chunks of bounded size (a UART read) and drain after each feed.
"""

import struct

from citysense import cobs
from citysense.crc32 import crc32
from citysense.errors import FrameError

try:
    from micropython import const
except ImportError:  # CPython (cross-tests): const() is only a compiler hint

    def const(x):  # type: ignore[misc]
        return x


HELLO = const(0x01)
RECORD = const(0x02)
ACK = const(0x03)
NACK = const(0x04)
TIME = const(0x05)
COMMAND = const(0x06)
COMMAND_RESULT = const(0x07)
# firmware transfer (docs/protocol.md section 10), private names: every public name is a
# qstr for the node's whole life (citysense/fetch.py uses the numbers)
_OTA_OFFER = const(0x08)  # gw->node: a bundle is there for you
_OTA_GET = const(0x09)  # node->gw: send bytes of a bundle from an offset
_OTA_CHUNK = const(0x0A)  # gw->node: those bytes (or why not)

MAX_FRAME = const(1024)  # type + body + crc, before COBS
MAX_BODY = const(1019)  # MAX_FRAME - 1 - 4
MAX_ENCODED = const(1029)  # COBS of MAX_FRAME bytes, without the delimiter
_MIN_FRAME = const(5)
_ROOM = const(5)  # MAX_FRAME // 254 + 1: where Encoder.room's frame starts

NAMES = {
    HELLO: "HELLO",
    RECORD: "RECORD",
    ACK: "ACK",
    NACK: "NACK",
    TIME: "TIME",
    COMMAND: "COMMAND",
    COMMAND_RESULT: "COMMAND_RESULT",
}


def _fill(raw, ftype, body, n=-1):
    """Write type || body || crc into `raw` (body None: its `n` bytes are there already);
    returns the frame length."""
    n = (len(body) if body is not None else n) + 5
    if n > MAX_FRAME:
        raise FrameError("frame of %d bytes exceeds %d" % (n, MAX_FRAME), "oversize")
    if not 0 <= ftype <= 0xFF:
        raise ValueError("frame type out of range")
    raw[0] = ftype
    if body is not None:
        raw[1 : n - 4] = body
    struct.pack_into(">I", raw, n - 4, crc32(memoryview(raw)[: n - 4]))
    return n


def encode(ftype, body):
    """The wire bytes of one frame, the trailing 0x00 included."""
    raw = bytearray(len(body) + 5)
    n = _fill(raw, ftype, body)
    out = bytearray(cobs.max_encoded(n) + 1)
    end = cobs.encode_into(raw, out)
    out[end] = 0
    return bytes(memoryview(out)[: end + 1])


class Encoder:
    """Frame encoder with one buffer, allocated once.

    The frame (type || body || crc) is written at the tail of the buffer and COBS-encoded
    in place towards its head: the encoding of n bytes is at most n // 254 + 1 bytes
    longer, so with the frame starting that far in, every byte is written at or behind
    the one being read. One MAX_ENCODED buffer instead of two saves 1 KiB of heap.
    `encode()` returns a memoryview into the encoder's buffer, valid until the next
    call: write it out (UART.write) before encoding the next frame.

    `room` is where a body can be put before `encode(ftype, None, n)` (a record read
    from flash straight into it, no bytes object per send): the frame then starts
    _ROOM bytes in, as far as the longest frame needs (1024 // 254 + 1), which keeps
    the in-place encoding behind its reading for any shorter frame too.
    """

    def __init__(self):
        self._out = bytearray(MAX_ENCODED + 1)
        self.room = memoryview(self._out)[_ROOM + 1 : _ROOM + 1 + MAX_BODY]

    def encode(self, ftype, body, n=-1):
        out = self._out
        if body is None:  # its n bytes are in self.room
            n += 5
            k = _ROOM
        else:
            n = len(body) + 5
            k = n // 254 + 1  # cobs.max_encoded(n) - n
        raw = memoryview(out)[k : k + n]
        _fill(raw, ftype, body, n - 5)
        end = cobs.encode_into(raw, out)
        out[end] = 0
        return memoryview(out)[: end + 1]


class Decoder:
    """Splits a byte stream on 0x00 and decodes the frames between the delimiters."""

    def __init__(self):
        self._buf = bytearray(MAX_ENCODED)
        self._n = 0
        self._discarding = 0  # bytes dropped so far of an overlong segment
        self._ready = []
        self.frames = 0  # good frames decoded
        self.errors = 0  # bad frames dropped
        self.lend = None  # a buffer for the next OTA_CHUNK body (see _close), or None

    @property
    def buffered(self):
        """Bytes of the partial frame held in the buffer (never above MAX_ENCODED)."""
        return self._n

    def feed(self, data, n=-1):
        """Take raw bytes from the link: `data`, or its first `n` bytes (a UART read
        buffer; bytes or bytearray are scanned in place, not copied)."""
        if not hasattr(data, "find"):
            data = bytes(data)
        view = memoryview(data)
        size = len(data) if n < 0 else n
        start = 0
        while start < size:
            end = data.find(b"\x00", start, size)
            stop = size if end < 0 else end
            if stop > start:
                self._take(view[start:stop])
            if end < 0:
                return
            self._close()
            start = end + 1

    def _take(self, chunk):
        k = len(chunk)
        if self._discarding:
            self._discarding += k
            return
        n = self._n
        if n + k <= MAX_ENCODED:
            self._buf[n : n + k] = chunk
            self._n = n + k
            return
        self._discarding = n + k
        self._n = 0

    def _close(self):
        if self._discarding:
            dropped = self._discarding
            self._discarding = 0
            self._fail("discarded %d bytes of an overlong frame" % dropped, "oversize")
            return
        n = self._n
        if not n:
            return  # a run of 0x00 is idle fill, not an error
        self._n = 0
        buf = self._buf
        try:
            m = cobs.decode_into(buf, n)
        except ValueError as exc:
            self._fail(str(exc), "framing")
            return
        if m < _MIN_FRAME:
            self._fail("frame of %d bytes is shorter than %d" % (m, _MIN_FRAME), "framing")
            return
        if m > MAX_FRAME:
            self._fail("frame of %d bytes exceeds %d" % (m, MAX_FRAME), "oversize")
            return
        view = memoryview(buf)
        want = struct.unpack_from(">I", buf, m - 4)[0]
        got = crc32(view[: m - 4])
        if want != got:
            self._fail("crc mismatch: frame says %08x, computed %08x" % (want, got), "crc")
            return
        ftype = buf[0]
        if ftype not in NAMES and not _OTA_OFFER <= ftype <= _OTA_CHUNK:
            self._fail("unknown frame type 0x%02x" % ftype, "unknown-type")
            return
        self.frames += 1
        body = view[1 : m - 4]
        lent = self.lend
        if ftype == _OTA_CHUNK and lent is not None and m - 5 <= len(lent):
            # into the buffer the transfer lent (citysense/fetch.py), not a new ~1 KiB
            # block per chunk; it is lent again once the chunk has been written out
            self.lend = None
            lent[: m - 5] = body
            self._ready.append((ftype, memoryview(lent)[: m - 5]))
            return
        self._ready.append((ftype, bytes(body)))

    def _fail(self, message, reason):
        self.errors += 1
        self._ready.append(FrameError(message, reason))

    def pending(self):
        """Frames (and errors) complete and waiting for next_frame()."""
        return len(self._ready)

    def next_frame(self):
        """The next `(ftype, body)`, or None if more input is needed. A bad frame raises
        its FrameError once; the next call goes on with the following frame."""
        if not self._ready:
            return None
        item = self._ready.pop(0)
        if isinstance(item, FrameError):
            raise item
        return item
