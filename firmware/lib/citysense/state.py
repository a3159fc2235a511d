"""Small persistent counters: one file each, replaced atomically (temp file + rename).

Each file holds `value (u64 LE) || crc32(value) (u32 LE)`. A write goes to `name.tmp`
and is renamed over `name`: a power cut at any instant leaves the old or the new
value, never a torn one. Used for the seq reservation, the boot count, the last
accepted command id and the dropped-records counter (written rarely, never per record).
"""

import os
import struct

from citysense.crc32 import crc32

_DIR = "state"


def _path(name):
    return _DIR + "/" + name


def ensure_dir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass  # EEXIST


def load(name, default=None):
    """The stored value, or `default` if the file is missing or corrupt."""
    try:
        with open(_path(name), "rb") as f:
            raw = f.read(16)
    except OSError:
        return default
    if len(raw) != 12:
        return default
    value, crc = struct.unpack("<QI", raw)
    if crc != crc32(raw[:8]):
        return default
    return value


def store(name, value):
    ensure_dir(_DIR)
    raw = bytearray(12)
    struct.pack_into("<Q", raw, 0, value)
    struct.pack_into("<I", raw, 8, crc32(memoryview(raw)[:8]))
    tmp = _path(name) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.rename(tmp, _path(name))


class SeqStore:
    """Record seq numbers, strictly increasing across reboots and power cuts.

    The file holds the reservation limit L: every seq below L may have been used. On
    boot the node continues at L (skipping the rest of the last block); before it issues
    seq L it persists L + block. So flash is written once per `block` records, and a
    power cut at any instant can only cause a gap, never a reuse.

    `citysense-provision enroll` raises L to the Unix time in ms at enrollment (never
    lowers it): a node that replaces another under the same device id continues above
    every seq its predecessor can have used (docs/protocol.md, "seq"). So seqs are
    above 2**32 (big ints on the ESP32) from the first record.
    """

    def __init__(self, block=64, floor=0):
        self.block = block
        limit = load("seq", 0)
        # never below a seq seen in the record buffer (defence if the file was lost)
        self.next = max(limit, floor + 1, 1)
        self.limit = self.next
        self.highest = self.next - 1  # highest seq that may have been created

    def take(self):
        seq = self.next
        if seq >= self.limit:
            self.limit = seq + self.block
            store("seq", self.limit)
        self.next = seq + 1
        self.highest = seq
        return seq
