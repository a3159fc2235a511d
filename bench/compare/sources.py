"""The 20 workload sources: one record of ~400 bytes per source every 100 ms.

    python sources.py mqtt --port P --dir D [--sources 20] [--interval 0.1]
    python sources.py pty --dir D [--sources 20] [--interval 0.1]

mqtt: one paho client per source publishing JSON records with QoS 1 to a local broker;
      "acknowledged" = the broker's PUBACK. Unacknowledged messages stay in paho's queue
      and are re-sent after a reconnect (what any QoS 1 publisher does).
pty:  scripted citysense nodes: a raw pty pair per source (symlink D/tty-NN), HELLO, then
      COSE_Sign1 RECORD frames; "acknowledged" = a cumulative ACK frame. Like the firmware
      the node keeps every unACKed record and re-sends them (in order) when ACKs stall.

Every acknowledgement is appended to D/acks.log as `source seq monotonic_time`; D/status.json
holds running totals. SIGTERM stops publishing, flushes the log and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

RECORD_BYTES = 400
RESEND_AFTER = 2.0
MAX_RESEND = 400


class AckLog:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.f = (d / "acks.log").open("a", buffering=1 << 16)
        self.lock = threading.Lock()
        self.acked = 0
        self.sent = 0
        self.other: dict[str, int] = {}
        self.last_status = 0.0

    def ack(self, src: int, seq: int) -> None:
        with self.lock:
            self.f.write(f"{src} {seq} {time.monotonic():.4f}\n")
            self.acked += 1

    def count(self, what: str) -> None:
        with self.lock:
            self.other[what] = self.other.get(what, 0) + 1

    def status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_status < 0.5:
            return
        self.last_status = now
        with self.lock:
            self.f.flush()
            data = {"acked": self.acked, "sent": self.sent, **self.other}
        tmp = self.dir / ".status.tmp"
        tmp.write_text(json.dumps(data))
        tmp.rename(self.dir / "status.json")

    def close(self) -> None:
        self.status(force=True)
        self.f.close()


def json_record(src: int, seq: int) -> bytes:
    """A JSON reading record padded to RECORD_BYTES (what the peers ingest)."""
    base = {
        "device": f"src-{src:02d}",
        "seq": seq,
        "ts": int(time.time() * 1000),
        "temp": 21.5,
        "rh": 48.25,
        "pm25": 7.1,
        "pad": "",
    }
    n = RECORD_BYTES - len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * max(0, n)
    return json.dumps(base, separators=(",", ":")).encode()


# -- MQTT sources ------------------------------------------------------------------


def run_mqtt(args: argparse.Namespace, log: AckLog, stop: threading.Event) -> None:
    import paho.mqtt.client as mqtt

    clients: list[Any] = []
    pending: list[dict[int, int]] = []
    early: list[set[int]] = []
    locks: list[threading.Lock] = []

    def make(i: int) -> Any:
        def on_publish(c: Any, u: Any, mid: int, rc: Any = None, props: Any = None) -> None:
            with locks[i]:
                seq = pending[i].pop(mid, None)
                if seq is None:
                    early[i].add(mid)
                    return
            log.ack(i, seq)

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"bench-src-{i:02d}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.1, 1)
        c.on_publish = on_publish
        c.connect_async("127.0.0.1", args.port, keepalive=30)
        c.loop_start()
        return c

    for i in range(args.sources):
        pending.append({})
        early.append(set())
        locks.append(threading.Lock())
        clients.append(make(i))
    seq = [0] * args.sources
    next_t = time.monotonic()
    while not stop.is_set():
        for i, c in enumerate(clients):
            seq[i] += 1
            info = c.publish(f"bench/src-{i:02d}/data", json_record(i, seq[i]), qos=1)
            log.sent += 1
            with locks[i]:
                if info.mid in early[i]:
                    early[i].discard(info.mid)
                    acked = True
                else:
                    pending[i][info.mid] = seq[i]
                    acked = False
            if acked:
                log.ack(i, seq[i])
        log.status()
        next_t += args.interval
        stop.wait(max(0.0, next_t - time.monotonic()))
    for c in clients:
        c.loop_stop()
        c.disconnect()


# -- scripted citysense nodes over ptys -------------------------------------------------


class PtyNode:
    def __init__(self, i: int, d: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        from gateway.protocol import FrameDecoder

        self.i = i
        self.device_id = f"bench-{i:02d}"
        self.seed = os.urandom(32)
        pub = (
            Ed25519PrivateKey.from_private_bytes(self.seed)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        self.public_key = pub
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.link = d / f"tty-{i:02d}"
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.unacked: dict[int, bytes] = {}
        self.seq = 0
        self.last_progress = time.monotonic()
        self.last_resend = 0.0

    def record(self, seq: int) -> bytes:
        from gateway.protocol import FrameType, encode_frame, sign1

        now = time.time()
        pack: list[dict[int, Any]] = [
            {-2: f"{self.device_id}/", -3: now, 0: "temp", 1: "Cel", 2: 21.5},
            {0: "rh", 1: "%RH", 2: 48.25},
            {0: "pm25", 1: "ug/m3", 2: 7.1},
            {0: "pad", 3: ""},
        ]
        body = sign1(self.seed, self.device_id.encode(), self._payload(seq, pack, 0))
        pad = RECORD_BYTES - len(body)
        pack[-1][3] = "x" * max(0, pad)
        body = sign1(self.seed, self.device_id.encode(), self._payload(seq, pack, 0))
        return encode_frame(FrameType.RECORD, body)

    @staticmethod
    def _payload(seq: int, pack: list[dict[int, Any]], tb: int) -> bytes:
        from gateway.protocol import encode_record_payload
        from gateway.protocol.record import RecordPayload

        return encode_record_payload(RecordPayload(seq, 1, pack, tb))

    def hello(self) -> bytes:
        from gateway.protocol import FrameType, Hello, encode_frame, encode_hello

        h = Hello(self.device_id, "bench-1.0", 1, "power-on", 1000, self.seq)
        return encode_frame(FrameType.HELLO, encode_hello(h))

    def tick(self) -> None:
        self.seq += 1
        frame = self.record(self.seq)
        self.unacked[self.seq] = frame
        self.out += frame

    def flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.master, self.out[:4096])
            except (BlockingIOError, InterruptedError):
                return
            del self.out[:n]

    def read(self, log: AckLog) -> None:
        from gateway.protocol import FrameType, ProtocolError, decode_ack, decode_nack

        while True:
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self.decoder.feed(data)
        while True:
            try:
                f = self.decoder.next_frame()
            except ProtocolError:
                log.count("frame_errors")
                continue
            if f is None:
                return
            if f.type == FrameType.ACK:
                upto = decode_ack(f.body)
                done = [s for s in self.unacked if s <= upto]
                for s in done:
                    del self.unacked[s]
                    log.ack(self.i, s)
                if done:
                    self.last_progress = time.monotonic()
            elif f.type == FrameType.NACK:
                seq, reason = decode_nack(f.body)
                log.count(f"nack_{reason}")
                if reason != "busy":
                    self.unacked.pop(seq, None)

    def maybe_resend(self) -> None:
        now = time.monotonic()
        if not self.unacked or self.out:
            return
        if now - self.last_progress < RESEND_AFTER or now - self.last_resend < RESEND_AFTER:
            return
        self.last_resend = now
        self.out += self.hello()
        for n, frame in enumerate(self.unacked.values()):
            if n >= MAX_RESEND:
                break
            self.out += frame

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.link.unlink()
        except OSError:
            pass


def run_pty(args: argparse.Namespace, log: AckLog, stop: threading.Event) -> None:
    d = Path(args.dir)
    nodes = [PtyNode(i, d) for i in range(args.sources)]
    reg = Path(args.registry) if args.registry else None
    if reg is not None:
        reg.mkdir(parents=True, exist_ok=True)
        for n in nodes:
            entry = {
                "device_id": n.device_id,
                "public_key": n.public_key.hex(),
                "status": "active",
                "enrolled_at": "2026-11-25T05:00:00Z",
                "revoked_at": None,
                "firmware_sha256": None,
            }
            tmp = reg / f".{n.device_id}.tmp"
            tmp.write_text(json.dumps(entry))
            tmp.rename(reg / f"{n.device_id}.json")
    (d / "ready").write_text("ok")
    by_fd = {n.master: n for n in nodes}
    for n in nodes:
        n.out += n.hello()
    next_t = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_t:
                for n in nodes:
                    n.tick()
                    log.sent += 1
                next_t += args.interval
            wr = [n.master for n in nodes if n.out]
            r, w, _ = select.select(list(by_fd), wr, [], max(0.0, min(0.05, next_t - now)))
            for fd in r:
                by_fd[fd].read(log)
            for fd in w:
                by_fd[fd].flush()
            for n in nodes:
                n.maybe_resend()
            log.status()
    finally:
        for n in nodes:
            n.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("mqtt", "pty"))
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--sources", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--registry", default=None)
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    log = AckLog(d)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if args.mode == "mqtt":
            run_mqtt(args, log, stop)
        else:
            run_pty(args, log, stop)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
