"""cloud/records.py: every delivery verified with the gateway's protocol core, SenML resolved."""

from __future__ import annotations

import os

import pytest
from gwsupport import Node, make_node

from cloud.records import Delivery, Refused, check
from gateway.protocol import encode_record_payload, sign1
from gateway.protocol.record import RecordPayload
from gateway.registry import Device


class Keys(dict[str, Device]):
    pass


def keys_for(*nodes: Node, revoked: tuple[str, ...] = ()) -> Keys:
    return Keys(
        {n.device_id: Device(n.device_id, n.public_key, n.device_id not in revoked) for n in nodes}
    )


def signed(node: Node, seq: int, pack: list[dict[int, object]], time_base: int = 0) -> bytes:
    payload = encode_record_payload(RecordPayload(seq, 3, pack, time_base))  # type: ignore[arg-type]
    return sign1(node.seed, node.device_id.encode(), payload)


def topic(device: str, gw: str = "gw-1") -> str:
    return f"citysense/v1/{gw}/{device}/records"


def test_senml_base_fields_carry_forward_rfc8428() -> None:
    n = make_node("dev-a")
    pack: list[dict[int, object]] = [
        {-2: "dev-a/", -3: 1700000000, -4: "Cel", 0: "temp", 2: 21.5, 6: 1},
        {0: "temp", 2: 21.75, 6: 2},
        {0: "hum", 1: "%RH", 2: 40},
        {-2: "sys/", -3: 1700000100, -4: None, 0: "ok", 4: True},
        {0: "state", 3: "idle", 6: 0.5},
    ]
    pack[3].pop(-4)
    a = check(Delivery(topic("dev-a"), signed(n, 7, pack), 1.5, 1700000200123), keys_for(n))
    assert (a.device_id, a.seq, a.boot, a.gateway_id, a.gw_received_ms) == (
        "dev-a",
        7,
        3,
        "gw-1",
        1700000200123,
    )
    got = [(r.name, r.time, r.unit, r.value, r.string, r.boolean) for r in a.readings]
    assert got == [
        ("dev-a/temp", 1700000001.0, "Cel", 21.5, None, None),
        ("dev-a/temp", 1700000002.0, "Cel", 21.75, None, None),
        ("dev-a/hum", 1700000000.0, "%RH", 40.0, None, None),
        ("sys/ok", 1700000100.0, "Cel", None, None, True),
        ("sys/state", 1700000100.5, "Cel", None, "idle", None),
    ]
    assert a.seen_at == 1700000200.123


def test_boot_relative_times_take_the_gateways_resolved_time() -> None:
    n = make_node("dev-b")
    pack: list[dict[int, object]] = [{-2: "dev-b/", 0: "t", 2: 1, 6: 10}, {0: "t", 2: 2, 6: 20}]
    data = signed(n, 1, pack, time_base=1)
    a = check(
        Delivery(topic("dev-b"), data, 0.0, None, "1700000010.000,1700000020.500"), keys_for(n)
    )
    assert [(r.time, r.boot_time) for r in a.readings] == [
        (1700000010.0, 10.0),
        (1700000020.5, 20.0),
    ]
    for bad in (None, "", "1,2,3", "1,x", "nan,1"):
        a = check(Delivery(topic("dev-b"), data, 0.0, None, bad), keys_for(n))
        assert [(r.time, r.boot_time) for r in a.readings] == [(None, 10.0), (None, 20.0)]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged", "bad-signature"),
        ("unknown", "unknown-device"),
        ("revoked", "revoked"),
        ("other-topic", "topic-mismatch"),
        ("garbage", "malformed"),
        ("truncated", "malformed"),
        ("bad-topic", "bad-topic"),
        ("bad-senml", "malformed"),
        ("nul-name", "malformed"),
        ("oversize", "oversize"),
    ],
)
def test_refusals_name_their_reason(case: str, reason: str) -> None:
    n, m, other = make_node("dev-c"), make_node("dev-m"), make_node("dev-x")
    keys = keys_for(n, m, revoked=("dev-m",))
    t, data = topic("dev-c"), n.record(5)
    if case == "forged":
        data = Node("dev-c", os.urandom(32)).record(5)
    elif case == "unknown":
        t, data = topic("dev-x"), other.record(5)
    elif case == "revoked":
        t, data = topic("dev-m"), m.record(5)
    elif case == "other-topic":
        t = topic("dev-m")
    elif case == "garbage":
        data = b"\xd2\x84hello"
    elif case == "truncated":
        data = data[:-1]
    elif case == "bad-topic":
        t = "citysense/v1/gw-1/dev-c/records/extra"
    elif case == "bad-senml":
        data = signed(n, 5, [{0: "temp", 2: "not a number"}])
    elif case == "oversize":
        data = signed(n, 5, [{0: "x" * 200, 2: i} for i in range(40)])
    elif case == "nul-name":
        data = signed(n, 5, [{0: "te\x00mp", 2: 1}])
    with pytest.raises(Refused) as info:
        check(Delivery(t, data, 0.0), keys)
    assert info.value.reason == reason
    assert info.value.device_id == ("" if case == "bad-topic" else t.split("/")[3])
