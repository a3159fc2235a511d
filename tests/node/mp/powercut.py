# Runs under micropython, cwd = the flash folder. Recovers the buffer, reports it,
# then appends records until the test kills the process (a power cut).
#   micropython powercut.py buffer|seq
# A boot appends at most APPENDS entries and then waits for the kill: the test kills a
# few entries in, but a loaded machine may take a while to deliver the kill, and an
# unbounded run would leave thousands of pending entries whose index (two lists of ints)
# does not fit the 96 KiB heap at the next boot. The real node's buffer is bounded by
# max_segs; this one (max_segs=100000) only by this count.
import sys
import time

from citysense.buffer import Buffer
from citysense.state import SeqStore


def body(seq):
    return b"%d;" % seq * (1 + seq % 23)


def main(mode):
    if mode == "seq":
        ss = SeqStore(block=8)
        while True:
            print("A", ss.take())
    b = Buffer(seg_size=512, max_segs=100000)
    b.open()
    bad = 0
    for i in range(len(b)):
        if b.read(i) != body(b.seq_at(i)):
            bad += 1
    seqs = [b.seq_at(i) for i in range(len(b))]
    print("R", bad, " ".join(str(s) for s in seqs))
    if len(b) > 30:
        ack = b.seq_at(len(b) - 30)
        print("K", ack)
        b.ack(ack)
        print("k", ack)
    ss = SeqStore(block=8, floor=b.newest_seq())
    for _ in range(APPENDS):
        s = ss.take()
        b.append(s, body(s))
        print("A", s)
    while True:
        time.sleep(1)


APPENDS = 300


main(sys.argv[1])
