"""The rollout's reads of the cloud store on SQLite and a real PostgreSQL: the device's
gateway (its newest record), its sys/ota and sys/fw readings in seq order, and a refresh
moving a rollout on from records stored the ingest's way (verified, then committed)."""

from __future__ import annotations

from gwsupport import make_node
from test_store import pg, store  # noqa: F401  (the SQLite/PostgreSQL fixtures)

from cloud import rollout
from cloud import rollout_state as rs
from cloud.records import Accepted, Delivery, check
from cloud.store import Store
from gateway.protocol import RecordPayload, encode_record_payload, sign1
from gateway.registry import Device

NODE = make_node("dev-7")
KEYS = {NODE.device_id: Device(NODE.device_id, NODE.public_key, True)}
BUNDLE = "cd" * 32


def rec(seq: int, gateway: str, **strings: str) -> Accepted:
    pack = [{-2: "dev-7/", -3: 1_700_000_000.0 + seq, 0: "temp", 2: 20.0}]
    pack += [{0: k.replace("_", "/"), 3: v} for k, v in strings.items()]
    body = sign1(NODE.seed, b"dev-7", encode_record_payload(RecordPayload(seq, 1, pack, 0)))
    return check(Delivery(f"citysense/v1/{gateway}/dev-7/records", body, 1.0), KEYS)


def test_gateway_readings_and_refresh(store: Store) -> None:  # noqa: F811
    assert rollout.newest_record(store, "dev-7") is None
    store.commit([rec(1, "gw-a", sys_fw="1.3.0"), rec(2, "gw-b")], [], "t")
    assert rollout.newest_record(store, "dev-7") == ("gw-b", 2)

    r = rs.Rollout("r1", "1.4.0", BUNDLE, 4, 0, False, 600, 0,
                   devices=rs.plan([("dev-7", "gw-b")], 0, False))  # fmt: skip
    run = r.devices[0]
    r.move(run, "sent", "command 1 sent", 1)
    run.since_seq = 2
    store.commit(
        [rec(3, "gw-b", sys_ota="staged 1.4.0", sys_fw="1.3.0"),
         rec(5, "gw-b", sys_ota="confirmed 1.4.0", sys_fw="1.4.0"),
         rec(4, "gw-b", sys_ota="trial 1.4.0", sys_fw="1.4.0")],
        [], "t",
    )  # fmt: skip
    assert rollout.readings(store, "dev-7", 2) == [
        ("ota", "staged 1.4.0"), ("fw", "1.3.0"),
        ("ota", "trial 1.4.0"), ("fw", "1.4.0"),
        ("ota", "confirmed 1.4.0"), ("fw", "1.4.0"),
    ]  # fmt: skip
    assert rollout.readings(store, "dev-7", 0)[:1] == [("fw", "1.3.0")]
    assert rollout.refresh(r, store, 10)
    assert (run.state, run.detail, run.fw) == ("confirmed", "confirmed 1.4.0", "1.4.0")
    assert not rollout.refresh(r, store, 11)  # final: nothing more moves it
