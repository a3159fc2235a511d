# Runs under micropython, cwd = the flash folder. Recovers the buffer, reports it,
# then appends records forever until the test kills the process (a power cut).
#   micropython powercut.py buffer|seq
import sys

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
    while True:
        s = ss.take()
        b.append(s, body(s))
        print("A", s)


main(sys.argv[1])
