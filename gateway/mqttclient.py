"""An aiomqtt client whose publish says what the broker answered.

Why this exists: aiomqtt 2.x's `Client.publish()` completes when paho calls `on_publish`,
and its handler ignores the `reason_code` paho passes (paho-mqtt 2, callback API
VERSION2). So a PUBACK that *refuses* the message (MQTT 5 reason >= 0x80; Mosquitto 2.0
answers a publish its ACL denies with 0x87 Not authorized) looks exactly like success, and
a gateway that deletes a record after `publish()` returns loses it. DESIGN.md's delivery
contract: acknowledged means a PUBACK whose reason code is below 0x80.

`AckedClient.publish_acked()` replaces that one piece: it hands the PUBLISH to paho as
aiomqtt does, then waits for the PUBACK of that message id and returns its reason code.
Everything else (connect, TLS, the socket loop, subscriptions, messages) stays aiomqtt's;
the paho `on_publish` callback is wrapped, so aiomqtt's own `publish()` still works.
Over MQTT 3.1.1 the PUBACK has no reason code and paho reports success (0): a 3.1.1
broker that denies a publish acknowledges it and drops it, which no client can detect.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Final, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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
"""Label for a publish the MQTT client library would not send (paho raised ValueError:
e.g. a topic with a wildcard, from a device id holding '+' or '#')."""

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
_EARLY_MAX = 64
DEFAULT_HINT = "check the broker log for why it refused the message"


def refusal_label(code: int) -> str:
    return REFUSAL_REASONS.get(code, f"0x{code:02x}")


def is_refused(code: int, *, require_subscriber: bool = False) -> bool:
    """A PUBACK that leaves the record queued: any code >= 0x80, and 0x10 (No matching
    subscribers) where a subscriber is required."""
    return code >= 0x80 or (require_subscriber and code == NO_SUBSCRIBERS)


class AckedClient(aiomqtt.Client):
    """aiomqtt.Client plus `publish_future()` / `publish_acked()`; see the module
    docstring for why.

    The outcome of a publish is a future resolved from paho's callback, so a caller can
    act on a PUBACK with a done-callback even when its own task is being cancelled (a
    Mosquitto 2.0.11 broker closes the connection right after a refusing PUBACK: the
    refusal must still be counted). When the connection drops, every publish still
    waiting fails with MqttError("disconnected before PUBACK")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}  # PUBACKs seen before their waiter registered
        self._aiomqtt_on_publish = cast("Callable[..., None] | None", self._client.on_publish)
        self._aiomqtt_on_disconnect = cast("Callable[..., None] | None", self._client.on_disconnect)
        self._client.on_publish = self._on_puback
        self._client.on_disconnect = self._on_gone

    def _on_puback(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(int(reason_code.value))
        elif fut is None:
            if len(self._early) >= _EARLY_MAX:
                self._early.clear()  # e.g. mids of aiomqtt's own publish(): nobody asks
            self._early[mid] = int(reason_code.value)
        if self._aiomqtt_on_publish is not None:
            self._aiomqtt_on_publish(client, userdata, mid, reason_code, properties)

    def _on_gone(self, *args: Any) -> None:
        waiting, self._acks = self._acks, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(aiomqtt.MqttError("disconnected before PUBACK"))
        if self._aiomqtt_on_disconnect is not None:
            self._aiomqtt_on_disconnect(*args)

    def publish_future(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[int]:
        """Hand the PUBLISH to paho now; the future resolves to the PUBACK reason code
        (0 = success; >= 0x80 = refused) or fails with MqttError if the connection drops
        first. Raises ValueError when paho refuses to build the PUBLISH (a topic with a
        wildcard, an oversized payload) and MqttCodeError when it cannot be sent."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0:
            fut.set_result(0)
        elif info.is_published():
            # acknowledged before we could register (not seen with paho 2.2, whose PUBACK
            # handling runs from the loop's reader callback, but paho allows it)
            fut.set_result(self._early.pop(info.mid, 0))
        else:
            self._acks[info.mid] = fut
        return fut

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        wait_s: float = 30.0,
    ) -> int:
        """`publish_future()` and wait for it; MqttError also after `wait_s`."""
        fut = self.publish_future(topic, payload, qos=qos, retain=retain, properties=properties)
        return await wait_ack(fut, wait_s)


async def wait_ack(fut: asyncio.Future[int], wait_s: float) -> int:
    """Wait for a publish future without cancelling it (its done-callbacks still run).
    asyncio.timeout rather than wait_for: on 3.11 wait_for can lose a cancellation that
    arrives as the future completes, and a cancelled task would carry on."""
    try:
        async with asyncio.timeout(None if wait_s == math.inf else wait_s):
            return await asyncio.shield(fut)
    except TimeoutError:
        raise aiomqtt.MqttError("Operation timed out (no PUBACK)") from None


def _retrieve(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()  # marks it retrieved: a dropped connection is reported elsewhere
