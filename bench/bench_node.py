"""Node application benchmark on the MicroPython unix port (prints figures; not a test).

    python bench/bench_node.py

Runs the real node app (firmware compiled to .mpy as the emulator runs it, emulated HAL
with the BME280 model) in the real `micropython` binary, with a provisioned temporary
flash folder, and prints:
- heap in use after boot (all modules imported, Node built, gc.collect()),
- peak heap: the smallest `-X heapsize` (8 KiB steps) in which the node boots and
  creates 10 signed records (sample + sign + flash append), the figure to compare with
  an ESP32's free heap,
- CPU ms per record (sample of 4 readings + 5 health readings, CBOR, Ed25519 sign,
  flash append), median over 20 records, batch 1.
The unix port is 64-bit: heap figures are an upper bound of an ESP32's (32-bit), and
times are the host CPU's (an ESP32 at 240 MHz is one to two orders slower).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.mpy import compile_lib  # noqa: E402
from emulator.ptys import micropython  # noqa: E402

SCRIPT = """
import gc, sys, time
from citysense import frame
enc, dec = frame.Encoder(), frame.Decoder()
from citysense import app
node = app.Node(enc, dec)
node.setup_sensors()
gc.collect()
print("BOOT", gc.mem_alloc())
times = []
for i in range(int(sys.argv[1])):
    t = time.ticks_us()
    node.sample()
    times.append(time.ticks_diff(time.ticks_us(), t))
    gc.collect()
times.sort()
print("MS", times[len(times) // 2] / 1000)
"""


def run(lib: Path, flash: Path, heap: str, n: int) -> subprocess.CompletedProcess[str]:
    for sub in ("state", "data"):
        shutil.rmtree(flash / sub, ignore_errors=True)
    env = dict(os.environ, MICROPYPATH=f".frozen:{lib}", CITYSENSE_UID="a1b2c3d4e5f6")
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heap}", "-c", SCRIPT, str(n)],
        cwd=str(flash),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        lib = compile_lib(REPO / "firmware" / "lib", Path(tmp) / "lib")
        flash = Path(tmp) / "flash"
        (flash / "config").mkdir(parents=True)
        cfg = {
            "device_id": "esp32-bench",
            "interval_s": 1,
            "batch": 1,
            "sensors": ["bme280", "battery"],
        }
        (flash / "config" / "device.json").write_text(json.dumps(cfg))
        (flash / "config" / "device.key").write_bytes(bytes(range(32)))
        (flash / "config" / "operator.pub").write_bytes(bytes(32))
        big = run(lib, flash, "1m", 20)
        if big.returncode != 0:
            print(f"bench_node: the node failed: {big.stderr.strip()}", file=sys.stderr)
            return 1
        lines = [line.split() for line in big.stdout.splitlines()]
        fig = {w[0]: w[1] for w in lines if w[0] in ("BOOT", "MS")}
        smallest = None
        for kib in range(64, 257, 8):
            if run(lib, flash, f"{kib}k", 10).returncode == 0:
                smallest = kib
                break
        print("node app on the MicroPython unix port (64-bit), firmware as .mpy")
        print(f"  heap in use after boot:            {int(fig['BOOT']) / 1024:.1f} KiB")
        print(f"  peak heap (smallest -X heapsize):  {smallest} KiB")
        print(f"  CPU per record (batch 1, median):  {float(fig['MS']):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
