"""Firmware updates end to end: the real firmware in the emulator, the real gateway agent
with its bundle cache, real Mosquitto. Outcomes are read where the cloud reads them: the
nodes' signed records (sys/fw, sys/ota) as the broker delivered them."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nodeproc import compiled_lib
from otasupport import Stack, lib_files, make_bundle, patched_lib

from citysense_formats import bundle
from citysense_lab.procs import wait_until

OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("ota"))
    try:
        s.start_gateway()
        yield s
    finally:
        s.close()


def test_update_command_to_confirmed_with_records_flowing(stack: Stack) -> None:
    stack.add_node("ota-a", "02aa00000001")
    wait_until(lambda: stack.fw("ota-a"), 60, "a first record of ota-a")
    assert stack.fw("ota-a")[0] == "0.1.0"
    data = make_bundle("0.2.0", 2)
    (stack.d / "b2.csb").write_bytes(data)
    bid = bundle.bundle_id(data)
    # the cloud path: the bundle in the gateway's cache, then a signed `update` command
    res = stack.push(stack.d / "b2.csb", "nobody-yet")
    assert res.returncode == 0, res.stderr
    stack.wait_clock("ota-a")
    cid = stack.send_update("ota-a", bid)
    wait_until(lambda: any(r[1] == cid for r in stack.results("ota-a")), 60, "the result")
    result = next(r for r in stack.results("ota-a") if r[1] == cid)
    assert (result[2], result[3]) == (True, f"staging bundle={bid[:16]}")
    stack.wait_note("ota-a", "staged 0.2.0", 120)
    stack.wait_note("ota-a", "trial 0.2.0", 60)
    _sampled_during_transfer(stack, "ota-a")
    stack.wait_note("ota-a", "confirmed 0.2.0", 60)
    assert "0.2.0" in stack.fw("ota-a")
    flash = stack.flash("ota-a")
    assert (flash / "ota" / "boot").read_text() == "s2 - - 0\n"
    assert sorted(p.name for p in (flash / "apps").iterdir()) == ["s2"]
    before = len(stack.records("ota-a"))
    wait_until(lambda: len(stack.records("ota-a")) > before + 2, 30, "records after confirm")
    _no_record_lost(stack, "ota-a")
    stack.retire("ota-a")


SENSED = ("temp", "pressure", "humidity", "battery")


def _sensed(readings: dict[str, list[Any]]) -> bool:
    """A record with real readings from every sensor, not only sys/ ones."""
    return all(readings.get(k) for k in SENSED)


def _sampled_during_transfer(stack: Stack, device: str) -> None:
    """The boot that fetched the bundle (the one before the trial's: the staging boot
    makes no record) sampled normally: records with real readings, not only sys/ ones."""
    boots = stack.boots(device)
    trial = next(b for b, r in boots if "trial 0.2.0" in r.get("sys/ota", []))
    during = [r for b, r in boots if b == trial - 1]
    sensed = [r for r in during if _sensed(r)]
    assert len(sensed) >= 2, f"records of the transfer boot: {during}"
    for r in sensed:
        assert all(isinstance(v, float | int) for k in SENSED for v in r[k]), r


def _cache_raw(stack: Stack, data: bytes) -> str:
    """Put bytes in the gateway's bundle cache as they are (a card gone bad, or a
    gateway that lies): the node is the judge of what it installs."""
    bid = bundle.bundle_id(data)
    cache = stack.d / "state" / "ota"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{bid}.csb").write_bytes(data)
    return bid


def _corrupt(data: bytes) -> bytes:
    b = bytearray(data)
    b[-1] ^= 0x55  # the last file's last byte: its SHA-256 no longer matches
    return bytes(b)


REFUSALS = [
    ("ota-r1", lambda: make_bundle("0.9.0", 9, key=OTHER_KEY), "bad-signature"),
    ("ota-r2", lambda: _corrupt(make_bundle("0.9.1", 9)), "hash-mismatch"),
    ("ota-r3", lambda: make_bundle("0.0.9", 0), "old-seq 0 <= 0"),
    ("ota-r4", lambda: make_bundle("0.9.3", 9)[:-100], "truncated"),
    ("ota-r5", lambda: make_bundle("0.9.4", 9, hardware="esp8266"), "other-hardware"),
]


def test_refusals_keep_the_old_app(stack: Stack) -> None:
    """Each bad bundle is fetched, refused with its reason in sys/ota, and the node goes
    on with its old app; an expired `update` command is refused before any transfer."""
    for i, (device, _, _) in enumerate(REFUSALS):
        stack.add_node(device, f"02bb0000000{i + 1}")
    stack.add_node("ota-r6", "02bb00000006")
    for device, _, _ in [*REFUSALS, ("ota-r6", None, None)]:
        wait_until(lambda d=device: stack.fw(d), 60, f"a first record of {device}")
    sent = {}
    for device, build, _ in REFUSALS:
        sent[device] = _cache_raw(stack, build())
        stack.wait_clock(device)
        stack.send_update(device, sent[device])
    cid = stack.send_update("ota-r6", bundle.bundle_id(make_bundle("0.9.5", 9)), -1000)
    for device, _, reason in REFUSALS:
        note = stack.wait_note(device, "refused", 120)
        assert note == f"refused {sent[device][:16]}: {reason}"
        assert stack.fw(device)[-1] == "0.1.0"
        assert not (stack.flash(device) / "ota" / "boot").exists()  # never switched
        assert not (stack.flash(device) / "apps").exists() or not any(
            (stack.flash(device) / "apps").iterdir()
        )
    # the gateway refuses it before the line (the node would too: commands.py, check 4)
    wait_until(lambda: stack.refusals("ota-r6"), 30, "the gateway's refusal")
    assert stack.refusals("ota-r6") == [
        {"gateway": "gw-ota", "command_id": cid, "refused": "expired",
         "detail": "past its expiry by the gateway's clock: send it again"}
    ]  # fmt: skip
    assert not (stack.flash("ota-r6") / "ota").exists()
    assert stack.fw("ota-r6")[-1] == "0.1.0"
    for device, _, _ in [*REFUSALS, ("ota-r6", None, None)]:
        stack.retire(device)


def _trace(stack: Stack, device: str, ev: str) -> list[dict[str, Any]]:
    """The node's `ev` events from its emulator's trace (JSON lines in its log)."""
    prefix = f'{{"ev": "{ev}"'
    return [
        json.loads(line)
        for line in (stack.d / f"{device}.log").read_text().splitlines()
        if line.startswith(prefix)
    ]


def _no_record_lost(stack: Stack, device: str) -> None:
    """Every record the node sealed (its emulator's trace) reached the broker."""
    made = {e["seq"] for e in _trace(stack, device, "record")}
    wait_until(lambda: made <= {s for s, _ in stack.records(device)}, 60, f"{device}'s records")


def test_rollback_of_an_app_that_raises_at_import_and_one_never_confirmed(
    stack: Stack,
) -> None:
    work = stack.d
    bad = patched_lib(work, "raises", lambda s: 'raise ImportError("a broken build")\n' + s)
    mute = patched_lib(
        work, "mute", lambda s: s.replace("            self.sample()\n", "            pass\n")
    )
    stack.add_node("ota-b1", "02cc00000001")
    stack.add_node("ota-b2", "02cc00000002")
    (stack.flash("ota-b2") / "ota").mkdir()
    (stack.flash("ota-b2") / "ota" / "trial_s").write_text("8")  # the bound, shortened
    for device in ("ota-b1", "ota-b2"):
        wait_until(lambda d=device: stack.fw(d), 60, f"a first record of {device}")
        stack.wait_clock(device)
    stack.send_update("ota-b1", _cache_raw(stack, make_bundle("0.5.0-raises", 5, lib=bad)))
    stack.send_update("ota-b2", _cache_raw(stack, make_bundle("0.5.1-mute", 5, lib=mute)))
    assert stack.wait_note("ota-b1", "rolled-back", 120) == (
        "rolled-back 0.5.0-raises: import-error"
    )
    assert stack.wait_note("ota-b2", "rolled-back", 120) == (
        "rolled-back 0.5.1-mute: unconfirmed after 8 s"
    )
    for device in ("ota-b1", "ota-b2"):
        assert stack.fw(device)[-1] == "0.1.0"
        boot = (stack.flash(device) / "ota" / "boot").read_text()
        assert boot == "- - - 0\n"
        assert (stack.flash(device) / "ota" / "failed").read_text() == "5"
        n = len(stack.records(device))
        wait_until(lambda d=device, k=n: len(stack.records(d)) > k + 1, 30, "records after")
        _no_record_lost(stack, device)
        stack.retire(device)


def test_a_cut_after_the_switch_before_its_leftovers_are_gone_still_runs_the_trial(
    stack: Stack,
) -> None:
    """The staging boot writes the switch (pointer: trial, tries 0), then removes the
    bundle file and `ota/ready`. Power cut between the two: the next boot must run the
    trial and confirm it. It used to see `ota/ready`, find the switch written, drop the
    leftovers and reset: that reset killed the trial (tries 1) and the node rolled back
    a good release ("rolled-back 0.2.0: reset soft"), a random outcome of the power-cut
    test below."""
    stack.add_node("ota-k1", "02cc00000001", start=False)
    flash = stack.flash("ota-k1")
    data = make_bundle("0.2.0", 2)
    slot = flash / "apps" / "s2"
    for rel, blob in lib_files(compiled_lib()):
        (slot / rel).parent.mkdir(parents=True, exist_ok=True)
        (slot / rel).write_bytes(blob)
    (slot / ".ota").write_text("0.2.0 2\n")
    ota = flash / "ota"
    ota.mkdir(exist_ok=True)
    (ota / "boot").write_text("- - s2 0\n")  # the switch, as ota.apply writes it
    (ota / "new.csb").write_bytes(data)  # what apply removes after the switch
    (ota / "ready").write_text(bundle.bundle_id(data) + "\n")
    stack.start_node("ota-k1", "02cc00000001")
    assert stack.wait_note("ota-k1", "confirmed", 90) == "confirmed 0.2.0"
    assert stack.ota_notes("ota-k1") == ["trial 0.2.0", "confirmed 0.2.0"]
    assert (ota / "boot").read_text() == "s2 - - 0\n"
    assert not (ota / "ready").exists() and not (ota / "new.csb").exists()
    assert not (ota / "failed").exists()
    _no_record_lost(stack, "ota-k1")
    stack.retire("ota-k1")


LANES, RUNS = 4, 5  # 20 power cuts, four nodes at a time (as tests/node/test_powercut.py)


def _powercut_run(stack: Stack, device: str, uid: str, bid: str, delay: float) -> str:
    stack.add_node(device, uid)
    wait_until(lambda: stack.fw(device), 60, f"a first record of {device}", interval=0.3)
    stack.wait_clock(device)
    cid = stack.send_update(device, bid)
    wait_until(lambda: any(r[1] == cid for r in stack.results(device)), 60, "result", 0.3)
    time.sleep(delay)  # into the transfer, the staging or the trial
    stack.cut_power(device)
    stack.start_node(device, uid)
    outcome = _end(stack, device)
    assert set(stack.fw(device)) <= {"0.1.0", "0.2.0"}  # always a valid app
    _no_record_lost(stack, device)
    stack.retire(device)
    return outcome


def _powercut_lane(stack: Stack, lane: int, bid: str) -> list[str]:
    rng = random.Random(1500 + lane)
    return [
        _powercut_run(stack, f"ota-p{lane}{run}", f"02dd000000{lane}{run}", bid,
                      rng.uniform(0.0, 9.0))
        for run in range(RUNS)
    ]  # fmt: skip


def _end(stack: Stack, device: str) -> str:
    """How the update ended: confirmed, or rolled back (a cut during the trial boot)."""
    done = ("confirmed 0.2.0", "rolled-back 0.2.0: reset power-on")
    try:
        wait_until(lambda: any(n in done for n in stack.ota_notes(device)), 150, device, 0.3)
    except AssertionError as exc:  # say where it stopped: the node's sys/ota notes so far
        raise AssertionError(f"{exc}: sys/ota {stack.ota_notes(device)}") from None
    return next(n for n in stack.ota_notes(device) if n in done)


def test_power_cuts_during_transfer_and_switch(stack: Stack) -> None:
    data = make_bundle("0.2.0", 2)
    (stack.d / "p.csb").write_bytes(data)
    assert stack.push(stack.d / "p.csb", "nobody").returncode == 0  # cached; the lanes use commands
    with ThreadPoolExecutor(LANES) as pool:
        bid = bundle.bundle_id(data)
        lanes = list(pool.map(lambda i: _powercut_lane(stack, i, bid), range(LANES)))
    outcomes = [o for lane in lanes for o in lane]
    assert len(outcomes) == LANES * RUNS
    assert "confirmed 0.2.0" in outcomes  # most cuts fall before the trial: it resumes


def test_technician_push_offers_and_the_node_updates(stack: Stack) -> None:
    """`citysense-gateway ota push FILE --device D` with the service running: the bundle
    is cached, offered on the node's line at once (OTA_OFFER), fetched, and confirmed."""
    stack.add_node("ota-o1", "02ff00000001")
    wait_until(lambda: stack.fw("ota-o1"), 60, "a first record of ota-o1")
    data = make_bundle("0.2.0", 2)
    (stack.d / "o.csb").write_bytes(data)
    res = stack.push(stack.d / "o.csb", "ota-o1")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        f"ota push ota-o1: bundle {bundle.bundle_id(data)[:16]} version 0.2.0 seq 2"
        f" ({len(data)} bytes) cached and offered via the running service, sent now\n"
    )
    assert stack.wait_note("ota-o1", "confirmed", 120) == "confirmed 0.2.0"
    assert [n for n in stack.ota_notes("ota-o1")] == [
        "staged 0.2.0", "trial 0.2.0", "confirmed 0.2.0"
    ]  # fmt: skip
    _no_record_lost(stack, "ota-o1")
    stack.retire("ota-o1")


def test_a_stalled_transfer_is_given_up_and_the_node_keeps_sampling(stack: Stack) -> None:
    """The gateway gone during a transfer: no chunk for `ota/stall_s` seconds, and the
    node gives the transfer up (`refused <id16>: stalled`, the partial bundle deleted)
    while it goes on sampling: records with real readings during that boot and after.
    After a boot of its own, the node's flash is made what an `update` command leaves
    (the bundle named in `ota/stage`, a prefix of it fetched); the gateway is stopped
    before the node boots again, so no chunk can come, and started again to deliver
    what the node buffered meanwhile."""
    data = make_bundle("0.2.0", 2)
    bid = bundle.bundle_id(data)
    stack.add_node("ota-s1", "02ff00000002")
    wait_until(lambda: stack.fw("ota-s1"), 60, "a first record of ota-s1")
    stack.cut_power("ota-s1")
    first = {b for b, _ in stack.boots("ota-s1")}
    ota = stack.flash("ota-s1") / "ota"
    ota.mkdir()
    (ota / "stall_s").write_text("4")  # the bound (120 s), shortened
    (ota / "stage").write_text(bid)
    (ota / "new.csb").write_bytes(data[:1024])
    stack.stop_gateway()
    try:
        stack.start_node("ota-s1", "02ff00000002")
        wait_until((ota / "refused").exists, 60, "the stalled transfer given up")
        time.sleep(3)  # the boot after it samples too
    finally:
        stack.start_gateway()
    assert (ota / "refused").read_text() == bid
    assert not (ota / "stage").exists() and not (ota / "new.csb").exists()
    assert stack.wait_note("ota-s1", "refused", 60) == f"refused {bid[:16]}: stalled"
    stalled = max(first) + 1  # the boot whose transfer stalled
    for which in (lambda b: b == stalled, lambda b: b > stalled):
        wait_until(
            lambda w=which: sum(w(b) and _sensed(r) for b, r in stack.boots("ota-s1")) >= 2,
            30,
            "records with real readings",
        )
    _no_record_lost(stack, "ota-s1")
    # and none skipped: a transfer boot's heap holds every record the node seals (a
    # MemoryError while sealing would be a seq gap, an "ev": "dropped" line, sys/dropped)
    assert _trace(stack, "ota-s1", "dropped") == []
    dropped = [v for _, r in stack.records("ota-s1") for v in r.get("sys/dropped", [])]
    assert dropped and set(dropped) == {0}
    stack.retire("ota-s1")
