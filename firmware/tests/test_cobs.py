"""citysense.cobs: edge cases (empty, zeros, 253..256-byte runs) and malformed input."""

from citysense import cobs

from check import eq, raises, unhex


def _run(n, start=1):
    return bytes((start + i) % 255 + 1 for i in range(n))  # no zero byte


def _rt(data, want):
    eq(cobs.encode(data), want, "encode %d bytes" % len(data))
    eq(cobs.decode(want), data, "decode %d bytes" % len(want))


def test_empty():
    _rt(b"", b"\x01")
    eq(cobs.decode(b""), b"", "decode of nothing")


def test_zeros():
    _rt(b"\x00", b"\x01\x01")
    _rt(b"\x00\x00", b"\x01\x01\x01")
    for n in (3, 254, 255, 600):
        _rt(bytes(n), b"\x01" * (n + 1))


def test_small_examples():
    _rt(unhex("11220033"), unhex("0311220233"))
    _rt(unhex("11223344"), unhex("0511223344"))
    _rt(unhex("11000000"), unhex("0211010101"))
    _rt(unhex("00112233"), unhex("0104112233"))


def test_runs_without_zeros():
    d = _run(253)
    _rt(d, b"\xfe" + d)
    d = _run(254)
    _rt(d, b"\xff" + d)  # no empty block after a final full run
    d = _run(255)
    _rt(d, b"\xff" + d[:254] + b"\x02" + d[254:])
    d = _run(256)
    _rt(d, b"\xff" + d[:254] + b"\x03" + d[254:])
    d = _run(254) + b"\x00"
    _rt(d, b"\xff" + d[:254] + b"\x01\x01")
    d = b"\x00" + _run(254)
    _rt(d, b"\x01\xff" + d[1:])


def test_max_encoded():
    for n in (0, 1, 253, 254, 255, 508, 1024):
        data = _run(n)
        enc = cobs.encode(data)
        eq(0 in enc, False, "no zero in encoding of %d" % n)
        true_len = len(enc)
        if true_len > cobs.max_encoded(n):
            raise AssertionError("encoding of %d bytes is %d long" % (n, true_len))
    eq(cobs.max_encoded(1024), 1029, "bound for a 1024-byte frame")


def test_roundtrip_mixed():
    state = 12345
    for n in range(0, 700, 37):
        buf = bytearray(n)
        for i in range(n):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            buf[i] = (state >> 16) & 0xFF if state & 3 else 0
        data = bytes(buf)
        eq(cobs.decode(cobs.encode(data)), data, "roundtrip %d" % n)


def test_malformed():
    for hexenc in ("00", "0200", "02", "0511223344ff", "ff" + "11" * 10, "0311"):
        raises(ValueError, cobs.decode, unhex(hexenc))
