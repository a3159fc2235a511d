"""CRC-32/ISO-HDLC (the CRC of zlib and binascii): binascii when present, else pure.

The pure fallback uses a 16-entry nibble table (64 bytes of constants) rather than the
usual 256-entry one: slower, but lean, and only builds without binascii.crc32 use it.
"""

try:
    from binascii import crc32 as _native

    _HAVE_NATIVE = True
except ImportError:  # a MicroPython build without binascii.crc32
    _HAVE_NATIVE = False

_NIBBLE = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
    0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
    0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)  # fmt: skip


def crc32_pure(data, crc=0):
    """Pure CRC-32 of `data`, continuing from `crc` (as binascii.crc32 does)."""
    table = _NIBBLE
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c ^= byte
        c = (c >> 4) ^ table[c & 0x0F]
        c = (c >> 4) ^ table[c & 0x0F]
    return c ^ 0xFFFFFFFF


def crc32(data, crc=0):
    """CRC-32 of `data` continuing from `crc`; an unsigned 32-bit int."""
    if _HAVE_NATIVE:
        return _native(data, crc) & 0xFFFFFFFF
    return crc32_pure(data, crc)
