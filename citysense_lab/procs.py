"""Spawning and killing the system's processes, with bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO


class Proc:
    """A child in its own process group, its output captured to a log file.

    `kill9()` is a power cut (SIGKILL to the whole group); `stop()` a clean shutdown.
    """

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        self.env = dict(os.environ, **(env or {}))
        self._log: IO[bytes] | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")  # closed in _closed()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        self._closed()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        # leftovers of the group (e.g. a micropython child) go too
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.popen.returncode
        self._closed()
        return code

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `cond` until true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    if cond():
        return
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Reaper:
    """Remembers every Proc of a test and stops them all at the end, whatever happened."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []
        self._lock = threading.Lock()

    def add(self, proc: Proc) -> Proc:
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        with self._lock:
            procs = list(reversed(self._procs))
        for proc in procs:
            try:
                proc.stop(timeout=5)
            except Exception:  # cleanup must reach every process
                pass
