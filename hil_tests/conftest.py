"""Whole-system fixtures: one fleet enrolled through the emulator's REPL per session, and
per scenario a fresh copy of it with its own broker, gateway, consumer and node processes.

Durations are CI-short by default; CITYSENSE_HIL_FULL=1 runs the lengths the issue names
(e.g. 3 minutes of steady state, a 10-minute outage).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense_lab.stack import Lab, LabOptions

FLEET = 5


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """Certificates, operator key and FLEET nodes enrolled with citysense-provision."""
    lab = Lab(
        tmp_path_factory.mktemp("fleet"),
        LabOptions(nodes=FLEET, interval_s=1, batch=1),
        say=lambda _m: None,
    )
    try:
        lab.prepare()
    finally:
        lab.close()
    return lab


@pytest.fixture
def make_lab(fleet: Lab, tmp_path: Path) -> Iterator[object]:
    labs: list[Lab] = []

    def make(**kw: object) -> Lab:
        opts = LabOptions(**{"interval_s": 1, "batch": 1, "heap": "128k", **kw})  # type: ignore[arg-type]
        lab = fleet.copy_to(tmp_path / f"lab{len(labs)}", opts)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()
