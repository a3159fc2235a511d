"""Serial ingest: one task per port, ports from paths/globs re-scanned for hot-plug."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import time

import serial_asyncio_fast

from .config import SerialConfig
from .pipeline import Pipeline
from .protocol import FrameDecoder, ProtocolError

log = logging.getLogger("citysense.ingest")

READ_CHUNK = 4096
SCAN_INTERVAL = 1.0


class SerialLink:
    """The write side of one open port (a `Link` for the pipeline)."""

    def __init__(self, name: str, writer: asyncio.StreamWriter) -> None:
        self.name = name
        self._writer = writer
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._writer.write(data)
        except (OSError, RuntimeError) as exc:
            self.closed = True
            log.warning("event=port-write-failed port=%s error=%s", self.name, exc)


class SerialIngest:
    def __init__(
        self,
        ports: tuple[SerialConfig, ...],
        pipeline: Pipeline,
    ) -> None:
        self.ports = ports
        self.pipeline = pipeline
        self.open_ports: dict[str, asyncio.Task[None]] = {}
        self.links: dict[str, SerialLink] = {}
        self.heartbeat = time.monotonic()
        self.started = asyncio.Event()
        self._stopping = False
        self.missing: set[str] = set()  # configured ports/globs that match no device now

    def matching(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for p in self.ports:
            paths = sorted(glob.glob(p.port)) if glob.has_magic(p.port) else [p.port]
            hit = False
            for path in paths:
                if _exists(path):
                    hit = True
                    if path not in found:
                        found[path] = p.baud
            # said once when a configured port is (or goes) missing, not every scan;
            # the gateway keeps scanning and opens it when it appears (hot-plug)
            if not hit and p.port not in self.missing:
                self.missing.add(p.port)
                log.warning(
                    "event=port-missing port=%s detail=no such device; rescanning every %gs",
                    p.port,
                    SCAN_INTERVAL,
                )
            elif hit:
                self.missing.discard(p.port)
        return found

    async def run(self) -> None:
        """Scan every SCAN_INTERVAL; start a reader for each new port."""
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    self.heartbeat = time.monotonic()
                    for path, baud in self.matching().items():
                        task = self.open_ports.get(path)
                        if task is None or task.done():
                            self.open_ports[path] = tg.create_task(
                                self._port(path, baud), name=f"serial:{path}"
                            )
                    self.started.set()
                    await asyncio.sleep(SCAN_INTERVAL)
        finally:
            self._stopping = True

    async def _port(self, path: str, baud: int) -> None:
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=path, baudrate=baud
            )
        except Exception as exc:
            self.pipeline.rlog.warning(
                f"open:{path}", "event=port-open-failed port=%s error=%s", path, exc
            )
            return
        link = SerialLink(path, writer)
        self.links[path] = link
        log.info("event=port-open port=%s baud=%d", path, baud)
        decoder = FrameDecoder()
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                decoder.feed(data)
                await self._drain(decoder, link)
            log.warning("event=port-closed port=%s reason=eof", path)
        except Exception as exc:
            log.warning("event=port-lost port=%s error=%s", path, exc)
        finally:
            link.closed = True
            self.links.pop(path, None)
            for dev in self.pipeline.devices.values():
                if dev.link is link:
                    dev.link = None
            try:
                writer.close()
            except Exception:
                pass

    async def _drain(self, decoder: FrameDecoder, link: SerialLink) -> None:
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:
                self.pipeline.frame_error(link, exc)
                continue
            if frame is None:
                return
            await self.pipeline.handle(link, frame)


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True
