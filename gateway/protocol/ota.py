"""Bodies of the firmware-transfer frames (docs/protocol.md section 10), sans-I/O.

    OTA_OFFER (0x08, gw->node)  {1: bundle id bstr(32), 2: bundle size uint}
    OTA_GET   (0x09, node->gw)  {1: bundle id bstr(32), 2: offset uint, 3: max length uint}
    OTA_CHUNK (0x0A, gw->node)  {1: bundle id, 2: offset, 3: bytes bstr}      the bytes
                                {1: bundle id, 2: offset, 4: reason tstr}     or why not
The node pulls: the offset of each GET acknowledges everything before it, so a transfer
resumes where the node's flash says it stopped (a line cut, a gateway restart or a power
cut on the node). An empty bstr in key 3 means the offset is the end of the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .cbor import dumps, get_text, get_uint, loads_strict, require_map
from .errors import MalformedError

CHUNK_MAX: Final = 960
"""Most bytes one OTA_CHUNK carries: with its map and id the frame stays within 1024."""
MAX_BUNDLE: Final = 8 + 8192 + (1 << 20)
"""The largest bundle file citysense_formats.bundle accepts: header, manifest, files."""


class OtaReason:
    UNKNOWN_BUNDLE: Final = "unknown-bundle"
    NO_RELEASE_KEY: Final = "no-release-key"
    READ_ERROR: Final = "read-error"


@dataclass(frozen=True, slots=True)
class OtaGet:
    bundle_id: bytes
    offset: int
    length: int


def _bid(m: dict[object, object], what: str) -> bytes:
    bid = m.get(1)
    if not isinstance(bid, bytes) or len(bid) != 32:
        raise MalformedError(f"{what}: key 1 must be a 32-byte bundle id")
    return bid


def encode_ota_offer(bundle_id: bytes, size: int) -> bytes:
    return dumps({1: bundle_id, 2: size})


def decode_ota_offer(body: bytes) -> tuple[bytes, int]:
    m = require_map(loads_strict(body, "OTA_OFFER"), "OTA_OFFER")
    return _bid(m, "OTA_OFFER"), get_uint(m, 2, "OTA_OFFER", limit=MAX_BUNDLE)


def encode_ota_get(get: OtaGet) -> bytes:
    return dumps({1: get.bundle_id, 2: get.offset, 3: get.length})


def decode_ota_get(body: bytes) -> OtaGet:
    m = require_map(loads_strict(body, "OTA_GET"), "OTA_GET")
    if set(m) != {1, 2, 3}:
        raise MalformedError("OTA_GET: expected keys 1, 2, 3")
    return OtaGet(
        _bid(m, "OTA_GET"),
        get_uint(m, 2, "OTA_GET", limit=MAX_BUNDLE),
        get_uint(m, 3, "OTA_GET", limit=CHUNK_MAX * 64),
    )


def encode_ota_chunk(bundle_id: bytes, offset: int, data: bytes) -> bytes:
    if len(data) > CHUNK_MAX:
        raise ValueError(f"an OTA_CHUNK carries at most {CHUNK_MAX} bytes")
    return dumps({1: bundle_id, 2: offset, 3: data})


def encode_ota_refusal(bundle_id: bytes, offset: int, reason: str) -> bytes:
    return dumps({1: bundle_id, 2: offset, 4: reason})


def decode_ota_chunk(body: bytes) -> tuple[bytes, int, bytes | None, str | None]:
    """(bundle id, offset, bytes or None, reason or None)."""
    m = require_map(loads_strict(body, "OTA_CHUNK"), "OTA_CHUNK")
    bid, offset = _bid(m, "OTA_CHUNK"), get_uint(m, 2, "OTA_CHUNK", limit=MAX_BUNDLE)
    if 4 in m:
        return bid, offset, None, get_text(m, 4, "OTA_CHUNK", max_len=32)
    data = m.get(3)
    if not isinstance(data, bytes) or len(data) > CHUNK_MAX:
        raise MalformedError(f"OTA_CHUNK: key 3 must be at most {CHUNK_MAX} bytes")
    return bid, offset, data, None
