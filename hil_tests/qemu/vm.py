"""One arm64 VM under qemu-system-aarch64 (TCG), driven through a root shell on its
serial console (a host pty, always read by a thread) and QMP (a unix socket).

The node link is a PCI 16550 UART (QEMU's pci-serial) backed by a second host pty
(``Vm.link_pty``); the guest's 8250 driver makes it a real tty, ``/dev/ttyS0``, that
pyserial can configure (a virtio console port is not a tty: pyserial's tcgetattr fails
on it; QEMU's USB serial adapter can be neither snapshotted nor, on this xHCI, seen).
Networking is QEMU user networking with ``restrict=on`` and a single guest forward,
10.0.2.100:1883, whose connections QEMU hands to ``fwd.sh`` (socat to
127.0.0.1:$CITYSENSE_QEMU_MQTT_PORT on the host). The command line does not depend on
the run, so a snapshot saved once loads in every run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import tty
from pathlib import Path

GUEST_MQTT = ("10.0.2.100", 1883)
APPEND = (
    "root=/dev/vda rw console=ttyAMA0 panic=-1 quiet loglevel=3 "
    "systemd.show_status=error net.ifnames=0"
)
FWD_SCRIPT = """#!/bin/sh
# QEMU guestfwd: one process per guest connection to 10.0.2.100:1883.
exec socat STDIO "TCP:127.0.0.1:${CITYSENSE_QEMU_MQTT_PORT:?}"
"""
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class VmError(RuntimeError):
    """The VM did not do what the check needed (with the console tail for context)."""


class Vm:
    def __init__(self, image: Path, disk: Path, workdir: Path, mqtt_port: int, name: str):
        self.image = image
        self.disk = disk
        self.workdir = workdir
        self.mqtt_port = mqtt_port
        self.name = name
        self.qmp_path = workdir / f"{name}.qmp"
        self.console_log = workdir / f"{name}.console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.link_pty = ""
        self._console_fd = -1
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._qmp: socket.socket | None = None
        self._qmp_file: object = None
        self._n = 0

    # ------------------------------------------------------------ process

    def argv(self, loadvm: str | None) -> list[str]:
        fwd = self.image / "fwd.sh"
        argv = [
            "qemu-system-aarch64",
            "-M", "virt", "-cpu", "cortex-a72", "-m", "1024", "-smp", "2",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
            "-kernel", str(self.image / "vmlinuz"),
            "-initrd", str(self.image / "initrd"),
            "-append", APPEND,
            "-drive", f"file={self.disk},if=virtio,format=qcow2",
            "-chardev", "pty,id=con", "-serial", "chardev:con",
            "-chardev", "pty,id=link",
            "-device", "pci-serial,chardev=link",
            "-device", "virtio-rng-pci",
            "-netdev",
            "user,id=net,restrict=on,"
            f"guestfwd=tcp:{GUEST_MQTT[0]}:{GUEST_MQTT[1]}-cmd:{fwd}",
            # no option ROM: the guest boots by -kernel, and Debian ships the ROMs in a
            # separate package (ipxe-qemu)
            "-device", "virtio-net-pci,netdev=net,romfile=",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]  # fmt: skip
        if loadvm:
            argv += ["-loadvm", loadvm]
        return argv

    def start(self, loadvm: str | None = None, timeout: float = 60.0) -> None:
        fwd = self.image / "fwd.sh"
        if not fwd.exists():
            fwd.write_text(FWD_SCRIPT)
            fwd.chmod(0o755)
        self.qmp_path.unlink(missing_ok=True)
        env = dict(os.environ, CITYSENSE_QEMU_MQTT_PORT=str(self.mqtt_port))
        with open(self.workdir / f"{self.name}.qemu.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(loadvm),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self._connect_qmp(timeout)
        except OSError as exc:
            self.kill()
            raise VmError(f"QMP: {exc}; qemu log:\n{self.qemu_log()}") from None
        ptys = {c["label"]: c["filename"] for c in self.qmp("query-chardev")}
        con = ptys["con"].removeprefix("pty:")
        self.link_pty = ptys["link"].removeprefix("pty:")
        self._console_fd = os.open(con, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._console_fd)
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        if loadvm:
            # -loadvm leaves the VM paused until QMP says go.
            if self.qmp("query-status")["status"] != "running":
                self.qmp("cont")

    def _connect_qmp(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise VmError(f"qemu exited with {self.proc.returncode}: {self.qemu_log()}")
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(30)
                sock.connect(str(self.qmp_path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise VmError("no QMP socket from qemu") from None
                time.sleep(0.1)
        self._qmp = sock
        self._qmp_file = sock.makefile("rwb")
        self._qmp_read()  # greeting
        self.qmp("qmp_capabilities")

    def _qmp_read(self) -> dict[str, object]:
        f = self._qmp_file
        while True:
            line = f.readline()  # type: ignore[attr-defined]
            if not line:
                raise VmError("QMP connection closed")
            msg: dict[str, object] = json.loads(line)
            if "event" not in msg:
                return msg

    def qmp(self, command: str, **args: object) -> object:
        f = self._qmp_file
        f.write(json.dumps({"execute": command, "arguments": args}).encode() + b"\n")  # type: ignore[attr-defined]
        f.flush()  # type: ignore[attr-defined]
        reply = self._qmp_read()
        if "error" in reply:
            raise VmError(f"QMP {command}: {reply['error']}")
        return reply.get("return")

    def hmp(self, line: str) -> str:
        out = str(self.qmp("human-monitor-command", **{"command-line": line}))
        return out

    def qemu_log(self) -> str:
        path = self.workdir / f"{self.name}.qemu.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Pull the plug: QEMU goes, whatever the guest had not written is lost."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self._close()

    def quit(self, timeout: float = 30.0) -> None:
        """QMP quit (QEMU stops at once, like a power cut for the guest)."""
        if self.alive():
            try:
                self.qmp("quit")
            except (VmError, OSError):
                pass
            try:
                assert self.proc is not None
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._console_fd >= 0:
            os.close(self._console_fd)
            self._console_fd = -1
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    # ------------------------------------------------------------ console

    def _read_console(self) -> None:
        with open(self.console_log, "ab") as log:
            while not self._stop.is_set():
                try:
                    ready, _, _ = select.select([self._console_fd], [], [], 0.2)
                    if not ready:
                        continue
                    data = os.read(self._console_fd, 65536)
                except OSError:
                    time.sleep(0.2)  # no peer yet (EIO) or QEMU gone
                    continue
                if not data:
                    time.sleep(0.05)
                    continue
                log.write(data)
                log.flush()
                with self._cond:
                    self._buf += ANSI.sub(b"", data)
                    self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._buf)

    def wait_for(self, pattern: bytes, timeout: float, start: int = 0) -> re.Match[bytes]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, start)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    tail = self._buf[-1500:].decode(errors="replace")
                    why = "timed out" if left <= 0 else "qemu exited"
                    raise VmError(f"{why} waiting for {pattern!r}; console tail:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._console_fd, view)
            except OSError as exc:
                raise VmError(f"console write: {exc} (qemu alive: {self.alive()})") from None
            view = view[n:]

    def login(self, timeout: float) -> None:
        """Wait for the autologin root shell, then make it quiet: dash, no echo, no prompt."""
        deadline = time.monotonic() + timeout
        while True:
            start = self.mark()
            self.write(b"\nexec /bin/sh\n")
            self.write(
                b"stty -echo; PS1=''; PS2=''; SYSTEMD_PAGER=''; SYSTEMD_COLORS=0; TERM=dumb; "
                b"export PS1 PS2 SYSTEMD_PAGER SYSTEMD_COLORS TERM; echo __READY__$((40+2))\n"
            )
            try:
                self.wait_for(rb"__READY__42", 5, start)
                return
            except VmError:
                if time.monotonic() > deadline:
                    raise

    def sh(self, cmd: str, timeout: float = 60.0, check: bool = True) -> tuple[int, str]:
        """Run `cmd` in the guest's root shell; returns (exit code, output)."""
        self._n += 1
        n = self._n
        start = self.mark()
        self.write(f"echo __B{n}__; {{ {cmd}\n}} 2>&1; echo __E{n}_$?__\n".encode())
        m = self.wait_for(rb"__E%d_(\d+)__" % n, timeout, start)
        b = self.wait_for(rb"__B%d__\n" % n, 1, start)
        out = self._buf[b.end() : m.start()].decode(errors="replace")
        rc = int(m.group(1))
        if check and rc != 0:
            raise VmError(f"guest command failed ({rc}): {cmd}\n{out}")
        return rc, out

    def put_file(self, path: str, data: bytes, mode: str = "0600", group: str = "root") -> None:
        """Write a small file in the guest through the console (base64 in short lines)."""
        tmp = f"{path}.b64"
        self.sh(f"mkdir -p $(dirname {path}) && : > {tmp}")
        text = base64.b64encode(data).decode()
        for i in range(0, len(text), 800):
            self.sh(f"printf '%s' '{text[i : i + 800]}' >> {tmp}")
        self.sh(f"base64 -d {tmp} > {path} && rm {tmp} && chmod {mode} {path}")
        self.sh(f"chgrp {group} {path}")


def boot_wait(vm: Vm, timeout: float) -> float:
    """Wait for the root shell and for systemd to finish booting; returns seconds."""
    t0 = time.monotonic()
    vm.login(timeout)
    left = max(30.0, timeout - (time.monotonic() - t0))
    _, out = vm.sh("systemctl is-system-running --wait", timeout=left, check=False)
    if out.strip() not in ("running", "degraded"):
        raise VmError(f"system did not finish booting: {out.strip()}")
    if out.strip() == "degraded":
        _, failed = vm.sh("systemctl --failed --no-legend --plain", check=False)
        print(f"qemu-vm: booted degraded; failed units:\n{failed}", flush=True)
    return time.monotonic() - t0


def ensure_snapshot(image: Path, timeout: float = 600.0) -> Path:
    """A copy of the image's disk holding a `booted` VM snapshot (savevm), made once."""
    snap = image / "snapshot.qcow2"
    if snap.exists():
        return snap
    tmp = image / "snapshot.qcow2.tmp"
    subprocess.run(["cp", "--reflink=auto", str(image / "disk.qcow2"), str(tmp)], check=True)
    vm = Vm(image, tmp, image, mqtt_port=1, name="snapshot")
    try:
        vm.start()
        seconds = boot_wait(vm, timeout)
        print(f"qemu-vm: first boot to a shell and a booted system: {seconds:.0f} s", flush=True)
        vm.sh("sync")
        out = vm.hmp("savevm booted")
        if out.strip():
            raise VmError(f"savevm: {out.strip()}")
    finally:
        vm.quit()
    tmp.rename(snap)
    return snap
