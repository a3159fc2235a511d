# Under micropython (96k heap): drop-oldest bound, ACK deleting segments, recovery skipping
# a torn tail. Prints one line per check; the test compares them exactly.
import os

from citysense.buffer import Buffer

b = Buffer(seg_size=100, max_segs=3)
b.open()
for seq in range(1, 13):
    b.append(seq, b"x" * 30)  # 41 bytes an entry: 2 per segment
print("PENDING", len(b), b.seq_at(0), b.newest_seq(), "DROPPED", b.dropped)
print("SEGS", sorted(os.listdir("data")))
print("ACKED", b.ack(9), len(b), sorted(os.listdir("data")))
# a torn entry at the end of the active segment, as a power cut mid-write leaves it
with open("data/" + ("%08x" % b.segs[-1]) + ".seg", "ab") as f:  # noqa: UP031
    f.write(b"\xa5\x1e\x00\x0d\x00\x00\x00")
r = Buffer(seg_size=100, max_segs=3)
print("RECOVERED", r.open(), r.seq_at(0), r.newest_seq())
r.append(13, b"y" * 30)
into = bytearray(40)
n = r.read(len(r) - 1, into)  # read into a buffer (frame.Encoder.room), length returned
print("AFTER", len(r), r.read(len(r) - 1) == b"y" * 30 == into[:n], sorted(os.listdir("data")))
r2 = Buffer(seg_size=100, max_segs=3)
print("REOPEN", r2.open(), [r2.seq_at(i) for i in range(len(r2))])
# an ACK of everything deletes every segment, the active one (14's) too; appends go on
print("DRAINED", r2.ack(13), len(r2), sorted(os.listdir("data")))
r2.append(14, b"w" * 30)
print("ACKED14", r2.ack(14), len(r2), sorted(os.listdir("data")))
r2.append(15, b"z" * 30)
print("NEXT", len(r2), r2.read(0) == b"z" * 30, sorted(os.listdir("data")))
r3 = Buffer(seg_size=100, max_segs=3)
print("REBOOT", r3.open(), r3.seq_at(0))
