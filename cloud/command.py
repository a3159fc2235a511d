"""`citysense-cloud command send | log`: sign an operator COMMAND, deliver it, verify the
device's answer; and the audit trail of what was sent and answered.

    citysense-cloud --config cloud.toml command send --gateway gw-01 --device node-1 \\
        set_interval interval_s=300 [--expires 10m] [--wait 60] [--any-gateway] [--json]
    citysense-cloud --config cloud.toml command log [--json]

send: checks the action and its arguments (ACTIONS in gateway/protocol/commands.py, the
firmware's table), reads the operator key ([operator] key_file, 0600) and the device's
registry entry ([registry] path), connects (MQTT 5, mTLS), subscribes to the device's
command-results, takes a new id (cloud/command_ids.py), signs the COMMAND bound to the
device, the gateway (or "*" with --any-gateway) and the expiry, records it in the audit
file, publishes it QoS 1 and checks the PUBACK, then waits for the answer with its id:
a COMMAND_RESULT verified against the registry key, or the gateway's unsigned refusal.

Exit codes: 0 applied; 2 bad input or config; 3 refused (by the device, or by the
gateway); 4 no answer within --wait; 5 broker unreachable; 6 state dir / audit file;
7 the broker refused the publish or subscription (its ACL).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from citysense_formats import registry_entry
from gateway.protocol import (
    ACTIONS,
    ANY_GATEWAY,
    Command,
    ProtocolError,
    decode_command_result,
    decode_gateway_refusal,
    sign_command,
)

from . import command_ids
from .audit import AuditLog
from .command_mqtt import CommandLink
from .config import CloudConfig
from .errors import (
    CloudError,
    CommandRefusedError,
    CommandTimeoutError,
    ConfigError,
    PublishRefusedError,
    UsageError,
)
from .keyfile import load_signing_key

AUDIT_FILE = "command-audit.jsonl"
MAX_EXPIRES_S = 7 * 86400
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("command", help="send an operator COMMAND to a device; the audit log")
    csub = p.add_subparsers(dest="command_cmd", required=True, metavar="ACTION")
    s = csub.add_parser("send", help="sign, publish, wait for the device's signed result")
    s.add_argument("--gateway", required=True, help="the gateway the device is on")
    s.add_argument("--device", required=True, help="the target device id")
    s.add_argument(
        "--any-gateway",
        action="store_true",
        help='sign gateway "*": any gateway may deliver it (a node that moves)',
    )
    s.add_argument("--expires", default="10m", help="validity: 90s, 10m, 2h, 1d (default 10m)")
    s.add_argument("--wait", type=int, default=60, help="seconds to wait for the result")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a line")
    s.add_argument("action", help="; ".join(f"{a} {_usage(a)}".strip() for a in ACTIONS))
    s.add_argument("params", nargs="*", metavar="NAME=VALUE")
    s.set_defaults(func=send)
    g = csub.add_parser("log", help="what was sent and answered (the audit file)")
    g.add_argument("--json", action="store_true", help="JSON lines")
    g.set_defaults(func=show_log)  # fmt: skip


def _usage(action: str) -> str:
    return " ".join(
        f"{a[0]}={a[1]}..{a[2]}" if len(a) == 3 else f"{a[0]}=<{a[1]}>" for a in ACTIONS[action]
    )


# -- input -------------------------------------------------------------------------------


def parse_action(action: str, params: list[str]) -> dict[str, int | str]:
    """ACTION NAME=VALUE... -> the args map; UsageError naming the problem and the fix."""
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}: use one of {', '.join(sorted(ACTIONS))}")
    spec = {a[0]: a for a in ACTIONS[action]}
    takes = f"{action} takes {_usage(action) or 'no arguments'}"
    args: dict[str, int | str] = {}
    for item in params:
        name, eq, text = item.partition("=")
        if not eq or not name:
            raise UsageError(f"bad argument {item!r}: write NAME=VALUE ({takes})")
        if name not in spec:
            raise UsageError(f"unknown argument {name!r} for {action} ({takes})")
        if name in args:
            raise UsageError(f"argument {name!r} given twice ({takes})")
        arg = spec[name]
        if len(arg) == 2:  # a text argument (update bundle=<id>)
            if not re.fullmatch(arg[1], text):
                raise UsageError(f"bad value {name}={text!r}: expected text matching {arg[1]}")
            args[name] = text
            continue
        lo, hi = arg[1], arg[2]
        if not re.fullmatch(r"-?\d+", text) or not lo <= int(text) <= hi:
            raise UsageError(f"bad value {name}={text!r}: expected a whole number {lo}..{hi}")
        args[name] = int(text)
    missing = [n for n in spec if n not in args]
    if missing:
        raise UsageError(f"missing argument {missing[0]} ({takes})")
    return args


def parse_duration(text: str, what: str, limit: int) -> int:
    m = _DURATION.match(text.strip())
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m else 0
    if not m or not 1 <= seconds <= limit:
        raise UsageError(f"bad {what} {text!r}: write e.g. 90s, 10m, 2h (1 s to {limit} s)")
    return seconds


def _check_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise UsageError(
            f"bad {what} {value!r}: 1-64 letters, digits, '.', '_', ':' or '-' (no '/', '+', '#')"
        )
    return value


def load_operator_seed(path: Path) -> bytes:
    """The operator's Ed25519 seed from its PKCS#8 PEM file (0600, as `citysense-provision
    operator-key init` writes it)."""
    key = load_signing_key(path, "operator", "citysense-provision operator-key init")
    return key.private_bytes_raw()


def device_key(registry: Path, device_id: str) -> bytes:
    path = registry / f"{device_id}.json"
    try:
        entry = registry_entry.parse(path.read_bytes()[: registry_entry.MAX_BYTES + 1], device_id)
    except FileNotFoundError as exc:
        raise UsageError(
            f"device {device_id!r} is not in the registry {registry}: check --device"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"registry entry {path}: {exc}") from exc
    if not entry.active:
        raise UsageError(f"device {device_id!r} is revoked in the registry: nothing to command")
    return entry.public_key


# -- send --------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # applied | refused | timeout (before an answer) | publish-refused | unconfirmed
    gateway: str
    device: str
    command_id: int
    action: str
    args: dict[str, int | str]
    expires_ms: int
    signed_gateway: str
    by: str | None = None  # "device" (signed, verified) or "gateway" (unsigned)
    detail: str = ""
    ignored: int = 0  # answers on the topic that failed verification

    def event(self, kind: str) -> dict[str, Any]:
        """The audit line: "send" (what was signed) or "answer" (what came of it)."""
        keys = _AUDITED[kind]
        return {"event": kind, **{k: v for k, v in asdict(self).items() if k in keys}}


_AUDITED = {
    "send": {"gateway", "device", "command_id", "action", "args", "expires_ms", "signed_gateway"},
    "answer": {"device", "command_id", "status", "by", "detail", "ignored"},
}


def send(args: argparse.Namespace, cfg: CloudConfig) -> int:
    gateway = _check_id(args.gateway, "--gateway")
    device = _check_id(args.device, "--device")
    params = parse_action(args.action, args.params)
    expires_s = parse_duration(args.expires, "--expires", MAX_EXPIRES_S)
    if not 1 <= args.wait <= 3600:
        raise UsageError(f"bad --wait {args.wait}: seconds, 1..3600")
    broker = cfg.need_broker()
    public_key = device_key(cfg.need_registry(), device)
    seed = load_operator_seed(cfg.need_operator_key())
    base = f"citysense/v1/{gateway}/{device}"
    audit = AuditLog(cfg.state_dir / AUDIT_FILE)
    with CommandLink(broker, f"{base}/command-results") as link:
        cid = command_ids.next_id(cfg.state_dir, device)
        expires_ms = int(time.time() * 1000) + expires_s * 1000
        signed_gw = ANY_GATEWAY if args.any_gateway else gateway
        out = Outcome("timeout", gateway, device, cid, args.action, params, expires_ms, signed_gw)
        audit.append(out.event("send"))  # before it leaves: the log never misses a command
        try:
            cmd = Command(cid, args.action, params, device, signed_gw, expires_ms)
            link.publish(f"{base}/commands", sign_command(seed, cmd))
        except CloudError as exc:
            refused = isinstance(exc, PublishRefusedError)
            out.status, out.detail = ("publish-refused" if refused else "unconfirmed"), str(exc)
            audit.append(out.event("answer"))
            raise
        _await(link, public_key, out, time.monotonic() + args.wait)
    audit.append(out.event("answer"))
    return _report(out, args.json, args.wait)


def _await(link: CommandLink, public_key: bytes, out: Outcome, deadline: float) -> None:
    """Fill `out` from the first answer carrying its id (status stays "timeout" if none)."""
    while (body := link.next_result(deadline)) is not None:
        refusal = decode_gateway_refusal(body)
        if refusal is not None:
            if refusal.get("command_id") == out.command_id:
                out.status, out.by = "refused", "gateway"
                out.detail = printable(f"{refusal['refused']}: {refusal.get('detail', '')}")
                return
            continue
        try:
            result = decode_command_result(public_key, body)
        except ProtocolError:
            out.ignored += 1  # not signed by this device's registered key
            continue
        if result.command_id == out.command_id:
            out.status = "applied" if result.ok else "refused"
            out.by, out.detail = "device", printable(result.detail)
            return


def printable(text: str, limit: int = 256) -> str:
    """Wire text made safe for a terminal line: control characters escaped, bounded."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])


def _report(out: Outcome, as_json: bool, wait: int) -> int:
    codes = {"applied": 0, "refused": CommandRefusedError.exit_code,
             "timeout": CommandTimeoutError.exit_code}  # fmt: skip
    if as_json:
        print(json.dumps(asdict(out), separators=(",", ":"), sort_keys=True))
        return codes[out.status]
    what = f"{out.device} command {out.command_id} {out.action}{_args_text(out.args)}"
    if out.status == "applied":
        print(f"applied: {what}: {out.detail} (result signed by {out.device}, verified)")
        return 0
    note = f"; {out.ignored} answer(s) failing verification ignored" if out.ignored else ""
    if out.status == "refused" and out.by == "device":
        raise CommandRefusedError(
            f"{what} refused by the device: {out.detail} (signed, verified){note}"
        )
    if out.status == "refused":
        raise CommandRefusedError(
            f"{what} refused by gateway {out.gateway} (unsigned report): {out.detail}{note}"
        )
    raise CommandTimeoutError(
        f"{what}: no result within {wait} s{note}: is gateway {out.gateway} online and the"
        " device on it? Check `citysense-gateway status`, or wait longer (--wait)"
    )


def _args_text(args: dict[str, Any]) -> str:
    return "".join(f" {k}={v}" for k, v in sorted(args.items()))


# -- log ---------------------------------------------------------------------------------


def show_log(args: argparse.Namespace, cfg: CloudConfig) -> int:
    events, torn = AuditLog(cfg.state_dir / AUDIT_FILE).read()
    answers = {(e.get("device"), e.get("command_id")): e for e in events
               if e.get("event") == "answer"}  # fmt: skip
    for e in events:
        if e.get("event") != "send":
            continue
        a = answers.get((e.get("device"), e.get("command_id")), {})
        row = {"sent": e.get("t"), "gateway": e.get("gateway"), "device": e.get("device"),
               "command_id": e.get("command_id"), "action": e.get("action"),
               "args": e.get("args", {}), "expires_ms": e.get("expires_ms"),
               "answered": a.get("t"), "status": a.get("status", "no answer recorded"),
               "by": a.get("by"), "detail": a.get("detail", "")}  # fmt: skip
        if args.json:
            print(json.dumps(row, separators=(",", ":"), sort_keys=True))
        else:
            print(_log_line(row))
    if torn:
        print(f"citysense-cloud: {torn} unreadable line(s) skipped in the audit file",
              file=sys.stderr)  # fmt: skip
    return 0


def _log_line(row: dict[str, Any]) -> str:
    args = row["args"] if isinstance(row["args"], dict) else {}
    by = f" by {row['by']}" if row["by"] else ""
    detail = f": {row['detail']}" if row["detail"] else ""
    return (
        f"{row['sent']} {row['gateway']}/{row['device']} command {row['command_id']}"
        f" {row['action']}{_args_text(args)} -> {row['status']}{by}{detail}"
    )
