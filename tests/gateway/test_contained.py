"""No exception in an agent task ends the agent silently (issue 12, finding 5).

- A queued record whose topic paho will not publish (a device id holding '+': paho raises
  ValueError at publish) is kept, counted and logged; the other records flow and the
  agent stays up. Before: the exception group ended the agent.
- Any other unexpected exception in a task is logged with its traceback, counted, and
  makes the agent exit non-zero (systemd restarts it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from pathlib import Path

import pytest
from gwsupport import (
    NodeSim,
    Pty,
    Subscriber,
    make_node,
    mosquitto,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import free_port

from gateway.agent import supervised
from gateway.queue import NewRecord, Queue


def test_unpublishable_record_is_kept_and_the_rest_flows(tmp_path: Path) -> None:
    bad = make_node("esp32+bad")
    good = make_node("esp32-0000000000b1")
    state = tmp_path / "state"
    q = Queue.open(state / "queue.sqlite3", 4_000_000)
    q.store([NewRecord(bad.device_id, 1, int(time.time() * 1000), bad.record(1))])
    q.close()
    metrics_port = free_port()
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{metrics_port}"',
        )
        write_entry(tmp_path / "registry", good)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, "citysense/#")
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=publish-refused reason=client-refused")
            sim = NodeSim(good, pty)
            for _ in range(5):
                sim.new_record()
            sim.settle()
            got = sub.wait_count("/records", 5)
            assert [p for _, p, _ in got] == [good.record(s) for s in range(1, 6)]
            assert gw.poll() is None
            deadline = time.monotonic() + 10  # the PUBACKs may trail the subscriber's copy
            while (m := scrape(metrics_port))["citysense_records_published_total"] < 5:
                assert time.monotonic() < deadline, m
                time.sleep(0.1)
            assert m["citysense_records_published_total"] == 5
            assert m['citysense_publish_refused_total{reason="client-refused"}'] >= 1
            deadline = time.monotonic() + 10
            while scrape(metrics_port)["citysense_queue_depth"] != 1:  # the bad one stays
                assert time.monotonic() < deadline
                time.sleep(0.2)
            text = log.read_text()
            assert (
                "event=publish-refused reason=client-refused "
                "topic=citysense/v1/gw-test/esp32+bad/records "
                "detail=a topic name cannot hold a wildcard ('+' or '#') record seq=1"
            ) in text
            assert "event=task-failed" not in text
        finally:
            stop(gw)
            pty.close()
            sub.close()
    assert gw.returncode == 0


def test_unexpected_exception_is_logged_counted_and_stops_the_agent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: dict[str, int] = defaultdict(int)
    stop = asyncio.Event()

    def on_failure(name: str, exc: BaseException) -> None:
        failures[name] += 1
        stop.set()

    async def broken() -> None:
        await asyncio.sleep(0)
        raise KeyError("no such device")

    async def healthy() -> None:
        await stop.wait()

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(supervised("registry", broken(), on_failure))
            tg.create_task(supervised("time", healthy(), on_failure))

    with caplog.at_level(logging.CRITICAL, logger="citysense.agent"):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert failures == {"registry": 1}
    [rec] = caplog.records
    assert rec.getMessage().startswith(
        "event=task-failed task=registry error=KeyError('no such device') "
        "action='the agent exits non-zero"
    )
    assert rec.exc_info is not None and rec.exc_info[0] is KeyError  # the traceback


def test_cancellation_is_not_a_failure() -> None:
    calls: list[str] = []

    async def main() -> None:
        t = asyncio.create_task(supervised("x", asyncio.sleep(60), lambda n, e: calls.append(n)))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert calls == []
