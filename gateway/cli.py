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
from pathlib import Path

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
    for warning in config_warnings(cfg):
        print(f"{PROG}: {args.config}: warning: {warning}", file=sys.stderr)
    print(
        f"OK: gateway {cfg.gateway_id}, {len(cfg.serial)} serial entries, uplink {cfg.uplink.url}"
        f" (MQTT {cfg.uplink.protocol})"
    )
    ota = cfg.ota
    if ota.release_key is not None:
        print(
            f"OK: ota release key {ota.release_key_path}, cache {cfg.ota_cache_dir}"
            f" (max {ota.cache_max_bytes} bytes)"
        )
    return 0


def config_warnings(cfg: Config) -> list[str]:
    """What a valid config costs: one line each, printed by check-config (exit still 0)."""
    out = []
    if cfg.uplink.protocol == "3.1.1":
        out.append(
            'uplink.protocol = "3.1.1": MQTT 3.1.1 has no PUBACK reason codes, so a broker '
            "that denies a publish (ACL, certificate CN not matching gateway.id) still "
            "acknowledges it and drops it: those records are deleted here and lost. "
            'Use "5" unless the broker cannot speak MQTT 5'
        )
    if not cfg.time_require_sync:
        out.append(
            "time.require_sync = false: TIME goes to nodes even while the kernel says the "
            "clock is not synchronised, and nodes then sign readings with a wrong time "
            "(for labs and tests only)"
        )
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent

    cfg = _load(args.config)
    _setup_logging(args.log_level)
    try:
        return asyncio.run(Agent(cfg).run())
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


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
    every = state.get("rewritten_within_s", 0)  # absent: an agent that wrote every second
    stale_after = 10 + 2 * (every if isinstance(every, int | float) else 0)
    running = (
        bool(state)
        and _alive(state.get("pid"))
        and isinstance(written, int | float)
        and (time.time() - written < stale_after)
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
        last = up.get("last_refusal")
        if up.get("refused") or up.get("retrying"):
            why = f"{last.get('reason')} on {last.get('topic')}" if isinstance(last, dict) else "-"
            print(
                f"REFUSED   {up.get('refused')} publishes refused by the broker, "
                f"{up.get('retrying')} records waiting to retry; last: {why} "
                "(check the broker ACL and the certificate CN against gateway.id)"
            )
    clk = s.get("clock")
    if isinstance(clk, dict):
        sending = "TIME sent to nodes" if clk.get("sending_time") else "TIME WITHHELD"
        print(f"clock     {clk.get('state')} ({clk.get('detail')}), {sending}")
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
    wear = s.get("disk_wear")
    if isinstance(wear, dict) and wear.get("per_day") is not None:
        print(
            f"disk      {wear['per_day'] / 1e6:.1f} MB written/day: a year of that is"
            f" {100 * wear['share_per_year']:.2f} % of the card's rated"
            f" {wear['endurance_bytes'] / 1e12:g} TB ([gateway] storage_endurance)"
        )
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


def cmd_device_show(args: argparse.Namespace) -> int:
    from .agent import read_state
    from .devicectl import show

    cfg = _load(args.config)
    info = show(cfg.db_path, cfg.registry, read_state(cfg), args.device)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0 if info["registry"] else 4
    reg, q, live = info["registry"], info["queue"] or {}, info["live"] or {}
    if reg is None:
        print(f"{PROG}: {args.device}: not in the registry {cfg.registry}", file=sys.stderr)
    else:
        print(
            f"device    {args.device}  {reg['status']}  key {reg['key_id']}  "
            f"seq floor {reg['seq_floor']}"
        )
    keys = q.get("keys") or {}
    print(
        f"replay    highest stored seq {q.get('high_seq')}"
        + "".join(f"  [key {k}: {v}]" for k, v in sorted(keys.items()))
    )
    seqs = f"{q.get('min_seq')}..{q.get('max_seq')}"
    print(f"queue     {q.get('queued', 0)} records queued  seqs {seqs}")
    print(
        f"live      port {live.get('port')}  last seen {_age(live.get('last_seen'))}  "
        f"boot {live.get('boot')}  firmware {live.get('firmware')}"
    )
    return 0 if reg else 4


def cmd_device_reset_seq(args: argparse.Namespace) -> int:
    from .devicectl import AgentLockedError, agent_lock, audit, request, reset_offline

    cfg = _load(args.config)
    if not args.yes:
        print(
            f"{PROG}: reset-seq lowers {args.device}'s replay state to its highest queued seq;"
            " a replayed old record of it would then be stored again. Add --yes to do it",
            file=sys.stderr,
        )
        return 2
    try:
        with agent_lock(cfg.state_dir):
            result = reset_offline(cfg.db_path, cfg.queue_max_bytes, args.device)
            audit(cfg.state_dir, "reset-seq", args.device, result, via="offline")
            via = "queue file (service stopped)"
    except AgentLockedError:
        try:
            result = request(cfg.state_dir, "reset-seq", args.device)
        except TimeoutError as exc:
            print(f"{PROG}: {exc}; check `systemctl status citysense-gateway`", file=sys.stderr)
            return 1
        via = "the running service"
        if not result.get("ok"):
            print(f"{PROG}: the service refused: {result.get('error')}", file=sys.stderr)
            return 1
    print(f"reset-seq {args.device} via {via}: {json.dumps(result, sort_keys=True)}")
    return 0


def cmd_ota_push(args: argparse.Namespace) -> int:
    """Put a bundle in the cache and offer it to a device (docs/operations.md)."""
    from citysense_formats.bundle import BundleError

    from .devicectl import AgentLockedError, agent_lock, request
    from .ota.serve import OtaServer, open_cache

    cfg = _load(args.config)
    cache = open_cache(cfg)
    if cache is None:
        print(
            f"{PROG}: {args.config}: [ota] release_key is not set, so bundles cannot be"
            " checked: set it to the release public key (.pub)",
            file=sys.stderr,
        )
        return 1
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"{PROG}: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        b = cache.put(data)
    except BundleError as exc:
        print(
            f"{PROG}: {args.file}: refused ({exc.reason}): {exc}; nothing was cached or"
            " offered (is it a bundle from `citysense-cloud release build`, signed by the"
            " release key this gateway has?)",
            file=sys.stderr,
        )
        return 1
    try:
        with agent_lock(cfg.state_dir):
            OtaServer(cache).offer(args.device, b.id)
            via = (
                "the offers file (service stopped): offered when it runs and the device says HELLO"
            )
    except AgentLockedError:
        try:
            result = request(cfg.state_dir, "ota-offer", args.device, bundle=b.id)
        except TimeoutError as exc:
            print(f"{PROG}: {exc}; check `systemctl status citysense-gateway`", file=sys.stderr)
            return 1
        if not result.get("ok"):
            print(f"{PROG}: the service refused: {result.get('error')}", file=sys.stderr)
            return 1
        via = "the running service" + (", sent now" if result.get("sent_now") else "")
    print(
        f"ota push {args.device}: bundle {b.short_id} version {b.version} seq {b.seq}"
        f" ({b.size} bytes) cached and offered via {via}"
    )
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
    dp = sub.add_parser("device", help="one device's replay state")
    dsub = dp.add_subparsers(dest="dcmd", required=True)
    ds = dsub.add_parser("show", help="registry key, replay state, queued records, live state")
    ds.add_argument("device")
    ds.add_argument("--config", required=True)
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(fn=cmd_device_show)
    dr = dsub.add_parser("reset-seq", help="lower the replay state to what is still queued")
    dr.add_argument("device")
    dr.add_argument("--config", required=True)
    dr.add_argument("--yes", action="store_true", help="really do it")
    dr.set_defaults(fn=cmd_device_reset_seq)
    op = sub.add_parser("ota", help="firmware bundles for the nodes")
    osub = op.add_subparsers(dest="ocmd", required=True)
    push = osub.add_parser("push", help="cache a bundle (.csb) and offer it to a device")
    push.add_argument("file", help="the bundle, from `citysense-cloud release build`")
    push.add_argument("--device", required=True, help="the device id to update")
    push.add_argument("--config", required=True)
    push.set_defaults(fn=cmd_ota_push)
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
