"""Fixtures shared by every test folder; plain helpers live in support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, free_port


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def unused_port() -> Iterator[int]:
    yield free_port()
