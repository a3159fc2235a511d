"""The real node app's link against a scripted gateway peer over a pty."""

from __future__ import annotations

import time

import cbor2
import pytest
from peer import DEVICE_SEED, NodeProc, public_key

from gateway.protocol import (
    FrameType,
    NackReason,
    decode_hello,
    decode_record_payload,
    encode_ack,
    encode_nack,
    encode_time,
    verify1,
)

PUB = public_key(DEVICE_SEED)
SKIP_HELLO = (FrameType.HELLO,)


def record(body: bytes) -> tuple[int, int]:
    kid, payload = verify1(PUB, body)
    assert kid == b"esp32-test"
    rec = decode_record_payload(payload)
    return rec.seq, rec.time_base


def test_hello_first_then_records_and_ack_deletes(node: NodeProc) -> None:
    hello = decode_hello(node.peer.expect(FrameType.HELLO))
    assert (hello.device_id, hello.boot_count, hello.reset_cause) == ("esp32-test", 1, "power-on")
    assert hello.problem is None
    assert record(node.peer.expect(FrameType.RECORD))[0] == 1
    node.peer.send(FrameType.ACK, encode_ack(1))
    # stop-and-wait: until 2 is ACKed only 2 goes out (retransmitted after the rto),
    # even once 3 exists (docs/protocol.md 4.2)
    seqs = [record(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO))[0] for _ in range(2)]
    assert seqs == [2, 2]
    node.peer.send(FrameType.ACK, encode_ack(2))
    assert record(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO))[0] == 3
    node.peer.send(FrameType.ACK, encode_ack(3))
    deadline = time.monotonic() + 20
    while {"ev": "ack", "seq": 3} not in node.events(0.2):
        assert time.monotonic() < deadline
    assert {"ev": "ack", "seq": 1} in node.events()
    # silence: what is retransmitted starts after the ACKed ones
    t, body = node.peer.next_frame()
    while t != FrameType.RECORD:
        t, body = node.peer.next_frame()
    assert record(body)[0] >= 4


def test_retransmit_after_silence_goes_back_with_hello(node: NodeProc) -> None:
    node.peer.expect(FrameType.HELLO)
    first = record(node.peer.expect(FrameType.RECORD))[0]
    # no answer: after the timeout the node says HELLO again and resends from seq 1
    node.peer.expect(FrameType.HELLO, skip=(FrameType.RECORD,))
    assert record(node.peer.expect(FrameType.RECORD))[0] == first == 1


def test_nack_busy_backs_off_then_resends(node: NodeProc) -> None:
    node.peer.expect(FrameType.HELLO)
    assert record(node.peer.expect(FrameType.RECORD))[0] == 1
    node.peer.send(FrameType.NACK, encode_nack(1, NackReason.BUSY))
    # the next record frame is seq 1 again (kept, resent after the back-off)
    assert record(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO))[0] == 1
    node.peer.send(FrameType.ACK, encode_ack(1))
    assert record(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO))[0] == 2


def test_nack_replay_counts_as_delivered(node: NodeProc) -> None:
    node.peer.expect(FrameType.HELLO)
    assert record(node.peer.expect(FrameType.RECORD))[0] == 1
    node.peer.send(FrameType.NACK, encode_nack(1, NackReason.REPLAY))
    assert record(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO))[0] == 2


def test_resync_after_garbage(node: NodeProc) -> None:
    node.peer.expect(FrameType.HELLO)
    assert record(node.peer.expect(FrameType.RECORD))[0] == 1
    # line noise, an overlong run and a torn frame: the first ACK after it is glued to the
    # torn bytes and lost; decoding resyncs at its 0x00 and the second ACK is taken
    node.peer.write_raw(b"\x13\x37\xff\x00" + b"\x55" * 2000 + b"\x00\x07\x01\x02")
    node.peer.send(FrameType.ACK, encode_ack(1))
    node.peer.send(FrameType.ACK, encode_ack(1))
    deadline = time.monotonic() + 20
    while {"ev": "ack", "seq": 1} not in node.events(0.2):
        assert time.monotonic() < deadline, "ACK after noise not taken"


def test_time_switches_the_time_base(node: NodeProc) -> None:
    node.peer.expect(FrameType.HELLO)
    seq, base = record(node.peer.expect(FrameType.RECORD))
    assert base == 1
    unix_ms = 1_790_000_000_000
    node.peer.send(FrameType.TIME, encode_time(unix_ms))
    node.peer.send(FrameType.ACK, encode_ack(seq))
    deadline = time.monotonic() + 20
    while True:
        body = node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO)
        seq, base = record(body)
        node.peer.send(FrameType.ACK, encode_ack(seq))
        if base == 0:
            break
        assert time.monotonic() < deadline
    pack = decode_record_payload(verify1(PUB, body)[1]).pack
    bt = pack[0][-3]
    assert unix_ms // 1000 <= bt < unix_ms // 1000 + 30
    # and the node set its RTC (hal.set_time; the emulated HAL reports it) once
    rtc = [e["unix_s"] for e in node.events() if e["ev"] == "rtc"]
    assert len(rtc) == 1 and unix_ms // 1000 <= rtc[0] < unix_ms // 1000 + 30
    assert pack[0][-2] == "esp32-test/"
    names = [r.get(0) for r in pack]
    assert names[:4] == ["temp", "pressure", "humidity", "battery"]
    assert names[-5:] == ["sys/heap", "sys/uptime", "sys/reset", "sys/linkerr", "sys/dropped"]
    assert cbor2.loads(cbor2.dumps(pack)) == pack


def test_forged_ack_deletes_nothing(node: NodeProc) -> None:
    """An ACK above the highest seq the node has sent covers records never sent: ignored
    (counted in sys/linkerr). Before, ACK(2^64-1) emptied the whole flash buffer."""
    node.peer.expect(FrameType.HELLO)
    assert record(node.peer.expect(FrameType.RECORD))[0] == 1
    deadline = time.monotonic() + 20
    while max((e["seq"] for e in node.events(0.2) if e["ev"] == "record"), default=0) < 3:
        assert time.monotonic() < deadline, "the node made no 3 records"
    node.peer.send(FrameType.ACK, encode_ack(2**64 - 1))  # a wire attacker's ACK
    node.peer.send(FrameType.ACK, encode_ack(2))  # above seq 1, the only one sent
    got: list[int] = []
    body = b""
    while len(got) < 5:  # every record is still there, in order, each sent until ACKed
        body = node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO)
        seq = record(body)[0]
        if not got or got[-1] != seq:
            got.append(seq)
        node.peer.send(FrameType.ACK, encode_ack(seq))
    assert got == [1, 2, 3, 4, 5]
    acks = [e["seq"] for e in node.events(0.2) if e["ev"] == "ack"]
    assert acks[:4] == [1, 2, 3, 4] and 2**64 - 1 not in acks
    pack = decode_record_payload(verify1(PUB, body)[1]).pack
    assert next(r[2] for r in pack if r.get(0) == "sys/linkerr") >= 2


@pytest.mark.parametrize("reason", [NackReason.BAD_SIGNATURE, NackReason.SEQ_AHEAD])
def test_nack_error_keeps_the_record_and_counts_it(node: NodeProc, reason: NackReason) -> None:
    """Every refusal but `replay` keeps the record: `seq-ahead` (the gateway finds the seq
    implausibly high, gateway/admission.py) must never make the node delete it."""
    node.peer.expect(FrameType.HELLO)
    assert record(node.peer.expect(FrameType.RECORD))[0] == 1
    node.peer.send(FrameType.NACK, encode_nack(1, reason))
    # kept, not deleted: after the back-off seq 1 comes again
    assert record(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO))[0] == 1
    assert {"ev": "ack", "seq": 1} not in node.events()
    node.peer.send(FrameType.ACK, encode_ack(1))
    while True:  # a later record reports the error NACK in sys/linkerr
        body = node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO)
        seq = record(body)[0]
        node.peer.send(FrameType.ACK, encode_ack(seq))
        if seq >= 3:
            break
    pack = decode_record_payload(verify1(PUB, body)[1]).pack
    linkerr = next(r[2] for r in pack if r.get(0) == "sys/linkerr")
    assert linkerr >= 1
