# Under micropython: the driver against the emulated chip, and the datasheet example.
from citysense import bme280, hal

cal = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
cal += (75, 362, 0, 325, 0, 30)
print("FINE", bme280.fine_temperature(cal, 519888))
print("COMP", *bme280.compensate(cal, 519888, 415148, 27000))
dev = bme280.BME280(hal.i2c())
print("CAL", *dev.cal)
for _ in range(3):
    t, p, h = dev.read()
    print("READ", t, p, h)
