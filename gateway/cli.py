"""`citysense-gateway`: run the agent, check its config, show its status and queue."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable

from .config import Config, ConfigError, load_config
from .queue import read_only_stats

PROG = "citysense-gateway"


# syslog priorities; under systemd a "<N>" line prefix sets the journal entry's priority
# (SyslogLevelPrefix=yes, the default), so `journalctl -p warning` filters as expected
_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def _stderr_is_journal() -> bool:
    """JOURNAL_STREAM names the journal stream as "device:inode"; it only counts when
    stderr is that stream (not when inherited by a process whose stderr went elsewhere)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def _setup_logging(level: str) -> None:
    # journald adds its own timestamp; one key=value line per event
    fmt = "level=%(levelname)s logger=%(name)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s " + fmt))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{PROG}: {path}: {problem}", file=sys.stderr)
        raise SystemExit(1) from exc


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(
        f"OK: gateway {cfg.gateway_id}, {len(cfg.serial)} serial entries, uplink {cfg.uplink.url}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent

    cfg = _load(args.config)
    _setup_logging(args.log_level)
    try:
        asyncio.run(Agent(cfg).run())
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


def _queue_stats(cfg: Config) -> dict[str, object] | None:
    try:
        if not cfg.db_path.exists():
            return None
        return read_only_stats(cfg.db_path)
    except PermissionError:
        raise  # one line from main(): who may read it
    except (sqlite3.Error, OSError) as exc:
        print(f"{PROG}: cannot read {cfg.db_path}: {exc}", file=sys.stderr)
        return None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    from .agent import read_state

    cfg = _load(args.config)
    state = read_state(cfg) or {}
    written = state.get("written_at")
    running = (
        bool(state)
        and _alive(state.get("pid"))
        and isinstance(written, int | float)
        and (time.time() - written < 10)
    )
    out: dict[str, object] = {"gateway_id": cfg.gateway_id, "running": running, **state}
    stats = _queue_stats(cfg)
    if stats is not None:
        out["queue_db"] = stats
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0 if running else 3
    _print_status(out)
    return 0 if running else 3


def _age(ts: object) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return "never"
    return f"{time.time() - ts:.0f}s ago"


def _print_status(s: dict[str, object]) -> None:
    print(f"gateway   {s['gateway_id']}  agent {'running' if s['running'] else 'NOT RUNNING'}")
    up = s.get("uplink")
    if isinstance(up, dict):
        err = f" (last error: {up['last_error']})" if up.get("last_error") else ""
        print(f"uplink    {up.get('state')} {up.get('protocol')} {up.get('url')}{err}")
    q = s.get("queue_db") or s.get("queue")
    if isinstance(q, dict):
        print(
            f"queue     {q.get('depth')} records, {q.get('bytes')} bytes, "
            f"oldest {q.get('oldest_age_s')} s"
        )
    live_q = s.get("queue")
    if isinstance(live_q, dict) and live_q.get("moved_aside"):
        print(f"QUEUE     CORRUPT database moved aside: {live_q['moved_aside']}")
    print(f"ports     {', '.join(s.get('ports') or []) or '-'}")  # type: ignore[arg-type]
    print(f"rejects   {json.dumps(s.get('rejects') or {})}")
    devices = s.get("devices")
    if isinstance(devices, dict) and devices:
        print("devices")
        for d, info in devices.items():
            print(
                f"  {d:24} seq {info.get('seq')}  last seen {_age(info.get('last_seen'))}  "
                f"port {info.get('port')}  rejects {json.dumps(info.get('rejects') or {})}"
            )


def cmd_queue_stats(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    stats = _queue_stats(cfg)
    if stats is None:
        print(f"{PROG}: no queue at {cfg.db_path}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=1, sort_keys=True))
    else:
        print(
            f"queue {cfg.db_path}: {stats['depth']} records, {stats['bytes']} bytes "
            f"(max {cfg.queue_max_bytes}), oldest {stats['oldest_age_s']} s"
        )
        devices = stats["devices"]
        assert isinstance(devices, dict)
        for d, info in sorted(devices.items()):
            print(f"  {d:24} queued {info.get('queued')}  high_seq {info.get('high_seq')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", required=True, help="gateway TOML file")
        sp.set_defaults(fn=fn)
        return sp

    run = add("run", cmd_run, "run the agent (foreground; systemd Type=notify)")
    run.add_argument("--log-level", default="info")
    add("check-config", cmd_check_config, "validate the config and exit")
    add("status", cmd_status, "state of the running agent").add_argument(
        "--json", action="store_true"
    )
    qp = sub.add_parser("queue", help="durable queue commands")
    qsub = qp.add_subparsers(dest="qcmd", required=True)
    qs = qsub.add_parser("stats", help="queue depth, bytes, oldest, per device")
    qs.add_argument("--config", required=True)
    qs.add_argument("--json", action="store_true")
    qs.set_defaults(fn=cmd_queue_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except PermissionError as exc:
        print(f"{PROG}: {exc.strerror}: {exc.filename} (run with sudo)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
