"""citysense.cbor: strict, bounded decoding and deterministic encoding."""

from citysense import cbor

from check import eq, raises, unhex


def test_deterministic_map_order():
    # keys sorted by their encoded bytes: uints, then nints, then text
    m = {"z": 0, -1: 0, 10: 0, 1: 0, -24: 0, 100: 0}
    eq(
        cbor.dumps(m),
        unhex("a6" + "0100" + "0a00" + "186400" + "2000" + "3700" + "617a00"),
        "order",
    )


def test_unsupported_appendix_a_items_rejected():
    # undefined, other simple values, indefinite lengths: ValueError
    for hexenc in (
        "f7", "f0", "f818", "f8ff",
        "5f42010243030405ff", "7f657374726561646d696e67ff", "9fff",
        "9f018202039f0405ffff", "bf61610161629f0203ffff",
    ):  # fmt: skip
        raises(ValueError, cbor.loads, unhex(hexenc))


def test_malformed_raise_value_error():
    bad = [
        "", "18", "19 01", "1a 0000", "1b 00000000000000", "1c", "1d", "1e", "3f",
        "41", "43 0102", "62 61", "62 ff fe", "81", "82 01", "a1 01", "a1 80 01",
        "a1 a0 01", "a1 f5 01", "a2 01 02 01 03", "c1", "d8", "f9 00", "fa 0000", "fb 00",
        "0000", "80 00", "fc", "fd", "fe", "ff", "9b ffffffffffffffff",
        "bb ffffffffffffffff", "5b ffffffffffffffff 00",
    ]  # fmt: skip
    for hexenc in bad:
        raises(ValueError, cbor.loads, unhex(hexenc))


def test_depth_limit():
    want = 0
    for _ in range(16):
        want = [want]
    eq(cbor.loads(b"\x81" * 16 + b"\x00", 16), want, "depth 16")
    raises(ValueError, cbor.loads, b"\x81" * 17 + b"\x00", 16)
    raises(ValueError, cbor.loads, b"\xc1" * 17 + b"\x00", 16)
    raises(ValueError, cbor.loads, b"\x81" * 1000 + b"\x00")
    eq(cbor.dumps(want), b"\x81" * 16 + b"\x00", "dumps depth 16")
    raises(ValueError, cbor.dumps, [want])


def test_item_limit():
    raises(ValueError, cbor.loads, unhex("83010203"), 16, 2)
    eq(cbor.loads(unhex("83010203"), 16, 3), [1, 2, 3], "at the limit")


def test_encode_errors():
    raises(ValueError, cbor.dumps, 18446744073709551616)
    raises(ValueError, cbor.dumps, -18446744073709551617)
    raises(TypeError, cbor.dumps, object())
