"""The command tool's MQTT session: MQTT 5 over mTLS, QoS 1, PUBACK reason codes.

    with CommandLink(broker, results_topic) as link:   # connect + subscribe (or raise)
        link.publish(topic, body)                      # raise PublishRefusedError on >= 0x80
        body = link.next_result(deadline)              # bytes, or None at the deadline

paho runs its network loop in its own thread; the callbacks only put what arrived into
thread-safe queues and events, and every wait here is bounded. paho is imported when a
link is made: it comes with `citysense[cloud]`, and `citysense-cloud release build` runs
from a `citysense[provision]` install without it.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .config import BrokerConfig
from .errors import BrokerUnreachableError, ConfigError, PublishRefusedError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

CONNECT_TIMEOUT = 15.0
PUBACK_TIMEOUT = 30.0


def _code(rc: Any) -> int:
    """A paho ReasonCode (or a list of them, or an int) as its number."""
    if isinstance(rc, list):
        rc = rc[0] if rc else 0
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else 0x80


class CommandLink:
    def __init__(
        self, broker: BrokerConfig, results_topic: str | None, *, write_hint: str = ""
    ) -> None:
        """`results_topic` None: publish only (no subscription). `write_hint`: the
        topics the ACL must let this identity write, for the refusal message."""
        self.broker = broker
        self.results_topic = results_topic
        self.write_hint = write_hint or "citysense/v1/+/+/commands"
        self._connected = threading.Event()
        self._connect_rc: Any = None
        self._subscribed = threading.Event()
        self._suback_rc: Any = None
        self._pubacks: dict[int, Any] = {}
        self._puback = threading.Condition()
        self.results: queue.Queue[bytes] = queue.Queue(maxsize=1000)
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError:
            raise ConfigError(
                "talking to the broker needs paho-mqtt, which citysense[cloud] installs:"
                " pip install 'citysense[cloud]'"
            ) from None
        client_id = broker.client_id or f"citysense-cloud-command-{os.getpid()}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # -- paho callbacks (its thread) ---------------------------------------------------
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._connect_rc = rc
        self._connected.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self._suback_rc = rcs
        self._subscribed.set()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self._puback:
            self._pubacks[mid] = rc
            self._puback.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.results_topic:
            try:
                self.results.put_nowait(bytes(msg.payload))
            except queue.Full:
                pass  # a flood on our results topic: the one we wait for is looked for later

    # -- the session -------------------------------------------------------------------
    def __enter__(self) -> CommandLink:
        b = self.broker
        where = f"{b.url}"
        if b.tls:
            try:
                self.client.tls_set(
                    ca_certs=str(b.ca_file) if b.ca_file else None,
                    certfile=str(b.cert_file) if b.cert_file else None,
                    keyfile=str(b.key_file) if b.key_file else None,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BrokerUnreachableError(
                    f"cannot load the TLS files for {where} ({exc}): check [broker] ca_file,"
                    " cert_file, key_file"
                ) from exc
        try:
            self.client.connect(b.host, b.port, keepalive=30, clean_start=True)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerUnreachableError(
                f"broker {where} unreachable ({exc}): check [broker] url, the network and"
                " the broker's certificate"
            ) from exc
        self.client.loop_start()
        try:
            self._handshake(where)
        except BaseException:
            self.close()
            raise
        return self

    def _handshake(self, where: str) -> None:
        if not self._connected.wait(CONNECT_TIMEOUT):
            raise BrokerUnreachableError(
                f"broker {where} did not answer CONNECT in {CONNECT_TIMEOUT:.0f} s (TLS"
                " handshake refused? check the client certificate in [broker])"
            )
        if _code(self._connect_rc) >= 0x80:
            raise BrokerUnreachableError(
                f"broker {where} refused the connection ({self._connect_rc}): check the"
                " client certificate and the broker's allow list"
            )
        if self.results_topic is None:
            return
        self.client.subscribe(self.results_topic, qos=1)
        if not self._subscribed.wait(CONNECT_TIMEOUT) or _code(self._suback_rc) >= 0x80:
            raise PublishRefusedError(
                f"broker {where} refused the subscription to {self.results_topic}"
                f" ({self._suback_rc}): the broker ACL must let this identity read"
                " citysense/v1/+/+/command-results"
            )

    def publish(self, topic: str, body: bytes, *, retain: bool = False) -> None:
        """QoS 1; returns once the broker's PUBACK says it took it."""
        info = self.client.publish(topic, body, qos=1, retain=retain)
        deadline = time.monotonic() + PUBACK_TIMEOUT
        with self._puback:
            while info.mid not in self._pubacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerUnreachableError(
                        f"no PUBACK from {self.broker.url} for {topic} in"
                        f" {PUBACK_TIMEOUT:.0f} s: the broker is overloaded or went away"
                    )
                self._puback.wait(left)
            rc = self._pubacks.pop(info.mid)
        if _code(rc) >= 0x80:
            raise PublishRefusedError(
                f"broker refused the publish to {topic} (PUBACK {rc}, 0x{_code(rc):02x}):"
                " the broker ACL must let this identity (the operator's certificate)"
                f" write {self.write_hint}"
            )

    def next_result(self, deadline: float) -> bytes | None:
        """The next message on the results topic, or None once `deadline` (monotonic)
        has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return self.results.get(timeout=left)
        except queue.Empty:
            return None

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
