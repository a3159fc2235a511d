"""COSE_Sign1 (RFC 9052) with EdDSA/Ed25519 only, as fixed by DESIGN.md.

`parse_sign1` checks structure and yields the kid so the caller can find the key;
nothing else from the message may be trusted before `verify1` succeeded.

Ed25519 is PyNaCl's (libsodium) since 2026-12-03, cryptography's before: importing
cryptography's Rust extension made ~7 MiB of the agent's resident memory, PyNaCl ~1 MiB,
and libsodium verifies a record in about half the CPU time (docs/benchmarks.md, "Issue
17: resident memory"). libsodium is the stricter verifier (it also refuses small-order
and non-canonical keys and R values, which no honest signer produces), so whatever the
gateway accepts, a consumer verifying with cryptography accepts too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cbor2
from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import SigningKey, VerifyKey

from .cbor import dumps, loads_strict
from .errors import MalformedError, SignatureError

COSE_SIGN1_TAG: Final = 18
ALG_EDDSA: Final = -8
HDR_ALG: Final = 1
HDR_KID: Final = 4
PROTECTED_EDDSA: Final = b"\xa1\x01\x27"  # the CBOR map {1: -8}
MAX_KID: Final = 64


@dataclass(frozen=True, slots=True)
class Sign1:
    protected: bytes
    kid: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return dumps(["Signature1", protected, b"", payload])


def parse_sign1(data: bytes) -> Sign1:
    """Strict structural parse of a tagged COSE_Sign1; no signature check."""
    item = loads_strict(data, "COSE_Sign1")
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        raise MalformedError("COSE_Sign1: expected CBOR tag 18")
    parts = item.value
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise MalformedError("COSE_Sign1: expected an array of 4 items")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes):
        raise MalformedError("COSE_Sign1: protected header must be a bstr")
    header = loads_strict(protected, "COSE_Sign1 protected header")
    if not isinstance(header, dict) or header.get(HDR_ALG) != ALG_EDDSA:
        raise MalformedError("COSE_Sign1: protected header must be {1: -8} (EdDSA)", reason="alg")
    if len(header) != 1:
        raise MalformedError("COSE_Sign1: unexpected protected header parameters")
    if not isinstance(unprotected, dict):
        raise MalformedError("COSE_Sign1: unprotected header must be a map")
    kid = unprotected.get(HDR_KID)
    if not isinstance(kid, bytes) or not 0 < len(kid) <= MAX_KID:
        raise MalformedError(f"COSE_Sign1: kid must be a bstr of 1..{MAX_KID} bytes")
    if not isinstance(payload, bytes):
        raise MalformedError("COSE_Sign1: payload must be an attached bstr")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise MalformedError("COSE_Sign1: signature must be a 64-byte bstr")
    return Sign1(protected, kid, payload, signature)


def verify_parsed(public_key: bytes, msg: Sign1) -> None:
    """Raise SignatureError unless `msg` verifies under the raw Ed25519 `public_key`."""
    try:
        VerifyKey(public_key).verify(msg.to_be_signed(), msg.signature)
    except (BadSignatureError, NaclValueError, TypeError) as exc:
        raise SignatureError(f"signature does not verify for kid {msg.kid!r}") from exc


def verify1(public_key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """Parse and verify; returns (kid, payload)."""
    msg = parse_sign1(data)
    verify_parsed(public_key, msg)
    return msg.kid, msg.payload


def sign1(seed: bytes, kid: bytes, payload: bytes) -> bytes:
    """The tagged COSE_Sign1 encoding of `payload` signed with the 32-byte Ed25519 seed."""
    signature = SigningKey(seed).sign(sig_structure(PROTECTED_EDDSA, payload)).signature
    return dumps(
        cbor2.CBORTag(COSE_SIGN1_TAG, [PROTECTED_EDDSA, {HDR_KID: kid}, payload, signature])
    )
