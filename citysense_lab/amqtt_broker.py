"""A real MQTT broker from PyPI (amqtt, MQTT 3.1.1) in its own process, for machines
without Mosquitto (the demo on a fresh machine). TLS with the lab's CA; amqtt verifies a
client certificate when one is presented but cannot require one (Mosquitto can).

    python -m citysense_lab.amqtt_broker --port P [--ca F --cert F --key F]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any


async def serve(args: argparse.Namespace) -> None:
    from amqtt.broker import Broker

    listener: dict[str, Any] = {"type": "tcp", "bind": f"127.0.0.1:{args.port}"}
    if args.cert:
        listener.update(ssl=True, cafile=args.ca, certfile=args.cert, keyfile=args.key)
    config: dict[str, Any] = {
        "listeners": {"default": listener},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="citysense-lab-broker")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
