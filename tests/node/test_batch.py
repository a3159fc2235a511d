"""A big batch never makes a record that cannot be sent: records are sealed at the frame
size (under the real micropython, -X heapsize=96k)."""

from __future__ import annotations

from pathlib import Path

from nodeproc import run
from peer import DEVICE_SEED, provision, public_key

from gateway.protocol import MAX_FRAME, decode_record_payload, verify1

PUB = public_key(DEVICE_SEED)
MAX_BODY = MAX_FRAME - 5  # a RECORD frame: type byte + body + CRC-32


def test_batch_64_is_sealed_at_the_frame_size(tmp_path: Path) -> None:
    provision(tmp_path, batch=64)  # 64 samples x 4 readings would be a ~5 KB record
    out = run("bigbatch.py", flash=tmp_path, heap="96k").splitlines()
    records = [bytes.fromhex(line.split()[1]) for line in out if line.startswith("REC ")]
    assert out[-1] == "OVERSIZE 0 BUDGET 785"  # 1019 - 224 - len("esp32-test")
    samples = []
    for raw in records:
        assert len(raw) <= MAX_BODY
        payload = decode_record_payload(verify1(PUB, raw)[1])
        names = [r.get(0) for r in payload.pack]
        assert names[-5:] == ["sys/heap", "sys/uptime", "sys/reset", "sys/linkerr", "sys/dropped"]
        assert names[:-5] == ["temp", "pressure", "humidity", "battery"] * (len(names[:-5]) // 4)
        samples.append(len(names[:-5]) // 4)
    # 41 samples, none lost or repeated, in records as full as the frame allows
    assert sum(samples) == 41
    assert samples == [7, 7, 7, 7, 7, 6]
    seqs = [decode_record_payload(verify1(PUB, raw)[1]).seq for raw in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
