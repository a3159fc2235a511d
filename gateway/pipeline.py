"""Frames in, decisions out: verify, replay-check, group-commit, ACK/NACK.

Replay rule (DESIGN.md: seq strictly increasing for a device's life, gaps allowed):
- seq > highest stored (H): new -> stored, then ACK seq (cumulative).
- seq == H, or seq < H and the row is still queued: a duplicate of a stored record
  (its ACK was lost) -> ACK H again, nothing stored.
- seq < H and not queued: either already forwarded (a duplicate) or never stored (an
  out-of-order or replayed record). The gateway cannot tell them apart without keeping
  every seq forever, and must not claim it stored something it did not: NACK `replay`.
  A node sends its buffer in seq order, one record at a time (stop-and-wait), and its
  seqs start at the Unix ms of its enrollment (the seq floor `citysense-provision
  enroll` writes), so a replacement board continues above its predecessor's H. A
  genuine node therefore meets `replay` only when something is wrong (a node enrolled
  without the floor, lost /state, a forged replay): the node deletes the record on that
  NACK, so the readings are lost, and the gateway logs it as a warning (event=replay)
  with the device, the seq and H.
- seq > MAX_SEQ (2**63 - 1, SQLite's INTEGER): NACK `malformed`; storing it would fail
  the whole group commit, and a record cannot fall outside the store's range.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from .metrics import Metrics
from .protocol import (
    Frame,
    FrameType,
    NackReason,
    ProtocolError,
    decode_command_result,
    decode_hello,
    decode_record_payload,
    encode_ack,
    encode_frame,
    encode_nack,
    encode_time,
    parse_sign1,
    resolve_times,
    verify_parsed,
)
from .queue import MAX_SEQ, ROW_OVERHEAD, NewRecord, Queue, QueueFullError
from .ratelog import RateLimitedLog
from .registry import Registry

log = logging.getLogger("citysense.pipeline")
T = TypeVar("T")

BUSY_HOLD = 5.0
"""Seconds a device's later records are held back after one of its records got NACK busy."""


class Link(Protocol):
    """Where a frame came from and where its answer goes (a serial port)."""

    name: str

    def send(self, data: bytes) -> None: ...


@dataclass
class DeviceState:
    port: str | None = None
    link: Link | None = None
    last_seen: float = 0.0
    last_seq: int | None = None
    boot: int | None = None
    boot_start: float | None = None
    firmware: str | None = None
    rejects: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    record: NewRecord
    link: Link


class Pipeline:
    def __init__(
        self,
        registry: Registry,
        queue: Queue,
        metrics: Metrics,
        *,
        executor: ThreadPoolExecutor,
        max_batch: int = 256,
        max_delay: float = 0.005,
        publish_up: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.registry = registry
        self.queue = queue
        self.metrics = metrics
        self.executor = executor
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.publish_up = publish_up
        self.devices: dict[str, DeviceState] = {}
        self.rlog = RateLimitedLog(log)
        self._pending: list[_Pending] = []
        self._pending_high: dict[str, int] = {}
        self._pending_bytes = 0
        self._busy_floor: dict[str, tuple[int, float]] = {}
        self._wake = asyncio.Event()
        self.stored_event = asyncio.Event()
        self.heartbeat = time.monotonic()

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- frames -----------------------------------------------------------------
    def frame_error(self, link: Link, exc: ProtocolError) -> None:
        self.metrics.frame_errors[exc.reason] += 1
        self.rlog.warning(
            f"frame-error:{link.name}:{exc.reason}",
            "event=frame-error port=%s reason=%s detail=%s",
            link.name,
            exc.reason,
            exc,
        )

    async def handle(self, link: Link, frame: Frame) -> None:
        self.metrics.frames[frame.type.name] += 1
        handler = self._handlers.get(frame.type)
        if handler is None:
            self.metrics.frame_errors["unexpected-type"] += 1
            self.rlog.warning(
                f"unexpected:{link.name}:{frame.type.name}",
                "event=frame-unexpected port=%s type=%s",
                link.name,
                frame.type.name,
            )
            return
        await handler(self, link, frame.body)

    async def _on_hello(self, link: Link, body: bytes) -> None:
        try:
            hello = decode_hello(body)
        except ProtocolError as exc:
            self.metrics.hello_errors[exc.reason] += 1
            self.rlog.warning(
                f"hello:{link.name}",
                "event=hello-rejected port=%s reason=%s detail=%s",
                link.name,
                exc.reason,
                exc,
            )
            return
        dev = self._state(hello.device_id)
        self._attach(dev, link)
        dev.boot = hello.boot_count
        dev.boot_start = time.time() - hello.uptime_ms / 1000.0
        dev.firmware = hello.firmware
        log.info(
            "event=hello device=%s port=%s boot=%d firmware=%s reset=%s highest_seq=%d%s",
            hello.device_id,
            link.name,
            hello.boot_count,
            hello.firmware,
            hello.reset_cause,
            hello.highest_seq,
            f" problem={hello.problem!r}" if hello.problem else "",
        )
        self._check_seq_behind(hello.device_id, hello.highest_seq, link, hello.problem)
        self.send_time(link)

    def _check_seq_behind(
        self, device_id: str, node_highest: int, link: Link, problem: str | None
    ) -> None:
        """A node whose seqs are behind what this gateway stored for its id (a board
        enrolled without a seq floor, or one whose /state was lost) would have every
        record up to the stored seq NACKed `replay` and deleted: say so at its HELLO."""
        if problem:
            return
        stored = self.queue.high_seq(device_id)
        high = max(self._pending_high.get(device_id, -1), -1 if stored is None else stored)
        if node_highest >= high:
            return
        self.rlog.warning(
            f"seq-behind:{device_id}",
            "event=seq-behind device=%s port=%s node_highest_seq=%d gateway_highest_seq=%d"
            " detail=%s",
            device_id,
            link.name,
            node_highest,
            high,
            "records of this node up to the gateway's highest seq will be NACKed replay"
            " and lost: re-enroll it with citysense-provision enroll (writes a seq floor)",
        )

    def send_time(self, link: Link) -> None:
        link.send(encode_frame(FrameType.TIME, encode_time(int(time.time() * 1000))))

    def _state(self, device_id: str) -> DeviceState:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = DeviceState()
        return dev

    def _attach(self, dev: DeviceState, link: Link) -> None:
        dev.link = link
        dev.port = link.name
        dev.last_seen = time.time()

    def _count_reject(self, device: str, reason: NackReason) -> None:
        self.metrics.rejected[str(reason)] += 1
        if device in self.devices:
            rj = self.devices[device].rejects
            rj[str(reason)] = rj.get(str(reason), 0) + 1

    def _reject(self, link: Link, device: str, seq: int, reason: NackReason, why: str) -> None:
        self._count_reject(device, reason)
        self.rlog.warning(
            f"reject:{device}:{reason}",
            "event=record-rejected device=%s port=%s seq=%d reason=%s detail=%s",
            device,
            link.name,
            seq,
            reason,
            why,
        )
        link.send(encode_frame(FrameType.NACK, encode_nack(seq, reason)))

    async def _on_record(self, link: Link, body: bytes) -> None:
        try:
            msg = parse_sign1(body)
        except ProtocolError as exc:
            self._reject(link, "?", 0, NackReason.MALFORMED, str(exc))
            return
        device_id = msg.kid.decode("utf-8", "replace")
        entry = self.registry.get(device_id)
        if entry is None:
            self._reject(link, device_id, 0, NackReason.UNKNOWN_DEVICE, "not in the registry")
            return
        if not entry.active:
            self._reject(link, device_id, 0, NackReason.REVOKED, "device revoked")
            return
        try:
            verify_parsed(entry.public_key, msg)
        except ProtocolError as exc:
            self._reject(link, device_id, 0, NackReason.BAD_SIGNATURE, str(exc))
            return
        try:
            rec = decode_record_payload(msg.payload)
        except ProtocolError as exc:
            self._reject(link, device_id, 0, NackReason.MALFORMED, str(exc))
            return
        if rec.seq > MAX_SEQ:
            self._reject(link, device_id, rec.seq, NackReason.MALFORMED, f"seq above {MAX_SEQ}")
            return
        dev = self._state(device_id)
        self._attach(dev, link)
        await self._admit(link, device_id, dev, rec.seq, body, self._meta(dev, rec))

    def _meta(self, dev: DeviceState, rec: Any) -> str | None:
        if rec.time_base != 1 or dev.boot != rec.boot or dev.boot_start is None:
            return None
        times = resolve_times(rec, dev.boot_start)
        return None if times is None else json.dumps({"resolved": [round(t, 3) for t in times]})

    async def _admit(
        self, link: Link, device_id: str, dev: DeviceState, seq: int, body: bytes, meta: str | None
    ) -> None:
        stored = self.queue.high_seq(device_id)
        high = max(self._pending_high.get(device_id, -1), -1 if stored is None else stored)
        if seq <= high:
            dup = seq == high or await self.run_db(self.queue.contains, device_id, seq)
            if not dup and device_id in self._pending_high:
                dup = any(
                    p.record.device_id == device_id and p.record.seq == seq for p in self._pending
                )
            if not dup:
                self._replay(link, device_id, seq, high)
                return
            self.metrics.duplicates += 1
            if stored is not None and stored >= seq:
                link.send(encode_frame(FrameType.ACK, encode_ack(stored)))
            # else: the original is in the pending batch; its ACK follows the commit
            return
        floor = self._busy_floor.get(device_id)
        if floor is not None:
            if seq > floor[0] and time.monotonic() - floor[1] < BUSY_HOLD:
                # keep the device's records in order: the NACKed one must come first
                self._reject(link, device_id, seq, NackReason.BUSY, f"seq {floor[0]} first")
                return
            del self._busy_floor[device_id]
        if not self.queue.room_for(self._pending_bytes + len(body)):
            self._busy(link, device_id, seq, "queue at max_bytes")
            return
        record = NewRecord(device_id, seq, int(time.time() * 1000), body, meta)
        self._pending.append(_Pending(record, link))
        self._pending_high[device_id] = seq
        self._pending_bytes += len(body) + ROW_OVERHEAD
        dev.last_seq = seq
        self._wake.set()

    def _replay(self, link: Link, device_id: str, seq: int, high: int) -> None:
        """NACK replay, loudly: the node deletes the record on this answer, so unless the
        record is a forgery its readings are lost (see the replay rule above)."""
        self._count_reject(device_id, NackReason.REPLAY)
        self.rlog.warning(
            f"replay:{device_id}",
            "event=replay device=%s port=%s seq=%d highest_stored_seq=%d behind=%d detail=%s",
            device_id,
            link.name,
            seq,
            high,
            high - seq,
            "seq below this device's highest stored seq and not queued: NACKed replay, the"
            " node drops the record. A node replaced or reset without a seq floor? Re-enroll"
            " it with citysense-provision enroll",
        )
        link.send(encode_frame(FrameType.NACK, encode_nack(seq, NackReason.REPLAY)))

    def _busy(self, link: Link, device_id: str, seq: int, why: str) -> None:
        """NACK busy, and hold later seqs of this device until this one is stored.

        Without the hold, a pipelined seq+1 could be stored once room frees up, after
        which seq could only be refused as a replay. The hold expires after BUSY_HOLD
        seconds in case the node dropped seq (full buffer) and never sends it again.
        """
        prev = self._busy_floor.get(device_id)
        if prev is None or seq < prev[0]:
            self._busy_floor[device_id] = (seq, time.monotonic())
        self._reject(link, device_id, seq, NackReason.BUSY, why)

    async def _on_command_result(self, link: Link, body: bytes) -> None:
        try:
            kid = parse_sign1(body).kid.decode("utf-8", "replace")
            entry = self.registry.get(kid)
            if entry is None or not entry.active:
                raise ProtocolError(f"unknown or revoked device {kid!r}", reason="unknown-device")
            result = decode_command_result(entry.public_key, body)
        except ProtocolError as exc:
            self.metrics.commands[f"result-{exc.reason}"] += 1
            self.rlog.warning(
                f"result:{link.name}",
                "event=command-result-rejected port=%s reason=%s detail=%s",
                link.name,
                exc.reason,
                exc,
            )
            return
        self._attach(self._state(kid), link)
        self.metrics.commands["result"] += 1
        log.info(
            "event=command-result device=%s command_id=%d ok=%s", kid, result.command_id, result.ok
        )
        if self.publish_up is not None:
            self.publish_up(kid, body)

    _handlers: ClassVar[dict[FrameType, Callable[[Pipeline, Link, bytes], Awaitable[None]]]] = {
        FrameType.HELLO: _on_hello,
        FrameType.RECORD: _on_record,
        FrameType.COMMAND_RESULT: _on_command_result,
    }

    # -- group commit -----------------------------------------------------------
    async def committer(self) -> None:
        """Collect records for max_delay (or max_batch), commit once, then send the ACKs."""
        while True:
            self.heartbeat = time.monotonic()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                continue
            if len(self._pending) < self.max_batch and self.max_delay > 0:
                await asyncio.sleep(self.max_delay)
            await self.commit_once()

    async def commit_once(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if self._pending:
            self._wake.set()
        if not batch:
            return
        try:
            await self.run_db(self.queue.store, [p.record for p in batch])
        except QueueFullError as exc:
            self._drop_pending(batch)
            for p in batch:
                self._busy(p.link, p.record.device_id, p.record.seq, str(exc))
            return
        except Exception as exc:
            self._drop_pending(batch)
            log.error("event=queue-store-failed error=%s", exc)
            for p in batch:
                self._busy(p.link, p.record.device_id, p.record.seq, str(exc))
            return
        self._drop_pending(batch)
        self.metrics.accepted += len(batch)
        acks: dict[tuple[str, int], tuple[Link, int]] = {}
        for p in batch:
            key = (p.record.device_id, id(p.link))
            prev = acks.get(key)
            if prev is None or p.record.seq > prev[1]:
                acks[key] = (p.link, p.record.seq)
        for link, seq in acks.values():
            link.send(encode_frame(FrameType.ACK, encode_ack(seq)))
        self.stored_event.set()

    def _drop_pending(self, batch: list[_Pending]) -> None:
        self._pending_bytes -= sum(len(p.record.data) + ROW_OVERHEAD for p in batch)
        done = {p.record.device_id for p in batch}
        for device in done:
            if not any(p.record.device_id == device for p in self._pending):
                self._pending_high.pop(device, None)

    async def drain(self) -> None:
        while self._pending:
            await self.commit_once()
