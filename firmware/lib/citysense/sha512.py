"""SHA-512 (FIPS 180-4) for MicroPython: the ESP32's hashlib has none.

The compression function is viper code (`@micropython.viper`: machine words, no heap):
each 64-bit word is a pair of 32-bit halves (high, low) in a little-endian `ptr32`
buffer, additions carry through 16-bit pieces, and every right shift is masked, so the
same code gives the same words on the ESP32 (32-bit machine words) and on the unix port
(64-bit; results are masked to 32 bits). Constants above 2**30 do not fit a small int
on a 32-bit port, so the 32-bit masks are made at run time. A hash allocates nothing
per block; `digest()` allocates its 64-byte result.

The round constants and initial state are bytes tables of (high, low) 32-bit words in
little-endian order (the ESP32's and x86-64's byte order), read by viper as `ptr32`.
"""

try:
    import micropython
    from micropython import const
except ImportError:  # CPython (the cross-tests): the viper code runs as plain Python
    from citysense.pyviper import const, micropython, ptr8, ptr32  # type: ignore[assignment,no-redef]


_BLOCK = const(128)

_H0 = (
    b"\x67\xe6\x09\x6a\x08\xc9\xbc\xf3\x85\xae\x67\xbb\x3b\xa7\xca\x84"
    b"\x72\xf3\x6e\x3c\x2b\xf8\x94\xfe\x3a\xf5\x4f\xa5\xf1\x36\x1d\x5f"
    b"\x7f\x52\x0e\x51\xd1\x82\xe6\xad\x8c\x68\x05\x9b\x1f\x6c\x3e\x2b"
    b"\xab\xd9\x83\x1f\x6b\xbd\x41\xfb\x19\xcd\xe0\x5b\x79\x21\x7e\x13"
)  # fmt: skip

# The 80 round constants, (high, low) 32-bit words, little-endian: 640 bytes.
_KW = (
    b"\x98\x2f\x8a\x42\x22\xae\x28\xd7\x91\x44\x37\x71\xcd\x65\xef\x23"
    b"\xcf\xfb\xc0\xb5\x2f\x3b\x4d\xec\xa5\xdb\xb5\xe9\xbc\xdb\x89\x81"
    b"\x5b\xc2\x56\x39\x38\xb5\x48\xf3\xf1\x11\xf1\x59\x19\xd0\x05\xb6"
    b"\xa4\x82\x3f\x92\x9b\x4f\x19\xaf\xd5\x5e\x1c\xab\x18\x81\x6d\xda"
    b"\x98\xaa\x07\xd8\x42\x02\x03\xa3\x01\x5b\x83\x12\xbe\x6f\x70\x45"
    b"\xbe\x85\x31\x24\x8c\xb2\xe4\x4e\xc3\x7d\x0c\x55\xe2\xb4\xff\xd5"
    b"\x74\x5d\xbe\x72\x6f\x89\x7b\xf2\xfe\xb1\xde\x80\xb1\x96\x16\x3b"
    b"\xa7\x06\xdc\x9b\x35\x12\xc7\x25\x74\xf1\x9b\xc1\x94\x26\x69\xcf"
    b"\xc1\x69\x9b\xe4\xd2\x4a\xf1\x9e\x86\x47\xbe\xef\xe3\x25\x4f\x38"
    b"\xc6\x9d\xc1\x0f\xb5\xd5\x8c\x8b\xcc\xa1\x0c\x24\x65\x9c\xac\x77"
    b"\x6f\x2c\xe9\x2d\x75\x02\x2b\x59\xaa\x84\x74\x4a\x83\xe4\xa6\x6e"
    b"\xdc\xa9\xb0\x5c\xd4\xfb\x41\xbd\xda\x88\xf9\x76\xb5\x53\x11\x83"
    b"\x52\x51\x3e\x98\xab\xdf\x66\xee\x6d\xc6\x31\xa8\x10\x32\xb4\x2d"
    b"\xc8\x27\x03\xb0\x3f\x21\xfb\x98\xc7\x7f\x59\xbf\xe4\x0e\xef\xbe"
    b"\xf3\x0b\xe0\xc6\xc2\x8f\xa8\x3d\x47\x91\xa7\xd5\x25\xa7\x0a\x93"
    b"\x51\x63\xca\x06\x6f\x82\x03\xe0\x67\x29\x29\x14\x70\x6e\x0e\x0a"
    b"\x85\x0a\xb7\x27\xfc\x2f\xd2\x46\x38\x21\x1b\x2e\x26\xc9\x26\x5c"
    b"\xfc\x6d\x2c\x4d\xed\x2a\xc4\x5a\x13\x0d\x38\x53\xdf\xb3\x95\x9d"
    b"\x54\x73\x0a\x65\xde\x63\xaf\x8b\xbb\x0a\x6a\x76\xa8\xb2\x77\x3c"
    b"\x2e\xc9\xc2\x81\xe6\xae\xed\x47\x85\x2c\x72\x92\x3b\x35\x82\x14"
    b"\xa1\xe8\xbf\xa2\x64\x03\xf1\x4c\x4b\x66\x1a\xa8\x01\x30\x42\xbc"
    b"\x70\x8b\x4b\xc2\x91\x97\xf8\xd0\xa3\x51\x6c\xc7\x30\xbe\x54\x06"
    b"\x19\xe8\x92\xd1\x18\x52\xef\xd6\x24\x06\x99\xd6\x10\xa9\x65\x55"
    b"\x85\x35\x0e\xf4\x2a\x20\x71\x57\x70\xa0\x6a\x10\xb8\xd1\xbb\x32"
    b"\x16\xc1\xa4\x19\xc8\xd0\xd2\xb8\x08\x6c\x37\x1e\x53\xab\x41\x51"
    b"\x4c\x77\x48\x27\x99\xeb\x8e\xdf\xb5\xbc\xb0\x34\xa8\x48\x9b\xe1"
    b"\xb3\x0c\x1c\x39\x63\x5a\xc9\xc5\x4a\xaa\xd8\x4e\xcb\x8a\x41\xe3"
    b"\x4f\xca\x9c\x5b\x73\xe3\x63\x77\xf3\x6f\x2e\x68\xa3\xb8\xb2\xd6"
    b"\xee\x82\x8f\x74\xfc\xb2\xef\x5d\x6f\x63\xa5\x78\x60\x2f\x17\x43"
    b"\x14\x78\xc8\x84\x72\xab\xf0\xa1\x08\x02\xc7\x8c\xec\x39\x64\x1a"
    b"\xfa\xff\xbe\x90\x28\x1e\x63\x23\xeb\x6c\x50\xa4\xe9\xbd\x82\xde"
    b"\xf7\xa3\xf9\xbe\x15\x79\xc6\xb2\xf2\x78\x71\xc6\x2b\x53\x72\xe3"
    b"\xce\x3e\x27\xca\x9c\x61\x26\xea\xc7\xb8\x86\xd1\x07\xc2\xc0\x21"
    b"\xd6\x7d\xda\xea\x1e\xeb\xe0\xcd\x7f\x4f\x7d\xf5\x78\xd1\x6e\xee"
    b"\xaa\x67\xf0\x06\xba\x6f\x17\x72\xc5\x7d\x63\x0a\xa6\x98\xc8\xa2"
    b"\x04\x98\x3f\x11\xae\x0d\xf9\xbe\x35\x0b\x71\x1b\x1b\x47\x1c\x13"
    b"\xf5\x77\xdb\x28\x84\x7d\x04\x23\x7b\xab\xca\x32\x93\x24\xc7\x40"
    b"\x0a\xbe\x9e\x3c\xbc\xbe\xc9\x15\xc4\x67\x1d\x43\x4c\x0d\x10\x9c"
    b"\xbe\xd4\xc5\x4c\xb6\x42\x3e\xcb\x9c\x29\x7f\x59\x2a\x7e\x65\xfc"
    b"\xab\x6f\xcb\x5f\xec\xfa\xd6\x3a\x8c\x19\x44\x6c\x17\x58\x47\x4a"
)  # fmt: skip

_W = bytearray(128)  # the 16-word rolling message schedule, shared (one hash at a time)
_TAIL = bytearray(_BLOCK + 64)  # digest(): the last block(s) and a state copy, shared


@micropython.viper
def _compress(st_, blk_, off: int):
    """One 128-byte block of `blk` at `off` into the state `st` (16 32-bit words)."""
    st = ptr32(st_)
    blk = ptr8(blk_)
    w = ptr32(_W)
    kt = ptr32(_KW)
    one = 1
    m31 = (one << 31) - one
    m = m31 | (one << 31)  # 0xFFFFFFFF on 32- and 64-bit machines alike
    i = 0
    while i < 32:
        p = off + (i << 2)
        w[i] = (blk[p] << 24) | (blk[p + 1] << 16) | (blk[p + 2] << 8) | blk[p + 3]
        i += 1
    aH = st[0]
    aL = st[1]
    bH = st[2]
    bL = st[3]
    cH = st[4]
    cL = st[5]
    dH = st[6]
    dL = st[7]
    eH = st[8]
    eL = st[9]
    fH = st[10]
    fL = st[11]
    gH = st[12]
    gL = st[13]
    hH = st[14]
    hL = st[15]
    i = 0
    while i < 80:
        j = (i & 15) << 1
        if i >= 16:
            x = ((i - 15) & 15) << 1
            xH = w[x]
            xL = w[x + 1]
            # sigma0 = rotr 1 ^ rotr 8 ^ shr 7
            s0H = (
                (((xH >> 1) & m31) | (xL << 31))
                ^ (((xH >> 8) & 0xFFFFFF) | (xL << 24))
                ^ ((xH >> 7) & 0x1FFFFFF)
            )
            s0L = (
                (((xL >> 1) & m31) | (xH << 31))
                ^ (((xL >> 8) & 0xFFFFFF) | (xH << 24))
                ^ (((xL >> 7) & 0x1FFFFFF) | (xH << 25))
            )
            x = ((i - 2) & 15) << 1
            xH = w[x]
            xL = w[x + 1]
            # sigma1 = rotr 19 ^ rotr 61 ^ shr 6
            s1H = (
                (((xH >> 19) & 0x1FFF) | (xL << 13))
                ^ (((xL >> 29) & 7) | (xH << 3))
                ^ ((xH >> 6) & 0x3FFFFFF)
            )
            s1L = (
                (((xL >> 19) & 0x1FFF) | (xH << 13))
                ^ (((xH >> 29) & 7) | (xL << 3))
                ^ (((xL >> 6) & 0x3FFFFFF) | (xH << 26))
            )
            x = ((i - 7) & 15) << 1
            yL = w[x + 1]
            zL = w[j + 1]
            lo = (s0L & 0xFFFF) + (s1L & 0xFFFF) + (yL & 0xFFFF) + (zL & 0xFFFF)
            hi = (
                ((s0L >> 16) & 0xFFFF)
                + ((s1L >> 16) & 0xFFFF)
                + ((yL >> 16) & 0xFFFF)
                + ((zL >> 16) & 0xFFFF)
                + (lo >> 16)
            )
            w[j + 1] = (hi << 16) | (lo & 0xFFFF)
            w[j] = s0H + s1H + w[x] + w[j] + (hi >> 16)
        # t1 = h + Sigma1(e) + Ch(e, f, g) + K[i] + W[i]; Sigma1 = rotr 14 ^ 18 ^ 41
        sH = (
            (((eH >> 14) & 0x3FFFF) | (eL << 18))
            ^ (((eH >> 18) & 0x3FFF) | (eL << 14))
            ^ (((eL >> 9) & 0x7FFFFF) | (eH << 23))
        )
        sL = (
            (((eL >> 14) & 0x3FFFF) | (eH << 18))
            ^ (((eL >> 18) & 0x3FFF) | (eH << 14))
            ^ (((eH >> 9) & 0x7FFFFF) | (eL << 23))
        )
        yH = gH ^ (eH & (fH ^ gH))
        yL = gL ^ (eL & (fL ^ gL))
        kH = kt[i << 1]
        kL = kt[(i << 1) + 1]
        zH = w[j]
        zL = w[j + 1]
        lo = (hL & 0xFFFF) + (sL & 0xFFFF) + (yL & 0xFFFF) + (kL & 0xFFFF) + (zL & 0xFFFF)
        hi = (
            ((hL >> 16) & 0xFFFF)
            + ((sL >> 16) & 0xFFFF)
            + ((yL >> 16) & 0xFFFF)
            + ((kL >> 16) & 0xFFFF)
            + ((zL >> 16) & 0xFFFF)
            + (lo >> 16)
        )
        t1L = ((hi << 16) | (lo & 0xFFFF)) & m
        t1H = (hH + sH + yH + kH + zH + (hi >> 16)) & m
        # t2 = Sigma0(a) + Maj(a, b, c); Sigma0 = rotr 28 ^ 34 ^ 39
        sH = (
            (((aH >> 28) & 0xF) | (aL << 4))
            ^ (((aL >> 2) & 0x3FFFFFFF) | (aH << 30))
            ^ (((aL >> 7) & 0x1FFFFFF) | (aH << 25))
        )
        sL = (
            (((aL >> 28) & 0xF) | (aH << 4))
            ^ (((aH >> 2) & 0x3FFFFFFF) | (aL << 30))
            ^ (((aH >> 7) & 0x1FFFFFF) | (aL << 25))
        )
        yH = (aH & bH) | (cH & (aH | bH))
        yL = (aL & bL) | (cL & (aL | bL))
        lo = (sL & 0xFFFF) + (yL & 0xFFFF)
        hi = ((sL >> 16) & 0xFFFF) + ((yL >> 16) & 0xFFFF) + (lo >> 16)
        t2L = ((hi << 16) | (lo & 0xFFFF)) & m
        t2H = (sH + yH + (hi >> 16)) & m
        hH = gH
        hL = gL
        gH = fH
        gL = fL
        fH = eH
        fL = eL
        lo = (dL & 0xFFFF) + (t1L & 0xFFFF)
        hi = ((dL >> 16) & 0xFFFF) + ((t1L >> 16) & 0xFFFF) + (lo >> 16)
        eL = ((hi << 16) | (lo & 0xFFFF)) & m
        eH = (dH + t1H + (hi >> 16)) & m
        dH = cH
        dL = cL
        cH = bH
        cL = bL
        bH = aH
        bL = aL
        lo = (t1L & 0xFFFF) + (t2L & 0xFFFF)
        hi = ((t1L >> 16) & 0xFFFF) + ((t2L >> 16) & 0xFFFF) + (lo >> 16)
        aL = ((hi << 16) | (lo & 0xFFFF)) & m
        aH = (t1H + t2H + (hi >> 16)) & m
        i += 1
    # the state += a..h, word by word
    xL = st[1]
    lo = (xL & 0xFFFF) + (aL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((aL >> 16) & 0xFFFF) + (lo >> 16)
    st[1] = (hi << 16) | (lo & 0xFFFF)
    st[0] = st[0] + aH + (hi >> 16)
    xL = st[3]
    lo = (xL & 0xFFFF) + (bL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((bL >> 16) & 0xFFFF) + (lo >> 16)
    st[3] = (hi << 16) | (lo & 0xFFFF)
    st[2] = st[2] + bH + (hi >> 16)
    xL = st[5]
    lo = (xL & 0xFFFF) + (cL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((cL >> 16) & 0xFFFF) + (lo >> 16)
    st[5] = (hi << 16) | (lo & 0xFFFF)
    st[4] = st[4] + cH + (hi >> 16)
    xL = st[7]
    lo = (xL & 0xFFFF) + (dL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((dL >> 16) & 0xFFFF) + (lo >> 16)
    st[7] = (hi << 16) | (lo & 0xFFFF)
    st[6] = st[6] + dH + (hi >> 16)
    xL = st[9]
    lo = (xL & 0xFFFF) + (eL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((eL >> 16) & 0xFFFF) + (lo >> 16)
    st[9] = (hi << 16) | (lo & 0xFFFF)
    st[8] = st[8] + eH + (hi >> 16)
    xL = st[11]
    lo = (xL & 0xFFFF) + (fL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((fL >> 16) & 0xFFFF) + (lo >> 16)
    st[11] = (hi << 16) | (lo & 0xFFFF)
    st[10] = st[10] + fH + (hi >> 16)
    xL = st[13]
    lo = (xL & 0xFFFF) + (gL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((gL >> 16) & 0xFFFF) + (lo >> 16)
    st[13] = (hi << 16) | (lo & 0xFFFF)
    st[12] = st[12] + gH + (hi >> 16)
    xL = st[15]
    lo = (xL & 0xFFFF) + (hL & 0xFFFF)
    hi = ((xL >> 16) & 0xFFFF) + ((hL >> 16) & 0xFFFF) + (lo >> 16)
    st[15] = (hi << 16) | (lo & 0xFFFF)
    st[14] = st[14] + hH + (hi >> 16)


@micropython.viper
def _put_be(st_, out_):
    """The 16 state words into 64 big-endian bytes."""
    st = ptr32(st_)
    out = ptr8(out_)
    i = 0
    while i < 16:
        x = st[i]
        p = i << 2
        out[p] = x >> 24
        out[p + 1] = x >> 16
        out[p + 2] = x >> 8
        out[p + 3] = x
        i += 1


class sha512:
    """hashlib-style SHA-512: `sha512(data).digest()`; `update()` may be called often."""

    digest_size = 64
    block_size = 128

    def __init__(self, data=b""):
        self._state = bytearray(_H0)
        self._buf = bytearray(_BLOCK)
        self._fill = 0
        self._length = 0
        if data:
            self.update(data)

    def reset(self):
        """Back to the empty message, reusing the buffers (a hasher kept for many
        messages allocates nothing per message but its digests)."""
        self._state[:] = _H0
        self._fill = 0
        self._length = 0

    def update(self, data):
        n = len(data)
        self._length += n
        pos = 0
        buf = self._buf
        fill = self._fill
        if fill:
            take = min(_BLOCK - fill, n)
            buf[fill : fill + take] = memoryview(data)[:take]
            fill += take
            pos = take
            if fill < _BLOCK:
                self._fill = fill
                return
            _compress(self._state, buf, 0)
            fill = 0
        while n - pos >= _BLOCK:
            _compress(self._state, data, pos)
            pos += _BLOCK
        if pos < n:
            buf[0 : n - pos] = memoryview(data)[pos:]
            fill = n - pos
        self._fill = fill

    def digest(self):
        """The 64-byte digest of everything fed so far; the object stays usable."""
        tail = _TAIL
        state = memoryview(tail)[_BLOCK:]
        state[:] = self._state
        fill = self._fill
        tail[:fill] = memoryview(self._buf)[:fill]
        tail[fill] = 0x80
        for i in range(fill + 1, _BLOCK):
            tail[i] = 0
        if fill >= _BLOCK - 16:
            _compress(state, tail, 0)
            for i in range(_BLOCK):
                tail[i] = 0
        bits = self._length << 3
        for i in range(8):  # the bit length, big-endian, in the last 8 bytes (< 2**64)
            tail[_BLOCK - 1 - i] = (bits >> (i << 3)) & 0xFF
        _compress(state, tail, 0)
        out = bytearray(64)
        _put_be(state, out)
        return bytes(out)

    def hexdigest(self):
        return "".join("%02x" % b for b in self.digest())
