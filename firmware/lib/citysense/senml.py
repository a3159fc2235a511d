"""SenML (RFC 8428) packs with CBOR integer labels, and the signed record's payload.

    pack = Pack(base_name="esp32-a1b2c3/", base_time=1764047000)
    pack.add("temp", 21.5, unit="Cel", time=0)
    pack.add("sys/heap_free", 48128, unit="B", time=10)
    payload = record_payload(seq, boot, pack, TIME_UNIX)

Readings are encoded as they are added, into one growing bytearray that `clear()` keeps
for reuse: a pack costs its encoded size, not a dict per reading. The pack's base fields
(bn, bt, bu) go into its first record; a series of readings of one name and unit is
written as one run under its own bn and bu when that is shorter (see `Pack`).
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


# per reading in the buffer: series, tail fields, n/u fields, n/u bytes, tail bytes
_HEAD = const(5)
_BUF_ROOM = const(384)  # bytes: a record's readings at batch 1 with notes (more grows it)
_SERIES_ROOM = const(64)  # 16 series (names): sensors, sys/ readings, notes


class Pack:
    """A SenML pack under construction.

    Each reading is encoded once, as it is added, into one bytearray that `clear()`
    keeps: a 5-byte header, its n/u fields, then the rest (v/vs/vb, s, t, ut). At
    `encode()` a series (the readings of one name and unit) for which it is shorter
    is written as one run whose first record sets bn = base name + name and bu = unit
    and whose other records carry only values and times (RFC 8428 base fields apply
    to the records after them); the other readings keep n and u and come first, in
    the order added, while bn is still the pack's base name. Plain SenML: any RFC 8428
    reader resolves the same names, units, values and times.
    """

    def __init__(self, base_name=None, base_time=None, base_unit=None):
        # both made with room for a record's readings, emptied (clear() keeps the room):
        # grown reading by reading they are reallocated in a heap already cut up by then
        # (a transfer boot: a 512-byte list growth found no hole), and every growth
        # that cannot happen in place leaves a hole behind
        self._buf = bytearray(_BUF_ROOM)
        self._buf[:] = b""
        self._count = 0
        self._size = 0  # bytes of the readings encoded one by one: an upper bound
        # name, unit, count, n/u bytes: 4 items per series
        self._series = [None] * _SERIES_ROOM  # type: list
        del self._series[:]
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
        """At most the bytes of the readings so far (the pack minus its array header)."""
        return self._size

    def clear(self, base_time=None):
        """Empty the pack (keeping its buffer); optionally set a new base time."""
        self._buf[:] = b""
        self._count = 0
        self._size = 0
        del self._series[:]
        if base_time is not None:
            self._base[BT] = base_time

    def add(self, name, value=None, unit=None, time=None, total=None, update_time=None):
        """Append one reading. `value` may be a number (v), a str (vs) or a bool (vb);
        `total` is the sum (s); `time` is relative to the base time (t)."""
        if self._count >= MAX_RECORDS:
            raise ValueError("senml: a pack holds at most %d records" % MAX_RECORDS)
        if not name and BN not in self._base:
            raise ValueError("senml: a record needs a name (n) or a base name (bn)")
        buf = self._buf
        at = len(buf)
        buf.extend(b"\0\0\0\0\0")
        nu = _field(buf, N, name or None) + _field(buf, U, unit)
        mid = len(buf)
        if value is True or value is False:
            nt = _field(buf, VB, value)
        elif isinstance(value, str):
            nt = _field(buf, VS, value)
        else:
            nt = _field(buf, V, value)
        nt += _field(buf, S, total) + _field(buf, T, time) + _field(buf, UT, update_time)
        if mid - at - _HEAD > 255 or len(buf) - mid > 255:
            del buf[at:]
            raise ValueError("senml: a reading's name, unit or value is too long")
        buf[at] = self._series_of(name, unit, mid - at - _HEAD)
        buf[at + 1] = nt
        buf[at + 2] = nu
        buf[at + 3] = mid - at - _HEAD
        buf[at + 4] = len(buf) - mid
        self._size += len(buf) - at - _HEAD + 1
        if not self._count:
            self._size += len(cbor.dumps(self._base)) - 1
        self._count += 1
        return self

    def _series_of(self, name, unit, nu_bytes):
        ser = self._series
        for i in range(0, len(ser), 4):
            if ser[i] == name and ser[i + 1] == unit:
                ser[i + 2] += 1
                return i >> 2
        if len(ser) >= 1020:  # 255 series: every reading its own name
            raise ValueError("senml: too many names in one pack")
        ser.extend((name, unit, 1, nu_bytes))
        return (len(ser) >> 2) - 1

    def _grouped(self, base):
        """Per series: True if it is written as a bn/bu run (shorter than n/u each)."""
        out = bytearray(len(self._series) >> 2)
        if BU in self._base:
            return out  # a pack-wide base unit: every reading keeps its own fields
        ser = self._series
        for i in range(0, len(ser), 4):
            name, unit, count, nu = ser[i], ser[i + 1], ser[i + 2], ser[i + 3]
            if name and unit is not None:
                run = _tlen(len(base) + len(name)) + _tlen(len(unit)) + 2
                out[i >> 2] = run < count * nu
        return out

    def encode_into(self, out):
        """Append the pack (a CBOR array) to bytearray `out`."""
        if not self._count:
            raise ValueError("senml: an empty pack")
        cbor.encode_head(out, cbor.ARRAY, self._count)
        base = self._base
        name = base.get(BN)
        grouped = self._grouped(name or "")
        bt = base.get(BT)
        if self._run_into(out, -1, grouped, name, bt, base.get(BU)):
            bt = None  # the pack's first record carries it
        ser = self._series
        bu = None
        for s in range(len(grouped)):
            if grouped[s]:
                unit = ser[4 * s + 1]
                self._run_into(
                    out, s, grouped, (name or "") + ser[4 * s], bt, None if unit == bu else unit
                )
                bt = None
                bu = unit

    def _run_into(self, out, s, grouped, bn, bt, bu):
        """Series s as one run of values and times, its first record setting bn, bt and
        bu (those not None); s = -1: the readings that keep n and u, in order. True if
        any record was written."""
        buf = self._buf
        mv = memoryview(buf)
        head = True
        pos = 0
        while pos < len(buf):
            lt = buf[pos + 4]
            end = pos + _HEAD + buf[pos + 3] + lt
            if (buf[pos] == s) if s >= 0 else not grouped[buf[pos]]:
                n = buf[pos + 1] + (buf[pos + 2] if s < 0 else 0)
                if head:
                    n += (bn is not None) + (bt is not None) + (bu is not None)
                out.append(0xA0 | n)
                out.extend(mv[pos + _HEAD : end] if s < 0 else mv[end - lt : end])
                if head:
                    _field(out, BN, bn)
                    _field(out, BT, bt)
                    _field(out, BU, bu)
                head = False
            pos = end
        return not head

    def encode(self):
        """The pack as CBOR bytes."""
        out = bytearray()
        self.encode_into(out)
        return bytes(out)

    def records(self):
        """The pack decoded back to a list of label->value dicts (for tests and logs)."""
        return cbor.loads(self.encode())


def _field(out, key, value):
    """Append label `key` and `value` unless the value is None; 1 if appended, else 0."""
    if value is None:
        return 0
    cbor.encode_into(out, key)
    cbor.encode_into(out, value)
    return 1


def _tlen(n):
    """Bytes of a CBOR text string of n bytes."""
    return n + (1 if n < 24 else 2 if n < 256 else 3)


def record_payload(seq, boot, pack, time_base=TIME_UNIX, out=None):
    """The payload the node signs: CBOR {1: seq, 2: boot, 3: pack, 4: time base}.

    `pack` is a Pack or a list of SenML record dicts. As bytes; given `out` (a
    bytearray, e.g. from `cose.room`), appended to it and `out` is returned: no
    payload-sized block (Node.seal signs it there in place)."""
    if time_base not in (TIME_UNIX, TIME_BOOT):
        raise ValueError("senml: time base must be 0 (Unix) or 1 (since boot)")
    buf = cbor.scratch() if out is None else out
    buf.append(0xA4)
    cbor.encode_into(buf, _PAYLOAD_SEQ)
    cbor.encode_into(buf, seq)
    cbor.encode_into(buf, _PAYLOAD_BOOT)
    cbor.encode_into(buf, boot)
    cbor.encode_into(buf, _PAYLOAD_PACK)
    if isinstance(pack, Pack):
        pack.encode_into(buf)
    else:
        if not pack:
            raise ValueError("senml: an empty pack")
        cbor.encode_into(buf, pack)
    cbor.encode_into(buf, _PAYLOAD_TIME_BASE)
    cbor.encode_into(buf, time_base)
    return bytes(buf) if out is None else out
