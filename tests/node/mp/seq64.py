# Under micropython (96k heap), cwd = a fresh flash folder: the flash buffer, the seq
# store and the link core with seqs above 2**32 (a node enrolled with a seq floor, Unix
# ms), and above 2**62 where the 64-bit unix port has big ints like the ESP32 above 2**30.
# Prints one line per check; tests/node/test_seq64.py compares them exactly.
import gc
import os
import struct

from citysense import cbor, frame, state
from citysense.buffer import Buffer
from citysense.crc32 import crc32
from citysense.link import Link

FLOOR = 1764047000123
BIG = 2**62 + FLOOR  # a big int on the unix port too


def body(seq):
    return b"%d;" % seq * 3


def legacy_entry(seq, payload):
    """An entry as the firmware before the seq floor wrote it (u32 seq, 11-byte header)."""
    hdr = bytearray(11)
    hdr[0] = 0xA5
    struct.pack_into("<HI", hdr, 1, len(payload), seq)
    struct.pack_into("<I", hdr, 7, crc32(payload, crc32(hdr[:7])))
    return bytes(hdr) + payload


def seqs(b):
    return [b.seq_at(i) for i in range(len(b))]


def check_buffer():
    # a buffer left by the old firmware: recovered, then continued in the 64-bit format
    os.mkdir("data")
    with open("data/00000000.seg", "wb") as f:
        f.write(legacy_entry(5, body(5)) + legacy_entry(6, body(6)))
    b = Buffer(seg_size=256)
    print("LEGACY", b.open(), seqs(b))
    for s in (2**32 - 1, 2**32, FLOOR, FLOOR + 1, BIG, BIG + 64):
        b.append(s, body(s))
    r = Buffer(seg_size=256)
    n = r.open()
    ok = all(r.read(i) == body(r.seq_at(i)) for i in range(n))
    print("REOPEN", n, ok, seqs(r) == seqs(b), r.newest_seq() == BIG + 64)
    print("INDEX", r.index_of(FLOOR), r.index_of(FLOOR + 2), r.index_of(BIG + 65))
    print("ACK", r.ack(FLOOR), r.seq_at(0) == FLOOR + 1, len(r))
    # a torn 64-bit entry at the end (power cut mid-write): ignored, the rest is kept
    with open("data/%08x.seg" % r.segs[-1], "ab") as f:  # noqa: UP031
        f.write(b"\xa6\x09\x00" + struct.pack("<Q", BIG + 65)[:5])
    t = Buffer(seg_size=256)
    t.open()
    print("TORN", seqs(t)[-2:] == [BIG, BIG + 64], len(t))


def check_heap():
    # RAM per pending entry with big-int seqs, and what one link poll's lookup allocates
    b = Buffer(root="heap", seg_size=4096, max_segs=64)
    b.open()
    n = 200
    gc.collect()
    before = gc.mem_alloc()
    for i in range(n):
        b.append(BIG + 3 * i, b"r" * 24)
    gc.collect()
    per_entry = (gc.mem_alloc() - before) // n
    print("HEAP_PER_ENTRY", per_entry, per_entry <= 40)
    key = BIG + 3 * 150
    b.index_of(key)
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(100):
        b.index_of(key)
    print("POLL_ALLOC", gc.mem_alloc() - before)


def check_seq_store():
    state.store("seq", FLOOR)  # as enrollment leaves it
    ss = state.SeqStore(64)
    print("SEQ", ss.highest == FLOOR - 1, ss.take() == FLOOR, state.load("seq") == FLOOR + 64)
    again = state.SeqStore(64)  # a reboot: the rest of the block is skipped
    print("REBOOT", again.take() == FLOOR + 64, state.load("seq") == FLOOR + 128)


def check_link():
    os.mkdir("link")
    b = Buffer(root="link")
    b.open()
    for s in (FLOOR, FLOOR + 1, BIG):
        b.append(s, body(s))
    ln = Link(b, lambda: b"\xa0")
    dec = frame.Decoder()

    def sent(now):
        out = []
        while True:
            w = ln.poll(now)
            if w is None:
                return out
            dec.feed(bytes(w))
            t, payload = dec.next_frame()
            out.append((t, bytes(payload)))

    first = sent(0)
    print("SEND", [t for t, _ in first], first[-1][1] == body(FLOOR))
    ln.receive(frame.encode(frame.ACK, cbor.dumps({1: FLOOR})), 10)
    nxt = sent(20)
    print("ACKED", len(b), ln.ack_events == [FLOOR], nxt[-1][1] == body(FLOOR + 1))
    ln.receive(frame.encode(frame.NACK, cbor.dumps({1: FLOOR + 1, 2: "replay"})), 30)
    last = sent(40)
    print("REPLAY", len(b), ln.errors, last[-1][1] == body(BIG))
    ln.receive(frame.encode(frame.ACK, cbor.dumps({1: BIG})), 50)
    print("DONE", len(b), ln.ack_events[-1] == BIG, sent(60))


check_buffer()
check_heap()
check_seq_store()
check_link()
