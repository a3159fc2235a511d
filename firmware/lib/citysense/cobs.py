"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999), without the delimiter.

A run of 254 non-zero bytes that ends the data is not followed by an empty block (the
usual convention, the same as the gateway's encoder), so both sides agree byte for byte.
"""


def max_encoded(n):
    """Largest COBS encoding of `n` bytes (no delimiter)."""
    return n + n // 254 + 1


def encode_into(data, dst, start=0):
    """Write COBS(data) into bytearray `dst` at `start`; returns the end index.

    `dst` needs `max_encoded(len(data))` bytes of room from `start`.
    """
    code_pos = start
    out = start + 1
    code = 1
    last = len(data) - 1
    i = 0
    for byte in data:
        if byte == 0:
            dst[code_pos] = code
            code_pos = out
            out += 1
            code = 1
        else:
            dst[out] = byte
            out += 1
            code += 1
            if code == 0xFF:
                dst[code_pos] = code
                if i == last:
                    return out
                code_pos = out
                out += 1
                code = 1
        i += 1
    dst[code_pos] = code
    return out


def encode(data):
    """COBS(data) as bytes; the result holds no 0x00 byte."""
    buf = bytearray(max_encoded(len(data)))
    end = encode_into(data, buf)
    return bytes(memoryview(buf)[:end])


def decode_into(buf, n):
    """Decode the COBS block buf[:n] in place (the output is never longer than the
    input); returns the decoded length. Raises ValueError if malformed."""
    i = 0
    out = 0
    while i < n:
        code = buf[i]
        if code == 0:
            raise ValueError("cobs: zero byte inside a frame")
        end = i + code
        if end > n:
            raise ValueError("cobs: block runs past the end of the frame")
        i += 1
        while i < end:
            byte = buf[i]
            if byte == 0:
                raise ValueError("cobs: zero byte inside a frame")
            buf[out] = byte
            out += 1
            i += 1
        if code != 0xFF and i < n:
            buf[out] = 0
            out += 1
    return out


def decode(data):
    """Decode one COBS block (without the 0x00 delimiter); ValueError if malformed."""
    buf = bytearray(data)
    n = decode_into(buf, len(buf))
    return bytes(memoryview(buf)[:n])
