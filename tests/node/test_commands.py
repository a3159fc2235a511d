"""COMMANDs over the link: valid ones applied, forged / replayed / unknown / bound to
another device / expired refused, all answered with a COMMAND_RESULT signed by the
device."""

from __future__ import annotations

import time
from pathlib import Path

import cbor2
from peer import DEVICE_SEED, OPERATOR_SEED, NodeProc, provision, public_key

from gateway.protocol import (
    OPERATOR_KID,
    Command,
    FrameType,
    decode_command_result,
    decode_hello,
    encode_time,
    sign1,
    sign_command,
)

DEVICE_PUB = public_key(DEVICE_SEED)
SKIP = (FrameType.HELLO, FrameType.RECORD)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _clock(node: NodeProc) -> None:
    """TIME, as the gateway sends in answer to the HELLO: the node's clock for expiry."""
    node.peer.send(FrameType.TIME, encode_time(_now_ms()))


def _ask_raw(node: NodeProc, body: bytes) -> tuple[int, bool, str]:
    node.peer.send(FrameType.COMMAND, body)
    res = decode_command_result(DEVICE_PUB, node.peer.expect(FrameType.COMMAND_RESULT, skip=SKIP))
    assert res.kid == b"esp32-test"
    return res.command_id, res.ok, res.detail


def _ask(
    node: NodeProc,
    cid: int,
    action: str,
    args: dict[str, int] | None = None,
    seed: bytes = OPERATOR_SEED,
    device: str = "esp32-test",
    expires_in_ms: int = 60_000,
) -> tuple[int, bool, str]:
    cmd = Command(cid, action, args or {}, device, "gw-test", _now_ms() + expires_in_ms)
    return _ask_raw(node, sign_command(seed, cmd))


def test_command_bound_to_its_device_and_deadline(node: NodeProc) -> None:
    node.peer.expect(FrameType.HELLO)
    # no TIME since boot: no clock to check the expiry against, so refused
    assert _ask(node, 20, "sync_now") == (20, False, "rejected: no clock")
    _clock(node)
    # signed for another node and republished on this one's topic: refused
    other = _ask(node, 21, "set_interval", {"interval_s": 86400}, device="esp32-other")
    assert other == (21, False, "rejected: wrong device")
    assert _ask(node, 22, "sync_now", expires_in_ms=-1) == (22, False, "rejected: expired")
    # a protocol-1 command (no device, gateway, expiry) is refused, not applied
    unbound = cbor2.dumps({1: 23, 2: "reboot", 3: {}})
    got = _ask_raw(node, sign1(OPERATOR_SEED, OPERATOR_KID, unbound))
    assert got == (23, False, "rejected: unbound command (protocol 1)")
    # refusals for the binding did not move the id: 19 < 23 is still new for this node
    assert _ask(node, 19, "set_batch", {"batch": 2}) == (19, True, "batch=2")
    assert _ask(node, 19, "sync_now") == (19, False, "rejected: replay (id 19 <= 19)")


def test_commands_applied_and_refused(node: NodeProc, flash: Path) -> None:
    node.peer.expect(FrameType.HELLO)
    _clock(node)
    assert _ask(node, 5, "set_interval", {"interval_s": 30}) == (5, True, "interval_s=30")
    assert _ask(node, 5, "set_batch", {"batch": 3}) == (5, False, "rejected: replay (id 5 <= 5)")
    assert _ask(node, 4, "sync_now") == (4, False, "rejected: replay (id 4 <= 5)")
    forged = _ask(node, 6, "reboot", seed=bytes(32))
    assert forged == (6, False, "rejected: bad-signature")
    assert _ask(node, 7, "self_destruct") == (7, False, "rejected: unknown action self_destruct")
    assert _ask(node, 8, "set_batch", {"batch": 0}) == (8, False, "rejected: bad argument batch")
    assert _ask(node, 9, "set_batch", {"batch": 3}) == (9, True, "batch=3")
    assert _ask(node, 10, "sync_now") == (10, True, "sampling now")
    assert _ask(node, 11, "reboot") == (11, True, "rebooting")
    assert node.proc.wait(timeout=20) == 3  # hal.reset() under the emulator: a soft reset


def test_command_id_survives_reboot_and_settings_persist(flash: Path) -> None:
    provision(flash)
    first = NodeProc(flash)
    try:
        first.peer.expect(FrameType.HELLO)
        _clock(first)
        assert _ask(first, 41, "set_interval", {"interval_s": 7})[1]
    finally:
        first.stop()
    again = NodeProc(flash)
    try:
        hello = decode_hello(again.peer.expect(FrameType.HELLO))
        assert hello.boot_count == 2
        _clock(again)
        assert _ask(again, 41, "sync_now")[1:] == (False, "rejected: replay (id 41 <= 41)")
        assert _ask(again, 42, "sync_now")[1]
    finally:
        again.stop()


def test_missing_config_reports_problem_and_waits(flash: Path) -> None:
    n = NodeProc(flash)
    try:
        hello = decode_hello(n.peer.expect(FrameType.HELLO))
        assert hello.problem == "config-missing"
        assert hello.device_id == "esp32-a1b2c3d4e5f6"
        # it keeps saying so, and does not crash-loop
        again = decode_hello(n.peer.expect(FrameType.HELLO, timeout=30))
        assert again.problem == "config-missing" and again.boot_count == 1
        provision(flash)
        (flash / "config" / "device.key").write_bytes(b"short")
        deadline = time.monotonic() + 30
        while True:
            h = decode_hello(n.peer.expect(FrameType.HELLO, timeout=30))
            if h.problem == "key-corrupt":
                break
            assert time.monotonic() < deadline
        assert n.proc.poll() is None
    finally:
        n.stop()
