# Under micropython (96k heap): the node app with batch 64 takes 40 samples; every record
# it seals is printed in hex for the test to verify (each must fit one RECORD frame).
import binascii

from citysense import frame

enc, dec = frame.Encoder(), frame.Decoder()
from citysense import preload  # noqa: E402

preload.run()
from citysense import app  # noqa: E402

node = app.Node(enc, dec)
node.setup_sensors()
for _ in range(40):
    node.sample()
node.sync_now = True
node.sample()  # the 41st sample seals the last, partial record
for i in range(len(node.buffer)):
    print("REC", binascii.hexlify(node.buffer.read(i)).decode())
print("OVERSIZE", node.oversize, "BUDGET", node.pack_budget)
