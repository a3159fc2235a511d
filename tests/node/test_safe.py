"""Crash loop -> safe mode, under the real micropython."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from nodeproc import compiled_lib, run
from support import REPO, micropython_path


def test_crash_counter(tmp_path: Path) -> None:
    out = run("safecheck.py", flash=tmp_path, heap="96k").splitlines()
    # 5 crash boots in a row are tolerated, the 6th stays in safe mode; a power-on clears
    assert out == ["PANIC [False, False, False, False, False, True]", "POWER False WDT False"]


def test_crash_loop_ends_in_safe_mode(tmp_path: Path) -> None:
    """The real main.py crashing at every boot (no data UART here) until safe mode."""
    env = dict(os.environ, MICROPYPATH=f".frozen:{compiled_lib()}", CITYSENSE_RESET="panic")
    codes = []
    for _ in range(6):
        res = subprocess.run(
            [micropython_path(), "-X", "heapsize=96k", str(REPO / "firmware" / "main.py")],
            cwd=str(tmp_path),
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        codes.append(res.returncode)
        assert res.stdout == b""  # logs and tracebacks go to stderr
    assert codes == [1, 1, 1, 1, 1, 0]  # hal.crash() five times, then safe mode
    assert b"SAFE MODE" in res.stderr
