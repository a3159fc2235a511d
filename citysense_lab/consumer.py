"""The cloud consumer: subscribes to every record, verifies it independently of the
gateway's code (cbor2 + cryptography only) and keeps a ledger by (device_id, seq)."""

from __future__ import annotations

import json
import ssl
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from .broker import BrokerTLS


def verify_cose_sign1(data: bytes, keys: dict[str, bytes]) -> tuple[str, dict[int, Any]]:
    """Independent check of a record: tag 18, EdDSA, known kid, Ed25519 signature."""
    item = cbor2.loads(data)
    if not isinstance(item, cbor2.CBORTag) or item.tag != 18:
        raise ValueError("not a COSE_Sign1")
    protected, unprotected, payload, signature = item.value
    if cbor2.loads(protected) != {1: -8}:
        raise ValueError("alg is not EdDSA")
    device = unprotected[4].decode()
    key = keys.get(device)
    if key is None:
        raise ValueError(f"unknown device {device}")
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, tbs)
    except InvalidSignature as exc:
        raise ValueError(f"bad signature from {device}") from exc
    return device, cbor2.loads(payload)


@dataclass
class Ledger:
    """What reached the cloud."""

    arrivals: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    raw: dict[tuple[str, int], bytes] = field(default_factory=dict)
    readings: dict[tuple[str, int], int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    results: list[tuple[str, bytes]] = field(default_factory=list)
    statuses: list[tuple[str, bytes]] = field(default_factory=list)

    def unique(self, device: str) -> set[int]:
        return set(self.arrivals.get(device, []))

    def duplicates(self, device: str) -> int:
        seqs = self.arrivals.get(device, [])
        return len(seqs) - len(set(seqs))

    def order_violations(self, device: str) -> int:
        """First deliveries that arrive after a higher seq of the same device."""
        seen: set[int] = set()
        highest = -1
        bad = 0
        for seq in self.arrivals.get(device, []):
            if seq in seen:
                continue
            seen.add(seq)
            if seq < highest:
                bad += 1
            highest = max(highest, seq)
        return bad


class Consumer:
    def __init__(
        self,
        port: int,
        keys: dict[str, bytes],
        tls: BrokerTLS | None,
        client_id: str = "consumer",
        topic: str = "citysense/v1/#",
        mqtt5: bool = True,
    ) -> None:
        self.keys = keys
        self.ledger = Ledger()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        # A persistent session: what is published while the consumer reconnects after a
        # broker restart is queued for it (Mosquitto keeps sessions with persistence on).
        self.mqtt5 = mqtt5
        if mqtt5:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
        if tls is not None:
            self.client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file),
                keyfile=str(tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 2)
        self.topic = topic
        self.port = port

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, *_: Any) -> None:
        if getattr(reason, "is_failure", False):
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        self._connected.set()  # subscribed: from here on nothing published is missed

    def _on_disconnect(self, *_: Any) -> None:
        self._connected.clear()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once (re)connected and subscribed, within `timeout` seconds."""
        return self._connected.wait(timeout)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        with self._lock:
            if parts[-1] == "status":
                self.ledger.statuses.append((msg.topic, bytes(msg.payload)))
                return
            if parts[-1] == "command-results":
                self.ledger.results.append((parts[-2], bytes(msg.payload)))
                return
            if parts[-1] != "records":
                return
            try:
                device, payload = verify_cose_sign1(bytes(msg.payload), self.keys)
            except Exception as exc:  # count every kind of bad record
                self.ledger.bad.append(f"{msg.topic}: {exc}")
                return
            if device != parts[-2]:
                self.ledger.bad.append(f"{msg.topic}: kid {device} on another device's topic")
                return
            seq = int(payload[1])
            self.ledger.arrivals[device].append(seq)
            self.ledger.raw.setdefault((device, seq), bytes(msg.payload))
            self.ledger.readings[(device, seq)] = len(payload[3])

    def start(self, timeout: float = 15.0) -> None:
        if self.mqtt5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect_async(
                "127.0.0.1", self.port, keepalive=10, clean_start=False, properties=props
            )
        else:
            self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.wait_subscribed(timeout):
            raise AssertionError("consumer could not connect to the broker")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def snapshot(self) -> dict[str, set[int]]:
        with self._lock:
            return {d: set(s) for d, s in self.ledger.arrivals.items()}

    def dump(self, path: Path) -> None:
        with self._lock:
            data = {d: s for d, s in self.ledger.arrivals.items()}
        path.write_text(json.dumps({"arrivals": data, "bad": self.ledger.bad}))
