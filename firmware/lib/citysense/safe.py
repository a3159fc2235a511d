"""Crash-loop detection: N boots without a healthy run -> safe mode.

`enter()` (called by main.py at boot) bumps /state/crashes and says whether to stay in
safe mode; the app calls `healthy()` after it ran well for HEALTHY_MS, which clears the
counter. So "N resets within M minutes" = N crash resets (panic, watchdog) in a row, each
before M minutes of healthy running. Power-on, soft (reboot command) and deep-sleep
wake-ups clear the counter.
"""

from citysense import state

LIMIT = 5
HEALTHY_MS = 180000


_CRASHES = ("panic", "wdt", "hard", "unknown")


def enter(cause):
    """Count this boot if a crash caused it (power cuts and reboots do not count)."""
    if cause not in _CRASHES:
        healthy()
        return False
    n = state.load("crashes", 0) + 1
    state.store("crashes", n)
    return n > LIMIT


def healthy():
    if state.load("crashes", 0):
        state.store("crashes", 0)


def clear():
    state.store("crashes", 0)
