"""Sensors by name: `open_all(names)` gives one `read_into(pack, t)` function per name,
each adding its SenML readings to the pack.

Functions (closures over the opened device), not classes: on the unix port a class
costs ~0.3 KiB of heap before its first method, and the node runs in a 96 KiB heap
that also holds a firmware transfer while it samples (docs/firmware.md, "Memory").
"""

from citysense import hal

_BATTERY_PIN = 35
_DIVIDER = 2  # 1:2 resistor divider in front of the ADC pin


def _bme280():
    from citysense.bme280 import BME280

    dev = BME280(hal.i2c())

    def read_into(pack, t):
        try:
            temp, press, hum = dev.read()
        except OSError:
            pack.add("sensor/bme280", "error", time=t)
            return
        pack.add("temp", round(temp, 2), "Cel", time=t)
        pack.add("pressure", round(press), "Pa", time=t)
        pack.add("humidity", round(hum, 1), "%RH", time=t)

    return read_into


def _battery():
    adc = hal.adc(_BATTERY_PIN)

    def read_into(pack, t):
        pack.add("battery", adc.read_uv() * _DIVIDER // 1000 / 1000, "V", time=t)

    return read_into


def _missing(name):
    """A configured sensor that did not answer at start: reported, never fatal."""
    name = "sensor/" + name

    def read_into(pack, t):
        pack.add(name, "absent", time=t)

    return read_into


_KINDS = {"bme280": _bme280, "battery": _battery}


def open_all(names):
    out = []
    for name in names:
        kind = _KINDS.get(name)
        try:
            out.append(kind() if kind else _missing(name))
        except OSError:
            out.append(_missing(name))
    return out
