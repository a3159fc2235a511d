"""`citysense-cloud rollout start | resume | status | halt`: a release onto the nodes.

    citysense-cloud --config cloud.toml rollout start --release 1.4.0 \\
        (--devices node-1,node-2 | --all) [--canary N] [--halt-on-failure] [--wait 600] \\
        [--expires 30m] [--json]
    citysense-cloud --config cloud.toml rollout resume [--wait 600] [--json]
    citysense-cloud --config cloud.toml rollout status [--json]
    citysense-cloud --config cloud.toml rollout halt

start: the release (built from this state dir, `release list`), the devices (active in
[registry] path; each device's gateway is the one its newest stored record came through,
[database] url), then for each wave (cloud/rollout_state.py) one signed `update` COMMAND
per device (action `update`, args {"bundle": the bundle id}, bound to the device, its
gateway and --expires; ids from cloud/command_ids.py, audited in command-audit.jsonl like
`command send`), the node's COMMAND_RESULT awaited up to RESULT_WAIT_S, then its `sys/ota`
readings read from the cloud store every POLL_S until it is confirmed or failed. The
state is saved in `rollout.json` after every change, under `rollout.lock` (one driver at a
time). `--wait` bounds one invocation: a rollout not finished by then stays `running`,
and `rollout resume` carries it on. `status` shows the saved state with the outcomes in
the store now (read only). `halt` asks the driver to halt (a `rollout.halt` file it
checks every POLL_S; a rollout with no driver halts at the next start or resume): nothing
more is sent, what was sent goes on on the nodes.

Exit codes: 0 every device confirmed (or already on the release); 2 bad input or config;
3 the rollout halted, or finished with failed devices; 4 still running after --wait;
5 broker unreachable; 6 state dir or database; 7 the broker refused a publish (ACL);
9 a rollout is already running (resume or halt it first), or another process drives it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from citysense_formats import devid, registry_entry
from gateway.protocol import (
    Command,
    ProtocolError,
    decode_command_result,
    decode_gateway_refusal,
    sign_command,
)

from . import command_ids
from . import rollout_state as rs
from .audit import AuditLog
from .command import AUDIT_FILE, device_key, load_operator_seed, parse_duration, printable
from .command_mqtt import CommandLink
from .config import CloudConfig
from .errors import CloudError, UsageError
from .release import find_release
from .statelock import locked
from .store import Store, open_store

ACTION: Final = "update"
POLL_S: Final = 1.0
RESULT_WAIT_S: Final = 30.0
MAX_EXPIRES_S: Final = 7 * 86400
HALT_FILE: Final = "rollout.halt"
LOCK: Final = "rollout.lock"


class RolloutFailedError(CloudError):
    exit_code = 3


class RolloutPendingError(CloudError):
    exit_code = 4


class RolloutStateError(CloudError):
    exit_code = 6


class RolloutBusyError(CloudError):
    exit_code = 9


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rollout", help="update nodes to a release: canary, halt, status")
    rsub = p.add_subparsers(dest="rollout_cmd", required=True, metavar="ACTION")
    s = rsub.add_parser("start", help="start a rollout and drive it for --wait seconds")
    s.add_argument("--release", required=True, help="the version (release list)")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--devices", help="comma-separated device ids, in rollout order")
    who.add_argument("--all", action="store_true", help="every active device in the registry")
    s.add_argument("--canary", type=int, default=0, help="update these many first")
    s.add_argument("--halt-on-failure", action="store_true", help="any failure halts it")
    s.add_argument("--expires", default="30m", help="each command's validity (default 30m)")
    _drive_args(s)
    s.set_defaults(func=start)
    r = rsub.add_parser("resume", help="drive the running rollout on")
    _drive_args(r)
    r.set_defaults(func=resume)
    st = rsub.add_parser("status", help="the rollout's state and outcomes")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=status)
    h = rsub.add_parser("halt", help="send nothing more")
    h.set_defaults(func=halt)


def _drive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=int, default=600, help="seconds to drive it (default 600)")
    p.add_argument("--json", action="store_true", help="print the final state as JSON")


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the store: where a device is, what it reported ------------------------------------


def newest_record(store: Store, device: str) -> tuple[str, int] | None:
    rows = store.query(
        "SELECT gateway_id, seq FROM records WHERE device_id = %s ORDER BY seq DESC LIMIT 1",
        (device,),
    )
    return (str(rows[0][0]), int(rows[0][1])) if rows else None


def readings(store: Store, device: str, after_seq: int) -> list[tuple[str, str]]:
    """(sys/ota or sys/fw, text) of the device's records above `after_seq`, in order."""
    rows = store.query(
        "SELECT name, string FROM readings WHERE device_id = %s AND seq > %s"
        " AND string IS NOT NULL AND name IN (%s, %s, %s, %s) ORDER BY seq, idx",
        (device, after_seq, f"{device}/sys/ota", "sys/ota", f"{device}/sys/fw", "sys/fw"),
    )
    return [(str(n).rsplit("/", 1)[-1], str(s)) for n, s in rows]


def refresh(r: rs.Rollout, store: Store, now_ms: int) -> bool:
    """Move each device on by its sys/ota readings; True if anything changed."""
    changed = False
    for run in r.devices:
        if run.state in rs.FINAL or run.state == "pending":
            continue
        for name, text in readings(store, run.device, run.since_seq):
            if name == "fw":
                changed |= run.fw != text
                run.fw = text
            else:
                changed |= r.reading(run, printable(text), now_ms)
    return changed


# -- start ---------------------------------------------------------------------------


def _registry_devices(registry: Path) -> list[str]:
    out = []
    for path in sorted(registry.glob("*.json")):
        try:
            entry = registry_entry.parse(
                path.read_bytes()[: registry_entry.MAX_BYTES + 1], path.stem
            )
        except (OSError, ValueError):
            continue  # `registry publish` reports bad files; a rollout skips them
        if entry.active:
            out.append(entry.device_id)
    return out


def _devices(args: argparse.Namespace, cfg: CloudConfig) -> list[str]:
    registry = cfg.need_registry()
    if args.all:
        devices = _registry_devices(registry)
        if not devices:
            raise UsageError(f"no active device in the registry {registry}")
        return devices
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or len(set(devices)) != len(devices):
        raise UsageError("bad --devices: give each device id once, comma-separated")
    for d in devices:
        if not devid.is_valid(d):
            raise UsageError(f"bad device id {d!r} in --devices: {devid.RULE}")
        device_key(registry, d)  # in the registry and active, or a one-line refusal
    return devices


def _locate(store: Store, devices: list[str], release: str) -> list[tuple[str, str, str | None]]:
    """(device, gateway, its sys/fw now) or a refusal naming the devices never heard of."""
    out, unknown = [], []
    for d in devices:
        newest = newest_record(store, d)
        if newest is None:
            unknown.append(d)
            continue
        fw = [t for n, t in readings(store, d, 0) if n == "fw"]
        out.append((d, newest[0], fw[-1] if fw else None))
    if unknown:
        raise UsageError(
            f"no record stored yet from {', '.join(unknown[:5])}: its gateway is unknown;"
            " leave it out of --devices until it has reported"
        )
    return out


def start(args: argparse.Namespace, cfg: CloudConfig) -> int:
    rel = find_release(cfg.state_dir, args.release)
    expires_s = parse_duration(args.expires, "--expires", MAX_EXPIRES_S)
    devices = _devices(args, cfg)
    if not 0 <= args.canary <= len(devices):
        raise UsageError(f"bad --canary {args.canary}: 0..{len(devices)} (the devices given)")
    _check_wait(args.wait)
    cfg.need_broker()
    seed = load_operator_seed(cfg.need_operator_key())
    store = open_store(cfg.need_database(), cfg.path.parent if cfg.path else None)
    with locked(cfg.state_dir, LOCK, RolloutStateError, _driven()):
        old = _load(cfg.state_dir)
        if old is not None and old.state == "running" and not _halt_requested(cfg, old):
            raise RolloutBusyError(
                f"rollout {old.id} of {old.release} is running ({_summary(old)}): carry it on"
                " with `rollout resume`, or `rollout halt` it first"
            )
        _clear_halt(cfg)
        located = _locate(store, devices, rel["version"])
        now = _now_ms()
        runs = rs.plan([(d, g) for d, g, _ in located], args.canary, args.halt_on_failure)
        r = rs.Rollout(f"r{now}", rel["version"], rel["bundle"], rel["seq"], args.canary,
                       args.halt_on_failure, expires_s, now, devices=runs)  # fmt: skip
        for run, (_, _, fw) in zip(r.devices, located, strict=True):
            run.fw = fw
            if fw == r.release:
                r.move(run, "current", f"already runs {fw}", now)
        _save(cfg, r)
        return _drive_and_report(args, cfg, r, store, seed)


def resume(args: argparse.Namespace, cfg: CloudConfig) -> int:
    _check_wait(args.wait)
    cfg.need_broker()
    seed = load_operator_seed(cfg.need_operator_key())
    store = open_store(cfg.need_database(), cfg.path.parent if cfg.path else None)
    with locked(cfg.state_dir, LOCK, RolloutStateError, _driven()):
        r = _load(cfg.state_dir)
        if r is None:
            raise UsageError("no rollout was started from this state dir: see rollout start")
        if r.state != "running":
            return _report(args, r)
        _halt_requested(cfg, r)
        return _drive_and_report(args, cfg, r, store, seed)


def _driven() -> RolloutBusyError:
    return RolloutBusyError(
        "a rollout is being driven from this state dir by another rollout start or resume:"
        " wait for it (rollout status), or rollout halt"
    )


def _check_wait(wait: int) -> None:
    if not 0 <= wait <= 86400:
        raise UsageError(f"bad --wait {wait}: seconds, 0..86400")


# -- the driver ------------------------------------------------------------------------


@dataclass
class Driver:
    cfg: CloudConfig
    r: rs.Rollout
    store: Store
    seed: bytes
    sleep: Callable[[float], None] = time.sleep

    def run(self, deadline: float) -> None:
        while True:
            now = _now_ms()
            changed = refresh(self.r, self.store, now)
            before = self.r.state
            _halt_requested(self.cfg, self.r)
            self.r.judge(now)
            if changed or self.r.state != before:
                _save(self.cfg, self.r)
            if self.r.state != "running":
                return
            batch = self.r.to_send()
            if batch:
                for run in batch:
                    self.send(run, deadline)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sleep(min(POLL_S, left))

    def send(self, run: rs.DeviceRun, deadline: float) -> None:
        r, cfg = self.r, self.cfg
        public_key = device_key(cfg.need_registry(), run.device)
        base = f"citysense/v1/{run.gateway}/{run.device}"
        audit = AuditLog(cfg.state_dir / AUDIT_FILE)
        args = {"bundle": r.bundle}
        with CommandLink(cfg.need_broker(), f"{base}/command-results") as link:
            cid = command_ids.next_id(cfg.state_dir, run.device)
            expires_ms = _now_ms() + r.expires_s * 1000
            newest = newest_record(self.store, run.device)
            run.since_seq = newest[1] if newest else 0
            audit.append({"event": "send", "gateway": run.gateway, "device": run.device,
                          "command_id": cid, "action": ACTION, "args": args,
                          "expires_ms": expires_ms, "signed_gateway": run.gateway,
                          "rollout": r.id})  # fmt: skip
            cmd = Command(cid, ACTION, args, run.device, run.gateway, expires_ms)
            link.publish(f"{base}/commands", sign_command(self.seed, cmd))
            run.command_id = cid
            r.move(run, "sent", f"command {cid} sent", _now_ms())
            _save(cfg, r)
            wait = max(5.0, min(RESULT_WAIT_S, deadline - time.monotonic()))
            status, by, detail = await_answer(link, public_key, cid, time.monotonic() + wait)
        audit.append({"event": "answer", "device": run.device, "command_id": cid,
                      "status": status, "by": by, "detail": detail, "ignored": 0})  # fmt: skip
        if status == "applied":
            r.move(run, "accepted", detail, _now_ms())
        elif status == "refused":
            r.move(run, "failed", f"refused by the {by}: {detail}", _now_ms())
        else:
            run.detail = f"command {cid}: no COMMAND_RESULT within {wait:.0f} s"
        _save(cfg, r)


def await_answer(
    link: CommandLink, public_key: bytes, cid: int, deadline: float
) -> tuple[str, str | None, str]:
    """(applied | refused | timeout, device | gateway | None, detail) for command `cid`."""
    while (body := link.next_result(deadline)) is not None:
        refusal = decode_gateway_refusal(body)
        if refusal is not None:
            if refusal.get("command_id") == cid:
                return "refused", "gateway", printable(f"{refusal['refused']}")
            continue
        try:
            result = decode_command_result(public_key, body)
        except ProtocolError:
            continue  # not signed by this device's registered key
        if result.command_id == cid:
            return ("applied" if result.ok else "refused"), "device", printable(result.detail)
    return "timeout", None, ""


def _drive_and_report(
    args: argparse.Namespace, cfg: CloudConfig, r: rs.Rollout, store: Store, seed: bytes
) -> int:
    try:
        Driver(cfg, r, store, seed).run(time.monotonic() + args.wait)
    finally:
        _save(cfg, r)
    return _report(args, r)


def _report(args: argparse.Namespace, r: rs.Rollout) -> int:
    if args.json:
        print(json.dumps(rs.as_dict(r), sort_keys=True))
    else:
        _print_state(r)
    what = f"rollout {r.id} of {r.release}"
    failed = [d for d in r.devices if d.state == "failed"]
    if r.state == "halted":
        raise RolloutFailedError(f"{what} halted: {r.reason}")
    if r.state == "running":
        raise RolloutPendingError(
            f"{what} still running after --wait ({_summary(r)}): `rollout resume` carries it on"
        )
    if failed:
        raise RolloutFailedError(
            f"{what} done with {len(failed)} failed device(s): {failed[0].device}:"
            f" {failed[0].detail}"
        )
    return 0


# -- status, halt, the files -------------------------------------------------------------


def status(args: argparse.Namespace, cfg: CloudConfig) -> int:
    r = _load(cfg.state_dir)
    if r is None:
        raise UsageError("no rollout was started from this state dir: see rollout start")
    if cfg.database_url is not None and r.state == "running":
        refresh(r, open_store(cfg.database_url, cfg.path.parent if cfg.path else None), _now_ms())
    halt_asked = (cfg.state_dir / HALT_FILE).exists() and r.state == "running"
    if args.json:
        print(json.dumps({**rs.as_dict(r), "halt_requested": halt_asked}, sort_keys=True))
    else:
        _print_state(r)
        if halt_asked:
            print("halt requested: the driver halts it within a second (or at the next resume)")
    return 0


def halt(args: argparse.Namespace, cfg: CloudConfig) -> int:
    r = _load(cfg.state_dir)
    if r is None or r.state != "running":
        raise UsageError("no running rollout to halt: see rollout status")
    try:
        (cfg.state_dir / HALT_FILE).write_text(f"{r.id}\n")
    except OSError as exc:
        raise RolloutStateError(f"cannot write {cfg.state_dir / HALT_FILE} ({exc})") from exc
    print(f"halt of rollout {r.id} requested: nothing more is sent")
    return 0


def _halt_requested(cfg: CloudConfig, r: rs.Rollout) -> bool:
    path = cfg.state_dir / HALT_FILE
    try:
        asked = path.read_text().strip()
    except OSError:
        return False
    if asked != r.id or r.state != "running":
        return False
    r.state, r.reason = "halted", "halted by the operator (rollout halt)"
    _save(cfg, r)
    _clear_halt(cfg)
    return True


def _clear_halt(cfg: CloudConfig) -> None:
    (cfg.state_dir / HALT_FILE).unlink(missing_ok=True)


def _load(state_dir: Path) -> rs.Rollout | None:
    try:
        return rs.load(state_dir)
    except rs.StateFileError as exc:
        raise RolloutStateError(f"{exc}: restore it from a backup or move it aside") from exc


def _save(cfg: CloudConfig, r: rs.Rollout) -> None:
    try:
        rs.save(cfg.state_dir, r)
    except OSError as exc:
        raise RolloutStateError(
            f"cannot write the rollout state ({exc}): check [state] dir"
        ) from exc


def _summary(r: rs.Rollout) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(r.counts().items()))


def _print_state(r: rs.Rollout) -> None:
    head = f"rollout {r.id}: release {r.release} seq {r.seq} bundle {r.bundle[:16]}: {r.state}"
    print(head + (f" ({r.reason})" if r.reason else ""))
    for d in r.devices:
        wave = "canary" if d.wave == 0 and r.canary else f"wave {d.wave}"
        fw = f" fw {d.fw}" if d.fw else ""
        print(f"  {d.device:<24} {d.gateway:<16} {wave:<8} {d.state:<10}{fw} {d.detail}")
    print(f"  {_summary(r)}")
