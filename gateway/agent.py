"""The running agent: wires queue, registry, ingest, uplink, metrics, systemd together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import Config
from .ingest import SerialIngest
from .metrics import Metrics, serve_metrics
from .pipeline import Pipeline
from .queue import Queue
from .registry import Registry
from .sdnotify import Notifier, watchdog_interval
from .uplink import Uplink

log = logging.getLogger("citysense.agent")

STALE_AFTER = 20.0
"""A component whose heartbeat is older than this is considered hung."""
DRAIN_TIMEOUT = 7.0


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


class Agent:
    def __init__(self, cfg: Config, *, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue")
        self.registry = Registry(cfg.registry)
        self.started = time.time()
        self.queue: Queue | None = None

    def _status(
        self, pipeline: Pipeline, uplink: Uplink, ingest: SerialIngest
    ) -> dict[str, object]:
        assert self.queue is not None
        q = self.queue
        oldest = None
        return {
            "gateway_id": self.cfg.gateway_id,
            "pid": os.getpid(),
            "written_at": time.time(),
            "started_at": self.started,
            "uplink": {
                "state": uplink.state,
                "protocol": uplink.protocol.name,
                "url": self.cfg.uplink.url,
                "last_error": uplink.last_error,
                "published": self.metrics.published,
            },
            "queue": {
                "depth": q.depth,
                "bytes": q.bytes,
                "max_bytes": q.max_bytes,
                "oldest_age_s": oldest,
                "moved_aside": str(q.moved_aside) if q.moved_aside else None,
            },
            "ports": sorted(ingest.links),
            "devices": {
                d: {
                    "port": s.port,
                    "last_seen": s.last_seen,
                    "seq": s.last_seq,
                    "boot": s.boot,
                    "firmware": s.firmware,
                    "rejects": s.rejects,
                }
                for d, s in sorted(pipeline.devices.items())
            },
            "rejects": dict(self.metrics.rejected),
            "frame_errors": dict(self.metrics.frame_errors),
            "accepted": self.metrics.accepted,
            "registry": {"devices": len(self.registry), "bad_files": self.registry.bad_files},
        }

    async def _state_writer(self, pipeline: Pipeline, uplink: Uplink, ingest: SerialIngest) -> None:
        path = self.cfg.state_file
        while True:
            status = self._status(pipeline, uplink, ingest)
            assert self.queue is not None
            status["queue"]["oldest_age_s"] = await pipeline.run_db(  # type: ignore[index]
                _oldest_age, self.queue
            )
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(status, indent=1))
                tmp.replace(path)
            except OSError as exc:  # e.g. disk full: the status file is not worth dying for
                pipeline.rlog.log(
                    logging.ERROR,
                    "state-file",
                    "event=state-file-failed path=%s error=%s",
                    path,
                    exc,
                )
                with contextlib.suppress(OSError):
                    tmp.unlink()
            self.notifier.status(
                f"uplink {uplink.state}, queue {self.queue.depth} records, "
                f"{len(ingest.links)} ports, {self.metrics.accepted} accepted"
            )
            await asyncio.sleep(1.0)

    async def _time_loop(self, pipeline: Pipeline) -> None:
        """TIME to every node's current port each `time_interval_s` (also sent on HELLO)."""
        while True:
            await asyncio.sleep(self.cfg.time_interval_s)
            links = {id(d.link): d.link for d in pipeline.devices.values() if d.link is not None}
            for link in links.values():
                pipeline.send_time(link)

    async def _registry_watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.registry.refresh()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.queue = await loop.run_in_executor(
            self.executor, lambda: Queue.open(self.cfg.db_path, self.cfg.queue_max_bytes)
        )
        if self.queue.moved_aside is not None:
            self.metrics.queue_corrupt += 1
            self.notifier.status(f"CORRUPT queue moved aside to {self.queue.moved_aside}")
        self.registry.refresh()
        q = self.queue
        self.metrics.gauges["citysense_queue_depth"] = lambda: float(q.depth)
        self.metrics.gauges["citysense_queue_bytes"] = lambda: float(q.bytes)
        self.metrics.gauges["citysense_queue_max_bytes"] = lambda: float(q.max_bytes)
        pipeline = Pipeline(
            self.registry,
            q,
            self.metrics,
            executor=self.executor,
            max_batch=self.cfg.commit_max_records,
            max_delay=self.cfg.commit_max_delay_s,
        )
        uplink = Uplink(
            self.cfg.uplink, self.cfg.gateway_id, pipeline, self.metrics, self.cfg.operator_key
        )
        pipeline.publish_up = uplink.publish_result
        ingest = SerialIngest(self.cfg.serial, pipeline)
        health = Health()
        health.add("ingest", ingest)
        health.add("committer", pipeline)
        health.add("uplink", uplink)
        server = None
        if self.cfg.metrics_listen is not None:
            server = await serve_metrics(self.metrics, *self.cfg.metrics_listen)
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tasks.append(tg.create_task(pipeline.committer(), name="committer"))
                ingest_task = tg.create_task(ingest.run(), name="ingest")
                tasks.append(ingest_task)
                await asyncio.wait_for(ingest.started.wait(), 10)
                tasks.append(tg.create_task(uplink.run(), name="uplink"))
                tasks.append(tg.create_task(self._registry_watch(), name="registry"))
                tasks.append(tg.create_task(self._time_loop(pipeline), name="time"))
                tasks.append(
                    tg.create_task(self._state_writer(pipeline, uplink, ingest), name="state")
                )
                self.notifier.ready(f"ready: queue {q.depth} records, ports {len(ingest.links)}")
                log.info("event=ready gateway=%s queue_depth=%d", self.cfg.gateway_id, q.depth)
                interval = watchdog_interval()
                if interval is not None:
                    tasks.append(
                        tg.create_task(
                            watchdog_loop(self.notifier, health, interval), name="watchdog"
                        )
                    )
                await stop.wait()
                log.info("event=stopping")
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
                server.close()
            await loop.run_in_executor(self.executor, q.close)
            self.executor.shutdown(wait=True)
            log.info("event=stopped")


async def _wait_flushed(uplink: Uplink) -> None:
    await uplink._flush_done()


def _oldest_age(q: Queue) -> float | None:
    oldest = q.oldest_ms()
    return None if oldest is None else round(time.time() - oldest / 1000, 3)


def read_state(cfg: Config) -> dict[str, object] | None:
    try:
        data = json.loads(Path(cfg.state_file).read_text())
    except PermissionError:
        raise  # not "not running": the caller says who may read it
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
