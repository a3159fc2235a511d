"""The 20 workload sources: one record of ~400 bytes per source every 100 ms.

    python sources.py mqtt --port P --dir D [--sources 20] [--interval 0.1]
    python sources.py pty --dir D [--sources 20] [--interval 0.1]

mqtt: one paho client per source publishing JSON records with QoS 1 to a local broker;
      "acknowledged" = the broker's PUBACK for that message. Unacknowledged messages stay
      in paho's queue and are re-sent after a reconnect (what any QoS 1 publisher does).
pty:  scripted citysense nodes: a raw pty pair per source (symlink D/tty-NN) driven by the
      firmware's own link state machine (firmware/lib/citysense/link.py): HELLO, then
      COSE_Sign1 RECORD frames, stop-and-wait (one record in flight), retransmission after
      the link's timeout, NACK handling as in the firmware. "Acknowledged" = the node
      deleted the record from its buffer (an ACK whose seq covers it, or NACK replay,
      which the firmware treats as an ACK); with stop-and-wait that is the record's own ACK
      (status.json counts any deletion that was not: acked_by_higher_seq, acked_never_sent).

Every acknowledgement is appended to D/acks.log as `source seq monotonic_time`, and the
latency of a record's own acknowledgement (last send -> ACK/PUBACK) to D/latency.log as
`monotonic_time seconds`; D/status.json holds running totals. SIGTERM stops publishing,
flushes the log and exits.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORD_BYTES = 400
_FILLER = [c for c in map(chr, range(0x21, 0x7F)) if c not in '"\\']
_FILLER_RNG = random.Random(17)


def filler(n: int) -> str:
    """`n` random printable characters (no quote or backslash, so JSON keeps the length):
    the padding of every system's records. Not "x" repeated: a queue that compresses
    (citysense's, gateway/queue.py) would shrink that to nothing, which no real reading
    does; zlib saves ~17 % of random characters."""
    return "".join(_FILLER_RNG.choices(_FILLER, k=max(0, n)))


class AckLog:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.f = (d / "acks.log").open("a", buffering=1 << 16)
        self.lat = (d / "latency.log").open("a", buffering=1 << 16)
        self.lock = threading.Lock()
        self.acked = 0
        self.sent = 0
        self.other: dict[str, int] = {}
        self.extra: Callable[[], dict[str, int]] | None = None  # more totals (pty nodes)
        self.last_status = 0.0

    def ack(self, src: int, seq: int, sent: float | None = None) -> None:
        """`sent`: when the message this acknowledgement answers was last sent."""
        with self.lock:
            now = time.monotonic()
            self.f.write(f"{src} {seq} {now:.4f}\n")
            if sent is not None:
                self.lat.write(f"{now:.4f} {now - sent:.5f}\n")
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
            self.lat.flush()
            data = {"acked": self.acked, "sent": self.sent, **self.other}
        if self.extra is not None:
            data.update(self.extra())
        tmp = self.dir / ".status.tmp"
        tmp.write_text(json.dumps(data))
        tmp.rename(self.dir / "status.json")

    def close(self) -> None:
        self.status(force=True)
        self.f.close()
        self.lat.close()


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
    base["pad"] = filler(n)
    return json.dumps(base, separators=(",", ":")).encode()


# -- MQTT sources ------------------------------------------------------------------


def run_mqtt(args: argparse.Namespace, log: AckLog, stop: threading.Event) -> None:
    import paho.mqtt.client as mqtt

    clients: list[Any] = []
    pending: list[dict[int, tuple[int, float]]] = []
    early: list[set[int]] = []
    locks: list[threading.Lock] = []

    def make(i: int) -> Any:
        def on_publish(c: Any, u: Any, mid: int, rc: Any = None, props: Any = None) -> None:
            with locks[i]:
                entry = pending[i].pop(mid, None)
                if entry is None:
                    early[i].add(mid)
                    return
            log.ack(i, entry[0], entry[1])

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
            t_pub = time.monotonic()
            info = c.publish(f"bench/src-{i:02d}/data", json_record(i, seq[i]), qos=1)
            log.sent += 1
            with locks[i]:
                if info.mid in early[i]:
                    early[i].discard(info.mid)
                    acked = True
                else:
                    pending[i][info.mid] = (seq[i], t_pub)
                    acked = False
            if acked:
                log.ack(i, seq[i], t_pub)
        log.status()
        next_t += args.interval
        stop.wait(max(0.0, next_t - time.monotonic()))
    for c in clients:
        c.loop_stop()
        c.disconnect()


# -- scripted citysense nodes over ptys -------------------------------------------------
#
# Each node drives the real firmware link state machine (firmware/lib/citysense/link.py,
# imported under CPython as the firmware's own tests do) over a raw pty, with an
# in-memory stand-in for the node's flash buffer. So the benchmark node follows exactly
# the firmware's rules: HELLO first and after every retransmit timeout; stop-and-wait
# (window 1); retransmit the oldest unACKed record after `rto` (2 s, doubling to 60 s,
# jittered); ACK n deletes the entries with seq <= n; NACK replay counts as an ACK of
# that seq; NACK busy holds records back (1 s doubling, jittered); the error NACKs keep
# the record and hold for at least 30 s. The only bench-specific part is the buffer: it
# is unbounded (the firmware's flash buffer drops its oldest entry when full, counted).

FIRMWARE_LIB = Path(__file__).resolve().parents[2] / "firmware" / "lib"
READ_CHUNK = 4096  # bytes fed to the link per read, like the firmware's UART loop


def firmware_link_class() -> Any:
    """The firmware's `citysense.link.Link`, imported from firmware/lib."""
    if str(FIRMWARE_LIB) not in sys.path:
        sys.path.insert(0, str(FIRMWARE_LIB))
    from citysense.link import Link  # type: ignore[import-not-found]

    return Link


class MemBuffer:
    """The node's record buffer (firmware `citysense.buffer.Buffer` interface), in memory.

    `ack(seq)` is where the node deletes records: every record it deletes is logged as
    acknowledged to the sender (the node gives up its copy), with counters for deletions
    that were not by the record's own ACK (an ACK of a higher seq, or of a record never
    sent), which stop-and-wait should make impossible.
    """

    def __init__(self, node: PtyNode, log: AckLog) -> None:
        self.node = node
        self.log = log
        self._seqs: list[int] = []
        self._bodies: list[bytes] = []
        self.sent: set[int] = set()
        self.sent_at: dict[int, float] = {}  # seq -> its last send (ACK latency)
        self.high_water = 0
        self.reason = "ack"  # what the link is processing: "ack" or "replay"

    def __len__(self) -> int:
        return len(self._seqs)

    def append(self, seq: int, body: bytes) -> None:
        self._seqs.append(seq)
        self._bodies.append(body)
        self.high_water = max(self.high_water, len(self._seqs))

    def seq_at(self, i: int) -> int:
        return self._seqs[i]

    def newest_seq(self) -> int:
        return self._seqs[-1] if self._seqs else 0

    def index_of(self, seq: int) -> int:
        """Index of the first entry with seq >= `seq` (len(self) if none)."""
        return bisect.bisect_left(self._seqs, seq)

    def read(self, i: int, out: Any = None) -> Any:
        """The record body at `i` (bytes), or copied into `out` and its length returned
        (as the firmware's Buffer.read): the link calls this only to send it."""
        seq = self._seqs[i]
        if seq in self.sent:
            self.log.count("retransmitted_records")
        self.sent.add(seq)
        self.sent_at[seq] = time.monotonic()
        body = self._bodies[i]
        if out is None:
            return body
        out[: len(body)] = body
        return len(body)

    def ack(self, seq: int) -> int:
        k = self.index_of(seq + 1)
        if not k:
            return 0
        for s in self._seqs[:k]:
            sent = self.sent_at.pop(s, None)
            self.log.ack(self.node.i, s, sent if s == seq and self.reason == "ack" else None)
            if self.reason == "replay":
                self.log.count("acked_by_nack_replay")
            if s not in self.sent:
                self.log.count("acked_never_sent")
            elif s != seq:
                self.log.count("acked_by_higher_seq")
            self.sent.discard(s)
        del self._seqs[:k]
        del self._bodies[:k]
        return k


class PtyNode:
    def __init__(self, i: int, d: Path, log: AckLog) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
        self.out = bytearray()
        self.seq = 0
        self.started = time.monotonic()
        self.buffer = MemBuffer(self, log)
        rng = random.Random(i)
        link_class = firmware_link_class()
        buffer = self.buffer

        class BenchLink(link_class):  # type: ignore[misc,valid-type]
            def _nack(self, seq: int, reason: str, now: int) -> None:
                log.count(f"nack_{reason}")
                buffer.reason = reason
                try:
                    super()._nack(seq, reason, now)
                finally:
                    buffer.reason = "ack"

        self.fw = BenchLink(self.buffer, self.hello_body, rand=lambda: rng.getrandbits(16))

    def record(self, seq: int) -> bytes:
        """The signed record (COSE_Sign1 body) of `seq`, padded to RECORD_BYTES."""
        from gateway.protocol import sign1

        now = time.time()
        pack: list[dict[int, Any]] = [
            {-2: f"{self.device_id}/", -3: now, 0: "temp", 1: "Cel", 2: 21.5},
            {0: "rh", 1: "%RH", 2: 48.25},
            {0: "pm25", 1: "ug/m3", 2: 7.1},
            {0: "pad", 3: ""},
        ]
        body = sign1(self.seed, self.device_id.encode(), self._payload(seq, pack, 0))
        pad = RECORD_BYTES - len(body)
        pack[-1][3] = filler(pad)
        return sign1(self.seed, self.device_id.encode(), self._payload(seq, pack, 0))

    @staticmethod
    def _payload(seq: int, pack: list[dict[int, Any]], tb: int) -> bytes:
        from gateway.protocol import encode_record_payload
        from gateway.protocol.record import RecordPayload

        return encode_record_payload(RecordPayload(seq, 1, pack, tb))

    def hello_body(self) -> bytes:
        from gateway.protocol import Hello, encode_hello

        uptime = int((time.monotonic() - self.started) * 1000)
        return encode_hello(Hello(self.device_id, "bench-1.0", 1, "power-on", uptime, self.seq))

    def tick(self) -> None:
        """The sampler: a new record goes into the buffer (the link decides when to send)."""
        self.seq += 1
        self.buffer.append(self.seq, self.record(self.seq))

    def pump(self, now_ms: int) -> None:
        """Let the link emit what it wants to send now (as the firmware's link loop)."""
        while True:
            frame = self.fw.poll(now_ms)
            if frame is None:
                return
            self.out += frame

    def flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.master, self.out[:4096])
            except (BlockingIOError, InterruptedError):
                return
            del self.out[:n]

    def read(self, now_ms: int) -> None:
        while True:
            try:
                data = os.read(self.master, READ_CHUNK)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self.fw.receive(data, now_ms)

    def counters(self) -> dict[str, int]:
        return {
            "link_retransmit_timeouts": self.fw.retransmits,
            "link_error_nacks": self.fw.nack_errors,
            "link_frame_errors": self.fw.decoder.errors,
            "buffered": len(self.buffer),
            "buffer_high_water": self.buffer.high_water,
        }

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
    nodes = [PtyNode(i, d, log) for i in range(args.sources)]
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
    next_t = time.monotonic()

    def totals() -> dict[str, int]:
        tot: dict[str, int] = {}
        for n in nodes:
            for k, v in n.counters().items():
                tot[k] = max(tot.get(k, 0), v) if k == "buffer_high_water" else tot.get(k, 0) + v
        return tot

    log.extra = totals

    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_t:
                for n in nodes:
                    n.tick()
                    log.sent += 1
                next_t += args.interval
            now_ms = int(time.monotonic() * 1000)
            for n in nodes:
                n.pump(now_ms)
            wr = [n.master for n in nodes if n.out]
            # wake at least every 20 ms (the firmware's link loop period) for timers
            r, _, _ = select.select(list(by_fd), wr, [], max(0.0, min(0.02, next_t - now)))
            now_ms = int(time.monotonic() * 1000)
            for fd in r:
                node = by_fd[fd]
                node.read(now_ms)
                node.pump(now_ms)
            for n in nodes:
                if n.out:
                    n.flush()
            log.status()
    finally:
        log.status(force=True)
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
