"""Errors of the firmware protocol codec.

Every wire-level failure is a `ProtocolError`, which is a `ValueError` (the firmware API
promises `ValueError` for malformed input) carrying a short `reason` label that the node
counts, the same labels the gateway uses.
"""


class ProtocolError(ValueError):
    reason = "malformed"

    def __init__(self, message, reason=None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class FrameError(ProtocolError):
    """A bad link frame: reason is framing, crc, oversize or unknown-type."""

    reason = "framing"


class CoseError(ProtocolError):
    """A COSE_Sign1 that is malformed (reason malformed/alg/kid) or does not verify
    (reason bad-signature)."""

    reason = "malformed"
