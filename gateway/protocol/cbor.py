"""Strict CBOR helpers over cbor2: one item, no trailing bytes, errors as MalformedError."""

from __future__ import annotations

import io
from typing import Any

import cbor2

from .errors import MalformedError


def loads_strict(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item from `data`; MalformedError naming `what` otherwise."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # the one boundary for untrusted CBOR
        raise MalformedError(f"{what}: not valid CBOR ({exc})") from exc
    if fp.tell() != len(data):
        raise MalformedError(f"{what}: {len(data) - fp.tell()} trailing bytes after the item")
    return item


def dumps(obj: Any) -> bytes:
    return cbor2.dumps(obj)


def require_map(obj: Any, what: str) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        raise MalformedError(f"{what}: expected a map, got {type(obj).__name__}")
    return obj


def get_uint(m: dict[Any, Any], key: int, what: str, *, limit: int = 2**64 - 1) -> int:
    value = m.get(key)
    if type(value) is not int or not 0 <= value <= limit:
        raise MalformedError(f"{what}: key {key} must be an unsigned integer, got {value!r:.40}")
    return value


def get_text(m: dict[Any, Any], key: int, what: str, *, max_len: int = 256) -> str:
    value = m.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise MalformedError(f"{what}: key {key} must be text of at most {max_len} chars")
    return value
