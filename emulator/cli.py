"""citysense-emulator: run a node, or open its USB REPL, on the MicroPython unix port."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from emulator.ptys import EmulatorError

PROG = "citysense-emulator"


def _uid(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{2,32}", text) or len(text) % 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not an even number of hex digits")
    return text.lower()


def _heap(text: str) -> str:
    if not re.fullmatch(r"[0-9]+[kKmM]?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a heap size like 96k or 2m")
    return text


def _sensors(text: str) -> str:
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if s not in ("bme280", "battery")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown sensor {bad[0]!r} (known: bme280, battery)")
    return ",".join(names) or "none"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one node; its data UART is a pty at --link")
    r.add_argument("--flash", type=Path, required=True, help="the node's flash (a folder)")
    r.add_argument("--link", type=Path, required=True, help="path of the data-link pty")
    r.add_argument(
        "--heap",
        type=_heap,
        default="96k",
        help="the device's heap (default 96k), given as is to micropython -X heapsize",
    )
    r.add_argument(
        "--sensors", type=_sensors, default="bme280,battery", help="attached emulated sensors"
    )
    r.add_argument("--unique-id", type=_uid, default="020000000001", help="6-byte id, hex")
    r.add_argument("--seed", type=int, default=1, help="seed of the emulated readings")
    q = sub.add_parser("repl", help="the node's USB REPL on a pty at --port")
    q.add_argument("--flash", type=Path, required=True, help="the node's flash (a folder)")
    q.add_argument("--port", type=Path, required=True, help="path of the REPL pty")
    q.add_argument("--unique-id", type=_uid, default="020000000001", help="6-byte id, hex")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The emulated flash holds the device's private key (config/device.key): what the
    # device writes there is owner-only on the host (the unix port cannot chmod).
    os.umask(0o077)
    try:
        if args.cmd == "repl":
            from emulator.repl import run_repl

            return run_repl(args.flash, args.port, args.unique_id)
        from emulator.node import run_node

        env = {
            "CITYSENSE_UID": args.unique_id,
            "CITYSENSE_SENSORS": args.sensors,
            "CITYSENSE_SEED": str(args.seed),
        }
        return run_node(args.flash, args.link, args.heap, env)
    except EmulatorError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
