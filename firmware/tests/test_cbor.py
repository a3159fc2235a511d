"""citysense.cbor against RFC 8949 Appendix A, encode and decode byte-exact."""

from citysense import cbor
from citysense.cbor import Tag

from check import eq, true, unhex

# (value, encoding): every Appendix A example of a type the codec supports.
INTS = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"),
    (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
]  # fmt: skip

# Floats a half or a single holds exactly: the same on the ESP32 and the unix port.
FLOATS = [
    (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.5, "f93e00"),
    (65504.0, "f97bff"), (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"), (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"), (-4.0, "f9c400"),
    (float("inf"), "f97c00"), (float("-inf"), "f9fc00"),
]  # fmt: skip

# Doubles: only where the platform float is a double (the 64-bit unix port).
DOUBLES = [
    (1.1, "fb3ff199999999999a"), (1.0e300, "fb7e37e43c8800759c"),
    (-4.1, "fbc010666666666666"),
]  # fmt: skip

SIMPLE = [(False, "f4"), (True, "f5"), (None, "f6")]

STRINGS = [
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ('"\\', "62225c"),
    ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
]  # fmt: skip

CONTAINERS = [
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
     "a56161614161626142616361436164614461656145"),
]  # fmt: skip

TAGS = [
    (Tag(0, "2013-03-21T20:04:00Z"), "c074323031332d30332d32315432303a30343a30305a"),
    (Tag(1, 1363896240), "c11a514b67b0"),
    (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
    (Tag(24, b"\x64\x49\x45\x54\x46"), "d818456449455446"),
    (Tag(32, "http://www.example.com"),
     "d82076687474703a2f2f7777772e6578616d706c652e636f6d"),
    # bignums decode as tags (the codec has no bignum type)
    (Tag(2, b"\x01" + bytes(8)), "c249010000000000000000"),
    (Tag(3, b"\x01" + bytes(8)), "c349010000000000000000"),
]  # fmt: skip


def _roundtrip(cases):
    for value, hexenc in cases:
        want = unhex(hexenc)
        eq(cbor.dumps(value), want, "dumps(%r)" % (value,))
        eq(cbor.loads(want), value, "loads(%s)" % hexenc)


def test_ints():
    _roundtrip(INTS)


def test_floats():
    _roundtrip(FLOATS)
    # -0.0 == 0.0, so check the sign bit of the decoded value too
    eq(str(cbor.loads(unhex("f98000"))), "-0.0", "sign of -0.0")


def test_doubles():
    if not cbor.DOUBLE_FLOATS:
        print("skip doubles: single-precision floats")
        return
    _roundtrip(DOUBLES)
    eq(cbor.loads(unhex("c1fb41d452d9ec200000")), Tag(1, 1363896240.5), "tag 1 float")
    eq(cbor.dumps(Tag(1, 1363896240.5)), unhex("c1fb41d452d9ec200000"), "tag 1 float")


def test_nan():
    # every NaN encoding decodes as NaN; NaN encodes as the canonical half f97e00
    for hexenc in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        v = cbor.loads(unhex(hexenc))
        true(v != v, "NaN from " + hexenc)
    eq(cbor.dumps(float("nan")), unhex("f97e00"), "dumps(nan)")


def test_decode_wider_floats():
    # non-preferred float widths still decode to the value
    eq(cbor.loads(unhex("fa3fc00000")), 1.5, "single 1.5")
    eq(cbor.loads(unhex("fb3ff8000000000000")), 1.5, "double 1.5")


def test_half_subnormals_and_edges():
    cases = [
        (2.0**-24 * 3, "f90003"), (2.0**-15, "f90200"), (2.0**-14 * 1.5, "f90600"),
        (65536.0, "fa47800000"), (2.0**-25, "fa33000000"), (1.0 + 2.0**-10, "f93c01"),
        (1.0 + 2.0**-11, "fa3f801000"),
    ]  # fmt: skip
    _roundtrip(cases)


def test_simple():
    _roundtrip(SIMPLE)


def test_strings():
    _roundtrip(STRINGS)
    eq(cbor.dumps(bytearray(b"\x01")), unhex("4101"), "bytearray")


def test_containers():
    _roundtrip(CONTAINERS)
    eq(cbor.dumps((1, 2)), unhex("820102"), "tuple")


def test_tags():
    _roundtrip(TAGS)
