"""HAL for the ESP32 (ESP32-WROOM-32): machine/esp32 APIs, LittleFS mounted at '/'."""

import gc
import time

import machine

HARDWARE = "esp32"  # a bundle's manifest key 3 must say this
_CAUSES = {
    machine.PWRON_RESET: "power-on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "wdt",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}
# seconds between 1970-01-01 and this port's epoch (2000-01-01 on older ports)
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0


def unique_id():
    return machine.unique_id()


def reset_cause():
    return _CAUSES.get(machine.reset_cause(), "unknown")


def reset():
    machine.reset()


def uart(uid, tx, rx, baud):
    """A UART with any()/readinto()/write(); 8N1, no flow control, 1 KiB rx buffer."""
    return machine.UART(uid, baudrate=baud, tx=tx, rx=rx, rxbuf=1024, timeout=0)


def i2c(uid=0, scl=22, sda=21, freq=400000):
    return machine.I2C(uid, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq)


def adc(pin):
    """The ADC on `pin` (11 dB: up to ~3.1 V); read_uv() gives calibrated microvolts."""
    return machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)


def wdt(timeout_ms):
    return machine.WDT(timeout=timeout_ms)


def set_time(unix_ms):
    """Set the RTC from Unix time in ms."""
    t = time.gmtime(unix_ms // 1000 - _EPOCH)
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], (unix_ms % 1000) * 1000))


def lightsleep(ms):
    machine.lightsleep(ms)


def deepsleep(ms):
    machine.deepsleep(ms)


def free_heap():
    return gc.mem_free()


def event(ev, seq=-1, n=-1):
    """Emulator-only trace of node events; nothing on the device."""
    pass


def crash():
    """After an uncaught error: a hard reset (counted by the crash-loop guard)."""
    machine.reset()
