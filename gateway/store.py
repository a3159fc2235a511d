"""The queue as the event loop sees it: one worker thread, loop-side counters.

Every SQLite call runs on the store's single worker thread (`run`), so the Queue is
never used by two threads at once. The figures the loop reads often (depth, bytes,
replay highs) are the store's own copies, updated on the loop from what the worker's
`store()`/`delete()` returned; nobody reads Queue attributes across threads.

Store failures other than "full" (a database that became unreadable, a corrupt page)
are counted; after FATAL_FAILURES in a row spanning at least FATAL_AFTER seconds the
store is `broken` and the committer raises StoreBrokenError, so the agent exits non-zero
and systemd restarts it, and `Queue.open` moves a corrupt file aside at the next start.
NACKing every batch `busy` for ever, with the watchdog still fed, would be a gateway that
looks alive and stores nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from citysense_formats.registry_entry import key_id

from .queue import (
    ROW_OVERHEAD,
    NewRecord,
    Queue,
    QueuedRecord,
    QueueFullError,
    high_of,
    raised,
)

T = TypeVar("T")

FATAL_FAILURES: Final = 5
FATAL_AFTER: Final = 10.0


__all__ = ["FATAL_AFTER", "FATAL_FAILURES", "Store", "StoreBrokenError", "key_id"]


class StoreBrokenError(Exception):
    """The queue failed FATAL_FAILURES times in a row: restart the service."""


class Store:
    def __init__(
        self, queue: Queue, executor: ThreadPoolExecutor, *, fatal_after: float = FATAL_AFTER
    ) -> None:
        self.queue = queue
        self.fatal_after = fatal_after
        self.executor = executor
        self.depth = queue.depth
        self.bytes = queue.bytes
        self.max_bytes = queue.max_bytes
        self._high = queue.replay_state()
        self.failures = 0
        self.commits = 0  # group commits that stored records (each one an fsync)
        self._first_failure: float | None = None
        self.last_error: str | None = None
        self.stored_event = asyncio.Event()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- replay state (loop side) -------------------------------------------------
    def high(self, device_id: str, key: str) -> int:
        """Highest seq stored under (device, key), or the pre-upgrade state; -1 if none."""
        h = high_of(self._high, device_id, key)
        return -1 if h is None else h

    def high_any_key(self, device_id: str) -> int:
        """Highest seq stored for the device under any key it ever had; -1 if none."""
        return max((s for (d, _), s in self._high.items() if d == device_id), default=-1)

    def room_for(self, nbytes: int) -> bool:
        return self.bytes + nbytes + ROW_OVERHEAD <= self.max_bytes

    # -- worker calls ---------------------------------------------------------------
    async def contains(self, device_id: str, seq: int) -> bool:
        return await self.run(self.queue.contains, device_id, seq)

    async def store(self, records: list[NewRecord]) -> None:
        """Commit (fsync) the batch; raises what Queue.store raises, counted."""
        try:
            n, nbytes = await self.run(self.queue.store, records)
        except QueueFullError:
            raise  # backpressure, not a failure: the nodes keep their records
        except Exception as exc:
            self._failed(exc)
            raise
        self.failures, self._first_failure = 0, None
        self.commits += 1
        self.depth += n
        self.bytes += nbytes
        self._high = raised(self._high, records)  # the rule Queue.store applied
        self.stored_event.set()

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        self.failures += 1

    @property
    def broken(self) -> bool:
        return (
            self.failures >= FATAL_FAILURES
            and self._first_failure is not None
            and time.monotonic() - self._first_failure >= self.fatal_after
        )

    async def peek(self, after_id: int, limit: int) -> list[QueuedRecord]:
        return await self.run(self.queue.peek, after_id, limit)

    async def delete(self, ids: list[int]) -> None:
        n, nbytes = await self.run(self.queue.delete, ids)
        self.depth -= n
        self.bytes -= nbytes

    async def oldest_ms(self) -> int | None:
        return await self.run(self.queue.oldest_ms)

    async def reset_replay(self, device_id: str) -> dict[str, int | None]:
        result = await self.run(self.queue.reset_replay, device_id)
        self._high = await self.run(self.queue.replay_state)
        return result

    async def close(self) -> None:
        await self.run(self.queue.close)
