"""`citysense-emulator run`: one node, power-cycled like a device.

The emulator is a small supervisor: it owns the data-link pty (published at --link, so
the gateway's open line survives node reboots, as a real UART does) and runs the node
firmware in a `micropython` child with the emulated HAL. The child gets
PR_SET_PDEATHSIG=SIGKILL, so SIGKILL of the emulator kills the node at that instant:
a power cut. The next `run` boots with reset cause "power-on".

Inside one run, the child's exit decides the next boot: exit 3 (hal.reset(), e.g. the
reboot COMMAND) -> "soft"; exit 4 (hal.deepsleep) -> "deepsleep"; WDT feeds stopping
for longer than the timeout the firmware armed -> the supervisor kills it -> "wdt";
any other exit (an uncaught crash) -> "panic"; exit 0 (main.py returned, e.g. safe
mode) -> the node stays halted, like a board sitting at its REPL, until killed.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emulator.mpy import compile_lib
from emulator.ptys import Pty, die_with_parent, firmware_dir, micropython

_CAUSE_BY_EXIT = {3: "soft", 4: "deepsleep"}
_LAUNCH = (
    "exec(open({boot!r}).read(), {{'__name__': '__main__'}})\n"
    "exec(open({main!r}).read(), {{'__name__': '__main__'}})\n"
)


def _entry(flash: Path, cache: Path) -> tuple[Path, Path, str]:
    """(boot.py, main.py, MICROPYPATH): the firmware deployed in DIR if there is one,
    else the checkout's. Sources (a `deploy --source`, what deploy gives the emulator)
    are compiled to .mpy first, as a deploy to an ESP32 would: compiling on import needs
    compiler heap that a device-sized --heap does not have."""
    lib = flash / "lib" / "citysense"
    if (flash / "main.py").exists() and (lib / "app.mpy").exists():
        return flash / "boot.py", flash / "main.py", str(flash / "lib")
    if (flash / "main.py").exists() and (lib / "app.py").exists():
        if cache.exists():
            shutil.rmtree(cache)
        compile_lib(flash / "lib", cache)
        return flash / "boot.py", flash / "main.py", str(cache)
    fw = firmware_dir()
    if not (cache / "citysense").exists():
        compile_lib(fw / "lib", cache)
    return fw / "boot.py", fw / "main.py", str(cache)


class Node:
    def __init__(self, flash: Path, link: Pty, heap: str, env: dict[str, str]) -> None:
        self.flash = flash
        self.link = link
        self.heap = heap
        self.env = env
        self._tmp = tempfile.TemporaryDirectory(prefix="citysense-node-")
        self.cache = Path(self._tmp.name) / "lib"

    def boot(self, cause: str) -> tuple[subprocess.Popen[bytes], int]:
        boot, main, path = _entry(self.flash, self.cache)
        rfd, wfd = os.pipe()
        env = dict(
            os.environ,
            **self.env,
            MICROPYPATH=f".frozen:{path}",
            CITYSENSE_RESET=cause,
            CITYSENSE_LINK_FD=str(self.link.master),
            CITYSENSE_WDT_FD=str(wfd),
        )
        code = _LAUNCH.format(boot=str(boot), main=str(main))
        parent = os.getpid()
        proc = subprocess.Popen(
            [micropython(), "-X", f"heapsize={self.heap}", "-c", code],
            cwd=str(self.flash),
            env=env,
            pass_fds=(self.link.master, wfd),
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: die_with_parent(parent),
        )
        os.close(wfd)
        return proc, rfd

    def _ended(self, code: int) -> str:
        if code == 0:
            # main.py returned (safe mode, Ctrl-C): a device would sit at its REPL
            print("citysense-emulator: node halted (main.py returned)", file=sys.stderr)
            while True:
                time.sleep(3600)
        return _CAUSE_BY_EXIT.get(code, "panic")

    def watch(self, proc: subprocess.Popen[bytes], wdt: int) -> str:
        """Wait for the child to end; returns the reset cause of the next boot."""
        timeout_ms = 0
        last = time.monotonic()
        buf = b""
        while True:
            ready, _, _ = select.select([wdt], [], [], 0.1)
            if ready:
                data = os.read(wdt, 512)
                if not data:  # the child closed its end: it is exiting
                    return self._ended(proc.wait())
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.startswith(b"i"):
                        timeout_ms = int(line[1:])
                    last = time.monotonic()
            elif proc.poll() is not None:
                return self._ended(proc.returncode)
            if timeout_ms and (time.monotonic() - last) * 1000 > timeout_ms:
                proc.kill()
                proc.wait()
                print("citysense-emulator: watchdog reset", file=sys.stderr, flush=True)
                return "wdt"


def run_node(flash: Path, link: Path, heap: str, env: dict[str, str]) -> int:
    flash = flash.resolve()
    flash.mkdir(parents=True, exist_ok=True)
    pty = Pty(link)
    # the node reads its UART without blocking: O_NONBLOCK on the shared file description
    os.set_blocking(pty.master, False)
    node = Node(flash, pty, heap, env)
    cause = "power-on"
    try:
        while True:
            proc, wdt = node.boot(cause)
            try:
                cause = node.watch(proc, wdt)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                os.close(wdt)
            if cause == "panic":
                time.sleep(0.5)
    finally:
        pty.close()
        node._tmp.cleanup()
