"""Sensors by name: each has `read_into(pack, t)` adding its SenML readings."""

from citysense import hal

_BATTERY_PIN = 35
_DIVIDER = 2  # 1:2 resistor divider in front of the ADC pin


class Bme280Sensor:
    def __init__(self):
        from citysense.bme280 import BME280

        self.dev = BME280(hal.i2c())
        self.errors = 0

    def read_into(self, pack, t):
        try:
            temp, press, hum = self.dev.read()
        except OSError:
            self.errors += 1
            pack.add("sensor/bme280", "error", time=t)
            return
        pack.add("temp", round(temp, 2), "Cel", time=t)
        pack.add("pressure", round(press), "Pa", time=t)
        pack.add("humidity", round(hum, 1), "%RH", time=t)


class Battery:
    def __init__(self):
        self.adc = hal.adc(_BATTERY_PIN)

    def read_into(self, pack, t):
        pack.add("battery", self.adc.read_uv() * _DIVIDER // 1000 / 1000, "V", time=t)


class Missing:
    """A configured sensor that did not answer at start: reported, never fatal."""

    def __init__(self, name):
        self.name = "sensor/" + name

    def read_into(self, pack, t):
        pack.add(self.name, "absent", time=t)


_KINDS = {"bme280": Bme280Sensor, "battery": Battery}


def open_all(names):
    out = []
    for name in names:
        kind = _KINDS.get(name)
        try:
            out.append(kind() if kind else Missing(name))
        except OSError:
            out.append(Missing(name))
    return out
