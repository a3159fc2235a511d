"""The raw-REPL transport against the emulator's REPL, in-process."""

from __future__ import annotations

import pytest
from prov_support import NodeRepl

from provisioning.device import Device
from provisioning.errors import DeviceError, OutOfFlashError, ReplError
from provisioning.transport import Repl


def test_raw_paste_and_plain_raw_give_the_same_results(node: NodeRepl) -> None:
    code = "x = 0\n" + "".join(f"x += {i}\n" for i in range(400)) + "print(x)\n"  # > 1 window
    with Repl(str(node.port), timeout=15) as repl:
        assert repl.exec(code, "summing") == f"{sum(range(400))}\n"
        assert repl.raw_paste is True
    with Repl(str(node.port), timeout=15) as repl:
        repl.raw_paste = False  # what a device without raw-paste gets
        assert repl.exec(code, "summing") == f"{sum(range(400))}\n"
        out, err = repl.exec_raw("print('a')\nraise KeyError(7)")
        assert out == "a\n" and err.strip().splitlines()[-1] == "KeyError: 7"


def test_device_errors_and_timeouts(node: NodeRepl) -> None:
    with Repl(str(node.port), timeout=15) as repl:
        device = Device(repl)
        assert device.platform == "linux" and device.is_emulator
        with pytest.raises(OutOfFlashError, match="while testing"):
            device.run("raise OSError(28)", "testing")
        with pytest.raises(DeviceError, match=r"raised ValueError: boom while testing"):
            device.run("raise ValueError('boom')", "testing")
        with pytest.raises(DeviceError, match="refusing to read the device's private seed"):
            device.read_hex("/config/device.key")
        # a step that outlasts its bound fails with a clear error, not a hang
        with pytest.raises(ReplError, match="stopped answering"):
            repl.exec("import time\ntime.sleep(2)", "sleeping", timeout=0.5)
    # the next session gets the raw REPL back (on the emulator Ctrl-C does not cut the
    # sleep short: enter_raw keeps asking until the device answers, within its timeout)
    with Repl(str(node.port), timeout=15) as repl:
        assert repl.exec("print(6 * 7)", "multiplying") == "42\n"


def test_files_roundtrip(node: NodeRepl) -> None:
    data = bytes(range(256)) * 20  # 5 KB: several chunks, every byte value
    with Repl(str(node.port), timeout=15) as repl:
        device = Device(repl)
        device.put("/data/deep/dir/blob.bin", data)
        assert (node.flash / "data/deep/dir/blob.bin").read_bytes() == data
        device.put("/data/deep/dir/blob.bin", b"short")  # replace an existing file
        assert (node.flash / "data/deep/dir/blob.bin").read_bytes() == b"short"
        assert device.hashes(["/data/deep/dir/blob.bin", "/nope"])["/nope"] is None
        assert device.read_text("/data/deep/dir/blob.bin") == "short"
        assert device.read_text("/missing.json") is None
        assert not any(p.name.endswith(".part") for p in node.flash.rglob("*"))
