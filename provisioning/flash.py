"""Flash MicroPython onto an ESP32 with esptool (as a library).

Detect the chip first (refuse anything but a plain ESP32: the firmware offset and image
differ per chip), then erase, write at 0x1000 and verify. A port where no ESP32
bootloader answers fails after a bounded number of connection attempts.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from .errors import FlashError, ProvisionError
from .transport import open_error

ESP32_OFFSET = 0x1000
IMAGE_MAGIC = 0xE9
CONNECT_ATTEMPTS = 2


def check_image(firmware: Path) -> bytes:
    try:
        data = firmware.read_bytes()
    except OSError as exc:
        raise ProvisionError(
            f"cannot read firmware {firmware} ({exc.strerror}), check --firmware"
        ) from exc
    if len(data) < 1024 or data[0] != IMAGE_MAGIC:
        raise ProvisionError(
            f"{firmware} is not an ESP32 firmware image (no 0xE9 header), download the"
            " ESP32_GENERIC .bin from the MicroPython site"
        )
    return data


def check_port(port: str) -> None:
    """Open and close the port ourselves first: clear errors for missing/busy/denied."""
    ser = serial.Serial(baudrate=115200, exclusive=True)
    ser.port = port
    try:
        ser.open()
    except (OSError, ValueError) as exc:
        raise open_error(port, exc) from exc
    ser.close()


def _chip_name(esp: Any) -> str:
    return str(getattr(esp, "CHIP_NAME", "unknown"))


def flash(port: str, firmware: Path, baud: int, progress: Callable[[str], None]) -> str:
    """Returns the SHA-256 hex of the image written."""
    import hashlib

    from esptool import cmds
    from esptool.util import FatalError

    data = check_image(firmware)
    check_port(port)
    progress(f"detecting the chip on {port}")
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            esp = cmds.detect_chip(port, 115200, connect_attempts=CONNECT_ATTEMPTS)
    except (FatalError, OSError, serial.SerialException) as exc:
        raise FlashError(
            f"no ESP32 bootloader answered on {port}, hold BOOT while pressing EN (reset)"
            " and retry, or check the port is the node's USB serial"
        ) from exc
    try:
        name = _chip_name(esp)
        if name != "ESP32":
            raise FlashError(
                f"the chip on {port} is an {name}, not an ESP32: this firmware and offset"
                " are for ESP32 only"
            )
        progress(f"chip: {name}; erasing the flash")
        esp = cmds.run_stub(esp)
        if baud != 115200:
            esp.change_baud(baud)
        cmds.attach_flash(esp)
        cmds.erase_flash(esp)
        progress(f"writing {firmware.name} ({len(data)} bytes) at {ESP32_OFFSET:#x}")
        cmds.write_flash(esp, [(ESP32_OFFSET, data)])
        progress("verifying")
        cmds.verify_flash(esp, [(ESP32_OFFSET, data)])
        cmds.reset_chip(esp, "hard-reset")
    except FatalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlashError(f"flashing failed on {port}: {first}, reset the node and retry") from exc
    except (OSError, serial.SerialException) as exc:
        raise FlashError(f"the connection to {port} broke ({exc}), check the cable") from exc
    finally:
        with contextlib.suppress(Exception):
            esp._port.close()
    return hashlib.sha256(data).hexdigest()
