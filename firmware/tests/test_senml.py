"""citysense.senml: exact pack and record payload bytes (RFC 8428 CBOR labels)."""

from citysense import cbor, senml

from check import eq, raises, true, unhex

PACK_HEX = (
    "84a6006474656d70016343656c02f94d600600217365737033322d6131623263336434653566362f22"
    "1a69253898a4006368756d01632552480218280600a30064646f6f7204f50605a200657374617465"
    "03626f6b"
)


def _pack():
    p = senml.Pack(base_name="esp32-a1b2c3d4e5f6/", base_time=1764047000)
    p.add("temp", 21.5, unit="Cel", time=0).add("hum", 40, unit="%RH", time=0)
    p.add("door", True, time=5).add("state", "ok")
    return p


def test_pack_exact_bytes():
    p = _pack()
    eq(len(p), 4, "len")
    eq(p.encode(), unhex(PACK_HEX), "pack")
    eq(
        p.records()[0],
        {-2: "esp32-a1b2c3d4e5f6/", -3: 1764047000, 0: "temp", 1: "Cel", 2: 21.5, 6: 0},
        "first record carries the base fields",
    )
    eq(p.records()[3], {0: "state", 3: "ok"}, "string value")


def test_record_payload_exact_bytes():
    want = unhex("a401182a020303" + PACK_HEX + "0400")
    eq(senml.record_payload(42, 3, _pack(), senml.TIME_UNIX), want, "payload")
    out = bytearray(b"in front")
    got = senml.record_payload(42, 3, _pack(), senml.TIME_UNIX, out)
    true(got is out, "given out: appended to it and returned")
    eq(bytes(out), b"in front" + want, "payload appended to out")
    got = cbor.loads(senml.record_payload(1, 0, [{0: "x", 2: 1}], senml.TIME_BOOT))
    eq(got, {1: 1, 2: 0, 3: [{0: "x", 2: 1}], 4: 1}, "list pack, boot time base")


def test_other_fields_and_clear():
    p = senml.Pack(base_unit="Cel")
    p.add("t1", 20, total=100, update_time=60)
    eq(p.records(), [{-4: "Cel", 0: "t1", 2: 20, 5: 100, 7: 60}], "bu, s, ut")
    p.clear(base_time=10)
    p.add("t2", -1.5)
    eq(p.records(), [{-4: "Cel", -3: 10, 0: "t2", 2: -1.5}], "after clear")


def test_limits_and_errors():
    p = senml.Pack()
    raises(ValueError, p.encode)
    raises(ValueError, p.add, "", 1)
    raises(ValueError, senml.record_payload, 1, 1, p)
    raises(ValueError, senml.record_payload, 1, 1, [{0: "x"}], 2)
    for i in range(senml.MAX_RECORDS):
        p.add("n", i)
    raises(ValueError, p.add, "n", 0)
    eq(p.encode()[:3], b"\x99\x01\x00", "a full pack: array of 256")
    q = senml.Pack(base_name="dev/")
    q.add("", 1)
    eq(q.records(), [{-2: "dev/", 2: 1}], "name from bn only")
