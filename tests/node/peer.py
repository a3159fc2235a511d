"""A scripted gateway peer over a real pty, for node tests (CPython side).

The test owns a pty pair: the node (micropython) gets the master fd as its data UART
(CITYSENSE_LINK_FD, as under the emulator), the peer reads and writes the slave end.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import tty
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nodeproc import MP, mp_env
from support import micropython_path

from citysense_formats import node_config
from gateway.protocol import FrameDecoder, FrameType, ProtocolError, encode_frame

DEVICE_SEED = bytes(range(32))
OPERATOR_SEED = bytes(range(100, 132))


def public_key(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def provision(
    flash: Path, device_id: str = "esp32-test", interval: int = 1, batch: int = 1
) -> None:
    cfg = flash / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    config = dict(node_config.defaults(), device_id=device_id, interval_s=interval, batch=batch)
    (cfg / "device.json").write_bytes(node_config.encode(config))
    (cfg / "device.key").write_bytes(DEVICE_SEED)
    (cfg / "operator.pub").write_bytes(public_key(OPERATOR_SEED))


class Peer:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dec = FrameDecoder()
        self.errors = 0

    def send(self, ftype: int, body: bytes) -> None:
        os.write(self.fd, encode_frame(ftype, body))

    def write_raw(self, data: bytes) -> None:
        os.write(self.fd, data)

    def next_frame(self, timeout: float = 20.0) -> tuple[FrameType, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self.dec.next_frame()
            except ProtocolError:
                self.errors += 1
                continue
            if f is not None:
                return f.type, f.body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the node")
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                self.dec.feed(os.read(self.fd, 4096))

    def expect(self, ftype: int, timeout: float = 20.0, skip: tuple[int, ...] = ()) -> bytes:
        """The next frame of type `ftype`; frames of types in `skip` are passed over."""
        deadline = time.monotonic() + timeout
        while True:
            t, body = self.next_frame(max(0.1, deadline - time.monotonic()))
            if t == ftype:
                return body
            if t not in skip:
                raise AssertionError(f"expected frame {ftype}, got {t}")


class NodeProc:
    """micropython running mp/<script> with the data UART on a pty; the peer on the other end."""

    # the device's heap, as `citysense-emulator run` gives it (docs/firmware.md, Memory)
    def __init__(self, flash: Path, script: str = "fastnode.py", heap: str = "96k") -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)  # as the emulator does: the node never blocks on it
        self.slave = slave
        self.master = master
        self.stderr = flash.parent / f"{flash.name}.stderr"
        self._err = self.stderr.open("wb")
        env = mp_env(CITYSENSE_LINK_FD=str(master), CITYSENSE_UID="a1b2c3d4e5f6")
        self.proc = subprocess.Popen(
            [micropython_path(), "-X", f"heapsize={heap}", str(MP / script)],
            cwd=str(flash),
            env=env,
            pass_fds=(master,),
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        os.close(master)
        self.peer = Peer(slave)
        self._out = b""

    def events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """JSON event lines the node printed so far."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._out += chunk
            timeout = 0
        lines = self._out.split(b"\n")
        return [json.loads(x) for x in lines[:-1] if x.startswith(b"{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()
        os.close(self.slave)
