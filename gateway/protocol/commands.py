"""COMMAND (operator-signed) and COMMAND_RESULT (device-signed) payloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .cbor import dumps, get_text, get_uint, loads_strict, require_map
from .cose import parse_sign1, sign1, verify_parsed
from .errors import MalformedError

OPERATOR_KID: Final = b"operator"


@dataclass(frozen=True, slots=True)
class Command:
    command_id: int
    action: str
    args: dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: int
    ok: bool
    detail: str
    kid: bytes = b""


def sign_command(seed: bytes, cmd: Command, kid: bytes = OPERATOR_KID) -> bytes:
    payload = dumps({1: cmd.command_id, 2: cmd.action, 3: cmd.args})
    return sign1(seed, kid, payload)


def decode_command(operator_public_key: bytes, data: bytes) -> Command:
    """Verify the operator's signature, then decode the command."""
    msg = parse_sign1(data)
    verify_parsed(operator_public_key, msg)
    m = require_map(loads_strict(msg.payload, "COMMAND"), "COMMAND")
    args = m.get(3, {})
    if not isinstance(args, dict):
        raise MalformedError("COMMAND: key 3 (args) must be a map")
    return Command(get_uint(m, 1, "COMMAND"), get_text(m, 2, "COMMAND", max_len=32), args)


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
