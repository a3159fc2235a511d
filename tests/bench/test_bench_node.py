"""The benchmark's scripted citysense node (bench/compare/sources.py `PtyNode`) follows the
firmware link: stop-and-wait, retransmit on timeout, a record counts as acknowledged only
when the node deletes it (its own ACK, or NACK replay), NACK busy/errors keep it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

from gateway.protocol import (
    Frame,
    FrameDecoder,
    FrameType,
    NackReason,
    decode_record_payload,
    encode_ack,
    encode_frame,
    encode_nack,
    parse_sign1,
)

sys.path.insert(0, str(REPO / "bench" / "compare"))
import sources


class Peer:
    """The gateway's end of the node's pty, driven by the test (no gateway process)."""

    def __init__(self, node: sources.PtyNode) -> None:
        self.node = node
        self.fd = os.open(os.ttyname(node.slave), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.decoder = FrameDecoder()

    def step(self, now_ms: int) -> list[Frame]:
        """Run the node at `now_ms`, return the frames it wrote."""
        self.node.read(now_ms)
        self.node.pump(now_ms)
        self.node.flush()
        try:
            self.decoder.feed(os.read(self.fd, 65536))
        except BlockingIOError:
            pass
        out = []
        while (f := self.decoder.next_frame()) is not None:
            out.append(f)
        return out

    def records(self, now_ms: int) -> list[int]:
        return [
            decode_record_payload(parse_sign1(f.body).payload).seq
            for f in self.step(now_ms)
            if f.type == FrameType.RECORD
        ]

    def send(self, ftype: FrameType, body: bytes) -> None:
        os.write(self.fd, encode_frame(ftype, body))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[sources.PtyNode, Peer, sources.AckLog]]:
    log = sources.AckLog(tmp_path)
    node = sources.PtyNode(0, tmp_path, log)
    peer = Peer(node)
    yield node, peer, log
    os.close(peer.fd)
    node.close()
    log.close()


def acked(tmp_path: Path, log: sources.AckLog) -> list[int]:
    log.status(force=True)
    return [int(line.split()[1]) for line in (tmp_path / "acks.log").read_text().splitlines()]


def test_stop_and_wait_own_ack_and_retransmit(
    env: tuple[sources.PtyNode, Peer, sources.AckLog], tmp_path: Path
) -> None:
    node, peer, log = env
    for _ in range(3):
        node.tick()
    first = peer.step(0)
    assert [f.type for f in first] == [FrameType.HELLO, FrameType.RECORD]
    assert peer.records(100) == []  # 2 is not sent while 1 is unacknowledged
    # no ACK: after the retransmit timeout (2 s + jitter <= 25 %) HELLO and 1 again
    assert peer.records(1900) == []
    again = peer.step(2600)
    assert [f.type for f in again] == [FrameType.HELLO, FrameType.RECORD]
    assert again[1].body == first[1].body
    peer.send(FrameType.ACK, encode_ack(1))
    assert peer.records(2700) == [2]
    assert acked(tmp_path, log) == [1]
    peer.send(FrameType.ACK, encode_ack(2))
    assert peer.records(2800) == [3]
    assert acked(tmp_path, log) == [1, 2]
    assert node.fw.retransmits == 1


def test_busy_keeps_the_record_replay_deletes_it(
    env: tuple[sources.PtyNode, Peer, sources.AckLog], tmp_path: Path
) -> None:
    node, peer, log = env
    node.tick()
    node.tick()
    assert peer.records(0) == [1]
    peer.send(FrameType.NACK, encode_nack(1, NackReason.BUSY))
    assert peer.records(100) == []  # held back (1 s + jitter)
    assert peer.records(1400) == [1]  # the same record again
    assert acked(tmp_path, log) == []
    peer.send(FrameType.NACK, encode_nack(1, NackReason.REPLAY))
    assert peer.records(1500) == [2]  # replay: the firmware treats it as an ACK of 1
    assert acked(tmp_path, log) == [1]
    peer.send(FrameType.NACK, encode_nack(2, NackReason.BAD_SIGNATURE))
    assert peer.records(1600) == []
    assert peer.records(20000) == []  # error NACK: held >= 30 s, record kept
    assert peer.records(40000) == [2]
    assert acked(tmp_path, log) == [1]
    status = (tmp_path / "status.json").read_text()
    assert '"nack_busy": 1' in status and '"acked_by_nack_replay": 1' in status


def test_ack_above_what_was_sent_deletes_nothing(
    env: tuple[sources.PtyNode, Peer, sources.AckLog], tmp_path: Path
) -> None:
    node, peer, log = env
    for _ in range(3):
        node.tick()
    assert peer.records(0) == [1]
    # the firmware link ignores an ACK above the highest seq it has sent (forged or
    # stale: it would cover records never sent), counting it, and deletes nothing
    peer.send(FrameType.ACK, encode_ack(2))
    assert peer.records(100) == []
    assert (node.fw.bad_acks, len(node.buffer)) == (1, 3)
    peer.send(FrameType.ACK, encode_ack(1))
    assert peer.records(200) == [2]
    assert acked(tmp_path, log) == [1]
    assert "acked_never_sent" not in log.other
