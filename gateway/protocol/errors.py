"""Errors of the protocol core. Each carries a `reason`, a short label the gateway counts."""

from __future__ import annotations


class ProtocolError(Exception):
    """Malformed or unacceptable input from the wire."""

    reason = "malformed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class FramingError(ProtocolError):
    """A frame that is not valid COBS, or too short to hold a type and a CRC."""

    reason = "framing"


class CrcError(ProtocolError):
    """A frame whose CRC-32 does not match (line noise)."""

    reason = "crc"


class OversizeError(ProtocolError):
    """Input longer than the frame limit; discarded up to the next delimiter."""

    reason = "oversize"


class UnknownFrameTypeError(ProtocolError):
    reason = "unknown-type"


class MalformedError(ProtocolError):
    """A frame body that is not the CBOR structure its type requires."""

    reason = "malformed"


class SignatureError(ProtocolError):
    """A COSE_Sign1 whose signature does not verify (or whose key is unusable)."""

    reason = "bad-signature"
