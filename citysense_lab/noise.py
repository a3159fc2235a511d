"""A line-noise proxy between two serial endpoints: bit flips, drops, inserted bytes and
stalls at configurable rates, throttled to a line speed (ptys ignore baud rates)."""

from __future__ import annotations

import os
import pty
import random
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path


@dataclass
class NoiseConfig:
    flip: float = 0.0  # probability per byte that one random bit flips
    drop: float = 0.0  # probability per byte that it vanishes
    insert: float = 0.0  # probability per byte that a random byte is inserted after it
    stall: float = 0.0  # probability per chunk of a stall
    stall_s: float = 0.2
    baud: int = 115200  # 8N1: baud/10 bytes per second; 0 = unthrottled


@dataclass
class NoiseStats:
    bytes: int = 0
    flipped: int = 0
    dropped: int = 0
    inserted: int = 0
    stalls: int = 0


def open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)
    return fd


class NoiseProxy:
    """Opens `upstream` (a node's link pty) and offers a new pty at `link` for the gateway."""

    def __init__(self, upstream: Path, link: Path, cfg: NoiseConfig, seed: int = 1) -> None:
        self.upstream = upstream
        self.link = link
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.stats = {"up": NoiseStats(), "down": NoiseStats()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fds: list[int] = []

    def start(self) -> None:
        up = open_raw(str(self.upstream))
        master, slave = pty.openpty()
        tty.setraw(slave, termios.TCSANOW)
        tty.setraw(master, termios.TCSANOW)
        os.set_blocking(master, False)
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(slave))
        self._fds = [up, master, slave]
        self._threads = [
            threading.Thread(target=self._pump, args=(up, master, "up"), daemon=True),
            threading.Thread(target=self._pump, args=(master, up, "down"), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.link.unlink(missing_ok=True)

    def _mangle(self, data: bytes, st: NoiseStats) -> bytes:
        c = self.cfg
        out = bytearray()
        for b in data:
            st.bytes += 1
            if c.drop and self.rng.random() < c.drop:
                st.dropped += 1
                continue
            if c.flip and self.rng.random() < c.flip:
                b ^= 1 << self.rng.randrange(8)
                st.flipped += 1
            out.append(b)
            if c.insert and self.rng.random() < c.insert:
                out.append(self.rng.randrange(256))
                st.inserted += 1
        return bytes(out)

    def _pump(self, src: int, dst: int, name: str) -> None:
        st = self.stats[name]
        rate = self.cfg.baud / 10 if self.cfg.baud else 0.0
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                data = os.read(src, 256)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.05)  # the other side closed: keep the line, like a cable
                continue
            if not data:
                time.sleep(0.05)
                continue
            if self.cfg.stall and self.rng.random() < self.cfg.stall:
                st.stalls += 1
                time.sleep(self.cfg.stall_s)
            out = self._mangle(data, st)
            if rate:
                time.sleep(len(data) / rate)
            view = memoryview(out)
            while view and not self._stop.is_set():
                try:
                    n = os.write(dst, view)
                    view = view[n:]
                except BlockingIOError:
                    time.sleep(0.005)
                except OSError:
                    break
