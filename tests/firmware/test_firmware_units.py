"""Run the firmware unit tests (firmware/tests/test_*.py) inside the real MicroPython
unix port under a 64 KB heap (the codec compiled to .mpy, its viper code for this
machine), and once more under CPython (the modules must import and behave the same
there, for the cross-tests; citysense.pyviper stands in for viper)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import FIRMWARE_LIB, REPO, run_micropython

FW_TESTS = REPO / "firmware" / "tests"
MODULES = sorted(p.stem for p in FW_TESTS.glob("test_*.py"))


def expected_output(module: str) -> list[str]:
    """The runner's exact pass output: one `ok` line per test_* function, sorted."""
    tree = ast.parse((FW_TESTS / f"{module}.py").read_text())
    names = sorted(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    )
    assert names, f"{module} defines no tests"
    return [f"ok {module}.{name}" for name in names] + [f"PASSED {len(names)}"]


def _explain(proc: subprocess.CompletedProcess[bytes]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}"


def test_every_module_is_collected() -> None:
    want = {"cbor", "cobs", "cose", "crc32", "ed25519", "frame", "senml", "sha512"}
    assert {f"test_{name}" for name in want} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_under_micropython(module: str, mpy_lib: Path) -> None:
    # the modules as a device runs them: .mpy (compiling the viper sources at import
    # would need more heap than running them)
    proc = run_micropython(
        [str(FW_TESTS / "runner.py"), module],
        heap="64k",
        extra_path=[FW_TESTS, mpy_lib],
        timeout=300,
    )
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.decode().splitlines() == expected_output(module), _explain(proc)


@pytest.mark.parametrize("module", MODULES)
def test_under_cpython(module: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FW_TESTS), str(FIRMWARE_LIB)]))
    proc = subprocess.run(
        [sys.executable, str(FW_TESTS / "runner.py"), module],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
        cwd=str(Path(FW_TESTS)),
    )
    assert proc.returncode == 0, _explain(proc)
    out = [line for line in proc.stdout.decode().splitlines() if not line.startswith("skip ")]
    assert out == expected_output(module), _explain(proc)
