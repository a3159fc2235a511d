"""citysense-emulator: the real node firmware under the MicroPython unix port."""
