"""Errors the CLI turns into one line: `citysense-provision: what went wrong, what to do`."""

from __future__ import annotations


class ProvisionError(Exception):
    """Base: the message is the whole user-facing line (what went wrong, what to do)."""


class PortError(ProvisionError):
    """The serial port cannot be opened or used."""


class ReplError(ProvisionError):
    """No (working) MicroPython REPL answers on the port."""


class DeviceError(ProvisionError):
    """Code run on the device raised; `.exc_line` is the device's last traceback line."""

    def __init__(self, message: str, exc_line: str = "") -> None:
        super().__init__(message)
        self.exc_line = exc_line


class OutOfFlashError(DeviceError):
    """The device's filesystem is full (OSError 28, ENOSPC)."""


class RegistryError(ProvisionError):
    """The registry directory or one of its entries is missing, invalid or conflicting."""


class FlashError(ProvisionError):
    """esptool could not detect, erase, write or verify the chip."""
