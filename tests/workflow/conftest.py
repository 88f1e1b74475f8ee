"""Shared fixtures of the workflow tests (the tiny demo run itself is ``demo_run`` in
tests/conftest.py; the snakemake helpers are in tests/snakemake_runs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.snakemake_runs import planned_jobs, snakemake


@pytest.fixture(scope="session")
def split_viewer(demo_run: Path, tmp_path_factory) -> Path:
    """The viewer of the tiny run, split into an index and a page per subject: a copy of
    that run with viewer.max_subjects_per_page at 2 (it has 4 subjects), where the viewer
    rule alone runs again (mtime triggers, the copy keeps every time stamp). Returns the
    copy's results/viewer."""
    workdir = tmp_path_factory.mktemp("split_viewer") / "run"
    shutil.copytree(demo_run.parent, workdir, symlinks=True)
    split = workdir.parent / "split.yaml"
    split.write_text("viewer:\n  max_subjects_per_page: 2\n")
    done = snakemake(
        workdir,
        "--rerun-triggers",
        "mtime",
        "--forcerun",
        "viewer",
        "--cores",
        "1",
        "results/viewer/index.html",
        configfiles=(split,),
    )
    assert [rule for rule, _ in planned_jobs(done.stdout + done.stderr)] == ["viewer"]
    return workdir / "results" / "viewer"
