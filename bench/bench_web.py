"""What the status page costs the gateway, against the per-record work it cannot avoid.

    python bench/bench_web.py [--nodes 100] [--seconds 1.0]

Prints, all measured in this run on this machine:
- baseline: verifying one record's Ed25519 signature (COSE_Sign1, a node's typical pack:
  three sensor readings and the five sys/ readings), which the gateway does for every
  record anyway;
- the history hook per record (`NodeHistory.stored`, run after each commit's ACKs): with
  one record per commit (worst case: every record's pack decoded) and with 256-record
  commits from 8 devices (only each device's newest record decoded);
- one /api/status body (view + JSON) for --nodes nodes, as is and with every node's
  newest pack to decode (the worst case: each node sent a record since the last one);
- one /metrics body;
- /api/status requests per second over real HTTP (the agent's own server, one client, keep-alive).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402
from support import free_port  # noqa: E402

from gateway.metrics import Metrics  # noqa: E402
from gateway.protocol import (  # noqa: E402
    RecordPayload,
    encode_record_payload,
    parse_sign1,
    sign1,
    verify_parsed,
)
from gateway.queue import NewRecord  # noqa: E402
from gateway.web import NodeHistory, WebServer, view  # noqa: E402

PACK = [
    {-2: "node-1/", -3: 1_800_000_000, 0: "temperature", 1: "Cel", 2: 21.4},
    {0: "humidity", 1: "%RH", 2: 48.2},
    {0: "battery", 1: "V", 2: 3.82},
    {0: "sys/heap", 1: "B", 2: 14112},
    {0: "sys/uptime", 1: "s", 2: 86400},
    {0: "sys/reset", 3: "power-on"},
    {0: "sys/linkerr", 2: 0},
    {0: "sys/dropped", 2: 0},
]


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Mean seconds per call of fn, run for about `seconds`."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            fn()
        n += 20
    return (time.perf_counter() - t0) / n


def snapshot(nodes: int, history: NodeHistory) -> dict[str, Any]:
    now = time.time()
    devices = {
        f"node-{i}": {
            "port": f"/dev/serial/by-id/usb-node-{i}",
            "last_seen": now - 1,
            "seq": 1_800_000_000_000 + i,
            "boot": 3,
            "firmware": "0.1.0",
            "rejects": {"busy": 1},
            **history.device(f"node-{i}"),
        }
        for i in range(nodes)
    }
    return {
        "gateway_id": "gw-bench",
        "started_at": now - 3600,
        "uplink": {"state": "connected", "url": "mqtts://broker:8883", "published": 1},
        "queue": {"depth": 0, "bytes": 0, "max_bytes": 512_000_000},
        "devices": devices,
        "counters": {"publish_errors": 0},
    }


async def http_rate(metrics: Metrics, snap: Callable[[], dict[str, Any]], seconds: float) -> float:
    port = free_port()
    server = WebServer(metrics, snap, host="127.0.0.1", port=port)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            n += 1
    finally:
        writer.close()
        await server.close()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    s = args.seconds

    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signed = sign1(seed, b"node-1", encode_record_payload(RecordPayload(1, 3, PACK, 0)))
    parsed = parse_sign1(signed)
    verify = per_call(lambda: verify_parsed(pub, parsed), s)
    print(f"baseline  Ed25519 verify of one record ({len(signed)} B): {verify * 1e6:7.1f} us")

    history = NodeHistory()
    one = [NewRecord("node-1", 1, 0, signed, None)]
    hook1 = per_call(lambda: history.stored(one), s)
    print(
        f"hook      NodeHistory.stored, 1 record per commit:   {hook1 * 1e6:7.1f} us/record"
        f" ({hook1 / verify:.0%} of a verify)"
    )
    batch = [NewRecord(f"node-{i % 8}", i, 0, signed, None) for i in range(256)]
    hook256 = per_call(lambda: history.stored(batch), s) / len(batch)
    print(
        f"hook      NodeHistory.stored, 256 per commit, 8 nodes: {hook256 * 1e6:7.1f} us/record"
        f" ({hook256 / verify:.0%} of a verify)"
    )

    for i in range(args.nodes):
        history.stored([NewRecord(f"node-{i}", 1, 0, signed, None)])
    snap = snapshot(args.nodes, history)
    body = json.dumps(view.build(snap, time.time()))
    page = per_call(lambda: json.dumps(view.build(snapshot(args.nodes, history), time.time())), s)
    print(f"page      /api/status body, {args.nodes} nodes ({len(body)} B): {page * 1e3:6.2f} ms")

    def fresh_page() -> object:
        for node in history.nodes.values():
            node.decoded_seq = -2  # as if every node sent a record since the last snapshot
        return json.dumps(view.build(snapshot(args.nodes, history), time.time()))

    fresh = per_call(fresh_page, s)
    print(f"page      the same, every node's newest pack decoded anew: {fresh * 1e3:6.2f} ms")
    metrics = Metrics()
    metrics.accepted += 10**6
    metrics.rejected["busy"] += 3
    expo = per_call(metrics.render, s)
    print(f"metrics   /metrics body ({len(metrics.render())} B): {expo * 1e3:6.2f} ms")
    rate = asyncio.run(http_rate(metrics, lambda: snapshot(args.nodes, history), s * 2))
    print(f"http      /api/status over HTTP, {args.nodes} nodes: {rate:7.0f} requests/s")
    print(f"(pid {os.getpid()}; one page polls once a second)")


if __name__ == "__main__":
    main()
