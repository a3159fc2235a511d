"""COMMANDs over the link: valid ones applied, forged / replayed / unknown refused, all
answered with a COMMAND_RESULT signed by the device."""

from __future__ import annotations

import time
from pathlib import Path

from peer import DEVICE_SEED, OPERATOR_SEED, NodeProc, provision, public_key

from gateway.protocol import (
    Command,
    FrameType,
    decode_command_result,
    decode_hello,
    sign_command,
)

DEVICE_PUB = public_key(DEVICE_SEED)
SKIP = (FrameType.HELLO, FrameType.RECORD)


def _ask(
    node: NodeProc,
    cid: int,
    action: str,
    args: dict[str, int] | None = None,
    seed: bytes = OPERATOR_SEED,
) -> tuple[int, bool, str]:
    node.peer.send(FrameType.COMMAND, sign_command(seed, Command(cid, action, args or {})))
    res = decode_command_result(DEVICE_PUB, node.peer.expect(FrameType.COMMAND_RESULT, skip=SKIP))
    assert res.kid == b"esp32-test"
    return res.command_id, res.ok, res.detail


def test_commands_applied_and_refused(node: NodeProc, flash: Path) -> None:
    node.peer.expect(FrameType.HELLO)
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
        assert _ask(first, 41, "set_interval", {"interval_s": 7})[1]
    finally:
        first.stop()
    again = NodeProc(flash)
    try:
        hello = decode_hello(again.peer.expect(FrameType.HELLO))
        assert hello.boot_count == 2
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
