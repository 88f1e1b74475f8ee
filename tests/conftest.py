"""Shared fixtures: where the real DICOM lives, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real DICOM beside the project; skip the test when it is absent."""
    if not (SHARED_DATA / "real-ct").is_dir():
        pytest.skip(f"real DICOM not found at {SHARED_DATA} (tests marked realdata need it)")
    return SHARED_DATA
