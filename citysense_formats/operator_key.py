"""The fleet operator's public key (verifies COMMANDs), as a file holds it: 64 hex chars
(the `.pub` file `citysense-provision operator-key init` writes) or an Ed25519 PEM public
key (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo). Both give the 32 raw bytes.

An Ed25519 SubjectPublicKeyInfo has exactly one DER encoding: a fixed 12-byte header
(SEQUENCE, AlgorithmIdentifier with OID 1.3.101.112 and no parameters, BIT STRING) and
the 32 key bytes. So the PEM is parsed here without an ASN.1 library, and anything else
(an RSA or EC key, trailing bytes, a private key) is refused.
"""

from __future__ import annotations

import binascii
import re

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")
_BEGIN = "-----BEGIN PUBLIC KEY-----"
_END = "-----END PUBLIC KEY-----"
MAX_BYTES = 4096
EXPECTED = "64 hex chars (the .pub file) or an Ed25519 PEM public key"


class OperatorKeyError(ValueError):
    """Not an operator public key; the message fits after the file's name."""


def _pem_body(text: str) -> bytes:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        raise OperatorKeyError(f"is not {EXPECTED}")
    try:
        return binascii.a2b_base64("".join(lines[1:-1]), strict_mode=True)
    except binascii.Error as exc:
        raise OperatorKeyError(f"has broken base64 in its PEM block ({exc})") from exc


def parse(data: bytes | str) -> bytes:
    """The 32 raw key bytes from a key file's content; OperatorKeyError otherwise."""
    if len(data) > MAX_BYTES:
        raise OperatorKeyError(f"is larger than {MAX_BYTES} bytes, not {EXPECTED}")
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError:
            raise OperatorKeyError(f"is not text, not {EXPECTED}") from None
    text = data.strip()
    if _HEX64.fullmatch(text):
        return bytes.fromhex(text)
    if "PRIVATE KEY" in text:
        raise OperatorKeyError("is a private key, not the public one")
    der = _pem_body(text)
    if len(der) != len(_SPKI_ED25519) + 32 or not der.startswith(_SPKI_ED25519):
        raise OperatorKeyError("is a PEM public key but not an Ed25519 one")
    return der[len(_SPKI_ED25519) :]


def encode_hex(key: bytes) -> str:
    """The `.pub` file's content for 32 raw key bytes."""
    if len(key) != 32:
        raise OperatorKeyError(f"an Ed25519 public key has 32 bytes, got {len(key)}")
    return key.hex() + "\n"
