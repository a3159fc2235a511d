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


def sign1(seed, kid, payload, out=None):
    """The tagged COSE_Sign1 encoding of `payload` signed with the 32-byte Ed25519 seed,
    as bytes; given `out` (a bytearray, e.g. `cbor.scratch()`) it is encoded there and
    `out` is returned: no record-sized copy (the caller uses it before the next one)."""
    kid = bytes(kid)
    if not 0 < len(kid) <= MAX_KID:
        raise ValueError("cose: kid must be 1..%d bytes" % MAX_KID)
    payload = bytes(payload)
    work = cbor.scratch()  # no growing buffers on the hot path (see cbor.scratch)
    sig = ed25519.sign(seed, sig_structure(PROTECTED, payload, work))
    into = work if out is None else out
    into[:] = b""
    cbor.encode_into(into, cbor.Tag(COSE_SIGN1_TAG, [PROTECTED, {_HDR_KID: kid}, payload, sig]))
    return bytes(into) if out is None else into


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
