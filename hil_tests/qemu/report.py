"""How the QEMU check reports: one line per step, one exception type for a miss."""

from __future__ import annotations


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"qemu-check: {msg}", flush=True)


def passed(what: str) -> None:
    print(f"qemu-check: PASS {what}", flush=True)
