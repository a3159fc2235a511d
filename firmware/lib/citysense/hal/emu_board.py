# check_firmware: unix-only
"""The emulated board around the ESP32: an I2C bus with a Bosch BME280 at 0x76, the
battery divider on an ADC pin, and the watchdog line to the emulator.

The peripherals are this module's functions, and `emulated.i2c()/adc()/wdt()` hand out
the module itself as the device object: it has the machine.I2C methods the driver uses
(`scan`, `readfrom_mem`, `readfrom_mem_into`, `writeto_mem`), the machine.ADC one
(`read_uv`) and the machine.WDT one (`feed`). On the device these are C objects that
cost the Python heap nothing; here a class per device costs ~0.3 KiB of the node's heap
or more on the unix port, so the emulation stays out of the way of the heap budget.

The BME280 answers register reads like the chip. Calibration = the datasheet's example
trimming values (T, P) and typical humidity ones; raw ADC values wander
deterministically around a mild day (seeded).
"""

ADDRESS = 0x76
# 0x88..0xA1: T1..T3, P1..P9, 0xA0 unused, 0xA1 = H1
_CALIB_00 = (
    b"\x70\x6b\x43\x67\x18\xfc\x7d\x8e\x43\xd6\xd0\x0b\x27"
    b"\x0b\x8c\x00\xf9\xff\x8c\x3c\xf8\xc6\x70\x17\x00\x4b"
)
_CALIB_26 = b"\x6a\x01\x00\x14\x05\x00\x1e"  # 0xE1..0xE7: H2..H6

_regs = None  # the BME280's register file; None: no BME280 on the bus
_rng = 0  # the BME280's value wander
_raw_t, _raw_p, _raw_h = 519888, 415148, 27000  # its raw ADC values
_battery = False
_adc_rng = 0
_wdt_fd = None  # the pipe to the emulator (CITYSENSE_WDT_FD)
_wdt = None  # that pipe opened, once the firmware arms the WDT


def attach(seed, sensors, wdt_fd):
    """Power on the board: which emulated sensors answer, the seed of their values."""
    global _regs, _rng, _battery, _adc_rng, _wdt_fd
    _battery = "battery" in sensors
    _rng = (seed * 2654435761 + 1) & 0x7FFFFFFF
    _adc_rng = seed
    if wdt_fd:
        _wdt_fd = int(wdt_fd)
    if "bme280" in sensors:
        _regs = bytearray(256)
        _regs[0xD0] = 0x60
        _regs[0x88 : 0x88 + len(_CALIB_00)] = _CALIB_00
        _regs[0xE1 : 0xE1 + len(_CALIB_26)] = _CALIB_26


# ---- I2C (machine.I2C methods) ----
def scan():
    return [ADDRESS] if _regs else []


def _dev(addr):
    if addr != ADDRESS or _regs is None:
        raise OSError(19)  # ENODEV: no ACK from that address
    return _regs


def readfrom_mem(addr, reg, n):
    return bytes(_dev(addr)[reg : reg + n])


def readfrom_mem_into(addr, reg, buf):
    buf[:] = _dev(addr)[reg : reg + len(buf)]


def _next(span):
    global _rng
    _rng = (_rng * 1103515245 + 12345) & 0x7FFFFFFF
    return (_rng >> 8) % (2 * span + 1) - span


def _measure(r):
    global _raw_t, _raw_p, _raw_h
    t = _raw_t = min(max(_raw_t + _next(400), 500000), 540000)
    p = _raw_p = min(max(_raw_p + _next(300), 400000), 430000)
    h = _raw_h = min(max(_raw_h + _next(200), 20000), 34000)
    r[0xF7], r[0xF8], r[0xF9] = p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4
    r[0xFA], r[0xFB], r[0xFC] = t >> 12, (t >> 4) & 0xFF, (t & 0xF) << 4
    r[0xFD], r[0xFE] = h >> 8, h & 0xFF


def writeto_mem(addr, reg, data):
    r = _dev(addr)
    for i in range(len(data)):
        r[reg + i] = data[i]
    if reg == 0xE0 and data[0] == 0xB6:
        r[0xF4] = 0  # soft reset: back to sleep mode
    if reg <= 0xF4 < reg + len(data) and r[0xF4] & 3 == 1:
        _measure(r)  # forced mode: one measurement, then sleep again
        r[0xF4] &= 0xFC


# ---- ADC (machine.ADC.read_uv) ----
def read_uv():
    global _adc_rng
    if not _battery:
        return 0
    # a LiPo through a 1:2 divider: 3.70..4.10 V -> 1.85..2.05 V at the pin
    _adc_rng = (_adc_rng * 1103515245 + 12345) & 0x7FFFFFFF
    return 1950000 + (_adc_rng % 100000) - 50000


# ---- WDT (machine.WDT.feed), armed by emulated.wdt() ----
def arm(timeout_ms):
    global _wdt
    if _wdt is None and _wdt_fd is not None:
        _wdt = open(_wdt_fd, "wb")
    if _wdt is not None:
        _wdt.write(b"i%d\n" % timeout_ms)


def feed():
    if _wdt is not None:
        _wdt.write(b"f\n")
