"""The fleet operator's Ed25519 key (signs COMMANDs): create it, read its public half."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProvisionError

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


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


def init_operator_key(out: Path) -> str:
    """Write OUT (PKCS#8 PEM, 0600) and OUT.pub (hex); returns the public key hex."""
    pub_path = Path(str(out) + ".pub")
    for p in (out, pub_path):
        if p.exists():
            raise ProvisionError(f"{p} already exists, refusing to overwrite an operator key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    write_new(out, pem, 0o600)
    write_new(pub_path, pub.hex().encode() + b"\n", 0o644)
    return pub.hex()


def read_operator_pub(path: Path) -> bytes:
    """The operator public key (32 bytes) from a `.pub` hex file or a PEM public key."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(
            f"cannot read the operator key {path} ({exc}), check --operator-pub"
        ) from exc
    if _HEX64.match(text):
        return bytes.fromhex(text)
    if "PRIVATE KEY" in text:
        raise ProvisionError(
            f"{path} is the operator's private key, pass its .pub file to --operator-pub"
        )
    try:
        loaded = serialization.load_pem_public_key(text.encode())
    except ValueError as exc:
        raise ProvisionError(
            f"{path} is neither 64 hex chars nor a PEM public key, pass the operator .pub file"
        ) from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise ProvisionError(f"{path} is not an Ed25519 key, pass the operator .pub file")
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
