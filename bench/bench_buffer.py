"""Flash buffer: the cost of emptying data/ when an ACK leaves nothing pending.

    python bench/bench_buffer.py [RECORDS]

The firmware's Buffer deletes every segment, the active one too, once nothing is pending
(so a drained node's flash holds no record: what a re-key must account for). In steady
state every record is ACKed before the next, so each record then costs a segment file
created, appended to and deleted. The baseline, measured in the same run with the same
code, lets the ACK lag one record behind (one always pending), so the active segment
stays open and records are plain appends to it (the file pattern before the change).
Both run the real `citysense.buffer` under the MicroPython unix port on this machine's
filesystem (not the ESP32's LittleFS: the figures compare CPU and syscalls, not flash
wear) and print the median microseconds per append + ACK of a 300-byte record.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.ptys import micropython  # noqa: E402

SCRIPT = """
import sys, time
from citysense.buffer import Buffer
n = int(sys.argv[1])
keep = sys.argv[2] == "keep"
b = Buffer()
b.open()
payload = bytes(300)
b.append(1, payload)
times = []
for seq in range(2, n + 2):
    t = time.ticks_us()
    b.append(seq, payload)
    # keep: the ACK lags one record (one always pending, the segment stays open);
    # drain: the ACK covers the record just appended (nothing left pending)
    b.ack(seq - 1 if keep else seq)
    times.append(time.ticks_diff(time.ticks_us(), t))
times.sort()
print(times[len(times) // 2])
"""


def run(mode: str, records: int) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-buffer-") as tmp:
        script = Path(tmp) / "bench.py"
        script.write_text(SCRIPT)
        res = subprocess.run(
            [micropython(), "-X", "heapsize=2m", str(script), str(records), mode],
            cwd=tmp,
            env={"MICROPYPATH": str(REPO / "firmware" / "lib")},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return int(res.stdout.strip())


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    base = run("keep", records)
    drained = run("drain", records)
    print(f"records: {records} of 300 bytes, each appended then ACKed (median)")
    print(f"baseline, appends to one open segment:     {base} us")
    print(f"drained, segment created and deleted each: {drained} us ({drained / base:.1f}x)")


if __name__ == "__main__":
    main()
