# Under micropython (96k heap): a record whose signing runs out of heap is not made
# (counted in sys/dropped), the node goes on and its next record carries the notes.
import binascii

from citysense import frame

enc, dec = frame.Encoder(), frame.Decoder()
from citysense import preload  # noqa: E402

preload.run()
from citysense import app, cose  # noqa: E402

node = app.Node(enc, dec)
node.setup_sensors()
sign_in = cose.sign_in


def no_heap(*args):
    raise MemoryError("memory allocation failed, allocating 271 bytes")


cose.sign_in = no_heap
node.sync_now = True
node.sample()  # sealed at once: its signing fails
cose.sign_in = sign_in
node.sync_now = True
node.sample()
for i in range(len(node.buffer)):
    print("REC", binascii.hexlify(node.buffer.read(i)).decode())
print("DROPPED", node.dropped, "SAMPLES", node.samples)
