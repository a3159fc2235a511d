"""seqs above 2**32 on the node (a node enrolled with a seq floor: Unix ms at enrollment),
under the real micropython: flash buffer, seq store, link core, and the whole node app
against a scripted gateway peer."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from nodeproc import run
from peer import DEVICE_SEED, NodeProc, provision, public_key

from citysense_formats import state_seq
from gateway.protocol import (
    FrameType,
    NackReason,
    decode_hello,
    decode_record_payload,
    encode_ack,
    encode_nack,
    verify1,
)

FLOOR = 1764047000123  # Unix ms, as `citysense-provision enroll` leaves /state/seq
PUB = public_key(DEVICE_SEED)
SKIP_HELLO = (FrameType.HELLO,)


def write_seq_state(flash: Path, value: int) -> None:
    (flash / "state").mkdir(exist_ok=True)
    (flash / "state" / "seq").write_bytes(state_seq.encode(value))


def read_seq_state(flash: Path) -> int:
    return state_seq.decode((flash / "state" / "seq").read_bytes())


def oldest_buffered(flash: Path) -> int:
    """The seq of the first entry of the oldest segment in the node's flash buffer."""
    raw = sorted((flash / "data").glob("*.seg"))[0].read_bytes()
    assert raw[0] == 0xA6
    return int(struct.unpack_from("<Q", raw, 3)[0])


def seq_of(body: bytes) -> int:
    kid, payload = verify1(PUB, body)
    assert kid == b"esp32-test"
    return decode_record_payload(payload).seq


def test_buffer_seq_store_and_link_above_2_32(tmp_path: Path) -> None:
    out = run("seq64.py", flash=tmp_path, heap="96k").splitlines()
    assert out == [
        # entries of the old u32 format are recovered; new ones are u64
        "LEGACY 2 [5, 6]",
        "REOPEN 8 True True True",
        "INDEX 4 6 8",
        "ACK 5 True 3",
        "TORN True 6",
        # big-int seqs are kept as small offsets: ~2 list slots a pending entry (a big
        # int each would add 64 bytes on this port, ~32 on the ESP32), and the link's
        # lookup every poll allocates nothing
        "HEAP_PER_ENTRY 21 True",
        "POLL_ALLOC 0",
        "SEQ True True True",
        "REBOOT True True",
        # HELLO, then the first record; ACK deletes; NACK replay moves on and is counted
        "SEND [1, 2] True",
        "ACKED 2 True True",
        "REPLAY 1 1 True",
        "DONE 0 True []",
    ]


def test_node_app_continues_at_the_enrolled_floor(flash: Path) -> None:
    provision(flash)
    write_seq_state(flash, FLOOR)
    node = NodeProc(flash)
    try:
        hello = decode_hello(node.peer.expect(FrameType.HELLO))
        assert hello.highest_seq == FLOOR - 1  # nothing created yet
        assert seq_of(node.peer.expect(FrameType.RECORD)) == FLOOR
        assert read_seq_state(flash) == FLOOR + 64  # one block reserved before issuing
        node.peer.send(FrameType.ACK, encode_ack(FLOOR))
        assert seq_of(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO)) == FLOOR + 1
        node.peer.send(FrameType.NACK, encode_nack(FLOOR + 1, NackReason.REPLAY))
        assert seq_of(node.peer.expect(FrameType.RECORD, skip=SKIP_HELLO)) == FLOOR + 2
        events = node.events(0.5)
        assert {"ev": "ack", "seq": FLOOR} in events
        assert {"ev": "record", "seq": FLOOR, "n": 10} in events  # with sys/fw: first of the boot
    finally:
        node.stop()
    # a power cut and a reboot: the rest of the reserved block is skipped. A segment is
    # recovered whole (ACKed entries too: at-least-once, the gateway ACKs a duplicate
    # again), and the buffer deleted its segments when the replay left nothing pending:
    # the oldest entry on flash goes first, FLOOR + 2 when it was made after that NACK
    # (it usually is, 1 s later), FLOOR when before (its segment kept FLOOR's entry)
    first = oldest_buffered(flash)
    assert first in (FLOOR, FLOOR + 2)
    node = NodeProc(flash)
    try:
        hello = decode_hello(node.peer.expect(FrameType.HELLO))
        assert hello.highest_seq == FLOOR + 63
        assert seq_of(node.peer.expect(FrameType.RECORD)) == first
        deadline = time.monotonic() + 20
        created: list[int] = []
        while not created:
            assert time.monotonic() < deadline, "no record created after the reboot"
            created = [e["seq"] for e in node.events(0.2) if e["ev"] == "record"]
        assert created[0] == FLOOR + 64
    finally:
        node.stop()
