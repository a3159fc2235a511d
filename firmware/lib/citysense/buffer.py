"""Power-loss-safe record buffer in flash: append-only segment files.

Layout: `data/<8 hex digits>.seg`, numbered upwards. Each entry is
`0xA6 | length u16 | seq u64 | crc32 u32 | payload`, little-endian, where the CRC
covers the first 11 header bytes and the payload. The seq is 64 bits wide because a
node's seqs start at its enrollment's floor (Unix ms, ~1.8e12 > 2**32). Entries of the
earlier format, `0xA5 | length u16 | seq u32 | crc32 u32 | payload` (CRC over 7 header
bytes), are still read, so a firmware update keeps what the buffer held; new entries
are always written in the 64-bit form. Entries are only ever appended; a segment is
deleted (whole) once an ACK covers all its entries (the active one too when that leaves
nothing pending: a drained buffer is an empty data/), or when the buffer is full and the
oldest segment must go (drop-oldest, counted).

Recovery (`open`) scans every segment: it keeps entries up to the first bad or short
one in a segment and ignores the rest of that segment (what a power cut mid-write
leaves), and appends after a recovery go to a fresh segment. So a power cut loses at
most the entry being written, and never an earlier one. Wear: no file is ever
rewritten; each append is one small write at the end of a file.

RAM: two lists of small ints per pending entry. Seqs are held relative to `_base` (the
seq of the oldest pending entry when the buffer was last empty): on the ESP32 an int
above 2**30 is a heap-allocated big int (~32 bytes), a small offset is not.
"""

import os
import struct

from citysense.crc32 import crc32

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x


SEQ_BITS = const(64)  # seq width in an entry; `citysense-provision enroll` checks it
_MAGIC = const(0xA6)  # entry with a u64 seq: what append() writes
_HDR = const(15)
_MAGIC32 = const(0xA5)  # entry with a u32 seq (firmware before the seq floor): read only
_HDR32 = const(11)
MAX_ENTRY = const(1100)


class Buffer:
    def __init__(self, root="data", seg_size=4096, max_segs=16):
        self.root = root
        self.seg_size = seg_size
        self.max_segs = max_segs
        self.segs = []  # segment numbers, oldest first
        self._base = 0  # pending entries: seq - _base ...
        self._seqs = []
        self._locs = []  # ... and (segment number << 16) | offset
        self._key = None  # index_of's last seq and its offset (the link asks every poll)
        self._rel = 0
        self._active = -1  # segment being appended to, -1: none open yet
        self._size = 0  # bytes in the active segment
        self.dropped = 0  # entries lost to drop-oldest since boot
        self._hdr = bytearray(_HDR)

    def _name(self, seg):
        return "%s/%08x.seg" % (self.root, seg)

    # ---- recovery ----
    def open(self):
        try:
            os.mkdir(self.root)
        except OSError:
            pass
        names = [n for n in os.listdir(self.root) if n.endswith(".seg") and len(n) == 12]
        names.sort()
        for n in names:
            seg = int(n[:8], 16)
            self.segs.append(seg)
            self._scan(seg)
        return len(self._seqs)

    def _scan(self, seg):
        hdr = self._hdr
        mv = memoryview(hdr)
        off = 0
        last = self.newest_seq() if self._seqs else -1
        with open(self._name(seg), "rb") as f:
            while True:
                if f.readinto(mv[:3]) != 3:
                    return
                if hdr[0] == _MAGIC:
                    hl = _HDR
                elif hdr[0] == _MAGIC32:
                    hl = _HDR32
                else:
                    return
                if f.readinto(mv[3:hl]) != hl - 3:
                    return
                n = hdr[1] | (hdr[2] << 8)
                if n > MAX_ENTRY:
                    return
                body = f.read(n)
                if len(body) != n:
                    return
                seq = struct.unpack_from("<Q" if hl == _HDR else "<I", hdr, 3)[0]
                want = struct.unpack_from("<I", hdr, hl - 4)[0]
                if crc32(body, crc32(mv[: hl - 4])) != want or seq <= last:
                    return
                self._push(seq, (seg << 16) | off)
                last = seq
                off += hl + n

    def _push(self, seq, loc):
        if not self._seqs:
            self._base = seq  # rebase while empty: offsets stay small
            self._key = None
        self._seqs.append(seq - self._base)
        self._locs.append(loc)

    # ---- append ----
    def append(self, seq, payload):
        """Append one entry (a signed record); may drop the oldest segment first."""
        n = len(payload)
        if n > MAX_ENTRY:
            raise ValueError("buffer: entry of %d bytes exceeds %d" % (n, MAX_ENTRY))
        if self._active < 0 or self._size + _HDR + n > self.seg_size:
            self._roll()
        hdr = self._hdr
        hdr[0] = _MAGIC
        struct.pack_into("<HQ", hdr, 1, n, seq)
        struct.pack_into("<I", hdr, 11, crc32(payload, crc32(memoryview(hdr)[:11])))
        with open(self._name(self._active), "ab") as f:
            f.write(hdr)
            f.write(payload)
        self._push(seq, (self._active << 16) | self._size)
        self._size += _HDR + n

    def _roll(self):
        seg = self.segs[-1] + 1 if self.segs else 0
        while len(self.segs) >= self.max_segs:
            self._drop_oldest()
        with open(self._name(seg), "wb"):
            pass
        self.segs.append(seg)
        self._active = seg
        self._size = 0

    def _drop_oldest(self):
        seg = self.segs.pop(0)
        k = 0
        while k < len(self._locs) and self._locs[k] >> 16 == seg:
            k += 1
        self.dropped += k
        del self._seqs[:k]
        del self._locs[:k]
        self._remove(seg)

    def _remove(self, seg):
        try:
            os.remove(self._name(seg))
        except OSError:
            pass

    # ---- read / ack ----
    def __len__(self):
        return len(self._seqs)

    def seq_at(self, i):
        return self._base + self._seqs[i]

    def newest_seq(self):
        return self._base + self._seqs[-1] if self._seqs else 0

    def index_of(self, seq):
        """Index of the first pending entry with seq >= `seq` (len(self) if none)."""
        seqs = self._seqs
        if not seqs:
            return 0
        if seq is not self._key:  # the link asks with the same int every poll: no alloc
            self._key = seq
            self._rel = seq - self._base
        rel = self._rel
        lo, hi = 0, len(seqs)
        while lo < hi:
            mid = (lo + hi) // 2
            if seqs[mid] < rel:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def read(self, i, out=None):
        """The payload of pending entry i: bytes, or read into `out` (a writable buffer
        with room for it, e.g. frame.Encoder.room) and its length returned."""
        loc = self._locs[i]
        off = loc & 0xFFFF
        with open(self._name(loc >> 16), "rb") as f:
            f.seek(off)
            head = f.read(3)
            f.seek(off + (_HDR if head[0] == _MAGIC else _HDR32))
            n = head[1] | (head[2] << 8)
            if out is None:
                return f.read(n)
            f.readinto(memoryview(out)[:n])
            return n

    def ack(self, seq):
        """Cumulative ACK: forget entries with seq <= `seq`; delete segments all acked.

        When nothing is left pending, every segment goes, the active one too (the next
        append starts a new one): a drained node's flash holds no record, so what
        enrollment finds in data/ is what the gateway has not acknowledged (at most the
        oldest segment's acknowledged entries besides)."""
        k = self.index_of(seq + 1)
        if not k:
            return 0
        del self._seqs[:k]
        del self._locs[:k]
        first = self._locs[0] >> 16 if self._locs else -1
        while self.segs and (first < 0 or self.segs[0] < first):
            self._remove(self.segs.pop(0))
        if first < 0:
            self._active = -1
            self._size = 0
        return k
