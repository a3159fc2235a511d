"""Fixtures for node tests: a provisioned flash folder and a node on a pty."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peer import NodeProc, provision


@pytest.fixture
def flash(tmp_path: Path) -> Path:
    d = tmp_path / "flash"
    d.mkdir()
    return d


@pytest.fixture
def node(flash: Path) -> Iterator[NodeProc]:
    provision(flash)
    n = NodeProc(flash)
    try:
        yield n
    finally:
        n.stop()
