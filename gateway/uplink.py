"""MQTT uplink: forward queued records (QoS 1, windowed), status, commands down.

Delivery rule (DESIGN.md, delivery contract 5): a record leaves the queue only after a
PUBACK whose reason code is below 0x80. A refused one (the broker's ACL, a quota; or a
topic the client will not send) stays queued, is counted by reason, logged (rate-limited)
with what to check, and retried on its own backoff (gateway/backoff.py) while the rest of
the queue flows. The protocol version is only ever the configured one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backoff import Backoff, RetrySchedule
from .config import UplinkConfig
from .logsafe import esc
from .metrics import Metrics
from .mqttclient import (
    CLIENT_REFUSED,
    DEFAULT_HINT,
    REFUSAL_HINTS,
    MqttClient,
    MqttError,
    MqttVersion,
    is_refused,
    refusal_label,
    wait_ack,
)
from .mqttprops import record_properties
from .mqttwire import Will
from .pipeline import Pipeline
from .protocol import FrameType, ProtocolError, check_command, encode_frame, gateway_refusal
from .queue import QueuedRecord, QueueFullError
from .ratelog import RateLimitedLog
from .registry_sync import RegistrySync

log = logging.getLogger("citysense.uplink")

CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'
PROTOCOLS = {"5": MqttVersion.V5, "3.1.1": MqttVersion.V311}
_V5_REFUSED = {1, 132}  # 3.1.1 "unacceptable protocol version"; v5 "Unsupported Protocol Version"
DELETE_EVERY_S = 1.0
"""PUBACKed records are deleted in one transaction at most this often (or as soon as
4 x window of them wait): each delete is a commit with its own WAL pages and fsync, and
one per idle moment, i.e. one per record or two at 200 records/s, was as much as the
inserts. A kill -9 publishes the records PUBACKed in the last second again (consumers
dedupe by (device_id, seq); DESIGN.md, delivery contract 3)."""
PROBE_EVERY_S = 1.0
"""While the broker's port refuses connections (or does not answer), the uplink makes no
MQTT attempts and runs down no backoff: it opens a bare TCP connection this often and
connects as soon as one is taken. The backoff (gateway/backoff.py, cap 15 s) is for a
broker that takes the connection and then fails it (TLS, CONNACK, a drop)."""
PROBE_TIMEOUT_S = 2.0
"""A probe with no answer (SYNs dropped by a firewall) gives up after this; the next one
follows after the usual pause, so such a broker is found within about 3 s of being back."""
PUBACK_WAIT_S = 30.0
"""A record publish without a PUBACK for this long ends the session (reconnect)."""
RESULT_ATTEMPTS = 8
"""A COMMAND_RESULT the broker refuses this many times is dropped (and counted)."""
PROTOCOL_HINT = (
    "the broker did not accept an MQTT 5 CONNECT; if it speaks only MQTT 3.1.1 set [uplink] "
    'protocol = "3.1.1" (a publish its ACL denies is then acknowledged and lost: '
    "see docs/troubleshooting.md)"
)
PROTOCOL_311_COST = (
    "MQTT 3.1.1 has no PUBACK reason codes: a broker that denies a publish still "
    "acknowledges it and drops it, so a wrong ACL or certificate loses records silently; "
    'use protocol = "5" unless the broker cannot speak it'
)


class Receiver(Protocol):
    def handles(self, topic: str) -> bool: ...
    async def subscribe(self, client: Any) -> None: ...
    async def receive(self, client: Any, payload: object) -> object: ...


@dataclass
class _Flight:
    """One session's record publishes awaiting their PUBACK."""

    window: asyncio.Semaphore
    sent: dict[asyncio.Future[int], float] = field(default_factory=dict)  # -> sent at
    lost: MqttError | None = None  # a publish of this session failed

    def check(self, metrics: Metrics) -> None:
        """End the session (MqttError) if a publish failed or its PUBACK is overdue."""
        if self.lost is not None:
            raise self.lost
        oldest = next(iter(self.sent.values()), None)  # dicts keep insertion order
        if oldest is not None and time.monotonic() - oldest > PUBACK_WAIT_S:
            metrics.publish_errors += 1
            raise MqttError("Operation timed out (no PUBACK)")


def topic_records(gw: str, device: str) -> str:
    return f"citysense/v1/{gw}/{device}/records"


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        gateway_id: str,
        pipeline: Pipeline,
        metrics: Metrics,
        operator_key: bytes | None,
    ) -> None:
        self.cfg = cfg
        self.gw = gateway_id
        self.pipeline = pipeline
        self.store = pipeline.store
        self.metrics = metrics
        self.operator_key = operator_key
        self.state = "starting"
        self.protocol = PROTOCOLS[cfg.protocol]
        self.heartbeat = time.monotonic()
        self.last_error: str | None = None
        self.results: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(maxsize=1000)
        self._result: tuple[str, bytes, int] | None = None  # taken, not yet PUBACKed
        self._done: list[QueuedRecord] = []
        self._flushed_at = 0.0  # monotonic time of the last delete of PUBACKed records
        self.connected_since: float | None = None
        self.backoff = Backoff()
        self.retry: RetrySchedule[QueuedRecord] = RetrySchedule(limit=4 * cfg.window)
        self.refused = 0
        self.last_refusal: dict[str, object] | None = None
        self.rlog = RateLimitedLog(log, interval=10.0)
        self._results_backoff = Backoff(minimum=1.0, cap=60.0)  # consecutive refusals
        self._results_after = 0.0  # monotonic time before which no result is published
        state_dir = pipeline.store.queue.path.parent  # the queue lives in the state dir
        self.registry_sync = RegistrySync(
            gateway_id, pipeline.registry.directory, state_dir, metrics, operator_key
        )
        self.receivers: list[Receiver] = []
        """Other subscriptions (the OTA bundles): subscribed each session, handed their
        messages; added by the agent."""

    def publish_result(self, device: str, body: bytes) -> None:
        """COMMAND_RESULT bytes to send up: held in memory (up to 1000) while the broker is
        unreachable, published at least once when it is back; one the broker refuses is
        retried with backoff, up to RESULT_ATTEMPTS times; not kept across a gateway
        restart (results are best effort end to end: the node sends each once)."""
        try:
            self.results.put_nowait((device, body, 0))
        except asyncio.QueueFull:
            self.metrics.commands["result-dropped"] += 1

    def _tls(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        if self.cfg.cert_file and self.cfg.key_file:
            ctx.load_cert_chain(str(self.cfg.cert_file), str(self.cfg.key_file))
        return ctx

    def _status(self, online: bool) -> bytes:
        return json.dumps(
            {
                "state": "online" if online else "offline",
                "gateway": self.gw,
                "since": int(time.time()),
            },
            separators=(",", ":"),
        ).encode()

    def _client(self) -> MqttClient:
        return MqttClient(
            self.cfg.host,
            self.cfg.port,
            client_id=self.cfg.client_id,
            username=self.cfg.username,
            password=self.cfg.password,
            protocol=self.protocol,
            will=Will(f"citysense/v1/{self.gw}/status", self._status(False), 1, True),
            tls_context=self._tls(),
            keepalive=self.cfg.keepalive,
            timeout=self.cfg.timeout,
        )

    async def run(self) -> None:
        """Connect, run a session; after any connection failure wait `backoff` and retry,
        always with the configured protocol version (never a fallback)."""
        if self.protocol == MqttVersion.V311:
            log.warning("event=uplink-protocol-311 cost='%s'", PROTOCOL_311_COST)
        while True:
            self.heartbeat = time.monotonic()
            try:
                self.state = "connecting"
                async with self._client() as client:
                    self.state = "connected"
                    self.connected_since = time.time()
                    self.backoff.connected(time.monotonic())
                    self.metrics.uplink_connected = 1
                    log.info(
                        "event=uplink-connected host=%s port=%d protocol=%s",
                        self.cfg.host,
                        self.cfg.port,
                        self.protocol.name,
                    )
                    await self._session(client)
            except MqttError as exc:
                self._failed(exc, connecting=self.state == "connecting")
            except (OSError, ssl.SSLError) as exc:
                self._failed(exc, connecting=False)
            finally:
                self.backoff.lost(time.monotonic())
                self.metrics.uplink_connected = 0
                self.connected_since = None
                await self._flush_done()
            self.state = "disconnected"
            unreachable = await self._probe()
            if unreachable is None:
                delay = self.backoff.next_delay(time.monotonic())
                log.warning("event=uplink-lost error=%s retry_in=%.2fs", self.last_error, delay)
                await self._sleep_beating(delay)
            else:
                log.warning(
                    "event=uplink-lost error=%s broker=unreachable probe_error=%s "
                    "retry=when-reachable probe_every=%.1fs",
                    self.last_error,
                    unreachable,
                    PROBE_EVERY_S,
                )
                await self._wait_reachable()

    def _failed(self, exc: Exception, *, connecting: bool) -> None:
        self.last_error = str(exc)
        if not connecting or self.protocol != MqttVersion.V5:
            return
        rc = getattr(exc, "rc", None)
        code = getattr(rc, "value", rc)
        if code in _V5_REFUSED:
            self.last_error = f"{exc}: MQTT 5 refused, set [uplink] protocol explicitly"
            self.rlog.log(
                logging.ERROR,
                "protocol-refused",
                "event=uplink-protocol-refused protocol=5 error=%s action='%s'",
                exc,
                PROTOCOL_HINT,
            )
        elif code is None and "timed out" in str(exc):
            # no CONNACK in time: a slow broker, or one that ignores an MQTT 5 CONNECT
            self.last_error = (
                f"{exc}: no answer to MQTT 5 CONNECT, if the broker speaks only 3.1.1 "
                "set [uplink] protocol explicitly"
            )
            self.rlog.log(
                logging.WARNING,
                "connect-no-answer",
                "event=uplink-connect-no-answer protocol=5 error=%s action='%s'",
                exc,
                PROTOCOL_HINT,
            )

    async def _probe(self) -> str | None:
        """None if the broker's port takes a TCP connection now (closed again at once),
        else why not."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.cfg.host, self.cfg.port), PROBE_TIMEOUT_S
            )
        except TimeoutError:
            return f"no answer in {PROBE_TIMEOUT_S:.0f} s"
        except OSError as exc:  # asyncio words ECONNREFUSED as "Connect call failed"
            if exc.errno is not None and exc.errno > 0:  # a resolver's errors are < 0
                return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
            return str(exc)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    async def _wait_reachable(self) -> None:
        """Probe the broker's port every PROBE_EVERY_S (jittered from [1/2, 1] of it) until
        it takes a connection: the next attempt then comes within that of the broker being
        back, however long the outage (issue 17)."""
        started = time.monotonic()
        probes = 0
        while True:
            await self._sleep_beating(random.uniform(PROBE_EVERY_S / 2, PROBE_EVERY_S))
            probes += 1
            if await self._probe() is None:
                break
        log.info(
            "event=uplink-reachable waited=%.1fs probes=%d", time.monotonic() - started, probes
        )

    async def _sleep_beating(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(min(left, 1.0))

    async def _publish_status(self, client: MqttClient, online: bool) -> None:
        topic = f"citysense/v1/{self.gw}/status"
        code = await client.publish_acked(topic, self._status(online), retain=True, wait_s=10)
        if is_refused(code):
            self._log_refusal(refusal_label(code), topic, f"PUBACK 0x{code:02x}", "status")

    async def _session(self, client: MqttClient) -> None:
        await self._publish_status(client, True)
        if self.operator_key is not None:
            await client.subscribe(f"citysense/v1/{self.gw}/+/commands", qos=1)
            await self.registry_sync.subscribe(client)
        for receiver in self.receivers:
            await receiver.subscribe(client)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publisher(client), name="uplink-publisher")
                tg.create_task(self._commands(client), name="uplink-commands")
                tg.create_task(self._results(client), name="uplink-results")
        except ExceptionGroup as eg:
            raise first_leaf(eg) from eg
        except asyncio.CancelledError:
            # a clean disconnect does not fire the last will: say offline ourselves
            with contextlib.suppress(MqttError, TimeoutError):
                await asyncio.wait_for(self._publish_status(client, False), 2.0)
            raise

    def _properties(self, rec: QueuedRecord) -> bytes | None:
        if self.protocol != MqttVersion.V5:
            return None
        user = [("gw-received-ms", str(rec.received_ms))]
        if rec.meta:
            resolved = json.loads(rec.meta).get("resolved")
            if resolved:
                user.append(("resolved-time", ",".join(f"{t:.3f}" for t in resolved)))
        return record_properties(CONTENT_TYPE, user)

    async def _publisher(self, client: MqttClient) -> None:
        """Stream the queue from its head: refused records come back from `self.retry`
        when due; new rows are taken only while the retry schedule has room. No task per
        record: a publish is handed to paho and its PUBACK handled by a done-callback
        (`_sent`); the loop ends the session when one failed or waited PUBACK_WAIT_S."""
        flight = _Flight(asyncio.Semaphore(self.cfg.window))
        cursor = 0
        self.retry.release_all(time.monotonic())
        while True:
            # let the other session tasks go first: a free window slot is taken without
            # yielding, and a broker that closes the connection after a refused record
            # (Mosquitto 2.0.11) would otherwise cut off a command result every time
            await asyncio.sleep(0)
            self.heartbeat = time.monotonic()
            flight.check(self.metrics)
            for rec in self.retry.take_due(time.monotonic()):
                await self._acquire(flight.window)
                self._send(client, rec, flight)
            rows = []
            if not self.retry.full:
                rows = await self.store.peek(cursor, 4 * self.cfg.window)
            if not rows:
                await self._idle()
                continue
            for rec in rows:
                cursor = rec.id
                if rec.id in self.retry:
                    continue  # refused before: it goes when its backoff says
                await self._acquire(flight.window)
                self._send(client, rec, flight)
            if len(self._done) >= 4 * self.cfg.window:
                await self._flush_done()  # one delete transaction for many PUBACKs

    async def _acquire(self, window: asyncio.Semaphore) -> None:
        if not window.locked():  # a free slot: taken at once, without a timer per record
            await window.acquire()
            return
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # arrives as the semaphore is granted, and the publisher would then create a task
        # in a TaskGroup that is shutting down (RuntimeError)
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await window.acquire()
                return
            except TimeoutError:
                self.heartbeat = time.monotonic()
                await self._flush_done()

    async def _idle(self) -> None:
        """Nothing to send now: delete what was PUBACKed if DELETE_EVERY_S has passed,
        then wait for a new record, the next retry, the next delete, or 0.5 s, whichever
        comes first."""
        flush_at = self._flushed_at + DELETE_EVERY_S
        if self._done and time.monotonic() >= flush_at:
            await self._flush_done()
        wait = 0.5
        if self._done:
            wait = min(wait, flush_at - time.monotonic())
        due = self.retry.next_due()
        if due is not None:
            wait = min(wait, due - time.monotonic())
        wait = max(0.0, wait)
        self.store.stored_event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.store.stored_event.wait()

    def _send(self, client: MqttClient, rec: QueuedRecord, flight: _Flight) -> None:
        """Publish one record (a window slot is held); the outcome goes to `_sent`."""
        window = flight.window
        flight.check(self.metrics)  # the connection may have gone while we waited
        topic = topic_records(self.gw, rec.device_id)
        try:
            fut = client.publish_future(topic, rec.data, qos=1, properties=self._properties(rec))
        except ValueError as exc:  # paho would not build it: keep it, let the rest flow
            window.release()
            self._refused(rec, CLIENT_REFUSED, topic, str(exc))
            return
        except MqttError:
            window.release()
            self.metrics.publish_errors += 1
            self.retry.release(rec.id, time.monotonic())
            raise
        flight.sent[fut] = time.monotonic()
        # the outcome is handled when the PUBACK arrives, also after the session ended
        # (the broker may close the connection right after a refusing PUBACK)
        fut.add_done_callback(functools.partial(self._sent, rec, topic, flight))

    def _sent(
        self, rec: QueuedRecord, topic: str, flight: _Flight, fut: asyncio.Future[int]
    ) -> None:
        flight.sent.pop(fut, None)
        flight.window.release()
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, MqttError):
            self.metrics.publish_errors += 1
            if flight.lost is None:
                flight.lost = exc  # ends this session, never a later one
        self._record_outcome(rec, topic, fut)

    def _record_outcome(self, rec: QueuedRecord, topic: str, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.retry.release(rec.id, time.monotonic())  # not sent: due again at once
            return
        code = fut.result()
        if is_refused(code, require_subscriber=self.cfg.require_subscriber):
            self._refused(rec, refusal_label(code), topic, f"PUBACK 0x{code:02x}")
            return
        self.retry.done(rec.id)
        self.metrics.published += 1
        self.metrics.observe_publish(max(0.0, time.time() - rec.received_ms / 1000))
        self._done.append(rec)

    def _refused(self, rec: QueuedRecord, label: str, topic: str, detail: str) -> None:
        delay = self.retry.failed(rec.id, rec, time.monotonic())
        self._log_refusal(label, topic, detail, f"record seq={rec.seq} retry_in={delay:.1f}s")

    def _log_refusal(self, label: str, topic: str, detail: str, what: str) -> None:
        self.metrics.publish_refused[label] += 1
        self.refused += 1
        self.last_refusal = {"reason": label, "topic": esc(topic), "at": time.time()}
        hint = REFUSAL_HINTS.get(label, DEFAULT_HINT)
        if label == "not-authorized":
            hint += f" ({self.gw})"
        self.rlog.log(
            logging.ERROR,
            f"refused:{label}:{topic.rsplit('/', 1)[-1]}",  # per kind: records, status...
            "event=publish-refused reason=%s topic=%s detail=%s %s kept=yes action='%s'",
            label,
            esc(topic),
            esc(detail),
            what,
            hint,
        )

    async def _flush_done(self) -> None:
        """Delete PUBACKed records. A disk too full even for that (after the queue's
        reserve) keeps them listed for the next flush: they are not published again
        meanwhile in this session, and a restart republishes them (consumers dedupe)."""
        if not self._done:
            return
        self._flushed_at = time.monotonic()
        done, self._done = self._done, []
        try:
            await self.store.delete([r.id for r in done])
        except QueueFullError as exc:
            self._done = done + self._done
            self.rlog.log(
                logging.ERROR,
                "delete-full",
                "event=delete-failed pending=%d error=%s action='free disk space in the "
                "state directory'",
                len(self._done),
                exc,
            )

    async def _results(self, client: MqttClient) -> None:
        """Publish COMMAND_RESULTs. One whose publish did not complete (the connection
        dropped before the PUBACK) is kept and goes first on the next connection; one the
        broker refuses goes to the back of the queue, results pause for a jittered backoff
        (1 s doubling to 60 s, across reconnections), and it is dropped (counted, logged)
        after RESULT_ATTEMPTS refusals."""
        while True:
            wait = self._results_after - time.monotonic()
            if wait > 0:  # after a refusal: the broker may close the connection for each
                await self._sleep_beating(wait)
            if self._result is None:
                self._result = await self.results.get()
            item = self._result
            device, body = item[0], item[1]
            topic = f"citysense/v1/{self.gw}/{device}/command-results"
            try:
                fut = client.publish_future(topic, body, qos=1)
            except ValueError as exc:
                self._result_refused(item, topic, CLIENT_REFUSED, str(exc))
                continue
            fut.add_done_callback(functools.partial(self._result_outcome, item, topic))
            await wait_ack(fut, 30)

    def _result_outcome(
        self, item: tuple[str, bytes, int], topic: str, fut: asyncio.Future[int]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # stays self._result: first again on the next connection
        code = fut.result()
        if is_refused(code):
            self._result_refused(item, topic, refusal_label(code), f"PUBACK 0x{code:02x}")
        elif self._result is item:
            self._result = None
            self._results_backoff = Backoff(minimum=1.0, cap=60.0)

    def _result_refused(
        self, item: tuple[str, bytes, int], topic: str, label: str, detail: str
    ) -> None:
        device, body, attempts = item
        if self._result is item:
            self._result = None
        self._results_after = time.monotonic() + self._results_backoff.next_delay(0.0)
        self._log_refusal(label, topic, detail, f"command-result attempt={attempts + 1}")
        self._requeue_result(device, body, attempts + 1)

    def _requeue_result(self, device: str, body: bytes, attempts: int) -> None:
        if attempts < RESULT_ATTEMPTS:
            with contextlib.suppress(asyncio.QueueFull):
                self.results.put_nowait((device, body, attempts))
                return
        self.metrics.commands["result-dropped"] += 1
        log.error(
            "event=command-result-dropped device=%s attempts=%d action='%s'",
            esc(device),
            attempts,
            "the broker kept refusing it: check its ACL for command-results",
        )

    async def _commands(self, client: MqttClient) -> None:
        async for message in client.messages:
            if self.registry_sync.handles(str(message.topic)):
                await self.registry_sync.receive(message.payload)
                continue
            receiver = next((r for r in self.receivers if r.handles(str(message.topic))), None)
            if receiver is not None:
                await receiver.receive(client, message.payload)
                continue
            parts = str(message.topic).split("/")
            payload = message.payload
            if len(parts) != 5 or not isinstance(payload, bytes | bytearray):
                self.metrics.commands["malformed"] += 1
                continue
            self.deliver_command(parts[3], bytes(payload))

    def deliver_command(self, device: str, payload: bytes) -> str:
        """Check the operator signature and the binding (gateway/protocol/commands.py),
        send the COMMAND to the node's current port; refusals are published upwards."""
        dev = self.pipeline.devices.get(device)
        protocol = None if dev is None else dev.protocol
        outcome = check_command(self.operator_key, payload, device, self.gw, protocol)
        if outcome == "ok":
            if dev is None or dev.link is None:
                outcome = "no-route"
            else:
                try:
                    dev.link.send(encode_frame(FrameType.COMMAND, payload))
                except ProtocolError:
                    outcome = "oversize"
                else:
                    outcome = "delivered"
        self.metrics.commands[outcome] += 1
        if outcome != "delivered":  # the gateway has no device key: an unsigned refusal
            self.publish_result(device, gateway_refusal(payload, outcome, self.gw))
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(level, "event=command device=%s outcome=%s", esc(device), outcome)
        return outcome


def first_leaf(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
