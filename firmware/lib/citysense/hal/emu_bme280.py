# check_firmware: unix-only
"""An emulated Bosch BME280 on the I2C bus: answers register reads like the chip.

Calibration = the datasheet's example trimming values (T, P) and typical humidity ones;
raw ADC values wander deterministically around a mild day (seeded).
"""

ADDRESS = 0x76
_CALIB_00 = bytes(
    [
        0x70,
        0x6B,
        0x43,
        0x67,
        0x18,
        0xFC,
        0x7D,
        0x8E,
        0x43,
        0xD6,
        0xD0,
        0x0B,
        0x27,
        0x0B,
        0x8C,
        0x00,
        0xF9,
        0xFF,
        0x8C,
        0x3C,
        0xF8,
        0xC6,
        0x70,
        0x17,
        0x00,
        0x4B,
    ]
)  # 0x88..0xA1: T1..T3, P1..P9, 0xA0 unused, 0xA1 = H1
_CALIB_26 = bytes([0x6A, 0x01, 0x00, 0x14, 0x05, 0x00, 0x1E])  # 0xE1..0xE7: H2..H6


class Bme280:
    def __init__(self, seed):
        self._regs = bytearray(256)
        self._regs[0xD0] = 0x60
        self._regs[0x88 : 0x88 + len(_CALIB_00)] = _CALIB_00
        self._regs[0xE1 : 0xE1 + len(_CALIB_26)] = _CALIB_26
        self._rng = (seed * 2654435761 + 1) & 0x7FFFFFFF
        self._t = 519888
        self._p = 415148
        self._h = 27000

    def _next(self, span):
        self._rng = (self._rng * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._rng >> 8) % (2 * span + 1) - span

    def _measure(self):
        self._t = min(max(self._t + self._next(400), 500000), 540000)
        self._p = min(max(self._p + self._next(300), 400000), 430000)
        self._h = min(max(self._h + self._next(200), 20000), 34000)
        r = self._regs
        p, t, h = self._p, self._t, self._h
        r[0xF7], r[0xF8], r[0xF9] = p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4
        r[0xFA], r[0xFB], r[0xFC] = t >> 12, (t >> 4) & 0xFF, (t & 0xF) << 4
        r[0xFD], r[0xFE] = h >> 8, h & 0xFF

    def read(self, reg, n):
        return bytes(self._regs[reg : reg + n])

    def write(self, reg, data):
        for i in range(len(data)):
            self._regs[reg + i] = data[i]
        if reg == 0xE0 and data[0] == 0xB6:
            self._regs[0xF4] = 0  # soft reset: back to sleep mode
        if reg <= 0xF4 < reg + len(data) and self._regs[0xF4] & 3 == 1:
            self._measure()  # forced mode: one measurement, then sleep again
            self._regs[0xF4] &= 0xFC
