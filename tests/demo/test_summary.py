"""The demo's closing rows from a `citysense-cloud report --json` dict and the nodes'
created seqs: what makes the demo say RECORDS MISSING."""

from __future__ import annotations

from typing import Any

from citysense_lab.summary import Row, ledger_rows, spans


def _report(**devices: dict[str, Any]) -> dict[str, Any]:
    return {"devices": devices, "rejected": {}}


def test_every_created_record_stored_once_is_ok() -> None:
    report = _report(
        a={"records": 3, "duplicates": 2, "gaps": [], "ranges": [[10, 12]], "rejected": {}}
    )
    assert ledger_rows({"a": [10, 11, 12]}, report) == [Row("a", 3, 3, 2, [], 0, 0)]
    assert ledger_rows({"a": [10, 11, 12]}, report)[0].ok


def test_a_created_record_in_a_gap_is_lost() -> None:
    report = _report(
        a={"records": 2, "duplicates": 0, "gaps": [[11, 11]], "ranges": [[10, 10], [12, 12]]}
    )
    (row,) = ledger_rows({"a": [10, 11, 12]}, report)
    assert (row.stored, row.lost, spans(row.gaps), row.ok) == (2, 1, "11", False)


def test_a_device_the_ledger_never_saw_loses_everything() -> None:
    (row,) = ledger_rows({"b": [5, 6]}, _report())
    assert (row.created, row.stored, row.lost, row.ok) == (2, 0, 2, False)


def test_refused_deliveries_or_records_not_created_are_not_ok() -> None:
    refused = _report(
        a={"records": 1, "duplicates": 0, "gaps": [], "ranges": [[1, 1]],
           "rejected": {"bad-signature": 2}}
    )  # fmt: skip
    assert ledger_rows({"a": [1]}, refused)[0].refused == 2
    assert not ledger_rows({"a": [1]}, refused)[0].ok
    extra = _report(a={"records": 2, "duplicates": 0, "gaps": [], "ranges": [[1, 2]]})
    assert not ledger_rows({"a": [1]}, extra)[0].ok  # stored, but not the node's
