"""The firmware's SenML packs (series written as bn/bu runs) read back by independent
RFC 8428 readers: cbor2 plus base-field resolution written from the RFC (tests/rfc8428.py),
and the gateway's own decoder and `resolve_times`, including boot-relative times."""

from __future__ import annotations

import sys
from typing import Any

import cbor2
import pytest
from rfc8428 import resolve as rfc8428_resolve
from support import FIRMWARE_LIB

import gateway.protocol as gp

if str(FIRMWARE_LIB) not in sys.path:
    sys.path.append(str(FIRMWARE_LIB))

from citysense import senml  # type: ignore[import-not-found]

BASE = "esp32-a1b2c3d4e5f6/"
Reading = tuple[str, str | None, Any, int]  # name, unit, value, time

INTERLEAVED: list[Reading] = [
    r
    for i in range(10)
    for r in (
        ("temp", "Cel", 21.0 + i * 0.13, 60 * i),
        ("pressure", "Pa", 101325 + i, 60 * i),
        ("humidity", "%RH", 40.5 + i, 60 * i),
        ("battery", "V", 3.7, 60 * i),
    )
] + [("sys/heap", "B", 40960, 600), ("sys/reset", None, "power-on", 600)]


def build(readings: list[Reading], base_time: int) -> Any:
    pack = senml.Pack(base_name=BASE, base_time=base_time)
    for name, unit, value, t in readings:
        pack.add(name, value, unit, time=t)
    return pack


def expected(readings: list[Reading], base_time: int) -> list[Reading]:
    return sorted((BASE + n, u, v, base_time + t) for n, u, v, t in readings)


@pytest.mark.parametrize(
    "readings",
    [INTERLEAVED, INTERLEAVED[:4], INTERLEAVED[:1], [("a", "B", 1, 0), ("b", None, 2, 0)] * 3],
)
def test_independent_reader_resolves_every_reading(readings: list[Reading]) -> None:
    pack = build(readings, 1764047000)
    payload = senml.record_payload(7, 3, pack, senml.TIME_UNIX)
    decoded = cbor2.loads(payload)
    assert sorted(rfc8428_resolve(decoded[3]), key=repr) == sorted(
        expected(readings, 1764047000), key=repr
    )
    assert len(pack.encode()) <= pack.nbytes + 3  # nbytes bounds the encoded pack


def test_series_are_runs_and_shorter() -> None:
    pack = build(INTERLEAVED, 0)
    recs = cbor2.loads(pack.encode())
    assert recs[0] == {0: "sys/heap", 1: "B", 2: 40960, 6: 600, -2: BASE, -3: 0}
    assert recs[1] == {0: "sys/reset", 3: "power-on", 6: 600}
    assert recs[2] == {2: 21.0, 6: 0, -2: BASE + "temp", -4: "Cel"}
    assert recs[3] == {2: 21.13, 6: 60}
    assert sum(-2 in r for r in recs) == 5  # the base name, then one per series
    assert len(pack.encode()) < pack.nbytes - 200


def test_gateway_decoder_and_boot_relative_times() -> None:
    pack = build(INTERLEAVED, 120)
    payload = senml.record_payload(9, 4, pack, senml.TIME_BOOT)
    rec = gp.decode_record_payload(payload)
    assert rec.time_base == gp.TIME_BASE_BOOT
    times = gp.resolve_times(rec, 1_700_000_000.0)
    assert times is not None
    resolved = rfc8428_resolve(rec.pack)
    assert [1_700_000_000.0 + t for *_, t in resolved] == times
    assert sorted(times) == sorted(1_700_000_000.0 + 120 + t for *_, t in INTERLEAVED)
    assert gp.resolve_times(rec, None) is None
