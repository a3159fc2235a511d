"""Import the node app module by module, leaves first, with a gc.collect() after each.

Loading a module leaves garbage behind (reader buffers, the module's qstr and constant
tables being built). If the next import runs with that garbage still in place, its
long-lived code lands in the gaps between dead blocks, and once the garbage is freed
the heap is a sieve: the free total is fine but the big blocks (the record scratch,
frame buffers, a grown qstr pool) find no hole. Measured on the unix port: the app
imported in one go needs a 86 KiB heap to load; imported this way, 72 KiB.

`run()` then drops this module from sys.modules: it is needed once per boot.
"""

import gc
import sys

# dependency order: every module's imports are already loaded when it loads
ORDER = (
    "asyncio",
    "citysense.errors",
    "citysense.crc32",
    "citysense.cobs",
    "citysense.frame",
    "citysense.cbor_decode",
    "citysense.cbor",
    "citysense.sha512",
    "citysense.ed25519",
    "citysense.cose",
    "citysense.senml",
    "citysense.state",
    "citysense.buffer",
    "citysense.hal",
    "citysense.safe",
    "citysense.link",
    "citysense.commands",
    "citysense.app",
)


def run():
    for name in ORDER:
        __import__(name)
        gc.collect()
    sys.modules["citysense.app"].forget("preload")
