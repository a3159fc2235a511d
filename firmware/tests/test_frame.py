"""citysense.frame: encoder bytes, and the decoder fed whole, byte by byte, at random
split points, with garbage and 0x00 runs between frames, and with oversize input."""

from citysense import frame
from citysense.errors import FrameError

from check import eq, raises, true, unhex

ACK_5 = unhex("0903a10105823a826b00")  # frame.encode(ACK, {1: 5}), same as the gateway's


def _drain(dec, out):
    while True:
        try:
            item = dec.next_frame()
        except FrameError as exc:
            out.append("!" + exc.reason)
            continue
        if item is None:
            return out
        out.append(item)


def _decode_split(stream, cuts):
    dec = frame.Decoder()
    out = []
    view = memoryview(stream)
    start = 0
    for cut in cuts:
        dec.feed(view[start:cut])
        true(dec.buffered <= frame.MAX_ENCODED, "buffer bound")
        _drain(dec, out)
        start = cut
    dec.feed(view[start:])
    _drain(dec, out)
    return out, dec


class _Lcg:
    def __init__(self, seed):
        self.state = seed

    def below(self, n):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.state >> 8) % n


FRAMES = [
    (frame.HELLO, unhex("a70101026b65737033322d7465737403")),
    (frame.RECORD, bytes(range(256)) * 2),
    (frame.ACK, unhex("a10105")),
    (frame.NACK, unhex("a20105026462757379")),
    (frame.TIME, b""),
    (frame.COMMAND, bytes(300)),
    (frame.COMMAND_RESULT, b"\xff" * 1019),
]


def _stream():
    return b"".join(frame.encode(t, b) for t, b in FRAMES)


def test_encode_exact():
    eq(frame.encode(frame.ACK, unhex("a10105")), ACK_5, "ACK {1: 5}")
    eq(frame.encode(frame.TIME, b""), unhex("0605a2681b0200"), "empty body")
    enc = frame.Encoder()
    for ftype, body in FRAMES:
        eq(bytes(enc.encode(ftype, body)), frame.encode(ftype, body), "Encoder %d" % ftype)
    # the Encoder COBS-encodes in place: lengths at the 254-byte block edges, with and
    # without zeros (no zero = the most overhead), must match the two-buffer encode()
    for n in (244, 245, 249, 250, 254, 498, 499, 503, 504, 752, 753, 1006, 1007, 1019):
        for body in (bytes([1 + i % 255 for i in range(n)]), bytes([i % 7 for i in range(n)])):
            eq(bytes(enc.encode(frame.RECORD, body)), frame.encode(frame.RECORD, body), "n=%d" % n)


def test_encode_from_room():
    # the body put in enc.room first (a record read from flash there): the same bytes,
    # the frame starting as far in as the longest one needs
    enc = frame.Encoder()
    for n in (0, 1, 249, 250, 504, 1006, 1019):
        body = bytes([1 + i % 255 for i in range(n)])
        enc.room[:n] = body
        eq(bytes(enc.encode(frame.RECORD, None, n)), frame.encode(frame.RECORD, body), "n=%d" % n)


def test_encode_limits():
    true(len(frame.encode(frame.RECORD, bytes(frame.MAX_BODY))) > 1024, "max body")
    e = raises(FrameError, frame.encode, frame.RECORD, bytes(frame.MAX_BODY + 1))
    eq(e.reason, "oversize", "reason")
    raises(FrameError, frame.Encoder().encode, frame.RECORD, bytes(2000))


def test_whole_input():
    out, dec = _decode_split(_stream(), [])
    eq(out, FRAMES, "frames")
    eq((dec.frames, dec.errors, dec.buffered), (len(FRAMES), 0, 0), "counters")


def test_one_byte_at_a_time():
    stream = _stream()
    out, _ = _decode_split(stream, range(1, len(stream)))
    eq(out, FRAMES, "frames")


def test_random_split_points():
    stream = _stream()
    rng = _Lcg(7)
    for _ in range(20):
        cuts = sorted(set(rng.below(len(stream)) for _ in range(rng.below(12) + 1)))
        out, _ = _decode_split(stream, cuts)
        eq(out, FRAMES, "frames split at %r" % cuts)


def test_memoryview_and_bytearray_input():
    stream = _stream()
    dec = frame.Decoder()
    dec.feed(bytearray(stream[:700]))
    dec.feed(memoryview(stream)[700:])
    eq(_drain(dec, []), FRAMES, "frames")


def test_zero_runs_are_idle_fill():
    stream = b"\x00" * 5 + frame.encode(frame.ACK, b"\x01") + b"\x00" * 300 + ACK_5
    out, dec = _decode_split(stream, [])
    eq(out, [(frame.ACK, b"\x01"), (frame.ACK, unhex("a10105"))], "frames")
    eq(dec.errors, 0, "no errors")


def test_garbage_between_frames():
    garbage = [
        (b"\x05\x01\x02", "framing"),  # block runs past the end
        (b"\x02\x03", "framing"),  # decodes to 1 byte: too short
        (b"\x01\x01\x01\x01", "framing"),  # 3 zero bytes: too short
        (ACK_5[:4] + b"\x99" + ACK_5[5:-1], "crc"),
        (frame.encode(0x0B, b"\xa0")[:-1], "unknown-type"),
        (frame.encode(0x00, b"")[:-1], "unknown-type"),
    ]
    stream = bytearray()
    want = []
    for junk, reason in garbage:
        stream += junk + b"\x00\x00" + ACK_5
        want += ["!" + reason, (frame.ACK, unhex("a10105"))]
    out, dec = _decode_split(bytes(stream), [])
    eq(out, want, "whole")
    eq((dec.frames, dec.errors), (6, 6), "counters")
    out, _ = _decode_split(bytes(stream), range(1, len(stream)))
    eq(out, want, "byte by byte")


def test_oversize_discarded_up_to_next_delimiter():
    big = b"\x01" * 1500
    stream = ACK_5 + big + b"\x00" + ACK_5
    ack = (frame.ACK, unhex("a10105"))
    for cuts in ([], [100, 1000, 1030, 1031, 1400], range(1, len(stream), 97)):
        out, dec = _decode_split(stream, cuts)
        eq(out, [ack, "!oversize", ack], "oversize %r" % (cuts,))
        eq(dec.errors, 1, "one error")


def test_oversize_at_the_limits():
    # an encoded segment of exactly MAX_ENCODED bytes is read, but it decodes to 1028
    # zero bytes (> MAX_FRAME); one byte more and it is discarded while reading
    seg = b"\x01" * frame.MAX_ENCODED
    ack = (frame.ACK, unhex("a10105"))
    out, _ = _decode_split(seg + b"\x00" + ACK_5 + seg + b"\x01\x00" + ACK_5, [])
    eq(out, ["!oversize", ack, "!oversize", ack], "limits")


def test_largest_frame_roundtrip():
    body = bytes(i % 251 + 1 for i in range(frame.MAX_BODY))
    wire = frame.encode(frame.RECORD, body)
    out, _ = _decode_split(wire, [])
    eq(out, [(frame.RECORD, body)], "largest frame")
    out, _ = _decode_split(wire, range(1, len(wire), 3))
    eq(out, [(frame.RECORD, body)], "largest frame, split")


def test_unterminated_frame_waits():
    dec = frame.Decoder()
    dec.feed(ACK_5[:-1])
    eq(dec.next_frame(), None, "needs more")
    dec.feed(b"\x00")
    eq(dec.next_frame(), (frame.ACK, unhex("a10105")), "complete")
    eq(dec.next_frame(), None, "drained")
