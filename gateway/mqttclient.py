"""The uplink's MQTT client: one asyncio connection, our own packets (gateway/mqttwire.py).

Why not aiomqtt and paho. Two things the gateway must have that they hide or make dear:
- The PUBACK's reason code. aiomqtt 2.x's `Client.publish()` completes when paho calls
  `on_publish` and ignores the reason code, so a PUBACK that *refuses* the message (MQTT 5
  reason >= 0x80; Mosquitto 2.0 answers a publish its ACL denies with 0x87 Not authorized)
  looked like success, and a gateway that deletes a record after `publish()` returns loses
  it (DESIGN.md's delivery contract: acknowledged means a PUBACK whose reason code is
  below 0x80). The first version wrapped paho's callback to get it.
- The CPU. With paho under aiomqtt a QoS 1 publish and its PUBACK cost 41-49 µs of CPU
  (an MQTTMessage, a lock, a socket write and a writer registration with the event loop
  per message, a ReasonCode and a Properties object per PUBACK), most of a record's
  Ed25519 verify; here 11-12 µs (bench/bench_mqtt_publish.py measures both in one run).
  Issue 17: the uplink's CPU per record and its drain rate.

What it does, and only that (OASIS MQTT 5.0 / 3.1.1): CONNECT with clean start, a will,
user name and password, over TCP or TLS (`ssl.SSLContext`, so mTLS); PUBLISH QoS 0/1
with a future per QoS 1 message that resolves to the PUBACK's reason code
(`publish_future`); SUBSCRIBE returning the SUBACK's codes; received PUBLISHes (QoS 0/1)
through `messages`, each QoS 1 one acknowledged when it is taken from there; keep alive.
Packets produced in one turn of the event loop go out in one socket write.

Bounds and failures:
- Every wait has a time limit; a dropped connection fails every waiting publish future
  with MqttError("disconnected before PUBACK"), ends `messages` with MqttError, and
  every later call raises MqttError at once.
- The broker's Receive Maximum (MQTT 5 CONNACK) is obeyed: QoS 1 publishes beyond it wait
  in order, inside the client, for a PUBACK to free a slot. Its Maximum Packet Size is
  obeyed: a larger publish is a ValueError (as is a topic no broker may take), so the
  caller can keep that record and go on, instead of the broker closing the connection.
- What the broker sends is decoded with a bound (max_packet): anything malformed, a QoS 2
  PUBLISH (we never subscribe at 2), a topic alias, more QoS 1 messages unacknowledged
  than our Receive Maximum, ends the connection with MqttError naming why. Received QoS 0
  messages not yet taken are held up to QOS0_HELD, the rest dropped and counted.
- Keep alive: a PINGREQ when nothing was sent for half the keep alive; the connection
  is dropped when the broker was silent for 1.5 times it (a stalled path).
Over MQTT 3.1.1 the PUBACK has no reason code and reads as success (0): a 3.1.1 broker
that denies a publish acknowledges it and drops it, which no client can detect.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, NamedTuple, cast

from . import mqttwire as wire

NO_SUBSCRIBERS: Final = 0x10  # a success code; a refusal only with require_subscriber
# MQTT 5 PUBACK reason codes (OASIS MQTT 5.0, 3.4.2.1) as metric/log labels
REFUSAL_REASONS: dict[int, str] = {
    NO_SUBSCRIBERS: "no-matching-subscribers",
    0x80: "unspecified-error",
    0x83: "implementation-specific-error",
    0x87: "not-authorized",
    0x90: "topic-name-invalid",
    0x91: "packet-identifier-in-use",
    0x97: "quota-exceeded",
    0x99: "payload-format-invalid",
}
CLIENT_REFUSED = "client-refused"
"""Label for a publish the client will not send (ValueError: e.g. a topic with a
wildcard, from a device id holding '+' or '#'; over the broker's maximum packet size)."""

# what an operator checks for a refusal, by label
REFUSAL_HINTS: dict[str, str] = {
    "not-authorized": (
        "check the broker ACL for this topic and that the gateway certificate CN "
        "(or username) matches gateway.id"
    ),
    "quota-exceeded": "the broker limits this client's rate or queue: check its limits",
    "topic-name-invalid": "the broker refuses this topic name: check the device id",
    "payload-format-invalid": "the broker refuses the payload: check its message checks",
    "no-matching-subscribers": (
        "no subscriber holds the records topic: check that citysense-cloud ingest runs "
        "and is subscribed (kept because [uplink] require_subscriber = true)"
    ),
    CLIENT_REFUSED: "the topic or payload is not valid MQTT: check the device id",
}
DEFAULT_HINT = "check the broker log for why it refused the message"
# CONNACK return codes (3.1.1) and reason codes (5) worth a word in a log line
CONNACK_REASONS: dict[int, str] = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x80: "unspecified error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x95: "packet too large",
    0x97: "quota exceeded",
}
MAX_PACKET: Final = 2 << 20
"""The largest packet we take from the broker (told to it in an MQTT 5 CONNECT): an OTA
bundle is at most 1 MiB + 8 KiB (gateway/protocol/ota.py)."""
RECEIVE_MAX: Final = 32
"""Unacknowledged QoS 1 messages the broker may send us at once (commands, bundles)."""
READ_LIMIT: Final = 1 << 22
"""Bytes received and not yet decoded at most (a bound on a half-sent huge packet)."""
V311_UNACKED_MAX: Final = 1000
"""The same bound under MQTT 3.1.1, which has no Receive Maximum to tell the broker."""
QOS0_HELD: Final = 256
"""Received QoS 0 messages waiting to be taken at most; more are dropped (counted in
`dropped`): QoS 0 has no flow control, and we subscribe at QoS 1 only."""


class MqttVersion(enum.IntEnum):
    """The MQTT protocol level; `.name` is what logs and `status` show."""

    V5 = wire.V5
    V311 = wire.V311


class MqttError(Exception):
    """The connection failed, was lost, or an operation on it timed out."""


class MqttConnectError(MqttError):
    """The broker answered CONNECT with a refusal; `rc` is its return / reason code."""

    def __init__(self, rc: int) -> None:
        name = CONNACK_REASONS.get(rc, "refused")
        super().__init__(f"Connection refused: code {rc} (0x{rc:02x}) {name}")
        self.rc = rc


class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int


def refusal_label(code: int) -> str:
    return REFUSAL_REASONS.get(code, f"0x{code:02x}")


def is_refused(code: int, *, require_subscriber: bool = False) -> bool:
    """A PUBACK that leaves the record queued: any code >= 0x80, and 0x10 (No matching
    subscribers) where a subscriber is required."""
    return code >= 0x80 or (require_subscriber and code == NO_SUBSCRIBERS)


class MqttClient(asyncio.Protocol):
    """`async with MqttClient(...) as client:` connects (CONNACK received) or raises
    MqttError; leaving sends DISCONNECT (so the will is not published) and closes."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        protocol: MqttVersion = MqttVersion.V5,
        username: str | None = None,
        password: str | None = None,
        will: wire.Will | None = None,
        tls_context: ssl.SSLContext | None = None,
        keepalive: int = 60,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.protocol = protocol
        self.username, self.password = username, password
        self.will = will
        self.tls_context = tls_context
        self.keepalive = keepalive
        self.timeout = timeout
        self.send_quota = 65535  # the broker's Receive Maximum
        self.max_packet = wire.MAX_REMAINING + 5  # the broker's Maximum Packet Size
        self._dec = wire.Decoder(int(protocol), MAX_PACKET)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[wire.Control] | None = None
        self._lost: MqttError | None = None
        self._closing = False
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._inflight: dict[int, asyncio.Future[int]] = {}  # QoS 1 mid -> its future
        self._held: deque[tuple[int, bytes]] = deque()  # over the broker's Receive Maximum
        self._next_mid = 0
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._inbox: asyncio.Queue[tuple[Message, int] | None] = asyncio.Queue()
        self._unacked_in = 0  # received QoS 1 messages not yet acknowledged
        self._qos0_held = 0
        self.dropped = 0  # QoS 0 messages over QOS0_HELD
        self._sent_at = self._heard_at = 0.0
        self._pinger: asyncio.Task[None] | None = None

    # -- connection ---------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        loop = self._loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(
                    lambda: self,
                    self.host,
                    self.port,
                    ssl=self.tls_context,
                    server_hostname=self.host if self.tls_context is not None else None,
                )
                self._write(
                    wire.encode_connect(
                        self.client_id,
                        self.keepalive,
                        0,
                        RECEIVE_MAX,
                        version=int(self.protocol),
                        clean_start=True,
                        will=self.will,
                        username=self.username,
                        password=self.password,
                        max_packet=MAX_PACKET,
                    )
                )
                connack = await self._connack
        except TimeoutError:
            self._drop("connection closed")
            raise MqttError("Operation timed out (no CONNACK)") from None
        except (OSError, ssl.SSLError) as exc:
            self._drop("connection closed")
            raise MqttError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            self._drop("connection closed")
            raise
        if connack.code != 0:
            self._drop("connection closed")
            raise MqttConnectError(connack.code)
        quota = connack.prop(0x21)
        if isinstance(quota, int) and quota > 0:
            self.send_quota = quota
        size = connack.prop(0x27)
        if isinstance(size, int) and size > 0:
            self.max_packet = size
        ka = connack.prop(wire.SERVER_KEEP_ALIVE)
        if isinstance(ka, int):
            self.keepalive = ka
        self._heard_at = time.monotonic()
        if self.keepalive > 0:
            self._pinger = loop.create_task(self._keep_alive(), name="mqtt-keepalive")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        transport = self._transport
        if transport is not None and self._lost is None:
            self._closing = True
            self._write(wire.encode_disconnect())
            self._flush()
            transport.close()
        self._gone(MqttError("disconnected by the client"))

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._lost is None

    def _check(self) -> None:
        if self._lost is not None:
            raise MqttError(str(self._lost))
        if self._transport is None:
            raise MqttError("not connected")

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not subclasses of asyncio.Transport)
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        self._heard_at = time.monotonic()
        self._dec.feed(data)
        try:
            packets = self._dec.packets()
        except wire.MqttProtocolError as exc:
            self._drop(f"the broker sent a malformed packet ({exc})")
            return
        if self._dec.buffered > READ_LIMIT:
            self._drop("the broker sent a packet over the read limit")
            return
        for p in packets:
            if isinstance(p, wire.Publish):
                self._incoming(p)
            elif p.kind == wire.PUBACK:
                self._puback(p.mid, p.code)
            elif p.kind == wire.CONNACK and self._connack is not None:
                if not self._connack.done():
                    self._connack.set_result(p)
            elif p.kind in (wire.SUBACK, wire.UNSUBACK):
                fut = self._subacks.pop(p.mid, None)
                if fut is not None and not fut.done():
                    fut.set_result(p.codes)
            elif p.kind == wire.DISCONNECT:
                self._drop(f"the broker disconnected: reason 0x{p.code:02x}")
                return
            # PINGRESP: _heard_at is all it is for
            if self._lost is not None:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closing:
            why = "disconnected by the client"
        elif exc is not None:
            why = f"connection lost: {exc}"
        else:
            why = "connection closed by the broker"
        self._gone(MqttError(why))

    def _drop(self, why: str) -> None:
        """End the connection for `why` (reported by everything still waiting)."""
        if self._transport is not None:
            self._transport.abort()
        self._gone(MqttError(why))

    def _gone(self, exc: MqttError) -> None:
        if self._lost is not None:
            return
        self._lost = exc
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(exc)
            self._connack.exception()  # retrieved: __aenter__ reports it or timed out
        waiting = list(self._inflight.values())
        self._inflight.clear()
        self._held.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(MqttError("disconnected before PUBACK"))
        for sub in self._subacks.values():
            if not sub.done():
                sub.set_exception(MqttError(f"disconnected before SUBACK ({exc})"))
        self._subacks.clear()
        self._inbox.put_nowait(None)

    # -- sending ------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        """Packets of one turn of the event loop go out in one write."""
        self._out.append(data)
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out = []
        if self._transport is not None and self._lost is None:
            self._transport.write(data)
            self._sent_at = time.monotonic()

    def _mid(self) -> int:
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._inflight and self._next_mid not in self._subacks:
                return self._next_mid
        raise MqttError("no free packet identifier")

    def publish_future(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: bytes | None = None,
    ) -> asyncio.Future[int]:
        """Send a PUBLISH now (or, over the broker's Receive Maximum, as soon as a slot
        is free); the future resolves to the PUBACK reason code (0 = success; >= 0x80 =
        refused; 0 at once for QoS 0) or fails with MqttError if the connection drops
        first. `properties`: the packed MQTT 5 property block (gateway/mqttprops.py),
        ignored under 3.1.1. Raises ValueError for a PUBLISH that cannot be sent (a topic
        with a wildcard, over the broker's maximum packet size) and MqttError when the
        connection is gone."""
        self._check()
        assert self._loop is not None
        if qos not in (0, 1):
            raise ValueError("QoS 0 or 1 only")
        name = wire.check_topic(topic)
        props: bytes | None = None
        if self.protocol == MqttVersion.V5:
            props = properties if properties is not None else b"\x00"
        mid = self._mid() if qos else 0
        packet = wire.encode_publish(name, payload, mid, qos=qos, retain=retain, props=props)
        if len(packet) > self.max_packet:
            raise ValueError(
                f"a PUBLISH of {len(packet)} bytes is over the broker's maximum packet "
                f"size ({self.max_packet})"
            )
        fut: asyncio.Future[int] = self._loop.create_future()
        if qos == 0:
            self._write(packet)
            fut.set_result(0)
            return fut
        self._inflight[mid] = fut
        if len(self._inflight) - len(self._held) > self.send_quota:
            self._held.append((mid, packet))
        else:
            self._write(packet)
        return fut

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: bytes | None = None,
        wait_s: float = 30.0,
    ) -> int:
        """`publish_future()` and wait for it; MqttError also after `wait_s`."""
        fut = self.publish_future(topic, payload, qos=qos, retain=retain, properties=properties)
        return await wait_ack(fut, wait_s)

    def _puback(self, mid: int, code: int) -> None:
        fut = self._inflight.pop(mid, None)
        if fut is None:
            return  # not ours (a broker bug): nothing waits for it
        if self._held:
            if any(m == mid for m, _ in self._held):  # acknowledged before we sent it
                self._drop(f"the broker acknowledged packet id {mid} before it was sent")
                return
            _, packet = self._held.popleft()
            self._write(packet)
        if not fut.done():
            fut.set_result(code)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> tuple[int, ...]:
        """SUBSCRIBE one filter; the SUBACK's codes (>= 0x80: refused)."""
        self._check()
        assert self._loop is not None
        mid = self._mid()
        fut: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self._subacks[mid] = fut
        self._write(wire.encode_subscribe(mid, topic_filter, qos, version=int(self.protocol)))
        try:
            async with asyncio.timeout(self.timeout):
                return await fut
        except TimeoutError:
            self._subacks.pop(mid, None)
            raise MqttError("Operation timed out (no SUBACK)") from None

    # -- receiving ----------------------------------------------------------------
    def _incoming(self, p: wire.Publish) -> None:
        if p.qos > 1:
            self._drop("the broker sent a QoS 2 PUBLISH (we subscribe at QoS 1)")
            return
        if p.topic is None:  # not UTF-8: no topic of ours; acknowledged, not handed on
            if p.qos:
                self._write(wire.encode_pubacks([p.mid]))
            return
        if p.qos:
            self._unacked_in += 1
            limit = RECEIVE_MAX if self.protocol == MqttVersion.V5 else V311_UNACKED_MAX
            if self._unacked_in > limit:  # MQTT 5: a protocol error (0x93, section 3.3.4)
                self._drop(f"the broker sent more than {limit} QoS 1 messages unacknowledged")
                return
        elif self._qos0_held >= QOS0_HELD:
            self.dropped += 1
            return
        else:
            self._qos0_held += 1
        self._inbox.put_nowait((Message(p.topic, p.payload, p.qos), p.mid))

    @property
    def messages(self) -> AsyncIterator[Message]:
        """Received PUBLISHes in order; a QoS 1 one is acknowledged as it is taken (the
        broker sends at most RECEIVE_MAX unacknowledged). Ends with MqttError when the
        connection is lost."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            item = await self._inbox.get()
            if item is None:
                self._inbox.put_nowait(None)  # for any other reader
                raise MqttError(str(self._lost or "connection closed"))
            message, mid = item
            if not message.qos:
                self._qos0_held -= 1
            elif self._lost is None:
                self._unacked_in -= 1
                self._write(wire.encode_pubacks([mid]))
            yield message

    # -- keep alive ---------------------------------------------------------------
    async def _keep_alive(self) -> None:
        step = max(0.05, min(1.0, self.keepalive / 4))
        while self._lost is None:
            await asyncio.sleep(step)
            now = time.monotonic()
            if now - self._heard_at > 1.5 * self.keepalive:
                self._drop(f"keep alive: the broker was silent for {now - self._heard_at:.1f} s")
                return
            if now - self._sent_at >= self.keepalive / 2:
                self._write(wire.PINGREQ_PACKET)


async def wait_ack(fut: asyncio.Future[int], wait_s: float) -> int:
    """Wait for a publish future without cancelling it (its done-callbacks still run).
    asyncio.timeout rather than wait_for: on 3.11 wait_for can lose a cancellation that
    arrives as the future completes, and a cancelled task would carry on."""
    try:
        async with asyncio.timeout(None if wait_s == math.inf else wait_s):
            return await asyncio.shield(fut)
    except TimeoutError:
        raise MqttError("Operation timed out (no PUBACK)") from None
