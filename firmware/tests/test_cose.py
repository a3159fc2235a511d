"""citysense.cose: the exact COSE_Sign1 bytes, and every way verify1 must reject."""

from citysense import cbor, cose, ed25519
from citysense.cbor import Tag
from citysense.errors import CoseError

from check import eq, raises, unhex

SEED = unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUB = unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
OTHER_PUB = unhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
KID = b"esp32-test"
PAYLOAD = unhex("a4010702030381a300617402f94d6021626e2f0400")
# the same bytes the gateway's sign1 (cbor2 + cryptography) produces
SIGNED = unhex(
    "d28443a10127a1044a65737033322d7465737455a4010702030381a300617402f94d6021626e2f0400"
    "58407f332affe57b800badf6d84d1601b254d8407ae850c79d937542d04c48577107abe5859fb351"
    "78d36f35676d8518707f05e597faeedaa21afeeaa0a9e3bcfc01"
)


def _reason(data, pub=PUB, kid=None):
    return raises(CoseError, cose.verify1, pub, data, kid).reason


def _resign(protected, unprotected, payload=PAYLOAD, tag=18, extra=()):
    """A structurally altered message with a valid signature over its own protected."""
    sig = ed25519.sign(SEED, cose.sig_structure(protected, payload))
    return cbor.dumps(Tag(tag, [protected, unprotected, payload, sig] + list(extra)))


def test_sign1_exact_bytes():
    eq(cose.sign1(SEED, KID, PAYLOAD), SIGNED, "sign1")
    eq(
        cose.sig_structure(b"\xa1\x01\x27", b"\x01"),
        unhex("846a5369676e61747572653143a1012740" + "4101"),
        "Sig_structure",
    )


def _sign1_by_encoder(kid, payload):
    """The COSE_Sign1 as the CBOR encoder writes it (the structure, item by item)."""
    sig = ed25519.sign(SEED, cose.sig_structure(cose.PROTECTED, payload))
    return cbor.dumps(Tag(18, [cose.PROTECTED, {4: kid}, payload, sig]))


def test_sign_in_place_at_every_head_length():
    # payloads and kids at the edges of the 1-, 2- and 3-byte bstr heads: the record
    # built in place around the payload = the encoder's bytes
    buf = bytearray(1152)
    for k in (1, 23, 24, 64):
        for n in (0, 1, 23, 24, 255, 256, 940):
            kid = b"k" * k
            payload = bytes((i * 7) & 0xFF for i in range(n))
            cose.room(buf)
            eq(len(buf), cose.PAYLOAD_AT, "room")
            buf.extend(payload)
            got = cose.sign_in(SEED, kid, buf)
            eq(bytes(got), _sign1_by_encoder(kid, payload), "sign_in kid %d payload %d" % (k, n))
            eq(cose.verify1(PUB, bytes(got), kid), (kid, payload), "verifies")
            del got  # a view into buf (CPython refuses to resize an exported buffer)
    cose.room(buf)
    buf.extend(PAYLOAD)
    eq(bytes(cose.sign_in(SEED, KID, buf)), SIGNED, "sign_in = the gateway's bytes")


def test_verify1_roundtrip():
    eq(cose.verify1(PUB, SIGNED), (KID, PAYLOAD), "verify1")
    eq(cose.verify1(PUB, SIGNED, KID), (KID, PAYLOAD), "verify1 with kid")
    eq(cose.parse1(SIGNED)[1], KID, "parse1 kid")


def test_wrong_key_and_wrong_kid():
    eq(_reason(SIGNED, OTHER_PUB), "bad-signature", "other key")
    eq(_reason(SIGNED, PUB, b"esp32-other"), "kid", "unexpected kid")


def test_every_bit_position_sampled():
    # flip one bit in every byte (a different bit per byte): always rejected
    for i in range(len(SIGNED)):
        forged = bytearray(SIGNED)
        forged[i] ^= 1 << (i % 8)
        raises(CoseError, cose.verify1, PUB, bytes(forged), KID)


def test_truncated_and_extended():
    for n in range(len(SIGNED)):
        raises(CoseError, cose.verify1, PUB, SIGNED[:n])
    eq(_reason(SIGNED + b"\x00"), "malformed", "trailing byte")


def test_wrong_alg():
    eq(_reason(_resign(unhex("a10126"), {4: KID})), "alg", "ES256 (-7)")
    eq(_reason(_resign(unhex("a0"), {4: KID})), "alg", "no alg")
    eq(_reason(_resign(b"", {4: KID})), "alg", "empty protected")
    eq(_reason(_resign(unhex("a2012704410a"), {4: KID})), "alg", "extra protected")
    eq(_reason(_resign(unhex("a10127"), {1: -7, 4: KID})), "kid", "alg also unprotected")


def test_wrong_structure():
    eq(_reason(_resign(cose.PROTECTED, {4: KID}, tag=17)), "malformed", "tag 17")
    eq(_reason(SIGNED[1:]), "malformed", "untagged")
    eq(_reason(_resign(cose.PROTECTED, {4: KID}, extra=[b""])), "malformed", "5 items")
    eq(_reason(cbor.dumps(Tag(18, [cose.PROTECTED, {4: KID}, PAYLOAD]))), "malformed", "3 items")
    eq(_reason(_resign(cose.PROTECTED, {})), "kid", "no kid")
    eq(_reason(_resign(cose.PROTECTED, {4: "text-kid"})), "kid", "tstr kid")
    eq(_reason(_resign(cose.PROTECTED, {4: b""})), "kid", "empty kid")
    eq(_reason(_resign(cose.PROTECTED, [])), "malformed", "unprotected not a map")
    detached = cbor.dumps(Tag(18, [cose.PROTECTED, {4: KID}, None, bytes(64)]))
    eq(_reason(detached), "malformed", "detached payload")
    short_sig = cbor.dumps(Tag(18, [cose.PROTECTED, {4: KID}, PAYLOAD, bytes(63)]))
    eq(_reason(short_sig), "malformed", "63-byte signature")
    eq(_reason(b""), "malformed", "empty")
    eq(_reason(b"\xd2\x9f\xff"), "malformed", "indefinite array")


def test_sign1_rejects_bad_kid():
    raises(ValueError, cose.sign1, SEED, b"", PAYLOAD)
    raises(ValueError, cose.sign1, SEED, b"k" * 65, PAYLOAD)
    raises(ValueError, cose.sign_in, SEED, b"k" * 65, cose.room(bytearray()))
