"""Setuptools hook: the node firmware travels inside the wheel, as `emulator/firmware/`.

The firmware is MicroPython code (`firmware/` in the checkout), not a CPython package, so
package discovery does not see it. Without it an installed `citysense-emulator` and
`citysense-provision deploy` have nothing to run or copy. `build_py` copies `main.py`,
`boot.py` and `lib/` (the files a deploy puts on a device; not `tests/`) to
`emulator/firmware/` in the build, which is where `emulator.ptys.firmware_dir()` and
`provisioning.deploy.default_firmware_dir()` look when there is no checkout around them.
An editable install needs no copy: both find the checkout's `firmware/` first.
Everything else is in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FIRMWARE = Path(__file__).resolve().parent / "firmware"
TOP_FILES = ("main.py", "boot.py")


def firmware_files() -> list[Path]:
    """The firmware files a device gets, relative to firmware/."""
    files = [Path(name) for name in TOP_FILES]
    for path in sorted((FIRMWARE / "lib").rglob("*.py")):
        if "__pycache__" not in path.parts:
            files.append(path.relative_to(FIRMWARE))
    return files


class BuildPyWithFirmware(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for rel in firmware_files():
            dest = Path(self.build_lib) / "emulator" / "firmware" / rel
            self.mkpath(str(dest.parent))
            self.copy_file(str(FIRMWARE / rel), str(dest))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            base = Path(self.build_lib) / "emulator" / "firmware"
            outputs += [str(base / rel) for rel in firmware_files()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithFirmware})
