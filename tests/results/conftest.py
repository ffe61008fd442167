"""Shared fixtures of the results tests: the repository root on sys.path and the fixture records folder."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # pyproject sets pythonpath = ["."]; this keeps a bare `pytest tests/results` working
    sys.path.insert(0, str(ROOT))

from tests.results._paths import FIXTURES  # noqa: E402


@pytest.fixture
def fixture_results() -> Path:
    """A results folder (``runs/`` inside) of synthetic records: 22 usable ones and 4 unusable files."""
    return FIXTURES


@pytest.fixture
def fixture_records(fixture_results):
    from results_lib import load_records

    messages: list[str] = []
    records = load_records(fixture_results, report=messages.append)
    return records, messages
