"""Node application benchmark on the MicroPython unix port (prints figures; not a test).

    python bench/bench_node.py

Runs the real node app (firmware compiled to .mpy as the emulator runs it, emulated HAL
with the BME280 model) in the real `micropython` binary, with a provisioned temporary
flash folder, booting as main.py does (frame buffers first, then `citysense.preload`),
and prints:
- heap in use after boot (all modules imported, Node built, sensors open, gc.collect()),
- peak heap of two paths, each the smallest `-X heapsize` (bisected to 1 KiB) in which
  it runs to the end: the sampling path (boot, 10 signed records: sample + sign + flash
  append) and the command path (boot, 3 records, a valid and a forged operator COMMAND
  verified and answered with signed results, 3 more records). These are the figures
  to compare with an ESP32's free heap; the asyncio link on top (tests/node) needs about
  3 KiB more,
- CPU ms per record (sample of 4 readings + 5 health readings, CBOR, Ed25519 sign,
  flash append), median over 20 records, batch 1, and per COMMAND (verify + answer).
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

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from emulator.mpy import compile_lib  # noqa: E402
from emulator.ptys import micropython  # noqa: E402
from gateway.protocol import Command, sign_command  # noqa: E402

OPERATOR_SEED = bytes(range(100, 132))

BOOT = """
import gc, sys, time
from citysense import frame
enc, dec = frame.Encoder(), frame.Decoder()
from citysense import preload
preload.run()
from citysense import app
node = app.Node(enc, dec)
node.setup_sensors()
gc.collect()
print("BOOT", gc.mem_alloc())
n = int(sys.argv[1])
"""

SAMPLING = """
times = []
for i in range(n):
    t = time.ticks_us()
    node.sample()
    times.append(time.ticks_diff(time.ticks_us(), t))
    gc.collect()
times.sort()
print("MS", times[len(times) // 2] / 1000)
"""

COMMANDS = """
good = open("good.cmd", "rb").read()
bad = open("bad.cmd", "rb").read()
for i in range(3):
    node.sample()
node.link.unix_offset = 1764047000000  # as after the gateway's TIME
t = time.ticks_us()
ok = node.commands.handle(good)
print("CMD_MS", time.ticks_diff(time.ticks_us(), t) / 1000)
refused = node.commands.handle(bad)
del ok, refused
for i in range(3):
    node.sample()
print("DONE")
"""


def run(lib: Path, flash: Path, heap: str, script: str, n: int) -> subprocess.CompletedProcess[str]:
    for sub in ("state", "data"):
        shutil.rmtree(flash / sub, ignore_errors=True)
    env = dict(os.environ, MICROPYPATH=f".frozen:{lib}", CITYSENSE_UID="a1b2c3d4e5f6")
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heap}", "-c", script, str(n)],
        cwd=str(flash),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def smallest(lib: Path, flash: Path, script: str, n: int) -> int:
    """The smallest heap in KiB (64..256) in which `script` exits 0."""
    lo, hi = 64, 256
    while lo < hi:
        mid = (lo + hi) // 2
        if run(lib, flash, f"{mid}k", script, n).returncode == 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def provision(flash: Path) -> None:
    (flash / "config").mkdir(parents=True)
    cfg = {"device_id": "esp32-bench", "interval_s": 1, "batch": 1}
    cfg["sensors"] = ["bme280", "battery"]
    (flash / "config" / "device.json").write_text(json.dumps(cfg))
    (flash / "config" / "device.key").write_bytes(bytes(range(32)))
    operator = Ed25519PrivateKey.from_private_bytes(OPERATOR_SEED).public_key()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    (flash / "config" / "operator.pub").write_bytes(operator.public_bytes(*raw))
    far = 2**63  # the bench node gets a clock (node.link.unix_offset) in COMMANDS
    cmd = Command(7, "set_interval", {"interval_s": 30}, "esp32-bench", "*", far)
    good = sign_command(OPERATOR_SEED, cmd)
    (flash / "good.cmd").write_bytes(good)
    (flash / "bad.cmd").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))


def figures(out: str) -> dict[str, str]:
    return {w[0]: w[1] for w in (line.split() for line in out.splitlines()) if len(w) == 2}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        lib = compile_lib(REPO / "firmware" / "lib", Path(tmp) / "lib")
        flash = Path(tmp) / "flash"
        provision(flash)
        sampling, commands = BOOT + SAMPLING, BOOT + COMMANDS
        big = run(lib, flash, "1m", sampling, 20)
        cmd = run(lib, flash, "1m", commands, 0)
        for res in (big, cmd):
            if res.returncode != 0:
                print(f"bench_node: the node failed: {res.stderr.strip()}", file=sys.stderr)
                return 1
        fig = figures(big.stdout) | figures(cmd.stdout)
        peak_sampling = smallest(lib, flash, BOOT + SAMPLING, 10)
        peak_commands = smallest(lib, flash, commands, 0)
        print("node app on the MicroPython unix port (64-bit), firmware as .mpy (-O3)")
        print(f"  heap in use after boot:               {int(fig['BOOT']) / 1024:.1f} KiB")
        print(f"  peak heap, sampling path (10 records): {peak_sampling} KiB")
        print(f"  peak heap, command path:               {peak_commands} KiB")
        print(f"  CPU per record (batch 1, median):      {float(fig['MS']):.1f} ms")
        print(f"  CPU per COMMAND (verify + answer):     {float(fig['CMD_MS']):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
