"""The cloud-side consumer: counts every record that reaches the "cloud" Mosquitto.

    python consumer.py --port P --dir D --kind citysense|bridge|tb

A persistent session (clean_session false, QoS 1) on "#", so records published while it
reconnects are queued by the broker for it. Each record delivered is appended to
D/arrivals.log as `source seq monotonic_time dup` (dup = the MQTT DUP flag of the PUBLISH
that carried it: 1 means the broker re-sent it to this consumer, a redelivery on the
cloud->consumer leg, not something the system under test did). D/status.json holds totals.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def parse_citysense(topic: str, payload: bytes) -> list[tuple[int, int]]:
    if not topic.endswith("/records"):
        return []
    from gateway.protocol import decode_record_payload, parse_sign1

    msg = parse_sign1(payload)
    rec = decode_record_payload(msg.payload)
    return [(int(msg.kid.decode().rsplit("-", 1)[1]), rec.seq)]


def parse_bridge(topic: str, payload: bytes) -> list[tuple[int, int]]:
    if not topic.startswith("bench/"):
        return []
    d = json.loads(payload)
    return [(int(d["device"].rsplit("-", 1)[1]), int(d["seq"]))]


def parse_tb(topic: str, payload: bytes) -> list[tuple[int, int]]:
    """`v1/gateway/telemetry`: {"src-01": [{"ts": .., "values": {"seq": N, ...}}, ...]}."""
    if topic != "v1/gateway/telemetry":
        return []
    d = json.loads(payload)
    out = []
    for device, entries in d.items():
        src = int(device.rsplit("-", 1)[1])
        if isinstance(entries, dict):
            entries = [entries]
        for e in entries:
            values = e.get("values", e) if isinstance(e, dict) else {}
            if "seq" in values:
                out.append((src, int(values["seq"])))
    return out


TB_RPC_REQUEST = "v1/devices/me/rpc/request/"
# what a ThingsBoard server answers to the gateway's getSessionLimits RPC; without an
# answer the TB gateway never starts sending (see docs/benchmarks.md). No limits.
TB_SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}


def answer_session_limits(c: Any, topic: str, payload: bytes) -> None:
    try:
        method = json.loads(payload).get("method")
    except (ValueError, AttributeError):
        return
    if method == "getSessionLimits":
        rid = topic.rsplit("/", 1)[1]
        c.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(TB_SESSION_LIMITS), qos=1)


PARSERS = {"citysense": parse_citysense, "bridge": parse_bridge, "tb": parse_tb}


def main() -> int:
    import paho.mqtt.client as mqtt

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--kind", choices=sorted(PARSERS), required=True)
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    parse = PARSERS[args.kind]
    out = (d / "arrivals.log").open("a", buffering=1 << 16)
    lock = threading.Lock()
    seen: set[tuple[int, int]] = set()
    totals = {"messages": 0, "records": 0, "unique": 0, "bad": 0, "topics": {}}
    topics: dict[str, int] = totals["topics"]  # type: ignore[assignment]
    stop = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        c.subscribe("#", qos=1)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.monotonic()
        if args.kind == "tb" and msg.topic.startswith(TB_RPC_REQUEST):
            answer_session_limits(c, msg.topic, bytes(msg.payload))
            return
        top = msg.topic.split("/")[0] + "/" + msg.topic.rsplit("/", 1)[-1]
        with lock:
            topics[top] = topics.get(top, 0) + 1
            totals["messages"] += 1  # type: ignore[operator]
            try:
                recs = parse(msg.topic, bytes(msg.payload))
            except Exception:
                totals["bad"] += 1  # type: ignore[operator]
                return
            for src, seq in recs:
                out.write(f"{src} {seq} {now:.4f} {int(msg.dup)}\n")
                totals["records"] += 1  # type: ignore[operator]
                if (src, seq) not in seen:
                    seen.add((src, seq))
                    totals["unique"] += 1  # type: ignore[operator]

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-consumer-{args.kind}",
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    c.max_inflight_messages_set(100)
    c.reconnect_delay_set(0.1, 0.5)
    c.on_connect = on_connect
    c.on_message = on_message
    c.connect_async("127.0.0.1", args.port, keepalive=10)
    c.loop_start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        with lock:
            out.flush()
            data = json.dumps(dict(totals, t=time.monotonic(), connected=c.is_connected()))
        (d / ".status.tmp").write_text(data)
        (d / ".status.tmp").rename(d / "status.json")
    c.loop_stop()
    with lock:
        out.close()
        (d / "status.json").write_text(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
