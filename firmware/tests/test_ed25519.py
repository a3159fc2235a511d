"""citysense.ed25519 against RFC 8032 section 7.1 (TEST 1, 2, 3, 1024) and forgeries."""

from check import eq, raises, true, unhex
from rfc8032 import VECTORS

from citysense import ed25519

_L = 2**252 + 27742317777372353535851937790883648493


def _vec(v):
    return [unhex(x) for x in v]


def test_rfc8032_public_keys():
    for name, v in VECTORS:
        seed, pub, _, _ = _vec(v)
        eq(ed25519.public_key(seed), pub, name)


def test_rfc8032_signatures():
    for name, v in VECTORS:
        seed, _, msg, sig = _vec(v)
        eq(ed25519.sign(seed, msg), sig, name)


def test_rfc8032_verify():
    for name, v in VECTORS:
        _, pub, msg, sig = _vec(v)
        true(ed25519.verify(pub, msg, sig), name)


def test_sign_with_alternating_keys():
    # the expanded-key cache must follow the seed
    (_, v1), (_, v2) = VECTORS[0], VECTORS[1]
    s1, _, m1, sig1 = _vec(v1)
    s2, _, m2, sig2 = _vec(v2)
    for _ in range(2):
        eq(ed25519.sign(s1, m1), sig1, "TEST 1 again")
        eq(ed25519.sign(s2, m2), sig2, "TEST 2 again")


def test_one_bit_flips_rejected():
    _, pub, msg, sig = _vec(VECTORS[2][1])
    for i in range(64):
        forged = bytearray(sig)
        forged[i] ^= 1 << (i % 8)
        true(not ed25519.verify(pub, msg, bytes(forged)), "sig byte %d" % i)
    for i in range(len(msg)):
        for bit in range(8):
            m = bytearray(msg)
            m[i] ^= 1 << bit
            true(not ed25519.verify(pub, bytes(m), sig), "msg bit %d.%d" % (i, bit))
    for i in range(0, 32, 3):
        p = bytearray(pub)
        p[i] ^= 0x10
        true(not ed25519.verify(bytes(p), msg, sig), "pub byte %d" % i)


def test_wrong_key_or_message_rejected():
    _, pub1, msg1, sig1 = _vec(VECTORS[0][1])
    _, pub2, msg2, _ = _vec(VECTORS[1][1])
    true(not ed25519.verify(pub2, msg1, sig1), "other key")
    true(not ed25519.verify(pub1, msg2, sig1), "other message")
    true(not ed25519.verify(pub1, msg1 + b"\x00", sig1), "longer message")


def test_malleable_s_rejected():
    # S + L verifies mathematically; RFC 8032 requires rejecting S >= L
    _, pub, msg, sig = _vec(VECTORS[0][1])
    s = int.from_bytes(sig[32:], "little") + _L
    true(not ed25519.verify(pub, msg, sig[:32] + s.to_bytes(32, "little")), "S + L")


def test_bad_lengths_and_encodings():
    _, pub, msg, sig = _vec(VECTORS[0][1])
    true(not ed25519.verify(pub[:31], msg, sig), "short key")
    true(not ed25519.verify(pub, msg, sig[:63]), "short sig")
    true(not ed25519.verify(pub, msg, sig + b"\x00"), "long sig")
    # y >= p is not a canonical encoding
    true(not ed25519.verify(b"\xff" * 31 + b"\x7f", msg, sig), "y >= p")
    # x = 0 with the sign bit set (y = 1 has x = 0)
    true(not ed25519.verify(b"\x01" + bytes(30) + b"\x80", msg, sig), "x=0, sign 1")
    # R not on the curve (y = 2 has no x)
    true(not ed25519.verify(pub, msg, b"\x02" + bytes(31) + sig[32:]), "bad R")
    raises(ValueError, ed25519.sign, bytes(31), b"")
    raises(ValueError, ed25519.public_key, bytes(33))
