"""MQTT uplink: forward queued records (QoS 1, windowed), status, commands down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time

import aiomqtt
from paho.mqtt.properties import Properties

from .config import UplinkConfig
from .metrics import Metrics
from .mqttprops import RecordProperties
from .pipeline import Pipeline
from .protocol import FrameType, ProtocolError, decode_command, encode_frame
from .queue import QueuedRecord

log = logging.getLogger("citysense.uplink")

CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'
BACKOFF_MIN = 0.5
# Reconnect delay: 0.5 s doubling to 15 s, each drawn from [d/2, d] (jitter spreads a
# fleet's reconnects after a broker restart). The cap bounds how long a queue that
# built up during an outage waits after the broker is back: with 60 s, a 60 s outage
# cost 33 s more before the drain began (docs/benchmarks.md).
BACKOFF_MAX = 15.0
_V5_REFUSED = {1, 132}  # 3.1.1 "unacceptable protocol version"; v5 "Unsupported Protocol Version"


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
        self.queue = pipeline.queue
        self.metrics = metrics
        self.operator_key = operator_key
        self.state = "starting"
        self.protocol = aiomqtt.ProtocolVersion.V5
        self.heartbeat = time.monotonic()
        self.last_error: str | None = None
        self.results: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=1000)
        self._result: tuple[str, bytes] | None = None  # taken from results, not yet PUBACKed
        self._done: list[QueuedRecord] = []
        self.connected_since: float | None = None
        self._proven = False  # a connection has succeeded with self.protocol

    def publish_result(self, device: str, body: bytes) -> None:
        """COMMAND_RESULT bytes to send up: held in memory (up to 1000) while the broker is
        unreachable, published at least once when it is back; not kept across a
        gateway restart (results are best effort end to end: the node sends each once)."""
        try:
            self.results.put_nowait((device, body))
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

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            identifier=self.cfg.client_id,
            username=self.cfg.username,
            password=self.cfg.password,
            protocol=self.protocol,
            will=aiomqtt.Will(f"citysense/v1/{self.gw}/status", self._status(False), 1, True),
            tls_context=self._tls(),
            keepalive=self.cfg.keepalive,
            timeout=self.cfg.timeout,
            max_inflight_messages=self.cfg.window,
            clean_session=True if self.protocol != aiomqtt.ProtocolVersion.V5 else None,
        )
        # a full window of QoS 1 publishes is normal here, not worth a warning each
        client.pending_calls_threshold = self.cfg.window + 16
        return client

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            self.heartbeat = time.monotonic()
            try:
                self.state = "connecting"
                async with self._client() as client:
                    self.state = "connected"
                    self._proven = True
                    self.connected_since = time.time()
                    self.metrics.uplink_connected = 1
                    log.info(
                        "event=uplink-connected host=%s port=%d protocol=%s",
                        self.cfg.host,
                        self.cfg.port,
                        self.protocol.name,
                    )
                    backoff = BACKOFF_MIN
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                rc = getattr(exc, "rc", None)
                code = getattr(rc, "value", rc)
                if (
                    self.state == "connecting"
                    and not self._proven
                    and (
                        code in _V5_REFUSED
                        or self.protocol == aiomqtt.ProtocolVersion.V311
                        or code is None
                    )
                ):
                    # the broker answered TCP but not our CONNECT: try the other version
                    # (until one has worked once; then keep it)
                    self.protocol = (
                        aiomqtt.ProtocolVersion.V311
                        if self.protocol == aiomqtt.ProtocolVersion.V5
                        else aiomqtt.ProtocolVersion.V5
                    )
                    log.warning(
                        "event=uplink-protocol-fallback protocol=%s error=%s",
                        self.protocol.name,
                        exc,
                    )
                    if self.protocol == aiomqtt.ProtocolVersion.V311:
                        continue
                log.warning("event=uplink-lost error=%s retry_in=%.1fs", exc, backoff)
            except (OSError, ssl.SSLError) as exc:
                self.last_error = str(exc)
                log.warning("event=uplink-lost error=%s retry_in=%.1fs", exc, backoff)
            finally:
                self.metrics.uplink_connected = 0
                self.connected_since = None
                await self._flush_done()
            self.state = "disconnected"
            await self._sleep_beating(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _sleep_beating(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(min(left, 1.0))

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.publish(f"citysense/v1/{self.gw}/status", self._status(True), 1, True)
        if self.operator_key is not None:
            await client.subscribe(f"citysense/v1/{self.gw}/+/commands", qos=1)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publisher(client), name="uplink-publisher")
                tg.create_task(self._commands(client), name="uplink-commands")
                tg.create_task(self._results(client), name="uplink-results")
        except ExceptionGroup as eg:
            raise first_leaf(eg) from eg
        except asyncio.CancelledError:
            # a clean disconnect does not fire the last will: say offline ourselves
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.publish(f"citysense/v1/{self.gw}/status", self._status(False), 1, True),
                    2.0,
                )
            raise

    def _properties(self, rec: QueuedRecord) -> Properties | None:
        if self.protocol != aiomqtt.ProtocolVersion.V5:
            return None
        user = [("gw-received-ms", str(rec.received_ms))]
        if rec.meta:
            resolved = json.loads(rec.meta).get("resolved")
            if resolved:
                user.append(("resolved-time", ",".join(f"{t:.3f}" for t in resolved)))
        return RecordProperties(CONTENT_TYPE, user)

    async def _publisher(self, client: aiomqtt.Client) -> None:
        window = asyncio.Semaphore(self.cfg.window)
        cursor = 0
        async with asyncio.TaskGroup() as tg:
            while True:
                self.heartbeat = time.monotonic()
                rows = await self.pipeline.run_db(self.queue.peek, cursor, 4 * self.cfg.window)
                if not rows:
                    await self._flush_done()
                    self.pipeline.stored_event.clear()
                    try:
                        await asyncio.wait_for(self.pipeline.stored_event.wait(), 0.5)
                    except TimeoutError:
                        pass
                    continue
                for rec in rows:
                    while True:
                        try:
                            await asyncio.wait_for(window.acquire(), 1.0)
                            break
                        except TimeoutError:
                            self.heartbeat = time.monotonic()
                            await self._flush_done()
                    tg.create_task(self._publish_one(client, rec, window))
                    cursor = rec.id
                if len(self._done) >= 4 * self.cfg.window:
                    await self._flush_done()  # one delete transaction for many PUBACKs

    async def _publish_one(
        self, client: aiomqtt.Client, rec: QueuedRecord, window: asyncio.Semaphore
    ) -> None:
        try:
            await client.publish(
                topic_records(self.gw, rec.device_id),
                rec.data,
                qos=1,
                properties=self._properties(rec),
                timeout=30,
            )
        except aiomqtt.MqttError:
            self.metrics.publish_errors += 1
            raise
        finally:
            window.release()
        self.metrics.published += 1
        self.metrics.observe_publish(max(0.0, time.time() - rec.received_ms / 1000))
        self._done.append(rec)

    async def _flush_done(self) -> None:
        if not self._done:
            return
        done, self._done = self._done, []
        await self.pipeline.run_db(self.queue.delete, [r.id for r in done])

    async def _results(self, client: aiomqtt.Client) -> None:
        """Publish COMMAND_RESULTs; one whose publish did not complete (the connection
        dropped before the PUBACK) is kept and goes first on the next connection."""
        while True:
            if self._result is None:
                self._result = await self.results.get()
            device, body = self._result
            await client.publish(f"citysense/v1/{self.gw}/{device}/command-results", body, qos=1)
            self._result = None

    async def _commands(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            parts = str(message.topic).split("/")
            payload = message.payload
            if len(parts) != 5 or not isinstance(payload, bytes | bytearray):
                self.metrics.commands["malformed"] += 1
                continue
            self.deliver_command(parts[3], bytes(payload))

    def deliver_command(self, device: str, payload: bytes) -> str:
        """Check the operator signature and send the COMMAND to the node's current port."""
        outcome = _check_command(self.operator_key, payload)
        if outcome == "ok":
            dev = self.pipeline.devices.get(device)
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
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(level, "event=command device=%s outcome=%s", device, outcome)
        return outcome


def _check_command(operator_key: bytes | None, payload: bytes) -> str:
    if operator_key is None:
        return "no-operator-key"
    try:
        decode_command(operator_key, payload)
    except ProtocolError as exc:
        return exc.reason
    return "ok"


def first_leaf(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
