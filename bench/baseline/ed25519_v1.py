# MicroPython firmware code as it was before issue 18 (the bench's baseline only)
"""Ed25519 (RFC 8032): public key from a 32-byte seed, sign, verify.

Memory-lean by design: points are 4-tuples in extended twisted Edwards coordinates
(X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z; field elements are Python ints reduced
mod p. There are no precomputed tables: [k]B is a plain double-and-add over the 253
scalar bits, and verification computes [S]B - [k]A in one joint pass (Straus/Shamir)
with three precomputed points. Not constant-time (MicroPython big ints are not); the
node signs its own readings, so timing side channels are out of this design's scope.

The expanded form of the last seed used (its scalar, prefix and public key) is cached:
a node signs every record with the same key, so each signature costs one scalar
multiplication instead of two.
"""

from citysense.sha512_v1 import sha512

try:
    from micropython import const
except ImportError:  # CPython (cross-tests): const() is only a compiler hint

    def const(x):  # type: ignore[misc]
        return x


_P = const(2**255 - 19)
_L = const(2**252 + 27742317777372353535851937790883648493)
_D = const(37095705934669439343138083508754565189542113879843219016388785533085940283555)
_D2 = const(16295367250680780974490674513165176452449235426866156013048779062215315747161)
_SQRT_M1 = const(19681161376707505956807079304988542015446066515923890162744021073123829784752)
_BX = const(15112221349535400772501151409588531511454012693041857206046113283949847762202)
_BY = const(46316835694926478169428394003475163141307993866256225615783033603165251855960)
_BT = const(46827403850823179245072216630277197565144205554125654976674165829533817101731)
_Y_MASK = const((1 << 255) - 1)
_CLAMP = const((1 << 254) - 8)
_BIT254 = const(1 << 254)

_BASE = (_BX, _BY, 1, _BT)
_ZERO = (0, 1, 1, 0)

_cache = [None, 0, b"", b""]  # seed, scalar a, prefix, public key bytes


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * t2 % _P * _D2 % _P
    d = 2 * z1 * z2 % _P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    s = x1 + y1
    e = h - s * s % _P
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(k, p):
    """[k]p by double-and-add from the top bit."""
    q = _ZERO
    i = 256
    while i > 0 and not (k >> (i - 1)) & 1:
        i -= 1
    while i > 0:
        i -= 1
        q = _double(q)
        if (k >> i) & 1:
            q = _add(q, p)
    return q


def _mul2(s, k, a_neg):
    """[s]B + [k]a_neg in one pass over the bits of both scalars."""
    both = _add(_BASE, a_neg)
    q = _ZERO
    i = 256
    while i > 0 and not ((s | k) >> (i - 1)) & 1:
        i -= 1
    while i > 0:
        i -= 1
        q = _double(q)
        bs = (s >> i) & 1
        bk = (k >> i) & 1
        if bs and bk:
            q = _add(q, both)
        elif bs:
            q = _add(q, _BASE)
        elif bk:
            q = _add(q, a_neg)
    return q


def _encode(p):
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x = x * zi % _P
    y = y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(s):
    """The point encoded by 32 bytes `s`, or None if `s` is not a valid encoding."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= _Y_MASK
    if y >= _P:
        return None
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x % _P * x % _P
    if vxx != u:
        if vxx != (_P - u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if (x & 1) != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


_hasher = sha512()  # one SHA-512 object, made at import (boot), reset for every hash


def _hash_int(*parts):
    h = _hasher
    h.reset()
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def _expand(seed):
    if len(seed) != 32:
        raise ValueError("ed25519: the seed must be 32 bytes")
    cache = _cache
    seed = bytes(seed)
    if cache[0] != seed:
        h = sha512(seed).digest()
        a = (int.from_bytes(h[:32], "little") & _CLAMP) | _BIT254
        cache[0] = None  # never leave a half-updated entry behind
        cache[1] = a
        cache[2] = h[32:]
        cache[3] = _encode(_mul(a, _BASE))
        cache[0] = seed
    return cache[1], cache[2], cache[3]


def public_key(seed):
    """The 32-byte public key of the 32-byte secret `seed`."""
    return _expand(seed)[2]


def sign(seed, msg):
    """The 64-byte Ed25519 signature of `msg` under the 32-byte secret `seed`."""
    a, prefix, pub = _expand(seed)
    r = _hash_int(prefix, msg) % _L
    big_r = _encode(_mul(r, _BASE))
    k = _hash_int(big_r, pub, msg) % _L
    s = (r + k * a) % _L
    return big_r + s.to_bytes(32, "little")


def verify(pub, msg, sig):
    """True if `sig` is a valid signature of `msg` under public key `pub`; never raises
    for bad keys or signatures (wrong lengths, non-canonical S, off-curve points)."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    a = _decode(pub)
    if a is None or _decode(sig[:32]) is None:
        return False
    k = _hash_int(sig[:32], pub, msg) % _L
    a_neg = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    return _encode(_mul2(s, k, a_neg)) == bytes(sig[:32])
