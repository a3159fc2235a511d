"""Retry timing, without I/O: the reconnect backoff and the refused-record schedule.

Reconnect rules (`Backoff`), for failures where the broker's port still takes a TCP
connection (while it refuses or does not answer, gateway/uplink.py probes it every second
and connects as soon as it answers, and asks this class for no delay):
- Repeated failures (a broker down, a wrong certificate, a connection that drops within
  `healthy_after` of being made): 0.5 s doubling to the 15 s cap, each delay drawn from
  [d/2, d] so a fleet's gateways spread out. The cap bounds how long a backlog waits after
  the broker is back (with 60 s, a 60 s outage cost 33 s more: docs/benchmarks.md).
- Losing a connection that had been up at least `healthy_after` (a broker restart, a
  network blip): for the next `grace` seconds every retry comes within `first` (1 s,
  jittered from [first/2, first]), so the first attempt after the broker is back comes
  within 1 s of it; after `grace` the doubling resumes from `first` to the cap. Before
  this rule the sequence after a restart was 0.5, 1, 2, 4, 8 s: the broker, back after
  a few seconds, waited 5-9 s for the gateway.

Refused records (`RetrySchedule`): a record whose PUBLISH the broker refused (PUBACK
reason >= 0x80) or the client would not send stays in the queue and is retried after
1 s doubling to `cap` (60 s), jittered the same way, per record. The schedule holds at
most `limit` records in memory; while full, the publisher takes no new rows (a broker
that refuses everything then sees one retry wave per backoff step, not the whole queue).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Jitter = Callable[[float, float], float]

BACKOFF_MIN = 0.5
BACKOFF_MAX = 15.0
FIRST_AFTER_HEALTHY = 1.0
HEALTHY_AFTER = 10.0
GRACE = 20.0
RETRY_FIRST = 1.0
RETRY_MAX = 60.0


class Backoff:
    """Reconnect delays; feed it `connected(now)` / `lost(now)`, ask `next_delay(now)`."""

    def __init__(
        self,
        *,
        minimum: float = BACKOFF_MIN,
        cap: float = BACKOFF_MAX,
        first: float = FIRST_AFTER_HEALTHY,
        healthy_after: float = HEALTHY_AFTER,
        grace: float = GRACE,
        jitter: Jitter = random.uniform,
    ) -> None:
        self.minimum = minimum
        self.cap = cap
        self.first = first
        self.healthy_after = healthy_after
        self.grace = grace
        self._jitter = jitter
        self._next = minimum
        self._up_since: float | None = None
        self._fast_until = float("-inf")

    def connected(self, now: float) -> None:
        self._up_since = now

    def lost(self, now: float) -> None:
        """The connection (or the attempt) ended. A connection that had been healthy
        starts the fast-retry window."""
        if self._up_since is not None and now - self._up_since >= self.healthy_after:
            self._fast_until = now + self.grace
            self._next = self.first
        self._up_since = None

    def next_delay(self, now: float) -> float:
        """The wait before the next attempt, jittered from [d/2, d]."""
        if now < self._fast_until:
            return self._jitter(self.first / 2, self.first)
        d = self._next
        self._next = min(d * 2, self.cap)
        return self._jitter(d / 2, d)


@dataclass
class _Entry(Generic[T]):
    item: T
    attempts: int
    due: float


@dataclass
class RetrySchedule(Generic[T]):
    """Items keyed by id, each due again after its own jittered, doubling delay."""

    limit: int
    first: float = RETRY_FIRST
    cap: float = RETRY_MAX
    jitter: Jitter = random.uniform
    _items: dict[int, _Entry[T]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items

    @property
    def full(self) -> bool:
        return len(self._items) >= self.limit

    def failed(self, key: int, item: T, now: float) -> float:
        """Record one more failure of `key`; returns the delay until it is due again."""
        entry = self._items.get(key)
        attempts = 1 if entry is None else entry.attempts + 1
        d = min(self.first * 2 ** (attempts - 1), self.cap)
        delay = self.jitter(d / 2, d)
        self._items[key] = _Entry(item, attempts, now + delay)
        return delay

    def take_due(self, now: float) -> list[T]:
        """Items whose time has come, oldest key first; they stay scheduled (a success
        calls `done`, another failure `failed`) but are not due again until then."""
        due = sorted(k for k, e in self._items.items() if e.due <= now)
        for k in due:
            self._items[k].due = float("inf")
        return [self._items[k].item for k in due]

    def done(self, key: int) -> None:
        self._items.pop(key, None)

    def release(self, key: int, now: float) -> None:
        """Not tried after all (e.g. the connection dropped first): due again now."""
        entry = self._items.get(key)
        if entry is not None:
            entry.due = now

    def release_all(self, now: float) -> None:
        """A new connection: nothing is in flight any more (a task cancelled before it
        ran never reported back); whatever was taken is due at once."""
        for entry in self._items.values():
            if entry.due == float("inf"):
                entry.due = now

    def next_due(self) -> float | None:
        dues = [e.due for e in self._items.values() if e.due != float("inf")]
        return min(dues) if dues else None

    def attempts(self, key: int) -> int:
        entry = self._items.get(key)
        return 0 if entry is None else entry.attempts
