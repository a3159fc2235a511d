"""The decoding half of citysense.cbor (import `citysense.cbor`, not this module).

Kept apart so that compiling either half from source on a small heap costs about half
the memory of compiling one big module. `decode(data, max_depth, max_items, tag_cls)` is
bounded and strict; see `citysense.cbor` for the rules.
"""

import struct

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
_MAP = const(5)
_SIMPLE = const(7)


def _half_to_float(h):
    sign = (h & 0x8000) << 16
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0x1F:
        bits = sign | 0x7F800000 | (mant << 13)
    elif exp:
        bits = sign | ((exp + 112) << 23) | (mant << 13)
    elif mant:
        top = 9
        while not (mant >> top) & 1:
            top -= 1
        bits = sign | ((top + 103) << 23) | (((mant ^ (1 << top)) << (23 - top)) & 0x7FFFFF)
    else:
        bits = sign
    return struct.unpack(">f", struct.pack(">I", bits))[0]


class _Reader:
    def __init__(self, data, max_depth, max_items, tag_cls):
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.tag_cls = tag_cls

    def _take(self, n):
        start = self.pos
        end = start + n
        if end > len(self.data):
            raise ValueError("cbor: truncated at byte %d" % start)
        self.pos = end
        return self.data[start:end]

    def _arg(self, info):
        if info < 24:
            return info
        if info == 24:
            return self._take(1)[0]
        if info == 25:
            return struct.unpack(">H", self._take(2))[0]
        if info == 26:
            return struct.unpack(">I", self._take(4))[0]
        if info == 27:
            return struct.unpack(">Q", self._take(8))[0]
        if info == 31:
            raise ValueError("cbor: indefinite lengths are not supported")
        raise ValueError("cbor: reserved additional information %d" % info)

    def _count(self, n, per_item):
        if n > self.max_items or n * per_item > len(self.data) - self.pos:
            raise ValueError("cbor: %d entries exceed the limit or the input" % n)
        return n

    def item(self, depth):
        if depth > self.max_depth:
            raise ValueError("cbor: nesting deeper than %d" % self.max_depth)
        ib = self._take(1)[0]
        major = ib >> 5
        info = ib & 0x1F
        if major == _SIMPLE:
            return self._simple(info)
        n = self._arg(info)
        if major == _UINT:
            return n
        if major == _NINT:
            return -1 - n
        if major == _BSTR:
            return bytes(self._take(n))
        if major == _TSTR:
            return str(bytes(self._take(n)), "utf-8")
        if major == _ARRAY:
            return [self.item(depth + 1) for _ in range(self._count(n, 1))]
        if major == _MAP:
            return self._map(self._count(n, 2), depth)
        return self.tag_cls(n, self.item(depth + 1))

    def _map(self, n, depth):
        out = {}
        for _ in range(n):
            key = self.item(depth + 1)
            if key is True or key is False or not isinstance(key, (int, str, bytes)):
                raise ValueError("cbor: unsupported map key type")
            if key in out:
                raise ValueError("cbor: duplicate map key")
            out[key] = self.item(depth + 1)
        return out

    def _simple(self, info):
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 25:
            return _half_to_float(struct.unpack(">H", self._take(2))[0])
        if info == 26:
            return struct.unpack(">f", self._take(4))[0]
        if info == 27:
            return struct.unpack(">d", self._take(8))[0]
        raise ValueError("cbor: unsupported simple value %d" % info)


def decode(data, max_depth, max_items, tag_cls):
    """Decode exactly one CBOR item from `data`; ValueError if malformed."""
    reader = _Reader(memoryview(data), max_depth, max_items, tag_cls)
    try:
        item = reader.item(0)
    except (ValueError, MemoryError):
        raise
    except Exception as exc:  # the one boundary for untrusted bytes: nothing else escapes
        raise ValueError("cbor: malformed input (%s)" % exc)
    if reader.pos != len(data):
        raise ValueError("cbor: %d trailing bytes after the item" % (len(data) - reader.pos))
    return item
