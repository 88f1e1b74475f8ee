"""Real snakemake runs of the imaging chain on a tiny synthetic cohort.

The tiny config (tests/configs/tiny.yaml) shrinks the phantom and the grids so that the
whole chain -- DICOM writing, conversion, resampling, segmentation, template, SyN, coarse
grid -- runs for real in well under a minute per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.workflow

TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
STAGE_DIRS = ("nifti", "resampled", "lungmask", "registered", "downsampled")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI on this project's Snakefile with the tiny config."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"),
               "-d", str(workdir), "--configfile", str(TINY), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def planned_jobs(output: str) -> list[tuple[str, str | None]]:
    """(rule, subject) of every job a dry run lists."""
    jobs: list[tuple[str, str | None]] = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not match:
            continue
        subject = re.search(r"wildcards: .*?subject=([A-Za-z0-9_-]+)", block)
        jobs.append((match.group(1), subject.group(1) if subject else None))
    return jobs


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The tiny demo cohort run from scratch through every imaging stage."""
    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, "--cores", "2")
    return workdir / "results"


def test_dry_run_lists_every_job(tmp_path: Path) -> None:
    out = snakemake(tmp_path, "-n").stdout
    jobs = planned_jobs(out)
    rules = [rule for rule, _ in jobs]
    n = 4  # subjects in tiny.yaml
    for rule in ("convert", "resample", "segment", "register", "downsample"):
        assert rules.count(rule) == n, (rule, rules)
    for rule in ("demo", "template", "downsample_grid", "all"):
        assert rules.count(rule) == 1
    assert not (tmp_path / "results").exists()  # a dry run makes nothing


def test_demo_run_makes_every_artifact(demo_run: Path) -> None:
    truth = pd.read_csv(demo_run / "demo" / "truth.tsv", sep="\t", dtype=str)
    subjects = truth["subject"].tolist()
    assert len(subjects) == 4
    for subject in subjects:
        for stage in STAGE_DIRS:
            assert (demo_run / stage / f"{subject}.nii.gz").is_file(), (stage, subject)
        for name in ("0GenericAffine.mat", "1Warp.nii.gz", "1InverseWarp.nii.gz"):
            assert (demo_run / "transforms" / subject / name).is_file()
        assert (demo_run / "logs" / "register" / f"{subject}.log").is_file()
        sidecar = json.loads((demo_run / "nifti" / f"{subject}.json").read_text())
        assert "SeriesInstanceUID" in sidecar
        text = json.dumps(sidecar)
        assert "PatientName" not in text and "DEMO^" not in text and "PatientBirthDate" not in text
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_run / "lungmask" / f"{subject}.nii.gz")))
        assert set(np.unique(labels)) == {0, 1, 2}
    iterations = pd.read_csv(demo_run / "template" / "iterations.tsv", sep="\t")
    assert len(iterations) >= 1 and iterations["dice_with_previous"].between(0, 1).all()


def test_downsampled_volumes_share_the_grid(demo_run: Path) -> None:
    mask = sitk.ReadImage(str(demo_run / "template" / "grid_mask.nii.gz"))
    inside = sitk.GetArrayFromImage(mask) > 0
    assert inside.any()
    for path in sorted((demo_run / "downsampled").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == mask.GetSize() and image.GetSpacing() == mask.GetSpacing()
        assert np.allclose(image.GetOrigin(), mask.GetOrigin())
        assert image.GetPixelID() == sitk.sitkFloat32
        array = sitk.GetArrayFromImage(image)
        assert np.all(array[~inside] == -1024)
        # Inside the lung mask there is lung: mostly air-like parenchyma, not background.
        assert -1000 < np.median(array[inside]) < -500


def test_rerun_does_nothing(demo_run: Path) -> None:
    out = snakemake(demo_run.parent, "-n").stdout
    assert "Nothing to be done" in out, out[-2000:]


@pytest.mark.xfail(reason="open: touching one DICOM file does not yet re-run the subject (mtime check under investigation)", strict=False)
def test_user_sheet_and_touch_reruns_only_that_subject(demo_run: Path, tmp_path: Path) -> None:
    """A cohort given by samples.tsv; touching one subject's DICOM re-runs its jobs only."""
    cohort = tmp_path / "cohort"
    shutil.copytree(demo_run / "demo" / "dicom", cohort / "dicom")
    subjects = sorted(p.name for p in (cohort / "dicom").iterdir() if p.is_dir())
    (cohort / "samples.tsv").write_text("subject\tdicom\n" + "".join(f"{s}\tdicom/{s}\n" for s in subjects))
    work = tmp_path / "run"
    config = f"samples={cohort / 'samples.tsv'}"
    snakemake(work, "--cores", "2", "--config", config)
    from lungclam.template import sample_subjects

    in_template = set(sample_subjects(subjects, 0.1, 3, 0))
    outsider = next(s for s in subjects if s not in in_template)
    some_file = next(p for p in (cohort / "dicom" / outsider).rglob("*") if p.is_file())
    later = time.time() + 60  # copytree kept the old mtimes: be newer than the outputs
    os.utime(some_file, (later, later))
    jobs = planned_jobs(snakemake(work, "-n", "--config", config).stdout)
    per_subject = {(rule, subject) for rule, subject in jobs if subject}
    assert per_subject == {(rule, outsider) for rule in ("convert", "resample", "segment", "register", "downsample")}
    assert {rule for rule, subject in jobs if not subject} <= {"all"}


def test_bad_sheet_fails_before_any_job(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("subject\tdicom\nok\td\n../escape\td\n")
    done = snakemake(tmp_path, "-n", "--config", f"samples={sheet}", check=False)
    assert done.returncode != 0
    assert "row 2 (line 3): illegal subject ID '../escape'" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


def test_lint_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"),
                           "--lint"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr, done.stdout + done.stderr
