"""COSE_Sign1 (RFC 9052) with EdDSA/Ed25519 only, exactly as protocol v1 fixes it:

    18([protected = h'A10127' ({1: -8}), {4: kid}, payload bstr, signature bstr(64)])

signed over Sig_structure = ["Signature1", protected, h'', payload].

`verify1` rejects: anything that is not exactly one tagged 4-array of the right types,
a protected header other than {1: -8}, an unprotected header other than {4: kid}, a
kid that is missing, empty, longer than 64 bytes
or not the expected one, and a signature that does not verify. All failures raise
`CoseError` (a ValueError) with a reason: malformed, alg, kid or bad-signature.
"""

from citysense import cbor, ed25519
from citysense.errors import CoseError

try:
    from micropython import const
except ImportError:  # CPython (cross-tests): const() is only a compiler hint

    def const(x):  # type: ignore[misc]
        return x


COSE_SIGN1_TAG = const(18)
PROTECTED = b"\xa1\x01\x27"  # the CBOR map {1: -8}: alg EdDSA
_HDR_ALG = const(1)
_HDR_KID = const(4)
_ALG_EDDSA = const(-8)
MAX_KID = const(64)
_MAX_DEPTH = const(4)  # the Sign1 structure itself nests 3 deep; payload is a bstr


def sig_structure(protected, payload, out=None):
    """The bytes Ed25519 signs: CBOR ["Signature1", protected, h'', payload]. Given
    `out` (an empty bytearray) they are encoded there and `out` is returned."""
    item = ["Signature1", protected, b"", payload]
    if out is None:
        return cbor.dumps(item)
    cbor.encode_into(out, item)
    return out


# sign_in's layout: the payload from PAYLOAD_AT on, room in front for the longest heads
# (the COSE_Sign1's 8 + a kid of 64 bytes with its 2-byte head + the payload's 3-byte
# bstr head = 77; the Sig_structure's 17 + 3), 66 bytes behind it for the signature
PAYLOAD_AT = const(80)
_SIG_HEAD = b"\x84\x6aSignature1\x43\xa1\x01\x27\x40"  # ["Signature1", protected, h'', ...
_SIGN1_HEAD = b"\xd2\x84\x43\xa1\x01\x27\xa1\x04"  # 18([protected, {4: ...


def room(buf):
    """Empty bytearray `buf` up to PAYLOAD_AT bytes (its allocation kept): append the
    payload to it, then `sign_in` builds the record around it."""
    buf[:] = b""
    for _ in range(PAYLOAD_AT):
        buf.append(0)
    return buf


def _bstr_head(buf, end, n):
    """Write the shortest head of a bstr of n (< 65536) bytes so that it ends at `end`;
    returns where it starts."""
    if n < 24:
        buf[end - 1] = 0x40 | n
        return end - 1
    if n < 256:
        buf[end - 2] = 0x58
        buf[end - 1] = n
        return end - 2
    buf[end - 3] = 0x59
    buf[end - 2] = n >> 8
    buf[end - 1] = n & 0xFF
    return end - 3


def sign_in(seed, kid, buf):
    """The tagged COSE_Sign1 of the payload in `buf` (a bytearray from `room`, the
    payload appended), signed with the 32-byte Ed25519 seed and built in place: the
    Sig_structure is the payload with its heads written in front of it, then the
    COSE_Sign1's heads overwrite those and the signature is appended. Returns a
    memoryview into `buf` (valid until it is reused): neither payload nor record is
    copied, so a record needs no contiguous block of its size (a cut-up heap has
    none: the transfer boot's MemoryError for a 228-byte payload)."""
    kid = bytes(kid)
    k = len(kid)
    if not 0 < k <= MAX_KID:
        raise ValueError("cose: kid must be 1..%d bytes" % MAX_KID)
    at = _bstr_head(buf, PAYLOAD_AT, len(buf) - PAYLOAD_AT)
    start = at - len(_SIG_HEAD)
    buf[start:at] = _SIG_HEAD
    sig = ed25519.sign(seed, memoryview(buf)[start:])
    # the payload's head is the same in both: the COSE_Sign1's kid goes in front of it
    kat = at - k
    buf[kat:at] = kid
    kat = _bstr_head(buf, kat, k)
    start = kat - len(_SIGN1_HEAD)
    buf[start:kat] = _SIGN1_HEAD
    buf.append(0x58)
    buf.append(64)
    buf.extend(sig)
    return memoryview(buf)[start:]


def sign1(seed, kid, payload):
    """The tagged COSE_Sign1 encoding of `payload` signed with the 32-byte Ed25519 seed,
    as bytes (built in `cbor.scratch()` by `sign_in`)."""
    buf = room(cbor.scratch())  # no growing buffers on the hot path (see cbor.scratch)
    buf.extend(payload)
    return bytes(sign_in(seed, kid, buf))


def _bad(message, reason="malformed"):
    return CoseError("cose: " + message, reason)


def parse1(data):
    """Strict structural parse, no signature check: (protected, kid, payload, signature).

    Only the kid may be used before `verify1` succeeded (to find the key)."""
    try:
        item = cbor.loads(data, _MAX_DEPTH)
    except ValueError as exc:
        raise _bad("not valid CBOR (%s)" % exc)
    if not isinstance(item, cbor.Tag) or item.tag != COSE_SIGN1_TAG:
        raise _bad("expected CBOR tag 18 (COSE_Sign1)")
    parts = item.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise _bad("expected an array of 4 items")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes):
        raise _bad("protected header must be a bstr")
    try:
        header = cbor.loads(protected, 2)
    except ValueError:
        raise _bad("protected header is not valid CBOR", "alg")
    if not isinstance(header, dict) or len(header) != 1 or header.get(_HDR_ALG) != _ALG_EDDSA:
        raise _bad("protected header must be {1: -8} (EdDSA)", "alg")
    if header[_HDR_ALG] is True or isinstance(header[_HDR_ALG], float):
        raise _bad("protected header must be {1: -8} (EdDSA)", "alg")
    if not isinstance(unprotected, dict):
        raise _bad("unprotected header must be a map")
    if len(unprotected) != 1:
        raise _bad("unprotected header must be exactly {4: kid}", "kid")
    kid = unprotected.get(_HDR_KID)
    if not isinstance(kid, bytes) or not 0 < len(kid) <= MAX_KID:
        raise _bad("kid must be a bstr of 1..%d bytes" % MAX_KID, "kid")
    if not isinstance(payload, bytes):
        raise _bad("payload must be an attached bstr")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise _bad("signature must be a 64-byte bstr")
    return protected, kid, payload, signature


def verify1(pub, data, kid=None):
    """Parse and verify a tagged COSE_Sign1 under the 32-byte public key `pub`.

    Returns (kid, payload). If `kid` is given, the message's kid must equal it.
    Raises CoseError (a ValueError) on any failure."""
    protected, got_kid, payload, signature = parse1(data)
    if kid is not None and got_kid != bytes(kid):
        raise _bad("kid %r is not the expected %r" % (got_kid, bytes(kid)), "kid")
    signed = sig_structure(protected, payload, cbor.scratch())
    if not ed25519.verify(pub, signed, signature):
        raise _bad("signature does not verify for kid %r" % got_kid, "bad-signature")
    return got_kid, payload
