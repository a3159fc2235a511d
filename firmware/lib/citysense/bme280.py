"""Bosch BME280 over I2C: register-level driver with the datasheet's compensation.

Forced mode, oversampling x1 for T, P and H. `read()` returns (temperature in deg C,
pressure in Pa, relative humidity in %). The compensation formulas are the integer ones
of the BME280 datasheet (section 4.2.3 and 8.2): T in 0.01 deg C, P in Pa as Q24.8,
H in %RH as Q22.10.

The functions are native code (`@micropython.native`): machine code is not kept in the
GC heap (the ESP32 copies it to IRAM), bytecode would be, ~0.5 KiB of it.
"""

import struct
import time

try:
    import micropython
    from micropython import const
except ImportError:  # CPython: native does nothing there (citysense/pyviper.py)
    from citysense.pyviper import const, micropython  # type: ignore[assignment,no-redef]


ADDRESS = const(0x76)
CHIP_ID = const(0x60)
_REG_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)


@micropython.native
def parse_calibration(c00, c26):
    """Trimming values from registers 0x88..0xA1 (26 bytes) and 0xE1..0xE7 (7 bytes)."""
    t_p = struct.unpack("<HhhHhhhhhhhh", c00[:24])
    h1 = c00[25]
    h2, h3 = struct.unpack("<hB", c26[:3])
    e4, e5, e6 = c26[3], c26[4], c26[5]
    h4 = (e4 << 4) | (e5 & 0x0F)
    if h4 & 0x800:
        h4 -= 0x1000
    h5 = (e6 << 4) | (e5 >> 4)
    if h5 & 0x800:
        h5 -= 0x1000
    h6 = c26[6] - 256 if c26[6] > 127 else c26[6]
    return t_p + (h1, h2, h3, h4, h5, h6)


@micropython.native
def fine_temperature(cal, adc_t):
    """The datasheet's t_fine (fine temperature, shared by the P and H formulas)."""
    t1, t2, t3 = cal[0], cal[1], cal[2]
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    return var1 + var2


@micropython.native
def compensate(cal, adc_t, adc_p, adc_h):
    """Raw ADC values -> (T in 0.01 deg C, P in Pa*256, H in %RH*1024), all ints."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = cal
    t_fine = fine_temperature(cal, adc_t)
    temp = (t_fine * 5 + 128) >> 8
    # pressure (64-bit integer formula)
    var1 = t_fine - 128000
    var2 = var1 * var1 * p6
    var2 = var2 + ((var1 * p5) << 17)
    var2 = var2 + (p4 << 35)
    var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
    var1 = (((1 << 47) + var1) * p1) >> 33
    if var1 == 0:
        press = 0
    else:
        p = 1048576 - adc_p
        p = (((p << 31) - var2) * 3125) // var1
        var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (p8 * p) >> 19
        press = ((p + var1 + var2) >> 8) + (p7 << 4)
    # humidity
    v = t_fine - 76800
    v = ((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15) * (
        ((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    v = min(max(v, 0), 419430400)
    return temp, press, v >> 12


class BME280:
    @micropython.native
    def __init__(self, i2c, address=ADDRESS):
        self.i2c = i2c
        self.address = address
        chip = i2c.readfrom_mem(address, _REG_ID, 1)[0]
        if chip != CHIP_ID:
            raise OSError("bme280: chip id 0x%02x, expected 0x60" % chip)
        self.cal = parse_calibration(
            i2c.readfrom_mem(address, 0x88, 26), i2c.readfrom_mem(address, 0xE1, 7)
        )
        self._raw = bytearray(8)

    @micropython.native
    def read_raw(self):
        a = self.address
        self.i2c.writeto_mem(a, _REG_CTRL_HUM, b"\x01")
        self.i2c.writeto_mem(a, _REG_CTRL_MEAS, b"\x25")  # T x1, P x1, forced mode
        for _ in range(20):
            if not self.i2c.readfrom_mem(a, _REG_STATUS, 1)[0] & 0x08:
                break
            time.sleep_ms(2)
        self.i2c.readfrom_mem_into(a, _REG_DATA, self._raw)
        d = self._raw
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    @micropython.native
    def read(self):
        t, p, h = compensate(self.cal, *self.read_raw())
        return t / 100, p / 256, h / 1024
