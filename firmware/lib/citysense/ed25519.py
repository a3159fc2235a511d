"""Ed25519 (RFC 8032): public key from a 32-byte seed, sign, verify.

Field elements mod p = 2**255 - 19 are 20 limbs of 13 bits (radix 2**13, 260 bits) in
one preallocated buffer of 16-bit slots, `_FE`; the arithmetic is viper code
(`@micropython.viper`, machine words, no heap). A product of two limbs is below 2**27
and a column of 20 of them below 2**31, so every intermediate fits a signed 32-bit
machine word: the same code runs on the ESP32 (32-bit) and the unix port (64-bit).
2**260 = 608 (mod p) folds the top half of a product back. Limbs stay non-negative:
a subtraction adds 65 p, written with every limb in [2**14, 2**15) (`_C_BIAS`).

Points are 4 slots in extended twisted Edwards coordinates (X, Y, Z, T), x = X/Z,
y = Y/Z, x*y = T/Z; a point is named by the limb offset of its X (`_Q`, `_B`, ...).
[k]P is double-and-add over the scalar's bits, verification computes [S]B - [k]A in
one joint pass (Straus/Shamir) with B - A precomputed. Inversion and the square root
use the usual addition chains (254 squarings). Only scalars mod L, hashes and the
final bytes are Python objects: signing allocates a few hundred bytes.

Not constant-time (the joint pass and double-and-add branch on scalar bits); the node
signs its own readings, so timing side channels are out of this design's scope.
The expanded form of the last seed used (its scalar, prefix and public key) is cached:
a node signs every record with the same key, so each signature costs one scalar
multiplication instead of two.
"""

try:
    import micropython
    from micropython import const
except ImportError:  # CPython (the cross-tests): the viper code runs as plain Python
    from citysense.pyviper import const, micropython, ptr8, ptr16, ptr32  # type: ignore[assignment,no-redef]

from citysense.sha512 import sha512


_L = const(2**252 + 27742317777372353535851937790883648493)
_CLAMP = const((1 << 254) - 8)
_BIT254 = const(1 << 254)

# Limb offsets into _FE (20 limbs per field element; a point is 4 consecutive ones).
_Q = const(0)  # the accumulator point
_A = const(80)  # verify: -A
_S = const(160)  # verify: B - A
_T0 = const(240)  # temporaries of the point formulas and addition chains: 8 elements
_T1 = const(260)
_T2 = const(280)
_T3 = const(300)
_T4 = const(320)
_T5 = const(340)
_T6 = const(360)
_T7 = const(380)
_U = const(320)  # decode's u and v (in _T4 and _T5: decode uses neither) and x
_V = const(340)
_X = const(400)
_ONE = const(420)  # constants from _CONSTS, in this order
_D = const(440)
_D2 = const(460)
_SQRTM1 = const(480)
_BIAS = const(500)
_B = const(520)  # the base point: X, Y (Z = 1 and T follow)
_ZERO = const(600)
_W7 = const(620)  # sign: 7 p (3 p and 5 p go to _A and _S)
_SLOTS = const(35)

# one, d, 2d, sqrt(-1), the subtraction bias (65 p), base point x, y, x*y: 20
# little-endian 16-bit limbs each (generated with Python ints from RFC 8032's values)
_CONSTS = (
    # one
    b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    # d
    b"\xa3\x18\xcb\x1a\x84\x12\x9b\x16\x5e\x17\x55\x0c\x07\x05\xa8\x09\x0a\x10\x03\x00"
    b"\x26\x1a\xf3\x0e\x97\x07\xa0\x03\x33\x0e\xce\x1f\x6f\x0b\x71\x07\xdb\x00\xa4\x00"
    # d2
    b"\x59\x11\x97\x15\x09\x05\x37\x0d\xbd\x0e\xab\x18\x0e\x0a\x50\x13\x14\x00\x07\x00"
    b"\x4c\x14\xe7\x1d\x2e\x0f\x40\x07\x66\x1c\x9c\x1f\xdf\x16\xe2\x0e\xb6\x01\x48\x00"
    # sqrtm1
    b"\xb0\x00\x75\x10\xd2\x09\x36\x1c\x4e\x0c\x3c\x12\xbf\x14\xd5\x00\x18\x03\x7a\x19"
    b"\xe9\x15\xf7\x1b\x93\x09\x80\x06\xad\x0c\xe1\x1b\xc1\x0f\x02\x04\xc9\x00\x57\x00"
    # bias
    b"\x2d\x5b\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f"
    b"\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x5f\xfd\x40"
    # bx
    b"\x1a\x15\x2e\x19\x23\x18\x5a\x0c\x95\x0c\xd9\x13\x96\x14\x12\x0c\xc7\x0c\x49\x03"
    b"\x17\x17\xad\x1b\x1f\x03\x71\x12\x02\x1b\x7f\x0a\x6e\x0d\x9e\x16\x4d\x1a\x42\x00"
    # by
    b"\x58\x06\x33\x13\x99\x19\xcc\x0c\x66\x06\x33\x13\x99\x19\xcc\x0c\x66\x06\x33\x13"
    b"\x99\x19\xcc\x0c\x66\x06\x33\x13\x99\x19\xcc\x0c\x66\x06\x33\x13\x99\x19\xcc\x00"
    # bt
    b"\xa3\x1d\xbe\x0d\xe9\x0c\x15\x1d\xdd\x16\x7a\x09\x45\x1d\x0e\x10\x9f\x10\x07\x09"
    b"\xdf\x18\x57\x09\xe6\x08\x27\x15\x9b\x15\xcc\x0e\x8b\x17\x7e\x18\xd7\x01\xcf\x00"
)  # fmt: skip

_FE = bytearray(_SLOTS * 40)
_c = memoryview(_CONSTS)
_FE[_ONE * 2 : _B * 2 + 80] = _c[0:280]  # one, d, 2d, sqrt(-1), bias, B's X and Y
_FE[_B * 2 + 80 : _B * 2 + 120] = _c[0:40]  # B's Z = 1
_FE[_B * 2 + 120 : _B * 2 + 160] = _c[280:320]  # B's T = x*y
del _c, _CONSTS  # copied: the bytes object can go
_TMP = bytearray(160)  # 40 32-bit words: a product's low half, _pack's work
_OUT = bytearray(32)  # _pack's output, read by the Python side
_cache = [None, 0, b"", b""]  # seed, scalar a, prefix, public key bytes


# ---- field arithmetic (viper; arguments are limb offsets into _FE) ----------------


@micropython.viper
def _fmul(r: int, a: int, b: int):
    """r = a * b. r may be a or b."""
    f = ptr16(_FE)
    w = ptr32(_TMP)
    c = 0
    k = 0
    while k < 20:  # the low 20 columns, carried into 13-bit limbs
        s = c
        i = a
        j = b + k
        e = a + k
        while i <= e:
            s += f[i] * f[j]
            i += 1
            j -= 1
        w[k] = s & 0x1FFF
        c = s >> 13
        k += 1
    while k < 39:  # the high columns, folded back: 2**260 = 608 (mod p)
        s = c
        i = a + k - 19
        j = b + 19
        e = a + 20
        while i < e:
            s += f[i] * f[j]
            i += 1
            j -= 1
        w[k - 20] += (s & 0x1FFF) * 608
        c = s >> 13
        k += 1
    _fcarry(r, c)


@micropython.viper
def _fsq(r: int, a: int, n: int):
    """r = a ** (2 ** n), n >= 1. r may be a."""
    while n > 0:
        _fsq1(r, a)
        a = r
        n -= 1


@micropython.viper
def _fsq1(r: int, a: int):
    """r = a * a (each cross product once, doubled). r may be a."""
    f = ptr16(_FE)
    w = ptr32(_TMP)
    c = 0
    k = 0
    while k < 39:
        i = a if k < 20 else a + k - 19
        j = a + k - (i - a)
        s = 0
        while i < j:
            s += f[i] * f[j]
            i += 1
            j -= 1
        s += s
        if i == j:
            s += f[i] * f[i]
        s += c
        if k < 20:
            w[k] = s & 0x1FFF
        else:
            w[k - 20] += (s & 0x1FFF) * 608
        c = s >> 13
        k += 1
    _fcarry(r, c)


@micropython.viper
def _fcarry(r: int, c: int):
    """r = the 20 words of _TMP plus c * 2**260, carried into 13-bit limbs."""
    f = ptr16(_FE)
    w = ptr32(_TMP)
    w[19] += c * 608
    c = 0
    k = 0
    while k < 20:
        s = w[k] + c
        f[r + k] = s & 0x1FFF
        c = s >> 13
        k += 1
    s = f[r] + c * 608
    f[r] = s & 0x1FFF
    f[r + 1] += s >> 13


@micropython.viper
def _fadd(r: int, a: int, b: int):
    """r = a + b."""
    f = ptr16(_FE)
    c = 0
    k = 0
    while k < 20:
        s = f[a + k] + f[b + k] + c
        f[r + k] = s & 0x1FFF
        c = s >> 13
        k += 1
    s = f[r] + c * 608
    f[r] = s & 0x1FFF
    f[r + 1] += s >> 13


@micropython.viper
def _fsub(r: int, a: int, b: int):
    """r = a - b (+ 65 p, so that no limb goes negative)."""
    f = ptr16(_FE)
    c = 0
    k = 0
    while k < 20:
        s = f[a + k] + f[_BIAS + k] - f[b + k] + c
        f[r + k] = s & 0x1FFF
        c = s >> 13
        k += 1
    s = f[r] + c * 608
    f[r] = s & 0x1FFF
    f[r + 1] += s >> 13


@micropython.viper
def _fcopy(r: int, a: int, n: int):
    """n elements from a to r."""
    f = ptr16(_FE)
    k = 0
    n = n * 20
    while k < n:
        f[r + k] = f[a + k]
        k += 1


@micropython.viper
def _unpack(r: int, src_):
    """r = the 255-bit little-endian number in 32 bytes (bit 255 is ignored)."""
    src = ptr8(src_)
    f = ptr16(_FE)
    k = 0
    while k < 20:
        bit = k * 13
        p = bit >> 3
        v = src[p] | (src[p + 1] << 8)
        if p < 30:
            v |= src[p + 2] << 16
        f[r + k] = (v >> (bit & 7)) & 0x1FFF
        k += 1
    f[r + 19] &= 0xFF


@micropython.viper
def _pack(a: int, dst_):
    """dst = a reduced mod p, 32 little-endian bytes."""
    dst = ptr8(dst_)
    f = ptr16(_FE)
    w = ptr32(_TMP)
    c = 0
    k = 0
    while k < 20:
        s = f[a + k] + c
        w[k] = s & 0x1FFF
        c = s >> 13
        k += 1
    n = 0
    while n < 3:  # bits 255 and up, times 2**255 = 19 (mod p), folded back
        c = ((w[19] >> 8) + (c << 5)) * 19
        w[19] &= 0xFF
        k = 0
        while k < 20:
            s = w[k] + c
            w[k] = s & 0x1FFF
            c = s >> 13
            k += 1
        n += 1
    c = 19  # now below 2**255; subtract p if not below p: a + 19 reaches 2**255
    k = 0
    while k < 20:
        s = w[k] + c
        w[20 + k] = s & 0x1FFF
        c = s >> 13
        k += 1
    if w[39] >> 8:
        w[39] &= 0xFF
        k = 0
        while k < 20:
            w[k] = w[20 + k]
            k += 1
    acc = 0
    bits = 0
    p = 0
    k = 0
    while k < 20:  # 260 bits (the top 5 are 0): exactly 32 bytes come out
        acc |= w[k] << bits
        bits += 13
        while bits >= 8:
            dst[p] = acc & 0xFF
            acc = acc >> 8
            bits -= 8
            p += 1
        k += 1


@micropython.viper
def _eq32(x_, y_) -> int:
    """1 if the 32 bytes at x and y are equal."""
    x = ptr8(x_)
    y = ptr8(y_)
    k = 0
    d = 0
    while k < 32:
        d |= x[k] ^ y[k]
        k += 1
    return 1 if d == 0 else 0


# ---- points (viper; arguments are the limb offsets of X) --------------------------


@micropython.viper
def _pdbl(r: int, p: int, t: int):
    """r = 2 p (dbl-2008-hwcd). r may be p. T is computed only if `t` (a doubling
    does not read it, an addition does)."""
    _fsq1(_T0, p)  # A = X1^2
    _fsq1(_T1, p + 20)  # B = Y1^2
    _fsq1(_T2, p + 40)
    _fadd(_T2, _T2, _T2)  # C = 2 Z1^2
    _fadd(_T3, _T0, _T1)  # H = A + B
    _fadd(_T4, p, p + 20)
    _fsq1(_T4, _T4)
    _fsub(_T5, _T3, _T4)  # E = H - (X1 + Y1)^2
    _fsub(_T6, _T0, _T1)  # G = A - B
    _fadd(_T7, _T2, _T6)  # F = C + G
    _fmul(r, _T5, _T7)  # X3 = E F
    _fmul(r + 20, _T6, _T3)  # Y3 = G H
    _fmul(r + 40, _T7, _T6)  # Z3 = F G
    if t:
        _fmul(r + 60, _T5, _T3)  # T3 = E H


@micropython.viper
def _padd(r: int, p: int, q: int):
    """r = p + q (add-2008-hwcd-3, a = -1). r may be p or q."""
    _fsub(_T0, p + 20, p)
    _fsub(_T1, q + 20, q)
    _fmul(_T0, _T0, _T1)  # A = (Y1 - X1)(Y2 - X2)
    _fadd(_T1, p + 20, p)
    _fadd(_T2, q + 20, q)
    _fmul(_T1, _T1, _T2)  # B = (Y1 + X1)(Y2 + X2)
    _fmul(_T2, p + 60, q + 60)
    _fmul(_T2, _T2, _D2)  # C = T1 2d T2
    _fmul(_T3, p + 40, q + 40)
    _fadd(_T3, _T3, _T3)  # D = 2 Z1 Z2
    _fsub(_T4, _T1, _T0)  # E = B - A
    _fsub(_T5, _T3, _T2)  # F = D - C
    _fadd(_T6, _T3, _T2)  # G = D + C
    _fadd(_T7, _T1, _T0)  # H = B + A
    _fmul(r, _T4, _T5)  # X3 = E F
    _fmul(r + 20, _T6, _T7)  # Y3 = G H
    _fmul(r + 40, _T5, _T6)  # Z3 = F G
    _fmul(r + 60, _T4, _T7)  # T3 = E H


@micropython.viper
def _smul(k_, p: int):
    """_Q = [k] p for the 256-bit little-endian scalar k: a sliding window of 3 bits
    over odd multiples p, 3 p (in _A), 5 p (_S) and 7 p (_W7), one addition per 4
    bits on average instead of 2 (double-and-add). Uses _A and _S (verify's)."""
    k = ptr8(k_)
    _pdbl(_Q, p, 1)  # 2 p
    _padd(_A, _Q, p)
    _padd(_S, _A, _Q)
    _padd(_W7, _S, _Q)
    _fcopy(_Q, _ZERO, 1)  # the neutral point (0, 1, 1, 0)
    _fcopy(_Q + 20, _ONE, 1)
    _fcopy(_Q + 40, _ONE, 1)
    _fcopy(_Q + 60, _ZERO, 1)
    i = 255
    while i >= 0 and not (k[i >> 3] >> (i & 7)) & 1:
        i -= 1
    while i >= 0:
        if not (k[i >> 3] >> (i & 7)) & 1:
            _pdbl(_Q, _Q, 0)
            i -= 1
            continue
        j = i - 2 if i >= 2 else 0  # the window: bits i..j, j the lowest set bit
        while not (k[j >> 3] >> (j & 7)) & 1:
            j += 1
        u = 0
        while i >= j:
            u = (u << 1) | ((k[i >> 3] >> (i & 7)) & 1)
            _pdbl(_Q, _Q, 1 if i == j else 0)
            i -= 1
        if u == 1:
            _padd(_Q, _Q, p)
        elif u == 3:
            _padd(_Q, _Q, _A)
        elif u == 5:
            _padd(_Q, _Q, _S)
        else:
            _padd(_Q, _Q, _W7)


@micropython.viper
def _smul2(s_, k_):
    """_Q = [s] B + [k] _A, with _S = B + _A precomputed."""
    s = ptr8(s_)
    k = ptr8(k_)
    _fcopy(_Q, _ZERO, 1)  # the neutral point (0, 1, 1, 0)
    _fcopy(_Q + 20, _ONE, 1)
    _fcopy(_Q + 40, _ONE, 1)
    _fcopy(_Q + 60, _ZERO, 1)
    i = 255
    while i >= 0 and not ((s[i >> 3] | k[i >> 3]) >> (i & 7)) & 1:
        i -= 1
    while i >= 0:
        bs = (s[i >> 3] >> (i & 7)) & 1
        bk = (k[i >> 3] >> (i & 7)) & 1
        _pdbl(_Q, _Q, bs | bk)
        if bs and bk:
            _padd(_Q, _Q, _S)
        elif bs:
            _padd(_Q, _Q, _B)
        elif bk:
            _padd(_Q, _Q, _A)
        i -= 1


# ---- Python side: chains, encoding, the scheme --------------------------------------


@micropython.viper
def _chain250(z: int):
    """_T0 = z ** 11, _T1 = z ** (2 ** 250 - 1)."""
    _fsq1(_T0, z)  # 2
    _fsq(_T1, _T0, 2)  # 8
    _fmul(_T1, z, _T1)  # 9
    _fmul(_T0, _T0, _T1)  # 11
    _fsq1(_T2, _T0)  # 22
    _fmul(_T1, _T1, _T2)  # 2^5 - 1
    _fsq(_T2, _T1, 5)
    _fmul(_T1, _T2, _T1)  # 2^10 - 1
    _fsq(_T2, _T1, 10)
    _fmul(_T2, _T2, _T1)  # 2^20 - 1
    _fsq(_T3, _T2, 20)
    _fmul(_T2, _T3, _T2)  # 2^40 - 1
    _fsq(_T2, _T2, 10)
    _fmul(_T1, _T2, _T1)  # 2^50 - 1
    _fsq(_T2, _T1, 50)
    _fmul(_T2, _T2, _T1)  # 2^100 - 1
    _fsq(_T3, _T2, 100)
    _fmul(_T2, _T3, _T2)  # 2^200 - 1
    _fsq(_T2, _T2, 50)
    _fmul(_T1, _T2, _T1)  # 2^250 - 1


@micropython.viper
def _encode_into(p: int):
    """_OUT = the 32-byte encoding of point p: y, and the parity of x in bit 255."""
    out = ptr8(_OUT)
    _chain250(p + 40)
    _fsq(_T1, _T1, 5)
    _fmul(_T4, _T1, _T0)  # 1 / Z = Z ** (p - 2) = Z ** (2 ** 255 - 21)
    _fmul(_T5, p, _T4)
    _fmul(_T6, p + 20, _T4)
    _pack(_T5, _OUT)
    sign = out[0] & 1
    _pack(_T6, _OUT)
    out[31] |= sign << 7


@micropython.viper
def _is_zero(a: int) -> int:
    _pack(a, _OUT)
    o = ptr8(_OUT)
    d = 0
    k = 0
    while k < 32:
        d |= o[k]
        k += 1
    return 1 if d == 0 else 0


@micropython.viper
def _decode(s_, p: int) -> int:
    """Point p = the point 32 bytes s_ encode, and 1; 0 if they are not a valid encoding
    (y not below p, x not on the curve, or -0)."""
    s = ptr8(s_)
    o = ptr8(_OUT)
    sign = s[31] >> 7
    y = p + 20
    _unpack(y, s_)
    _pack(y, _OUT)
    o[31] |= sign << 7
    if not int(_eq32(_OUT, s_)):
        return 0  # y >= p
    _fsq1(_U, y)
    _fmul(_V, _U, _D)
    _fadd(_V, _V, _ONE)  # v = d y^2 + 1
    _fsub(_U, _U, _ONE)  # u = y^2 - 1
    _fsq1(_X, _V)
    _fmul(_X, _X, _V)  # v^3
    _fsq1(_T7, _X)
    _fmul(_T7, _T7, _V)
    _fmul(_T7, _T7, _U)  # u v^7
    _chain250(_T7)
    _fsq(_T1, _T1, 2)
    _fmul(_T7, _T1, _T7)  # (u v^7) ** ((p - 5) / 8) = ... ** (2 ** 252 - 3)
    _fmul(_T7, _T7, _X)
    _fmul(_X, _T7, _U)  # x = u v^3 (u v^7) ** ((p - 5) / 8)
    _fsq1(_T7, _X)
    _fmul(_T7, _T7, _V)  # v x^2
    _fsub(_T6, _T7, _U)
    if not int(_is_zero(_T6)):
        _fadd(_T6, _T7, _U)
        if not int(_is_zero(_T6)):
            return 0  # no square root: not on the curve
        _fmul(_X, _X, _SQRTM1)
    out = ptr8(_OUT)
    zero = int(_is_zero(_X))
    if sign and zero:
        return 0  # x = 0 with the sign bit set
    if (out[0] & 1) != sign:
        _fsub(_X, _ZERO, _X)
    _fcopy(p, _X, 1)
    _fcopy(p + 40, _ONE, 1)
    _fmul(p + 60, _X, y)
    return 1


_hasher = sha512()  # one SHA-512 object, made at import (boot), reset for every hash


def _hash_int(*parts):
    h = _hasher
    h.reset()
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def _base_mul(k):
    """The encoding of [k] B, k an int below 2 ** 256."""
    _smul(k.to_bytes(32, "little"), _B)
    _encode_into(_Q)
    return bytes(_OUT)


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
        cache[3] = _base_mul(a)
        cache[0] = seed
    return cache[1], cache[2], cache[3]


def public_key(seed):
    """The 32-byte public key of the 32-byte secret `seed`."""
    return _expand(seed)[2]


def sign(seed, msg):
    """The 64-byte Ed25519 signature of `msg` under the 32-byte secret `seed`."""
    a, prefix, pub = _expand(seed)
    r = _hash_int(prefix, msg) % _L
    big_r = _base_mul(r)
    k = _hash_int(big_r, pub, msg) % _L
    s = (r + k * a) % _L
    return big_r + s.to_bytes(32, "little")


def verify(pub, msg, sig):
    """True if `sig` is a valid signature of `msg` under public key `pub`; never raises
    for bad keys or signatures (wrong lengths, non-canonical S, off-curve points)."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    s = sig[32:]
    if int.from_bytes(s, "little") >= _L:
        return False
    big_r = sig[:32]
    if not _decode(pub, _A) or not _decode(big_r, _Q):  # 32 bytes each, checked above
        return False
    k = _hash_int(big_r, pub, msg) % _L
    _fsub(_A, _ZERO, _A)  # -A: negate X and T
    _fsub(_A + 60, _ZERO, _A + 60)
    _padd(_S, _B, _A)
    _smul2(s, k.to_bytes(32, "little"))
    _encode_into(_Q)
    return _eq32(_OUT, big_r) == 1
