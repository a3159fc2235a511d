"""Firmware updates through the gateway: the bundle cache and the serial-line transfer."""
