"""Shared helpers for the workflow tests: real snakemake runs on the tiny config.

The tiny config (tests/configs/tiny.yaml) shrinks the phantom, the grids and the model so
that the whole workflow -- DICOM writing, conversion, resampling, segmentation, template,
SyN, coarse grid, CAE training, choice of K, clustering, CLAM -- runs for real in about a
minute or two per run on two cores.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"


def snakemake(
    workdir: Path, *args: str, check: bool = True, configfiles: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI on this project's Snakefile with the tiny config (and
    ``configfiles`` over it, in order)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(PROJECT_ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(TINY),
        *map(str, configfiles),
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def planned_jobs(output: str) -> list[tuple[str, str | None]]:
    """(rule, subject) of every job a dry run lists."""
    jobs: list[tuple[str, str | None]] = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        match = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block.strip())
        if not match:
            continue
        subject = re.search(r"wildcards: .*?subject=([A-Za-z0-9_-]+)", block)
        jobs.append((match.group(1), subject.group(1) if subject else None))
    return jobs


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The tiny demo cohort run from scratch through every stage; returns its results/."""
    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, "--cores", "2")
    return workdir / "results"


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
