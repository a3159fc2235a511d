"""gateway/mqttwire.py, the uplink's side: exact bytes out (PUBLISH, CONNECT with a will
and credentials, SUBSCRIBE) under MQTT 5 and 3.1.1, and exact packets in (PUBACK with and
without its reason code, a 3.1.1 SUBACK and PUBLISH). Built by hand from OASIS MQTT 5.0
and 3.1.1, section 3. The cloud ingest's side: tests/cloud/test_mqtt5.py."""

from __future__ import annotations

import pytest

from gateway import mqttwire as wire
from gateway.mqttwire import Control, Decoder, Publish


def test_publish_bytes() -> None:
    topic = wire.check_topic("a/b")
    assert topic == b"\x00\x03a/b"
    assert wire.encode_publish(topic, b"xy", 7) == b"\x32\x0a\x00\x03a/b\x00\x07\x00xy"
    assert wire.encode_publish(topic, b"xy", 7, props=None) == b"\x32\x09\x00\x03a/b\x00\x07xy"
    assert wire.encode_publish(topic, b"", 9, qos=0, retain=True, props=None) == (
        b"\x31\x05\x00\x03a/b"
    )
    props = b"\x03\x03\x00\x01t"  # content type "t"
    big = wire.encode_publish(topic, b"p" * 200, 1, props=props)
    assert big[:3] == b"\x32\xd4\x01"  # 212 as a two-byte Remaining Length
    assert big[3:15] == b"\x00\x03a/b\x00\x01\x03\x03\x00\x01t" and len(big) == 215


@pytest.mark.parametrize("topic", ["", "a/+", "#", "a\x00", "é" * 40000])
def test_topics_no_broker_may_take(topic: str) -> None:
    with pytest.raises(ValueError, match="topic name"):
        wire.check_topic(topic)


def test_connect_v5_with_will_and_credentials() -> None:
    got = wire.encode_connect(
        "id", 30, 0, 32, clean_start=True, will=wire.Will("s", b"o", 1, True),
        username="u", password="p", max_packet=1 << 21,
    )  # fmt: skip
    assert got == (
        b"\x10\x29\x00\x04MQTT\x05\xee\x00\x1e"
        b"\x0d\x11\x00\x00\x00\x00\x21\x00\x20\x27\x00\x20\x00\x00"  # expiry, rx max, size
        b"\x00\x02id\x00\x00\x01s\x00\x01o\x00\x01u\x00\x01p"  # the will: no properties
    )


def test_subscribe_under_both_versions() -> None:
    assert wire.encode_subscribe(3, "a/+", 1) == b"\x82\x09\x00\x03\x00\x00\x03a/+\x01"
    assert wire.encode_subscribe(3, "a/+", 1, version=wire.V311) == (
        b"\x82\x08\x00\x03\x00\x03a/+\x01"
    )


def test_pubacks_in() -> None:
    d = Decoder()
    d.feed(b"\x40\x02\x00\x05" + b"\x40\x03\x00\x06\x87" + b"\x40\x04\x00\x07\x10\x00")
    assert d.packets() == [
        Control(wire.PUBACK, mid=5, code=0),  # the short form: success
        Control(wire.PUBACK, mid=6, code=0x87),
        Control(wire.PUBACK, mid=7, code=0x10),
    ]
    d.feed(b"\x40\x01\x00")
    with pytest.raises(wire.MqttProtocolError, match="truncated"):
        d.packets()


def test_v311_packets_in_have_no_properties() -> None:
    d = Decoder(wire.V311)
    d.feed(b"\x40\x02\x00\x05" + b"\x90\x04\x00\x02\x01\x80" + b"\x32\x07\x00\x01t\x00\x09hi")
    assert d.packets() == [
        Control(wire.PUBACK, mid=5, code=0),
        Control(wire.SUBACK, mid=2, codes=(1, 0x80)),
        Publish("t", 9, 1, b"hi", ()),
    ]


def test_the_decoders_bound_is_its_own() -> None:
    d = Decoder(max_packet=100)
    d.feed(b"\x30\x80\x01")  # 128 bytes announced
    with pytest.raises(wire.MqttProtocolError, match="oversize"):
        d.packets()
