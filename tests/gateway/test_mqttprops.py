"""record_properties() packs exactly what paho's own Properties packs (that a real broker
hands them to a subscriber is asserted end to end in test_mqtt_tls.py)."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqttprops import record_properties
from gateway.uplink import CONTENT_TYPE


def _paho(content_type: str, user: list[tuple[str, str]]) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    props.UserProperty = user
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


def test_same_bytes_as_paho() -> None:
    cases = [
        (CONTENT_TYPE, [("gw-received-ms", "1764047000123")]),
        (
            CONTENT_TYPE,
            [("gw-received-ms", "1764047000123"), ("resolved-time", "1764046990.000,1.500")],
        ),
        ("x", []),
        ("ü€𝄞", [("k" * 200, "v" * 300)]),  # multi-byte UTF-8; a two-byte length prefix
        (CONTENT_TYPE, [("a", str(i)) for i in range(40)]),  # body > 127: a 2-byte VBI
    ]
    for content_type, user in cases:
        assert record_properties(content_type, user) == _paho(content_type, user)


def test_decodable_by_paho() -> None:
    back = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    back.unpack(record_properties(CONTENT_TYPE, [("gw-received-ms", "5")]))  # type: ignore[no-untyped-call]
    assert back.ContentType == CONTENT_TYPE
    assert back.UserProperty == [("gw-received-ms", "5")]
