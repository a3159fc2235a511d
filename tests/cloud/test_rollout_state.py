"""The rollout's rules (cloud/rollout_state.py): waves, forward-only moves, what a sys/ota
reading means, when a rollout halts or is done; the state file round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud import rollout_state as rs

BUNDLE = "ab" * 32


def rollout(n: int, canary: int = 0, halt: bool = False) -> rs.Rollout:
    devices = [(f"d{i}", "gw") for i in range(n)]
    return rs.Rollout("r1", "1.4.0", BUNDLE, 7, canary, halt, 600, 0,
                      devices=rs.plan(devices, canary, halt))  # fmt: skip


@pytest.mark.parametrize(
    ("n", "canary", "halt", "waves"),
    [
        (5, 0, False, [1, 1, 1, 1, 1]),
        (5, 2, False, [0, 0, 1, 1, 1]),
        (5, 2, True, [0, 0, 1, 1, 2]),
        (3, 0, True, [1, 2, 3]),
        (2, 2, False, [0, 0]),
    ],
)
def test_plan_waves(n: int, canary: int, halt: bool, waves: list[int]) -> None:
    assert [r.wave for r in rollout(n, canary, halt).devices] == waves


def test_readings_move_forward_only_and_match_the_release() -> None:
    r = rollout(1)
    d = r.devices[0]
    assert not r.reading(d, "staged 1.4.0", 1)  # not sent yet: from before the rollout
    r2 = rollout(1)
    d = r2.devices[0]
    assert r2.move(d, "sent", "command 5 sent", 1)
    steps = [
        ("confirmed 1.3.0", False, "sent"),  # another release's outcome moves nothing
        ("refused cdcdcdcdcdcdcdcd: old-seq", False, "sent"),  # another bundle's
        ("staged 1.4.0", True, "staged"),
        ("staged 1.4.0", False, "staged"),  # the same again
        ("trial 1.4.0", True, "trial"),
        ("garbage", False, "trial"),
        ("confirmed 1.4.0", True, "confirmed"),
        ("rolled-back 1.4.0: import-error", False, "confirmed"),  # final stays
    ]
    for text, moved, state in steps:
        assert (r2.reading(d, text, 2), d.state) == (moved, state), text
    assert d.detail == "confirmed 1.4.0"


def test_refused_and_rolled_back_fail() -> None:
    r = rollout(2)
    a, b = r.devices
    r.move(a, "sent", "", 1)
    r.move(b, "accepted", "", 1)
    assert r.reading(a, f"refused {BUNDLE[:16]}: bad-signature", 2) and a.state == "failed"
    assert r.reading(b, "rolled-back 1.4.0: no-ack", 2) and b.state == "failed"
    assert b.detail == "rolled-back 1.4.0: no-ack"


def test_canary_failure_halts_and_nothing_more_is_sent() -> None:
    r = rollout(4, canary=1)
    assert [d.device for d in r.to_send()] == ["d0"]
    r.move(r.devices[0], "failed", "rolled-back 1.4.0: watchdog", 1)
    r.judge(2)
    assert (r.state, r.reason) == ("halted", "canary d0 failed: rolled-back 1.4.0: watchdog")
    assert r.to_send() == []
    assert [d.detail for d in r.devices[1:]] == ["not sent: the rollout halted"] * 3


def test_waves_wait_for_the_previous_one() -> None:
    r = rollout(3, canary=1)
    r.move(r.devices[0], "sent", "", 1)
    assert r.to_send() == []  # the canary is not final yet
    r.move(r.devices[0], "confirmed", "confirmed 1.4.0", 2)
    r.judge(3)
    assert r.state == "running" and [d.device for d in r.to_send()] == ["d1", "d2"]
    r.move(r.devices[1], "failed", "refused by the gateway: no-route", 4)
    r.move(r.devices[2], "confirmed", "", 4)
    r.judge(5)  # not a canary, no halt_on_failure: done, with a failure
    assert r.state == "done" and r.counts() == {"confirmed": 2, "failed": 1}


def test_halt_on_failure_stops_later_waves() -> None:
    r = rollout(3, halt=True)
    r.move(r.devices[0], "confirmed", "", 1)
    assert [d.device for d in r.to_send()] == ["d1"]
    r.move(r.devices[1], "failed", "refused by the device: no-bundle", 2)
    r.judge(3)
    assert (r.state, r.reason) == ("halted", "device d1 failed: refused by the device: no-bundle")
    assert r.devices[2].state == "pending"


def test_current_devices_are_final(tmp_path: Path) -> None:
    r = rollout(2, canary=1)
    r.move(r.devices[0], "current", "already runs 1.4.0", 1)
    assert [d.device for d in r.to_send()] == ["d1"]
    rs.save(tmp_path, r)
    again = rs.load(tmp_path)
    assert again == r
    (tmp_path / rs.FILE).write_text("{")
    with pytest.raises(rs.StateFileError):
        rs.load(tmp_path)
