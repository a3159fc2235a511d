"""`citysense-cloud ingest`: records from the broker, verified, stored once, then PUBACKed.

One thread. `Ingest.run` takes a batch from the MQTT session (cloud/session.py: a shared
subscription `$share/<group>/citysense/v1/+/+/records` at QoS 1 on a persistent session
named after the instance, our own small MQTT 5 client: gateway/mqttwire.py says why not paho),
verifies each record (cloud.records), commits the batch in one transaction (cloud.store),
and only then writes the batch's PUBACKs, in the order received. A database that is down
or busy is retried with backoff, the same batch, while nothing is acknowledged (the
session still answers keep alives): the broker stops sending at Receive Maximum and
keeps the rest. A message that came on an earlier connection is not acknowledged (its
packet id may name another message now): the broker sends it again and the store counts
it as a duplicate.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import signal
import socket
import threading
import time
from collections import Counter
from typing import Any

from gateway.registry import Registry
from gateway.sdnotify import Notifier, watchdog_interval

from .config import CloudConfig
from .errors import DatabaseError, UsageError
from .records import Delivery, Refused, check
from .session import Incoming, Session, client_id
from .store import Refusal, Store, TransientError, open_store

log = logging.getLogger("citysense.cloud.ingest")

TAKE_WAIT_S = 0.2  # longest wait for a batch's first message (housekeeping runs between)
LINGER_S = 0.02  # wait this long after a batch's first message for more
REGISTRY_REFRESH_S = 2.0
MAX_QUARANTINE = 65536  # bytes of a refused payload kept
RETIRE_IDLE_S = 5.0  # --retire ends the session after this long with nothing delivered
STATS_EVERY_S = 10.0
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0
_INSTANCE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Ingest:
    """The worker: batches from the session's inbox, verified, committed, acknowledged."""

    def __init__(
        self, session: Session, store: Store, registry: Registry, instance: str, batch: int
    ) -> None:
        self.session = session
        self.store = store
        self.registry = registry
        self.instance = instance
        self.batch = batch
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.notifier = Notifier()
        self._next_refresh = 0.0
        self._next_stats = time.monotonic() + STATS_EVERY_S
        self._watchdog = watchdog_interval()
        self._next_watchdog = 0.0

    def run(self) -> None:
        self.notifier.ready(f"connecting to {self.session.broker.host}")
        subscribed = False
        idle_since = time.monotonic()
        while not self.stop.is_set():
            self._housekeeping()
            if subscribed != self.session.subscribed:
                subscribed = not subscribed
                self.notifier.status("subscribed" if subscribed else "broker lost, reconnecting")
            batch = self.session.take(self.batch, TAKE_WAIT_S, LINGER_S)
            if batch:
                self._handle(batch)
                idle_since = time.monotonic()
            elif self._retired(idle_since):
                break
        self.notifier.stopping()
        self.session.stop()
        self._log_stats()

    def _retired(self, idle_since: float) -> bool:
        """--retire: unsubscribed, and nothing arrived for RETIRE_IDLE_S (drained)."""
        if not (self.session.retire and self.session.unsubscribed):
            return False
        if time.monotonic() - idle_since < RETIRE_IDLE_S or not self.session.connected:
            return False
        log.info("event=ingest-retired instance=%s session=ended", self.instance)
        return True

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self.registry.refresh()
            self._next_refresh = now + REGISTRY_REFRESH_S
        if now >= self._next_stats:
            self._log_stats()
            self._next_stats = now + STATS_EVERY_S
        if self._watchdog is not None and now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + self._watchdog

    def _log_stats(self) -> None:
        c = self.counts
        log.info(
            "event=ingest-stats instance=%s stored=%d duplicates=%d refused=%d acked=%d"
            " ack_skipped=%d db_retries=%d batches=%d commit_s=%.2f",
            self.instance,
            c["stored"],
            c["duplicates"],
            c["refused"],
            c["acked"],
            c["ack-skipped"],
            c["db-retries"],
            c["batches"],
            c["commit-us"] / 1e6,
        )

    def _handle(self, batch: list[Incoming]) -> None:
        accepted, refused = [], []
        for m in batch:
            try:
                accepted.append(check(m.delivery, self.registry))
            except Refused as exc:
                refused.append(_refusal(m.delivery, exc))
                log.warning(
                    "event=record-refused reason=%s device=%s detail=%r",
                    exc.reason,
                    exc.device_id or "-",
                    exc.detail[:200],
                )
        t0 = time.perf_counter()
        result = self._commit(accepted, refused)
        self.counts["commit-us"] += int((time.perf_counter() - t0) * 1e6)
        self.counts["batches"] += 1
        if result is None:
            return  # stopping while the database was down: nothing acknowledged
        skipped = self.session.ack(batch)
        self.counts.update(
            stored=result.stored,
            duplicates=result.duplicates,
            refused=result.refused,
            acked=len(batch) - skipped,
        )
        self.counts["ack-skipped"] += skipped

    def _commit(self, accepted: list[Any], refused: list[Refusal]) -> Any:
        delay = RETRY_MIN_S
        while True:
            try:
                return self.store.commit(accepted, refused, self.instance)
            except TransientError as exc:
                self.counts["db-retries"] += 1
                log.warning("event=db-unavailable error=%r retry_in=%.1fs", str(exc), delay)
            except DatabaseError as exc:
                # not expected to cure itself (permissions, a schema changed by hand): still
                # nothing is acknowledged, the service stays up and says so until fixed
                self.counts["db-retries"] += 1
                log.error("event=db-error error=%r retry_in=%.1fs", str(exc), delay)
            if self._pause(delay * random.uniform(0.5, 1.0)):
                return None
            delay = min(delay * 2, RETRY_MAX_S)
            try:
                self.store.reconnect()
            except DatabaseError as exc:
                log.warning("event=db-reconnect-failed error=%r", str(exc))

    def _pause(self, seconds: float) -> bool:
        """Wait while the database is away, the watchdog fed and the broker answered;
        True if asked to stop meanwhile."""
        end = time.monotonic() + seconds
        while not self.stop.is_set() and (left := end - time.monotonic()) > 0:
            self._housekeeping()
            self.session.service(min(left, TAKE_WAIT_S))
        return self.stop.is_set()


def _refusal(d: Delivery, exc: Refused) -> Refusal:
    parts = d.topic.split("/")
    gateway = parts[2] if exc.reason != "bad-topic" and len(parts) > 2 else ""
    topic = d.topic[:256].replace("\x00", "\\x00")
    kept = d.payload[:MAX_QUARANTINE]  # the digest (quarantine key) is of what is kept
    return Refusal(exc.device_id, exc.reason, exc.detail, gateway, topic, kept, d.received_at)


def cmd_ingest(args: argparse.Namespace, cfg: CloudConfig) -> int:
    instance = args.instance or socket.gethostname()
    if not _INSTANCE.match(instance):
        raise UsageError(
            f"--instance {instance[:80]!r}: expected 1..64 of [A-Za-z0-9._-] (it names the session)"
        )
    broker = cfg.need_broker()
    registry = Registry(cfg.need_registry())
    store = open_store(cfg.need_database(), cfg.path.parent if cfg.path else None)
    group = args.group or cfg.ingest.group
    session = Session(
        broker,
        instance,
        group,
        cfg.ingest.session_expiry,
        min(65535, 2 * cfg.ingest.batch),
        shared=cfg.ingest.subscription == "shared",
    )
    session.retire = args.retire
    ingest = Ingest(session, store, registry, instance, cfg.ingest.batch)

    def on_signal(signum: int, _frame: Any) -> None:
        ingest.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "event=ingest-start instance=%s client_id=%s group=%s subscription=%s batch=%d",
        instance,
        client_id(instance),
        group,
        cfg.ingest.subscription,
        cfg.ingest.batch,
    )
    try:
        ingest.run()
    finally:
        store.close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingest", help="verify records from the broker and store them once")
    p.add_argument("--instance", help="this instance's name (its MQTT session); host name")
    p.add_argument("--group", help="shared subscription group (overrides [ingest] group)")
    p.add_argument(
        "--retire",
        action="store_true",
        help="take this instance out for good: unsubscribe, drain its session, end it, exit",
    )
    p.set_defaults(func=cmd_ingest)
