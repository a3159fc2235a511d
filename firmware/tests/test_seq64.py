"""seq beyond 32 bits: a node enrolled with a seq floor (Unix ms, ~1.8e12) sends seqs
above 2**32 from its first record. The codec must carry them exactly: CBOR major type 0
with the 8-byte argument (0x1b), the signed record payload, and the ACK/NACK bodies the
node parses. On the ESP32 such ints are MicroPython big ints (small ints are 31-bit).
Signing such a record, verified by the gateway and pycose: tests/firmware/test_cross.py
(seqs 2**40 and 2**64 - 1)."""

from citysense import cbor, frame, senml

from check import eq, unhex

FLOOR = 1764047000123  # Unix ms at an enrollment (2025-11-25)

# (value, its deterministic CBOR): both sides of every width change, the ESP32's
# small-int limit (2**30), the floor, the gateway's store limit (2**63 - 1), 2**64 - 1
SEQS = [
    (2**30 - 1, "1a3fffffff"),
    (2**30, "1a40000000"),
    (2**31, "1a80000000"),
    (2**32 - 1, "1affffffff"),
    (2**32, "1b0000000100000000"),
    (FLOOR, "1b0000019ab965123b"),
    (FLOOR + 64, "1b0000019ab965127b"),
    (2**62 + 1, "1b4000000000000001"),
    (2**63 - 1, "1b7fffffffffffffff"),
    (2**64 - 1, "1bffffffffffffffff"),
]


def test_cbor_uint64_round_trip():
    for value, want in SEQS:
        got = cbor.dumps(value)
        eq(got, unhex(want), "encode %d" % value)
        eq(cbor.loads(got), value, "decode %d" % value)
        eq(cbor.loads(cbor.dumps({1: value}))[1], value, "in a map %d" % value)
    # a non-shortest encoding of a small seq is accepted too (receivers take any form)
    eq(cbor.loads(unhex("1b000000000000002a")), 42, "8-byte argument of 42")


def test_record_payload_with_seq_above_2_32():
    pack = senml.Pack(base_name="esp32-a1b2c3d4e5f6/", base_time=1764047000)
    pack.add("temp", 21.5, unit="Cel", time=0)
    payload = senml.record_payload(FLOOR, 3, pack, senml.TIME_UNIX)
    eq(payload[:11], unhex("a4011b0000019ab965123b"), "seq key and 8-byte argument")
    eq(cbor.loads(payload), {1: FLOOR, 2: 3, 3: pack.records(), 4: 0}, "payload decodes")
    for value, _ in SEQS:
        got = cbor.loads(senml.record_payload(value, 1, [{0: "x", 2: 1}], senml.TIME_BOOT))
        eq(got[1], value, "record seq %d" % value)


def test_ack_nack_bodies_with_seq_above_2_32():
    for value, want in SEQS:
        body = cbor.dumps({1: value})
        eq(body, unhex("a101" + want), "ACK body %d" % value)
        dec = frame.Decoder()
        dec.feed(frame.encode(frame.ACK, body))
        ftype, got = dec.next_frame()
        eq((ftype, cbor.loads(got)[1]), (frame.ACK, value), "ACK frame %d" % value)
        nack = cbor.loads(cbor.dumps({1: value, 2: "replay"}))
        eq((nack[1], nack[2]), (value, "replay"), "NACK body %d" % value)
