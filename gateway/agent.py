"""The running agent: wires queue, registry, ingest, uplink, metrics, systemd together."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import clock
from .config import Config
from .devicectl import Handler, agent_lock, serve_requests
from .ingest import SerialIngest
from .metrics import Metrics
from .ota.cache import BundleCache
from .ota.receive import BundleReceiver
from .ota.serve import OtaServer, open_cache
from .pipeline import Pipeline
from .queue import Queue
from .registry import Registry
from .sdnotify import Notifier, watchdog_interval
from .store import Store
from .uplink import Uplink
from .web import NodeHistory, WebServer
from .web.host import DiskWrites, version, wear

log = logging.getLogger("citysense.agent")

STALE_AFTER = 20.0
"""A component whose heartbeat is older than this is considered hung."""
DRAIN_TIMEOUT = 7.0
# A stop that takes this long (the drain is bounded by DRAIN_TIMEOUT + 2 s) writes every
# thread's stack to stderr, the journal, before the unit's TimeoutStopSec=15 kills it
STOP_STACKS_AFTER = 12.0
STATUS_HEARTBEAT_S = 60.0
"""status.json is rewritten when its content changed (checked every second), and at least
this often so that `status` can tell a live agent (gateway/cli.py, `rewritten_within_s`).
Rewriting it every second whatever it held was ~94 % of what an idle gateway wrote to its
SD card (4.4 KB/s, 376 MB/day; bench/bench_disk.py)."""
VOLATILE: dict[str, tuple[str, ...]] = {
    # fields that change every second without anything having happened: not a reason to
    # rewrite the file (they are current whenever it is written)
    "": ("written_at", "disk_writes", "disk_wear"),
    "queue": ("oldest_age_s",),
    "counters": ("disk_written",),  # the file's own rewrite would change it
}


class Health:
    """Named heartbeats; healthy only while every one of them is fresh."""

    def __init__(self, stale_after: float = STALE_AFTER) -> None:
        self.stale_after = stale_after
        self.sources: dict[str, object] = {}

    def add(self, name: str, component: object) -> None:
        self.sources[name] = component

    def stale(self) -> list[str]:
        now = time.monotonic()
        return [
            name
            for name, c in self.sources.items()
            if now - float(getattr(c, "heartbeat", 0.0)) > self.stale_after
        ]


async def watchdog_loop(notifier: Notifier, health: Health, interval: float) -> None:
    """WATCHDOG=1 every `interval` while healthy; silence (and a STATUS line) otherwise."""
    reported: list[str] = []
    while True:
        stale = health.stale()
        if not stale:
            notifier.watchdog()
        elif stale != reported:
            log.error("event=watchdog-withheld stale=%s", ",".join(stale))
            notifier.status(f"unhealthy: {', '.join(stale)} not responding")
        reported = stale
        await asyncio.sleep(interval)


async def supervised(
    name: str,
    coro: Coroutine[Any, Any, None],
    on_failure: Callable[[str, BaseException], None],
) -> None:
    """Run one agent task; an exception it did not expect is never silent: it is logged
    with its traceback (CRITICAL) and handed to `on_failure`, which counts it and stops
    the agent with a non-zero exit (systemd restarts it). Durable state is safe: records
    leave the queue only on PUBACK, and the agent still drains and closes it."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.critical(
            "event=task-failed task=%s error=%r action='the agent exits non-zero; systemd "
            "restarts it. Report the traceback'",
            name,
            exc,
            exc_info=exc,
        )
        on_failure(name, exc)


class Agent:
    def __init__(self, cfg: Config, *, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")
        self.registry = Registry(cfg.registry, cfg.state_dir)  # and the synced copy there
        self.started = time.time()
        self.queue: Queue | None = None
        self.history = NodeHistory()
        self.disk_writes = DiskWrites()
        self.version = version()
        self._oldest_age: float | None = None
        self.exit_code = 0
        self.clock = clock.default_clock()
        clock.configure(cfg.time_require_sync)
        self._stop: asyncio.Event | None = None
        self.ota_cache: BundleCache | None = None

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.metrics.task_failures[name] += 1
        self.exit_code = 1
        self.notifier.status(f"FAILED: task {name}: {exc!r}; exiting for a restart")
        if self._stop is not None:
            self._stop.set()

    def _synchronised(self) -> bool | None:
        """The kernel's word on the clock for the page: None when it cannot be asked."""
        st = self.clock.state()
        return None if st.state == "unknown" else st.synced

    def _clock_status(self) -> dict[str, object]:
        st = self.clock.state()
        return {
            "synced": st.synced,
            "state": st.state,
            "detail": st.detail,
            "require_sync": self.cfg.time_require_sync,
            "sending_time": self.clock.may_send_time(),
        }

    def _status(
        self, pipeline: Pipeline, uplink: Uplink, ingest: SerialIngest
    ) -> dict[str, object]:
        q = pipeline.store
        return {
            "gateway_id": self.cfg.gateway_id,
            "pid": os.getpid(),
            "written_at": time.time(),
            "rewritten_within_s": STATUS_HEARTBEAT_S,
            "started_at": self.started,
            "version": self.version,
            "clock_synchronised": self._synchronised(),
            "disk_writes": self.disk_writes.sample(),
            "disk_wear": wear(
                self.disk_writes.total,
                time.monotonic() - self.disk_writes.started,
                self.cfg.storage_endurance,
            ),
            "uplink": {
                "state": uplink.state,
                "protocol": uplink.protocol.name,
                "url": self.cfg.uplink.url,
                "last_error": uplink.last_error,
                "published": self.metrics.published,
                "refused": uplink.refused,
                "last_refusal": uplink.last_refusal,
                "retrying": len(uplink.retry),
            },
            "clock": self._clock_status(),
            "task_failures": dict(self.metrics.task_failures),
            "queue": {
                "depth": q.depth,
                "bytes": q.bytes,
                "max_bytes": q.max_bytes,
                "oldest_age_s": self._oldest_age,
                "moved_aside": str(q.queue.moved_aside) if q.queue.moved_aside else None,
                "store_failures": q.failures,
                "last_error": q.last_error,
                "reserve_held": q.queue.reserve.held,
                "reserve_used": q.queue.reserve_used,
            },
            "ports": sorted(ingest.links),
            "port_stats": {
                name: {
                    "claims": pipeline.routes.claims_on(name),
                    "unknown_hellos": pipeline.unknown_hellos.get(name, 0),
                    "write_dropped": link.dropped,
                }
                for name, link in sorted(ingest.links.items())
            },
            "devices": {
                d: {
                    "port": s.port,
                    "last_seen": s.last_seen,
                    "seq": s.last_seq,
                    "boot": s.boot,
                    "firmware": s.firmware,
                    "trial": s.trial,
                    "transfer": pipeline.ota.transfer(s.port),
                    "reset_cause": s.reset_cause,
                    "rejects": s.rejects,
                    **self.history.device(d),
                }
                for d, s in sorted(pipeline.devices.items())
            },
            "time_withheld": pipeline.time_withheld,
            "rejects": dict(self.metrics.rejected),
            "frame_errors": dict(self.metrics.frame_errors),
            "accepted": self.metrics.accepted,
            "counters": self.metrics.values(),
            "registry": {"devices": len(self.registry), "bad_files": self.registry.bad_files},
            "registry_version": uplink.registry_sync.version,
        }

    async def _state_writer(self, pipeline: Pipeline, uplink: Uplink, ingest: SerialIngest) -> None:
        path = self.cfg.state_file
        written: dict[str, object] | None = None
        written_at = float("-inf")
        while True:
            self._oldest_age = _age(await pipeline.store.oldest_ms())
            status = self._status(pipeline, uplink, ingest)
            self.metrics.disk_written = self.disk_writes.total
            stable = _stable(status)
            due = time.monotonic() - written_at >= STATUS_HEARTBEAT_S
            try:
                if stable != written or due:
                    # off the event loop: serialising and writing must not delay ACKs
                    await asyncio.to_thread(_write_atomic, path, status)
                    written, written_at = stable, time.monotonic()
            except OSError as exc:  # e.g. disk full: the status file is not worth dying for
                pipeline.rlog.log(
                    logging.ERROR,
                    "state-file",
                    "event=state-file-failed path=%s error=%s",
                    path,
                    exc,
                )
            self.notifier.status(
                f"uplink {uplink.state}, queue {pipeline.store.depth} records, "
                f"{len(ingest.links)} ports, {self.metrics.accepted} accepted"
            )
            await asyncio.sleep(1.0)

    async def _time_loop(self, pipeline: Pipeline) -> None:
        """TIME to every node's current port each `time_interval_s` (also sent on HELLO),
        only while the clock may be trusted (gateway/clock.py)."""
        withheld = False
        while True:
            await asyncio.sleep(self.cfg.time_interval_s)
            if not clock.clock_synced():
                if not withheld:
                    st = self.clock.state()
                    log.warning(
                        "event=time-withheld clock=%s detail='%s' action='start an NTP client "
                        "(systemd-timesyncd, chrony); or set [time] require_sync = false'",
                        st.state,
                        st.detail,
                    )
                withheld = True
                continue
            if withheld:
                log.info("event=time-resumed clock=%s", self.clock.state().state)
            withheld = False
            for link in pipeline.routes.links():
                pipeline.send_time(link)

    async def _registry_watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.registry.refresh()

    async def _requests(self, pipeline: Pipeline) -> None:
        """Operator requests from `citysense-gateway device ...` (gateway/devicectl.py)."""
        handlers: dict[str, Handler] = {
            "reset-seq": pipeline.store.reset_replay,
            "ota-offer": pipeline.offer_update,
        }
        while True:
            await asyncio.sleep(0.5)
            await serve_requests(self.cfg.state_dir, handlers)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit code 0) or a task fails unexpectedly (1)."""
        with agent_lock(self.cfg.state_dir):
            return await self._run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.queue = await loop.run_in_executor(
            self.executor, lambda: Queue.open(self.cfg.db_path, self.cfg.queue_max_bytes)
        )
        if self.queue.moved_aside is not None:
            self.metrics.queue_corrupt += 1
            self.notifier.status(f"CORRUPT queue moved aside to {self.queue.moved_aside}")
        self.registry.refresh()
        q = Store(self.queue, self.executor)
        self.metrics.gauges["citysense_queue_depth"] = lambda: float(q.depth)
        self.metrics.gauges["citysense_queue_bytes"] = lambda: float(q.bytes)
        self.metrics.gauges["citysense_queue_max_bytes"] = lambda: float(q.max_bytes)
        self.metrics.gauges["citysense_clock_synced"] = lambda: float(self.clock.state().synced)
        self.metrics.gauges["citysense_queue_reserve_held"] = lambda: float(q.queue.reserve.held)
        self.metrics.gauges["citysense_queue_commits"] = lambda: float(q.commits)
        pipeline = Pipeline(
            self.registry,
            q,
            self.metrics,
            max_batch=self.cfg.commit_max_records,
            max_delay=self.cfg.commit_max_delay_s,
            clock_ok=self.clock.may_send_time,
        )
        uplink = Uplink(
            self.cfg.uplink, self.cfg.gateway_id, pipeline, self.metrics, self.cfg.operator_key
        )
        pipeline.publish_up = uplink.publish_result
        # one bundle cache: filled from MQTT (receive.py), served to the nodes (serve.py)
        self.ota_cache = open_cache(self.cfg)
        pipeline.ota = OtaServer(self.ota_cache)
        if self.ota_cache is not None:
            receiver = BundleReceiver(self.cfg.gateway_id, self.ota_cache, self.metrics)
            uplink.receivers.append(receiver)
        pipeline.on_stored = self.history.stored
        ingest = SerialIngest(self.cfg.serial, pipeline)
        health = Health()
        health.add("ingest", ingest)
        health.add("committer", pipeline)
        health.add("uplink", uplink)
        server = None
        if self.cfg.metrics_listen is not None:
            server = WebServer(
                self.metrics,
                lambda: self._status(pipeline, uplink, ingest),
                host=self.cfg.metrics_listen[0],
                port=self.cfg.metrics_listen[1],
                token=self.cfg.metrics_token,
                secrets=[self.cfg.uplink.password],
            )
            await server.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as tg:

                def spawn(name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
                    task = tg.create_task(supervised(name, coro, self._task_failed), name=name)
                    tasks.append(task)
                    return task

                spawn("committer", pipeline.committer())
                ingest_task = spawn("ingest", ingest.run())
                await asyncio.wait_for(ingest.started.wait(), 10)
                spawn("uplink", uplink.run())
                spawn("registry", self._registry_watch())
                spawn("requests", self._requests(pipeline))
                spawn("time", self._time_loop(pipeline))
                spawn("state", self._state_writer(pipeline, uplink, ingest))
                self.notifier.ready(f"ready: queue {q.depth} records, ports {len(ingest.links)}")
                log.info("event=ready gateway=%s queue_depth=%d", self.cfg.gateway_id, q.depth)
                interval = watchdog_interval()
                if interval is not None:
                    spawn("watchdog", watchdog_loop(self.notifier, health, interval))
                await stop.wait()
                log.info("event=stopping")
                faulthandler.dump_traceback_later(STOP_STACKS_AFTER, exit=False)
                self.notifier.stopping("stopping: draining")
                ingest_task.cancel()  # stop reading: nothing new to ACK
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pipeline.drain(), DRAIN_TIMEOUT)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_wait_flushed(uplink), 2.0)
                for t in tasks:
                    t.cancel()
        finally:
            if server is not None:
                await server.close()
            await loop.run_in_executor(self.executor, self.queue.close)
            self.executor.shutdown(wait=True)
            faulthandler.cancel_dump_traceback_later()
            log.info("event=stopped exit_code=%d", self.exit_code)
        return self.exit_code


async def _wait_flushed(uplink: Uplink) -> None:
    await uplink._flush_done()


def _age(oldest_ms: int | None) -> float | None:
    return None if oldest_ms is None else round(time.time() - oldest_ms / 1000, 3)


def _stable(status: dict[str, object]) -> dict[str, object]:
    """`status` without its VOLATILE fields: what decides whether the file is rewritten."""
    out = {k: v for k, v in status.items() if k not in VOLATILE[""]}
    for section, keys in VOLATILE.items():
        inner = out.get(section)
        if section and isinstance(inner, dict):
            out[section] = {k: v for k, v in inner.items() if k not in keys}
    return out


def _write_atomic(path: Path, status: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_state(cfg: Config) -> dict[str, object] | None:
    try:
        data = json.loads(Path(cfg.state_file).read_text())
    except PermissionError:
        raise  # not "not running": the caller says who may read it
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
