"""Whole-system test harness: real broker, emulated nodes, gateway, noise, consumer."""
