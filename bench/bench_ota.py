"""Firmware update over the serial line: effective transfer rate per node and the time to
update N nodes on one gateway (prints figures; not a test).

    python bench/bench_ota.py [--nodes 10] [--baud 115200]

Real parts: emulated nodes running the firmware (micropython, 96 KiB heap), the gateway
agent with its bundle cache, Mosquitto. Ptys have no line speed, so every node's line
goes through citysense_lab.noise.NoiseProxy with no noise and `--baud` pacing (8N1:
baud/10 bytes a second each way), as the other line benches do.

Prints, measured in the same run:
- the baseline: the paced line's own rate, 200 KB pushed through one proxy;
- the transfer of one bundle to one node: bytes of the bundle / time from the first
  byte on the node's flash (`ota/new.csb`) to the whole file (`ota/ready`), and that as a
  share of the baseline. The node samples normally during its transfer boot (a
  record every 5 s here, sealed, signed and sent between the chunks, first), so this
  is the rate while sampling;
- N nodes updated at once on one gateway: from the `update` commands to the last
  `confirmed` (the transfers, the staging boots, the trials and the first ACKed record).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "node"),
                str(REPO / "tests" / "gateway")]  # fmt: skip

from otasupport import BIN, Stack, make_bundle  # noqa: E402

from citysense_formats import bundle  # noqa: E402
from citysense_lab.noise import NoiseConfig, NoiseProxy, open_raw  # noqa: E402
from citysense_lab.procs import Proc, wait_until  # noqa: E402


def line_baseline(d: Path, baud: int, n: int = 200_000) -> float:
    """Bytes/s through one paced proxy (pty to pty), the ceiling of any transfer."""
    import pty
    import termios
    import tty

    m, s = pty.openpty()
    tty.setraw(m, termios.TCSANOW)
    tty.setraw(s, termios.TCSANOW)
    proxy = NoiseProxy(Path(os.ttyname(s)), d / "base.tty", NoiseConfig(baud=baud))
    proxy.start()
    far = open_raw(str(d / "base.tty"))
    got = 0

    def read() -> None:
        nonlocal got
        import select

        while got < n:
            if select.select([far], [], [], 1)[0]:
                got += len(os.read(far, 65536))

    t = threading.Thread(target=read, daemon=True)
    t0 = time.monotonic()
    t.start()
    os.set_blocking(m, True)
    for i in range(0, n, 4096):
        os.write(m, b"\x55" * min(4096, n - i))
    t.join(60)
    rate = got / (time.monotonic() - t0)
    proxy.stop()
    return rate


class PacedStack(Stack):
    """Stack whose nodes reach the gateway through a paced proxy."""

    def __init__(self, d: Path, baud: int) -> None:
        super().__init__(d)
        self.baud = baud
        self.proxies: list[NoiseProxy] = []
        (d / "raw").mkdir()

    def start_node(self, device: str, uid: str = "") -> None:
        raw = self.d / "raw" / f"{device}.tty"
        argv = [str(BIN / "citysense-emulator"), "run", "--flash", str(self.flash(device)),
                "--link", str(raw), "--unique-id", uid]  # fmt: skip
        self.nodes[device] = Proc(device, argv, self.d / f"{device}.log").start()
        wait_until(raw.exists, 30, f"the link pty of {device}")
        proxy = NoiseProxy(raw, self.d / "links" / f"{device}.tty", NoiseConfig(baud=self.baud))
        proxy.start()
        self.proxies.append(proxy)

    def close(self) -> None:
        super().close()
        for p in self.proxies:
            p.stop()


def _transfer_time(flash: Path, timeout: float = 600) -> float:
    part, ready = flash / "ota" / "new.csb", flash / "ota" / "ready"
    wait_until(part.exists, timeout, "the transfer's first bytes", interval=0.01)
    t0 = time.monotonic()
    wait_until(ready.exists, timeout, "the whole bundle", interval=0.01)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--baud", type=int, default=115200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        d = Path(tmp)
        base = line_baseline(d, args.baud)
        data = make_bundle("0.2.0", 2)
        bid = bundle.bundle_id(data)
        stack = PacedStack(d / "stack", args.baud)
        try:
            stack.start_gateway()
            (d / "b.csb").write_bytes(data)
            # cached only: an offer (`ota push --device` one of the nodes) would start that
            # node's transfer at its first HELLO, before the timed `update` command
            assert stack.push(d / "b.csb", "nobody").returncode == 0
            devices = [f"bench-{i}" for i in range(args.nodes + 1)]
            for i, dev in enumerate(devices):
                stack.add_node(dev, f"02ee{i:08x}", interval=5)
            for dev in devices:
                wait_until(lambda dev=dev: stack.fw(dev), 120, f"a record of {dev}", 0.3)
                stack.wait_clock(dev, 120)  # a bound command needs the node's clock
            for dev in devices:  # no transfer under way before the timed commands
                assert not (stack.flash(dev) / "ota" / "new.csb").exists(), dev
            # one node alone: its transfer rate with the gateway otherwise idle
            stack.send_update(devices[0], bid)
            one = _transfer_time(stack.flash(devices[0]))
            stack.wait_note(devices[0], "confirmed 0.2.0", 300)
            # then N nodes at once on the same gateway
            times: dict[str, float] = {}
            watchers = [
                threading.Thread(
                    target=lambda dev=dev: times.__setitem__(dev, _transfer_time(stack.flash(dev))),
                    daemon=True,
                )
                for dev in devices[1:]
            ]
            t0 = time.monotonic()
            for w in watchers:
                w.start()
            for dev in devices[1:]:
                stack.send_update(dev, bid)
            for dev in devices[1:]:
                stack.wait_note(dev, "confirmed 0.2.0", 900)
            many = time.monotonic() - t0
            for w in watchers:
                w.join(10)
        finally:
            stack.close()
    rate = len(data) / one
    rates = sorted(len(data) / t for t in times.values())
    med = rates[len(rates) // 2] if rates else 0.0
    print(f"OTA over the serial line, {args.baud} baud (paced proxies: ptys have no baud)")
    print(f"  baseline, the paced line itself:      {base:8.0f} B/s")
    print(f"  bundle:                               {len(data):8d} B")
    print(
        f"  1 node alone, transfer {one:5.1f} s:      {rate:8.0f} B/s ({100 * rate / base:.0f} %)"
    )
    share = 100 * med / base
    print(f"  {args.nodes} nodes at once, per node (median): {med:8.0f} B/s ({share:.0f} %)")
    print(f"  {args.nodes} nodes at once, command to confirmed: {many:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
