"""`citysense-emulator repl`: the node's USB REPL on a raw pty, filesystem root = DIR.

A MicroPython unix port runs interactively on its own pty; the emulator relays bytes
between that pty and the one published at PATH (so PATH stays valid while the
MicroPython process restarts: the unix port exits on a soft reset, Ctrl-D, where a real
board would reboot and keep its USB serial). Before the REPL starts, the boot snippet
mounts os.VfsPosix(DIR) at '/', puts '/lib' on sys.path and registers the emulated
`citysense.hal` (so `citysense.hal.unique_id()` answers --unique-id before any deploy).
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
import tty
from pathlib import Path

from emulator.ptys import Pty, die_with_parent, firmware_dir, micropython

_BOOT = """
import sys, os
sys.path.append({lib!r})
import citysense.hal
_h = sys.modules['citysense.hal']
for _k in [k for k in sys.modules if k == 'citysense' or k.startswith('citysense.')]:
    del sys.modules[_k]
sys.path.insert(0, {work!r})
import _citysense_pkg as _p
_p.__path__ = '/lib/citysense'
sys.modules['citysense'] = _p
sys.modules['citysense.hal'] = _h
_p.hal = _h
del _h, _k, _p
sys.path[:] = ['', '/lib']
os.umount('/')
os.mount(os.VfsPosix({flash!r}), '/')
os.chdir('/')
"""


def _spawn(flash: Path, slave: int, uid: str, heap: str, work: Path) -> subprocess.Popen[bytes]:
    boot = work / "boot.py"
    (work / "_citysense_pkg.py").write_text("")
    code = _BOOT.format(lib=str(firmware_dir() / "lib"), flash=str(flash), work=str(work))
    boot.write_text(code)
    env = dict(os.environ, CITYSENSE_UID=uid, MICROPYPATH="")
    env.pop("CITYSENSE_LINK_FD", None)
    parent = os.getpid()
    return subprocess.Popen(
        [micropython(), "-X", f"heapsize={heap}", "-i", str(boot)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=str(flash),
        preexec_fn=lambda: die_with_parent(parent),
    )


def _relay(a: int, b: int, proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        ready, _, _ = select.select([a, b], [], [], 0.2)
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                continue  # EIO: the peer side is closed right now
            if data:
                os.write(b if fd == a else a, data)


def run_repl(flash: Path, port: Path, uid: str, heap: str = "2m") -> int:
    flash = flash.resolve()
    flash.mkdir(parents=True, exist_ok=True)
    outer = Pty(port)
    tmp = tempfile.TemporaryDirectory(prefix="citysense-repl-")
    work = Path(tmp.name)
    try:
        while True:
            inner = os.openpty()
            tty.setraw(inner[1])
            proc = _spawn(flash, inner[1], uid, heap, work)
            try:
                _relay(outer.master, inner[0], proc)
                # drain what the REPL wrote before it exited
                while select.select([inner[0]], [], [], 0.05)[0]:
                    try:
                        data = os.read(inner[0], 4096)
                    except OSError:
                        break
                    if not data:
                        break
                    os.write(outer.master, data)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                os.close(inner[0])
                os.close(inner[1])
            time.sleep(0.05)  # "reboot"
    finally:
        outer.close()
        tmp.cleanup()
