"""Shared fixtures: where the real DICOM lives, and skipping when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

# ANTs registrations are bit-reproducible for a seed only when single-threaded (measured:
# two runs with 2 threads differed by up to 1,000 HU in a voxel). ITK reads this once, at
# first use, so it must be set before anything imports ants or SimpleITK.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real DICOM beside the project; skip the test when it is absent."""
    if not (SHARED_DATA / "real-ct").is_dir():
        pytest.skip(f"real DICOM not found at {SHARED_DATA} (tests marked realdata need it)")
    return SHARED_DATA
