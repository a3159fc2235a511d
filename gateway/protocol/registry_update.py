"""REGISTRY_UPDATE: the device registry as the operator publishes it to gateways.

A COSE_Sign1 (EdDSA, kid "operator") signed by the operator key, as a COMMAND is; its
payload is the CBOR map
    {1: version (uint, only grows), 2: scope (ALL_GATEWAYS "*" or one gateway id),
     3: [entry, ...] (each the exact bytes of one registry file `<device_id>.json`),
     4: issued at (Unix ms, informative)}
Key 3 is the FULL set of entries of that scope, not a delta: a gateway that missed any
number of versions catches up from the one retained message, and applying a version
twice changes nothing. Entries keep the registry file format (citysense_formats.
registry_entry) byte for byte, so the gateway writes what the operator's directory holds.

`decode_update` is the one decoder, used by the gateway (verify, then decode) and by the
cloud tool (a round trip before it publishes). Sizes are bounded before any CBOR is
decoded; every entry is parsed with registry_entry.parse and device ids are unique.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from citysense_formats import devid, registry_entry

from .cbor import dumps, get_text, get_uint, loads_strict, require_map
from .commands import OPERATOR_KID
from .cose import parse_sign1, sign1, verify_parsed
from .errors import MalformedError

ALL_GATEWAYS: Final = "*"
MAX_BYTES: Final = 8 * 1024 * 1024
"""A whole update (COSE bytes); about 25,000 entries of the usual ~300 bytes."""
MAX_ENTRIES: Final = 50_000
MAX_VERSION: Final = 2**63 - 1
WHAT: Final = "REGISTRY_UPDATE"
TOPIC_ALL: Final = "citysense/v1/registry"
"""Retained: the update for every gateway."""


def topic_for(scope: str) -> str:
    """Where an update of `scope` is published (retained): TOPIC_ALL for "*", else
    citysense/v1/<gateway id>/registry."""
    return TOPIC_ALL if scope == ALL_GATEWAYS else f"citysense/v1/{scope}/registry"


@dataclass(frozen=True, slots=True)
class RegistryUpdate:
    version: int
    scope: str
    entries: dict[str, bytes]  # device id -> the file's bytes
    issued_ms: int


def encode_payload(update: RegistryUpdate) -> bytes:
    return dumps(
        {
            1: update.version,
            2: update.scope,
            3: [update.entries[d] for d in sorted(update.entries)],
            4: update.issued_ms,
        }
    )


def sign_update(seed: bytes, update: RegistryUpdate, kid: bytes = OPERATOR_KID) -> bytes:
    data = sign1(seed, kid, encode_payload(update))
    if len(data) > MAX_BYTES:
        raise MalformedError(f"{WHAT}: {len(data)} bytes, more than {MAX_BYTES}", reason="oversize")
    return data


def _entries(items: object) -> dict[str, bytes]:
    if not isinstance(items, list):
        raise MalformedError(f"{WHAT}: key 3 (entries) must be an array")
    if len(items) > MAX_ENTRIES:
        raise MalformedError(f"{WHAT}: more than {MAX_ENTRIES} entries", reason="oversize")
    out: dict[str, bytes] = {}
    for i, data in enumerate(items):
        if not isinstance(data, bytes):
            raise MalformedError(f"{WHAT}: entry {i} must be a bstr (the file's bytes)")
        try:
            entry = registry_entry.parse(data)
        except registry_entry.RegistryEntryError as exc:
            raise MalformedError(f"{WHAT}: entry {i}: {exc}", reason="bad-entry") from exc
        if entry.device_id in out:
            raise MalformedError(f"{WHAT}: device {entry.device_id!r} given twice")
        out[entry.device_id] = data
    return out


def decode_update(operator_public_key: bytes, data: bytes) -> RegistryUpdate:
    """Verify the operator's signature, then decode strictly. ProtocolError with reason
    oversize, malformed, alg, kid, bad-signature or bad-entry otherwise."""
    if len(data) > MAX_BYTES:
        raise MalformedError(f"{WHAT}: larger than {MAX_BYTES} bytes", reason="oversize")
    msg = parse_sign1(data)
    if msg.kid != OPERATOR_KID:
        raise MalformedError(f"{WHAT}: not signed with kid 'operator'", reason="kid")
    verify_parsed(operator_public_key, msg)
    m = require_map(loads_strict(msg.payload, WHAT), WHAT)
    scope = get_text(m, 2, WHAT, max_len=devid.MAX_LEN)
    if scope != ALL_GATEWAYS and not devid.is_valid(scope):
        raise MalformedError(f"{WHAT}: key 2 (scope) must be '*' or a gateway id")
    return RegistryUpdate(
        get_uint(m, 1, WHAT, limit=MAX_VERSION),
        scope,
        _entries(m.get(3)),
        get_uint(m, 4, WHAT),
    )
