"""citysense.sha512 against FIPS 180-4 examples and block-boundary lengths."""

from check import eq, tohex

from citysense.sha512 import sha512

ABC = (
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
)
EMPTY = (
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
)
TWO_BLOCK = (
    "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
    "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"
)
MSG_896 = (
    "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
    "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
)


def test_fips_examples():
    eq(tohex(sha512(b"abc").digest()), ABC, "abc")
    eq(tohex(sha512().digest()), EMPTY, "empty")
    eq(tohex(sha512(MSG_896.encode()).digest()), TWO_BLOCK, "two blocks")


def test_incremental_equals_one_shot():
    data = bytes(i & 0xFF for i in range(700))
    whole = sha512(data).digest()
    for step in (1, 7, 111, 127, 128, 129, 300):
        h = sha512()
        for i in range(0, len(data), step):
            h.update(data[i : i + step])
        eq(h.digest(), whole, "step %d" % step)


def test_digest_is_repeatable_and_object_stays_usable():
    h = sha512(b"ab")
    first = h.digest()
    eq(h.digest(), first, "digest twice")
    h.update(b"c")
    eq(h.hexdigest(), ABC, "update after digest")
