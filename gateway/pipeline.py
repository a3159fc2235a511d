"""Frames in, decisions out: verify, admit (gateway/admission.py), group-commit, ACK/NACK.

The pipeline is the I/O shell around three pure parts: the admission rules (which
verdict a verified record gets), the route table (which port reaches a device, changed
only on proof, gateway/routes.py) and the per-port budget for unauthenticated work. It
parses, verifies, asks those parts, and carries out their answers on the store and the
links. Replay rule and the reasons for each verdict: gateway/admission.py.

Hostile input, and what bounds it:
- HELLOs are claims, not facts: only registered ids get one (a bounded number per
  port); others are counted per port and forgotten. Nothing a HELLO says moves a route
  or a boot clock until a new verified record confirms it (gateway/routes.py).
- Work a port makes without proving anything (every HELLO, every RECORD that fails
  verification) spends that port's token bucket (PORT_RATE per second, PORT_BURST);
  an empty bucket drops such frames unread, counted as `rate-limited`. A hostile port
  only slows itself down: a verified record costs nothing.
- Every string from the wire is escaped (gateway/logsafe.py) before it reaches a log,
  and wire-triggered lines are rate-limited by a key that the wire cannot multiply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Final

from . import admission
from .admission import Facts, Holds, Verdict
from .logsafe import esc
from .metrics import Metrics
from .ota.serve import OtaServer
from .protocol import (
    COMMAND_PROTOCOL,
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
from .protocol.record import RecordPayload
from .queue import NewRecord, QueueFullError, counted
from .ratelog import RateLimitedLog
from .registry import Device as Entry
from .registry import Registry
from .routes import Claim, Device, Link, Routes
from .store import Store, StoreBrokenError, key_id

log = logging.getLogger("citysense.pipeline")

PORT_RATE: Final = 20.0
"""Unauthenticated frames (HELLOs, records that fail verification) per second per port."""
PORT_BURST: Final = 100.0


class TokenBucket:
    def __init__(self, rate: float = PORT_RATE, burst: float = PORT_BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def available(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        if not self.available(now):
            return False
        self.tokens -= 1.0
        return True


@dataclass
class _Pending:
    record: NewRecord
    link: Link


class Pipeline:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        metrics: Metrics,
        *,
        max_batch: int = 256,
        max_delay: float = 0.005,
        publish_up: Callable[[str, bytes], None] | None = None,
        clock_ok: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.publish_up = publish_up
        self.clock_ok = clock_ok
        self.routes = Routes()
        self.on_stored: Callable[[list[NewRecord]], None] | None = None
        """Called after each commit with the records now stored (the status page's
        history); it must be quick and must not raise."""
        self.rlog = RateLimitedLog(log)
        self.holds = Holds()
        self.buckets: dict[str, TokenBucket] = {}
        self.unknown_hellos: dict[str, int] = {}  # by port
        self._pending: list[_Pending] = []
        self._pending_high: dict[tuple[str, str], int] = {}
        self._pending_keys: set[tuple[str, str, int]] = set()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self.time_withheld = 0  # TIMEs not sent: the gateway's clock is not synchronised
        self.heartbeat = time.monotonic()
        self.ota = OtaServer(None)
        """Firmware transfers (gateway/ota/serve.py): answers OTA_GETs, sends offers. The
        agent gives it the bundle cache when [ota] release_key is set."""

    @property
    def devices(self) -> dict[str, Device]:
        return self.routes.devices

    # -- frames -----------------------------------------------------------------
    def frame_error(self, link: Link, exc: ProtocolError) -> None:
        self.metrics.frame_errors[exc.reason] += 1
        self.rlog.warning(
            f"frame-error:{link.name}:{exc.reason}",
            "event=frame-error port=%s reason=%s detail=%s",
            link.name,
            exc.reason,
            esc(str(exc)),
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

    def _bucket(self, link: Link) -> TokenBucket:
        bucket = self.buckets.get(link.name)
        if bucket is None:
            bucket = self.buckets[link.name] = TokenBucket()
        return bucket

    def _spend(self, link: Link, *, take: bool = True) -> bool:
        """One unit of unauthenticated work on this port (`take=False`: only check that
        the port has budget left); False: drop the frame unread, counted."""
        bucket = self._bucket(link)
        now = time.monotonic()
        if bucket.take(now) if take else bucket.available(now):
            return True
        self.metrics.frame_errors["rate-limited"] += 1
        self.rlog.warning(
            f"rate-limited:{link.name}",
            "event=port-rate-limited port=%s detail=%s",
            link.name,
            f"more than {PORT_RATE:g}/s HELLOs or unverifiable records: dropped unread",
        )
        return False

    async def _on_hello(self, link: Link, body: bytes) -> None:
        if not self._spend(link):
            return
        try:
            hello = decode_hello(body)
        except ProtocolError as exc:
            self.metrics.hello_errors[exc.reason] += 1
            self.rlog.warning(
                f"hello:{link.name}",
                "event=hello-rejected port=%s reason=%s detail=%s",
                link.name,
                exc.reason,
                esc(str(exc)),
            )
            return
        entry = self.registry.get(hello.device_id)
        if entry is None or not entry.active:
            self.metrics.hello_errors["unknown-device"] += 1
            self.unknown_hellos[link.name] = self.unknown_hellos.get(link.name, 0) + 1
            self.rlog.warning(
                f"hello-unknown:{link.name}",
                "event=hello-unknown port=%s device=%s detail=%s",
                link.name,
                esc(hello.device_id),
                "not an active registered device: ignored",
            )
            return
        if hello.protocol < COMMAND_PROTOCOL:
            self.metrics.hello_errors[f"old-protocol-{hello.protocol}"] += 1
            self.rlog.warning(
                f"old-protocol:{hello.device_id}",
                "event=old-protocol device=%s port=%s protocol=%d detail=%s",
                hello.device_id,
                link.name,
                hello.protocol,
                "records are accepted; commands for it are refused (old-firmware): update"
                " its firmware",
            )
        claim = Claim(
            boot=hello.boot_count,
            protocol=hello.protocol,
            boot_start=time.time() - hello.uptime_ms / 1000.0,
            firmware=hello.firmware,
            reset_cause=hello.reset_cause,
            at=time.monotonic(),
            trial=hello.trial,
        )
        self.routes.claim(hello.device_id, link.name, claim)
        self.rlog.log(
            logging.INFO,
            f"hello:{hello.device_id}:{link.name}",
            "event=hello device=%s port=%s boot=%d firmware=%s reset=%s highest_seq=%d%s",
            hello.device_id,
            link.name,
            hello.boot_count,
            esc(hello.firmware),
            esc(hello.reset_cause),
            hello.highest_seq,
            f" problem={esc(hello.problem)}" if hello.problem else "",
        )
        self._check_seq_behind(entry, hello.highest_seq, link, hello.problem)
        self.send_time(link)
        offer = self.ota.offer_frame(hello.device_id, hello.firmware, hello.trial)
        if offer is not None:
            link.send(encode_frame(FrameType.OTA_OFFER, offer))

    async def offer_update(self, device: str, bundle: str = "") -> dict[str, object]:
        """`citysense-gateway ota push`: offer a cached bundle to `device`, now if its
        port is known, and after each of its HELLOs until it runs that version."""
        entry = self.ota.offer(device, bundle)
        dev = self.routes.devices.get(device)
        frame = self.ota.offer_frame(device, "", False)
        sent = dev is not None and dev.link is not None and frame is not None
        if sent and dev is not None and dev.link is not None and frame is not None:
            dev.link.send(encode_frame(FrameType.OTA_OFFER, frame))
        return {**entry, "sent_now": sent}

    async def _on_ota_get(self, link: Link, body: bytes) -> None:
        """A node pulls bundle bytes (docs/protocol.md section 10): answer from the cache."""
        try:
            answer = self.ota.answer(link.name, body)
        except ProtocolError as exc:
            self.frame_error(link, exc)
            return
        if answer is not None:
            link.send(encode_frame(FrameType.OTA_CHUNK, answer))

    def _check_seq_behind(
        self, entry: Entry, node_highest: int, link: Link, problem: str | None
    ) -> None:
        """A node whose seqs are behind what this gateway stored for its id (a board
        enrolled without a seq floor, or one whose /state was lost): under the same key
        its records up to the stored seq would be NACKed `replay` and deleted; under a
        new key they are stored, but consumers that dedupe by (device, seq) would take
        them for the old key's records. Either way: say so at its HELLO."""
        if problem:
            return
        key = self._key(entry)
        same_key = max(self._pending_high.get(key, -1), self.store.high(*key))
        high = max(same_key, self.store.high_any_key(entry.device_id))
        if node_highest >= high:
            return
        self.rlog.warning(
            f"seq-behind:{entry.device_id}",
            "event=seq-behind device=%s port=%s node_highest_seq=%d gateway_highest_seq=%d"
            " detail=%s",
            entry.device_id,
            link.name,
            node_highest,
            high,
            "records of this node up to the gateway's highest seq will be NACKed replay"
            " and lost: re-enroll it with citysense-provision enroll (writes a seq floor)"
            if node_highest < same_key
            else "this key's seqs are below those of the device's previous key: consumers"
            " deduping by (device, seq) may drop them; re-enroll it with"
            " citysense-provision enroll (writes a seq floor)",
        )

    def send_time(self, link: Link) -> None:
        """TIME to a port, if the gateway's own clock can be trusted (gateway/clock.py)."""
        if not self.clock_ok():
            self.time_withheld += 1
            return
        link.send(encode_frame(FrameType.TIME, encode_time(int(time.time() * 1000))))

    @staticmethod
    def _key(entry: Entry) -> tuple[str, str]:
        return entry.device_id, key_id(entry.public_key)

    def _count_reject(self, device: str, reason: NackReason | str) -> None:
        self.metrics.rejected[str(reason)] += 1
        dev = self.routes.devices.get(device)
        if dev is not None:
            dev.rejects[str(reason)] = dev.rejects.get(str(reason), 0) + 1

    def _reject(
        self, link: Link, device: str, seq: int, reason: NackReason | str, why: str
    ) -> None:
        self._count_reject(device, reason)
        # keyed by the registered id, or by the port for ids the registry does not know
        # (a flood of invented ids must not make one log key, and one line, each)
        who = device if device in self.routes.devices else f"port:{link.name}"
        self.rlog.warning(
            f"reject:{who}:{reason}",
            "event=record-rejected device=%s port=%s seq=%d reason=%s detail=%s",
            esc(device),
            link.name,
            seq,
            reason,
            esc(why, 400),
        )
        link.send(encode_frame(FrameType.NACK, encode_nack(seq, reason)))

    def _unverified(self, link: Link, device: str, reason: NackReason, why: str) -> None:
        if self._spend(link):
            self._reject(link, device, 0, reason, why)

    async def _on_record(self, link: Link, body: bytes) -> None:
        if not self._spend(link, take=False):
            return  # this port is over its budget of unverifiable work
        try:
            msg = parse_sign1(body)
        except ProtocolError as exc:
            self._unverified(link, "?", NackReason.MALFORMED, str(exc))
            return
        device_id = msg.kid.decode("utf-8", "replace")
        entry = self.registry.get(device_id)
        if entry is None:
            self._unverified(link, device_id, NackReason.UNKNOWN_DEVICE, "not in the registry")
            return
        if not entry.active:
            self._unverified(link, device_id, NackReason.REVOKED, "device revoked")
            return
        try:
            verify_parsed(entry.public_key, msg)
        except ProtocolError as exc:
            self._unverified(link, device_id, NackReason.BAD_SIGNATURE, str(exc))
            return
        try:
            rec = decode_record_payload(msg.payload)
        except ProtocolError as exc:
            self._reject(link, device_id, 0, NackReason.MALFORMED, str(exc))
            return
        await self._admit(link, entry, rec, body)

    def _meta(self, dev: Device, rec: RecordPayload) -> str | None:
        if rec.time_base != 1 or dev.boot != rec.boot or dev.boot_start is None:
            return None
        times = resolve_times(rec, dev.boot_start)
        return None if times is None else json.dumps({"resolved": [round(t, 3) for t in times]})

    def _facts(self, entry: Entry, seq: int, queued: bool | None, size: int) -> Facts:
        key = self._key(entry)
        stored = self.store.high(*key)
        return Facts(
            seq=seq,
            stored_high=stored,
            pending_high=self._pending_high.get(key, -1),
            in_pending=(*key, seq) in self._pending_keys,
            queued=queued,
            held=self.holds.held(entry.device_id, seq, time.monotonic()),
            room=self.store.room_for(self._pending_bytes + size),
            ceiling=admission.ceiling(int(time.time() * 1000), entry.floor, stored),
        )

    async def _admit(self, link: Link, entry: Entry, rec: RecordPayload, body: bytes) -> None:
        device_id, seq = entry.device_id, rec.seq
        facts = self._facts(entry, seq, None, len(body))
        verdict = admission.decide(facts)
        if verdict is Verdict.LOOKUP:
            queued = await self.store.contains(device_id, seq)
            facts = self._facts(entry, seq, queued, len(body))
            verdict = admission.decide(facts)
        await self._outcomes[verdict](self, link, entry, rec, body, facts)

    async def _too_big(self, link: Link, e: Entry, rec: RecordPayload, b: bytes, f: Facts) -> None:
        self._reject(link, e.device_id, rec.seq, NackReason.MALFORMED, "seq above 2**63-1")

    async def _ahead(self, link: Link, e: Entry, rec: RecordPayload, b: bytes, f: Facts) -> None:
        self._reject(
            link,
            e.device_id,
            rec.seq,
            NackReason.SEQ_AHEAD,
            f"seq {rec.seq} above the plausible ceiling {f.ceiling} (clock, enrollment floor"
            " and highest stored seq + 1 day): not stored; the node keeps it. A node whose"
            " seqs really are that high: citysense-gateway device show / reset-seq",
        )

    async def _dup(self, link: Link, e: Entry, rec: RecordPayload, b: bytes, f: Facts) -> None:
        self.metrics.duplicates += 1
        self.routes.seen(e.device_id, time.time())
        if f.stored_high >= rec.seq:
            link.send(encode_frame(FrameType.ACK, encode_ack(f.stored_high)))
        # else (dup-pending): the original is in the pending batch; its ACK follows the commit

    async def _replay(self, link: Link, e: Entry, rec: RecordPayload, b: bytes, f: Facts) -> None:
        """NACK replay, loudly: the node deletes the record on this answer, so unless the
        record is a forgery its readings are lost (see the replay rule above)."""
        self._count_reject(e.device_id, NackReason.REPLAY)
        self.rlog.warning(
            f"replay:{e.device_id}",
            "event=replay device=%s port=%s seq=%d highest_stored_seq=%d behind=%d detail=%s",
            e.device_id,
            link.name,
            rec.seq,
            f.high,
            f.high - rec.seq,
            "seq below this device's highest stored seq and not queued: NACKed replay, the"
            " node drops the record. A node replaced or reset without a seq floor? Re-enroll"
            " it with citysense-provision enroll",
        )
        link.send(encode_frame(FrameType.NACK, encode_nack(rec.seq, NackReason.REPLAY)))

    async def _held(self, link: Link, e: Entry, rec: RecordPayload, b: bytes, f: Facts) -> None:
        # keep the device's records in order: the NACKed one must come first
        self._reject(link, e.device_id, rec.seq, NackReason.BUSY, "a lower seq first")

    async def _full(self, link: Link, e: Entry, rec: RecordPayload, b: bytes, f: Facts) -> None:
        self._busy(link, e.device_id, rec.seq, "queue at max_bytes")

    async def _store(self, link: Link, e: Entry, rec: RecordPayload, body: bytes, f: Facts) -> None:
        dev = self.routes.prove(e.device_id, link, rec.boot, time.time(), time.monotonic())
        key = self._key(e)
        record = NewRecord(
            e.device_id, rec.seq, int(time.time() * 1000), body, self._meta(dev, rec), key[1]
        )
        self._pending.append(_Pending(record, link))
        self._pending_high[key] = rec.seq
        self._pending_keys.add((*key, rec.seq))
        self._pending_bytes += counted(body)
        dev.last_seq = rec.seq
        self._wake_committer()

    _outcomes: ClassVar[
        dict[
            Verdict,
            Callable[[Pipeline, Link, Entry, RecordPayload, bytes, Facts], Awaitable[None]],
        ]
    ] = {
        Verdict.TOO_BIG: _too_big,
        Verdict.AHEAD: _ahead,
        Verdict.DUP_STORED: _dup,
        Verdict.DUP_PENDING: _dup,
        Verdict.REPLAY: _replay,
        Verdict.HELD: _held,
        Verdict.FULL: _full,
        Verdict.STORE: _store,
    }

    def _busy(self, link: Link, device_id: str, seq: int, why: str) -> None:
        """NACK busy, and hold later seqs of this device until this one is stored."""
        self.holds.hold(device_id, seq, time.monotonic())
        self._reject(link, device_id, seq, NackReason.BUSY, why)

    async def _on_command_result(self, link: Link, body: bytes) -> None:
        try:
            kid = parse_sign1(body).kid.decode("utf-8", "replace")
            entry = self.registry.get(kid)
            if entry is None or not entry.active:
                raise ProtocolError(
                    f"unknown or revoked device {esc(kid)}", reason="unknown-device"
                )
            result = decode_command_result(entry.public_key, body)
        except ProtocolError as exc:
            self.metrics.commands[f"result-{exc.reason}"] += 1
            self._spend(link)
            self.rlog.warning(
                f"result:{link.name}",
                "event=command-result-rejected port=%s reason=%s detail=%s",
                link.name,
                exc.reason,
                esc(str(exc)),
            )
            return
        # a signed result proves the key but may be replayed: it moves no route
        self.routes.seen(kid, time.time())
        self.metrics.commands["result"] += 1
        self.rlog.log(
            logging.INFO,
            f"result:{kid}:{result.command_id}",
            "event=command-result device=%s command_id=%d ok=%s",
            kid,
            result.command_id,
            result.ok,
        )
        if self.publish_up is not None:
            self.publish_up(kid, body)

    _handlers: ClassVar[dict[FrameType, Callable[[Pipeline, Link, bytes], Awaitable[None]]]] = {
        FrameType.HELLO: _on_hello,
        FrameType.RECORD: _on_record,
        FrameType.COMMAND_RESULT: _on_command_result,
        FrameType.OTA_GET: _on_ota_get,
    }

    # -- group commit -----------------------------------------------------------
    def _wake_committer(self) -> None:
        self._wake.set()

    async def committer(self) -> None:
        """Collect records for max_delay (or max_batch), commit once, then send the ACKs.
        Raises StoreBrokenError when the store keeps failing (see gateway/store.py)."""
        while True:
            self.heartbeat = time.monotonic()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                continue
            if len(self._pending) < self.max_batch and self.max_delay > 0:
                await asyncio.sleep(self.max_delay)
            await self.commit_once()
            if self.store.broken:
                log.critical(
                    "event=queue-broken failures=%d error=%s action=%s",
                    self.store.failures,
                    esc(self.store.last_error),
                    "exiting so that systemd restarts the service (a corrupt queue file is"
                    " moved aside at start)",
                )
                raise StoreBrokenError(self.store.last_error or "queue failing")

    async def commit_once(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if self._pending:
            self._wake_committer()
        if not batch:
            return
        try:
            await self.store.store([p.record for p in batch])
        except QueueFullError as exc:
            self._fail(batch, str(exc))
            return
        except Exception as exc:  # the database failed: nothing of the batch is stored
            log.error(
                "event=queue-store-failed failures=%d error=%s",
                self.store.failures,
                esc(f"{type(exc).__name__}: {exc}"),
            )
            self._fail(batch, "queue store failed")
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
        if self.on_stored is not None:  # after the ACKs: the page can wait, the nodes not
            self.on_stored([p.record for p in batch])

    def _fail(self, batch: list[_Pending], why: str) -> None:
        """NACK busy a batch that was not stored, and with it every record of the same
        devices admitted while it was being written: those are above the batch's seqs,
        and an ACK of one of them, being cumulative, would cover the failed ones."""
        devices = {p.record.device_id for p in batch}
        later = [p for p in self._pending if p.record.device_id in devices]
        if later:
            self._pending = [p for p in self._pending if p.record.device_id not in devices]
        failed = batch + later
        self._drop_pending(failed)
        for p in failed:
            self._busy(p.link, p.record.device_id, p.record.seq, why)

    def _drop_pending(self, batch: list[_Pending]) -> None:
        self._pending_bytes -= sum(counted(p.record.data) for p in batch)
        for p in batch:
            self._pending_keys.discard((p.record.device_id, p.record.key_id, p.record.seq))
        left = {(p.record.device_id, p.record.key_id) for p in self._pending}
        for p in batch:
            key = (p.record.device_id, p.record.key_id)
            if key not in left:
                self._pending_high.pop(key, None)

    async def drain(self) -> None:
        while self._pending:
            await self.commit_once()
