"""The device-id rule: 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter
or digit. An id names a registry file (`<id>.json`), an MQTT topic level and a COSE kid,
so it holds no '/', '+', '#', spaces or control characters. Gateway ids follow it too.
"""

from __future__ import annotations

import re

MAX_LEN = 64
PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class DeviceIdError(ValueError):
    """An id that breaks the rule; the message quotes it (escaped by repr) and the rule."""


def is_valid(text: object) -> bool:
    return isinstance(text, str) and PATTERN.fullmatch(text) is not None


def check(text: object, what: str = "device id") -> str:
    """`text` if it follows the rule, else DeviceIdError naming `what`."""
    if isinstance(text, str) and PATTERN.fullmatch(text) is not None:
        return text
    raise DeviceIdError(f"invalid {what} {text!r}: use {RULE}")
