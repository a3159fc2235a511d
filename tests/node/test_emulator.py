"""citysense-emulator end to end: `run` (events, power cut, soft reboot) and `repl` (mpremote)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peer import OPERATOR_SEED, Peer, provision
from support import FIRMWARE_LIB

from gateway.protocol import (
    Command,
    FrameType,
    decode_hello,
    encode_ack,
    encode_time,
    sign_command,
)

BIN = Path(sys.executable).parent


class Emulator:
    def __init__(self, args: list[str], work: Path) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "citysense-emulator"), *args],
            stdout=subprocess.PIPE,
            stderr=(work / "emulator.stderr").open("ab"),
            start_new_session=True,
        )
        self._out = b""

    def wait_path(self, path: Path) -> None:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert self.proc.poll() is None, "emulator exited"
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.05)

    def events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        if self.proc.stdout.closed:
            return [json.loads(x) for x in self._out.split(b"\n")[:-1]]
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._out += chunk
            timeout = 0
        return [json.loads(x) for x in self._out.split(b"\n")[:-1]]

    def wait_event(self, ev: dict[str, Any], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while ev not in self.events(0.2):
            assert time.monotonic() < deadline, f"no {ev} in {self.events()}"

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def kill(self) -> None:
        """SIGKILL the emulator process only: a power cut (its child must die with it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout and not self.proc.stdout.closed:
            self.events(0.1)  # what it printed up to the cut
            self.proc.stdout.close()

    def killpg(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.kill()


@pytest.fixture
def emulators() -> Iterator[list[Emulator]]:
    started: list[Emulator] = []
    try:
        yield started
    finally:
        for e in started:
            e.killpg()


def _open_link(path: Path) -> Peer:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return Peer(fd)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_run_events_power_cut_and_soft_reboot(tmp_path: Path, emulators: list[Emulator]) -> None:
    flash, link = tmp_path / "flash", tmp_path / "node.tty"
    flash.mkdir()
    provision(flash)
    args = ["run", "--flash", str(flash), "--link", str(link), "--unique-id", "a1b2c3d4e5f6"]
    emu = Emulator([*args, "--seed", "3"], tmp_path)
    emulators.append(emu)
    emu.wait_path(link)
    peer = _open_link(link)
    try:
        hello = decode_hello(peer.expect(FrameType.HELLO))
        assert (hello.boot_count, hello.reset_cause) == (1, "power-on")
        peer.expect(FrameType.RECORD)
        emu.wait_event({"ev": "record", "seq": 1, "n": 10})  # 4 readings + 5 sys/... + sys/fw
        peer.send(FrameType.ACK, encode_ack(1))
        emu.wait_event({"ev": "ack", "seq": 1})
        # reboot COMMAND: the same emulator boots the node again with reset cause "soft"
        now = int(time.time() * 1000)
        peer.send(FrameType.TIME, encode_time(now))  # a command needs the gateway's clock
        reboot = Command(1, "reboot", {}, "esp32-test", "gw-test", now + 60_000)
        peer.send(FrameType.COMMAND, sign_command(OPERATOR_SEED, reboot))
        peer.expect(FrameType.COMMAND_RESULT, skip=(FrameType.RECORD, FrameType.HELLO))
        while True:
            hello = decode_hello(peer.expect(FrameType.HELLO, skip=(FrameType.RECORD,)))
            if hello.boot_count == 2:
                break
        assert hello.reset_cause == "soft"
        assert hello.highest_seq == 64  # the rest of the reserved block counts as used
        before = max(e["seq"] for e in emu.events(0.1) if e["ev"] == "record")
        children = emu.children()
        assert len(children) == 1
        emu.kill()  # SIGKILL of the emulator alone: a power cut
        deadline = time.monotonic() + 10
        while not _gone(children[0]):
            assert time.monotonic() < deadline, "micropython survived the emulator"
            time.sleep(0.05)
    finally:
        os.close(peer.fd)
    before = max(before, *(e["seq"] for e in emu.events() if e["ev"] == "record"))
    emu2 = Emulator(args, tmp_path)
    emulators.append(emu2)
    emu2.wait_path(link)
    peer = _open_link(link)
    try:
        while True:
            hello = decode_hello(peer.expect(FrameType.HELLO, skip=(FrameType.RECORD,)))
            if hello.boot_count == 3:
                break
        assert hello.reset_cause == "power-on"
        deadline = time.monotonic() + 30
        while not [e for e in emu2.events(0.2) if e["ev"] == "record"]:
            assert time.monotonic() < deadline
        first = next(e for e in emu2.events() if e["ev"] == "record")
        # never a reused seq: past everything created before, at a block start
        assert first["seq"] > before and first["seq"] % 64 == 1
    finally:
        os.close(peer.fd)


def _mpremote(port: Path, *args: str) -> str:
    res = subprocess.run(
        [str(BIN / "mpremote"), "connect", str(port), "resume", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_repl_with_mpremote(tmp_path: Path, emulators: list[Emulator]) -> None:
    flash, port = tmp_path / "flash", tmp_path / "repl.tty"
    emu = Emulator(
        ["repl", "--flash", str(flash), "--port", str(port), "--unique-id", "a1b2c3d4e5f6"],
        tmp_path,
    )
    emulators.append(emu)
    emu.wait_path(port)
    assert _mpremote(port, "exec", "print(1+1)").strip() == "2"
    code = "import citysense.hal as h; print(h.unique_id().hex())"
    assert _mpremote(port, "exec", code).strip() == "a1b2c3d4e5f6"
    src = tmp_path / "hello.txt"
    src.write_text("hi there\n")
    _mpremote(port, "fs", "mkdir", ":config")
    _mpremote(port, "fs", "cp", str(src), ":config/hello.txt")
    assert (flash / "config" / "hello.txt").read_text() == "hi there\n"
    assert "hello.txt" in _mpremote(port, "fs", "ls", ":config")
    assert _mpremote(port, "fs", "cat", ":config/hello.txt") == "hi there\n"


def test_watchdog_resets_a_hung_node(tmp_path: Path, emulators: list[Emulator]) -> None:
    """A deployed firmware that arms the WDT and hangs is reset with cause "wdt"."""
    flash, link = tmp_path / "flash", tmp_path / "node.tty"
    lib = flash / "lib" / "citysense"
    shutil.copytree(FIRMWARE_LIB / "citysense" / "hal", lib / "hal")
    (lib / "app.py").write_text("")
    (flash / "boot.py").write_text("")
    (flash / "main.py").write_text(
        "import time\n"
        "from citysense import hal\n"
        'print(\'{"ev": "boot", "cause": "%s"}\' % hal.reset_cause())\n'
        "hal.wdt(300).feed()\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    emu = Emulator(["run", "--flash", str(flash), "--link", str(link)], tmp_path)
    emulators.append(emu)
    emu.wait_event({"ev": "boot", "cause": "power-on"})
    emu.wait_event({"ev": "boot", "cause": "wdt"})
