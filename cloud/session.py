"""The ingest's MQTT 5 session: one socket, driven by the ingest's own thread.

gateway/mqttwire.py says why this is not paho. The session connects with client id
`citysense-ingest-<instance>`, clean start off and a session expiry, so a broker keeps
what it handed an instance that died until that instance comes back under its name
(Mosquitto does not give a dead shared subscriber's in-flight messages to the others).
Receive Maximum bounds how many unacknowledged messages the broker sends us at once.

Rules:
- On every CONNACK it subscribes again, whatever session_present says: Mosquitto 2.0.11
  restores a persistent session after its restart without the session's shared
  subscription (docs/cloud.md, Sessions). Re-subscribing an existing subscription is
  harmless (the broker replaces it; its queued messages stay).
- Reconnects come quickly: within 0.05-0.1 s for the first 20 s after losing a
  connection that was up 10 s or more (a broker restart), else 0.25 s doubling to 5 s,
  jittered (gateway.backoff). The gateways' first retry after a restart comes within
  0.5-1 s, so the ingest is usually subscribed again before they publish; but that is a
  race, not a guarantee: what a gateway publishes between the broker's start and our
  SUBSCRIBE matches no subscription and Mosquitto drops it (docs/cloud.md, Sessions).
- `shared=False` (`[ingest] subscription = "plain"`): the plain filter instead, for a
  deployment of one instance. Mosquitto 2.0.11 restores a plain subscription of a
  persistent session across its restart, so then nothing published while the broker
  was restarting, or before we are back, is dropped. Each connect also unsubscribes the
  other form, so switching leaves no second subscription delivering everything twice.
- A PUBACK belongs to one connection: the packet id of a message received before a
  reconnect may name another message after it. Every message carries the connection
  generation it came on, and one from an older generation is not acknowledged: the broker
  sends it again and the store counts it as a duplicate.
- Nothing is acknowledged here on its own: `ack(batch)` is called after the commit and
  writes the batch's PUBACKs, in the order received, in one send.
- Keep alive: a PINGREQ when nothing was sent for half the keep alive; the connection is
  dropped when the broker was silent for 1.5 times it.

Single-threaded: `take()` and `service()` do the socket I/O in the caller's thread (the
ingest's only thread), so there is no lock and no per-message hand-over between threads.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass

from gateway import mqttwire as mqtt5
from gateway.backoff import Backoff

from .config import BrokerConfig
from .errors import ConfigError
from .records import Delivery

log = logging.getLogger("citysense.cloud.ingest")

RECORDS_FILTER = "citysense/v1/+/+/records"
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0
RECV_BYTES = 1 << 18
POLL_MAX_S = 0.2  # longest a single socket wait lasts (a stop request is seen this fast)
_SUB_MID, _UNSUB_MID, _UNSUB_OTHER_MID = 1, 2, 3


@dataclass(frozen=True, slots=True)
class Incoming:
    gen: int
    mid: int
    qos: int
    delivery: Delivery


def client_id(instance: str) -> str:
    return f"citysense-ingest-{instance}"


def delivery(p: mqtt5.Publish, now: float) -> Delivery:
    """The broker's PUBLISH as the records module takes it; the gateway's user properties
    `gw-received-ms` (digits only) and `resolved-time` (checked by cloud.records)."""
    gw_ms: int | None = None
    resolved: str | None = None
    for key, value in p.user:
        if key == "gw-received-ms" and value.isdigit() and len(value) < 19:
            gw_ms = int(value)
        elif key == "resolved-time":
            resolved = value
    topic = "(not UTF-8)" if p.topic is None else p.topic  # refused as bad-topic
    return Delivery(topic, p.payload, now, gw_ms, resolved)


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    if not broker.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(broker.ca_file) if broker.ca_file else None)
        if broker.cert_file:
            ctx.load_cert_chain(
                str(broker.cert_file), str(broker.key_file) if broker.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"broker TLS files: {exc}; check [broker] ca_file, cert_file, key_file"
        ) from exc
    return ctx


class Session:
    """Connect, subscribe, receive into a queue, acknowledge; see the module docstring."""

    def __init__(
        self,
        broker: BrokerConfig,
        instance: str,
        group: str,
        expiry: int,
        receive_max: int,
        shared: bool = True,
        keepalive: int = KEEPALIVE_S,
    ) -> None:
        self.broker = broker
        shared_filter = f"$share/{group}/{RECORDS_FILTER}"
        # the configured form, and the other one (unsubscribed: a switch leaves no double)
        self.topic, self._other = (
            (shared_filter, RECORDS_FILTER) if shared else (RECORDS_FILTER, shared_filter)
        )
        self.client_id = client_id(instance)
        self.retire = False  # unsubscribe instead, and end the session when drained
        self.subscribed = False
        self.unsubscribed = False
        self.gen = 0
        self._expiry = expiry
        self._receive_max = receive_max
        self._tls = _tls_context(broker)
        self._sock: socket.socket | None = None
        self._connacked = False
        self._dec = mqtt5.Decoder()
        self._pending: deque[Incoming] = deque()
        self._backoff = Backoff(minimum=0.25, cap=5.0, first=0.1)
        self._next_attempt = 0.0
        self._opened = self._last_sent = self._last_heard = 0.0
        self._asked_keepalive = keepalive
        self._keepalive = keepalive

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._connacked

    # -- the caller's API --------------------------------------------------------------
    def take(self, limit: int, wait: float, linger: float) -> list[Incoming]:
        """Up to `limit` messages: waits up to `wait` for the first, then up to `linger`
        for more (a batch fills in one read when the broker has a backlog)."""
        now = time.monotonic()
        deadline = now + wait
        while not self._pending and now < deadline:
            self._poll(deadline - now)
            now = time.monotonic()
        if not self._pending:
            return []
        end = now + linger
        while len(self._pending) < limit and now < end:
            self._poll(end - now)
            now = time.monotonic()
        n = min(limit, len(self._pending))
        return [self._pending.popleft() for _ in range(n)]

    def service(self, seconds: float) -> None:
        """Keep the connection (reconnect, keep alive) for `seconds` without handing out
        messages: while the database is away. What arrives waits in the queue."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._poll(left)

    def ack(self, batch: list[Incoming]) -> int:
        """PUBACK each QoS 1 message of `batch` received on the current connection, in
        order, in one send; returns how many were not acknowledged (older connection:
        the broker sends those again)."""
        wanted = [m for m in batch if m.qos]
        mids = [m.mid for m in wanted if m.gen == self.gen] if self.connected else []
        if mids:
            try:
                self._send(mqtt5.encode_pubacks(mids))
            except OSError as exc:
                self._lost(f"PUBACK not sent: {exc}")
                return len(wanted)
        return len(wanted) - len(mids)

    def stop(self) -> None:
        """DISCONNECT; with --retire once unsubscribed, with session expiry 0 (the broker
        discards the drained session); otherwise the session stays for its expiry."""
        if self._sock is None:
            return
        if self._connacked:
            end = 0 if self.retire and self.unsubscribed else None
            try:
                self._send(mqtt5.encode_disconnect(end))
            except OSError as exc:
                log.warning("event=disconnect-not-sent error=%r", str(exc))
        self._close()

    # -- the socket ---------------------------------------------------------------------
    def _poll(self, timeout: float) -> None:
        timeout = max(0.001, min(timeout, POLL_MAX_S))
        now = time.monotonic()
        if self._sock is None:
            if now < self._next_attempt:
                time.sleep(min(timeout, self._next_attempt - now))
            else:
                self._connect(now)
            return
        if not self._keepalive_ok(now):
            return
        try:
            self._sock.settimeout(timeout)
            data = self._sock.recv(RECV_BYTES)
        except (TimeoutError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            self._lost(str(exc))
            return
        if not data:
            self._lost("connection closed by the broker")
            return
        self._last_heard = now
        self._dec.feed(data)
        try:
            packets = self._dec.packets()
        except mqtt5.MqttProtocolError as exc:
            log.error("event=broker-protocol-error reason=%s detail=%r", exc.reason, str(exc))
            self._lost(f"protocol error {exc.reason}")
            return
        self._dispatch(packets)

    def _dispatch(self, packets: list[mqtt5.Publish | mqtt5.Control]) -> None:
        gen, at, pending = self.gen, time.time(), self._pending
        for p in packets:
            if type(p) is mqtt5.Publish:
                pending.append(Incoming(gen, p.mid, p.qos, delivery(p, at)))
            elif isinstance(p, mqtt5.Control):
                self._control(p)
            if self._sock is None:
                return  # a refusal or DISCONNECT in this read: the rest is void

    def _connect(self, now: float) -> None:
        b = self.broker
        try:
            sock = socket.create_connection((b.host, b.port), timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=b.host)
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendall(
                mqtt5.encode_connect(
                    self.client_id, self._asked_keepalive, self._expiry, self._receive_max
                )
            )
        except OSError as exc:  # ssl.SSLError is an OSError
            self._retry_later(now, f"cannot connect: {exc}")
            return
        self._sock, self._connacked, self._dec = sock, False, mqtt5.Decoder()
        self.gen += 1
        self._opened = self._last_sent = self._last_heard = now

    def _control(self, p: mqtt5.Control) -> None:
        if p.kind == mqtt5.CONNACK:
            self._on_connack(p)
        elif p.kind == mqtt5.SUBACK and p.mid == _SUB_MID:
            if not p.codes or any(code >= 0x80 for code in p.codes):
                log.error("event=subscribe-refused topic=%s reason=%s", self.topic, p.codes)
                return
            self.subscribed = True
            log.info("event=ingest-subscribed topic=%s", self.topic)
        elif p.kind == mqtt5.UNSUBACK and p.mid == _UNSUB_MID:
            log.info("event=ingest-unsubscribed topic=%s (retiring)", self.topic)
            self.unsubscribed = True
        elif p.kind == mqtt5.DISCONNECT:
            why = p.prop(mqtt5.REASON_STRING) or ""
            self._lost(f"broker sent DISCONNECT 0x{p.code:02x} {str(why)[:200]!r}")

    def _on_connack(self, p: mqtt5.Control) -> None:
        now = time.monotonic()
        if p.code >= 0x80:
            log.error("event=broker-refused host=%s reason=0x%02x", self.broker.host, p.code)
            self._close()
            self._retry_later(now, f"CONNACK 0x{p.code:02x}")
            return
        self._connacked = True
        self._backoff.connected(now)
        server_keepalive = p.prop(mqtt5.SERVER_KEEP_ALIVE)
        self._keepalive = (
            server_keepalive if isinstance(server_keepalive, int) else self._asked_keepalive
        )
        log.info(
            "event=broker-connected host=%s port=%d session_present=%s",
            self.broker.host,
            self.broker.port,
            bool(p.flags),
        )
        try:  # whatever session_present says: see the module docstring
            if self.retire:
                self._send(mqtt5.encode_unsubscribe(_UNSUB_MID, self.topic))
            else:
                self._send(mqtt5.encode_subscribe(_SUB_MID, self.topic, 1))
            self._send(mqtt5.encode_unsubscribe(_UNSUB_OTHER_MID, self._other))
        except OSError as exc:
            self._lost(f"SUBSCRIBE not sent: {exc}")

    def _keepalive_ok(self, now: float) -> bool:
        if not self._connacked:
            if now - self._opened > CONNECT_TIMEOUT_S:
                self._lost("no CONNACK")
                return False
            return True
        ka = self._keepalive
        if ka and now - self._last_heard > 1.5 * ka:
            self._lost(f"broker silent for {now - self._last_heard:.0f} s")
            return False
        if ka and now - self._last_sent >= ka / 2:
            try:
                self._send(mqtt5.PINGREQ_PACKET)
            except OSError as exc:
                self._lost(f"PINGREQ not sent: {exc}")
                return False
        return True

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise ConnectionError("not connected")
        self._sock.settimeout(SEND_TIMEOUT_S)
        self._sock.sendall(data)
        self._last_sent = time.monotonic()

    def _lost(self, why: str) -> None:
        was_up = self._connacked
        self._close()
        self.gen += 1
        self.subscribed = False
        now = time.monotonic()
        self._backoff.lost(now)
        if was_up:
            log.warning("event=broker-lost reason=%r", why)
        else:
            log.warning("event=broker-unreachable reason=%r", why)
        self._next_attempt = now + self._backoff.next_delay(now)

    def _retry_later(self, now: float, why: str) -> None:
        self._backoff.lost(now)
        delay = self._backoff.next_delay(now)
        self._next_attempt = now + delay
        log.warning(
            "event=broker-unreachable host=%s port=%d error=%r retry_in=%.1fs",
            self.broker.host,
            self.broker.port,
            why,
            delay,
        )

    def _close(self) -> None:
        sock, self._sock, self._connacked = self._sock, None, False
        if sock is not None:
            try:
                sock.close()
            except OSError:
                return
