"""Viper's machine-word pointers for CPython, so the firmware's viper code (sha512,
ed25519) also runs there as plain Python, for the cross-tests: `@micropython.viper`
does nothing and `ptr8/ptr16/ptr32(buf)` read unsigned words of `buf` and store the
low 8/16/32 bits of a value, as viper does. Never imported on MicroPython.
"""

import struct


def const(x):
    return x


class _Ptr:
    def __init__(self, buf, fmt, size):
        self._buf = buf
        self._fmt = fmt
        self._size = size
        self._mask = (1 << (8 * size)) - 1

    def __getitem__(self, i):
        return struct.unpack_from(self._fmt, self._buf, i * self._size)[0]

    def __setitem__(self, i, v):
        struct.pack_into(self._fmt, self._buf, i * self._size, v & self._mask)


def ptr8(buf):
    return buf if isinstance(buf, _Ptr) else _Ptr(buf, "<B", 1)


def ptr16(buf):
    return _Ptr(buf, "<H", 2)


def ptr32(buf):
    return _Ptr(buf, "<I", 4)


class micropython:  # noqa: N801 - stands in for the module of that name
    @staticmethod
    def viper(f):
        return f
