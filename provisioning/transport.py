"""Serial transport to a MicroPython REPL: interrupt, raw REPL, raw-paste, bounded waits.

Protocol (MicroPython's `pyexec`): Ctrl-C interrupts the running program, Ctrl-A enters
the raw REPL (banner `raw REPL; CTRL-B to exit\\r\\n>`). Code is then sent either in
raw-paste mode (`\\x05A\\x01` -> `R\\x01` + 16-bit window, flow-controlled by `\\x01`
from the device) or plainly, ended by Ctrl-D. The device answers with stdout, `\\x04`,
stderr (a traceback if the code raised), `\\x04`, and the next `>` prompt.
"""

from __future__ import annotations

import errno
import struct
import time
from types import TracebackType

import serial

from .errors import DeviceError, OutOfFlashError, PortError, ReplError

_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
_PLAIN_CHUNK = 256
_MAX_OUTPUT = 1 << 20


def open_error(port: str, exc: BaseException) -> PortError:
    """Map an exception from opening `port` to a one-line PortError with what to do."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return PortError(
            f"serial port {port} does not exist, check the USB cable and the port name"
            " (ls /dev/ttyUSB* /dev/ttyACM*)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return PortError(
            f"permission denied opening {port}, add yourself to the dialout group"
            " (sudo usermod -aG dialout $USER) and log in again"
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return PortError(
            f"serial port {port} is busy, close the other program using it"
            " (serial monitor, mpremote, a running gateway) and retry"
        )
    if code == errno.ENOTTY or "configure port" in str(exc):
        return PortError(f"{port} is not a serial port, pass the node's USB serial device")
    if code == errno.EISDIR:
        return PortError(f"{port} is a directory, pass the node's USB serial device")
    return PortError(f"cannot open serial port {port} ({exc}), check the port name and cable")


def device_error(stderr: str, doing: str) -> DeviceError:
    """Turn a device traceback into a DeviceError naming what we were doing."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "unknown error"
    if "Errno 28" in last or "ENOSPC" in last or last == "OSError: 28":
        return OutOfFlashError(
            f"device out of flash (ENOSPC) while {doing}, free space on the node"
            " (remove /data or old files) or erase and re-flash it",
            last,
        )
    if "ImportError" in last and "citysense" in last:
        return DeviceError(
            f"the citysense firmware is not on the device ({last}) while {doing},"
            " run citysense-provision deploy first",
            last,
        )
    return DeviceError(f"the device raised {last} while {doing}, check the node's firmware", last)


class Repl:
    """A raw-REPL session with one MicroPython device over a serial port."""

    def __init__(self, port: str, *, baud: int = 115200, timeout: float = 10.0) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.raw_paste: bool | None = None  # None: not tried yet
        self._ser: serial.Serial | None = None
        self._pending = bytearray()

    # -- open / close ------------------------------------------------------------------
    def open(self) -> None:
        ser = serial.Serial(baudrate=self.baud, timeout=0.05, exclusive=True)
        ser.port = self.port
        try:
            ser.open()
        except (OSError, ValueError) as exc:
            raise open_error(self.port, exc) from exc
        self._ser = ser

    def close(self) -> None:
        if self._ser is None:
            return
        try:
            self._ser.write(b"\r\x02")  # back to the friendly REPL
            self._ser.flush()
        except (OSError, serial.SerialException):
            pass
        try:
            self._ser.close()
        finally:
            self._ser = None

    def __enter__(self) -> Repl:
        self.open()
        try:
            self.enter_raw()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- low level ---------------------------------------------------------------------
    @property
    def ser(self) -> serial.Serial:
        if self._ser is None:
            raise ReplError(f"serial port {self.port} is not open, this is a bug")
        return self._ser

    def _write(self, data: bytes) -> None:
        try:
            self.ser.write(data)
        except (OSError, serial.SerialException) as exc:
            raise PortError(
                f"writing to {self.port} failed ({exc}), check the cable and retry"
            ) from exc

    def _read(self, n: int) -> bytes:
        try:
            return bytes(self.ser.read(n))
        except (OSError, serial.SerialException) as exc:
            raise PortError(
                f"reading from {self.port} failed ({exc}), check the cable and retry"
            ) from exc

    def _fill(self) -> None:
        """Move whatever has arrived (waiting up to the serial read timeout) to _pending."""
        waiting = self.ser.in_waiting
        self._pending += self._read(max(1, min(4096, waiting)))

    def read_exact(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._pending) < n and time.monotonic() < deadline:
            self._fill()
        out = bytes(self._pending[:n])
        del self._pending[:n]
        return out

    def read_until(self, suffix: bytes, timeout: float) -> bytes:
        """Read through the first `suffix`; returns the bytes read (ending in it) or raises."""
        deadline = time.monotonic() + timeout
        while (at := self._pending.find(suffix)) < 0:
            if time.monotonic() > deadline:
                raise ReplError(
                    f"the device on {self.port} stopped answering (waited {timeout:g} s for"
                    f" {suffix!r}), reset the node and retry"
                )
            if len(self._pending) > _MAX_OUTPUT:
                raise ReplError(f"the device on {self.port} sent too much output, reset it")
            self._fill()
        end = at + len(suffix)
        out = bytes(self._pending[:end])
        del self._pending[:end]
        return out

    # -- raw REPL ----------------------------------------------------------------------
    def enter_raw(self) -> None:
        """Interrupt the running program and enter the raw REPL, within self.timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            self._write(b"\r\x03")
            time.sleep(0.05)
            self._write(b"\x03")
            time.sleep(0.1)
            self.ser.reset_input_buffer()
            self._pending.clear()
            self._write(b"\r\x01")
            step_end = min(deadline, time.monotonic() + 1.5)
            while time.monotonic() < step_end:
                self._fill()
                at = self._pending.find(_BANNER)
                if at >= 0:
                    del self._pending[: at + len(_BANNER)]
                    return
            if time.monotonic() >= deadline:
                raise ReplError(
                    f"no MicroPython REPL answered on {self.port} within {self.timeout:g} s,"
                    " check that the node runs MicroPython (citysense-provision flash) and"
                    " that the port is the node's"
                )

    def _send_raw_paste(self, code: bytes) -> bool:
        """Try raw-paste; returns False if the device does not support it."""
        self._write(b"\x05A\x01")
        deadline = time.monotonic() + self.timeout
        head = self.read_exact(2, self.timeout)
        if head == b"R\x00":
            return False
        if head != b"R\x01":
            # an old firmware took the bytes as input and re-printed the banner
            self.read_until(_BANNER[len(head) :] if head == b"ra" else b">", self.timeout)
            return False
        window_raw = self.read_exact(2, self.timeout)
        if len(window_raw) < 2:
            raise ReplError(f"the device on {self.port} broke off raw-paste, reset it and retry")
        window = struct.unpack("<H", window_raw)[0]
        remain = window
        i = 0
        while i < len(code):
            while remain == 0 or self._pending or self.ser.in_waiting:
                ctl = self.read_exact(1, 0.05)
                if ctl == b"\x01":
                    remain += window
                elif ctl == b"\x04":
                    self._write(b"\x04")
                    raise ReplError(
                        f"the device on {self.port} aborted the upload, reset it and retry"
                    )
                elif ctl == b"" and time.monotonic() > deadline:
                    raise ReplError(
                        f"the device on {self.port} stopped accepting code, reset it and retry"
                    )
            part = code[i : i + remain]
            self._write(part)
            remain -= len(part)
            i += len(part)
            deadline = time.monotonic() + self.timeout
        self._write(b"\x04")
        self.read_until(b"\x04", self.timeout)
        return True

    def _send_plain(self, code: bytes) -> None:
        for i in range(0, len(code), _PLAIN_CHUNK):
            self._write(code[i : i + _PLAIN_CHUNK])
            time.sleep(0.01)
        self._write(b"\x04")
        ok = self.read_exact(2, self.timeout)
        if ok != b"OK":
            raise ReplError(f"the device on {self.port} refused the code, reset it and retry")

    def exec_raw(self, code: str, timeout: float | None = None) -> tuple[str, str]:
        """Run `code` on the device; returns (stdout, stderr) as text."""
        data = code.encode()
        if self.raw_paste is not False:
            self.raw_paste = self._send_raw_paste(data)
        if not self.raw_paste:
            self._send_plain(data)
        wait = self.timeout if timeout is None else timeout
        out = self.read_until(b"\x04", wait)[:-1]
        err = self.read_until(b"\x04", wait)[:-1]
        self.read_until(b">", wait)
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def exec(self, code: str, doing: str, timeout: float | None = None) -> str:
        """Run `code`; a device exception becomes a DeviceError about `doing`."""
        out, err = self.exec_raw(code, timeout)
        if err.strip():
            raise device_error(err, doing)
        return out
