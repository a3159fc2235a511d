"""MicroPython side of the cross-implementation tests (run by test_cross.py under the
real micropython binary). Reads one request per stdin line, writes one answer per line.

  records:  "seed_hex kid seq boot n time_base" -> the signed record, hex
  verify:   "pub_hex kid|- data_hex"            -> "ok kid_hex payload_hex" | "err reason"
  forge:    "pub_hex kid data_hex"              -> "flip i reason" for one bit flipped in
                                                   every byte, "cut n reason" for every
                                                   truncation; "accepted ..." if one passes
  frames:   "type body_hex"                     -> wire bytes, hex
  decode CHUNK: raw stream on stdin, read CHUNK bytes at a time
                                                -> "type body_hex" | "!reason" per frame
"""

import sys
from binascii import hexlify, unhexlify

from citysense.errors import FrameError, ProtocolError

# Each mode imports only the modules it needs: the heap is 64 KB on a 64-bit build.


def _hex(b):
    return hexlify(b).decode()


def _write_hex(data):
    """Hex of `data` to stdout in pieces: a 64 KB heap has no room for big strings."""
    for start in range(0, len(data), 64):
        sys.stdout.write(_hex(data[start : start + 64]))


def reading_value(i):
    """The i-th test reading: alternately a float a half holds exactly and an int."""
    return 20.0 + i * 0.25 if i % 2 == 0 else 1000 + i


def records(line):
    from citysense import cose, senml

    seed_hex, kid, seq, boot, n, time_base = line.split()
    pack = senml.Pack(base_name=kid + "/", base_time=1764047000)
    for i in range(int(n)):
        pack.add("temp" if i % 2 == 0 else "sys/heap_free", reading_value(i), time=i)
    payload = senml.record_payload(int(seq), int(boot), pack, int(time_base))
    _write_hex(cose.sign1(unhexlify(seed_hex), kid.encode(), payload))
    sys.stdout.write("\n")


def _check(pub, kid, data):
    from citysense import cose

    try:
        got_kid, payload = cose.verify1(pub, data, kid)
    except ProtocolError as exc:
        return "err " + exc.reason
    return f"ok {_hex(got_kid)} {_hex(payload)}"


def verify(line):
    pub_hex, kid, data_hex = line.split()
    print(_check(unhexlify(pub_hex), None if kid == "-" else kid.encode(), unhexlify(data_hex)))


def forge(line):
    pub_hex, kid, data_hex = line.split()
    pub = unhexlify(pub_hex)
    kid = kid.encode()
    data = unhexlify(data_hex)
    buf = bytearray(data)
    for i in range(len(data)):
        buf[i] ^= 1 << (i % 8)
        print(f"flip {i} {_check(pub, kid, bytes(buf))}")
        buf[i] ^= 1 << (i % 8)
    for n in range(len(data)):
        print(f"cut {n} {_check(pub, kid, data[:n])}")


def frames(line):
    from citysense import frame

    parts = line.split()
    ftype = parts[0]
    body_hex = parts[1] if len(parts) > 1 else ""
    _write_hex(frame.encode(int(ftype), unhexlify(body_hex)))
    sys.stdout.write("\n")


def decode(chunk):
    """Feed raw stdin to a Decoder in reads of `chunk` bytes, as from a UART."""
    from citysense import frame

    dec = frame.Decoder()
    while True:
        data = sys.stdin.buffer.read(chunk)
        if not data:
            break
        dec.feed(data)
        while True:
            try:
                item = dec.next_frame()
            except FrameError as exc:
                print("!" + exc.reason)
                continue
            if item is None:
                break
            _print_frame(item)
    print("end")


def _print_frame(item):
    """`type body_hex`, written in pieces: a 64 KB heap has no room for big strings."""
    ftype, body = item
    sys.stdout.write(f"{ftype} ")
    _write_hex(body)
    sys.stdout.write("\n")


MODES = {"records": records, "verify": verify, "forge": forge, "frames": frames}


def main():
    if sys.argv[1] == "decode":
        decode(int(sys.argv[2]))
        return
    handler = MODES[sys.argv[1]]
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line:
            handler(line)


main()
