"""Wire-derived text made safe for a log line.

A device id, firmware string, reset cause or COSE kid comes from the serial line before
anything vouches for it. Logged raw, a newline plus `<2>` forges a CRITICAL journal entry
(journald reads a `<N>` prefix as the priority of a new line), and an ESC sequence
repaints an operator's terminal. `esc()` keeps printable ASCII other than the backslash,
writes everything else as a Python-style escape, and cuts the result to a bound, so a
line stays one line of bounded length whatever the peer sent.
"""

from __future__ import annotations

from typing import Final

MAX_CHARS: Final = 96
"""Longest escaped text kept; the rest is replaced by `...` (ids are at most 64)."""

_SAFE: Final = frozenset(range(0x20, 0x7F)) - {ord("\\")}


def esc(value: str | bytes | None, limit: int = MAX_CHARS) -> str:
    """`value` as one printable ASCII token of at most `limit` (+3) characters."""
    if value is None:
        return "-"
    out: list[str] = []
    size = 0
    codes = iter(value) if isinstance(value, bytes) else map(ord, value)
    for code in codes:
        if code in _SAFE:
            piece = chr(code)
        elif code == ord("\\"):
            piece = "\\\\"
        elif code < 0x100:
            piece = f"\\x{code:02x}"
        elif code < 0x10000:
            piece = f"\\u{code:04x}"
        else:
            piece = f"\\U{code:08x}"
        if size + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) or '""'
