"""What the CLI does on a device, as small snippets run over the raw REPL.

The snippets only use what both the ESP32 port and the unix port (the emulator) have:
os, sys, hashlib.sha256, binascii, and the citysense firmware's own modules. The
device's seed is generated and used on the device; no snippet here ever prints or
returns it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable

from citysense_formats import state_seq

from .errors import DeviceError
from .transport import Repl

SEQ_PATH = "/state/seq"
KEY_PATH = "/config/device.key"
KEY_NEW_PATH = "/config/device.key.new"
CONFIG_PATH = "/config/device.json"
OPERATOR_PATH = "/config/operator.pub"
RELEASE_PATH = "/config/release.pub"  # verifies bundle manifests; same format
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

# The seed: SHA-512(32 bytes of the device's os.urandom || the 32 host bytes)[:32],
# computed here on the device with the firmware's own SHA-512 (hashlib has none). The
# ESP32's RNG is only documented as truly random while its radio runs, so the host's
# bytes (secrets.token_bytes) make the seed unpredictable even from a weak device RNG,
# and the device's bytes (never sent) keep it unknown to the host, which sees only the
# public key. Either part alone changes the seed (tests/provisioning/test_key_entropy.py).
_GENKEY = """
_cs_mk({path!r})
from citysense import ed25519
from citysense.sha512 import sha512 as _cs_sha512
_h = _cs_sha512(os.urandom(32))
_h.update(binascii.unhexlify({host!r}))
_s = _h.digest()[:32]
_h = None
_f = open({path!r}, 'wb')
_f.write(_s)
_f.close()
print(binascii.hexlify(ed25519.public_key(_s)).decode())
_s = None
"""
HOST_RANDOM_BYTES = 32

# citysense.<name> imported afresh: the app (or an earlier session) may hold the module
# from before a deploy
_FRESH = """
def _cs_fresh(name):
    import citysense
    for k in ('citysense.' + name, citysense.__name__ + '.' + name):
        sys.modules.pop(k, None)
    try:
        delattr(citysense, name)
    except (AttributeError, KeyError):
        pass
    return __import__('citysense.' + name, None, None, [name])
"""

_SEQ_BITS = """
print(getattr(_cs_fresh('buffer'), 'SEQ_BITS', 32))
"""

# The records in the node's flash buffer (/data/*.seg), counted by the firmware's own
# recovery scan (Buffer.open): exactly what the node will send after its next boot.
_PENDING = """
def _cs_pending():
    try:
        names = [n for n in os.listdir('/data') if n.endswith('.seg')]
    except OSError:
        return 0
    if not names:
        return 0
    return _cs_fresh('buffer').Buffer('/data').open()
"""

# Drop them all, counted: /state/dropped (the counter the node reports as sys/dropped)
# is raised by their number BEFORE the segments are removed, so a cut cable can count
# some twice (a re-run counts what is left again) but never loses a count. Prints
# "<dropped> <counter before> <counter after> <records left>".
_DROP_PENDING = """
_n = _cs_pending()
_st = _cs_fresh('state')
_c = os.getcwd()
os.chdir('/')
try:
    _d = _st.load('dropped', 0)
    if _n:
        _st.store('dropped', _d + _n)
        for _x in os.listdir('data'):
            if _x.endswith('.seg'):
                os.remove('data/' + _x)
finally:
    os.chdir(_c)
print(_n, _d, _st.load('dropped', 0), _cs_pending())
_st = None
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
        self._loaded: set[str] = set()
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
        """A small binary file as hex (operator.pub, release.pub), None if missing."""
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

    def generate_key(self, path: str = KEY_NEW_PATH, host_random: bytes | None = None) -> str:
        """Generate a fresh seed ON the device at `path`, mixing the device's random bytes
        with `host_random` (32 bytes; fresh from `secrets` unless given); returns its
        public key (hex)."""
        if host_random is None:
            host_random = secrets.token_bytes(HOST_RANDOM_BYTES)
        if len(host_random) != HOST_RANDOM_BYTES:
            raise ValueError(f"host_random must be {HOST_RANDOM_BYTES} bytes")
        code = _GENKEY.format(path=path, host=host_random.hex())
        out = self.run(code, "generating the device key", 120.0).strip()
        if len(out) != 64:
            raise DeviceError("the device returned a malformed public key, reset it and retry")
        return out

    def _helpers(self, code: str) -> None:
        if code not in self._loaded:
            self.run(code, "loading the provisioning helpers")
            self._loaded.add(code)

    def firmware_seq_bits(self) -> int:
        """How wide the deployed firmware's flash buffer stores a seq: 64, or 32 for
        firmware from before the seq floor (its buffer would truncate floored seqs)."""
        self._helpers(_FRESH)
        out = self.run(_SEQ_BITS, "checking the firmware's seq width").strip()
        try:
            return int(out)
        except ValueError:
            raise DeviceError(
                f"the device answered {out[:60]!r} for the firmware's seq width, reset it and retry"
            ) from None

    def pending_records(self) -> int:
        """How many records the node's flash buffer holds (it sends them after boot)."""
        self._helpers(_FRESH)
        self._helpers(_PENDING)
        out = self.run("print(_cs_pending())", "counting the records in the buffer", 60.0)
        return self._ints(out, 1, "the records in the buffer")[0]

    def drop_pending(self) -> tuple[int, int]:
        """Delete every record in the node's buffer, adding their number to its drop
        counter (/state/dropped, reported as sys/dropped). Returns (dropped, counter)."""
        self._helpers(_FRESH)
        self._helpers(_PENDING)
        out = self.run(_DROP_PENDING, "dropping the records in the buffer", 60.0)
        dropped, before, after, left = self._ints(out, 4, "dropping the buffer")
        if left or after != before + dropped:
            raise DeviceError(
                f"dropping the node's buffer left {left} records and the drop counter at"
                f" {after} (was {before}, {dropped} dropped): re-run enroll; if it persists"
                " the flash is failing"
            )
        return dropped, after

    @staticmethod
    def _ints(out: str, n: int, what: str) -> list[int]:
        try:
            values = [int(x) for x in out.split()]
        except ValueError:
            values = []
        if len(values) != n:
            raise DeviceError(
                f"the device answered {out.strip()[:60]!r} for {what}, reset it and retry"
            )
        return values

    def read_small(self, path: str, limit: int) -> bytes | None:
        """At most `limit` bytes of a small file (a /state counter), None if missing."""
        if path in (KEY_PATH, KEY_NEW_PATH):
            raise DeviceError("refusing to read the device's private seed, this is a bug")
        code = (
            f"try:\n    _f = open({path!r}, 'rb')\n"
            f"    print(binascii.hexlify(_f.read({int(limit)})).decode() or '=')\n"
            "    _f.close()\nexcept OSError:\n    print('-')"
        )
        out = self.run(code, f"reading {path}").strip()
        if out == _MISSING:
            return None
        try:
            return b"" if out == "=" else bytes.fromhex(out)
        except ValueError:
            raise DeviceError(
                f"the device sent garbled bytes of {path}, reset it and retry"
            ) from None

    def read_seq_state(self, path: str = SEQ_PATH) -> int | None:
        """The node's seq reservation limit (citysense_formats.state_seq); None when the
        file is missing or corrupt (the node then falls back to its record buffer)."""
        raw = self.read_small(path, state_seq.SIZE + 4)
        if raw is None:
            return None
        try:
            return state_seq.decode(raw)
        except state_seq.StateSeqError:
            return None

    def raise_seq_floor(self, floor: int, path: str = SEQ_PATH) -> tuple[int | None, int]:
        """Make the node's seq reservation limit at least `floor` (never lower it): the
        file is replaced atomically (temp file + rename) and read back.

        Returns (the value before, None if the file was missing or corrupt; the value
        now on the device)."""
        before = self.read_seq_state(path)
        if before is None or before < floor:
            self.put(path, state_seq.encode(floor))
        after = self.read_seq_state(path)
        if after is None or after < floor or (before is not None and after < before):
            raise DeviceError(
                f"{path} on the device holds {after} after writing the seq floor {floor},"
                " re-run enroll; if it persists the flash is failing"
            )
        return before, after

    def unique_id(self) -> str:
        return self.run(_UNIQUE_ID, "reading the unique id").strip()
