"""Is the gateway's own clock synchronised? Asked of the kernel (adjtimex), cached 1 s.

Nodes take their Unix time from the gateway's TIME frames and sign readings with it, so a
gateway whose clock was never set (a Raspberry Pi has no RTC: it boots at the last saved
time, or 1970) must not send TIME. The kernel knows: an NTP client (systemd-timesyncd,
chrony, ntpd) clears STA_UNSYNC once it has disciplined the clock, and adjtimex() then
returns something other than TIME_ERROR. A read (modes = 0) needs no privilege, but a
seccomp filter may refuse the call (systemd's ProtectClock=yes does, with EPERM): that
counts as "not synchronised" and is reported as `unknown` with the errno.

`clock_synced()` is what callers use before sending TIME; `clock_state()` says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

TIME_ERROR = 5
"""adjtimex() return value: the clock is not synchronised (linux/timex.h)."""
STA_UNSYNC = 0x0040
"""timex.status bit: the clock is not synchronised."""
CACHE_S = 1.0


class _Timex(ctypes.Structure):
    """struct timex (linux/timex.h), enough of it to read `status`; the kernel writes the
    whole struct, so the trailing padding keeps it the kernel's size."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


@dataclass(frozen=True, slots=True)
class ClockState:
    synced: bool
    state: str
    """`synchronised`, `unsynchronised` or `unknown` (the call failed: see `detail`)."""
    detail: str = ""


def interpret(ret: int, status: int) -> ClockState:
    """The kernel's answer as a state: synchronised unless it says TIME_ERROR or
    STA_UNSYNC (a leap-second state such as TIME_INS still means a disciplined clock)."""
    if ret == -1:
        return ClockState(False, "unknown", "adjtimex failed")
    if ret == TIME_ERROR or status & STA_UNSYNC:
        return ClockState(False, "unsynchronised", f"adjtimex={ret} status=0x{status:x}")
    return ClockState(True, "synchronised", f"adjtimex={ret} status=0x{status:x}")


@functools.cache
def _adjtimex() -> Callable[..., int] | str:
    """libc's adjtimex, or why there is none. Looked up once: `find_library` runs
    `ldconfig -p` in a child process (a fork of the whole agent), and the status loop
    reads the clock every second."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn: Callable[..., int] = libc.adjtimex
    except (OSError, AttributeError) as exc:
        return f"no adjtimex: {exc}"
    return fn


def read_kernel() -> ClockState:
    """One adjtimex(modes=0) call; never raises."""
    fn = _adjtimex()
    if isinstance(fn, str):
        return ClockState(False, "unknown", fn)
    tx = _Timex()
    ret = int(fn(ctypes.byref(tx)))
    if ret == -1:
        err = ctypes.get_errno()
        return ClockState(False, "unknown", f"adjtimex: {os.strerror(err)} (errno {err})")
    return interpret(ret, int(tx.status))


class Clock:
    """`read_kernel()` at most once per `cache_s`; `require_sync=False` (labs, tests on
    machines without NTP) answers synced whatever the kernel says, and still reports it."""

    def __init__(
        self,
        *,
        require_sync: bool = True,
        reader: Callable[[], ClockState] = read_kernel,
        monotonic: Callable[[], float] = time.monotonic,
        cache_s: float = CACHE_S,
    ) -> None:
        self.require_sync = require_sync
        self._reader = reader
        self._monotonic = monotonic
        self._cache_s = cache_s
        self._at: float | None = None
        self._state = ClockState(False, "unknown", "not read yet")

    def state(self) -> ClockState:
        now = self._monotonic()
        if self._at is None or now - self._at >= self._cache_s:
            self._state = self._reader()
            self._at = now
        return self._state

    def may_send_time(self) -> bool:
        return self.state().synced or not self.require_sync


_default = Clock()


def configure(require_sync: bool) -> None:
    """Set the process-wide policy (the agent calls this once from the config)."""
    _default.require_sync = require_sync


def clock_synced() -> bool:
    """True when TIME may go to nodes: the kernel reports the clock synchronised, or the
    config says `[time] require_sync = false`. Cached for a second."""
    return _default.may_send_time()


def clock_state() -> ClockState:
    return _default.state()


def default_clock() -> Clock:
    return _default
