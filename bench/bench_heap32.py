"""How the 64-bit unix port's heap compares with a 32-bit MicroPython's (prints figures).

    python bench/bench_heap32.py

The node tests and the emulator run the firmware in the unix port (64-bit) under the
device's heap size as is. Whether that models a 32-bit ESP32 fairly is measured here: the
same .mpy modules (compiled as the emulator compiles them) are imported one by one, with
gc.collect() after each, into the unix port and into a 32-bit MicroPython, the
webassembly port (npm `@micropython/micropython-webassembly-pyscript`, installed into
.cache/heap32 on first use; needs node and npm). Printed: heap per module and in total
on both, and the ratio. `citysense.crc32` is loaded first and left out of the totals:
that webassembly build has no `binascii.crc32`, so it takes the pure fallback's table.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.mpy import compile_lib  # noqa: E402
from emulator.ptys import micropython  # noqa: E402

WASM_PKG = "@micropython/micropython-webassembly-pyscript@1.27.0"
CACHE = REPO / ".cache" / "heap32"
MODULES = (
    "citysense.crc32 asyncio citysense.errors citysense.cobs citysense.frame citysense.cbor "
    "citysense.sha512 citysense.ed25519 citysense.cose citysense.senml citysense.state "
    "citysense.buffer citysense.bme280 citysense.link citysense.commands citysense.safe "
    "citysense.config"
).split()

PROBE = """
import gc, sys
sys.path.insert(0, LIB)
gc.collect()
last = gc.mem_alloc()
out = []
for m in MODULES:
    __import__(m)
    gc.collect()
    a = gc.mem_alloc()
    out.append((m, a - last))
    last = a
print(repr(out))
"""

RUNNER = """
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript/micropython.mjs";
import fs from "fs";
import path from "path";
const [lib, code] = [process.argv[2], fs.readFileSync(process.argv[3], "utf8")];
let text = "";
const mp = await loadMicroPython({ heapsize: 1 << 20, stdout: (d) => { text += d + "\\n"; } });
function copy(src, dst) {
  mp.FS.mkdirTree(dst);
  for (const f of fs.readdirSync(src)) {
    const s = path.join(src, f);
    if (fs.statSync(s).isDirectory()) copy(s, dst + "/" + f);
    else mp.FS.writeFile(dst + "/" + f, fs.readFileSync(s));
  }
}
copy(lib, "/lib");
mp.runPython(code);
process.stdout.write(text);
"""


def wasm_port() -> Path:
    if not (CACHE / "node_modules" / WASM_PKG.rsplit("@", 1)[0]).exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise SystemExit("bench_heap32: needs node and npm (apt-get install nodejs npm)")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), WASM_PKG],
            check=True,
            capture_output=True,
            timeout=300,
        )
    (CACHE / "run.mjs").write_text(RUNNER)
    return CACHE / "run.mjs"


def parse(out: str) -> dict[str, int]:
    line = [x for x in out.splitlines() if x.startswith("[(")][-1]
    return dict(ast.literal_eval(line))


def main() -> int:
    runner = wasm_port()
    with tempfile.TemporaryDirectory() as tmp:
        lib = compile_lib(REPO / "firmware" / "lib", Path(tmp) / "lib")
        probe = PROBE.replace("MODULES", repr(MODULES))
        script32 = Path(tmp) / "probe32.py"
        script32.write_text(probe.replace("LIB", repr("/lib")))
        res32 = subprocess.run(
            ["node", str(runner), str(lib), str(script32)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        res64 = subprocess.run(
            [micropython(), "-X", "heapsize=1m", "-c", probe.replace("LIB", repr(str(lib)))],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    h32, h64 = parse(res32.stdout), parse(res64.stdout)
    print("heap per module, imported in order with gc.collect() after each (bytes)")
    print(f"  {'module':22} {'unix (64-bit)':>14} {'wasm (32-bit)':>14}")
    for m in MODULES:
        print(f"  {m:22} {h64[m]:>14} {h32[m]:>14}")
    t64 = sum(v for m, v in h64.items() if m != "citysense.crc32")
    t32 = sum(v for m, v in h32.items() if m != "citysense.crc32")
    print(f"  {'total w/o crc32':22} {t64:>14} {t32:>14}")
    print(f"32-bit / 64-bit: {t32 / t64:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
