"""Logging that stays readable under floods: one line per event, then a summary."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most one line per key per `interval` seconds; the next line says how many were
    suppressed in between."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0, max_keys: int = 4096):
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, fmt: str, *args: object) -> None:
        self.log(logging.WARNING, key, fmt, *args)

    def log(self, level: int, key: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            fmt += " suppressed=%d"
            args = (*args, n)
        self.logger.log(level, fmt, *args)
