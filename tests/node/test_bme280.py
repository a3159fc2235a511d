"""BME280 driver: the datasheet's compensation example, and the driver on the emulated chip."""

from __future__ import annotations

import sys
from pathlib import Path

from nodeproc import run
from support import FIRMWARE_LIB

sys.path.insert(0, str(FIRMWARE_LIB))
from citysense import bme280

# Bosch datasheet (BMP280/BME280 compensation example): trimming values and raw readings
CAL_TP = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
CAL_H = (75, 362, 0, 325, 0, 30)  # typical humidity trimming of a real part
ADC_T, ADC_P, ADC_H = 519888, 415148, 27000


def _pressure_double(cal: tuple[int, ...], t_fine: float, adc_p: int) -> float:
    """The datasheet's floating-point pressure formula: an independent judge."""
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal[3:12]
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * p6 / 32768.0
    var2 = var2 + var1 * p5 * 2.0
    var2 = var2 / 4.0 + p4 * 65536.0
    var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * p1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = p9 * p * p / 2147483648.0
    var2 = p * p8 / 32768.0
    return p + (var1 + var2 + p7) / 16.0


def _humidity_double(cal: tuple[int, ...], t_fine: float, adc_h: int) -> float:
    h1, h2, h3, h4, h5, h6 = cal[12:18]
    v = t_fine - 76800.0
    v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v))
    )
    v = v * (1.0 - h1 * v / 524288.0)
    return min(max(v, 0.0), 100.0)


def test_datasheet_example_values() -> None:
    cal = CAL_TP + CAL_H
    assert bme280.fine_temperature(cal, ADC_T) == 128422  # datasheet: t_fine = 128422
    temp, press, hum = bme280.compensate(cal, ADC_T, ADC_P, ADC_H)
    assert temp == 2508  # 25.08 deg C
    assert round(press / 256) == 100653  # datasheet: 100653 Pa (100653.27 in double)
    assert abs(press / 256 - 100653.27) < 0.05
    assert abs(press / 256 - _pressure_double(cal, 128422, ADC_P)) < 0.05
    assert abs(hum / 1024 - _humidity_double(cal, 128422, ADC_H)) < 0.05


def test_calibration_registers_parse() -> None:
    c00 = bytes.fromhex("706b43671 8fc7d8e43d6d00b270b8c00f9ff8c3cf8c670170 04b".replace(" ", ""))
    c26 = bytes.fromhex("6a01001405001e")
    assert bme280.parse_calibration(c00, c26) == CAL_TP + CAL_H


def test_driver_under_micropython_on_the_emulated_chip(tmp_path: Path) -> None:
    out = run("bme.py", flash=tmp_path)
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["FINE", "128422"]
    assert lines[1][:3] == [
        "COMP",
        "2508",
        str(bme280.compensate(CAL_TP + CAL_H, ADC_T, ADC_P, ADC_H)[1]),
    ]
    assert [int(x) for x in lines[2][1:]] == list(CAL_TP + CAL_H)
    reads = [tuple(float(x) for x in line[1:]) for line in lines[3:]]
    assert len(reads) == 3
    for t, p, h in reads:
        assert 15 < t < 35 and 95000 < p < 106000 and 10 < h < 90
