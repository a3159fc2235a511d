"""The transfer of a bundle while the app runs (imported only while one is under way).

Kept as small as can be: the app runs in a 96 KiB heap with a few KiB to spare, and a
module's qstrs stay interned for the rest of the boot (one more qstr pool is ~7 KiB),
so this module only moves bytes, while the node samples normally (its records go out
first). Its functions are native code (not kept in the GC heap) and a chunk is read
where the frame decoder put it, in this module's buffer (`_buf`), with no copy.
Everything that checks the bytes runs at the next boot, in a fresh heap, before the
app is imported (citysense/ota.py, called by main.py).

- The bundle's bytes are appended to `ota/new.csb` (kept open, flushed after every
  chunk); `ota/stage` names the bundle (64 hex). After a power cut the file holds a
  prefix of the bundle and its size is the offset to ask for next: it resumes there.
- OTA_GET {1: id, 2: offset, 3: CHUNK} goes out when the line has nothing else to send
  (link.ota_get); no answer in 2 s: asked again (a line cut, a gateway restarting).
- OTA_CHUNK at that offset: appended. Empty bytes: the end of the bundle: `ota/stage` is
  renamed `ota/ready` and the node reboots; {4: reason}: the gateway cannot serve it:
  refused (`ota/refused`: an offer of it is not taken again). No chunk for 120 s (a
  cut line, a gateway gone; `ota/stall_s` overrides it): refused `stalled` and a
  reboot (this module unloaded); an `update` command starts the transfer again. A
  transfer is started by the app (the `update` COMMAND, an OTA_OFFER): it names the
  bundle in `ota/stage` and reboots, so this module is imported at the start of a boot,
  in a heap not cut up yet.
"""

import gc
import os
from binascii import hexlify

from citysense import cbor

try:
    import micropython
    from micropython import const
except ImportError:  # CPython: native does nothing there (citysense/pyviper.py)
    from citysense.pyviper import const, micropython  # type: ignore[assignment,no-redef]


FILE = "ota/new.csb"
STAGE = "ota/stage"
READY = "ota/ready"
REFUSED = "ota/refused"
CHUNK = 960  # bytes asked per GET (the gateway's CHUNK_MAX; fewer round trips)
_STALL_MS = const(120000)  # no byte this long (line cut, gateway gone): given up
_stall = _STALL_MS  # `ota/stall_s` overrides it (tests)
LIMIT = 1056776  # the largest bundle citysense_formats.bundle builds (header + manifest + 1 MiB)
bundle = None  # the bundle being fetched (32 bytes); the app polls while it is set
_asked = -1  # when the last GET went out
_moved = -1  # when the transfer last moved (a chunk appended; -1: not resumed yet)
_f = None  # FILE, open for appending while a transfer runs (no file object per chunk)
_off = 0  # its size: the offset asked for next
# An OTA_CHUNK body lands here: the frame decoder is lent this buffer and copies the next
# chunk into it (frame.Decoder.lend), instead of a new ~1 KiB block per chunk that the
# sampling's own allocations would cut the heap around; lent again once written out.
_buf = bytearray(CHUNK + 48)  # 960 bytes + the map around them (id, offset, heads)


@micropython.native
def _size():
    try:
        return os.stat(FILE)[6]
    except OSError:
        return 0


@micropython.native
def _close():
    global _f
    if _f is not None:
        _f.close()
        _f = None


@micropython.native
def _hex(b):
    # hexlify makes the string alone; a join over a generator first builds a list of
    # 32 strings (256 bytes on a 64-bit port): the stall test's MemoryError in the link
    # task, when a stalled transfer was refused in a heap cut up by the sampling
    return hexlify(b).decode()


@micropython.native
def _put(path, text):
    try:
        os.mkdir("ota")
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


@micropython.native
def _drop():
    _close()
    for p in (FILE, STAGE):
        try:
            os.remove(p)
        except OSError:
            pass


@micropython.native
def _refuse(node, why):
    global bundle
    b = bundle or b""
    node.note("refused %s: %s" % (_hex(b[:8]), why))
    _put(REFUSED, _hex(b))
    _drop()
    bundle = None
    node.reboot_at = node.now() + 500  # the next boot runs without this module


@micropython.native
def _take(node, t, m, now):
    global bundle, _asked, _f, _off, _moved
    if t != 10:  # an OTA_OFFER while a transfer runs: this one goes on
        return
    if bundle is None or m.get(1) != bundle or m.get(2) != _off:
        return  # not ours, or an old answer: the next GET asks again
    if 4 in m:
        _refuse(node, "gateway " + str(m[4])[:24])
        return
    d = m.get(3)
    if d is None:
        return
    if not d:  # the end: checked and staged at the next boot (ota.py)
        _close()
        os.rename(STAGE, READY)
        bundle = None
        node.reboot_at = now + 500
        return
    if _off + len(d) > LIMIT or not _off and bytes(d[:4]) != b"CSB1":
        _refuse(node, "too-large" if _off else "bad-magic")
        return
    if _f is None:
        _f = open(FILE, "ab")
    _f.write(d)
    _f.flush()  # on the ESP32's LittleFS a sync: what a power cut keeps is a prefix
    _off += len(d)
    _asked = -1
    _moved = now


@micropython.native
def _chunk(b):
    """An OTA_CHUNK with bytes, {1: id, 2: offset, 3: bytes} as the gateway encodes it,
    read in place (the bytes are a memoryview into the frame body, not a copy); None
    for any other shape (cbor.loads reads it then)."""
    if b[0] != 0xA3 or b[1] != 1 or b[2] != 0x58 or b[3] != 32 or b[36] != 2:
        return None
    i, off = 37, b[37]
    if off >= 0x18:  # a uint of 1, 2 or 4 bytes follows the head
        n = (1, 2, 4)[off - 0x18] if off <= 0x1A else 0
        if not n:
            return None
        off = int.from_bytes(b[38 : 38 + n], "big")
        i += n
    i += 1
    if b[i] != 3:
        return None
    h = b[i + 1]
    i += 2
    if 0x40 <= h <= 0x57:
        n = h - 0x40
    elif h == 0x58:
        n, i = b[i], i + 1
    elif h == 0x59:
        n, i = (b[i] << 8) | b[i + 1], i + 2
    else:
        return None
    if i + n != len(b):
        return None
    return {1: bytes(b[4:36]), 2: off, 3: memoryview(b)[i:]}


@micropython.native
def step(node, now):
    """Called by the app at boot when `ota/stage` names a bundle (app.Node._want wrote
    it), then by its link loop while the transfer runs or OTA frames came in."""
    global bundle, _asked, _off, _moved, _stall
    link = node.link
    if _moved < 0:  # the first call of this boot: the transfer goes on from the file's size
        _moved = now
        try:
            with open(STAGE) as f:
                t = f.read()
            bundle = bytes(int(t[i : i + 2], 16) for i in range(0, 64, 2))
            _off = _size()
        except (OSError, ValueError):
            pass
        try:
            with open("ota/stall_s") as f:
                _stall = int(f.read()) * 1000
        except (OSError, ValueError):
            pass
        link.decoder.lend = _buf
    while link.ota_in:
        t, body = link.ota_in.pop(0)
        try:
            m = _chunk(body) if t == 10 else None
            if m is None:
                m = cbor.loads(bytes(body))
            if isinstance(m, dict):
                _take(node, t, m, now)
        except (ValueError, TypeError, IndexError):
            pass
        body = m = None
        link.decoder.lend = _buf  # written out (or dropped): the next chunk may land there
    if bundle is not None and now - _moved > _stall:
        _refuse(node, "stalled")  # an `update` command restarts it
    if bundle is not None and link.ota_get is None and (_asked < 0 or now - _asked >= 2000):
        gc.collect()  # a chunk's body and its bytes were the biggest blocks made since
        link.ota_get = cbor.dumps({1: bundle, 2: _off, 3: CHUNK})
        _asked = now
