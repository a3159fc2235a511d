"""A hostile node on one serial line: forged signatures, replayed seqs, an unknown kid,
oversize and garbage frames, at full line rate. It holds the key of one registered
device (`hostile-1`, enrolled by the test) so that its replays are validly signed.

A replay re-sends, with other content, a seq the gateway has already ACKed (it reads
the gateway's ACKs). A seq the gateway never stored is not a replay: signed with the
device's key it is a new record (e.g. when the gateway flushed the line on opening the
port and the first copy was never read), and the gateway rightly stores it."""

from __future__ import annotations

import os
import pty
import random
import termios
import threading
import time
import tty
from collections import Counter
from pathlib import Path

from gateway.protocol import (
    FrameDecoder,
    FrameType,
    Hello,
    ProtocolError,
    RecordPayload,
    decode_ack,
    encode_frame,
    encode_hello,
    encode_record_payload,
    sign1,
)

HOSTILE_ID = "hostile-1"


def _record(seed: bytes, kid: str, seq: int, value: float) -> bytes:
    pack = [{-2: f"{kid}/", 0: "temp", 1: "Cel", 2: value}]
    return sign1(seed, kid.encode(), encode_record_payload(RecordPayload(seq, 1, pack, 0)))


class HostileNode:
    def __init__(self, link: Path, seed: bytes, rng_seed: int = 666, baud: int = 115200) -> None:
        self.rate = baud / 10  # 8N1: a pty has no line speed, the sender keeps to one
        self.link = link
        self.seed = seed
        self.rng = random.Random(rng_seed)
        self.sent: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: tuple[int, int] | None = None
        self._decoder = FrameDecoder()
        self.acked = 0  # highest seq the gateway ACKed (cumulative)

    def start(self) -> None:
        master, slave = pty.openpty()
        tty.setraw(master, termios.TCSANOW)
        tty.setraw(slave, termios.TCSANOW)
        self._fds = (master, slave)
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(slave))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
        self.link.unlink(missing_ok=True)

    def _write(self, fd: int, data: bytes) -> None:
        time.sleep(len(data) / self.rate)
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                time.sleep(0.01)

    def _drain(self, fd: int) -> None:
        """Read what the gateway said; keep the highest ACKed seq."""
        os.set_blocking(fd, False)
        try:
            while data := os.read(fd, 4096):
                self._decoder.feed(data)
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError:
                continue
            if frame is None:
                return
            if frame.type == FrameType.ACK:
                try:
                    self.acked = max(self.acked, decode_ack(frame.body))
                except ProtocolError:
                    pass

    def _run(self) -> None:
        assert self._fds is not None
        fd = self._fds[0]
        hello = Hello(HOSTILE_ID, "evil", 1, "power-on", 0, 0)
        stranger = bytes(self.rng.randrange(256) for _ in range(32))
        seq = 0
        while not self._stop.is_set():
            self._write(fd, encode_frame(FrameType.HELLO, encode_hello(hello)))
            seq += 1
            good = _record(self.seed, HOSTILE_ID, seq, 1.0)
            self._write(fd, encode_frame(FrameType.RECORD, good))
            self.sent["valid"] += 1
            forged = bytearray(good)
            forged[-1 - self.rng.randrange(64)] ^= 1 << self.rng.randrange(8)
            self._write(fd, encode_frame(FrameType.RECORD, bytes(forged)))
            self.sent["forged"] += 1
            if self.acked >= 1:  # a stored seq again with other content: a replay
                replay = _record(self.seed, HOSTILE_ID, self.rng.randint(1, self.acked), 99.0)
                self._write(fd, encode_frame(FrameType.RECORD, replay))
                self.sent["replay"] += 1
            self._write(fd, encode_frame(FrameType.RECORD, _record(stranger, "intruder", seq, 0.0)))
            self.sent["unknown-kid"] += 1
            self._write(fd, bytes(self.rng.randrange(1, 256) for _ in range(1500)) + b"\x00")
            self.sent["oversize"] += 1
            self._write(fd, bytes(self.rng.randrange(256) for _ in range(64)) + b"\x00")
            self.sent["garbage"] += 1
            self._drain(fd)
