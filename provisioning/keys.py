"""The fleet's Ed25519 signing keys: create one, read its public half.

Two keys, never the same one: the operator key signs COMMANDs, the release key signs
firmware bundle manifests. Both are written the same way (private PKCS#8 PEM 0600, public
`.pub` hex 0644, never overwritten) and their public files share one format
(citysense_formats.operator_key), so a node holds each as 32 raw bytes in /config.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citysense_formats import operator_key

from .errors import ProvisionError


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; never overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ProvisionError(f"{path} already exists, refusing to overwrite it") from exc
    except OSError as exc:
        raise ProvisionError(f"cannot create {path} ({exc.strerror}), check the path") from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _init_key(out: Path, what: str) -> str:
    pub_path = Path(str(out) + ".pub")
    for p in (out, pub_path):
        if p.exists():
            raise ProvisionError(f"{p} already exists, refusing to overwrite {what}")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    write_new(out, pem, 0o600)
    write_new(pub_path, operator_key.encode_hex(pub).encode(), 0o644)
    return pub.hex()


def init_operator_key(out: Path) -> str:
    """Write OUT (PKCS#8 PEM, 0600) and OUT.pub (hex); returns the public key hex."""
    return _init_key(out, "an operator key")


def init_release_key(out: Path) -> str:
    """The release key (signs bundle manifests), written as init_operator_key writes."""
    return _init_key(out, "a release key")


def _read_pub(path: Path, what: str, option: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(operator_key.MAX_BYTES + 1)
    except OSError as exc:
        raise ProvisionError(
            f"cannot read the {what} key {path} ({exc.strerror}), check {option}"
        ) from exc
    try:
        return operator_key.parse(data)
    except operator_key.OperatorKeyError as exc:
        raise ProvisionError(f"{path} {exc}, pass the {what} .pub file to {option}") from exc


def read_operator_pub(path: Path) -> bytes:
    """The operator public key (32 bytes) from a `.pub` hex file or a PEM public key."""
    return _read_pub(path, "operator", "--operator-pub")


def read_release_pub(path: Path) -> bytes:
    """The release public key (32 bytes), the same file format as the operator's."""
    return _read_pub(path, "release", "--release-pub")
