"""Assertion helpers for the MicroPython tests (plain functions, no framework)."""

from binascii import hexlify, unhexlify


def unhex(s):
    return unhexlify(s.replace(" ", ""))


def tohex(b):
    return hexlify(b).decode()


def eq(got, want, what=""):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def true(cond, what=""):
    if not cond:
        raise AssertionError(what or "condition is false")


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception it raised; fail unless it is exactly exc_type
    (or a subclass)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        if not isinstance(exc, exc_type):
            raise AssertionError(
                "%s(%r): raised %s: %s, want %s"
                % (getattr(fn, "__name__", fn), args, type(exc).__name__, exc, exc_type.__name__)
            )
        return exc
    raise AssertionError(
        "%s(%r): did not raise %s" % (getattr(fn, "__name__", fn), args, exc_type.__name__)
    )
