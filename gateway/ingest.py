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
from .ratelog import RateLimitedLog

log = logging.getLogger("citysense.ingest")

READ_CHUNK = 4096
SCAN_INTERVAL = 1.0
Ident = tuple[int, int, int]  # (st_dev, st_ino, st_rdev) of the device a port name leads to
MAX_WRITE_BUFFER = 16 * 1024
"""Bytes a port may have waiting to be written. A peer that does not read (a wedged
node, a hostile one flooding HELLOs to make us answer) would otherwise grow the buffer
without bound; beyond it, frames for that port are dropped and counted. ACK, NACK and
TIME are all repeatable: a node retransmits until it hears an answer."""


class SerialLink:
    """The write side of one open port (a `Link` for the pipeline)."""

    def __init__(
        self, name: str, writer: asyncio.StreamWriter, rlog: RateLimitedLog | None = None
    ) -> None:
        self.name = name
        self._writer = writer
        self._rlog = rlog or RateLimitedLog(log)
        self.closed = False
        self.dropped = 0  # frames not written: the port's write buffer was full

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        buffered = self._writer.transport.get_write_buffer_size()
        if buffered + len(data) > MAX_WRITE_BUFFER:
            self.dropped += 1
            self._rlog.warning(
                f"write-full:{self.name}",
                "event=port-write-dropped port=%s buffered=%d dropped=%d detail=%s",
                self.name,
                buffered,
                self.dropped,
                "the peer is not reading: frames to it are dropped until it does",
            )
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
        self.idents: dict[str, Ident] = {}  # path -> the device it led to when opened

    def matching(self) -> dict[str, tuple[int, Ident]]:
        """Every configured path that names a device now: its baud and the device's identity."""
        found: dict[str, tuple[int, Ident]] = {}
        for p in self.ports:
            paths = sorted(glob.glob(p.port)) if glob.has_magic(p.port) else [p.port]
            hit = False
            for path in paths:
                ident = _ident(path)
                if ident is not None:
                    hit = True
                    if path not in found:
                        found[path] = (p.baud, ident)
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
                    self._scan(tg)
                    self.started.set()
                    await asyncio.sleep(SCAN_INTERVAL)
        finally:
            self._stopping = True

    def _scan(self, tg: asyncio.TaskGroup) -> None:
        """Open what is new. A device is read by one reader only: two readers of one tty
        split its bytes between them and each sees broken frames, so a second name for an
        open device (`/dev/ttyUSB*` and `/dev/serial/by-id/*` both configured, a stale
        symlink to a reused pty) is not opened; a name that now leads to another device
        than the one open under it (a symlink re-pointed) is closed and opened again."""
        found = self.matching()
        live = {p: self.idents[p] for p, t in self.open_ports.items() if not t.done()}
        for path, (baud, ident) in found.items():
            if path in live:
                if live[path] != ident:
                    log.warning(
                        "event=port-moved port=%s detail=the name leads to another device"
                        " now: closing the old one and opening it again",
                        path,
                    )
                    self.open_ports[path].cancel()
                continue
            twin = next((p for p, i in live.items() if i == ident), None)
            if twin is not None:
                self.pipeline.rlog.warning(
                    f"twin:{path}",
                    "event=port-duplicate port=%s same_as=%s detail=one device under two"
                    " names: read through the first only (check the [[serial]] ports)",
                    path,
                    twin,
                )
                continue
            self.idents[path] = live[path] = ident
            self.open_ports[path] = tg.create_task(self._port(path, baud), name=f"serial:{path}")

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
        link = SerialLink(path, writer, self.pipeline.rlog)
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
            self.pipeline.routes.port_closed(link)
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


def _ident(path: str) -> Ident | None:
    """The device a path leads to (symlinks followed), or None if it leads nowhere."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_rdev)
