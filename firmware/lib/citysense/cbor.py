"""A small CBOR (RFC 8949) codec for MicroPython.

Types: unsigned and negative integers (up to 64 bits), byte strings, text strings,
arrays, maps, tags (as `Tag`), false, true, null and floats.

Encoding is deterministic: integers, lengths and tags in their shortest form; map keys
sorted by their encoded bytes (RFC 8949 section 4.2.1); floats as the shortest of
half/single precision that holds the value exactly, else double precision when the
platform float is a double (ESP32 MicroPython floats are single precision, so there
every float fits in a single).

Decoding is bounded and strict: one item, no trailing bytes, nesting at most
`max_depth`, at most `max_items` entries per array or map, lengths never beyond the
input; indefinite lengths, undefined and other simple values are refused. Anything
malformed raises ValueError and nothing else.
"""

import struct

from citysense.cbor_decode import decode as _decode

try:
    from micropython import const
except ImportError:  # CPython (cross-tests): const() is only a compiler hint

    def const(x):  # type: ignore[misc]
        return x


_UINT = const(0)
_NINT = const(1)
_BSTR = const(2)
_TSTR = const(3)
_ARRAY = const(4)
ARRAY = const(4)  # for encode_head() callers building arrays by hand
_MAP = const(5)
_TAG = const(6)
_U64 = const(0xFFFFFFFFFFFFFFFF)
_SINGLE_MAX = 3.4028234663852886e38

MAX_DEPTH = const(16)
MAX_ITEMS = const(1024)

# True where the platform float is an IEEE double (the unix port), False on the ESP32.
DOUBLE_FLOATS = (1.0 + 2.0**-40) != 1.0


class Tag:
    """A tagged item: `Tag(18, [...])` encodes as CBOR tag 18 around the value."""

    __slots__ = ("tag", "value")

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


# ---- encoding ---------------------------------------------------------------------


def encode_head(out, major, n):
    """Append the head of an item: major type and argument, in shortest form."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    elif n <= _U64:
        out.append(mt | 27)
        out.extend(struct.pack(">Q", n))
    else:
        raise ValueError("cbor: integer out of the 64-bit range")


def _half_bits(single):
    """The half-precision bits holding exactly the value of single-precision bits
    `single`, or -1 when a half cannot hold it."""
    sign = (single >> 16) & 0x8000
    exp = (single >> 23) & 0xFF
    mant = single & 0x7FFFFF
    if exp == 0xFF:
        return -1 if mant else sign | 0x7C00  # NaN is handled before; infinities fit
    if exp == 0:
        return sign if mant == 0 else -1  # zeros fit; single subnormals are too small
    e = exp - 127
    if -14 <= e <= 15:
        if mant & 0x1FFF:
            return -1
        return sign | ((e + 15) << 10) | (mant >> 13)
    if -24 <= e < -14:  # a half subnormal
        full = 0x800000 | mant
        shift = -e - 1
        if full & ((1 << shift) - 1):
            return -1
        return sign | (full >> shift)
    return -1


def _float(out, x):
    if x != x:
        out.extend(b"\xf9\x7e\x00")  # NaN, canonical quiet
        return
    if DOUBLE_FLOATS and x - x == 0 and abs(x) > _SINGLE_MAX:
        out.append(0xFB)
        out.extend(struct.pack(">d", x))
        return
    single = struct.pack(">f", x)
    if DOUBLE_FLOATS and struct.unpack(">f", single)[0] != x:
        out.append(0xFB)
        out.extend(struct.pack(">d", x))
        return
    half = _half_bits(struct.unpack(">I", single)[0])
    if half >= 0:
        out.append(0xF9)
        out.extend(struct.pack(">H", half))
    else:
        out.append(0xFA)
        out.extend(single)


def encode_into(out, obj, depth=0):
    """Append the CBOR encoding of `obj` to bytearray `out`."""
    if depth > MAX_DEPTH:
        raise ValueError("cbor: nesting deeper than %d" % MAX_DEPTH)
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            encode_head(out, _UINT, obj)
        else:
            encode_head(out, _NINT, -1 - obj)
    elif isinstance(obj, float):
        _float(out, obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        encode_head(out, _BSTR, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        encode_head(out, _TSTR, len(raw))
        out.extend(raw)
    elif isinstance(obj, (list, tuple)):
        encode_head(out, _ARRAY, len(obj))
        for item in obj:
            encode_into(out, item, depth + 1)
    elif isinstance(obj, dict):
        _map(out, obj, depth)
    elif isinstance(obj, Tag):
        encode_head(out, _TAG, obj.tag)
        encode_into(out, obj.value, depth + 1)
    else:
        raise TypeError("cbor: cannot encode %s" % type(obj).__name__)


def _map(out, obj, depth):
    pairs = []
    for key, value in obj.items():
        kb = bytearray()
        encode_into(kb, key, depth + 1)
        pairs.append((bytes(kb), value))
    pairs.sort(key=lambda pair: pair[0])
    encode_head(out, _MAP, len(pairs))
    for encoded_key, value in pairs:
        out.extend(encoded_key)
        encode_into(out, value, depth + 1)


def dumps(obj):
    """The deterministic CBOR encoding of `obj` as bytes."""
    out = bytearray()
    encode_into(out, obj)
    return bytes(out)


_SCRATCH = const(1152)  # a whole record (buffer.MAX_ENTRY) with room to spare
# allocated at import, i.e. at boot while the heap is still in one piece: made on first
# use, a contiguous 1152 bytes may no longer be found (a COMMAND answered before the
# first record failed that way in a 88 KiB heap)
_work = bytearray(_SCRATCH)


def scratch():
    """An empty bytearray with room for a whole record, the same one every call.

    Encoding into a fresh bytearray grows it a few bytes at a time, and every growth
    that cannot happen in place leaves a hole behind: on a 100 KB heap, signing one
    record that way fragments the heap more than the record is big. The hot path (the
    payload, the Sig_structure, the COSE_Sign1) encodes here instead and copies out the
    result; the caller must be done with the previous contents."""
    out = _work
    out[:] = b""  # length 0, the allocation kept
    return out


# ---- decoding (citysense.cbor_decode) -----------------------------------------------


def loads(data, max_depth=MAX_DEPTH, max_items=MAX_ITEMS):
    """Decode exactly one CBOR item from `data`; ValueError if malformed (MemoryError
    passes through: it is not the input's fault)."""
    return _decode(data, max_depth, max_items, Tag)
