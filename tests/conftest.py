"""Shared fixtures: where the real DICOM lives (skipping when it is absent), and the tiny
demo run that the workflow and Slurm tests compare against."""

from __future__ import annotations

import os
from pathlib import Path

# ANTs registrations are bit-reproducible for a seed only when single-threaded (measured:
# two runs with 2 threads differed by up to 1,000 HU in a voxel). ITK reads this once, at
# first use, so it must be set before anything imports ants or SimpleITK.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
# `make test` runs three pytest-xdist workers on two cores: one OpenMP/BLAS thread per
# process keeps their thread pools from spinning against each other. Snakemake runs
# started by a worker inherit it, so a session's runs share one setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.snakemake_runs import PROJECT_ROOT, build_once, snakemake  # noqa: E402

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real DICOM beside the project; skip the test when it is absent."""
    if not (SHARED_DATA / "real-ct").is_dir():
        pytest.skip(f"real DICOM not found at {SHARED_DATA} (tests marked realdata need it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo cohort run from scratch through every stage; returns its results/.

    Built once for the whole session, and once for all of pytest-xdist's workers
    (:func:`tests.snakemake_runs.build_once`). Tests must not change it: they copy it.
    """
    return build_once(tmp_path_factory, "demo", lambda workdir: snakemake(workdir, "--cores", "2")) / "results"


def _start_order(item: pytest.Item) -> float:
    """The slow tests first, longest first (their ``slow(seconds=...)``), then the rest."""
    slow = item.get_closest_marker("slow")
    return float("inf") if slow is None else -float(slow.kwargs.get("seconds", 60))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first, longest first (a stable sort keeps the order of the rest):
    pytest-xdist hands tests out in this order, so the longest start at once instead of
    ending the run alone on one worker."""
    items.sort(key=_start_order)
