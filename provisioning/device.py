"""What the CLI does on a device, as small snippets run over the raw REPL.

The snippets only use what both the ESP32 port and the unix port (the emulator) have:
os, sys, hashlib.sha256, binascii. The device's seed is generated and used on the
device; no snippet here ever prints or returns it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable

from .errors import DeviceError
from .transport import Repl

SEQ_PATH = "/state/seq"
KEY_PATH = "/config/device.key"
KEY_NEW_PATH = "/config/device.key.new"
CONFIG_PATH = "/config/device.json"
OPERATOR_PATH = "/config/operator.pub"
_CHUNK = 1536  # raw bytes per write (2 KB of base64 per exec)
_MISSING = "-"

_PRELUDE = """
import os, sys, hashlib, binascii
def _cs_h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return '-'
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _cs_mk(p):
    d = ''
    for part in p.split('/')[1:-1]:
        d += '/' + part
        try:
            os.mkdir(d)
        except OSError as e:
            if e.args[0] != 17:
                raise
def _cs_walk(d, skip=()):
    try:
        it = list(os.ilistdir(d))
    except OSError:
        return
    for e in it:
        p = d.rstrip('/') + '/' + e[0]
        if p in skip:
            continue
        if e[1] == 0x4000:
            _cs_walk(p, skip)
        else:
            print(p, _cs_h(p))
def _cs_commit(t, p):
    c = os.getcwd()
    d, _, b = p.rpartition('/')
    os.chdir(d or '/')
    try:
        try:
            os.rename(t.rpartition('/')[2], b)
        except OSError:
            os.remove(b)
            os.rename(t.rpartition('/')[2], b)
    finally:
        os.chdir(c)
def _cs_pub(p):
    from citysense import ed25519
    try:
        f = open(p, 'rb')
    except OSError:
        return 'none'
    s = f.read()
    f.close()
    if len(s) != 32:
        return 'bad'
    return binascii.hexlify(ed25519.public_key(s)).decode()
"""

_GENKEY = """
_cs_mk({path!r})
from citysense import ed25519
_s = os.urandom(32)
_f = open({path!r}, 'wb')
_f.write(_s)
_f.close()
print(binascii.hexlify(ed25519.public_key(_s)).decode())
_s = None
"""

_SEQ_BITS = """
import citysense
for _k in ('citysense.buffer', citysense.__name__ + '.buffer'):
    sys.modules.pop(_k, None)
try:
    delattr(citysense, 'buffer')
except (AttributeError, KeyError):
    pass
from citysense import buffer as _cs_b
print(getattr(_cs_b, 'SEQ_BITS', 32))
_cs_b = None
"""

# /state/seq: the node's seq reservation limit L (u64 LE || crc32 LE, as
# firmware/lib/citysense/state.py writes it); the node continues at L on boot. Raised to
# `floor` (never lowered), replaced atomically (temp file + rename), read back. Prints
# "<before> <after>": before is -1 when the file is missing, -2 when it is corrupt.
_SEQ_FLOOR = """
import struct
from citysense.crc32 import crc32 as _cs_crc
def _cs_seq_read(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return -1
    r = f.read(16)
    f.close()
    if len(r) != 12 or struct.unpack('<I', r[8:])[0] != _cs_crc(r[:8]):
        return -2
    return struct.unpack('<Q', r[:8])[0]
_b = _cs_seq_read({path!r})
if _b < {floor}:
    _cs_mk({path!r})
    _v = struct.pack('<Q', {floor})
    _f = open({tmp!r}, 'wb')
    _f.write(_v + struct.pack('<I', _cs_crc(_v)))
    _f.close()
    _cs_commit({tmp!r}, {path!r})
print(_b, _cs_seq_read({path!r}))
"""

_UNIQUE_ID = """
try:
    from citysense import hal as _hal
    _u = _hal.unique_id()
except ImportError:
    import machine as _m
    _u = _m.unique_id()
print(binascii.hexlify(_u).decode())
"""

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


class Device:
    """High-level device operations over an open raw-REPL session."""

    def __init__(self, repl: Repl) -> None:
        self.repl = repl
        repl.exec(_PRELUDE, "loading the provisioning helpers")
        self.platform = repl.exec("print(sys.platform)", "reading sys.platform").strip()
        if self.is_emulator:
            self._check_emulator_root()

    @property
    def is_emulator(self) -> bool:
        return self.platform == "linux"

    def _check_emulator_root(self) -> None:
        """The unix port must see its flash folder as /, never the host's root."""
        out = self.run("print('proc' in os.listdir('/'))", "checking the emulator's root")
        if out.strip() != "False":
            raise DeviceError(
                "the emulator's / is the host's root (its flash folder is not mounted),"
                " refusing to write there: restart citysense-emulator repl"
            )

    def run(self, code: str, doing: str, timeout: float | None = None) -> str:
        return self.repl.exec(code, doing, timeout)

    def hashes(self, paths: Iterable[str]) -> dict[str, str | None]:
        """SHA-256 hex of each file on the device, None where it is missing."""
        wanted = list(paths)
        result: dict[str, str | None] = {}
        for start in range(0, len(wanted), 16):
            part = wanted[start : start + 16]
            code = f"for _p in {part!r}:\n    print(_cs_h(_p))\n"
            lines = self.run(code, "hashing files on the device").split()
            if len(lines) != len(part):
                raise DeviceError("the device sent a garbled file list, reset it and retry")
            for path, digest in zip(part, lines, strict=True):
                result[path] = None if digest == _MISSING else digest
        return result

    def walk(self, root: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
        """Every file under `root` (recursively, minus `skip` dirs) with its SHA-256 hex."""
        out = self.run(f"_cs_walk({root!r}, {skip!r})", f"listing {root} on the device", 60.0)
        files: dict[str, str] = {}
        for line in out.splitlines():
            path, _, digest = line.rpartition(" ")
            if path:
                files[path] = digest
        return files

    def put(self, path: str, data: bytes, progress: Progress = _quiet) -> None:
        """Write `data` to `path` via a temp file and a rename; cleans up on failure."""
        tmp = path + ".part"
        try:
            self.run(f"_cs_mk({path!r})\n_f = open({tmp!r}, 'wb')", f"creating {path}")
            for off in range(0, len(data), _CHUNK):
                chunk = base64.b64encode(data[off : off + _CHUNK]).decode()
                self.run(f"_f.write(binascii.a2b_base64({chunk!r}))", f"writing {path}")
                progress(f"{path}: {min(off + _CHUNK, len(data))}/{len(data)} bytes")
            self.run(f"_f.close()\n_cs_commit({tmp!r}, {path!r})", f"writing {path}")
        except DeviceError:
            try:
                self.run(
                    f"try:\n    _f.close()\nexcept Exception:\n    pass\n"
                    f"try:\n    os.remove({tmp!r})\nexcept OSError:\n    pass",
                    f"cleaning up {tmp}",
                )
            except DeviceError:
                pass
            raise

    def remove(self, path: str) -> None:
        self.run(f"os.remove({path!r})", f"removing {path}")

    def rename(self, src: str, dst: str) -> None:
        self.run(f"_cs_commit({src!r}, {dst!r})", f"renaming {src} to {dst}")

    def read_text(self, path: str) -> str | None:
        """A small text file's content (config files only, never the seed)."""
        raw = self.read_hex(path)
        if raw is None:
            return None
        try:
            return bytes.fromhex(raw).decode()
        except ValueError as exc:
            raise DeviceError(f"{path} on the device is not text, rewrite it") from exc

    def read_hex(self, path: str) -> str | None:
        """A small binary file as hex (operator.pub), None if missing."""
        if path in (KEY_PATH, KEY_NEW_PATH):
            raise DeviceError("refusing to read the device's private seed, this is a bug")
        code = (
            f"try:\n    _f = open({path!r}, 'rb')\n"
            "    print(binascii.hexlify(_f.read()).decode())\n    _f.close()\n"
            "except OSError:\n    print('-')"
        )
        out = self.run(code, f"reading {path}").strip()
        return None if out == _MISSING else out

    def public_key_of(self, key_path: str = KEY_PATH) -> str | None:
        """Public key (hex) of the seed at key_path, computed on the device; None if absent."""
        out = self.run(f"print(_cs_pub({key_path!r}))", "computing the public key", 120.0)
        out = out.strip()
        if out == "none":
            return None
        if out == "bad":
            raise DeviceError(
                f"{key_path} on the device is not a 32-byte seed, re-enroll with --replace"
            )
        return out

    def generate_key(self, path: str = KEY_NEW_PATH) -> str:
        """Generate a fresh seed ON the device at `path`; returns its public key (hex)."""
        out = self.run(_GENKEY.format(path=path), "generating the device key", 120.0).strip()
        if len(out) != 64:
            raise DeviceError("the device returned a malformed public key, reset it and retry")
        return out

    def firmware_seq_bits(self) -> int:
        """How wide the deployed firmware's flash buffer stores a seq: 64, or 32 for
        firmware from before the seq floor (its buffer would truncate floored seqs).
        The module is imported afresh: the app (or an earlier session) may hold the one
        from before a deploy."""
        out = self.run(_SEQ_BITS, "checking the firmware's seq width").strip()
        try:
            return int(out)
        except ValueError:
            raise DeviceError(
                f"the device answered {out[:60]!r} for the firmware's seq width, reset it and retry"
            ) from None

    def raise_seq_floor(self, floor: int, path: str = SEQ_PATH) -> tuple[int | None, int]:
        """Make the node's seq reservation limit at least `floor` (never lower it).

        Returns (the value before, None if the file was missing or corrupt; the value
        now on the device, read back)."""
        code = _SEQ_FLOOR.format(path=path, tmp=path + ".tmp", floor=int(floor))
        out = self.run(code, f"writing the seq floor to {path}").split()
        try:
            before, after = (int(x) for x in out)
        except ValueError:
            raise DeviceError(
                f"the device answered {' '.join(out)[:60]!r} for {path}, reset it and retry"
            ) from None
        if after < floor or (before >= 0 and after < before):
            raise DeviceError(
                f"{path} on the device holds {after} after writing the seq floor {floor},"
                " re-run enroll; if it persists the flash is failing"
            )
        return (before if before >= 0 else None), after

    def unique_id(self) -> str:
        return self.run(_UNIQUE_ID, "reading the unique id").strip()
