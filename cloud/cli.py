"""`citysense-cloud`: the operator's side. Subcommands register themselves here.

Each feature module exposes `register(subparsers) -> None`, adding its parsers with
`set_defaults(func=...)`; `func(args, cfg) -> int` returns the exit code. Errors that are
CloudError subclasses become one line `citysense-cloud: ...` and their exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from . import config
from .errors import CloudError

PROG = "citysense-cloud"

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


FEATURES: tuple[str, ...] = (
    "command", "ingest", "ledger", "registry_sync", "release", "rollout",
)  # fmt: skip
"""Feature modules under cloud/, in help order (each adds a line here)."""


def _registrations() -> list[Register]:
    return [importlib.import_module(f"cloud.{name}").register for name in FEATURES]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="citysense cloud tools")
    p.add_argument("--config", type=Path, help="TOML config ([broker], [registry], ...)")
    p.add_argument("--broker", help="override [broker] url")
    p.add_argument("--registry", help="override [registry] path")
    p.add_argument("--operator-key", help="override [operator] key_file")
    p.add_argument("--database", help="override [database] url")
    p.add_argument("--state-dir", help="override [state] dir")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for register in _registrations():
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace, config.CloudConfig], int] = args.func
    try:
        cfg = config.load(
            args.config,
            {
                "broker.url": args.broker,
                "registry.path": args.registry,
                "operator.key_file": args.operator_key,
                "database.url": args.database,
                "state.dir": args.state_dir,
            },
        )
        return func(args, cfg)
    except config.ConfigError as exc:
        for line in exc.problems:
            print(f"{PROG}: config: {line}", file=sys.stderr)
        return exc.exit_code
    except CloudError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
