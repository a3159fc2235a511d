"""Helpers: a node's USB REPL on a pty (the real emulator's `repl` mode), the CLI runner.

`NodeRepl` starts `citysense-emulator repl --flash DIR --port PATH --unique-id HEX`. While
the emulator is not in the tree yet, it falls back to a stand-in with the same contract:
socat links a raw pty at PATH to `micropython -i`, whose filesystem root is DIR
(VfsPosix mounted at /) with `citysense.hal.unique_id()` answering HEX.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO, micropython_path

EMULATOR_READY = (REPO / "emulator" / "cli.py").exists()
START_TIMEOUT = 20.0

_STANDIN_BOOT = """
import os, sys
os.umount('/')
os.mount(os.VfsPosix({flash!r}), '/')
os.chdir('/')
sys.path[:] = ['', '/lib']
class _Hal:
    @staticmethod
    def unique_id():
        import binascii
        return binascii.unhexlify({uid!r})
sys.modules['citysense.hal'] = _Hal
"""


def _emulator_cmd(flash: Path, port: Path, uid: str, work: Path) -> list[str]:
    if EMULATOR_READY:
        exe = Path(sys.executable).parent / "citysense-emulator"
        return [str(exe), "repl", "--flash", str(flash), "--port", str(port), "--unique-id", uid]
    return standin_cmd(flash, port, uid, work, mount=True)


def standin_cmd(flash: Path, port: Path, uid: str, work: Path, mount: bool) -> list[str]:
    """socat + `micropython -i`; mount=False leaves the host's / as the REPL's root."""
    boot = work / "standin_boot.py"
    boot.write_text(_STANDIN_BOOT.format(flash=str(flash), uid=uid) if mount else "")
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat not installed (needed by the stand-in REPL)")
    mp = f"{micropython_path()} -X heapsize=2m -i {boot}"
    return [socat, f"PTY,link={port},raw,echo=0", f"EXEC:{mp},pty,raw,echo=0,stderr"]


@dataclass
class NodeRepl:
    flash: Path
    port: Path
    uid: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_node(work: Path, name: str, uid: str, cmd: list[str] | None = None) -> NodeRepl:
    flash = work / f"{name}-flash"
    flash.mkdir(parents=True, exist_ok=True)
    port = work / f"{name}.tty"
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd or _emulator_cmd(flash, port, uid, work),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    node = NodeRepl(flash, port, uid, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while not port.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"the REPL did not come up: {(work / f'{name}.log').read_text()}")
        time.sleep(0.05)
    return node


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    """The installed console script in a real subprocess (exit code, stdout, stderr)."""
    exe = Path(sys.executable).parent / "citysense-provision"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "provisioning.cli"]
    proc = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        cwd=REPO,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def mpremote(port: Path, *args: str, timeout: float = 30) -> str:
    """Real mpremote as a second client (`resume`: no soft reset of the unix port)."""
    exe = Path(sys.executable).parent / "mpremote"
    proc = subprocess.run(
        [str(exe), "connect", str(port), "resume", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_one_line_error(res: Result, *fragments: str) -> str:
    """Non-zero exit; stderr is progress lines (indented) plus exactly one error line."""
    assert res.code != 0
    assert "Traceback" not in res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip() and not ln.startswith("  ")]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("citysense-provision: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]
