"""A big batch never makes a record that cannot be sent: records are sealed at the frame
size (under the real micropython, -X heapsize=96k)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from nodeproc import run
from peer import DEVICE_SEED, provision, public_key
from rfc8428 import resolve

from gateway.protocol import MAX_FRAME, decode_record_payload, verify1

PUB = public_key(DEVICE_SEED)
MAX_BODY = MAX_FRAME - 5  # a RECORD frame: type byte + body + CRC-32
SENSORS = ("temp", "pressure", "humidity", "battery")
SYS = ("sys/heap", "sys/uptime", "sys/reset", "sys/linkerr", "sys/dropped")


def test_batch_64_is_sealed_at_the_frame_size(tmp_path: Path) -> None:
    provision(tmp_path, batch=64)  # 64 samples x 4 readings would be a ~5 KB record
    out = run("bigbatch.py", flash=tmp_path, heap="96k").splitlines()
    records = [bytes.fromhex(line.split()[1]) for line in out if line.startswith("REC ")]
    assert out[-1] == "OVERSIZE 0 BUDGET 785"  # 1019 - 224 - len("esp32-test")
    samples = []
    for i, raw in enumerate(records):
        assert len(raw) <= MAX_BODY
        payload = decode_record_payload(verify1(PUB, raw)[1])
        # names as any RFC 8428 reader resolves them (a series may be one bn/bu run)
        names = Counter(name for name, *_ in resolve(payload.pack))
        n = names["esp32-test/temp"]
        want = {f"esp32-test/{s}": n for s in SENSORS} | {f"esp32-test/{s}": 1 for s in SYS}
        if i == 0:  # the first record of a boot says the firmware version (sys/fw)
            want["esp32-test/sys/fw"] = 1
        assert names == want
        samples.append(n)
    # 41 samples, none lost or repeated, in records as full as the frame allows
    assert sum(samples) == 41
    assert samples == [6, 7, 7, 7, 7, 7]  # the first also holds sys/fw (96 bytes kept for it)
    seqs = [decode_record_payload(verify1(PUB, raw)[1]).seq for raw in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_record_that_finds_no_heap_is_counted_and_the_node_goes_on(tmp_path: Path) -> None:
    """A MemoryError while a record is signed (a transfer boot's heap, cut up) does not
    end the sampler (a crash per transfer boot would walk into safe mode): the record is
    not made, its seq is a gap, sys/dropped says 1, and the next record carries the
    notes (sys/fw) that the lost one would have."""
    provision(tmp_path)
    out = run("sealoom.py", flash=tmp_path, heap="96k").splitlines()
    assert out[-1] == "DROPPED 1 SAMPLES 0"
    records = [bytes.fromhex(line.split()[1]) for line in out if line.startswith("REC ")]
    assert len(records) == 1
    payload = decode_record_payload(verify1(PUB, records[0])[1])
    values = {name: value for name, _, value, _ in resolve(payload.pack)}
    assert values["esp32-test/sys/dropped"] == 1
    assert "esp32-test/sys/fw" in values
    assert payload.seq == 2  # seq 1 was the record not made
