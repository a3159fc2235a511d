"""Verify -> replay check -> group commit -> ACK/NACK, with exact frames out."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gwsupport import make_node, write_entry

from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.protocol import (
    FrameDecoder,
    FrameType,
    decode_ack,
    decode_nack,
    decode_time,
    encode_frame,
    sign1,
)
from gateway.queue import Queue
from gateway.registry import Registry
from gateway.store import Store, key_id


class FakeLink:
    name = "/dev/ttyFAKE"

    def __init__(self) -> None:
        self.decoder = FrameDecoder()

    def send(self, data: bytes) -> None:
        self.decoder.feed(data)

    def answers(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        while (f := self.decoder.next_frame()) is not None:
            if f.type == FrameType.ACK:
                out.append(("ACK", decode_ack(f.body)))
            elif f.type == FrameType.NACK:
                seq, reason = decode_nack(f.body)
                out.append(("NACK", (seq, str(reason))))
            elif f.type == FrameType.TIME:
                out.append(("TIME", decode_time(f.body) > 0))
        return out


def run(tmp_path: Path, scenario, max_bytes: int = 10**6) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        reg_dir = tmp_path / "registry"
        reg_dir.mkdir(exist_ok=True)
        ex = ThreadPoolExecutor(1)
        q = Queue.open(tmp_path / "q.sqlite3", max_bytes)
        reg = Registry(reg_dir)
        p = Pipeline(reg, Store(q, ex), Metrics(), max_delay=0)
        try:
            await scenario(p, reg, q, FakeLink())
        finally:
            q.close()
            ex.shutdown()

    asyncio.run(main())


async def feed(p: Pipeline, link: FakeLink, *frames: bytes, commit: bool = True) -> None:
    d = FrameDecoder()
    for raw in frames:
        d.feed(raw)
        while (f := d.next_frame()) is not None:
            await p.handle(link, f)
    if commit:
        await p.commit_once()


def test_accept_duplicate_replay(tmp_path: Path) -> None:
    node = make_node("esp32-01")
    (tmp_path / "registry").mkdir()
    write_entry(tmp_path / "registry", node)

    async def scenario(p: Pipeline, reg: Registry, q: Queue, link: FakeLink) -> None:
        reg.refresh()
        await feed(p, link, node.hello_frame(), node.record_frame(3), node.record_frame(5))
        assert link.answers() == [("TIME", True), ("ACK", 5)]  # one cumulative ACK per commit
        await feed(p, link, node.record_frame(5))  # ACK lost: resent -> ACKed again
        await feed(p, link, node.record_frame(3))  # still queued -> duplicate
        await feed(p, link, node.record_frame(4))  # never stored, below 5 -> replay
        assert link.answers() == [("ACK", 5), ("ACK", 5), ("NACK", (4, "replay"))]
        assert q.all_keys() == [("esp32-01", 3), ("esp32-01", 5)]
        await p.store.delete([r.id for r in q.peek(0, 10)])  # forwarded
        await feed(p, link, node.record_frame(3))  # forwarded and gone -> replay
        await feed(p, link, node.record_frame(6))
        assert link.answers() == [("NACK", (3, "replay")), ("ACK", 6)]
        assert p.metrics.accepted == 3 and p.metrics.duplicates == 2
        assert dict(p.metrics.rejected) == {"replay": 2}

    run(tmp_path, scenario)


def test_unknown_revoked_badsig_malformed(tmp_path: Path) -> None:
    (tmp_path / "registry").mkdir()
    node, stranger = make_node("esp32-01"), make_node("esp32-99")
    write_entry(tmp_path / "registry", node)

    async def scenario(p: Pipeline, reg: Registry, q: Queue, link: FakeLink) -> None:
        reg.refresh()
        forged = sign1(stranger.seed, b"esp32-01", b"\xa0")
        await feed(
            p,
            link,
            stranger.record_frame(1),
            encode_frame(FrameType.RECORD, forged),
            encode_frame(FrameType.RECORD, b"\x01\x02"),
            encode_frame(FrameType.RECORD, sign1(node.seed, b"esp32-01", b"\xa0")),
        )
        assert link.answers() == [
            ("NACK", (0, "unknown-device")),
            ("NACK", (0, "bad-signature")),
            ("NACK", (0, "malformed")),
            ("NACK", (0, "malformed")),
        ]
        await feed(p, link, node.record_frame(1))
        write_entry(tmp_path / "registry", node, status="revoked")
        reg.refresh()
        await feed(p, link, node.record_frame(2))
        assert link.answers() == [("ACK", 1), ("NACK", (0, "revoked"))]
        assert q.all_keys() == [("esp32-01", 1)]
        assert dict(p.metrics.rejected) == {
            "unknown-device": 1,
            "bad-signature": 1,
            "malformed": 2,
            "revoked": 1,
        }

    run(tmp_path, scenario)


def test_bound_gives_busy_then_recovers(tmp_path: Path) -> None:
    (tmp_path / "registry").mkdir()
    node = make_node("esp32-01")
    write_entry(tmp_path / "registry", node)
    size = len(node.record(1)) + 64

    async def scenario(p: Pipeline, reg: Registry, q: Queue, link: FakeLink) -> None:
        reg.refresh()
        await feed(p, link, *(node.record_frame(s) for s in (1, 2, 3, 4, 5)))
        assert link.answers() == [("NACK", (4, "busy")), ("NACK", (5, "busy")), ("ACK", 3)]
        assert q.depth == 3
        await p.store.delete([r.id for r in q.peek(0, 2)])  # room for two again
        await feed(p, link, node.record_frame(5))  # 4 must come first: held back
        assert link.answers() == [("NACK", (5, "busy"))]
        await feed(p, link, node.record_frame(4), node.record_frame(5))
        assert link.answers() == [("ACK", 5)]
        assert q.all_keys() == [("esp32-01", 3), ("esp32-01", 4), ("esp32-01", 5)]

    run(tmp_path, scenario, max_bytes=3 * size + 10)


def test_disk_full_gives_busy(tmp_path: Path) -> None:
    (tmp_path / "registry").mkdir()
    node = make_node("esp32-01")
    write_entry(tmp_path / "registry", node)

    async def scenario(p: Pipeline, reg: Registry, q: Queue, link: FakeLink) -> None:
        reg.refresh()
        (pages,) = q.conn.execute("PRAGMA page_count").fetchone()
        q.conn.execute(f"PRAGMA max_page_count={pages + 16}")  # a few records' room
        answers: list[tuple[str, object]] = []
        for s in range(1, 200):
            await feed(p, link, node.record_frame(s))
            answers += link.answers()
            if answers[-1][0] == "NACK":
                break
        last = answers[-1]
        assert last == ("NACK", (s, "busy"))
        assert answers[:-1] == [("ACK", i) for i in range(1, s)]
        assert q.depth == s - 1 and q.high_seq("esp32-01", key_id(node.public_key)) == s - 1
        assert q.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    run(tmp_path, scenario)


FLOOR = 1764047000123  # Unix ms: a seq floor as `citysense-provision enroll` writes it


def test_replacement_above_the_floor_is_stored_and_replay_is_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A board replacing esp32-01 (new key, same id) continues at its enrollment floor:
    accepted. Replay state belongs to (device, key): one that starts at seq 1 under a new
    key (no floor) is stored, since nothing of that key was, but told at its HELLO that
    consumers may take its seqs for the old key's. Under the same key, a seq below the
    stored one is NACKed `replay`, with a warning naming the device and both seqs."""
    (tmp_path / "registry").mkdir()
    old = make_node("esp32-01")
    write_entry(tmp_path / "registry", old)
    caplog.set_level(logging.INFO, logger="citysense.pipeline")

    def events(name: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if f"event={name} " in r.getMessage()]

    async def scenario(p: Pipeline, reg: Registry, q: Queue, link: FakeLink) -> None:
        reg.refresh()
        await feed(p, link, old.hello_frame(), old.record_frame(FLOOR), old.record_frame(FLOOR + 9))
        assert link.answers() == [("TIME", True), ("ACK", FLOOR + 9)]
        await p.store.delete([r.id for r in q.peek(0, 10)])  # forwarded

        new = make_node("esp32-01")  # the replacement, enrolled an hour later
        write_entry(tmp_path / "registry", new)
        reg.refresh()
        later = FLOOR + 3_600_000
        await feed(p, link, new.hello_frame(highest=later - 1), new.record_frame(later))
        assert link.answers() == [("TIME", True), ("ACK", later)]
        assert events("seq-behind") == [] and events("replay") == []

        unfloored = make_node("esp32-01")  # enrolled without a floor: seq 1 again
        write_entry(tmp_path / "registry", unfloored)
        reg.refresh()
        await feed(p, link, unfloored.hello_frame(highest=0), unfloored.record_frame(1))
        assert link.answers() == [("TIME", True), ("ACK", 1)]
        assert sorted(q.all_keys()) == [("esp32-01", 1), ("esp32-01", later)]
        assert events("seq-behind") == [
            "event=seq-behind device=esp32-01 port=/dev/ttyFAKE node_highest_seq=0"
            f" gateway_highest_seq={later} detail=this key's seqs are below those of the"
            " device's previous key: consumers deduping by (device, seq) may drop them;"
            " re-enroll it with citysense-provision enroll (writes a seq floor)"
        ]
        await feed(p, link, unfloored.record_frame(5), unfloored.record_frame(3))
        assert link.answers() == [("NACK", (3, "replay")), ("ACK", 5)]  # ACK after commit
        (replay,) = [r for r in caplog.records if "event=replay " in r.getMessage()]
        assert replay.levelno == logging.WARNING
        assert replay.getMessage().startswith(
            "event=replay device=esp32-01 port=/dev/ttyFAKE seq=3 highest_stored_seq=5"
            " behind=2 detail="
        )
        assert dict(p.metrics.rejected) == {"replay": 1}
        assert p.devices["esp32-01"].rejects == {"replay": 1}

    run(tmp_path, scenario)


def test_seq_beyond_the_store_is_malformed_and_spares_the_batch(tmp_path: Path) -> None:
    """SQLite stores signed 64-bit ints: a seq above 2**63 - 1 is NACKed `malformed` up
    front instead of failing the group commit of every record batched with it."""
    (tmp_path / "registry").mkdir()
    a, b = make_node("esp32-01"), make_node("esp32-02")
    write_entry(tmp_path / "registry", a)
    write_entry(tmp_path / "registry", b)

    async def scenario(p: Pipeline, reg: Registry, q: Queue, link: FakeLink) -> None:
        reg.refresh()
        await feed(p, link, a.record_frame(2**63 - 1), a.record_frame(2**63), b.record_frame(7))
        assert link.answers() == [
            ("NACK", (2**63 - 1, "seq-ahead")),
            ("NACK", (2**63, "malformed")),
            ("ACK", 7),
        ]
        assert q.all_keys() == [("esp32-02", 7)]

    run(tmp_path, scenario)
