"""The uplink's MQTT client alone: QoS 1 publishes of records, each waited for to its PUBACK.

    python bench/bench_mqtt_publish.py [--messages 20000] [--window 32] [--rounds 2]

One run, one Mosquitto on loopback (the tests' own, no persistence), one subscriber
that only counts (paho, its own process: the broker must route to someone, or it answers
0x10 No matching subscribers and routes nothing). For each client, `--rounds` times, in
alternation so that a busy moment of the machine hits both: `--messages` PUBLISHes of
460 bytes (a signed record's size) to 20 device topics, with the two MQTT 5 properties a
record carries, at most `--window` waiting for their PUBACK (the gateway's [uplink]
window). Printed: CPU µs of this process per message (user + system, `time.process_time`)
and messages per wall second.

- ours: gateway/mqttclient.py, as the uplink uses it (a future per publish, a
  done-callback per PUBACK that frees the window slot);
- paho: paho-mqtt 2 under asyncio the way aiomqtt 2.5 drove it until issue 17 (paho's
  socket callbacks on the event loop, `on_publish` resolving a future per message with
  its reason code), with the properties packed by us as the gateway then did (a
  `Properties` whose `pack()` returns our bytes): the client the gateway replaced, the
  baseline.
The figure to read is the ratio of the two in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "gateway")]

import paho.mqtt.client as paho  # noqa: E402
from gwsupport import mosquitto  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from gateway.mqttclient import MqttClient  # noqa: E402
from gateway.mqttprops import record_properties  # noqa: E402

CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'
PAYLOAD = os.urandom(460)


def topic(i: int) -> str:
    return f"citysense/v1/gw-bench/esp32-{i % 20:012x}/records"


async def drive(
    publish: Callable[[int], asyncio.Future[int]], n: int, window: int
) -> tuple[float, float]:
    """`n` publishes, at most `window` waiting for their PUBACK: (CPU s, wall s)."""
    slots = asyncio.Semaphore(window)
    codes: list[int] = []

    def done(fut: asyncio.Future[int]) -> None:
        codes.append(fut.result())
        slots.release()

    cpu, wall = time.process_time(), time.monotonic()
    for i in range(n):
        await slots.acquire()
        publish(i).add_done_callback(done)
    for _ in range(window):
        await slots.acquire()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    assert codes == [0] * n, "a publish was refused"
    return cpu, wall


def props(i: int) -> bytes:
    return record_properties(CONTENT_TYPE, [("gw-received-ms", str(i))])


async def ours(port: int, n: int, window: int) -> tuple[float, float]:
    async with MqttClient("127.0.0.1", port, client_id="bench-ours") as client:
        return await drive(
            lambda i: client.publish_future(topic(i), PAYLOAD, properties=props(i)), n, window
        )


class _PahoOnLoop:
    """paho's client with its socket served by the asyncio loop (what aiomqtt does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: paho.Client) -> None:
        self.loop, self.client = loop, client
        client.on_socket_open = self._open
        client.on_socket_close = self._close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_write
        self._misc: asyncio.Task[None] | None = None

    def _open(self, c: Any, u: Any, sock: Any) -> None:
        self.loop.add_reader(sock, c.loop_read)
        self._misc = self.loop.create_task(self._misc_loop())

    def _close(self, c: Any, u: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        if self._misc is not None:
            self._misc.cancel()

    def _want_write(self, c: Any, u: Any, sock: Any) -> None:
        self.loop.add_writer(sock, c.loop_write)

    def _done_write(self, c: Any, u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        while True:  # keep alive and retries, once a second (as aiomqtt)
            if self.client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(1)


class _Packed(Properties):
    """Properties packed up front (the gateway's way with paho until issue 17)."""

    def __init__(self, packed: bytes) -> None:  # no Properties.__init__: its tables are slow
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


async def with_paho(port: int, n: int, window: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(window)
    _PahoOnLoop(loop, client)
    waiting: dict[int, asyncio.Future[int]] = {}
    connected = loop.create_future()
    client.on_connect = lambda *a: connected.set_result(True)

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        fut = waiting.pop(mid, None)
        if fut is not None:
            fut.set_result(int(reason.value))

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(connected, 10)

    def publish(i: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = loop.create_future()
        info = client.publish(topic(i), PAYLOAD, 1, properties=_Packed(props(i)))
        waiting[info.mid] = fut
        return fut

    try:
        return await drive(publish, n, window)
    finally:
        client.disconnect()
        await asyncio.sleep(0.1)


_COUNTER = """
import sys, paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2, protocol=m.MQTTv5)
c.on_connect = lambda *a: (c.subscribe("citysense/#", qos=0), print("ready", flush=True))
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, mosquitto(Path(d) / "broker") as broker:
        counter = subprocess.Popen(
            [sys.executable, "-c", _COUNTER, str(broker.port)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert counter.stdout is not None and counter.stdout.readline() == "ready\n"
            time.sleep(0.3)  # its SUBSCRIBE is in
            results: dict[str, list[tuple[float, float]]] = {"ours": [], "paho": []}
            for _ in range(args.rounds):
                for name, fn in (("paho", with_paho), ("ours", ours)):
                    results[name].append(asyncio.run(fn(broker.port, args.messages, args.window)))
        finally:
            counter.kill()
            counter.wait(5)
    print(
        f"{args.messages} QoS 1 publishes of {len(PAYLOAD)} B, window {args.window}, "
        f"{args.rounds} rounds each (loopback Mosquitto)"
    )
    best = {}
    for name, runs in results.items():
        per = [cpu / args.messages * 1e6 for cpu, _ in runs]
        rate = [args.messages / wall for _, wall in runs]
        best[name] = min(per)
        print(
            f"  {name:5} CPU {' / '.join(f'{p:.1f}' for p in per)} µs per message, "
            f"{' / '.join(f'{r:,.0f}' for r in rate)} messages/s"
        )
    print(f"  ours / paho CPU per message (best rounds): {best['ours'] / best['paho']:.2f}x")


if __name__ == "__main__":
    main()
