# ruff: noqa: UP031
# MicroPython firmware code as it was before issue 18 (the bench's baseline only)
"""SenML (RFC 8428) packs with CBOR integer labels, and the signed record's payload.

    pack = Pack(base_name="esp32-a1b2c3/", base_time=1764047000)
    pack.add("temp", 21.5, unit="Cel", time=0)
    pack.add("sys/heap_free", 48128, unit="B", time=10)
    payload = record_payload(seq, boot, pack, TIME_UNIX)

Readings are encoded as they are added, into one growing bytearray that `clear()` keeps
for reuse: a pack costs its encoded size, not a dict per reading. Base fields (bn, bt,
bu) go into the first record, as RFC 8428 allows.
"""

from citysense import cbor

try:
    from micropython import const
except ImportError:  # CPython (cross-tests): const() is only a compiler hint

    def const(x):  # type: ignore[misc]
        return x


# RFC 8428 section 6 CBOR labels
BN = const(-2)
BT = const(-3)
BU = const(-4)
N = const(0)
U = const(1)
V = const(2)
VS = const(3)
VB = const(4)
S = const(5)
T = const(6)
UT = const(7)

TIME_UNIX = const(0)  # SenML times are Unix seconds
TIME_BOOT = const(1)  # SenML times are seconds since this boot started

MAX_RECORDS = const(256)  # the gateway's limit per pack

_PAYLOAD_SEQ = const(1)
_PAYLOAD_BOOT = const(2)
_PAYLOAD_PACK = const(3)
_PAYLOAD_TIME_BASE = const(4)


class Pack:
    """A SenML pack under construction."""

    def __init__(self, base_name=None, base_time=None, base_unit=None):
        self._buf = bytearray()
        self._count = 0
        self._base = {}
        if base_name is not None:
            self._base[BN] = base_name
        if base_time is not None:
            self._base[BT] = base_time
        if base_unit is not None:
            self._base[BU] = base_unit

    def __len__(self):
        return self._count

    @property
    def nbytes(self):
        """Bytes of the readings so far (the encoded pack minus its array header)."""
        return len(self._buf)

    def clear(self, base_time=None):
        """Empty the pack (keeping its buffer); optionally set a new base time."""
        self._buf[:] = b""
        self._count = 0
        if base_time is not None:
            self._base[BT] = base_time

    def add(self, name, value=None, unit=None, time=None, total=None, update_time=None):
        """Append one reading. `value` may be a number (v), a str (vs) or a bool (vb);
        `total` is the sum (s); `time` is relative to the base time (t)."""
        if self._count >= MAX_RECORDS:
            raise ValueError("senml: a pack holds at most %d records" % MAX_RECORDS)
        if not name and BN not in self._base:
            raise ValueError("senml: a record needs a name (n) or a base name (bn)")
        rec = {}
        if self._count == 0:
            for key in self._base:
                rec[key] = self._base[key]
        if name:
            rec[N] = name
        if unit is not None:
            rec[U] = unit
        if value is True or value is False:
            rec[VB] = value
        elif isinstance(value, str):
            rec[VS] = value
        elif value is not None:
            rec[V] = value
        if total is not None:
            rec[S] = total
        if time is not None:
            rec[T] = time
        if update_time is not None:
            rec[UT] = update_time
        cbor.encode_into(self._buf, rec)
        self._count += 1
        return self

    def encode_into(self, out):
        """Append the pack (a CBOR array) to bytearray `out`."""
        if not self._count:
            raise ValueError("senml: an empty pack")
        cbor.encode_head(out, cbor.ARRAY, self._count)
        out.extend(self._buf)

    def encode(self):
        """The pack as CBOR bytes."""
        out = bytearray()
        self.encode_into(out)
        return bytes(out)

    def records(self):
        """The pack decoded back to a list of label->value dicts (for tests and logs)."""
        return cbor.loads(self.encode())


def record_payload(seq, boot, pack, time_base=TIME_UNIX):
    """The payload the node signs: CBOR {1: seq, 2: boot, 3: pack, 4: time base}.

    `pack` is a Pack or a list of SenML record dicts."""
    if time_base not in (TIME_UNIX, TIME_BOOT):
        raise ValueError("senml: time base must be 0 (Unix) or 1 (since boot)")
    out = cbor.scratch()
    out.append(0xA4)
    cbor.encode_into(out, _PAYLOAD_SEQ)
    cbor.encode_into(out, seq)
    cbor.encode_into(out, _PAYLOAD_BOOT)
    cbor.encode_into(out, boot)
    cbor.encode_into(out, _PAYLOAD_PACK)
    if isinstance(pack, Pack):
        pack.encode_into(out)
    else:
        if not pack:
            raise ValueError("senml: an empty pack")
        cbor.encode_into(out, pack)
    cbor.encode_into(out, _PAYLOAD_TIME_BASE)
    cbor.encode_into(out, time_base)
    return bytes(out)
