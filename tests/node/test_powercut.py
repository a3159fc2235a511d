"""Power cuts (SIGKILL of the real micropython) at random points of flash writes."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nodeproc import popen

from citysense_formats import state_seq

# Half of the lanes start from a seq floor as enrollment writes it, lifted above 2**62 so
# that the 64-bit unix port handles the seqs as big ints, as the ESP32 does above 2**30.
BIG_FLOOR = 2**62 + 1764047000123


def _start_at(flash: Path, floor: int) -> None:
    """/state/seq as `citysense-provision enroll` leaves it: u64 LE + crc32 LE."""
    if floor:
        (flash / "state").mkdir()
        (flash / "state" / "seq").write_bytes(state_seq.encode(floor))


def _cut_after(proc: subprocess.Popen[bytes], n_lines: int, rng: random.Random) -> list[str]:
    """Let the node boot and append `n_lines` entries, wait a random moment, SIGKILL it.
    Returns the whole lines it printed (a line cut short by the kill proves nothing)."""
    assert proc.stdout is not None and proc.stderr is not None
    buf = b""
    deadline = time.monotonic() + 30
    fd = proc.stdout.fileno()
    try:
        while buf.count(b"\nA ") + buf.startswith(b"A ") < n_lines:
            assert time.monotonic() < deadline, "no progress"
            if not select.select([fd], [], [], 1.0)[0]:
                assert proc.poll() is None, proc.stderr.read()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
        time.sleep(rng.random() * 0.004)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        buf += proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()
    return [line.decode() for line in buf.split(b"\n")[:-1]]


def _buffer_lane(flash: Path, trials: int, seed: int, floor: int = 0) -> int:
    flash.mkdir()
    _start_at(flash, floor)
    rng = random.Random(seed)
    committed: list[int] = []  # seqs whose append returned, in order
    acked = 0
    all_taken: list[int] = []  # every seq seen in use, in order
    known: set[int] = set()
    for trial in range(trials):
        proc = popen("powercut.py", "buffer", flash=flash)
        lines = _cut_after(proc, rng.randint(0, 12), rng)
        if not lines:
            continue  # cut during recovery: the next boot checks the same state
        report = lines[0].split()
        assert report[0] == "R", lines[:12]
        assert report[1] == "0", f"trial {trial}: corrupt entries recovered"
        recovered = [int(s) for s in report[2:]]
        assert recovered == sorted(set(recovered))
        # every committed entry not yet acked is there; at most one extra (the one in flight)
        want = [s for s in committed if s > acked]
        assert set(want) <= set(recovered), f"trial {trial}: lost {set(want) - set(recovered)}"
        extra = [s for s in recovered if s not in known]
        assert len(extra) <= 1, f"trial {trial}: unexpected entries {extra}"
        assert not all_taken or all(s > all_taken[-1] for s in extra)
        known.update(extra)
        all_taken.extend(extra)
        for line in lines[1:]:
            tag, value = line.split()
            if tag == "K":  # from here on entries <= the ACK may be gone
                acked = int(value)
            elif tag == "A":
                seq = int(value)
                assert not all_taken or seq > all_taken[-1], f"seq {seq} reused"
                all_taken.append(seq)
                committed.append(seq)
                known.add(seq)
    assert not committed or committed[0] >= floor
    return len(committed)


def test_buffer_survives_200_power_cuts(tmp_path: Path) -> None:
    """8 independent flash folders x 25 cuts each, run side by side (wall time)."""
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(_buffer_lane, tmp_path / f"f{i}", 25, 1000 + i, BIG_FLOOR * (i % 2))
            for i in range(8)
        ]
        counts = [f.result(timeout=300) for f in futures]
    assert min(counts) > 25


def _seq_lane(flash: Path, trials: int, seed: int, floor: int = 0) -> int:
    flash.mkdir()
    _start_at(flash, floor)
    rng = random.Random(seed)
    taken: list[int] = []
    for _ in range(trials):
        proc = popen("powercut.py", "seq", flash=flash)
        for line in _cut_after(proc, rng.randint(0, 40), rng):
            seq = int(line.split()[1])
            assert not taken or seq > taken[-1], f"seq {seq} after {taken[-1]}"
            assert seq >= floor
            taken.append(seq)
    return len(taken)


def test_seq_strictly_increasing_over_100_power_cuts(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(_seq_lane, tmp_path / f"f{i}", 25, 7 + i, BIG_FLOOR * (i % 2))
            for i in range(4)
        ]
        counts = [f.result(timeout=300) for f in futures]
    assert min(counts) > 25
