"""SenML resolution written from RFC 8428 (section 4.6), independent of the firmware's
encoder and of the gateway: base fields carry forward to the records after them."""

from __future__ import annotations

from typing import Any

Resolved = tuple[str, str | None, Any, float]  # name, unit, value, time


def resolve(pack: list[dict[int, Any]]) -> list[Resolved]:
    """name = bn + n, unit = u or else bu, value = v/vs/vb (+ bv), time = bt + t."""
    out: list[Resolved] = []
    bn, bu, bt, bv = "", None, 0, 0
    for rec in pack:
        bn = rec.get(-2, bn)
        bt = rec.get(-3, bt)
        bu = rec.get(-4, bu)
        bv = rec.get(-5, bv)
        if 2 in rec:
            value = bv + rec[2]
        else:
            value = next((rec[k] for k in (3, 4, 8, 5) if k in rec), None)
        out.append((bn + rec.get(0, ""), rec.get(1, bu), value, bt + rec.get(6, 0)))
    return out
