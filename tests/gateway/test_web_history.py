"""The status page's per-node history and its view: per-minute counts, cadence, "quiet",
the sys/ readings of a signed record, and the whitelist of what reaches the browser."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gateway.protocol import RecordPayload, encode_record_payload, sign1
from gateway.queue import NewRecord
from gateway.web import view
from gateway.web.history import MAX_DEVICES, MINUTES, NodeHistory, ota_note, readings


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def signed(seq: int, extra: list[dict[int, Any]]) -> bytes:
    pack = [{-2: "node-1/", -3: 1_800_000_000, 0: "temperature", 1: "Cel", 2: 21.5}, *extra]
    payload = encode_record_payload(RecordPayload(seq, 4, pack, 0))
    return sign1(os.urandom(32), b"node-1", payload)


SYS = [
    {0: "battery", 1: "V", 2: 3.71},
    {0: "sys/heap", 1: "B", 2: 48128},
    {0: "sys/uptime", 1: "s", 2: 3600},
    {0: "sys/reset", 3: "watchdog"},
    {0: "sys/linkerr", 2: 2},
    {0: "sys/dropped", 2: 0},
]


def test_readings_of_a_signed_pack() -> None:
    assert readings(signed(7, SYS)) == {
        "battery_v": 3.71,
        "heap_free": 48128,
        "uptime_s": 3600,
        "reset": "watchdog",
        "link_errors": 2,
        "dropped": 0,
    }
    # odd values from the wire are skipped, never raised on; long texts are cut
    odd = [{0: "sys/heap", 2: [1, 2]}, {0: ["x"], 2: 1}, {0: "sys/reset", 3: "r" * 100}]
    assert readings(signed(8, odd)) == {"reset": "r" * 32}
    assert readings(b"\x00not cose") == {}


def test_stored_counts_per_minute_and_keeps_the_newest_readings() -> None:
    clock = Clock()
    h = NodeHistory(clock)
    older = signed(1, [{0: "sys/heap", 2: 100}])
    newer = signed(2, [{0: "sys/heap", 2: 200}, {0: "battery", 2: 3.5}])
    h.stored([NewRecord("node-1", 2, 0, newer, None), NewRecord("node-1", 1, 0, older, None)])
    d = h.device("node-1")
    assert d["per_minute"][-1] == 2 and sum(d["per_minute"]) == 2
    assert (d["heap_free"], d["battery_v"]) == (200, 3.5)
    clock.t += 60
    h.record("node-1", 3)
    d = h.device("node-1")
    assert d["per_minute"][-2:] == [2, 3] and len(d["per_minute"]) == MINUTES
    clock.t += 30 * 60  # half an hour of silence: the counts move left
    d = h.device("node-1")
    assert d["per_minute"][-32:-30] == [2, 3] and sum(d["per_minute"]) == 5
    clock.t += 2 * 3600  # two hours: all gone
    assert sum(h.device("node-1")["per_minute"]) == 0
    assert h.device("never-seen")["per_minute"] == [0] * MINUTES


def test_cadence_is_learnt_and_a_catch_up_burst_does_not_teach_it() -> None:
    clock = Clock()
    h = NodeHistory(clock)
    h.record("n", 1)
    assert h.device("n")["interval_s"] is None
    for _ in range(3):
        clock.t += 10
        h.record("n", 1)
    assert h.device("n")["interval_s"] == 10.0
    for _ in range(20):  # a buffer flushed after an outage, 20 ms apart
        clock.t += 0.02
        h.record("n", 1)
    assert h.device("n")["interval_s"] == 10.0
    assert h.device("n")["last_record_at"] == clock.t


def test_devices_are_bounded() -> None:
    h = NodeHistory(Clock())
    for i in range(MAX_DEVICES + 10):
        h.record(f"d{i}", 1)
    assert len(h.nodes) == MAX_DEVICES


@pytest.mark.parametrize(
    ("age", "interval", "state"),
    [
        (3.9, 2.0, "ok"),
        (4.1, 2.0, "quiet"),
        (100.0, None, "ok"),
        (121.0, None, "quiet"),
        (None, 2.0, "quiet"),
    ],
)
def test_quiet_after_two_intervals(age: float | None, interval: float | None, state: str) -> None:
    assert view.node_state(age, interval) == state


def test_view_whitelists_and_computes_ages() -> None:
    now = 1_800_000_100.0
    snap = {
        "gateway_id": "gw-1",
        "started_at": now - 3600,
        "uplink": {"url": "mqtts://u:pw@[::1]:8883", "state": "connected"},
        "queue": {"depth": 0, "oldest_age_s": None, "moved_aside": "/var/lib/x.corrupt"},
        "devices": {
            "node-1": {
                "last_seen": now - 5,
                "interval_s": 2.0,
                "per_minute": [0] * 59 + [30],
                "key_file": "/etc/citysense/node.key",
                "firmware": {"not": "a string"},
                "rejects": {"busy": 2},
            }
        },
        "counters": {"publish_refused": {"quota": 3}},
        "operator_key_path": "/etc/citysense/operator.pub",
    }
    page = view.build(snap, now)
    (n,) = page["nodes"]
    assert n["state"] == "quiet" and n["last_seen_age_s"] == 5.0
    assert n["records_hour"] == 30 and n["firmware"] is None and n["rejects"] == {"busy": 2}
    assert "key_file" not in n
    assert page["uplink"]["broker"] == "mqtts://[::1]:8883"
    assert page["uplink"]["refused"] == {"quota": 3}
    assert page["gateway"]["uptime_s"] == 3600.0
    assert page["queue"]["moved_aside"] is True
    assert "/etc/citysense" not in repr(page) and "pw" not in page["uplink"]["broker"]


def test_an_update_outcome_is_kept_from_whichever_record_carried_it() -> None:
    """sys/ota is in one record only: the page must not miss it when newer records came
    in the same commit (a node catching up) or before the next snapshot."""
    h = NodeHistory(Clock())
    note = signed(11, [{0: "sys/fw", 3: "0.2.0"}, {0: "sys/ota", 3: "trial 0.2.0"}])
    later = [NewRecord("node-1", s, 0, signed(s, SYS), None) for s in (12, 13)]
    h.stored([*later, NewRecord("node-1", 11, 0, note, None)])
    assert h.device("node-1")["ota_note"] == "trial 0.2.0"
    h.stored([NewRecord("node-1", 14, 0, signed(14, SYS), None)])  # none: the note stays
    assert h.device("node-1")["ota_note"] == "trial 0.2.0"
    two = [{0: "sys/ota", 3: "staged 0.2.0"}, {0: "sys/ota", 3: "confirmed 0.2.0"}]
    confirmed = signed(15, two)
    h.stored([NewRecord("node-1", 15, 0, confirmed, None)])
    assert h.device("node-1")["ota_note"] == "confirmed 0.2.0"  # the last of the pack
    h.stored([NewRecord("node-1", 9, 0, signed(9, [{0: "sys/ota", 3: "old"}]), None)])
    assert h.device("node-1")["ota_note"] == "confirmed 0.2.0"  # an older seq moves nothing
    # odd values are skipped; long ones cut; a value that merely contains the bytes
    assert ota_note(signed(1, [{0: "sys/ota", 2: 5}, {0: "x", 3: "sys/ota"}])) is None
    assert ota_note(signed(2, [{0: "sys/ota", 3: "r" * 200}])) == "r" * 64


@pytest.mark.parametrize(
    ("dev", "update"),
    [
        ({}, ""),
        ({"ota_note": "rolled-back 0.2.0: reset wdt"}, "rolled-back 0.2.0: reset wdt"),
        ({"trial": True, "ota_note": "staged 0.2.0"}, "on trial"),
        ({"trial": "yes", "ota_note": "confirmed 0.2.0"}, "confirmed 0.2.0"),
        (
            {"transfer": {"bundle": "ab" * 32, "offset": 39172, "size": 78345}, "trial": True},
            "fetching abababab 49 %",
        ),
        ({"transfer": {"bundle": "ab", "offset": 5, "size": 0}}, ""),  # nonsense: not shown
        ({"transfer": {"bundle": "ab", "offset": 9, "size": 4}}, "fetching ab 100 %"),
    ],
)
def test_update_state_on_the_page(dev: dict[str, Any], update: str) -> None:
    n = view.node("node-1", dev, 1_800_000_000.0)
    assert n["update"] == update
    assert n["trial"] in (True, None)
