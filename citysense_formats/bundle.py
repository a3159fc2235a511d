"""The firmware bundle file (`*.csb`): a signed manifest followed by the app's files.

    "CSB1" | manifest length M (u32 LE) | manifest (M bytes) | file 1 | file 2 | ...

The manifest is a COSE_Sign1 (CBOR tag 18; protected header {1: -8}, EdDSA; unprotected
{4: b"release"}) signed by the release key (Ed25519). Its payload is a CBOR map whose keys
are `KEYS` below. The bundle id is the lowercase hex SHA-256 of the manifest bytes.

`parse` checks shape only (nothing in it may be trusted yet); `verify` is parse plus the
signature plus every file's size and SHA-256. Every refusal is a `BundleError` carrying a
short machine `reason` (counted, reported as `sys/ota refused <id>: <reason>`) and a human
message. The node checks the same rules with its own MicroPython code (citysense/ota.py);
tests/node/test_ota_units.py holds the two against each other.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import cbor2

if TYPE_CHECKING:  # imported where a signature is checked: the gateway agent without
    # [ota] never loads cryptography (~7 MiB resident; docs/benchmarks.md, issue 17)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

MAGIC: Final = b"CSB1"
HEADER: Final = 8  # magic + u32 manifest length
MAX_MANIFEST: Final = 8192
MAX_FILES: Final = 64
MAX_TOTAL: Final = 1 << 20  # 1 MiB of app files: far above today's app (~150 KiB of .py)
MAX_PATH: Final = 64
MAX_VERSION: Final = 32
KID: Final = b"release"
_PROTECTED: Final = b"\xa1\x01\x27"  # {1: -8}
_TAG: Final = 18
_PATH_RULE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")

# manifest keys (the OTA-SPEC table)
K_VERSION, K_SEQ, K_HARDWARE, K_PROTOCOL, K_ARCH, K_TOTAL, K_FILES, K_CREATED = range(1, 9)
KEYS: Final = frozenset(range(1, 9))


class BundleError(ValueError):
    """Not an acceptable bundle. `reason` is a short label, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    manifest: bytes  # the COSE_Sign1 bytes, as signed
    version: str
    seq: int
    hardware: str
    protocol: int
    arch: str
    total: int
    files: tuple[FileEntry, ...]
    created_ms: int
    contents: tuple[bytes, ...]  # each file's bytes, in manifest order

    @property
    def short_id(self) -> str:
        return self.id[:16]

    @property
    def size(self) -> int:
        """The whole bundle file's length."""
        return HEADER + len(self.manifest) + self.total


def bundle_id(data: bytes) -> str:
    """The bundle id (hex SHA-256 of the manifest) of a bundle file; BundleError if no header."""
    manifest, _ = _split(data)
    return hashlib.sha256(manifest).hexdigest()


def _sig_structure(payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", _PROTECTED, b"", payload])


def build(
    files: Sequence[tuple[str, bytes]],
    *,
    version: str,
    seq: int,
    hardware: str,
    protocol: int,
    arch: str,
    signing_key: Ed25519PrivateKey,
    created_ms: int,
) -> bytes:
    """The bundle file's bytes. Refuses (BundleError) what `parse` would refuse."""
    entries = [[path, len(body), hashlib.sha256(body).digest()] for path, body in files]
    total = sum(len(body) for _, body in files)
    payload = cbor2.dumps(
        {
            K_VERSION: version,
            K_SEQ: seq,
            K_HARDWARE: hardware,
            K_PROTOCOL: protocol,
            K_ARCH: arch,
            K_TOTAL: total,
            K_FILES: entries,
            K_CREATED: created_ms,
        }
    )
    _check_payload(_loads(payload, "manifest payload"))
    signature = signing_key.sign(_sig_structure(payload))
    manifest = cbor2.dumps(cbor2.CBORTag(_TAG, [_PROTECTED, {4: KID}, payload, signature]))
    if len(manifest) > MAX_MANIFEST:
        raise BundleError("too-large", f"manifest of {len(manifest)} bytes > {MAX_MANIFEST}")
    body = b"".join(b for _, b in files)
    return MAGIC + struct.pack("<I", len(manifest)) + manifest + body


def _split(data: bytes) -> tuple[bytes, int]:
    if len(data) < HEADER:
        raise BundleError("truncated", f"{len(data)} bytes, shorter than the {HEADER}-byte header")
    if data[:4] != MAGIC:
        raise BundleError("bad-magic", "does not start with CSB1: not a citysense bundle")
    (m,) = struct.unpack_from("<I", data, 4)
    if not 0 < m <= MAX_MANIFEST:
        raise BundleError("malformed", f"manifest length {m} outside 1..{MAX_MANIFEST}")
    if len(data) < HEADER + m:
        raise BundleError("truncated", f"ends inside the manifest ({len(data)} bytes)")
    return data[HEADER : HEADER + m], HEADER + m


def _loads(data: bytes, what: str) -> Any:
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # the one boundary for untrusted CBOR in this format
        raise BundleError("malformed", f"{what}: not valid CBOR ({exc})") from exc
    if fp.tell() != len(data):
        raise BundleError("malformed", f"{what}: trailing bytes after the item")
    return item


def _uint(m: dict[Any, Any], key: int, limit: int = 2**64 - 1) -> int:
    v = m.get(key)
    if type(v) is not int or not 0 <= v <= limit:
        raise BundleError("malformed", f"manifest key {key} must be an unsigned integer")
    return v


def _text(m: dict[Any, Any], key: int, limit: int) -> str:
    v = m.get(key)
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise BundleError("malformed", f"manifest key {key} must be text of 1..{limit} chars")
    return v


def _file_entry(item: Any) -> FileEntry:
    if not isinstance(item, list | tuple) or len(item) != 3:
        raise BundleError("malformed", "a file entry must be [path, size, sha256]")
    path, size, digest = item
    if not isinstance(path, str) or len(path) > MAX_PATH or not _PATH_RULE.fullmatch(path):
        raise BundleError("bad-path", f"file path {str(path)[:40]!r} is not a plain relative path")
    if ".." in path.split("/"):
        raise BundleError("bad-path", f"file path {path!r} climbs out of the app")
    if type(size) is not int or not 0 <= size <= MAX_TOTAL:
        raise BundleError("malformed", f"file {path}: size must be 0..{MAX_TOTAL}")
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise BundleError("malformed", f"file {path}: sha256 must be a 32-byte bstr")
    return FileEntry(path, size, digest)


def _check_payload(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict) or set(m) != KEYS:
        raise BundleError("malformed", "manifest payload must be a map with keys 1..8")
    raw_files = m[K_FILES]
    if not isinstance(raw_files, list | tuple) or not 0 < len(raw_files) <= MAX_FILES:
        raise BundleError("malformed", f"manifest must list 1..{MAX_FILES} files")
    files = tuple(_file_entry(f) for f in raw_files)
    if len({f.path for f in files}) != len(files):
        raise BundleError("bad-path", "a file path is listed twice")
    total = _uint(m, K_TOTAL, MAX_TOTAL)
    if total != sum(f.size for f in files):
        raise BundleError("size-mismatch", "total size is not the sum of the file sizes")
    return {
        "version": _text(m, K_VERSION, MAX_VERSION),
        "seq": _uint(m, K_SEQ),
        "hardware": _text(m, K_HARDWARE, 32),
        "protocol": _uint(m, K_PROTOCOL, 255),
        "arch": _text(m, K_ARCH, 32),
        "total": total,
        "files": files,
        "created_ms": _uint(m, K_CREATED),
    }


def _sign1(manifest: bytes) -> tuple[bytes, bytes]:
    """(payload, signature) of the manifest's COSE_Sign1, shape checked."""
    item = _loads(manifest, "manifest")
    if not isinstance(item, cbor2.CBORTag) or item.tag != _TAG:
        raise BundleError("malformed", "manifest is not a COSE_Sign1 (CBOR tag 18)")
    parts = item.value
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise BundleError("malformed", "manifest COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = parts
    if protected != _PROTECTED:
        raise BundleError("malformed", "manifest protected header must be {1: -8} (EdDSA)")
    if not isinstance(unprotected, dict) or unprotected.get(4) != KID:
        raise BundleError("malformed", "manifest kid must be b'release'")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
        raise BundleError("malformed", "manifest payload/signature must be bstr (64-byte sig)")
    return payload, signature


def parse(data: bytes) -> Bundle:
    """Shape only: header, manifest fields, sizes. No signature or hash check."""
    manifest, start = _split(data)
    payload, _ = _sign1(manifest)
    fields = _check_payload(_loads(payload, "manifest payload"))
    have = len(data) - start
    if have < fields["total"]:
        raise BundleError("truncated", f"file bytes end at {have} of {fields['total']}")
    if have > fields["total"]:
        raise BundleError("size-mismatch", f"{have - fields['total']} bytes after the last file")
    contents = []
    at = start
    for f in fields["files"]:
        contents.append(bytes(data[at : at + f.size]))
        at += f.size
    return Bundle(
        id=hashlib.sha256(manifest).hexdigest(),
        manifest=bytes(manifest),
        contents=tuple(contents),
        **fields,
    )


def verify_manifest(manifest: bytes, release_pub: Ed25519PublicKey) -> None:
    """BundleError("bad-signature") unless the manifest is signed by `release_pub`."""
    from cryptography.exceptions import InvalidSignature

    payload, signature = _sign1(manifest)
    try:
        release_pub.verify(signature, _sig_structure(payload))
    except InvalidSignature as exc:
        raise BundleError("bad-signature", "manifest not signed by the release key") from exc


def verify(data: bytes, release_pub: Ed25519PublicKey) -> Bundle:
    """parse + the manifest's signature + every file's SHA-256; the Bundle if all hold."""
    bundle = parse(data)
    verify_manifest(bundle.manifest, release_pub)
    for entry, body in zip(bundle.files, bundle.contents, strict=True):
        if hashlib.sha256(body).digest() != entry.sha256:
            raise BundleError("hash-mismatch", f"file {entry.path}: SHA-256 does not match")
    return bundle
