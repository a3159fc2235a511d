"""Counters and gauges, and a tiny asyncio HTTP server that serves them as Prometheus text."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

log = logging.getLogger("citysense.metrics")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.frames: dict[str, int] = defaultdict(int)  # by frame type name
        self.frame_errors: dict[str, int] = defaultdict(int)  # by reason
        self.hello_errors: dict[str, int] = defaultdict(int)  # HELLO bodies, by reason
        self.accepted = 0
        self.duplicates = 0
        self.rejected: dict[str, int] = defaultdict(int)  # by NACK reason
        self.published = 0
        self.publish_errors = 0
        self.commands: dict[str, int] = defaultdict(int)  # by outcome
        self.queue_corrupt = 0
        self.uplink_connected = 0
        self.latency_buckets = [0] * len(_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.gauges: dict[str, Callable[[], float]] = {}

    def observe_publish(self, seconds: float) -> None:
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("citysense_frames_total", "counter", "Frames decoded from serial, by type.")
        for k, v in sorted(self.frames.items()):
            out.append(f'citysense_frames_total{{type="{k}"}} {v}')
        family("citysense_frame_errors_total", "counter", "Bad frames dropped, by reason.")
        for k, v in sorted(self.frame_errors.items()):
            out.append(f'citysense_frame_errors_total{{reason="{k}"}} {v}')
        family("citysense_hello_errors_total", "counter", "HELLO frames with a bad body.")
        for k, v in sorted(self.hello_errors.items()):
            out.append(f'citysense_hello_errors_total{{reason="{k}"}} {v}')
        family("citysense_records_accepted_total", "counter", "Records stored and ACKed.")
        out.append(f"citysense_records_accepted_total {self.accepted}")
        family("citysense_records_duplicate_total", "counter", "Duplicates ACKed again.")
        out.append(f"citysense_records_duplicate_total {self.duplicates}")
        family("citysense_records_rejected_total", "counter", "Records NACKed, by reason.")
        for k, v in sorted(self.rejected.items()):
            out.append(f'citysense_records_rejected_total{{reason="{k}"}} {v}')
        family("citysense_records_published_total", "counter", "Records PUBACKed by the broker.")
        out.append(f"citysense_records_published_total {self.published}")
        family("citysense_commands_total", "counter", "Downlink commands, by outcome.")
        for k, v in sorted(self.commands.items()):
            out.append(f'citysense_commands_total{{outcome="{k}"}} {v}')
        family("citysense_queue_corrupt_total", "counter", "Corrupt databases moved aside.")
        out.append(f"citysense_queue_corrupt_total {self.queue_corrupt}")
        family("citysense_uplink_connected", "gauge", "1 while connected to the broker.")
        out.append(f"citysense_uplink_connected {self.uplink_connected}")
        for name, fn in sorted(self.gauges.items()):
            family(name, "gauge", name.replace("_", " "))
            out.append(f"{name} {fn():g}")
        name = "citysense_publish_latency_seconds"
        family(name, "histogram", "Queue insert to PUBACK.")
        for bound, count in zip(_BUCKETS, self.latency_buckets, strict=True):
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {count}')
        out.append(f"{name}_sum {self.latency_sum:.6f}")
        out.append(f"{name}_count {self.latency_count}")
        return "\n".join(out) + "\n"


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """GET /metrics -> text; anything else 404. One request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body = metrics.render().encode()
                head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found\n"
                head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(
                f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, OSError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("event=metrics-listening host=%s port=%d", host, port)
    return server
