"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples in every run, so a CI run passes or fails for the code alone (a random draw
# once failed a run on an input the test did not mean to allow); HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EK100_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "epic-kitchens-100"


@pytest.fixture
def ek100_dir() -> Path:
    if not EK100_DIR.is_dir():
        pytest.fail(f"the shared EPIC-KITCHENS-100 files are expected at {EK100_DIR}")
    return EK100_DIR
