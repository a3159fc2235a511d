"""Helpers to run firmware scripts under the real micropython with a flash folder."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from support import FIRMWARE_LIB, micropython_path

from emulator.mpy import compile_lib

HERE = Path(__file__).resolve().parent
MP = HERE / "mp"


_COMPILED: list[Path] = []


def compiled_lib() -> Path:
    """The firmware library compiled to .mpy once per test session (as deployed)."""
    if not _COMPILED:
        out = Path(tempfile.mkdtemp(prefix="citysense-mpy-"))
        atexit.register(shutil.rmtree, out, True)
        _COMPILED.append(compile_lib(FIRMWARE_LIB, out / "lib"))
    return _COMPILED[0]


def mp_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, MICROPYPATH=f".frozen:{MP}:{compiled_lib()}", **extra)


def popen(
    script: str, *args: str, flash: Path, heap: str = "96k", **kw: object
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [micropython_path(), "-X", f"heapsize={heap}", str(MP / script), *args],
        cwd=str(flash),
        env=mp_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[arg-type]
    )


def run(script: str, *args: str, flash: Path, heap: str = "96k", timeout: float = 60.0) -> str:
    proc = subprocess.run(
        [micropython_path(), "-X", f"heapsize={heap}", str(MP / script), *args],
        cwd=str(flash),
        env=mp_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed: {proc.stdout.decode()}{proc.stderr.decode()}")
    return proc.stdout.decode()
