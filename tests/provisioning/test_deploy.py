"""deploy: idempotent, verified by SHA-256, tamper detected, mpy build, out of flash."""

from __future__ import annotations

import hashlib
import json

from prov_support import NodeRepl, assert_one_line_error, mpremote, run_cli
from support import FIRMWARE_LIB, REPO

from provisioning import deploy

EXPECTED = {
    "/" + p.relative_to(REPO / "firmware").as_posix(): p for p in FIRMWARE_LIB.rglob("*.py")
}


def run_deploy(node: NodeRepl) -> dict[str, object]:
    res = run_cli("deploy", "--port", str(node.port), "--json")
    assert res.code == 0, res.err
    report: dict[str, object] = json.loads(res.out)
    return report


def test_deploy_twice_then_tampered(node: NodeRepl) -> None:
    first = run_deploy(node)
    assert first["mode"] == "source"  # the emulator gets sources
    assert set(first["copied"]) >= set(EXPECTED)  # type: ignore[arg-type]
    assert first["removed"] == [] and first["differed"] == []
    for dev, src in EXPECTED.items():
        assert (node.flash / dev.lstrip("/")).read_bytes() == src.read_bytes()
    # mpremote (second client) computes the same hash on the device
    dev = "/lib/citysense/cose.py"
    out = mpremote(node.port, "fs", "sha256sum", f":{dev}")
    assert hashlib.sha256(EXPECTED[dev].read_bytes()).hexdigest() in out

    second = run_deploy(node)
    assert second["copied"] == [] and second["removed"] == []
    assert sorted(second["unchanged"]) == sorted(first["copied"])  # type: ignore[type-var]
    assert second["firmware_sha256"] == first["firmware_sha256"]

    # tamper with one file on the device (through mpremote), and leave a stale .mpy
    tampered = "/lib/citysense/cobs.py"
    mpremote(node.port, "exec", f"f = open('{tampered}', 'a'); f.write('#x'); f.close()")
    (node.flash / "lib" / "citysense" / "crc32.mpy").write_bytes(b"M\x06stale")
    third = run_deploy(node)
    assert third["copied"] == [tampered] and third["differed"] == [tampered]
    assert third["removed"] == ["/lib/citysense/crc32.mpy"]
    assert (node.flash / "lib/citysense/cobs.py").read_bytes() == EXPECTED[tampered].read_bytes()
    assert not (node.flash / "lib/citysense/crc32.mpy").exists()
    assert third["firmware_sha256"] == first["firmware_sha256"]


def test_mpy_build_for_esp32() -> None:
    files = deploy.build(REPO / "firmware", compile_mpy=True)
    libs = {p for p in files if p.startswith("/lib/")}
    assert libs == {p[:-3] + ".mpy" for p in EXPECTED if p.startswith("/lib/")}
    for path in libs:
        data = files[path]
        # .mpy v6 header: 'M', 6, then the arch in the top bits of byte 2; it is set
        # (MP_NATIVE_ARCH_XTENSAWIN = 10) only for modules with native code (the viper
        # crypto, fetch's and bme280's @micropython.native functions), 0 for plain bytecode
        native = path in {
            f"/lib/citysense/{m}.mpy" for m in ("ed25519", "sha512", "fetch", "bme280")
        }
        assert data[0:2] == b"M\x06" and data[2] >> 2 == (10 if native else 0), path
    again = deploy.build(REPO / "firmware", compile_mpy=True)
    assert again == files  # deterministic, so a second deploy copies nothing


TINY_LFS_AT_LIB = """
import os
class RAMDisk:
    def __init__(self, n):
        self.data = bytearray(512 * n)
    def readblocks(self, block, buf, off=0):
        a = block * 512 + off
        buf[:] = self.data[a:a + len(buf)]
    def writeblocks(self, block, buf, off=None):
        a = block * 512 + (off or 0)
        self.data[a:a + len(buf)] = buf
    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // 512
        if op == 5:
            return 512
        if op == 6:
            return 0
_disk = RAMDisk(12)
os.VfsLfs2.mkfs(_disk)
os.mount(os.VfsLfs2(_disk), '/lib')
print('mounted')
"""


def test_out_of_flash_is_one_line(node: NodeRepl) -> None:
    """Simulated: a 6 KB LittleFS (the ESP32's filesystem type) on a RAM block device is
    mounted at /lib on the device, so the device's own filesystem raises ENOSPC."""
    assert "mounted" in mpremote(node.port, "exec", TINY_LFS_AT_LIB)
    res = run_cli("deploy", "--port", str(node.port))
    line = assert_one_line_error(res, "device out of flash (ENOSPC) while writing /lib/citysense/")
    assert "erase and re-flash" in line
    # the partial file was removed from the device
    listing = mpremote(node.port, "exec", "import os; print(os.listdir('/lib/citysense'))")
    assert ".part" not in listing
