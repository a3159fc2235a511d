"""A node on the host that speaks protocol v1 over the guest's virtio serial port (a
host pty), built on the gateway's sans-I/O protocol core. It keeps the node's side of
the delivery contract: every record it creates stays in its buffer until an ACK covers
it, and is sent again (in order) while unacknowledged. It remembers the exact bytes of
every record it created, so the broker side can be compared byte for byte.

Used while `citysense-emulator` cannot open an existing pty; the records and the
delivery contract are the same ones the firmware produces.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty

from gateway.protocol import (
    TIME_BASE_UNIX,
    FrameDecoder,
    FrameType,
    Hello,
    ProtocolError,
    RecordPayload,
    decode_ack,
    decode_nack,
    encode_frame,
    encode_hello,
    encode_record_payload,
    sign1,
)

RESEND_AFTER = 3.0


class ProtocolNode:
    def __init__(self, device_id: str, seed: bytes, pty: str, interval: float = 0.5) -> None:
        self.device_id = device_id
        self.seed = seed
        self.pty = pty
        self.interval = interval
        self.boot = 1
        self.next_seq = 1
        self.records: dict[int, bytes] = {}  # every record ever created, by seq
        self.unacked: dict[int, float] = {}  # seq -> last send time
        self.acked = 0
        self.nacks: list[tuple[int, str]] = []
        self.frame_errors = 0
        self.producing = threading.Event()
        self.producing.set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="node", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def relink(self, pty: str) -> None:
        """The gateway's machine rebooted: its serial port is a new pty."""
        self.stop()
        self.pty = pty
        self.start()

    def _open(self) -> None:
        self._fd = os.open(self.pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)

    def snapshot(self) -> tuple[dict[int, bytes], int]:
        with self._lock:
            return dict(self.records), self.acked

    # ------------------------------------------------------------ loop

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view and time.monotonic() < deadline:
            try:
                n = os.write(self._fd, view)
                view = view[n:]
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                return  # the guest side went away (power cut); records stay buffered

    def _hello(self) -> None:
        hello = Hello(
            device_id=self.device_id,
            firmware="qemu-check-node",
            boot_count=self.boot,
            reset_cause="power-on",
            uptime_ms=int((time.monotonic() - self._t0) * 1000),
            highest_seq=self.next_seq - 1,
        )
        self._send(encode_frame(FrameType.HELLO, encode_hello(hello)))

    def _create(self) -> None:
        seq = self.next_seq
        self.next_seq += 1
        now = time.time()
        pack = [
            {-2: f"{self.device_id}/", -3: now, 0: "temp", 1: "Cel", 2: 20.0 + seq % 7},
            {0: "sys/seq", 2: seq},
        ]
        payload = encode_record_payload(RecordPayload(seq, self.boot, pack, TIME_BASE_UNIX))
        cose = sign1(self.seed, self.device_id.encode(), payload)
        with self._lock:
            self.records[seq] = cose
            self.unacked[seq] = 0.0

    def _flush(self) -> None:
        """Stop-and-wait, oldest first: records reach the gateway in seq order even when
        the line loses a frame (the gateway's replay check and cumulative ACK rely on it)."""
        now = time.monotonic()
        with self._lock:
            if not self.unacked:
                return
            seq = min(self.unacked)
            if now - self.unacked[seq] < RESEND_AFTER:
                return
            self.unacked[seq] = now
            frame = encode_frame(FrameType.RECORD, self.records[seq])
        self._send(frame)

    def _receive(self, decoder: FrameDecoder) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, OSError):
            return
        decoder.feed(data)
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError:
                self.frame_errors += 1
                continue
            if frame is None:
                return
            if frame.type == FrameType.ACK:
                seq = decode_ack(frame.body)
                with self._lock:
                    self.acked = max(self.acked, seq)
                    for s in [s for s in self.unacked if s <= seq]:
                        del self.unacked[s]
            elif frame.type == FrameType.NACK:
                seq, reason = decode_nack(frame.body)
                with self._lock:
                    self.nacks.append((seq, str(reason)))
                    if seq in self.unacked:
                        self.unacked[seq] = time.monotonic()  # retry after RESEND_AFTER

    def _run(self) -> None:
        decoder = FrameDecoder()
        self._hello()
        next_record = time.monotonic()
        next_hello = time.monotonic() + 30
        while not self._stop.is_set():
            now = time.monotonic()
            if self.producing.is_set() and now >= next_record:
                self._create()
                next_record = now + self.interval
            if now >= next_hello:
                self._hello()
                next_hello = now + 30
            self._flush()
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if ready:
                self._receive(decoder)
