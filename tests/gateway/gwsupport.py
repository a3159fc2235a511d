"""Helpers for the gateway tests: keys, registry entries, records, ptys, Mosquitto."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import REPO, free_port

from citysense_formats import registry_entry
from citysense_lab.broker import BrokerTLS
from citysense_lab.broker import Mosquitto as LabMosquitto
from gateway.protocol import (
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    ProtocolError,
    encode_frame,
    encode_hello,
    encode_record_payload,
    sign1,
)
from gateway.protocol.record import RecordPayload
from provisioning import ca


@dataclass
class Node:
    device_id: str
    seed: bytes

    @property
    def public_key(self) -> bytes:
        return (
            Ed25519PrivateKey.from_private_bytes(self.seed)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def record(self, seq: int, *, boot: int = 1, time_base: int = 0, value: float = 21.5) -> bytes:
        pack = [{-2: f"{self.device_id}/", 0: "temp", 1: "Cel", 2: value, 6: seq}]
        payload = encode_record_payload(RecordPayload(seq, boot, pack, time_base))
        return sign1(self.seed, self.device_id.encode(), payload)

    def record_frame(self, seq: int, **kw: object) -> bytes:
        return encode_frame(FrameType.RECORD, self.record(seq, **kw))  # type: ignore[arg-type]

    def hello_frame(
        self, boot: int = 1, uptime_ms: int = 1000, highest: int = 0, trial: bool = False
    ) -> bytes:
        h = Hello(self.device_id, "test-1.0", boot, "power-on", uptime_ms, highest, trial=trial)
        return encode_frame(FrameType.HELLO, encode_hello(h))


def make_node(device_id: str) -> Node:
    return Node(device_id, os.urandom(32))


def write_entry(registry: Path, node: Node, status: str = "active") -> None:
    entry = {
        "device_id": node.device_id,
        "public_key": node.public_key.hex(),
        "status": status,
        "enrolled_at": "2026-11-25T05:00:00Z",
        "revoked_at": None,
        "firmware_sha256": None,
    }
    tmp = registry / f".{node.device_id}.tmp"
    tmp.write_bytes(registry_entry.encode(entry))
    tmp.rename(registry / f"{node.device_id}.json")


def write_config(path: Path, **over: str) -> Path:
    """A gateway TOML; `over` replaces whole lines `key = ...` in the template."""
    d = path.parent
    values = {
        "id": '"gw-test"',
        "state_dir": f'"{d / "state"}"',
        "registry": f'"{d / "registry"}"',
        "port": f'"{d / "tty*"}"',
        "url": '"mqtt://127.0.0.1:1"',
        "max_bytes": '"4MB"',
        "listen": f'"127.0.0.1:{free_port()}"',
        "extra_uplink": "",
        "extra_gateway": "",
        "extra_queue": "",
        "require_sync": "false",  # test machines often run no NTP client
        "extra_time": "",
    }
    values.update(over)
    (d / "registry").mkdir(exist_ok=True)
    path.write_text(
        f"""[gateway]
id = {values["id"]}
state_dir = {values["state_dir"]}
registry = {values["registry"]}
{values["extra_gateway"]}
[[serial]]
port = {values["port"]}
baud = 115200

[uplink]
url = {values["url"]}
{values["extra_uplink"]}
[queue]
max_bytes = {values["max_bytes"]}
{values["extra_queue"]}
[metrics]
listen = {values["listen"]}

[time]
require_sync = {values["require_sync"]}
{values["extra_time"]}
"""
    )
    return path


class Pty:
    """A raw pty pair; the test holds the master (the node side)."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.link = link
        link.symlink_to(self.path)
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.errors = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("pty write stuck") from None
                time.sleep(0.001)
                continue
            view = view[n:]

    def poll(self) -> list[Frame]:
        new: list[Frame] = []
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
                self.errors += 1
                continue
            if f is None:
                break
            new.append(f)
        self.frames.extend(new)
        return new

    def wait_for(self, pred: object, timeout: float = 20.0) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if pred(self.frames):  # type: ignore[operator]
                return self.frames
            time.sleep(0.01)
        raise TimeoutError(f"condition not met; frames: {[f.type.name for f in self.frames][-20:]}")

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.link.unlink()


def start_gateway(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(config),
            "--log-level",
            "debug",
        ],
        cwd=REPO,
        # faulthandler: `stop` sends SIGABRT to an agent that does not stop in time, and
        # every thread's stack lands in the log
        env=dict(os.environ, PYTHONFAULTHANDLER="1", **(env or {})),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    _logs[proc.pid] = log
    return proc


_logs: dict[int, Path] = {}  # start_gateway's log of each agent, for `stop`'s report


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log = _logs.get(proc.pid)
            tail = log.read_text(errors="replace")[-6000:] if log is not None else ""
            raise AssertionError(f"agent not stopped within {timeout:.0f} s:\n{tail}") from None
    return proc.returncode


# -- Mosquitto and PKI: citysense_lab's broker and provisioning's CA (as the lab uses) ---

# every gateway may write under its own certificate CN only; the consumer reads everything
_ACL = "pattern readwrite citysense/v1/%u/#\n\nuser consumer\ntopic readwrite citysense/#\n"


def make_pki(d: Path, gateway_id: str) -> dict[str, Path]:
    """A throwaway CA (provisioning.ca, as `citysense-provision ca init` makes it), a
    broker cert for 127.0.0.1/localhost, client certs CN=gateway_id, consumer and operator
    (the command tool's identity, citysense-cloud command send)."""
    ca_dir = d / "ca"
    ca.init_ca(ca_dir, "citysense test CA")
    ca.broker_cert(ca_dir, d / "broker", ["localhost"], ["127.0.0.1"])
    out = {
        "ca": ca_dir / ca.CA_CERT,
        "broker_cert": d / "broker" / "broker.crt",
        "broker_key": d / "broker" / "broker.key",
    }
    for who in (gateway_id, "consumer", "operator"):
        ca.gateway_cert(who, d / who, ca_dir)
        out[f"{who}_cert"] = d / who / "gateway.crt"
        out[f"{who}_key"] = d / who / "gateway.key"
    return out


class Mosquitto(LabMosquitto):
    """citysense_lab's Mosquitto on a free port, queues unlimited; with `tls` (a
    make_pki() dict) mTLS, the certificate CN as user name, and _ACL."""

    def __init__(
        self, d: Path, *, tls: dict[str, Path] | None = None, persistence: bool = False
    ) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        broker_tls = None
        if tls is not None:
            broker_tls = BrokerTLS(tls["ca"], tls["broker_cert"], tls["broker_key"])
        super().__init__(
            d,
            free_port(),
            broker_tls,
            _ACL if tls is not None else None,
            persistence=persistence,
            limits=(0, 0),
        )


@contextlib.contextmanager
def mosquitto(
    d: Path, tls: dict[str, Path] | None = None, persistence: bool = False
) -> Iterator[Mosquitto]:
    m = Mosquitto(d, tls=tls, persistence=persistence)
    try:
        m.start()
        yield m
    finally:
        m.stop()


class Subscriber:
    """A paho consumer that records every message (topic, payload) in order."""

    def __init__(
        self, port: int, topic: str, tls: dict[str, Path] | None = None, persistent: bool = False
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, object]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"consumer-{os.getpid()}-{port}",
            protocol=mqtt.MQTTv5,
        )
        if tls:
            self.client.tls_set(
                ca_certs=str(tls["ca"]),
                certfile=str(tls["consumer_cert"]),
                keyfile=str(tls["consumer_key"]),
            )
        subscribed = threading.Event()

        def on_connect(c: object, u: object, f: object, rc: object, p: object = None) -> None:
            self.client.subscribe(topic, qos=1)

        def on_subscribe(*a: object) -> None:
            subscribed.set()

        def on_message(c: object, u: object, msg: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((msg.topic, bytes(msg.payload), msg.properties))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        if persistent:  # a session the broker keeps (and queues QoS 1 for) while we are away
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(15):
            self.close()
            raise TimeoutError("subscriber did not subscribe")

    def snapshot(self) -> list[tuple[str, bytes, object]]:
        with self._lock:
            return list(self.messages)

    def records(self) -> list[tuple[str, int]]:
        """(device, seq) of every record message, in arrival order (duplicates kept)."""
        from gateway.protocol import decode_record_payload, parse_sign1

        out = []
        for topic, payload, _ in self.snapshot():
            if topic.endswith("/records"):
                out.append(
                    (topic.split("/")[3], decode_record_payload(parse_sign1(payload).payload).seq)
                )
        return out

    def wait_count(
        self, topic_suffix: str, n: int, timeout: float = 30
    ) -> list[tuple[str, bytes, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [m for m in self.snapshot() if m[0].endswith(topic_suffix)]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"{len(got)} of {n} messages on *{topic_suffix}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_log(log: Path, text: str, timeout: float = 30, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise TimeoutError(f"log never said {text!r} x{count}:\n{tail}")


class NodeSim:
    """A node's delivery side: buffer every record until an ACK covers it, resend on demand."""

    def __init__(self, node: Node, pty: Pty) -> None:
        self.node = node
        self.pty = pty
        self.next_seq = 1
        self.unacked: dict[int, bytes] = {}
        self.acked: set[int] = set()
        self.high_ack = 0
        self.nacks: list[tuple[int, str]] = []
        self._seen = 0

    def new_record(self) -> None:
        seq = self.next_seq
        self.next_seq += 1
        frame = self.node.record_frame(seq)
        self.unacked[seq] = frame
        self.pty.write(frame)

    def resend(self) -> None:
        for seq in sorted(self.unacked):
            self.pty.write(self.unacked[seq])

    def process(self) -> None:
        from gateway.protocol import decode_ack, decode_nack

        self.pty.poll()
        for f in self.pty.frames[self._seen :]:
            if f.type == FrameType.ACK:
                a = decode_ack(f.body)
                self.high_ack = max(self.high_ack, a)
                for seq in [s for s in self.unacked if s <= a]:
                    del self.unacked[seq]
                    self.acked.add(seq)
            elif f.type == FrameType.NACK:
                seq, reason = decode_nack(f.body)
                self.nacks.append((seq, str(reason)))
        self._seen = len(self.pty.frames)

    def settle(self, timeout: float = 30) -> None:
        """Resend until everything is ACKed."""
        deadline = time.monotonic() + timeout
        while True:
            end = time.monotonic() + 1.0  # an ACK timeout, like a node's
            while self.unacked and time.monotonic() < end:
                time.sleep(0.02)
                self.process()
            if not self.unacked:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.unacked)} records never ACKed")
            self.resend()


def scrape(port: int) -> dict[str, float]:
    """Prometheus text from the gateway's /metrics, as {'name{labels}': value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def wait_metric(port: int, key: str, at_least: float, timeout: float = 30) -> dict[str, float]:
    """Scrape until metric `key` is at least `at_least`; the whole scrape then."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(port)
        if m.get(key, 0) >= at_least:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} = {m.get(key)}, wanted >= {at_least}")
        time.sleep(0.2)


class CuttableProxy:
    """A TCP forwarder to the broker that a test can cut (an outage) and restore; while
    `stall` is set, it accepts connections and forwards nothing (a broker that never
    answers CONNECT)."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.stall = False
        self.stalled = 0
        self.target = target_port
        self.port = free_port()
        self._threading = threading
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self._listener = ls
        self._threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            if self.stall:
                with self._lock:
                    self._conns.append(c)
                    self.stalled += 1
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), 5)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes a thread blocked in accept()
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.cut()
