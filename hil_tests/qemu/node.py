"""The node on the host: the real firmware under the MicroPython unix port
(`citysense-emulator run`), enrolled through its REPL with `citysense-provision` as a
technician would (citysense_lab's `Lab.enroll_node`), its data-link pty bridged to the
guest's serial port (a pty QEMU makes) by `Bridge`.

The emulator makes its own pty and cannot open QEMU's, so `Bridge` pumps bytes between
the two, both ways, and taps the node's direction: it decodes the frames the node wrote
(gateway.protocol's FrameDecoder) and keeps the exact body of every RECORD frame, by
seq, for the byte-for-byte comparison with what the consumer received. What the node
created and what the gateway acknowledged come from the emulator's own JSON events
(`{"ev": "record", "seq": N}`, `{"ev": "ack", "seq": N}`).

When the VM is off (power cut, cold boot) the bridge has no guest side: the node's bytes
are dropped (still tapped), as on a UART nobody listens to; `relink()` attaches the new
pty after the boot.
"""

from __future__ import annotations

import errno
import os
import select
import termios
import threading
import time
import tty
from pathlib import Path

from citysense_lab.procs import wait_until
from citysense_lab.stack import Lab, LabOptions
from citysense_lab.stack import Node as LabNode
from gateway.protocol import (
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_record_payload,
    parse_sign1,
)

INTERVAL_S = 1  # one record a second (the firmware's floor is 1 s)
MAX_PENDING = 16384  # bytes held for a side that does not read (a UART's loss beyond)


def open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)
    return fd


class Bridge:
    """Bytes between the node's link pty and the guest's serial pty, with a tap."""

    def __init__(self, node_link: Path) -> None:
        self.node_link = node_link
        self.records: dict[int, bytes] = {}  # RECORD frame bodies the node wrote, by seq
        self.conflicts: list[int] = []  # seqs written twice with different bytes
        self.frame_errors = 0
        self.up_bytes = 0
        self.dropped = 0  # node bytes with no guest to take them
        self._decoder = FrameDecoder()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._node = -1
        self._guest = -1
        self._pending_guest: str | None = None
        self._to_guest = bytearray()
        self._to_node = bytearray()

    def start(self, guest_pty: str) -> None:
        self._node = open_raw(str(self.node_link))
        self._pending_guest = guest_pty
        self._thread = threading.Thread(target=self._run, name="bridge", daemon=True)
        self._thread.start()

    def relink(self, guest_pty: str) -> None:
        """The VM rebooted: QEMU's pty for the guest's UART has a new path."""
        with self._lock:
            self._pending_guest = guest_pty

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for fd in (self._node, self._guest):
            if fd >= 0:
                os.close(fd)
        self._node = self._guest = -1

    def snapshot(self) -> dict[int, bytes]:
        with self._lock:
            return dict(self.records)

    # ------------------------------------------------------------ loop

    def _tap(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError:
                self.frame_errors += 1
                continue
            if frame is None:
                return
            if frame.type != FrameType.RECORD:
                continue
            try:
                seq = decode_record_payload(parse_sign1(frame.body).payload).seq
            except ProtocolError:
                self.frame_errors += 1
                continue
            with self._lock:
                old = self.records.setdefault(seq, frame.body)
                if old != frame.body:
                    self.conflicts.append(seq)

    def _close_guest(self) -> None:
        if self._guest >= 0:
            os.close(self._guest)
            self._guest = -1
        self._to_guest.clear()
        self._to_node.clear()

    def _attach(self) -> None:
        with self._lock:
            path, self._pending_guest = self._pending_guest, None
        if path is None:
            return
        self._close_guest()
        self._guest = open_raw(path)

    def _write(self, fd: int, buf: bytearray) -> None:
        try:
            n = os.write(fd, buf)
        except BlockingIOError:
            return
        except OSError:
            if fd == self._guest:
                self._close_guest()  # QEMU went away (power cut): wait for relink
            buf.clear()
            return
        del buf[:n]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._attach()
            rlist = [self._node] + ([self._guest] if self._guest >= 0 else [])
            wlist = []
            if self._to_guest and self._guest >= 0:
                wlist.append(self._guest)
            if self._to_node:
                wlist.append(self._node)
            try:
                readable, _, _ = select.select(rlist, wlist, [], 0.1)
            except (OSError, ValueError):
                time.sleep(0.1)
                continue
            if self._node in readable:
                try:
                    data = os.read(self._node, 4096)
                except (BlockingIOError, InterruptedError):
                    data = b""
                if data:
                    self.up_bytes += len(data)
                    self._tap(data)
                    if self._guest >= 0:
                        self._to_guest += data
                    else:
                        self.dropped += len(data)
            if self._guest >= 0 and self._guest in readable:
                try:
                    data = os.read(self._guest, 4096)
                except (BlockingIOError, InterruptedError):
                    data = b""
                except OSError as exc:
                    # EIO: QEMU closed its side (it quit); the next VM comes by relink
                    if exc.errno != errno.EIO:
                        raise
                    self._close_guest()
                    data = b""
                self._to_node += data
            if self._guest >= 0 and self._to_guest:
                self._write(self._guest, self._to_guest)
            if self._to_node:
                self._write(self._node, self._to_node)
            # a side that stops reading loses what does not fit, as a UART would
            for buf in (self._to_guest, self._to_node):
                if len(buf) > MAX_PENDING:
                    self.dropped += len(buf) - MAX_PENDING
                    del buf[: len(buf) - MAX_PENDING]


class EmulatedNode:
    """One enrolled firmware node under `citysense-emulator run`, bridged to the guest."""

    def __init__(self, work: Path) -> None:
        self.lab = Lab(work, LabOptions(nodes=1, interval_s=INTERVAL_S), say=lambda _m: None)
        self.node: LabNode | None = None
        self.bridge: Bridge | None = None

    def enroll(self) -> None:
        """`citysense-provision deploy` + `enroll` against `citysense-emulator repl`."""
        lab = self.lab
        lab.op_key.parent.mkdir(exist_ok=True)
        lab.provision("operator-key", "init", "--out", str(lab.op_key))
        self.node = lab.enroll_node(0)

    @property
    def device_id(self) -> str:
        assert self.node is not None
        return self.node.device_id

    @property
    def public_key(self) -> bytes:
        assert self.node is not None
        return self.node.public_key

    def registry_entry(self) -> bytes:
        """The registry file enrollment wrote, as the gateway's registry holds it."""
        return (self.lab.registry / f"{self.device_id}.json").read_bytes()

    def start(self, guest_pty: str) -> None:
        assert self.node is not None
        self.lab.start_node(self.node)
        wait_until(self.node.gateway_link.exists, 20, "the emulator's link pty")
        self.bridge = Bridge(self.node.gateway_link)
        self.bridge.start(guest_pty)

    def relink(self, guest_pty: str) -> None:
        assert self.bridge is not None
        self.bridge.relink(guest_pty)

    def created(self) -> set[int]:
        """Every seq the node logged as created (signed and in its flash buffer)."""
        assert self.node is not None
        return set(self.node.created_seqs())

    def acked(self) -> int:
        """The highest seq an ACK from the gateway covered (0 before any)."""
        assert self.node is not None
        acks = [int(e["seq"]) for e in self.node.events() if e.get("ev") == "ack"]
        return max(acks, default=0)

    def dropped(self) -> int:
        """Records the node's buffer dropped unacked (drop-oldest)."""
        assert self.node is not None
        return sum(int(e.get("n", 0)) for e in self.node.events() if e.get("ev") == "dropped")

    def written(self) -> dict[int, bytes]:
        assert self.bridge is not None
        return self.bridge.snapshot()

    def log_tail(self, lines: int = 20) -> str:
        assert self.node is not None
        text = self.node.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text[-lines:] if not line.startswith("{"))

    def stop(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
        self.lab.close()
