"""MQTT packets without I/O, for the two clients of our own: encoders and a bounded decoder.

Two users. The cloud ingest (cloud/session.py, MQTT 5 only): receive a PUBLISH, hand it
on, PUBACK it after the commit. The gateway's uplink (gateway/mqttclient.py, MQTT 5 or
3.1.1): publish records at QoS 1 and read each PUBACK's reason code, subscribe to a few
command topics.

Why not paho. The ingest: paho 2.2 spends ~90-130 µs of CPU per message received
(7,700-10,900 messages per CPU second; bench/bench_cloud.py measures it in the same run
as ours): a Properties object built attribute by attribute through `__setattr__`
checks, an MQTTMessage, topic matching against callbacks, a lock and a callback per
message, and one PUBACK packet written per call. That is about as much as the Ed25519
verify the record needs (~100 µs), and it capped the ingest at 0.47x the verify ceiling
per core. The uplink: paho with aiomqtt spent 41-49 µs of CPU per QoS 1 publish and its
PUBACK (a socket write and a writer registration per message, a ReasonCode and a
Properties object per PUBACK), where these packets cost 11-12 µs
(bench/bench_mqtt_publish.py). This module decodes a whole socket read at once (a few µs
a packet) and the callers write many packets in one send.

What is here: CONNECT (clean start, session expiry, Receive Maximum, Maximum Packet Size,
a will, user name and password; protocol level 5 or 4 = 3.1.1), PUBLISH (QoS 0 and 1),
PUBACK, SUBSCRIBE / UNSUBSCRIBE of one filter, PINGREQ, DISCONNECT; in the other
direction CONNACK, PUBLISH (QoS 0 and 1: our subscriptions are at QoS 1, so a broker
sends nothing higher), PUBACK (packet id and reason code), SUBACK, UNSUBACK, PINGRESP,
DISCONNECT. No topic aliases (Topic Alias Maximum stays 0, so the broker must not use
them), no AUTH. OASIS MQTT 5.0 and 3.1.1, sections 2 and 3.

Bounds: a packet over the decoder's maximum is a protocol error (the CONNECT tells an
MQTT 5 broker this maximum, so a conforming broker never sends one: it drops such a
message for us); a Remaining Length over four bytes, a property the packet cannot hold,
or a truncated field is a `MqttProtocolError` with a reason label, and the caller drops
the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, NamedTuple

MAX_PACKET: Final = 1 << 20  # bytes; a record is at most 4096 (cloud.records.MAX_RECORD)
V5: Final = 5  # protocol levels in CONNECT
V311: Final = 4
MAX_STRING: Final = 0xFFFF
MAX_REMAINING: Final = 268_435_455  # four bytes of Remaining Length

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

PINGREQ_PACKET: Final = b"\xc0\x00"

# property identifier -> its kind (section 2.2.2.2): how to skip or read it
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
PROPERTY_KINDS: Final = {
    0x01: _BYTE,  # payload format indicator
    0x02: _FOUR,  # message expiry interval
    0x03: _UTF8,  # content type
    0x08: _UTF8,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _FOUR,  # session expiry interval
    0x12: _UTF8,  # assigned client identifier
    0x13: _TWO,  # server keep alive
    0x15: _UTF8,  # authentication method
    0x16: _BINARY,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _FOUR,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _UTF8,  # response information
    0x1C: _UTF8,  # server reference
    0x1F: _UTF8,  # reason string
    0x21: _TWO,  # receive maximum
    0x22: _TWO,  # topic alias maximum
    0x23: _TWO,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _FOUR,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifiers available
    0x2A: _BYTE,  # shared subscription available
}
USER_PROPERTY: Final = 0x26
SERVER_KEEP_ALIVE: Final = 0x13
REASON_STRING: Final = 0x1F
TOPIC_ALIAS: Final = 0x23
_FIXED = {_BYTE: 1, _TWO: 2, _FOUR: 4}
_U16 = struct.Struct(">H")


class MqttProtocolError(Exception):
    """The broker sent something this client cannot take: drop the connection."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Publish(NamedTuple):
    """An incoming PUBLISH. `topic` is None if it is not UTF-8; `user` the user
    properties in order (decoded with replacement: unsigned metadata)."""

    topic: str | None
    mid: int
    qos: int
    payload: bytes
    user: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Control:
    """Any other packet from the broker, its variable header parsed by `kind`:
    CONNACK (flags = session present, code = reason), SUBACK / UNSUBACK (mid, codes),
    DISCONNECT (code), PINGRESP. `props` holds single-valued properties by id."""

    kind: int
    code: int = 0
    flags: int = 0
    mid: int = 0
    codes: tuple[int, ...] = ()
    props: tuple[tuple[int, object], ...] = ()

    def prop(self, ident: int) -> object | None:
        for key, value in self.props:
            if key == ident:
                return value
        return None


# -- encoders -------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    return _binary(text.encode("utf-8"))


def _binary(data: bytes) -> bytes:
    if len(data) > MAX_STRING:
        raise ValueError("an MQTT binary field is at most 65535 bytes")
    return _U16.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def _props(pairs: list[tuple[int, int]]) -> bytes:
    out = bytearray()
    for ident, value in pairs:
        out.append(ident)
        out += value.to_bytes(_FIXED[PROPERTY_KINDS[ident]], "big")
    return varint(len(out)) + bytes(out)


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_connect(
    client_id: str,
    keepalive: int,
    session_expiry: int,
    receive_max: int,
    *,
    version: int = V5,
    clean_start: bool = False,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
    max_packet: int = MAX_PACKET,
) -> bytes:
    """CONNECT. MQTT 5 carries session expiry, Receive Maximum and Maximum Packet Size
    (the will without properties); 3.1.1 (`version=V311`) has no properties at all.
    Defaults: clean start off (the session is resumed), no will, no credentials."""
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
    props = b""
    if version == V5:
        props = _props([(0x11, session_expiry), (0x21, receive_max), (0x27, max_packet)])
    body = utf8("MQTT") + bytes([version, flags]) + _U16.pack(keepalive) + props
    body += utf8(client_id)
    if will is not None:
        body += (b"\x00" if version == V5 else b"") + utf8(will.topic) + _binary(will.payload)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += _binary(password.encode("utf-8"))
    return _packet(CONNECT << 4, body)


def check_topic(topic: str) -> bytes:
    """The topic of a PUBLISH as its UTF-8 string field; ValueError for one no broker may
    take (empty, a wildcard, NUL, over 65535 bytes: MQTT 5.0 section 4.7)."""
    raw = topic.encode("utf-8")
    if b"+" in raw or b"#" in raw:
        raise ValueError("a topic name cannot hold a wildcard ('+' or '#')")
    if not raw or len(raw) > MAX_STRING or b"\x00" in raw:
        raise ValueError("a topic name is 1-65535 bytes of UTF-8 without NUL")
    return _U16.pack(len(raw)) + raw


def encode_publish(
    topic: bytes, payload: bytes, mid: int, *, qos: int = 1, retain: bool = False,
    props: bytes | None = b"\x00",
) -> bytes:  # fmt: skip
    """PUBLISH of `topic` (as `check_topic` returns it). `props` is the packed property
    block (length first; b"\x00" for none) under MQTT 5, None under 3.1.1; `mid` is
    ignored for QoS 0. ValueError for a packet MQTT cannot frame."""
    head = topic + (_U16.pack(mid) if qos else b"") + (props or b"")
    length = len(head) + len(payload)
    if length > MAX_REMAINING:
        raise ValueError(f"a PUBLISH of {length} bytes is over MQTT's maximum")
    first = PUBLISH << 4 | qos << 1 | (1 if retain else 0)
    return bytes([first]) + varint(length) + head + payload


def encode_subscribe(mid: int, topic_filter: str, qos: int, *, version: int = V5) -> bytes:
    props = b"\x00" if version == V5 else b""
    return _packet(SUBSCRIBE << 4 | 2, _U16.pack(mid) + props + utf8(topic_filter) + bytes([qos]))


def encode_unsubscribe(mid: int, topic_filter: str) -> bytes:
    return _packet(UNSUBSCRIBE << 4 | 2, _U16.pack(mid) + b"\x00" + utf8(topic_filter))


def encode_pubacks(mids: list[int]) -> bytes:
    """PUBACKs (reason: success, so the short form of section 3.4.2.1), in this order."""
    return b"".join(b"\x40\x02" + _U16.pack(mid) for mid in mids)


def encode_disconnect(session_expiry: int | None = None) -> bytes:
    """Normal disconnection; with `session_expiry` (0: the broker ends the session)."""
    if session_expiry is None:
        return b"\xe0\x00"
    return _packet(DISCONNECT << 4, b"\x00" + _props([(0x11, session_expiry)]))


# -- decoder --------------------------------------------------------------------------
def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(4):
        if pos >= end:
            raise MqttProtocolError("truncated", "variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if i == 3:
            break
    raise MqttProtocolError("bad-length", "variable byte integer longer than 4 bytes")


def _read_str(buf: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MqttProtocolError("truncated", what)
    n = buf[pos] << 8 | buf[pos + 1]
    pos += 2
    if pos + n > end:
        raise MqttProtocolError("truncated", what)
    return buf[pos : pos + n], pos + n


def read_properties(buf: bytes, pos: int, end: int) -> tuple[list[tuple[int, object]], int]:
    """The properties at `pos` (length first) -> ([(id, value)], position after them)."""
    length, pos = _read_varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise MqttProtocolError("truncated", "properties")
    out: list[tuple[int, object]] = []
    while pos < stop:
        ident = buf[pos]
        kind = PROPERTY_KINDS.get(ident)
        if kind is None:
            raise MqttProtocolError("bad-property", f"unknown property 0x{ident:02x}")
        pos += 1
        value: object
        if kind in _FIXED:
            size = _FIXED[kind]
            if pos + size > stop:
                raise MqttProtocolError("truncated", f"property 0x{ident:02x}")
            value, pos = int.from_bytes(buf[pos : pos + size], "big"), pos + size
        elif kind == _VARINT:
            value, pos = _read_varint(buf, pos, stop)
        elif kind == _PAIR:
            key, pos = _read_str(buf, pos, stop, "user property")
            val, pos = _read_str(buf, pos, stop, "user property")
            value = (key.decode("utf-8", "replace"), val.decode("utf-8", "replace"))
        else:
            raw, pos = _read_str(buf, pos, stop, f"property 0x{ident:02x}")
            value = raw.decode("utf-8", "replace") if kind == _UTF8 else raw
        out.append((ident, value))
    return out, stop


def _publish(flags: int, buf: bytes, pos: int, end: int, version: int = V5) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MqttProtocolError("bad-qos", "PUBLISH with QoS 3")
    raw_topic, pos = _read_str(buf, pos, end, "topic")
    mid = 0
    if qos:
        if pos + 2 > end:
            raise MqttProtocolError("truncated", "packet identifier")
        mid, pos = buf[pos] << 8 | buf[pos + 1], pos + 2
    user: tuple[tuple[str, str], ...] = ()
    if version != V5:
        pass  # 3.1.1: no properties
    elif pos >= end:
        raise MqttProtocolError("truncated", "PUBLISH properties")
    elif buf[pos] == 0:
        pos += 1  # no properties
    else:
        props, pos = read_properties(buf, pos, end)
        if any(ident == TOPIC_ALIAS for ident, _ in props):
            raise MqttProtocolError("bad-property", "topic alias (we allow none)")
        user = tuple(v for ident, v in props if ident == USER_PROPERTY)  # type: ignore[misc]
    try:
        topic: str | None = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        topic = None
    return Publish(topic, mid, qos, buf[pos:end], user)


def _control(kind: int, buf: bytes, pos: int, end: int, version: int = V5) -> Control:
    """The variable header of a non-PUBLISH packet; the payload of SUBACK/UNSUBACK.
    PUBACK: mid and reason code (0 when the broker left it out, and always under 3.1.1,
    which has none)."""
    if kind == PUBACK:
        if end - pos < 2:
            raise MqttProtocolError("truncated", "PUBACK")
        code = buf[pos + 2] if version == V5 and end - pos > 2 else 0
        return Control(kind, mid=buf[pos] << 8 | buf[pos + 1], code=code)
    if kind == CONNACK:
        if end - pos < 2:
            raise MqttProtocolError("truncated", "CONNACK")
        props, _ = read_properties(buf, pos + 2, end) if end - pos > 2 else ([], end)
        return Control(kind, code=buf[pos + 1], flags=buf[pos] & 1, props=tuple(props))
    if kind in (SUBACK, UNSUBACK):
        if end - pos < 2:
            raise MqttProtocolError("truncated", "SUBACK")
        mid = buf[pos] << 8 | buf[pos + 1]
        props, pos = read_properties(buf, pos + 2, end) if version == V5 else ([], pos + 2)
        return Control(kind, mid=mid, codes=tuple(buf[pos:end]), props=tuple(props))
    if kind == DISCONNECT:
        code = buf[pos] if end > pos else 0
        props = read_properties(buf, pos + 1, end)[0] if end - pos > 1 else []
        return Control(kind, code=code, props=tuple(props))
    if kind in (PINGRESP, AUTH):
        return Control(kind)
    raise MqttProtocolError("bad-packet", f"packet type {kind} is not sent to a client")


class Decoder:
    """`feed(bytes)` then `packets()`: every whole packet received so far, in order;
    a partial packet waits for the next feed. `version` is the connection's protocol
    level (V5 or V311), `max_packet` the largest packet taken."""

    def __init__(self, version: int = V5, max_packet: int = MAX_PACKET) -> None:
        self._buf = b""
        self.version = version
        self.max_packet = max_packet

    @property
    def buffered(self) -> int:
        """Bytes of a partial packet waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def packets(self) -> list[Publish | Control]:
        buf, pos, n = self._buf, 0, len(self._buf)
        out: list[Publish | Control] = []
        while n - pos >= 2:
            first = buf[pos]
            if buf[pos + 1] < 0x80:  # one-byte Remaining Length: the common case
                length, start = buf[pos + 1], pos + 2
            else:
                try:
                    length, start = _read_varint(buf, pos + 1, n)
                except MqttProtocolError as exc:
                    if exc.reason == "truncated":
                        break
                    raise
            if length + start - pos > self.max_packet:
                raise MqttProtocolError("oversize", f"packet of {length} bytes")
            end = start + length
            if end > n:
                break
            kind = first >> 4
            if kind == PUBLISH:
                out.append(_publish(first & 0x0F, buf, start, end, self.version))
            else:
                out.append(_control(kind, buf, start, end, self.version))
            pos = end
        self._buf = buf[pos:]
        return out
