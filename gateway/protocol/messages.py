"""Bodies of the link frames other than RECORD/COMMAND: HELLO, ACK, NACK, TIME."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from .cbor import dumps, get_text, get_uint, loads_strict, require_map
from .errors import MalformedError, ProtocolError

PROTOCOL_VERSION: Final = 2
SUPPORTED_VERSIONS: Final = (1, 2)
"""HELLO versions accepted: a protocol-1 node still delivers records, but its firmware
cannot check a COMMAND's binding, so the gateway refuses commands for it (old-firmware)."""


class NackReason(StrEnum):
    UNKNOWN_DEVICE = "unknown-device"
    REVOKED = "revoked"
    BAD_SIGNATURE = "bad-signature"
    MALFORMED = "malformed"
    REPLAY = "replay"
    BUSY = "busy"
    SEQ_AHEAD = "seq-ahead"  # implausibly far ahead (gateway/admission.py): kept by the node


@dataclass(frozen=True, slots=True)
class Hello:
    device_id: str
    firmware: str
    boot_count: int
    reset_cause: str
    uptime_ms: int
    highest_seq: int
    problem: str | None = None
    protocol: int = PROTOCOL_VERSION
    trial: bool = False
    """HELLO key 9: "trial" while the node runs an updated app not yet confirmed."""


def encode_hello(hello: Hello) -> bytes:
    body: dict[int, object] = {
        1: hello.protocol,
        2: hello.device_id,
        3: hello.firmware,
        4: hello.boot_count,
        5: hello.reset_cause,
        6: hello.uptime_ms,
        7: hello.highest_seq,
    }
    if hello.problem is not None:
        body[8] = hello.problem
    if hello.trial:
        body[9] = "trial"
    return dumps(body)


def decode_hello(body: bytes) -> Hello:
    m = require_map(loads_strict(body, "HELLO"), "HELLO")
    version = get_uint(m, 1, "HELLO")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"HELLO: protocol version {version} not supported", reason="version")
    problem = m.get(8)
    if problem is not None and (not isinstance(problem, str) or len(problem) > 256):
        raise MalformedError("HELLO: key 8 (problem) must be text")
    state = m.get(9, "stable")
    if state not in ("trial", "stable"):
        raise MalformedError("HELLO: key 9 (firmware state) must be 'trial' or 'stable'")
    device_id = get_text(m, 2, "HELLO", max_len=64)
    if not device_id:
        raise MalformedError("HELLO: empty device_id")
    return Hello(
        device_id=device_id,
        firmware=get_text(m, 3, "HELLO", max_len=64),
        boot_count=get_uint(m, 4, "HELLO"),
        reset_cause=get_text(m, 5, "HELLO", max_len=32),
        uptime_ms=get_uint(m, 6, "HELLO"),
        highest_seq=get_uint(m, 7, "HELLO"),
        problem=problem,
        protocol=version,
        trial=state == "trial",
    )


def encode_ack(seq: int) -> bytes:
    return dumps({1: seq})


def decode_ack(body: bytes) -> int:
    return get_uint(require_map(loads_strict(body, "ACK"), "ACK"), 1, "ACK")


def encode_nack(seq: int, reason: NackReason | str) -> bytes:
    return dumps({1: seq, 2: str(reason)})


def decode_nack(body: bytes) -> tuple[int, NackReason]:
    m = require_map(loads_strict(body, "NACK"), "NACK")
    seq = get_uint(m, 1, "NACK")
    text = get_text(m, 2, "NACK", max_len=32)
    try:
        return seq, NackReason(text)
    except ValueError as exc:
        raise MalformedError(f"NACK: unknown reason {text!r}") from exc


def encode_time(unix_ms: int) -> bytes:
    return dumps({1: unix_ms})


def decode_time(body: bytes) -> int:
    return get_uint(require_map(loads_strict(body, "TIME"), "TIME"), 1, "TIME")
