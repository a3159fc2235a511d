"""Hardware abstraction: the few things the node app touches, per platform.

`esp32` drives the real chip through `machine`/`esp32`; `emulated` runs the same app on
the MicroPython unix port inside `citysense-emulator` (UART = a pty fd, I2C = an
emulated BME280, WDT = a pipe to the emulator). Both export the same functions:

unique_id() reset_cause() reset() uart(id, tx, rx, baud) i2c(id, scl, sda) adc(pin)
wdt(timeout_ms) set_time(unix_ms) lightsleep(ms) deepsleep(ms) free_heap() event(...)
"""

import sys

if sys.platform == "esp32":
    from citysense.hal.esp32 import *  # noqa: F403
else:
    from citysense.hal.emulated import *  # noqa: F403
