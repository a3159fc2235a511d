"""Fixtures for the provisioning tests (helpers live in prov_support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prov_support import NodeRepl, start_node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeRepl]:
    n = start_node(tmp_path, "node", "a1b2c3d4e5f6")
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[[str, str], NodeRepl]]:
    started: list[NodeRepl] = []

    def make(name: str, uid: str) -> NodeRepl:
        n = start_node(tmp_path, name, uid)
        started.append(n)
        return n

    try:
        yield make
    finally:
        for n in started:
            n.stop()


@pytest.fixture(autouse=True)
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    monkeypatch.setenv("CITYSENSE_AUDIT", str(path))
    return path
