"""Faults: broker outage, kill -9 at random moments, hot-plug, 10,000 fuzzed frames."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gwsupport import (
    CuttableProxy,
    Node,
    NodeSim,
    Pty,
    Subscriber,
    make_node,
    mosquitto,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import free_port

from gateway.protocol import (
    MAX_FRAME,
    CommandResult,
    FrameType,
    ProtocolError,
    decode_ack,
    decode_frame,
    encode_frame,
    sign1,
    sign_command_result,
)
from gateway.queue import stored_keys

OUTAGE_S = 6
"""6 s spans several reconnect attempts (backoff 0.5, 1, 2, 4 s) and keeps this unit
test fast; the issue's 30 s with the real Mosquitto (mTLS, ACL) stopped and restarted
is hil_tests/test_scenarios.py::test_2_broker_outage_and_backpressure. The outage here
cuts the gateway's path to the broker (every connection dropped, the port refusing)
while the broker and the consumer stay up, so that what the consumer sees is exactly
what reached the broker."""


def first_occurrence_order(pairs: list[tuple[str, int]]) -> list[int]:
    seen: set[int] = set()
    out = []
    for _, seq in pairs:
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


@contextmanager
def gateway_behind_proxy(
    tmp_path: Path, node: Node, topic: str
) -> Iterator[tuple[CuttableProxy, Pty, Subscriber, Path]]:
    """A broker, the gateway reaching it through a cuttable proxy (port open and uplink
    connected), a pty for `node` and a consumer of `topic` connected to the broker
    directly; yields (proxy, pty, consumer, gateway log) and stops all of it."""
    with mosquitto(tmp_path / "broker") as broker:
        proxy = CuttableProxy(broker.port)
        cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{proxy.port}"')
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, topic)
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=port-open")
            wait_log(log, "event=uplink-connected")
            yield proxy, pty, sub, log
        finally:
            sub.close()
            stop(gw)
            pty.close()
            proxy.close()


def test_broker_outage_loses_nothing_keeps_order(tmp_path: Path) -> None:
    node = make_node("esp32-0000000000b1")
    topic = "citysense/+/+/+/records"
    with gateway_behind_proxy(tmp_path, node, topic) as (proxy, pty, sub, log):
        sim = NodeSim(node, pty)
        for _ in range(50):
            sim.new_record()
        sim.settle()
        sub.wait_count("/records", 50)
        proxy.cut()
        wait_log(log, "event=uplink-lost")
        wait_log(log, "Connection refused")  # the outage is real
        t_end = time.monotonic() + OUTAGE_S
        while time.monotonic() < t_end:  # the node keeps reporting; the queue holds it
            sim.new_record()
            time.sleep(0.05)
            sim.process()
        sim.settle()
        assert sim.next_seq - 1 > 80
        proxy.restore()
        total = sim.next_seq - 1
        deadline = time.monotonic() + 60
        while len(set(sub.records())) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        got = sub.records()
        assert {s for _, s in got} == set(range(1, total + 1))
        assert first_occurrence_order(got) == list(range(1, total + 1))
        assert sim.nacks == []


def test_command_results_during_an_outage_go_up_after_it(tmp_path: Path) -> None:
    """COMMAND_RESULTs a node sends while the broker is unreachable are held and
    published, in order and byte for byte, once the uplink is back."""
    node = make_node("esp32-0000000000b2")
    topic = "citysense/+/+/+/command-results"
    with gateway_behind_proxy(tmp_path, node, topic) as (proxy, pty, sub, log):
        proxy.cut()
        wait_log(log, "event=uplink-lost")
        kid = node.device_id.encode()
        results = [
            sign_command_result(node.seed, kid, CommandResult(cid, True, f"done {cid}"))
            for cid in (1, 2, 3)
        ]
        for body in results:
            pty.write(encode_frame(FrameType.COMMAND_RESULT, body))
        deadline = time.monotonic() + 30
        while log.read_text().count("event=command-result ") < 3:
            assert time.monotonic() < deadline, "the gateway did not take the results"
            time.sleep(0.05)
        assert sub.snapshot() == []  # nothing went up during the outage
        proxy.restore()
        got = sub.wait_count("/command-results", 3, timeout=60)
        expect = f"citysense/v1/gw-test/{node.device_id}/command-results"
        assert [(t, p) for t, p, _ in got] == [(expect, body) for body in results]


def test_kill9_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(1234)
    node = make_node("esp32-0000000000c1")
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, "citysense/+/+/+/records")
        log = tmp_path / "gw.log"
        sim = NodeSim(node, pty)
        db = tmp_path / "state" / "queue.sqlite3"
        gw = None
        try:
            for i in range(20):
                gw = start_gateway(cfg, log)
                wait_log(log, "event=port-open", count=i + 1)
                sim.resend()  # what a node does after a gateway restart: resend its buffer
                t_kill = time.monotonic() + rng.uniform(0.05, 0.8)
                while time.monotonic() < t_kill:
                    sim.new_record()
                    sim.process()
                    time.sleep(0.002)
                gw.send_signal(signal.SIGKILL)
                gw.wait(10)
                sim.process()
                conn = sqlite3.connect(db)
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                conn.close()
                keys = stored_keys(db)
                assert len(keys) == len(set(keys))  # no record stored twice
            acked_before_final = set(sim.acked)
            gw = start_gateway(cfg, log)
            wait_log(log, "event=port-open", count=21)
            sim.settle(60)
            total = sim.next_seq - 1
            deadline = time.monotonic() + 60
            while len(set(sub.records())) < total and time.monotonic() < deadline:
                time.sleep(0.1)
            arrived = {s for _, s in sub.records()}
            assert acked_before_final <= arrived  # every ACKed record reached the broker
            assert arrived == set(range(1, total + 1))
            assert len(acked_before_final) > 100
            assert [n for n in sim.nacks if n[1] != "replay"] == []
        finally:
            sub.close()
            if gw is not None:
                stop(gw)
            pty.close()


def fuzz_segments(rng: random.Random, node_seed: bytes, n: int) -> list[bytes]:
    """n delimited segments, each one bad frame or a frame with a bad body."""
    out: list[bytes] = []
    stranger = os.urandom(32)
    for i in range(n):
        kind = i % 8
        if kind == 0:  # random non-zero bytes
            seg = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 60)))
        elif kind == 1:  # good frame, one flipped bit
            raw = bytearray(encode_frame(FrameType.RECORD, rng.randbytes(40))[:-1])
            pos = rng.randrange(len(raw))
            raw[pos] ^= 1 << rng.randrange(8)
            seg = bytes(b or 1 for b in raw)
        elif kind == 2:  # unknown frame type
            seg = encode_frame(rng.randrange(0x0B, 256), rng.randbytes(10))[:-1]  # above OTA_CHUNK
        elif kind == 3:  # oversize
            seg = bytes(rng.randrange(1, 256) for _ in range(MAX_FRAME * 2))
        elif kind == 4:  # RECORD with garbage CBOR
            seg = encode_frame(FrameType.RECORD, rng.randbytes(rng.randrange(1, 80)))[:-1]
        elif kind == 5:  # RECORD signed by a stranger under an unknown kid
            seg = encode_frame(FrameType.RECORD, sign1(stranger, b"esp32-nobody", b"\xa0"))[:-1]
        elif kind == 6:  # RECORD forged under the enrolled kid
            seg = encode_frame(FrameType.RECORD, sign1(stranger, b"esp32-fuzz", b"\xa0"))[:-1]
        else:  # HELLO with a garbage body, or too short
            seg = encode_frame(FrameType.HELLO, rng.randbytes(5))[:-1] if i % 16 else b"\x01\x01"
        out.append(seg + b"\x00")
    return out


def expected_reason(seg: bytes) -> str:
    try:
        frame = decode_frame(seg[:-1])
    except ProtocolError as exc:
        return f"error:{exc.reason}"
    return f"frame:{frame.type.name}"


def test_fuzzed_frames_and_hotplug(tmp_path: Path) -> None:
    rng = random.Random(99)
    node = make_node("esp32-fuzz")
    metrics_port = free_port()
    segments = fuzz_segments(rng, node.seed, 10_000)
    expected: dict[str, int] = {}
    for seg in segments:
        key = expected_reason(seg)
        expected[key] = expected.get(key, 0) + 1
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(
            tmp_path / "gw.toml",
            url=f'"mqtt://127.0.0.1:{broker.port}"',
            listen=f'"127.0.0.1:{metrics_port}"',
        )
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        try:
            wait_log(log, "event=port-open")
            blob = b"".join(segments)
            for off in range(0, len(blob), 4096):
                pty.write(blob[off : off + 4096])
                pty.poll()  # keep the NACK direction drained
            # the port spent its budget of unverifiable work (gateway/pipeline.py): like
            # a node, resend the good record until it is answered
            deadline = time.monotonic() + 60
            while not any(f.type == FrameType.ACK and decode_ack(f.body) == 1 for f in pty.frames):
                assert time.monotonic() < deadline, "the good record was never ACKed"
                pty.write(node.record_frame(1))
                time.sleep(0.5)
                pty.poll()
            m = scrape(metrics_port)
            counted: dict[str, int] = {}
            for key, value in m.items():
                if key.startswith("citysense_frame_errors_total{"):
                    counted["error:" + key.split('"')[1]] = int(value)
                elif key.startswith("citysense_frames_total{"):
                    counted["frame:" + key.split('"')[1]] = int(value)
            limited = counted.pop("error:rate-limited", 0)
            resent = counted["frame:RECORD"] - expected["frame:RECORD"]
            assert resent >= 1
            counted["frame:RECORD"] -= resent  # the good record, sent until answered
            assert {k: v for k, v in counted.items() if v} == expected
            rejected = {
                k.split('"')[1]: int(v)
                for k, v in m.items()
                if k.startswith("citysense_records_rejected_total{")
            }
            hello_errors = sum(
                int(v) for k, v in m.items() if k.startswith("citysense_hello_errors_total{")
            )
            # every bad RECORD and HELLO was either refused or dropped unread, none stored;
            # of the good resends one was stored, the rest dropped unread or duplicates
            assert limited > 0
            assert m["citysense_records_accepted_total"] == 1
            dup = int(m["citysense_records_duplicate_total"])
            assert sum(rejected.values()) + hello_errors + limited - (resent - 1 - dup) == (
                expected["frame:RECORD"] + expected["frame:HELLO"]
            )
            assert set(rejected) <= {"unknown-device", "bad-signature", "malformed"}
            assert gw.poll() is None

            # hot-plug: the port vanishes (unplug), comes back on the same name (replug)
            pty.close()
            wait_log(log, "event=port-")  # lost or closed
            time.sleep(0.5)
            pty2 = Pty(tmp_path / "tty0")
            try:
                wait_log(log, "event=port-open", count=2)
                pty2.write(node.record_frame(2))
                pty2.wait_for(
                    lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 2 for f in fs)
                )
            finally:
                pty2.close()
        finally:
            stop(gw)
            pty.close()
