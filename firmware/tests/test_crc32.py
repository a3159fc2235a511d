"""citysense.crc32: binascii and the pure fallback agree, both ways."""

from citysense import crc32 as crc_mod
from citysense import frame

from check import eq, true

CASES = [b"", b"\x00", b"123456789", b"\xff" * 33, bytes(range(256)), b"citysense" * 50]
CHECK = 0xCBF43926  # CRC-32/ISO-HDLC of "123456789"


def test_check_value():
    eq(crc_mod.crc32(b"123456789"), CHECK, "native path")
    eq(crc_mod.crc32_pure(b"123456789"), CHECK, "pure path")


def test_pure_equals_native():
    for data in CASES:
        eq(crc_mod.crc32_pure(data), crc_mod.crc32(data), "len %d" % len(data))
        eq(crc_mod.crc32_pure(memoryview(data)), crc_mod.crc32(data), "memoryview")


def test_continuation():
    data = bytes(range(200))
    whole = crc_mod.crc32(data)
    for cut in (0, 1, 100, 199, 200):
        eq(crc_mod.crc32(data[cut:], crc_mod.crc32(data[:cut])), whole, "native %d" % cut)
        eq(crc_mod.crc32_pure(data[cut:], crc_mod.crc32_pure(data[:cut])), whole, "pure %d" % cut)


def test_frames_without_binascii():
    # a build without binascii.crc32 takes the pure path: frames stay byte-identical
    true(crc_mod._HAVE_NATIVE, "this build has binascii.crc32")
    wire = frame.encode(frame.ACK, b"\xa1\x01\x05")
    crc_mod._HAVE_NATIVE = False
    try:
        eq(crc_mod.crc32(b"123456789"), CHECK, "pure via crc32()")
        eq(frame.encode(frame.ACK, b"\xa1\x01\x05"), wire, "encode")
        dec = frame.Decoder()
        dec.feed(wire)
        eq(dec.next_frame(), (frame.ACK, b"\xa1\x01\x05"), "decode")
    finally:
        crc_mod._HAVE_NATIVE = True
