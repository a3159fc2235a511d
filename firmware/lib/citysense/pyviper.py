"""Viper's machine-word pointers for CPython, so the firmware's viper code (sha512,
ed25519) also runs there as plain Python, for the cross-tests: `@micropython.viper`
does nothing and `ptr8/ptr16/ptr32(buf)` read unsigned words of `buf` and store the
low 8/16/32 bits of a value, as viper does. Never imported on MicroPython.
"""

import struct
import sys


def const(x):
    return x


class _Ptr:
    """A viper pointer as struct reads and writes (any byte order of the host)."""

    def __init__(self, buf, fmt, size):
        self._buf = buf
        self._fmt = fmt
        self._size = size
        self._mask = (1 << (8 * size)) - 1

    def __getitem__(self, i):
        return struct.unpack_from(self._fmt, self._buf, i * self._size)[0]

    def __setitem__(self, i, v):
        struct.pack_into(self._fmt, self._buf, i * self._size, v & self._mask)


class _Words:
    """The same over a memoryview cast to machine words: a read is the view's own (C),
    a store keeps the low bits. Used where the host is little-endian (as the ESP32 and
    the x64 and arm64 test hosts are) and the buffer a whole number of words; the
    firmware's cross-tests run several times faster on it than on struct."""

    __slots__ = ("_mv", "_mask")

    def __init__(self, mv, mask):
        self._mv = mv
        self._mask = mask

    def __getitem__(self, i):
        return self._mv[i]

    def __setitem__(self, i, v):
        self._mv[i] = v & self._mask


def _ptr(buf, code, fmt, size):
    if sys.byteorder == "little":
        try:
            return _Words(memoryview(buf).cast("B").cast(code), (1 << (8 * size)) - 1)
        except TypeError:  # a length that is not a whole number of words
            pass
    return _Ptr(buf, fmt, size)


def ptr8(buf):
    return buf if isinstance(buf, _Ptr | _Words) else _ptr(buf, "B", "<B", 1)


def ptr16(buf):
    return _ptr(buf, "H", "<H", 2)


def ptr32(buf):
    return _ptr(buf, "I", "<I", 4)


class micropython:  # noqa: N801 - stands in for the module of that name
    @staticmethod
    def viper(f):
        return f

    @staticmethod
    def native(f):
        return f
