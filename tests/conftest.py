"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

EK100_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "epic-kitchens-100"


@pytest.fixture
def ek100_dir() -> Path:
    if not EK100_DIR.is_dir():
        pytest.fail(f"the shared EPIC-KITCHENS-100 files are expected at {EK100_DIR}")
    return EK100_DIR
