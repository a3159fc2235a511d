"""Process bookkeeping for the comparison: start, sample /proc, kill -9, stop everything.

Each system's own processes are `Tracked`: their CPU time (from wait4's rusage when they
end, from /proc/<pid>/stat while alive), write_bytes (/proc/<pid>/io, read just before a
kill) and resident memory (VmRSS samples, VmHWM) add up across restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
ALL: list[subprocess.Popen[bytes]] = []


def spawn(
    argv: Sequence[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ALL.append(p)
    return p


def stop(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(5)


def stop_all() -> None:
    """Ctrl-C / failure path: SIGTERM everything still running, then SIGKILL stragglers."""
    for p in reversed(ALL):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in reversed(ALL):
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_proc(pid: int) -> dict[str, float] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    except (OSError, IndexError, ValueError):
        return None
    return {
        "cpu": (int(fields[11]) + int(fields[12])) / CLK,
        "write_bytes": float(io.get("write_bytes", 0)),
        "rss": float(st.get("VmRSS", "0 kB").split()[0]) * 1024,
        "hwm": float(st.get("VmHWM", "0 kB").split()[0]) * 1024,
    }


class Tracked:
    """One of the system's own processes, restartable; totals over all its instances."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, **kw: object) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.kw = kw
        self.proc: subprocess.Popen[bytes] | None = None
        self.done_cpu = 0.0
        self.done_write = 0.0
        self.peak_rss = 0.0
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()
        self.instances = 0

    def start(self) -> None:
        self.proc = spawn(self.argv, self.log, **self.kw)  # type: ignore[arg-type]
        self.instances += 1
        self.last = {}

    def sample(self) -> dict[str, float]:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                s = read_proc(self.proc.pid)
                if s is not None:
                    self.last = s
                    self.peak_rss = max(self.peak_rss, s["hwm"], s["rss"])
            return {
                "cpu": self.done_cpu + self.last.get("cpu", 0.0),
                "write_bytes": self.done_write + self.last.get("write_bytes", 0.0),
                "rss": self.last.get("rss", 0.0) if self.proc is not None else 0.0,
            }

    def _reap(self, sig: int) -> None:
        assert self.proc is not None
        self.sample()
        with self.lock:
            p = self.proc
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
            cpu = self.last.get("cpu", 0.0)
            try:
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                cpu = ru.ru_utime + ru.ru_stime
                self.peak_rss = max(self.peak_rss, ru.ru_maxrss * 1024.0)
            except ChildProcessError:
                pass
            self.done_cpu += cpu
            self.done_write += self.last.get("write_bytes", 0.0)
            self.last = {}
            self.proc = None

    def kill9(self) -> None:
        self._reap(signal.SIGKILL)

    def terminate(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.sample()
            self.proc.terminate()
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                # /proc stays readable until reaped: keep the last figures fresh
                s = read_proc(self.proc.pid)
                if s is not None and s["cpu"] >= self.last.get("cpu", 0.0):
                    self.last = s
                time.sleep(0.05)
            if self.proc.poll() is None:
                self._reap(signal.SIGKILL)
                return
        with self.lock:
            self.done_cpu += self.last.get("cpu", 0.0)
            self.done_write += self.last.get("write_bytes", 0.0)
            self.last = {}
            self.proc = None
