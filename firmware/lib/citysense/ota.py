"""Staging a fetched bundle: run by main.py at the boot after a transfer (citysense/
fetch.py) finished, in a fresh heap, before the app is imported; it ends in a reset.

The bundle (citysense_formats/bundle.py, docs/firmware.md) is `ota/new.csb`, its id in
`ota/ready`. Checks, in order; the first that fails refuses the bundle (sys/ota
`refused <id16>: <reason>` noted, the files deleted, the running app kept):
  header magic and manifest length (bad-magic, malformed, truncated); SHA-256 of the
  manifest = the id asked for (bad-id); the manifest's COSE_Sign1 under
  /config/release.pub (no-release-key, bad-signature); its fields: release seq above the
  installed one and above any rolled back (old-seq), hardware, protocol and mpy arch
  this node's (other-hardware, other-protocol, other-arch), plain file paths (bad-path),
  sizes adding up (truncated, size-mismatch); every file's SHA-256 (hash-mismatch) as it
  is copied into the staging slot apps/new/.
Then: apps/new renamed apps/s<seq>, other slots pruned, the pointer written with that
slot on trial (the switch: citysense/slots.py), the bundle file removed, "staged
<version>" noted. A power cut anywhere repeats the step at the next boot or finds the
switch written (then only the leftovers are removed).
"""

import hashlib
import os
import struct
import sys

from citysense import cbor, cose, slots

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x


FILE = "ota/new.csb"
READY = "ota/ready"
REFUSED = "ota/refused"
NEW = "apps/new"
RELEASE_PUB = "config/release.pub"
KID = b"release"
PROTOCOL = 2  # the serial protocol this app speaks (app.PROTOCOL; tests hold them equal)
MAX_MANIFEST = const(8192)
MAX_TOTAL = const(1048576)
_ARCHS = (
    "", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
    "xtensa", "xtensawin", "rv32imc", "rv64imc",
)  # fmt: skip
_PATH_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/"


def arch():
    """The mpy native arch this MicroPython runs (what the manifest's key 5 must say)."""
    a = (getattr(sys.implementation, "_mpy", 0) >> 10) & 0x3F
    return _ARCHS[a] if a < len(_ARCHS) else "?"


class Refused(ValueError):
    pass


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _read(path, limit):
    n = _size(path)
    if n < 0 or n > limit:
        return None
    with open(path, "rb") as f:
        return f.read(n)


def _path_ok(p):
    if not isinstance(p, str) or not 0 < len(p) <= 64 or p[0] in "/.":
        return False
    for part in p.split("/"):
        if not part or part == ".." or part[0] == ".":
            return False
    for c in p:
        if c not in _PATH_OK:
            return False
    return True


def check_manifest(manifest, pub, hardware, protocol, installed):
    """The manifest's fields as (version, seq, files) if this node may install it."""
    if pub is None:
        raise Refused("no-release-key")
    try:
        payload = cose.verify1(pub, manifest, KID)[1]
    except ValueError as exc:
        r = getattr(exc, "reason", None)
        raise Refused("bad-signature" if r == "bad-signature" else "malformed")
    m = cbor.loads(payload)
    if not isinstance(m, dict) or len(m) != 8:
        raise Refused("malformed")
    version, seq, files, total = m.get(1), m.get(2), m.get(7), m.get(6)
    if not isinstance(version, str) or not 0 < len(version) <= 32:
        raise Refused("malformed")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise Refused("malformed")
    if seq <= installed:
        raise Refused("old-seq %d <= %d" % (seq, installed))
    if m.get(3) != hardware:
        raise Refused("other-hardware")
    if m.get(4) != protocol:
        raise Refused("other-protocol")
    if m.get(5) != arch():
        raise Refused("other-arch")
    if not isinstance(files, list) or not files or not isinstance(total, int):
        raise Refused("malformed")
    n = 0
    for f in files:
        if not isinstance(f, list) or len(f) != 3 or not _path_ok(f[0]):
            raise Refused("bad-path")
        if not isinstance(f[1], int) or f[1] < 0 or not isinstance(f[2], bytes):
            raise Refused("malformed")
        n += f[1]
    if n != total:
        raise Refused("malformed")
    if total > MAX_TOTAL:
        raise Refused("too-large")
    return version, seq, files


def _read_manifest(f, bid):
    head = f.read(8)
    if len(head) < 8:
        raise Refused("truncated")
    if head[:4] != b"CSB1":
        raise Refused("bad-magic")
    m = struct.unpack("<I", head[4:8])[0]
    if not 0 < m <= MAX_MANIFEST:
        raise Refused("malformed")
    manifest = f.read(m)
    if len(manifest) < m:
        raise Refused("truncated")
    if hashlib.sha256(manifest).digest() != bid:
        raise Refused("bad-id")
    return manifest


def _copy(f, path, n, want):
    """Copy n bytes of the bundle into `path`, hashing them; Refused if they differ."""
    d = path.rpartition("/")[0]
    if d:
        slots.mkdirs(d)
    h = hashlib.sha256()
    buf = bytearray(512)
    with open(path, "wb") as out:
        while n:
            k = f.readinto(memoryview(buf)[: min(n, 512)])
            if not k:
                raise Refused("truncated")
            out.write(memoryview(buf)[:k])
            h.update(memoryview(buf)[:k])
            n -= k
    if h.digest() != want:
        raise Refused("hash-mismatch")


def _stage(bid):
    """Check the bundle and unpack it into a slot; returns (version, slot)."""
    from citysense import hal

    pub = _read(RELEASE_PUB, 64)
    if pub is not None and len(pub) != 32:
        pub = None
    with open(FILE, "rb") as f:
        manifest = _read_manifest(f, bid)
        v, seq, files = check_manifest(manifest, pub, hal.HARDWARE, PROTOCOL, slots.installed_seq())
        total = 0
        for e in files:
            total += e[1]
        size = _size(FILE)
        if size < 8 + len(manifest) + total:
            raise Refused("truncated")
        if size > 8 + len(manifest) + total:
            raise Refused("size-mismatch")
        manifest = None
        slots.rmtree(NEW)
        slots.mkdirs(NEW)
        for e in files:
            _copy(f, NEW + "/" + e[0], e[1], e[2])
    with open(NEW + "/.ota", "w") as fh:
        fh.write("%s %d\n" % (v, seq))
    slot = "s%d" % seq
    slots.rmtree("apps/" + slot)
    os.rename(NEW, "apps/" + slot)
    return v, slot


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def apply():
    """Stage `ota/new.csb` (see the module docstring). The caller resets afterwards."""
    try:
        with open(READY) as f:
            t = f.read().strip()
        bid = bytes(int(t[i : i + 2], 16) for i in range(0, 64, 2))
    except (OSError, ValueError):
        bid = b""
    if slots.read()[2] != slots.NONE or len(bid) != 32 or _size(FILE) < 0:
        _remove(FILE)  # the switch is written already (a cut after it), or nothing to do
        _remove(READY)
        return
    try:
        v, slot = _stage(bid)
    except MemoryError:
        _refuse(bid, "no-memory")
        return
    except OSError as exc:
        _refuse(bid, "flash error %s" % exc)
        return
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # Refused, a bad manifest
        _refuse(bid, str(exc) or "malformed")
        return
    p = slots.read()
    slots.prune(slot)
    slots.write([p[0], p[1], slot, 0])  # the switch: boot.py starts the trial
    _remove(FILE)
    slots.add_note("staged " + v)
    _remove(READY)


def _refuse(bid, reason):
    slots.rmtree(NEW)
    slots.replace(REFUSED, "".join("%02x" % b for b in bid))
    _remove(FILE)
    slots.add_note("refused %s: %s" % ("".join("%02x" % b for b in bid[:8]), reason))
    _remove(READY)
