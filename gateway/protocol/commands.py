"""COMMAND (operator-signed) and COMMAND_RESULT (device-signed) payloads, and the
gateway's checks on a COMMAND before it reaches the serial line.

Protocol 2: a COMMAND payload is {1: id, 2: action, 3: args, 4: device id, 5: gateway
id or ANY_GATEWAY, 6: expiry (Unix ms)}, all signed. `check_command` is what a gateway
does with one from the broker: the operator's signature, then the binding (the topic's
device, this gateway, not expired) and the node's protocol; every outcome but "ok" is a
refusal, published upwards by the gateway as `gateway_refusal` (it holds no device key,
so that line is unsigned JSON; the node's own refusals are signed COMMAND_RESULTs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .cbor import dumps, get_text, get_uint, loads_strict, require_map
from .cose import parse_sign1, sign1, verify_parsed
from .errors import MalformedError, ProtocolError

OPERATOR_KID: Final = b"operator"
ANY_GATEWAY: Final = "*"
"""COMMAND key 5 for a node that moves between gateways: any gateway may deliver it."""
COMMAND_PROTOCOL: Final = 2
"""The lowest node protocol (HELLO key 1) that checks a COMMAND's device and expiry."""


@dataclass(frozen=True, slots=True)
class Command:
    command_id: int
    action: str
    args: dict[Any, Any]
    device_id: str
    gateway_id: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: int
    ok: bool
    detail: str
    kid: bytes = b""


IntArg = tuple[str, int, int]
"""(argument name, lowest, highest): a whole number in that range."""
TextArg = tuple[str, str]
"""(argument name, regular expression the whole text must match)."""

# action -> (argument spec, ...): what the firmware's citysense.commands.ACTIONS accepts
# (tests/protocol/test_command_binding.py holds them equal)
ACTIONS: Final[dict[str, tuple[IntArg | TextArg, ...]]] = {
    "set_interval": (("interval_s", 1, 86400),),
    "set_batch": (("batch", 1, 64),),
    "sync_now": (),
    "reboot": (),
    # fetch, check and stage this bundle (its id: hex SHA-256 of the manifest), then
    # switch to it on trial (docs/firmware.md, "Firmware updates")
    "update": (("bundle", "[0-9a-f]{64}"),),
}


def sign_command(seed: bytes, cmd: Command, kid: bytes = OPERATOR_KID) -> bytes:
    payload = dumps(
        {
            1: cmd.command_id,
            2: cmd.action,
            3: cmd.args,
            4: cmd.device_id,
            5: cmd.gateway_id,
            6: cmd.expires_ms,
        }
    )
    return sign1(seed, kid, payload)


def decode_command(operator_public_key: bytes, data: bytes) -> Command:
    """Verify the operator's signature, then decode the command. A payload without the
    binding (keys 4-6: a protocol-1 command) is refused with reason `unbound`."""
    msg = parse_sign1(data)
    verify_parsed(operator_public_key, msg)
    m = require_map(loads_strict(msg.payload, "COMMAND"), "COMMAND")
    args = m.get(3, {})
    if not isinstance(args, dict):
        raise MalformedError("COMMAND: key 3 (args) must be a map")
    if all(k not in m for k in (4, 5, 6)):
        raise ProtocolError("COMMAND: no device, gateway or expiry (protocol 1)", reason="unbound")
    return Command(
        get_uint(m, 1, "COMMAND"),
        get_text(m, 2, "COMMAND", max_len=32),
        args,
        get_text(m, 4, "COMMAND", max_len=64),
        get_text(m, 5, "COMMAND", max_len=64),
        get_uint(m, 6, "COMMAND"),
    )


@dataclass(frozen=True, slots=True)
class Target:
    """Where a COMMAND arrived: the topic's device, this gateway, the node's protocol
    (None: no HELLO seen since the gateway started), and the gateway's clock."""

    device_id: str
    gateway_id: str
    node_protocol: int | None
    now_ms: int


_BINDING: Final[tuple[tuple[str, Callable[[Command, Target], bool]], ...]] = (
    ("wrong-device", lambda c, t: c.device_id != t.device_id),
    ("wrong-gateway", lambda c, t: c.gateway_id not in (t.gateway_id, ANY_GATEWAY)),
    ("expired", lambda c, t: t.now_ms >= c.expires_ms),
    (
        "old-firmware",
        lambda c, t: t.node_protocol is not None and t.node_protocol < COMMAND_PROTOCOL,
    ),
)

REFUSALS: Final[dict[str, str]] = {
    "no-operator-key": "this gateway has no operator key: set [gateway] operator_key",
    "bad-signature": "not signed by the operator key this gateway trusts",
    "malformed": "not a valid COMMAND",
    "kid": "not signed with kid 'operator'",
    "alg": "not an EdDSA COSE_Sign1",
    "unbound": "a protocol-1 command names no device, gateway or expiry: sign it again",
    "wrong-device": "signed for another device than the topic's",
    "wrong-gateway": "signed for another gateway",
    "expired": "past its expiry by the gateway's clock: send it again",
    "old-firmware": "the node runs protocol-1 firmware, which cannot check a command's"
    " device or expiry: update its firmware",
    "no-route": "the device is not on this gateway's serial lines now",
    "oversize": "too big for one COMMAND frame",
}
"""Gateway outcomes other than delivered -> what the operator is told."""


def check_command(
    operator_key: bytes | None,
    payload: bytes,
    device_id: str,
    gateway_id: str,
    node_protocol: int | None,
    now_ms: int | None = None,
) -> str:
    """ "ok", or the reason (a key of REFUSALS) the gateway must not send it to the node."""
    if operator_key is None:
        return "no-operator-key"
    try:
        cmd = decode_command(operator_key, payload)
    except ProtocolError as exc:
        return exc.reason
    now = int(time.time() * 1000) if now_ms is None else now_ms
    target = Target(device_id, gateway_id, node_protocol, now)
    for reason, refused in _BINDING:
        if refused(cmd, target):
            return reason
    return "ok"


def unverified_command_id(payload: bytes) -> int | None:
    """The id in a COMMAND's payload without checking its signature (for a refusal)."""
    try:
        m = loads_strict(parse_sign1(payload).payload, "COMMAND")
        cid = m.get(1) if isinstance(m, dict) else None
    except ProtocolError:
        return None
    return cid if type(cid) is int and cid >= 0 else None


def gateway_refusal(payload: bytes, outcome: str, gateway_id: str) -> bytes:
    """The gateway's answer on .../command-results for a COMMAND it did not deliver:
    JSON (a COMMAND_RESULT is COSE and starts with 0xd2; this starts with "{")."""
    return json.dumps(
        {
            "gateway": gateway_id,
            "command_id": unverified_command_id(payload),
            "refused": outcome,
            "detail": REFUSALS.get(outcome, outcome),
        },
        separators=(",", ":"),
    ).encode()


def decode_gateway_refusal(data: bytes) -> dict[str, Any] | None:
    """A gateway refusal published by `gateway_refusal`, or None if `data` is not one."""
    if not data.startswith(b"{"):
        return None
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("refused"), str):
        return None
    return obj


def sign_command_result(seed: bytes, kid: bytes, result: CommandResult) -> bytes:
    payload = dumps({1: result.command_id, 2: result.ok, 3: result.detail})
    return sign1(seed, kid, payload)


def decode_command_result(device_public_key: bytes, data: bytes) -> CommandResult:
    """Verify the device's signature, then decode the result."""
    msg = parse_sign1(data)
    verify_parsed(device_public_key, msg)
    m = require_map(loads_strict(msg.payload, "COMMAND_RESULT"), "COMMAND_RESULT")
    ok = m.get(2)
    if not isinstance(ok, bool):
        raise MalformedError("COMMAND_RESULT: key 2 (ok) must be a bool")
    detail = get_text(m, 3, "COMMAND_RESULT", max_len=256)
    return CommandResult(get_uint(m, 1, "COMMAND_RESULT"), ok, detail, msg.kid)
