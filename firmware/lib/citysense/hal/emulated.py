# check_firmware: unix-only
"""HAL for the MicroPython unix port inside `citysense-emulator`.

The emulator passes the hardware in environment variables:
CITYSENSE_UID (hex unique id), CITYSENSE_RESET (reset cause of this boot),
CITYSENSE_LINK_FD (the data UART: a raw pty master fd), CITYSENSE_WDT_FD (a pipe: the
emulator resets the node when feeds stop), CITYSENSE_SENSORS (attached emulated
sensors, e.g. "bme280,battery"), CITYSENSE_SEED (seed of the emulated readings).
"""

import gc
import os
import select
import sys

from citysense.hal import emu_board

HARDWARE = "esp32"  # what it emulates: bundles for "esp32" install here
_EXIT_SOFT = 3  # the emulator restarts the node with reset cause "soft"
_EXIT_DEEPSLEEP = 4


def _env(name, default):
    v = os.getenv(name)
    return default if v is None or v == "" else v


emu_board.attach(
    int(_env("CITYSENSE_SEED", "1")),
    _env("CITYSENSE_SENSORS", "bme280,battery").split(","),
    os.getenv("CITYSENSE_WDT_FD"),
)


def unique_id():
    import binascii

    return binascii.unhexlify(_env("CITYSENSE_UID", "020000000001"))


def reset_cause():
    return _env("CITYSENSE_RESET", "power-on")


def reset():
    sys.exit(_EXIT_SOFT)


class _Uart:
    """The data UART: a raw pty master fd with O_NONBLOCK set by the emulator (MicroPython
    streams loop until the buffer is full on a blocking fd); poll first anyway."""

    def __init__(self, fd):
        self._f = open(fd, "r+b")
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(self._f, select.POLLOUT)

    def any(self):
        for _obj, ev in self._poll.ipoll(0):
            if ev & select.POLLIN:
                return 1
        return 0

    def readinto(self, buf):
        if not self.any():
            return None
        try:
            return self._f.readinto(buf)  # None: EAGAIN, nothing there after all
        except OSError:
            return None  # EIO: nobody has the other end open

    def write(self, buf):
        for _obj, ev in self._wpoll.ipoll(0):
            if ev & select.POLLOUT:
                try:
                    return self._f.write(buf) or 0
                except OSError:
                    return 0
        return 0  # line full: the bytes are lost, as on a UART with no reader


def uart(uid=1, tx=17, rx=16, baud=115200):
    fd = os.getenv("CITYSENSE_LINK_FD")
    if not fd:
        raise OSError("no data UART (CITYSENSE_LINK_FD is not set)")
    return _Uart(int(fd))


def i2c(uid=0, scl=22, sda=21, freq=400000):
    return emu_board  # the module is the bus (see emu_board)


def adc(pin=35):
    return emu_board


def wdt(timeout_ms):
    emu_board.arm(timeout_ms)
    return emu_board


def set_time(unix_ms):
    """The unix port's clock is the host's: the RTC setting is reported, not applied."""
    print('{"ev": "rtc", "unix_s": %d}' % (unix_ms // 1000))


def lightsleep(ms):
    import time

    time.sleep_ms(ms)


def deepsleep(ms):
    sys.exit(_EXIT_DEEPSLEEP)


def free_heap():
    return gc.mem_free()


def event(ev, seq=-1, n=-1):
    """One JSON line on stdout for the emulator's caller (whole-system tests' ledger)."""
    if n >= 0:
        print('{"ev": "%s", "seq": %d, "n": %d}' % (ev, seq, n))
    elif seq >= 0:
        print('{"ev": "%s", "seq": %d}' % (ev, seq))
    else:
        print('{"ev": "%s"}' % ev)


def crash():
    """After an uncaught error: the emulator restarts the node with cause "panic"."""
    sys.exit(1)
