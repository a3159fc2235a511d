"""The agent's event loop: uvloop where it is installed, else asyncio's own.

Why: at 200 records/s the gateway's CPU per record is mostly event-loop work, not the
record's verify: a serial read, an ACK write, a PUBLISH and its PUBACK per record, each
an epoll wake-up with asyncio's Python-level loop and transports around it (issue 17;
docs/benchmarks.md has the profile and the figures with and without uvloop). uvloop
(libuv, MagicStack; the loop of many asyncio servers) runs the same coroutines with that
machinery in C. It is a dependency on x86_64 and aarch64 (Raspberry Pi OS 64-bit), whose
wheels PyPI carries; on armv7 it is not installed and the agent runs on asyncio's loop,
as it does with `CITYSENSE_EVENT_LOOP=asyncio` in its environment (the unit's
`Environment=`, for a suspected loop problem).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "CITYSENSE_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """(the factory for asyncio.Runner, the loop's name for the log). Raises
    ValueError for an unknown CITYSENSE_EVENT_LOOP, and for "uvloop" where it is not
    installed."""
    want = os.environ.get(ENV, "auto").strip() or "auto"
    if want not in CHOICES:
        raise ValueError(f"{ENV}={want!r}: expected one of {', '.join(CHOICES)}")
    if want == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if want == "uvloop":
            raise ValueError(f"{ENV}=uvloop but uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop-{getattr(uvloop, '__version__', '?')}"


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the loop loop_factory() chose."""
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
