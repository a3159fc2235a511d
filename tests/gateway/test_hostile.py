"""A hostile peer on a serial port, against the pipeline (issue 12's findings 2-4, 7-9).

Each test names the finding it defends; each failed on the pipeline before the
admission/route/store redesign."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gwsupport import Node, make_node, write_entry
from test_pipeline import FakeLink, feed

from gateway.metrics import Metrics
from gateway.pipeline import PORT_BURST, Pipeline
from gateway.protocol import (
    FrameType,
    Hello,
    encode_frame,
    encode_hello,
    encode_record_payload,
    sign1,
)
from gateway.protocol.record import RecordPayload
from gateway.queue import Queue
from gateway.registry import Registry
from gateway.store import Store, StoreBrokenError, key_id

NOW_MS = int(time.time() * 1000)


class Port(FakeLink):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]


def boot_record(node: Node, seq: int, t: object, boot: int = 1) -> bytes:
    pack = [{-2: f"{node.device_id}/", 0: "temp", 2: 21.5, 6: t}]
    payload = encode_record_payload(RecordPayload(seq, boot, pack, 1))
    return encode_frame(FrameType.RECORD, sign1(node.seed, node.device_id.encode(), payload))


def hello(device_id: str, boot: int = 1, uptime_ms: int = 10_000, fw: str = "1.0") -> bytes:
    h = Hello(device_id, fw, boot, "power-on", uptime_ms, 0)
    return encode_frame(FrameType.HELLO, encode_hello(h))


def setup(tmp_path: Path, *nodes: Node, fatal_after: float = 10.0) -> tuple[Pipeline, Queue, Any]:
    reg_dir = tmp_path / "registry"
    reg_dir.mkdir(exist_ok=True)
    for n in nodes:
        write_entry(reg_dir, n)
    reg = Registry(reg_dir)
    reg.refresh()
    ex = ThreadPoolExecutor(1)
    q = Queue.open(tmp_path / "q.sqlite3", 10**7)
    p = Pipeline(reg, Store(q, ex, fatal_after=fatal_after), Metrics(), max_delay=0)
    return p, q, ex


def run(coro_fn: Any, tmp_path: Path, *nodes: Node, **kw: Any) -> None:
    async def main() -> None:
        p, q, ex = setup(tmp_path, *nodes, **kw)
        try:
            await coro_fn(p, q)
        finally:
            q.close()
            ex.shutdown()

    asyncio.run(main())


def test_spoofed_hello_and_replayed_record_move_no_route_nor_clock(tmp_path: Path) -> None:
    """Finding 3: a HELLO naming a device, or a replayed old record, on another port
    moved the device's route (its COMMANDs went there) and its boot clock."""
    node = make_node("esp32-01")

    async def scenario(p: Pipeline, q: Queue) -> None:
        real, evil = Port("/dev/ttyREAL"), Port("/dev/ttyEVIL")
        await feed(p, real, hello("esp32-01", uptime_ms=10_000), boot_record(node, 1, 9))
        assert real.answers() == [("TIME", True), ("ACK", 1)]
        dev = p.devices["esp32-01"]
        assert dev.port == "/dev/ttyREAL"
        boot_start = dev.boot_start
        assert boot_start is not None and abs(boot_start - (time.time() - 10)) < 5
        # the attacker claims the same boot started decades ago, then replays record 1
        await feed(p, evil, hello("esp32-01", uptime_ms=10**12), boot_record(node, 1, 9))
        assert evil.answers() == [("TIME", True), ("ACK", 1)]  # a duplicate, ACKed again
        assert p.routes.link_of("esp32-01") is real
        assert dev.boot_start == boot_start
        # the real node's next record is resolved with its own clock
        await feed(p, real, boot_record(node, 2, 19))
        assert real.answers() == [("ACK", 2)]
        (row,) = [r for r in q.peek(0, 10) if r.seq == 2]
        assert row.meta is not None
        (resolved,) = __import__("json").loads(row.meta)["resolved"]
        assert abs(resolved - (boot_start + 19)) < 0.01
        # a new verified record is proof: the device really moved to the other port
        await feed(p, evil, boot_record(node, 3, 29))
        assert p.routes.link_of("esp32-01") is evil

    run(scenario, tmp_path, node)


def test_hello_flood_of_invented_ids_keeps_no_state(tmp_path: Path) -> None:
    """Finding 4: every HELLO with a new id allocated state for ever (20,000 HELLOs:
    27 MiB, a 3.4 MB status file) and starved the real node."""
    node = make_node("esp32-01")

    async def scenario(p: Pipeline, q: Queue) -> None:
        evil, real = Port("/dev/ttyEVIL"), Port("/dev/ttyREAL")
        frames = [hello(f"fake-{i:05d}") for i in range(20_000)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await feed(p, evil, *frames, commit=False)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert p.devices == {} and p.routes.claims_on(evil.name) == 0
        assert p.metrics.frames["HELLO"] == 20_000
        limited = p.metrics.frame_errors["rate-limited"]
        assert p.metrics.hello_errors["unknown-device"] + limited == 20_000
        assert limited >= 20_000 - PORT_BURST - 100  # the port's budget ran out at once
        assert len(p.rlog._last) <= 3  # one log key per port and event, not per id
        assert grown < 256 * 1024, f"{grown} bytes kept for 20,000 invented HELLOs"
        # the flooding port's budget is its own: the real node on another port is served
        await feed(p, real, hello("esp32-01"), node.record_frame(1))
        assert real.answers() == [("TIME", True), ("ACK", 1)]

    run(scenario, tmp_path, node)


def test_wire_strings_are_escaped_in_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 7: a newline plus `<2>` in a device id, firmware or kid forged a
    CRITICAL journal entry."""
    node = make_node("esp32-01")
    caplog.set_level(logging.INFO, logger="citysense")
    forged = "x\n<2>event=queue-corrupt FORGED"

    async def scenario(p: Pipeline, q: Queue) -> None:
        port = Port("/dev/ttyEVIL")
        stranger = make_node(forged)
        await feed(
            p,
            port,
            hello("esp32-01", fw=forged),
            hello(forged),
            stranger.record_frame(1),
            encode_frame(FrameType.RECORD, sign1(stranger.seed, b"\xff\x1b[2J\n<2>", b"\xa0")),
        )

    run(scenario, tmp_path, node)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 4
    for line in lines:
        assert "\n" not in line and "\x1b" not in line, line
    assert any("firmware=x\\x0a<2>event=queue-corrupt FORGED" in m for m in lines)
    assert any("device=x\\x0a<2>event=queue-corrupt FORGED" in m for m in lines)


def test_huge_boot_relative_time_is_stored_unresolved(tmp_path: Path) -> None:
    """Finding 8: valid CBOR must never raise; a boot-relative SenML time of 2**1100
    raised OverflowError in the time resolution."""
    node = make_node("esp32-01")

    async def scenario(p: Pipeline, q: Queue) -> None:
        port = Port("/dev/ttyS0")
        await feed(p, port, hello("esp32-01"), boot_record(node, 1, 2**1100))
        await feed(p, port, boot_record(node, 2, float("inf")), boot_record(node, 3, 5))
        assert port.answers() == [("TIME", True), ("ACK", 1), ("ACK", 3)]
        meta = {r.seq: r.meta for r in q.peek(0, 10)}
        assert meta[1] is None and meta[2] is None and meta[3] is not None

    run(scenario, tmp_path, node)


def test_seq_poisoning_is_refused_and_a_new_key_starts_afresh(tmp_path: Path) -> None:
    """Finding 2: one validly signed record with a seq near 2**63 became the device's
    highest seq for ever, and after a re-key every record was NACKed `replay`."""
    node = make_node("esp32-01")

    async def scenario(p: Pipeline, q: Queue) -> None:
        port = Port("/dev/ttyS0")
        await feed(p, port, node.record_frame(NOW_MS - 1000), node.record_frame(2**63 - 2))
        assert port.answers() == [("NACK", (2**63 - 2, "seq-ahead")), ("ACK", NOW_MS - 1000)]
        assert [r.seq for r in q.peek(0, 10)] == [NOW_MS - 1000]
        await feed(p, port, node.record_frame(NOW_MS - 999))
        assert port.answers() == [("ACK", NOW_MS - 999)]
        # re-key (enroll --new-key --replace): the new key's state starts empty
        new = make_node("esp32-01")
        write_entry(tmp_path / "registry", new)
        p.registry.refresh()
        await feed(p, port, new.record_frame(NOW_MS - 5000))
        assert port.answers() == [("ACK", NOW_MS - 5000)]
        assert p.store.high("esp32-01", key_id(new.public_key)) == NOW_MS - 5000
        assert p.store.high("esp32-01", key_id(node.public_key)) == NOW_MS - 999

    run(scenario, tmp_path, node)


def test_a_store_that_keeps_failing_ends_the_committer(tmp_path: Path) -> None:
    """Finding 9: a database failing at run time NACKed every batch `busy` for ever
    while the watchdog stayed fed. Now the committer gives up (the agent exits non-zero
    and systemd restarts it)."""
    node = make_node("esp32-01")

    async def scenario(p: Pipeline, q: Queue) -> None:
        port = Port("/dev/ttyS0")
        q.conn.close()  # every statement now fails
        committer = asyncio.create_task(p.committer())
        for _ in range(8):  # the node resends seq 1 after each busy back-off
            await feed(p, port, node.record_frame(1), commit=False)
            await asyncio.sleep(0.05)
            if committer.done():
                break
        with pytest.raises(StoreBrokenError):
            await asyncio.wait_for(committer, 10)
        answers = port.answers()
        assert answers and all(a[0] == "NACK" and a[1][1] == "busy" for a in answers)
        assert p.store.failures >= 5
        q.conn = __import__("sqlite3").connect(":memory:")  # for the fixture's close()

    run(scenario, tmp_path, node, fatal_after=0.0)


def test_a_failed_commit_cannot_be_covered_by_a_later_ack(tmp_path: Path) -> None:
    """Records of a device admitted while its batch was being stored sit above the
    batch's seqs: if that store fails, a later commit of them must not send an ACK that
    (being cumulative) covers the failed ones, which the node would then delete. They are
    NACKed busy with the batch. (Found by the status-page engineer as a lost-record flake.)"""
    node = make_node("esp32-01")

    async def scenario(p: Pipeline, q: Queue) -> None:
        from gateway.queue import QueueFullError

        port = Port("/dev/ttyS0")
        real_store = p.store.store
        calls = 0

        async def slow_failing_store(records: list[Any]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                # seq 3 arrives while seqs 1-2 are being written, then the write fails
                await feed(p, port, node.record_frame(3), commit=False)
                raise QueueFullError("disk full: test")
            await real_store(records)

        p.store.store = slow_failing_store  # type: ignore[method-assign]
        await feed(p, port, node.record_frame(1), node.record_frame(2), commit=False)
        await p.commit_once()  # fails
        await p.commit_once()  # whatever is left
        answers = port.answers()
        acked = [a[1] for a in answers if a[0] == "ACK"]
        assert acked == [], answers
        assert sorted(a[1] for a in answers if a[0] == "NACK") == [
            (1, "busy"),
            (2, "busy"),
            (3, "busy"),
        ]
        assert q.all_keys() == []
        # the node resends from 1 after its back-off: all three are stored, in order
        await feed(p, port, *(node.record_frame(s) for s in (1, 2, 3)))
        assert port.answers() == [("ACK", 3)]

    run(scenario, tmp_path, node)
