"""gateway/mqttwire.py: exact bytes out, exact packets in (whole, byte by byte, split), and
every malformed input refused with its reason. Packets built by hand from OASIS MQTT 5.0
section 3; the encoders are also judged by a real Mosquitto in test_ingest.py."""

from __future__ import annotations

import random

import pytest

from gateway import mqttwire as mqtt5
from gateway.mqttwire import Control, Decoder, MqttProtocolError, Publish


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def _publish(
    topic: bytes, mid: int | None, props: bytes, payload: bytes, dup: bool = False
) -> bytes:
    qos = 1 if mid is not None else 0
    body = _str(topic) + (mid.to_bytes(2, "big") if mid is not None else b"")
    body += bytes([len(props)]) + props + payload
    first = 0x30 | (qos << 1) | (0x08 if dup else 0)
    return bytes([first]) + mqtt5.varint(len(body)) + body


USER = b"\x26" + _str(b"gw-received-ms") + _str(b"1764640000123")
STREAM = [
    _publish(b"citysense/v1/gw-1/dev-1/records", 7, USER, b"\xd2\x84abc"),
    _publish(b"t/qos0", None, b"", b"x" * 300),  # two-byte Remaining Length
    b"\xd0\x00",  # PINGRESP
    _publish(b"t/\xff", 65535, b"\x01\x01" + USER + b"\x0b\x81\x01", b"", dup=True),
]
EXPECTED: list[Publish | Control] = [
    Publish(
        "citysense/v1/gw-1/dev-1/records",
        7,
        1,
        b"\xd2\x84abc",
        (("gw-received-ms", "1764640000123"),),
    ),
    Publish("t/qos0", 0, 0, b"x" * 300, ()),
    Control(mqtt5.PINGRESP),
    Publish(None, 65535, 1, b"", (("gw-received-ms", "1764640000123"),)),
]


def test_encoders_exact_bytes() -> None:
    assert mqtt5.encode_connect("citysense-ingest-a", 30, 3600, 1000) == (
        b"\x10\x2c\x00\x04MQTT\x05\x00\x00\x1e"
        b"\x0d\x11\x00\x00\x0e\x10\x21\x03\xe8\x27\x00\x10\x00\x00"
        b"\x00\x12citysense-ingest-a"
    )
    assert mqtt5.encode_subscribe(1, "$share/g/a/+", 1) == (
        b"\x82\x12\x00\x01\x00\x00\x0c$share/g/a/+\x01"
    )
    assert mqtt5.encode_unsubscribe(2, "a/b") == b"\xa2\x08\x00\x02\x00\x00\x03a/b"
    assert mqtt5.encode_pubacks([1, 258, 65535]) == (
        b"\x40\x02\x00\x01\x40\x02\x01\x02\x40\x02\xff\xff"
    )
    assert mqtt5.encode_disconnect() == b"\xe0\x00"
    assert mqtt5.encode_disconnect(0) == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"
    assert mqtt5.varint(127) == b"\x7f"
    assert mqtt5.varint(128) == b"\x80\x01"
    assert mqtt5.varint(268_435_455) == b"\xff\xff\xff\x7f"


def test_decoder_whole_bytewise_and_random_splits() -> None:
    data = b"".join(STREAM)
    whole = Decoder()
    whole.feed(data)
    assert whole.packets() == EXPECTED
    bytewise, got = Decoder(), []
    for i in range(len(data)):
        bytewise.feed(data[i : i + 1])
        got += bytewise.packets()
    assert got == EXPECTED
    rng = random.Random(5)
    for _ in range(50):
        dec, got, pos = Decoder(), [], 0
        while pos < len(data):
            step = rng.randint(1, 64)
            dec.feed(data[pos : pos + step])
            pos += step
            got += dec.packets()
        assert got == EXPECTED


def test_control_packets() -> None:
    dec = Decoder()
    connack = b"\x20\x06\x01\x00\x03\x13\x00\x3c"  # session present, server keep alive 60
    suback = b"\x90\x04\x00\x01\x00\x01"
    unsuback = b"\xb0\x04\x00\x02\x00\x00"
    disconnect = b"\xe0\x0a\x8b\x08\x1f\x00\x05gone!"  # server shutting down, reason string
    dec.feed(connack + suback + unsuback + disconnect + b"\x20\x02\x00\x87")
    assert dec.packets() == [
        Control(mqtt5.CONNACK, code=0, flags=1, props=((0x13, 60),)),
        Control(mqtt5.SUBACK, mid=1, codes=(1,)),
        Control(mqtt5.UNSUBACK, mid=2, codes=(0,)),
        Control(mqtt5.DISCONNECT, code=0x8B, props=((0x1F, "gone!"),)),
        Control(mqtt5.CONNACK, code=0x87, flags=0),
    ]
    assert Control(mqtt5.CONNACK, props=((0x13, 60),)).prop(mqtt5.SERVER_KEEP_ALIVE) == 60


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "bad-length"),  # Remaining Length of five bytes
        (b"\x30\x80\x80\x80\x01", "oversize"),  # 2 MiB announced
        (b"\x36\x02\x00\x00", "bad-qos"),
        (_publish(b"t", 1, b"\x23\x00\x01", b""), "bad-property"),  # a topic alias
        (_publish(b"t", 1, b"\x7f\x00", b""), "bad-property"),  # no such property
        (_publish(b"t", 1, b"\x26\x00\x05ab", b""), "truncated"),  # user property cut
        (b"\x32\x03\x00\x05t", "truncated"),  # topic longer than the packet
        (b"\x32\x05\x00\x01t\x00\x01", "truncated"),  # no properties length
        (b"\x80\x02\x00\x01", "bad-packet"),  # a SUBSCRIBE sent to a client
    ],
)
def test_malformed_refused_with_reason(data: bytes, reason: str) -> None:
    dec = Decoder()
    dec.feed(data)
    with pytest.raises(MqttProtocolError) as err:
        dec.packets()
    assert err.value.reason == reason


def test_partial_packet_waits_and_nothing_is_lost() -> None:
    dec = Decoder()
    dec.feed(STREAM[0][:-1])
    assert dec.packets() == []
    dec.feed(STREAM[0][-1:] + STREAM[1][:3])
    assert dec.packets() == EXPECTED[:1]
    dec.feed(STREAM[1][3:])
    assert dec.packets() == EXPECTED[1:2]
