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

from citysense.hal import emu_bme280

_EXIT_SOFT = 3  # the emulator restarts the node with reset cause "soft"
_EXIT_DEEPSLEEP = 4


def _env(name, default):
    v = os.getenv(name)
    return default if v is None or v == "" else v


_SEED = int(_env("CITYSENSE_SEED", "1"))
_SENSORS = _env("CITYSENSE_SENSORS", "bme280,battery").split(",")


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


class _I2C:
    def __init__(self):
        self._devs = {}
        if "bme280" in _SENSORS:
            self._devs[emu_bme280.ADDRESS] = emu_bme280.Bme280(_SEED)

    def scan(self):
        return sorted(self._devs)

    def _dev(self, addr):
        d = self._devs.get(addr)
        if d is None:
            raise OSError(19)  # ENODEV: no ACK from that address
        return d

    def readfrom_mem(self, addr, reg, n):
        return self._dev(addr).read(reg, n)

    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = self._dev(addr).read(reg, len(buf))

    def writeto_mem(self, addr, reg, data):
        self._dev(addr).write(reg, data)


def i2c(uid=0, scl=22, sda=21, freq=400000):
    return _I2C()


class _Adc:
    def __init__(self):
        self._n = _SEED

    def read_uv(self):
        if "battery" not in _SENSORS:
            return 0
        # a LiPo through a 1:2 divider: 3.70..4.10 V -> 1.85..2.05 V at the pin
        self._n = (self._n * 1103515245 + 12345) & 0x7FFFFFFF
        return 1950000 + (self._n % 100000) - 50000


def adc(pin=35):
    return _Adc()


class _Wdt:
    def __init__(self, timeout_ms):
        fd = os.getenv("CITYSENSE_WDT_FD")
        self._f = open(int(fd), "wb") if fd else None
        if self._f:
            self._f.write(b"i%d\n" % timeout_ms)

    def feed(self):
        if self._f:
            self._f.write(b"f\n")


def wdt(timeout_ms):
    return _Wdt(timeout_ms)


def set_time(unix_ms):
    pass  # the unix port's clock is the host's; the app keeps its own Unix time offset


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
