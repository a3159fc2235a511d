"""Ed25519 signing keys from their files: the operator key and the release key.

Both are PKCS#8 PEM files, 0600, as `citysense-provision operator-key init` and
`citysense-provision release-key` write them; one reader checks both the same way.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ConfigError


def load_signing_key(path: Path, role: str, made_by: str) -> Ed25519PrivateKey:
    """The `role` key ("operator", "release") from `path`: readable, owner-only, an
    unencrypted PEM Ed25519 private key; else a ConfigError naming `made_by`, the command
    that writes the right file."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {role} key {path} ({exc.strerror})") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{role} key {path} is readable by others (mode {stat.S_IMODE(mode):o}):"
            f" chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key: use the file written by {made_by}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key: use the {role} key")
    return key
